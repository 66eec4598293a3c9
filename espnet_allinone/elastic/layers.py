"""ElasticLinear and ElasticConv1d: one master weight, many active slices.

A layer runs with a set of its output rows (or, for the GLU pointwise conv,
the same rows of each half) and a set of its input features, at ``bits``
weight precision. A set is a prefix length (uniform width: the first k) or
any index list (a pruned layer). At full size and float it runs exactly the
stock ``nn.Linear`` / ``nn.Conv1d`` forward (no slicing, no copy), so a float
model is as fast as the stock one.

Quantization is optional: ``enable_quantization`` adds a ``weight_quantizer``
child (``espnet_allinone.quant.WeightFakeQuantizer``) that fake-quantizes the
active slice of the master weight on the active bit-width's grid.

``static_twin()`` returns what the active slice is on its own: a plain
``nn.Linear`` / ``nn.Conv1d`` (float) or a ``QuantizedLayer`` (codes, scales,
zero points and the float bias), which extraction stores as it is.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from espnet_allinone.precision import FLOAT_BITS
from espnet_allinone.quant.fake_quant import (
    ActivationFakeQuantizer,
    WeightFakeQuantizer,
)
from espnet_allinone.quant.packed_format import QuantizedLayer

Units = int | Sequence[int] | None
"""An active set: None (all), a prefix length, or an index list."""


def as_index(units: Units, full: int, what: str) -> tuple[int, ...]:
    """Normalise an active set to an index tuple (checked against ``full``)."""
    if units is None:
        return tuple(range(full))
    if isinstance(units, int) and not isinstance(units, bool):
        if not 1 <= units <= full:
            raise ValueError(f"active {what} {units} outside 1..{full}")
        return tuple(range(units))
    return _checked_index(tuple(int(i) for i in units), full, what)


@functools.lru_cache(maxsize=4096)
def _checked_index(index: tuple[int, ...], full: int, what: str) -> tuple[int, ...]:
    """An index set checked once (records are switched to every training step)."""
    if not index:
        raise ValueError(f"active {what}: empty index set")
    bad = [i for i in index if not 0 <= i < full]
    if bad:
        raise ValueError(f"active {what} index {bad[0]} outside 0..{full - 1}")
    if len(set(index)) != len(index):
        raise ValueError(f"active {what}: repeated index in {list(index)}")
    return index


def _is_prefix(index: tuple[int, ...]) -> bool:
    return index == tuple(range(len(index)))


class ElasticWeightMixin:
    """Shared slicing, quantization, permutation, size and export logic.

    Subclasses define the 2-D view of the weight (``rows x cols``) and the
    forward. ``cols_per_in`` is the number of weight columns one input
    feature owns (kernel size for a Conv1d, 1 for a Linear).
    """

    weight: nn.Parameter
    bias: nn.Parameter | None
    full_out: int
    full_in: int
    out_index: tuple[int, ...]
    in_index: tuple[int, ...]
    bits: int
    split_halves: bool
    quantize_bits: tuple

    def _setup_elastic(self, full_out: int, full_in: int, split_halves: bool = False) -> None:
        self.full_out = full_out
        self.full_in = full_in
        self.out_index = tuple(range(full_out))
        self.in_index = tuple(range(full_in))
        self.out_prefix = self.in_prefix = self.is_full = True
        self.bits = FLOAT_BITS
        self.split_halves = split_halves
        self.quantize_bits = ()
        self._index_cache: dict = {}

    # --- configuration ------------------------------------------------------
    @property
    def cols_per_in(self) -> int:
        return 1

    @property
    def rows_full(self) -> int:
        return self.weight.shape[0]

    @property
    def active_out(self) -> int:
        return len(self.out_index)

    @property
    def active_in(self) -> int:
        return len(self.in_index)

    def set_active(self, out: Units = None, in_: Units = None, bits: int = FLOAT_BITS) -> None:
        """Select the active output/input units (None: all; k: the first k; or
        an index list) and the weight bits."""
        name = type(self).__name__
        try:
            out_index = as_index(out, self.full_out, "out")
            in_index = as_index(in_, self.full_in, "in")
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
        if bits != FLOAT_BITS and bits not in self.quantize_bits:
            valid = ", ".join(str(b) for b in (*self.quantize_bits, FLOAT_BITS))
            raise ValueError(f"{name}: unsupported weight bits {bits}; valid: {valid}")
        if bits != FLOAT_BITS:
            quantizer = self.weight_quantizer
            group = quantizer.group_size
            n_cols = self._n_cols_for(len(in_index))
            if quantizer.config.granularity == "group" and n_cols % group:
                raise ValueError(
                    f"{name}: {len(in_index)} active inputs give {n_cols} weight columns, "
                    f"not a multiple of quant group_size {group}; choose widths whose sizes "
                    "are multiples of it"
                )
        previous = (self.out_index, self.in_index, self.bits)
        self._set_index(out_index, in_index, int(bits))
        cols = self._col_index() if bits != FLOAT_BITS else None
        if isinstance(cols, torch.Tensor):
            try:
                self.weight_quantizer._check_cols(cols)  # whole groups, or a clear error
            except ValueError as e:
                self._set_index(*previous)
                raise ValueError(f"{name}: {e}") from None

    def _set_index(self, out_index: tuple[int, ...], in_index: tuple[int, ...], bits: int) -> None:
        """Store the active sets with what the forward asks of them (computed once here,
        not on every call)."""
        self.out_index, self.in_index, self.bits = out_index, in_index, bits
        self.out_prefix, self.in_prefix = _is_prefix(out_index), _is_prefix(in_index)
        self.is_full = (len(out_index) == self.full_out and len(in_index) == self.full_in
                        and self.out_prefix and self.in_prefix and bits == FLOAT_BITS)

    def enable_quantization(self, bits_choices: Sequence[int], config) -> None:
        """Add the ``weight_quantizer`` child for the quantized bit-widths."""
        quant_bits = tuple(sorted(b for b in bits_choices if b != FLOAT_BITS))
        if not quant_bits:
            return
        rows, cols = self.rows_full, self.weight[0].numel()
        if config.granularity == "group" and cols % config.group_size and self._kind != "linear":
            # A depthwise row (kernel-size weights) or the first conv of a front (one input
            # channel) does not split into groups: one scale per channel.
            config = dataclasses.replace(config, granularity="channel")
        self.weight_quantizer = WeightFakeQuantizer(rows, cols, quant_bits, config)
        if config.activation_bits is not None:
            self.input_quantizer = ActivationFakeQuantizer(config.activation_bits)
        self.quantize_bits = quant_bits

    # --- active slices --------------------------------------------------------
    def _n_rows(self) -> int:
        return 2 * self.active_out if self.split_halves else self.active_out

    def _n_cols(self) -> int:
        return self._n_cols_for(self.active_in)

    def _n_cols_for(self, active_in: int) -> int:
        return active_in * self.cols_per_in

    def _cached(self, key: tuple, make) -> torch.Tensor:
        key = (*key, self.weight.device)
        index = self._index_cache.get(key)
        if index is None:
            index = self._index_cache[key] = make()
        return index

    def _row_index(self) -> torch.Tensor | None:
        """Weight rows of the active outputs (None: all rows, in order)."""
        if self.active_out == self.full_out and self.out_prefix:
            return None

        def make() -> torch.Tensor:
            first = torch.tensor(self.out_index, dtype=torch.long, device=self.weight.device)
            return torch.cat([first, first + self.full_out]) if self.split_halves else first

        return self._cached(("rows", self.out_index), make)

    def _col_index(self) -> int | torch.Tensor | None:
        """Weight columns of the active inputs: None (all), a prefix length, or indices."""
        n_cols = self._n_cols()
        if self.in_prefix or self._n_cols_for(1) == self.weight[0].numel():
            return None if n_cols == self.weight[0].numel() else n_cols

        def make() -> torch.Tensor:
            per = self.cols_per_in
            base = torch.tensor(self.in_index, dtype=torch.long, device=self.weight.device)
            return (base[:, None] * per + torch.arange(per, device=base.device)).reshape(-1)

        return self._cached(("cols", self.in_index), make)

    def _select_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        rows = self._row_index()
        if rows is None:
            return tensor
        if self.out_prefix and not self.split_halves:
            return tensor[: self.active_out]
        return tensor.index_select(0, rows)

    def active_weight_2d(self) -> torch.Tensor:
        """The active (fake-quantized when bits < 32) weight as rows x cols."""
        weight = self.weight.reshape(self.rows_full, -1)
        cols = self._col_index()
        if self.bits != FLOAT_BITS:
            return self.weight_quantizer(weight, self.bits, self._row_index(), cols)
        weight = self._select_rows(weight)
        if cols is None:
            return weight
        return weight.index_select(1, cols) if isinstance(cols, torch.Tensor) else weight[:, :cols]

    def active_bias(self) -> torch.Tensor | None:
        return None if self.bias is None else self._select_rows(self.bias)

    def active_weight_shape(self) -> tuple[int, ...]:
        """Shape of the active weight as its own layer would hold it."""
        return (self._n_rows(), self._n_cols())

    # --- export -----------------------------------------------------------------
    @torch.no_grad()
    def static_twin(self) -> nn.Module | QuantizedLayer:
        """The active slice on its own: a plain layer (float) or its quantized record."""
        bias = self.active_bias()
        bias = None if bias is None else bias.detach().clone().contiguous()
        if self.bits != FLOAT_BITS:
            full = self.weight.reshape(self.rows_full, -1)
            qw = self.weight_quantizer.quantize(full, self.bits, self._row_index(),
                                                self._col_index())
            return QuantizedLayer(qw, bias, self.active_weight_shape(), self._kind)
        twin = self._plain_twin()
        twin.weight.copy_(self.active_weight_2d().reshape(twin.weight.shape))
        if bias is not None:
            twin.bias.copy_(bias)
        return twin

    # --- sizes ------------------------------------------------------------------
    def active_own_sizes(self) -> list[tuple[int, int]]:
        """(parameters, storage bits) of each own tensor's active slice."""
        rows, cols = self._n_rows(), self._n_cols()
        n = rows * cols
        if self.bits == FLOAT_BITS:
            weight_bits = FLOAT_BITS * n
        else:
            weight_bits = self.weight_quantizer.storage_bits(rows, cols, self.bits)
        sizes = [(n, weight_bits)]
        if self.bias is not None:
            sizes.append((rows, FLOAT_BITS * rows))
        return sizes

    # --- importance reordering ----------------------------------------------
    @torch.no_grad()
    def permute_out(self, perm: torch.Tensor) -> None:
        """Reorder output units (both GLU halves alike), scales with them."""
        perm = perm.to(self.weight.device)
        if self.split_halves:
            perm = torch.cat([perm, perm + self.full_out])
        self.weight.copy_(self.weight[perm])
        if self.bias is not None:
            self.bias.copy_(self.bias[perm])
        if getattr(self, "weight_quantizer", None) is not None:
            self.weight_quantizer.permute_rows_(perm)

    @torch.no_grad()
    def permute_in(self, perm: torch.Tensor) -> None:
        """Reorder input features (a conv's kernel taps move with their channel).

        Column groups change, so the quantizer re-initialises its scales.
        """
        self.weight.copy_(self.weight[:, perm.to(self.weight.device)])
        if getattr(self, "weight_quantizer", None) is not None:
            self.weight_quantizer.reset()

    def _maybe_quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        quantizer = getattr(self, "input_quantizer", None)
        return x if quantizer is None or self.bits == FLOAT_BITS else quantizer(x)


