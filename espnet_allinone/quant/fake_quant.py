"""Fake quantization with a straight-through estimator (STE).

``WeightFakeQuantizer`` gives one float master weight several integer grids
(nested precision): one scale set per bit-width, chosen per forward by the
active subsystem. ``quantize`` returns the integer codes that the same
forward uses, so an extracted model reproduces training exactly.

Grids (b bits, scale s, per tensor / output row / group of input columns):

* symmetric:  q = clamp(round(w / s), -2^(b-1), 2^(b-1) - 1),  w_q = q * s
* asymmetric: q = clamp(round(w / s) + z, 0, 2^b - 1),          w_q = (q - z) * s
  with an integer zero point z.
* balanced (symmetric, ``grid: balanced``): the same signed codes, meaning
  mid-rise levels: q = clamp(floor(w / s), -2^(b-1), 2^(b-1) - 1),
  w_q = (q + 1/2) * s, so the 2^b levels lie symmetric about zero
  ({-1.5, -0.5, 0.5, 1.5} x s at 2 bits) and none is zero.

The grid's maths is in the functions below (``grid_offset``, ``_levels``,
``_dequant``, ``positive_levels``); the config only names it.

Scales are kept to float16 values (the packed format stores fp16) and
clamped to [MIN_SCALE, 65504], so all-zero or constant weights give no NaN or
inf. The training path is one small autograd Function (``_FakeQuantSTE``)
that keeps only a mask and one float tensor for backward: the fused
``torch.fake_quantize_*`` ops are several times slower on CPU (see
ESPNET_NOTES.md), plain-op autograd keeps ~10 intermediates, and this runs in
every training step of every Linear.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from espnet_allinone.precision import FLOAT_BITS, SUPPORTED_BITS
from espnet_allinone.quant.config import GRIDS, QuantConfig

MIN_SCALE = 2.0**-20
"""Smallest scale (an exact fp16 value): guards zero and constant weights."""

MAX_SCALE = 65504.0
"""Largest finite float16."""

MSE_RATIOS = tuple(round(1.0 - 0.025 * k, 4) for k in range(39))
"""Clip ratios tried by the MSE search: 1.0, 0.975, ..., 0.05."""



# --- straight-through helpers (value exact, gradient chosen) -------------------
def _round_ste(x: Tensor) -> Tensor:
    """round(x) in value (exactly), identity gradient."""
    return x.round() + (x - x.detach())


def _fp16_scale(s: Tensor) -> Tensor:
    """Clamp to [MIN_SCALE, MAX_SCALE] and round to float16, kept as float32."""
    return s.clamp(MIN_SCALE, MAX_SCALE).half().float()


def _learned(value: Tensor, param: Tensor, grad_scale: float) -> Tensor:
    """``value`` (computed from ``param.detach()``) with gradient ``grad_scale`` to param."""
    scaled = param * grad_scale
    return value + (scaled - scaled.detach())


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    """Integer levels: signed [-2^(b-1), 2^(b-1)-1] or unsigned [0, 2^b-1]."""
    if symmetric:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def grid_offset(grid: str) -> float:
    """What a code means beside its integer value: w_q = (q + offset) * s.

    0 for the integer grid, 1/2 for the balanced (mid-rise) grid.
    """
    if grid == "integer":
        return 0.0
    if grid == "balanced":
        return 0.5
    raise ValueError(f"unknown quantization grid {grid!r}; valid: {', '.join(GRIDS)}")


def positive_levels(bits: int, symmetric: bool, grid: str = "integer") -> int:
    """Q_P of LSQ's gradient scale 1 / sqrt(n Q_P): the number of positive levels.

    The integer grid's top code 2^(b-1) - 1 (2^b - 1 unsigned); the balanced
    grid has one more, 2^(b-1) (levels 1/2 ... 2^(b-1) - 1/2).
    """
    qmax = qrange(bits, symmetric)[1]
    return qmax + 1 if grid_offset(grid) else qmax


def _round_levels(x: Tensor, offset: float) -> Tensor:
    """The nearest level's code of x = w / s: round (integer grid), floor (mid-rise)."""
    return x.floor() if offset else x.round()


