"""The packed low-bit weights of extracted models, inside a ``state_dict``.

A quantised weight ``<module>.weight`` is stored as the tensors of
``quant.packing.quantized_to_tensors`` under the prefix ``<module>.weight_``::

    <module>.weight_codes       uint8: codes bit-packed (four 2-bit / two 4-bit a byte)
    <module>.weight_scale       float16 [rows or 1, n_groups]
    <module>.weight_zero_point  uint8, only for asymmetric schemes
    <module>.weight_shape       int64 [rows, cols] (the 2-D view; Conv1d [o, i*k])
    <module>.weight_bits        int64 scalar

Loading turns them back into ``QuantizedWeight.dequantize()``, which is
bit-identical to the fake-quantised weight the all-in-one model used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from espnet_allinone.quant.fake_quant import QuantizedWeight
from espnet_allinone.quant.packing import (
    SERIALIZED_SUFFIXES,
    quantized_from_tensors,
    quantized_to_tensors,
)


def encode_quantized(qw: QuantizedWeight) -> dict[str, torch.Tensor]:
    """A quantiser's QuantizedWeight -> entries keyed by suffix (``_codes``, ...)."""
    return {f"_{k[len('weight_'):]}": v for k, v in quantized_to_tensors(qw).items()}


def pop_entries(state_dict: dict, name: str, symmetric: bool) -> dict[str, torch.Tensor] | None:
    """Remove and return ``name``'s packed entries (None if it has no codes)."""
    if name + "_codes" not in state_dict:
        return None
    entries = {f"_{s}": state_dict.pop(f"{name}_{s}") for s in SERIALIZED_SUFFIXES
               if f"{name}_{s}" in state_dict}
    if symmetric and "_zero_point" in entries:
        raise RuntimeError(
            f"{name}_zero_point found but the config says symmetric quantisation: "
            "the config and the model file do not belong together"
        )
    if not symmetric and "_zero_point" not in entries:
        raise RuntimeError(
            f"{name}_zero_point missing but the config says asymmetric quantisation: "
            "the config and the model file do not belong together"
        )
    return entries


def to_quantized(entries: dict[str, torch.Tensor]) -> QuantizedWeight:
    return quantized_from_tensors({f"weight{k}": v for k, v in entries.items()})


def dequantize_entries(entries: dict[str, torch.Tensor], bits: int,
                       weight_shape: Sequence[int]) -> torch.Tensor:
    """Packed entries -> the float weight of ``weight_shape`` (exact)."""
    qw = to_quantized(entries)
    rows = int(weight_shape[0])
    cols = math.prod(int(s) for s in weight_shape[1:])
    if qw.bits != bits:
        raise RuntimeError(f"packed weight has {qw.bits}-bit codes, the config says {bits}")
    if qw.shape != (rows, cols):
        raise RuntimeError(
            f"packed weight has shape {list(qw.shape)}, the model expects "
            f"{list(weight_shape)} (as [{rows}, {cols}])"
        )
    return qw.dequantize().reshape(tuple(int(s) for s in weight_shape))


def entries_bytes(entries: dict[str, torch.Tensor]) -> int:
    """Bytes the tensors of ``entries`` occupy."""
    return sum(t.numel() * t.element_size() for t in entries.values())