class ElasticLinear(ElasticWeightMixin, nn.Linear):
    """``nn.Linear`` with an active output/input set and weight precision."""

    _kind = "linear"

    def __init__(self, in_features: int, out_features: int, bias: bool = True, **kw) -> None:
        super().__init__(in_features, out_features, bias=bias, **kw)
        self._setup_elastic(out_features, in_features)

    @classmethod
    def convert(cls, module: nn.Linear) -> ElasticLinear:
        """Turn a built ``nn.Linear`` into an ElasticLinear in place (same tensors)."""
        if type(module) is not nn.Linear:
            raise TypeError(f"expected torch.nn.Linear, got {type(module).__name__}")
        module.__class__ = cls
        module._setup_elastic(module.out_features, module.in_features)
        return module

    def _plain_twin(self) -> nn.Linear:
        rows, cols = self.active_weight_shape()
        return nn.Linear(cols, rows, bias=self.bias is not None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_full:
            return F.linear(x, self.weight, self.bias)
        x = self._maybe_quantize_input(x)
        return F.linear(x, self.active_weight_2d(), self.active_bias())


class ElasticConv1d(ElasticWeightMixin, nn.Conv1d):
    """``nn.Conv1d`` (dense or depthwise) with active channels and precision.

    Dense: the active output and input channels. Depthwise (``groups == in ==
    out``): the active channels, the input set ignored (it follows the
    output). ``split_halves``: output rows are two halves (GLU input); keep the
    same rows of each.
    """

    _kind = "conv1d"

    @classmethod
    def convert(cls, module: nn.Conv1d, split_halves: bool = False) -> ElasticConv1d:
        """Turn a built ``nn.Conv1d`` into an ElasticConv1d in place (same tensors)."""
        if type(module) is not nn.Conv1d:
            raise TypeError(f"expected torch.nn.Conv1d, got {type(module).__name__}")
        if module.padding_mode != "zeros":
            raise ValueError(f"padding_mode {module.padding_mode!r} unsupported; valid: zeros")
        depthwise = module.groups > 1
        if depthwise and not (module.groups == module.in_channels == module.out_channels):
            raise ValueError("grouped Conv1d must be depthwise (groups == in == out channels)")
        if split_halves and module.out_channels % 2:
            raise ValueError(f"split_halves needs even out channels, got {module.out_channels}")
        module.__class__ = cls
        full_out = module.out_channels // 2 if split_halves else module.out_channels
        module._setup_elastic(full_out, module.in_channels, split_halves)
        return module

    @property
    def depthwise(self) -> bool:
        return self.groups > 1

    @property
    def cols_per_in(self) -> int:
        return 1 if self.depthwise else self.kernel_size[0]

    def _n_cols_for(self, active_in: int) -> int:
        return self.kernel_size[0] if self.depthwise else active_in * self.kernel_size[0]

    def active_weight_shape(self) -> tuple[int, ...]:
        kernel = self.kernel_size[0]
        return (self._n_rows(), self._n_cols() // kernel, kernel)

    def _plain_twin(self) -> nn.Conv1d:
        rows, ins, kernel = self.active_weight_shape()
        groups = rows if self.depthwise else 1
        return nn.Conv1d(ins * groups, rows, kernel, stride=self.stride, padding=self.padding,
                         dilation=self.dilation, groups=groups, bias=self.bias is not None)

    def set_active(self, out: Units = None, in_: Units = None, bits: int = FLOAT_BITS) -> None:
        if self.depthwise:
            in_ = None
        super().set_active(out, in_, bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_full:
            return self._conv_forward(x, self.weight, self.bias)
        x = self._maybe_quantize_input(x)
        kernel = self.kernel_size[0]
        weight = self.active_weight_2d().reshape(self._n_rows(), -1, kernel)
        groups = self.active_out if self.depthwise else 1
        return F.conv1d(
            x, weight, self.active_bias(), self.stride, self.padding, self.dilation, groups
        )

    @torch.no_grad()
    def permute_in(self, perm: torch.Tensor) -> None:
        if self.depthwise:
            raise ValueError("a depthwise conv's input follows its output; use permute_out")
        super().permute_in(perm)


class ElasticConv2d(ElasticWeightMixin, nn.Conv2d):
    """``nn.Conv2d`` (the subsampling front's) with active channels and precision.

    The weight's 2-D view is ``[out, in * kh * kw]`` (an input channel owns its
    ``kh * kw`` taps). The front narrows only with ``elastic_front``
    (``elastic/front.py``); otherwise every channel runs and only bits change.
    """

    _kind = "conv2d"

    @classmethod
    def convert(cls, module: nn.Conv2d) -> ElasticConv2d:
        """Turn a built ``nn.Conv2d`` into an ElasticConv2d in place (same tensors)."""
        if type(module) is not nn.Conv2d:
            raise TypeError(f"expected torch.nn.Conv2d, got {type(module).__name__}")
        if module.groups != 1 or module.padding_mode != "zeros":
            raise ValueError("only dense Conv2d with zero padding can be quantized "
                             f"(groups {module.groups}, padding_mode {module.padding_mode!r})")
        module.__class__ = cls
        module._setup_elastic(module.out_channels, module.in_channels)
        return module

    @property
    def cols_per_in(self) -> int:
        return self.kernel_size[0] * self.kernel_size[1]

    def active_weight_shape(self) -> tuple[int, ...]:
        return (self._n_rows(), self.active_in, *self.kernel_size)

    def _plain_twin(self) -> nn.Conv2d:
        rows, ins, kh, kw = self.active_weight_shape()
        return nn.Conv2d(ins, rows, (kh, kw), stride=self.stride, padding=self.padding,
                         dilation=self.dilation, bias=self.bias is not None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_full:
            return self._conv_forward(x, self.weight, self.bias)
        x = self._maybe_quantize_input(x)
        return self._conv_forward(x, self.active_weight_2d().reshape(self.active_weight_shape()),
                                  self.active_bias())


def convert_weight_layer(module: nn.Module) -> ElasticWeightMixin:
    """``nn.Linear`` / ``Conv1d`` / ``Conv2d`` -> its elastic class, in place."""
    if type(module) is nn.Linear:
        return ElasticLinear.convert(module)
    if type(module) is nn.Conv1d:
        return ElasticConv1d.convert(module)
    if type(module) is nn.Conv2d:
        return ElasticConv2d.convert(module)
    if isinstance(module, ElasticWeightMixin):
        return module
    raise TypeError(
        f"cannot make {type(module).__name__} elastic; valid: torch.nn.Linear, "
        "torch.nn.Conv1d, torch.nn.Conv2d"
    )
