"""Bit packing of integer weight codes into uint8, and QuantizedWeight <-> tensors.

Low-bit weights must really take 2 or 4 bits on disk: four 2-bit, two 4-bit
or one 8-bit code per byte, plain shift-and-mask (code i of a byte sits at
bits ``(i % per_byte) * bits``, lowest first), zero padding to whole bytes.
The layout is trivial to unpack in any language and round-trips exactly.

A QuantizedWeight is stored in a state_dict as plain tensors under one
prefix (``weight_`` by default, so a packed layer's buffers read
``<module>.weight_codes`` and so on):

=================  =======  ================================================
key                dtype    content
=================  =======  ================================================
``<p>codes``       uint8    packed codes of the row-major [rows, cols] matrix
``<p>scale``       float16  [rows or 1, n_groups] scales
``<p>zero_point``  uint8    same shape as scale; only when asymmetric
``<p>shape``       int64    [rows, cols]
``<p>bits``        int64    scalar: 2, 4 or 8
=================  =======  ================================================

Signedness follows from the zero point: absent = symmetric (signed codes,
two's complement in ``bits`` bits), present = asymmetric (unsigned codes).
The group size is ``cols // scale.shape[1]``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from espnet_allinone.quant.fake_quant import QuantizedWeight

PACKABLE_BITS = (2, 4, 8)
SERIALIZED_SUFFIXES = ("codes", "scale", "zero_point", "shape", "bits")
"""Key suffixes written by ``quantized_to_tensors`` (zero_point only when asymmetric)."""


def _check_bits(bits: int) -> int:
    if bits not in PACKABLE_BITS or isinstance(bits, bool):
        raise ValueError(
            f"cannot pack {bits!r}-bit codes; valid: {', '.join(map(str, PACKABLE_BITS))}"
        )
    return int(bits)


def packed_numel(numel: int, bits: int) -> int:
    """Bytes that ``numel`` codes of ``bits`` bits take after packing."""
    per_byte = 8 // _check_bits(bits)
    return -(-numel // per_byte)


def pack_codes(codes: Tensor, bits: int) -> Tensor:
    """Flatten integer ``codes`` and pack them ``8 // bits`` to a byte (1-D uint8).

    Codes must fit in ``bits`` bits as signed or unsigned integers, i.e. lie in
    [-2^(bits-1), 2^bits - 1]; negative codes are stored in two's complement.
    """
    bits = _check_bits(bits)
    if (
        codes.dtype.is_floating_point
        or codes.dtype.is_complex
        or codes.dtype == torch.bool
    ):
        raise TypeError(f"codes must be an integer tensor, got {codes.dtype}")
    flat = codes.reshape(-1).to(torch.int16)
    if flat.numel():
        lo, hi = int(flat.min()), int(flat.max())
        if lo < -(2 ** (bits - 1)) or hi > 2**bits - 1:
            raise ValueError(
                f"codes in [{lo}, {hi}] do not fit in {bits} bits; valid: "
                f"[{-(2 ** (bits - 1))}, {2 ** (bits - 1) - 1}] signed or [0, {2**bits - 1}] "
                "unsigned"
            )
    mask = (1 << bits) - 1
    values = (flat & mask).to(torch.uint8)
    per_byte = 8 // bits
    pad = (-values.numel()) % per_byte
    if pad:
        values = torch.cat([values, values.new_zeros(pad)])
    values = values.reshape(-1, per_byte)
    packed = values[:, 0].clone()
    for j in range(1, per_byte):
        packed |= values[:, j] << (j * bits)
    return packed


def unpack_codes(packed: Tensor, bits: int, numel: int, signed: bool) -> Tensor:
    """Inverse of ``pack_codes``: the first ``numel`` codes, 1-D.

    Returns int8 when ``signed`` (symmetric codes), int16 otherwise
    (asymmetric codes up to 255), the dtypes of ``QuantizedWeight.codes``.
    """
    bits = _check_bits(bits)
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed codes must be uint8, got {packed.dtype}")
    packed = packed.reshape(-1)
    if (
        not isinstance(numel, int)
        or numel < 0
        or packed.numel() != packed_numel(numel, bits)
    ):
        raise ValueError(
            f"{packed.numel()} packed bytes cannot hold exactly {numel!r} {bits}-bit codes "
            f"(expected {packed_numel(numel, bits) if isinstance(numel, int) and numel >= 0 else '?'}"
            " bytes)"
        )
    mask = (1 << bits) - 1
    per_byte = 8 // bits
    parts = [(packed >> (j * bits)) & mask for j in range(per_byte)]
    values = torch.stack(parts, dim=1).reshape(-1)[:numel].to(torch.int16)
    if signed:
        half = 1 << (bits - 1)
        values = torch.where(values >= half, values - (1 << bits), values)
        return values.to(torch.int8)
    return values


def quantized_to_tensors(
    qw: QuantizedWeight, prefix: str = "weight_"
) -> dict[str, Tensor]:
    """A QuantizedWeight as state_dict tensors (see the module docstring for keys)."""
    out = {
        f"{prefix}codes": pack_codes(qw.codes, qw.bits),
        f"{prefix}scale": qw.scale.detach().to(torch.float16).contiguous().clone(),
        f"{prefix}shape": torch.tensor(list(qw.shape), dtype=torch.int64),
        f"{prefix}bits": torch.tensor(qw.bits, dtype=torch.int64),
    }
    if qw.zero_point is not None:
        out[f"{prefix}zero_point"] = (
            qw.zero_point.detach().to(torch.uint8).contiguous().clone()
        )
    return out


def quantized_from_tensors(
    tensors: Mapping[str, Tensor], prefix: str = "weight_"
) -> QuantizedWeight:
    """Inverse of ``quantized_to_tensors``."""
    missing = [
        f"{prefix}{s}"
        for s in ("codes", "scale", "shape", "bits")
        if f"{prefix}{s}" not in tensors
    ]
    if missing:
        raise KeyError(
            f"packed weight is missing {', '.join(missing)}; expected keys "
            + ", ".join(prefix + s for s in SERIALIZED_SUFFIXES)
            + " (zero_point only when asymmetric)"
        )
    bits = int(tensors[f"{prefix}bits"])
    rows, cols = (int(n) for n in tensors[f"{prefix}shape"].tolist())
    scale = tensors[f"{prefix}scale"]
    zero_point = tensors.get(f"{prefix}zero_point")
    signed = zero_point is None
    codes = unpack_codes(tensors[f"{prefix}codes"], bits, rows * cols, signed=signed)
    n_groups = scale.shape[1] if scale.dim() == 2 else 0
    if n_groups < 1 or cols % n_groups:
        raise ValueError(
            f"{prefix}scale has shape {list(scale.shape)}, which does not split {cols} "
            "columns into equal groups"
        )
    return QuantizedWeight(
        codes=codes.reshape(rows, cols),
        scale=scale.to(torch.float16),
        zero_point=None if zero_point is None else zero_point.to(torch.uint8),
        bits=bits,
        group_size=cols // n_groups,
        shape=(rows, cols),
    )