def _levels(w3: Tensor, s3: Tensor, z3: Tensor | None, qmin: int, qmax: int,
            offset: float = 0.0) -> Tensor:
    """Integer levels (as float) of grouped weights (no gradient path)."""
    r = _round_levels(w3 / s3, offset)
    if z3 is not None:
        r = r + z3
    return r.clamp(qmin, qmax)


def _dequant(q: Tensor, s3: Tensor, z3: Tensor | None, offset: float = 0.0) -> Tensor:
    if z3 is not None:
        return (q - z3) * s3
    return (q + offset) * s3 if offset else q * s3


class _FakeQuantSTE(torch.autograd.Function):
    """``_dequant(_levels(w, s, z, offset))`` in one autograd node (zeros as +0.0, like codes).

    Gradients are those of the plain-op form "round with identity gradient,
    then clamp" (tests/test_quant.py checks them against it), with x = w / s,
    level r = round(x) + z (floor(x) on the balanced grid, offset o = 1/2;
    o = 0 otherwise), in = (qmin <= r <= qmax), q = clamp(r):

    * w: grad where in, else 0 (STE);
    * s: sum of grad * (q - z + o - x) where in, grad * (q - z + o) outside (LSQ);
    * z: sum of -s * grad outside.

    Saving only ``in`` and the s-gradient factor (instead of autograd's ~10
    intermediates) makes the training step markedly cheaper. ``track``: grad
    mode at the call (inside ``forward`` it is always off), so that no_grad
    calls save nothing.
    """

    @staticmethod
    def forward(
        ctx: Any,
        w3: Tensor,
        s3: Tensor,
        z3: Tensor | None,
        qmin: int,
        qmax: int,
        track: bool,
        offset: float = 0.0,
    ) -> Tensor:
        x = w3 / s3
        # + 0.0 turns round's -0.0 into +0.0, as dequantized integer codes have
        r = _round_levels(x, offset).add_(0.0 if z3 is None else z3)
        q = r.clamp(qmin, qmax)
        save = track and any(ctx.needs_input_grad[:3])
        inside = r.eq_(q) if save else None  # 1.0 where the clamp changed nothing
        qz = q.sub_(z3) if z3 is not None else q.add_(offset) if offset else q
        if save:
            # float masks and in-place ops: bool masks, where() and fresh
            # full-size temporaries are what make this slow on CPU
            ds = None
            if ctx.needs_input_grad[1]:
                ds = torch.addcmul(qz, x, inside, value=-1.0)  # qz - x inside
            ctx.save_for_backward(inside, ds, s3)
        return qz.mul_(s3)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        inside, ds, s3 = ctx.saved_tensors
        need_w, need_s, need_z = ctx.needs_input_grad[:3]
        gw = grad * inside if need_w or need_z else None
        gs = (grad * ds).sum_to_size(s3.shape) if need_s else None
        gz = None
        if need_z:  # -s * (grad summed outside the range)
            gz = (gw.sum_to_size(s3.shape) - grad.sum_to_size(s3.shape)) * s3
        return (gw if need_w else None), gs, gz, None, None, None, None


def _range_qparams(
    w3: Tensor, bits: int, symmetric: bool, per_tensor: bool, ratio: float | Tensor
) -> tuple[Tensor, Tensor | None]:
    """Scale (fp16 values) and zero point covering ``ratio`` x the range of each group.

    ``w3`` is [rows, groups, columns per group]; results are [rows, groups]
    ([1, 1] per tensor). Symmetric: s = ratio * 2 max|w| / (2^b - 1), so the
    span of the 2^b levels equals 2 max|w| (as PyTorch's observers); on the
    balanced grid the outer levels are exactly -max|w| and max|w|.
    Asymmetric: the range always includes 0 so zero stays exact.
    """
    if symmetric:
        amax = w3.abs().amax(-1)
        if per_tensor:
            amax = amax.amax().reshape(1, 1)
        return _fp16_scale(amax * (ratio * 2.0 / (2**bits - 1))), None
    lo = w3.amin(-1).clamp(max=0)
    hi = w3.amax(-1).clamp(min=0)
    if per_tensor:
        lo, hi = lo.amin().reshape(1, 1), hi.amax().reshape(1, 1)
    qmax = 2**bits - 1
    scale = _fp16_scale((hi - lo) * ratio / qmax)
    zero = (-lo * ratio / scale).round().clamp(0, qmax)
    return scale, zero


