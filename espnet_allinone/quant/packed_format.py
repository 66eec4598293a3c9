"""Packed low-bit weights inside a ``state_dict``: the one tensor layout.

A quantized parameter ``<name>`` (for example ``encoders.0.feed_forward.w_1.weight``)
is stored as plain tensors under ``<name>_<suffix>``:

=====================  =======  =============================================
key                    dtype    content
=====================  =======  =============================================
``<name>_codes``       uint8    codes of the row-major [rows, cols] matrix,
                                bit-packed (four 2-bit / two 4-bit a byte)
``<name>_scale``       float16  [rows or 1, n_groups] scales
``<name>_zero_point``  uint8    same shape as scale; only when asymmetric
``<name>_shape``       int64    [rows, cols] (the 2-D view; Conv1d [o, i*k])
``<name>_bits``        int64    scalar: 2, 4 or 8
``<name>_grid``        int64    scalar: the grid's index in ``GRIDS``
                                (1: balanced); only when not integer
=====================  =======  =============================================

Signedness follows from the zero point: absent = symmetric (signed codes,
two's complement), present = asymmetric (unsigned codes). What a code means
follows from the grid record: absent = ``integer`` (q x scale, every file
written before grids existed), ``balanced`` = (q + 1/2) x scale. The group
size is ``cols // scale.shape[1]``. Loading turns the entries back into
``QuantizedWeight.dequantize()``, bit-identical to the fake-quantized weight
the all-in-one model trained with.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from espnet_allinone.errors import AllInOneError
from espnet_allinone.quant.config import GRIDS
from espnet_allinone.quant.fake_quant import MIN_SCALE, QuantizedWeight
from espnet_allinone.quant.packing import pack_codes, unpack_codes

SUFFIXES = ("codes", "scale", "zero_point", "shape", "bits", "grid")
"""Key suffixes of one packed weight (zero_point only when asymmetric, grid only when
not the integer grid)."""

DEFAULT_GRID = "integer"
"""The grid of a packed weight without a grid record."""


class PackedFormatError(AllInOneError, RuntimeError):
    """Packed entries that are missing or do not fit the model that loads them."""


@dataclass
class QuantizedLayer:
    """The static twin of a quantized elastic layer: its codes and its float bias.

    ``weight_shape`` is the shape of the float weight it stands for (a Conv1d
    keeps its kernel dimension); ``kind`` is ``"linear"`` or ``"conv1d"``.
    """

    weight: QuantizedWeight
    bias: Tensor | None
    weight_shape: tuple[int, ...]
    kind: str

    def dequantized_weight(self) -> Tensor:
        return self.weight.dequantize().reshape(self.weight_shape)


def to_state(qw: QuantizedWeight, name: str) -> dict[str, Tensor]:
    """``qw`` as the state_dict entries of parameter ``name``."""
    out = {
        f"{name}_codes": pack_codes(qw.codes, qw.bits),
        f"{name}_scale": qw.scale.detach().to(torch.float16).contiguous().clone(),
        f"{name}_shape": torch.tensor(list(qw.shape), dtype=torch.int64),
        f"{name}_bits": torch.tensor(qw.bits, dtype=torch.int64),
    }
    if qw.zero_point is not None:
        out[f"{name}_zero_point"] = qw.zero_point.detach().to(torch.uint8).contiguous().clone()
    if qw.grid != DEFAULT_GRID:
        out[f"{name}_grid"] = torch.tensor(GRIDS.index(qw.grid), dtype=torch.int64)
    return out


def floor_scale_groups(state: Mapping[str, Tensor]) -> tuple[int, int]:
    """(groups whose scale is at the floor MIN_SCALE, all groups) of the packed weights in
    ``state``: a floor scale quantizes its whole group to zero (a linear learned scale
    that crossed zero in training ends there)."""
    scales = [v for k, v in state.items() if k.endswith("_scale") and f"{k[:-6]}_codes" in state]
    return (sum(int((s.float() <= MIN_SCALE).sum()) for s in scales),
            sum(s.numel() for s in scales))


def _grid(state: Mapping[str, Tensor], name: str) -> str:
    """The grid a packed weight's record names (none: integer)."""
    record = state.get(f"{name}_grid")
    if record is None:
        return DEFAULT_GRID
    index = int(record) if record.numel() == 1 else -1
    if not 0 <= index < len(GRIDS):
        raise PackedFormatError(
            f"{name}_grid is {record.tolist()!r}, not a known grid; valid: "
            + ", ".join(f"{i} ({g})" for i, g in enumerate(GRIDS))
        )
    return GRIDS[index]


def from_state(state: Mapping[str, Tensor], name: str) -> QuantizedWeight:
    """Inverse of ``to_state``."""
    missing = [f"{name}_{s}" for s in ("codes", "scale", "shape", "bits")
               if f"{name}_{s}" not in state]
    if missing:
        raise PackedFormatError(
            f"packed weight is missing {', '.join(missing)}; expected keys "
            + ", ".join(f"{name}_{s}" for s in SUFFIXES)
            + " (zero_point only when asymmetric, grid only when not integer)"
        )
    bits = int(state[f"{name}_bits"])
    rows, cols = (int(n) for n in state[f"{name}_shape"].tolist())
    scale = state[f"{name}_scale"]
    zero_point = state.get(f"{name}_zero_point")
    codes = unpack_codes(state[f"{name}_codes"], bits, rows * cols, signed=zero_point is None)
    n_groups = scale.shape[1] if scale.dim() == 2 else 0
    if n_groups < 1 or cols % n_groups:
        raise PackedFormatError(
            f"{name}_scale has shape {list(scale.shape)}, which does not split {cols} "
            "columns into equal groups"
        )
    grid = _grid(state, name)
    if grid != DEFAULT_GRID and zero_point is not None:
        raise PackedFormatError(
            f"{name} has a zero point (asymmetric) and the {grid} grid, which is "
            "symmetric only"
        )
    return QuantizedWeight(
        codes=codes.reshape(rows, cols),
        scale=scale.to(torch.float16),
        zero_point=None if zero_point is None else zero_point.to(torch.uint8),
        bits=bits,
        group_size=cols // n_groups,
        shape=(rows, cols),
        grid=grid,
    )


