"""QuantConfig: the quantizer options of one all-in-one model (``encoder_conf.quant_conf``).

One frozen value, validated once, so every quantized layer of an encoder uses
the same scheme and a typo in the YAML fails at start-up with the valid
choices instead of silently falling back to a default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from espnet_allinone.errors import AllInOneError

GRANULARITIES = ("tensor", "channel", "group")
"""Scale sharing: one per tensor, one per output row, one per sub-channel group."""

CLIP_MODES = ("none", "fixed", "mse")
"""Initial range: full min/max, a fixed fraction of it, or the MSE-best fraction."""

SCALE_PARAMS = ("linear", "log")
"""How a learned scale is stored: the scale itself, or its natural log (always positive)."""

GRIDS = ("integer", "balanced")
"""Symmetric level sets: integer multiples of the scale, or mid-rise (q + 1/2) x scale."""

ACTIVATION_BITS = (None, 8)
"""Activation fake quantization: off, or 8-bit dynamic per-tensor."""


class QuantConfigError(AllInOneError, ValueError):
    """A quantizer option that is unknown or out of range."""


@dataclass(frozen=True)
class QuantConfig:
    """How weights (and optionally activations) are fake-quantized.

    symmetric:       signed levels [-2^(b-1), 2^(b-1)-1], no zero point; else
                     unsigned [0, 2^b-1] with an integer zero point.
    granularity:     "tensor", "channel" (per output row) or "group" (groups of
                     ``group_size`` consecutive input columns of each row).
    group_size:      columns per group when granularity == "group".
    clip:            "none" (range = min/max), "fixed" (``clip_ratio`` x range)
                     or "mse" (per-scale ratio that minimises the squared error,
                     searched once at initialisation).
    clip_ratio:      range fraction for clip == "fixed", in (0, 1].
    learn_scale:     LSQ(+) learned scales (and zero points); False recomputes
                     them from the current weight every forward.
    activation_bits: None, or 8 to fake-quantize layer inputs.
    grid:            "integer": code q means q x scale (2 bits: {-2, -1, 0, 1} x s);
                     "balanced" (symmetric only): q means (q + 1/2) x scale, levels
                     symmetric about zero without an exact zero (2 bits:
                     {-1.5, -0.5, 0.5, 1.5} x s), codes rounded down (floor).
                     The codes and their storage are the same for both.
    scale_param:     with learn_scale, what the optimizer steps: "linear" the scale
                     (parameter ``scale_int{b}``; Adam moves it by about lr per step
                     whatever its size, so small scales cross zero and their groups
                     quantize to zero), or "log" its natural log (``log_scale_int{b}``:
                     always positive, Adam's step a relative change). The parameter
                     names differ so a checkpoint never loads into the other form.
    """

    symmetric: bool = True
    granularity: str = "channel"
    group_size: int = 32
    clip: str = "none"
    clip_ratio: float = 1.0
    learn_scale: bool = True
    activation_bits: int | None = None
    grid: str = "integer"
    scale_param: str = "linear"

    def __post_init__(self) -> None:
        for name in ("symmetric", "learn_scale"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise QuantConfigError(
                    f"quant_conf.{name} must be true or false, got {value!r}"
                )
        if self.granularity not in GRANULARITIES:
            raise QuantConfigError(
                f"unknown quant_conf.granularity {self.granularity!r}; "
                f"valid: {', '.join(GRANULARITIES)}"
            )
        if (
            not isinstance(self.group_size, int)
            or isinstance(self.group_size, bool)
            or self.group_size <= 0
        ):
            raise QuantConfigError(
                f"quant_conf.group_size must be a positive integer, got {self.group_size!r}"
            )
        if self.clip not in CLIP_MODES:
            raise QuantConfigError(
                f"unknown quant_conf.clip {self.clip!r}; valid: {', '.join(CLIP_MODES)}"
            )
        ratio = self.clip_ratio
        if (
            isinstance(ratio, bool)
            or not isinstance(ratio, (int, float))
            or not 0 < ratio <= 1
        ):
            raise QuantConfigError(
                f"quant_conf.clip_ratio must be a number in (0, 1], got {ratio!r}"
            )
        object.__setattr__(self, "clip_ratio", float(ratio))
        if self.clip != "fixed" and self.clip_ratio != 1.0:
            raise QuantConfigError(
                f"quant_conf.clip_ratio={self.clip_ratio} only applies to clip: fixed "
                f"(clip is {self.clip!r}); set clip: fixed or drop clip_ratio"
            )
        if self.activation_bits not in ACTIVATION_BITS or isinstance(
            self.activation_bits, bool
        ):
            raise QuantConfigError(
                f"unsupported quant_conf.activation_bits {self.activation_bits!r}; "
                "valid: null (off), 8"
            )
        if self.grid not in GRIDS:
            raise QuantConfigError(
                f"unknown quant_conf.grid {self.grid!r}; valid: {', '.join(GRIDS)}"
            )
        if self.scale_param not in SCALE_PARAMS:
            raise QuantConfigError(
                f"unknown quant_conf.scale_param {self.scale_param!r}; "
                f"valid: {', '.join(SCALE_PARAMS)}"
            )
        if self.grid == "balanced" and not self.symmetric:
            raise QuantConfigError(
                "quant_conf.grid: balanced needs symmetric: true (the balanced grid is "
                "the signed mid-rise one, without a zero point); set symmetric: true or "
                "grid: integer"
            )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | QuantConfig | None) -> QuantConfig:
        """Build from a YAML mapping; None means the defaults, a QuantConfig passes through."""
        if d is None:
            return cls()
        if isinstance(d, QuantConfig):
            return d
        if not isinstance(d, Mapping):
            raise QuantConfigError(
                f"quant_conf must be a mapping of options, got {type(d).__name__}: {d!r}"
            )
        valid = [f.name for f in fields(cls)]
        unknown = sorted(str(k) for k in d if k not in valid)
        if unknown:
            raise QuantConfigError(
                f"unknown quant_conf key(s) {', '.join(unknown)}; valid keys: {', '.join(valid)}"
            )
        return cls(**dict(d))

    def to_dict(self) -> dict:
        """Plain mapping (for YAML), the inverse of ``from_dict``."""
        return asdict(self)