# --- the integer form ---------------------------------------------------------
@dataclass
class QuantizedWeight:
    """Integer codes of a 2-D weight slice plus its fp16 scales (and zero points).

    codes:      [rows, cols]; int8 when symmetric (signed levels), int16 when
                asymmetric (unsigned levels up to 255).
    scale:      float16, [rows, n_groups] ([1, 1] per tensor, [rows, 1] per row).
    zero_point: uint8, same shape as scale; None when symmetric.
    group_size: columns sharing one scale (cols for tensor/channel granularity).
    shape:      (rows, cols).
    grid:       what a code means: "integer" (q * s) or "balanced" ((q + 1/2) * s,
                symmetric only).
    """

    codes: Tensor
    scale: Tensor
    zero_point: Tensor | None
    bits: int
    group_size: int
    shape: tuple[int, int]
    grid: str = "integer"

    def __post_init__(self) -> None:
        rows, cols = (int(n) for n in self.shape)
        self.shape = (rows, cols)
        if tuple(self.codes.shape) != self.shape:
            raise ValueError(
                f"codes have shape {tuple(self.codes.shape)}, expected {self.shape}"
            )
        if self.group_size <= 0 or cols % self.group_size:
            raise ValueError(
                f"group_size {self.group_size} does not divide {cols} columns"
            )
        groups = cols // self.group_size
        scale_rows = self.scale.shape[0] if self.scale.dim() == 2 else -1
        if (
            self.scale.dim() != 2
            or self.scale.shape[1] != groups
            or scale_rows not in (1, rows)
        ):
            raise ValueError(
                f"scale has shape {tuple(self.scale.shape)}; expected [{rows} or 1, {groups}]"
            )
        if self.zero_point is not None and self.zero_point.shape != self.scale.shape:
            raise ValueError(
                f"zero_point has shape {tuple(self.zero_point.shape)}, "
                f"expected the scale's {tuple(self.scale.shape)}"
            )
        grid_offset(self.grid)  # names the valid grids
        if self.grid != "integer" and self.zero_point is not None:
            raise ValueError(
                f"the {self.grid} grid is symmetric: it takes no zero point"
            )

    @property
    def symmetric(self) -> bool:
        return self.zero_point is None

    def dequantize(self) -> Tensor:
        """Float32 weight, bit-identical to ``WeightFakeQuantizer.forward``."""
        rows, cols = self.shape
        q = self.codes.float().reshape(rows, cols // self.group_size, self.group_size)
        s3 = self.scale.float().unsqueeze(-1)
        z3 = None if self.zero_point is None else self.zero_point.float().unsqueeze(-1)
        return _dequant(q, s3, z3, grid_offset(self.grid)).reshape(rows, cols)

    def storage_bits(self) -> int:
        """Codes at ``bits`` each, 16 per scale, 8 per zero point."""
        zp = 0 if self.zero_point is None else 8 * self.zero_point.numel()
        return self.codes.numel() * self.bits + 16 * self.scale.numel() + zp


# --- weights ------------------------------------------------------------------
class WeightFakeQuantizer(nn.Module):
    """Nested precision: one float master weight, one scale set per bit-width.

    The layer owns the weight and passes the FULL 2-D view ([out, in]; a Conv1d
    [o, i, k] as [o, i*k]) to every call, so a bit-width's scales are set from
    the whole weight the first time it is used (a float checkpoint loaded
    before training is quantized from its real values). The buffer
    ``initialized_int{b}`` makes that survive checkpoints.

    Per quantized bit-width b, with learn_scale: parameters ``scale_int{b}``
    (``log_scale_int{b}`` holding ln(scale) with ``scale_param: log``)
    and (asymmetric) ``zero_point_int{b}``, shape [out, n_groups] ([1, 1] per
    tensor). Without learn_scale there are no scale parameters: the scales
    come from the current weight's range every forward, and with clip "mse"
    the per-scale clip ratio found at initialisation is kept in the buffer
    ``clip_ratio_int{b}``. Narrower widths use the first rows/columns of the
    same scales (statistics are always taken on the full weight), so a
    slice's grid equals the full weight's grid sliced.
    """

    def __init__(
        self,
        out_features: int,
        in_features: int,
        bits_choices: Sequence[int],
        config: QuantConfig | dict | None = None,
    ) -> None:
        super().__init__()
        for name, value in (
            ("out_features", out_features),
            ("in_features", in_features),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.config = QuantConfig.from_dict(config)
        bad = [
            b for b in bits_choices if b not in SUPPORTED_BITS or isinstance(b, bool)
        ]
        if bad:
            raise ValueError(
                f"unsupported weight bits {bad}; valid: {', '.join(map(str, SUPPORTED_BITS))} "
                f"({FLOAT_BITS} = float)"
            )
        self.out_features = out_features
        self.in_features = in_features
        self.bits_choices = tuple(sorted({int(b) for b in bits_choices}))
        self.quant_bits = tuple(b for b in self.bits_choices if b != FLOAT_BITS)
        cfg = self.config
        if cfg.granularity == "group":
            if in_features % cfg.group_size:
                raise ValueError(
                    f"group_size {cfg.group_size} does not divide in_features {in_features}; "
                    f"choose a group_size that divides {in_features} or granularity "
                    "'channel'"
                )
            self.group_size = cfg.group_size
        else:
            self.group_size = in_features
        self.n_groups = in_features // self.group_size
        self._offset = grid_offset(cfg.grid)
        self._per_tensor = cfg.granularity == "tensor"
        self._log_scales = cfg.scale_param == "log"
        shape = (1, 1) if self._per_tensor else (out_features, self.n_groups)
        self._scale_numel = (
            out_features * in_features if self._per_tensor else self.group_size
        )
        for b in self.quant_bits:
            if cfg.learn_scale:
                self.register_parameter(
                    self.scale_param_name(b), nn.Parameter(self._to_param(torch.ones(shape)))
                )
                if not cfg.symmetric:
                    self.register_parameter(
                        f"zero_point_int{b}", nn.Parameter(torch.zeros(shape))
                    )
            elif cfg.clip == "mse":
                self.register_buffer(f"clip_ratio_int{b}", torch.ones(shape))
            self.register_buffer(f"initialized_int{b}", torch.tensor(False))
        self._ready: set = set()  # bit-widths known initialised (avoids a device sync)

    def scale_param_name(self, bits: int) -> str:
        """The parameter holding bit-width ``bits``'s learned scales (``learn_scale``)."""
        return f"log_scale_int{bits}" if self._log_scales else f"scale_int{bits}"

    def _to_param(self, scale: Tensor) -> Tensor:
        """The stored form of a (positive) scale."""
        return scale.log() if self._log_scales else scale

    def _from_param(self, param: Tensor) -> Tensor:
        """The scale a stored parameter means (differentiable)."""
        return param.exp() if self._log_scales else param

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"out={self.out_features}, in={self.in_features}, bits={self.bits_choices}, "
            f"{'symmetric' if c.symmetric else 'asymmetric'}, {c.granularity}"
            + (f"({self.group_size})" if c.granularity == "group" else "")
            + f", clip={c.clip}, learn_scale={c.learn_scale}"
            + (f", grid={c.grid}" if c.grid != "integer" else "")
            + (f", scale_param={c.scale_param}" if c.scale_param != "linear" else "")
        )

    # --- checks -------------------------------------------------------------
    def _check_bits(self, bits: Any, allow_float: bool = True) -> int:
        valid = self.quant_bits + ((FLOAT_BITS,) if allow_float else ())
        if bits not in valid or isinstance(bits, bool):
            raise ValueError(
                f"bits {bits!r} not available in this quantizer; valid: "
                f"{', '.join(map(str, valid))}"
            )
        return int(bits)

    def _check_weight(self, weight: Tensor) -> None:
        expected = (self.out_features, self.in_features)
        if weight.dim() != 2 or tuple(weight.shape) != expected:
            raise ValueError(
                f"expected the full 2-D weight of shape {list(expected)}, "
                f"got {list(weight.shape)}"
            )

    def _check_cols(self, cols: int | Tensor | None) -> int | Tensor | None:
        """A column prefix length, a 1-D LongTensor of column indices, or None (all).

        With group scales an index set must consist of whole groups (each run
        of ``group_size`` indices one aligned group), so every kept column
        keeps the scale it was trained with.
        """
        if isinstance(cols, Tensor):
            if cols.dim() != 1 or cols.dtype != torch.long or not cols.numel():
                raise ValueError("cols as a tensor must be a non-empty 1-D LongTensor")
            if int(cols.min()) < 0 or int(cols.max()) >= self.in_features:
                raise ValueError(f"column index outside 0..{self.in_features - 1}")
            if self.config.granularity == "group":
                g = self.group_size
                runs = cols.reshape(-1, g) if cols.numel() % g == 0 else None
                aligned = runs is not None and bool(
                    ((runs[:, 0] % g) == 0).all()
                    and (runs - runs[:, :1] == torch.arange(g, device=cols.device)).all()
                )
                if not aligned:
                    raise ValueError(
                        f"column index set is not made of whole groups of {g} columns; "
                        f"with group scales keep or drop whole groups of {g}"
                    )
            return cols
        if cols is None or cols == self.in_features:
            return None
        if (
            not isinstance(cols, int)
            or isinstance(cols, bool)
            or not 0 < cols <= self.in_features
        ):
            raise ValueError(
                f"cols must be an integer in 1..{self.in_features}, got {cols!r}"
            )
        if self.config.granularity == "group" and cols % self.group_size:
            raise ValueError(
                f"cols {cols} is not a multiple of the group size {self.group_size}; "
                f"valid: multiples of {self.group_size} up to {self.in_features}"
            )
        return cols

    def _check_rows(self, rows: Tensor | None) -> Tensor | None:
        if rows is None:
            return None
        if not isinstance(rows, Tensor) or rows.dim() != 1 or rows.dtype != torch.long:
            raise ValueError(
                "rows must be None or a 1-D LongTensor of output-row indices, got "
                f"{type(rows).__name__}"
                + (
                    f" {rows.dtype} of shape {list(rows.shape)}"
                    if isinstance(rows, Tensor)
                    else ""
                )
            )
        return rows

    # --- shapes -------------------------------------------------------------
    def _group_view(self, w: Tensor) -> Tensor:
        """[rows, cols] -> [rows, groups, columns per group] (a view)."""
        rows, cols = w.shape
        if self.config.granularity == "group":
            return w.reshape(rows, cols // self.group_size, self.group_size)
        return w.unsqueeze(1)

    def _slice_qparam(self, t: Tensor, rows: Tensor | None, cols: int | Tensor | None) -> Tensor:
        if self._per_tensor:
            return t
        if rows is not None:
            t = t.index_select(0, rows)
        if cols is not None and self.config.granularity == "group":
            if isinstance(cols, Tensor):
                t = t.index_select(1, cols[:: self.group_size] // self.group_size)
            else:
                t = t[:, : cols // self.group_size]
        return t

    # --- initialisation -----------------------------------------------------
    def _initialized(self, bits: int) -> bool:
        return bool(getattr(self, f"initialized_int{bits}"))

    def _ensure_init(self, weight: Tensor, bits: int) -> None:
        if bits in self._ready:
            return
        if not self._initialized(bits):
            self.initialize(weight, bits)
        self._ready.add(bits)

    @torch.no_grad()
    def initialize(self, weight: Tensor, bits: int) -> None:
        """Set bit-width ``bits``'s scales (clip ratios) from the full weight now."""
        self._check_weight(weight)
        bits = self._check_bits(bits, allow_float=False)
        cfg = self.config
        w3 = self._group_view(weight.detach().float())
        if cfg.clip == "mse":
            ratio: float | Tensor = self._mse_ratio(w3, bits)
        else:
            ratio = cfg.clip_ratio
        if cfg.learn_scale:
            scale, zero = _range_qparams(
                w3, bits, cfg.symmetric, self._per_tensor, ratio
            )
            getattr(self, self.scale_param_name(bits)).copy_(self._to_param(scale))
            if zero is not None:
                getattr(self, f"zero_point_int{bits}").copy_(zero)
        elif cfg.clip == "mse":
            getattr(self, f"clip_ratio_int{bits}").copy_(ratio)
        getattr(self, f"initialized_int{bits}").fill_(True)
        self._ready.add(bits)

    def _mse_ratio(self, w3: Tensor, bits: int) -> Tensor:
        """Per-scale clip ratio from MSE_RATIOS with the least squared error."""
        cfg = self.config
        qmin, qmax = qrange(bits, cfg.symmetric)
        shape = (1, 1) if self._per_tensor else tuple(w3.shape[:2])
        best_err = torch.full(shape, math.inf, device=w3.device)
        best = torch.ones(shape, device=w3.device)
        for ratio in MSE_RATIOS:
            s, z = _range_qparams(w3, bits, cfg.symmetric, self._per_tensor, ratio)
            s3 = s.unsqueeze(-1)
            z3 = None if z is None else z.unsqueeze(-1)
            off = self._offset
            err = (
                (_dequant(_levels(w3, s3, z3, qmin, qmax, off), s3, z3, off) - w3)
                .square()
                .sum(-1)
            )
            if self._per_tensor:
                err = err.sum().reshape(1, 1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best = torch.where(better, torch.full_like(best, ratio), best)
        return best

    def reset(self, bits: int | None = None) -> None:
        """Forget the scales of ``bits`` (all when None): re-initialised on next use.

        Call after permuting input columns (e.g. importance reordering), which
        breaks the column groups the scales were computed for.
        """
        for b in self.quant_bits if bits is None else (self._check_bits(bits, False),):
            getattr(self, f"initialized_int{b}").fill_(False)
            self._ready.discard(b)

    @torch.no_grad()
    def permute_rows_(self, index: Tensor) -> None:
        """Reorder the per-row scales like the weight's output rows (``w = w[index]``)."""
        if self._per_tensor:
            return
        for name, t in list(self.named_parameters()) + list(self.named_buffers()):
            if t.dim() == 2:
                t.copy_(t.index_select(0, index.to(t.device)))

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._ready.clear()  # the loaded initialized_int{b} flags decide again

    # --- quantization ---------------------------------------------------------
    def _qparams(
        self,
        weight: Tensor,
        bits: int,
        rows: Tensor | None,
        cols: int | Tensor | None,
        grad: bool,
    ) -> tuple[Tensor, Tensor | None]:
        """Effective (fp16-valued) scale and integer zero point of the slice, [R, G]."""
        cfg = self.config
        qmax = qrange(bits, cfg.symmetric)[1]
        if cfg.learn_scale:
            g = 1.0 / math.sqrt(
                self._scale_numel * positive_levels(bits, cfg.symmetric, cfg.grid)
            )
            sp = self._from_param(
                self._slice_qparam(getattr(self, self.scale_param_name(bits)), rows, cols)
            )
            scale = _fp16_scale(sp.detach())
            if grad:
                scale = _learned(scale, sp, g)
            zero = None
            if not cfg.symmetric:
                zp = self._slice_qparam(
                    getattr(self, f"zero_point_int{bits}"), rows, cols
                )
                zero = zp.detach().clamp(0, qmax).round()
                if grad:
                    zero = _learned(zero, zp, g)
            return scale, zero
        ratio: float | Tensor = (
            getattr(self, f"clip_ratio_int{bits}")
            if cfg.clip == "mse"
            else cfg.clip_ratio
        )
        w3 = self._group_view(weight.detach().float())
        scale, zero = _range_qparams(w3, bits, cfg.symmetric, self._per_tensor, ratio)
        scale = self._slice_qparam(scale, rows, cols)
        zero = None if zero is None else self._slice_qparam(zero, rows, cols)
        return scale, zero

    def _slice_and_qparams(
        self,
        weight: Tensor,
        bits: int,
        rows: Tensor | None,
        cols: int | Tensor | None,
        grad: bool,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """(slice [R, G, S], scale [R, G, 1], zero point [R, G, 1] or None)."""
        self._ensure_init(weight, bits)
        w = _select(weight, rows, cols)
        scale, zero = self._qparams(weight, bits, rows, cols, grad)
        z3 = None if zero is None else zero.unsqueeze(-1)
        return self._group_view(w), scale.unsqueeze(-1), z3

    def forward(
        self,
        weight: Tensor,
        bits: int,
        rows: Tensor | None = None,
        cols: int | Tensor | None = None,
    ) -> Tensor:
        """Fake-quantized ``weight[rows][:, cols]`` at ``bits`` (32: the float slice).

        ``cols``: a prefix length or a LongTensor of column indices.

        STE to the weight (zero outside the clamp range), LSQ gradient
        (scaled by 1/sqrt(n * Qp), Qp = ``positive_levels``) to the scales and
        zero points.
        """
        self._check_weight(weight)
        bits = self._check_bits(bits)
        rows, cols = self._check_rows(rows), self._check_cols(cols)
        if bits == FLOAT_BITS:
            return _select(weight, rows, cols)
        w3, s3, z3 = self._slice_and_qparams(weight, bits, rows, cols, grad=True)
        qmin, qmax = qrange(bits, self.config.symmetric)
        track = torch.is_grad_enabled()
        out = _FakeQuantSTE.apply(w3, s3, z3, qmin, qmax, track, self._offset)
        return out.reshape(w3.shape[0], -1).to(weight.dtype)

    @torch.no_grad()
    def quantize(
        self,
        weight: Tensor,
        bits: int,
        rows: Tensor | None = None,
        cols: int | Tensor | None = None,
    ) -> QuantizedWeight:
        """Integer codes + fp16 scales of the slice; ``.dequantize()`` equals ``forward``."""
        self._check_weight(weight)
        bits = self._check_bits(bits, allow_float=False)
        rows, cols = self._check_rows(rows), self._check_cols(cols)
        w3, s3, z3 = self._slice_and_qparams(weight, bits, rows, cols, grad=False)
        q = _levels(w3, s3, z3, *qrange(bits, self.config.symmetric), self._offset)
        n_rows, n_cols = w3.shape[0], w3.shape[1] * w3.shape[2]
        symmetric = z3 is None
        return QuantizedWeight(
            codes=q.reshape(n_rows, n_cols).to(
                torch.int8 if symmetric else torch.int16
            ),
            scale=s3.squeeze(-1).half(),
            zero_point=None if symmetric else z3.squeeze(-1).to(torch.uint8),
            bits=bits,
            group_size=self.group_size
            if self.config.granularity == "group"
            else n_cols,
            shape=(n_rows, n_cols),
            grid=self.config.grid,
        )

    def storage_bits(self, n_rows: int, n_cols: int, bits: int) -> int:
        """Exact bits of an [n_rows, n_cols] slice: codes + 16/scale + 8/zero point."""
        bits = self._check_bits(bits)
        if bits == FLOAT_BITS:
            return n_rows * n_cols * FLOAT_BITS
        cols = self._check_cols(n_cols)
        if not isinstance(n_rows, int) or not 0 < n_rows <= self.out_features:
            raise ValueError(
                f"n_rows must be an integer in 1..{self.out_features}, got {n_rows!r}"
            )
        n_cols = self.in_features if cols is None else cols
        if self._per_tensor:
            n_scales = 1
        elif self.config.granularity == "channel":
            n_scales = n_rows
        else:
            n_scales = n_rows * (n_cols // self.group_size)
        per_scale = 16 if self.config.symmetric else 24
        return n_rows * n_cols * bits + n_scales * per_scale


def _select(weight: Tensor, rows: Tensor | None, cols: int | Tensor | None) -> Tensor:
    """``weight[rows][:, cols]`` for an index tensor or prefix length (None: all)."""
    w = weight if rows is None else weight.index_select(0, rows)
    if cols is None:
        return w
    return w.index_select(1, cols) if isinstance(cols, Tensor) else w[:, :cols]


# --- activations --------------------------------------------------------------
class ActivationFakeQuantizer(nn.Module):
    """Dynamic per-tensor asymmetric fake quantization of layer inputs (STE).

    The range is the current tensor's min/max (always including 0), so there
    is nothing to learn or store; this mimics int8 dynamic quantization at
    inference time.
    """

    def __init__(self, bits: int = 8) -> None:
        super().__init__()
        if bits != 8 or isinstance(bits, bool):
            raise ValueError(f"unsupported activation bits {bits!r}; valid: 8")
        self.bits = bits

    def extra_repr(self) -> str:
        return f"bits={self.bits}"

    def forward(self, x: Tensor) -> Tensor:
        if x.numel() == 0:
            return x
        xf = x.float()
        qmax = 2**self.bits - 1
        with torch.no_grad():
            lo, hi = torch.aminmax(xf)
            lo, hi = lo.clamp(max=0), hi.clamp(min=0)
            scale = ((hi - lo) / qmax).clamp(MIN_SCALE, MAX_SCALE)
            zero = (-lo / scale).round().clamp(0, qmax)
        q = (_round_ste(xf / scale) + zero).clamp(0, qmax)
        return ((q - zero) * scale).to(x.dtype)