def check_grid(grid: str | None, symmetric: bool | None = None) -> str | None:
    """A config's ``quant_grid`` (None: whatever the file's grid records say), checked."""
    if grid is None:
        return None
    if grid not in GRIDS:
        raise ValueError(f"unknown quant_grid {grid!r}; valid: {', '.join(GRIDS)}")
    if grid != DEFAULT_GRID and symmetric is False:
        raise ValueError(f"quant_grid: {grid} is symmetric only, but quant_symmetric is false")
    return grid


def pop_state(state: MutableMapping[str, Tensor], name: str) -> dict[str, Tensor] | None:
    """Remove and return ``name``'s packed entries (None when it has no codes)."""
    if f"{name}_codes" not in state:
        return None
    return {f"{name}_{s}": state.pop(f"{name}_{s}") for s in SUFFIXES if f"{name}_{s}" in state}


def dequantize_to(qw: QuantizedWeight, bits: int, weight_shape: Sequence[int],
                  symmetric: bool | None = None, name: str = "weight",
                  grid: str | None = None) -> Tensor:
    """The float weight of ``weight_shape`` that ``qw`` stands for (exact).

    ``bits``, ``symmetric`` and ``grid`` (None: either) are what the config
    promises; a mismatch means the config and the model file do not belong
    together.
    """
    rows = int(weight_shape[0])
    cols = math.prod(int(s) for s in weight_shape[1:])
    mismatch = None
    if qw.bits != bits:
        mismatch = f"has {qw.bits}-bit codes, the config says {bits}"
    elif symmetric is not None and qw.symmetric != symmetric:
        have = "symmetric" if qw.symmetric else "asymmetric"
        want = "symmetric" if symmetric else "asymmetric"
        mismatch = f"is {have}, the config says {want} quantization"
    elif grid is not None and qw.grid != grid:
        mismatch = f"is on the {qw.grid} grid, the config says quant_grid: {grid}"
    elif qw.shape != (rows, cols):
        mismatch = (f"has shape {list(qw.shape)}, the model expects {list(weight_shape)} "
                    f"(as [{rows}, {cols}])")
    if mismatch:
        raise PackedFormatError(
            f"packed weight {name} {mismatch}: the config and the model file do not belong "
            "together"
        )
    return qw.dequantize().reshape(tuple(int(s) for s in weight_shape))


# --- modules that keep some weights bit-packed in their state_dict ---------------
def store_packed(module: torch.nn.Module) -> None:
    """Make ``module`` keep the weights named in ``module.weight_bits`` (name -> bits)
    bit-packed in its state_dict: loading dequantizes them exactly
    (``module.quant_symmetric``: the signedness the config promises, or None;
    ``module.quant_grid``, when present: the grid it promises, or None: the file's
    grid records decide), saving writes the loaded entries back. Used by the packed encoders and the packed model."""
    module._packed = {}
    module.state_dict_packed = True
    module._register_state_dict_hook(_save_packed)
    module._register_load_state_dict_pre_hook(_load_packed, with_module=True)


def _load_packed(module, state_dict, prefix, local_metadata, strict,
                 missing_keys, unexpected_keys, error_msgs) -> None:
    """Replace the packed entries by the dequantized float weights (before loading)."""
    params = dict(module.named_parameters())
    packed: dict[str, Tensor] = {}
    kind = type(module).__name__
    for name, bits in module.weight_bits.items():
        entries = pop_state(state_dict, prefix + name)
        if entries is None:
            if prefix + name in state_dict:
                raise PackedFormatError(
                    f"{prefix}{name} is stored as a float weight, but this {kind} expects it "
                    f"bit-packed ({bits} bits): the config and the model file do not belong "
                    "together"
                )
            raise PackedFormatError(
                f"packed weight {prefix}{name} (codes/scale) missing from the model file: "
                "the config and the model file do not belong together"
            )
        qw = from_state(entries, prefix + name)
        weight = dequantize_to(qw, bits, tuple(params[name].shape), module.quant_symmetric,
                               prefix + name, getattr(module, "quant_grid", None))
        state_dict[prefix + name] = weight.to(params[name].dtype)
        packed.update({k[len(prefix):]: v for k, v in entries.items()})
    module._packed = packed


def _save_packed(module, state_dict, prefix, local_metadata):
    """Write the packed codes/scales instead of the float quantized weights."""
    if not module.weight_bits or not module.state_dict_packed:
        return state_dict
    if not module._packed:
        raise PackedFormatError(
            f"this {type(module).__name__} holds no packed weights yet: load a model file "
            "before saving it"
        )
    for name in module.weight_bits:
        del state_dict[prefix + name]
    for key, value in module._packed.items():
        state_dict[prefix + key] = value
    return state_dict
