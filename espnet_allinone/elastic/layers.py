"""ElasticLinear and ElasticConv1d: one master weight, many active slices.

A layer runs with its first ``active_out`` output rows (or, for the GLU
pointwise conv, the first ``active_out`` rows of each half) and its first
``active_in`` input features, at ``bits`` weight precision. At full size and
float it runs exactly the stock ``nn.Linear`` / ``nn.Conv1d`` forward (no
slicing, no copy), so a float model is as fast as the stock one.

Quantisation is optional: ``enable_quantization`` adds a ``weight_quantizer``
child (``espnet_allinone.quant.WeightFakeQuantizer``) that fake-quantises the
active slice of the master weight on the active bit-width's grid.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

FLOAT_BITS = 32


class ElasticWeightMixin:
    """Shared slicing, quantisation, permutation and size logic.

    Subclasses define the 2-D view of the weight (``rows x cols``) and the
    forward. ``cols_per_in`` is the number of weight columns one input
    feature owns (kernel size for a Conv1d, 1 for a Linear).
    """

    weight: nn.Parameter
    bias: nn.Parameter | None
    full_out: int
    full_in: int
    active_out: int
    active_in: int
    bits: int
    split_halves: bool
    quantize_bits: tuple

    def _setup_elastic(self, full_out: int, full_in: int, split_halves: bool = False) -> None:
        self.full_out = full_out
        self.full_in = full_in
        self.active_out = full_out
        self.active_in = full_in
        self.bits = FLOAT_BITS
        self.split_halves = split_halves
        self.quantize_bits = ()
        self._row_cache: dict = {}

    # --- configuration ------------------------------------------------------
    @property
    def cols_per_in(self) -> int:
        return 1

    @property
    def rows_full(self) -> int:
        return self.weight.shape[0]

    def set_active(
        self,
        out: int | None = None,
        in_: int | None = None,
        bits: int = FLOAT_BITS,
    ) -> None:
        """Select the active output/input sizes (None: full) and weight bits."""
        out = self.full_out if out is None else int(out)
        in_ = self.full_in if in_ is None else int(in_)
        if not 1 <= out <= self.full_out:
            raise ValueError(f"{type(self).__name__}: active out {out} outside 1..{self.full_out}")
        if not 1 <= in_ <= self.full_in:
            raise ValueError(f"{type(self).__name__}: active in {in_} outside 1..{self.full_in}")
        if bits != FLOAT_BITS and bits not in self.quantize_bits:
            valid = ", ".join(str(b) for b in (*self.quantize_bits, FLOAT_BITS))
            raise ValueError(
                f"{type(self).__name__}: unsupported weight bits {bits}; valid: {valid}"
            )
        previous = (self.active_out, self.active_in, self.bits)
        self.active_out, self.active_in, self.bits = out, in_, int(bits)
        if self.bits != FLOAT_BITS:
            quantizer = self.weight_quantizer
            if quantizer.config.granularity == "group" and self._n_cols() % quantizer.group_size:
                self.active_out, self.active_in, self.bits = previous
                raise ValueError(
                    f"{type(self).__name__}: {in_} active inputs give {self._n_cols_for(in_)} "
                    f"weight columns, not a multiple of quant group_size "
                    f"{quantizer.group_size}; choose widths whose sizes are multiples of it"
                )

    @property
    def is_full(self) -> bool:
        return (
            self.active_out == self.full_out
            and self.active_in == self.full_in
            and self.bits == FLOAT_BITS
        )

    def enable_quantization(self, bits_choices: Sequence[int], config) -> None:
        """Add the ``weight_quantizer`` child for the quantised bit-widths."""
        from espnet_allinone.quant.fake_quant import (
            ActivationFakeQuantizer,
            WeightFakeQuantizer,
        )

        quant_bits = tuple(sorted(b for b in bits_choices if b != FLOAT_BITS))
        if not quant_bits:
            return
        rows, cols = self.rows_full, self.weight[0].numel()
        if (
            getattr(self, "groups", 1) > 1
            and config.granularity == "group"
            and cols % config.group_size
        ):
            # A depthwise row holds only kernel-size weights: one scale per channel.
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

    def _row_index(self) -> torch.Tensor | None:
        """Row indices of the active slice (None: all rows)."""
        if self.active_out == self.full_out:
            return None
        key = (self.active_out, self.weight.device)
        index = self._row_cache.get(key)
        if index is None:
            first = torch.arange(self.active_out, device=self.weight.device)
            index = torch.cat([first, first + self.full_out]) if self.split_halves else first
            self._row_cache[key] = index
        return index

    def _slice_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.active_out == self.full_out:
            return tensor
        if self.split_halves:
            return torch.cat(
                [tensor[: self.active_out], tensor[self.full_out : self.full_out + self.active_out]]
            )
        return tensor[: self.active_out]

    def active_weight_2d(self) -> torch.Tensor:
        """The active (fake-quantised when bits < 32) weight as rows x cols."""
        weight = self.weight.reshape(self.rows_full, -1)
        n_cols = self._n_cols()
        if self.bits != FLOAT_BITS:
            cols = None if n_cols == weight.shape[1] else n_cols
            return self.weight_quantizer(weight, self.bits, self._row_index(), cols)
        weight = self._slice_rows(weight)
        return weight if n_cols == weight.shape[1] else weight[:, :n_cols]

    def active_bias(self) -> torch.Tensor | None:
        return None if self.bias is None else self._slice_rows(self.bias)

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

        Column groups change, so the quantiser re-initialises its scales.
        """
        self.weight.copy_(self.weight[:, perm.to(self.weight.device)])
        if getattr(self, "weight_quantizer", None) is not None:
            self.weight_quantizer.reset()

    def _maybe_quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        quantizer = getattr(self, "input_quantizer", None)
        return x if quantizer is None or self.bits == FLOAT_BITS else quantizer(x)


class ElasticLinear(ElasticWeightMixin, nn.Linear):
    """``nn.Linear`` with an active output/input prefix and weight precision."""

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_full:
            return F.linear(x, self.weight, self.bias)
        x = self._maybe_quantize_input(x)
        return F.linear(x, self.active_weight_2d(), self.active_bias())


class ElasticConv1d(ElasticWeightMixin, nn.Conv1d):
    """``nn.Conv1d`` (dense or depthwise) with active channels and precision.

    Dense: ``active_out`` output and ``active_in`` input channels. Depthwise
    (``groups == in == out``): ``active_out`` channels, ``active_in`` ignored.
    ``split_halves``: output rows are two halves (GLU input); keep the first
    ``active_out`` of each.
    """

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

    def set_active(self, out=None, in_=None, bits: int = FLOAT_BITS) -> None:
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


def convert_weight_layer(module: nn.Module) -> ElasticWeightMixin:
    """``nn.Linear`` -> ElasticLinear, ``nn.Conv1d`` -> ElasticConv1d, in place."""
    if type(module) is nn.Linear:
        return ElasticLinear.convert(module)
    if type(module) is nn.Conv1d:
        return ElasticConv1d.convert(module)
    if isinstance(module, ElasticWeightMixin):
        return module
    raise TypeError(
        f"cannot make {type(module).__name__} elastic; valid: torch.nn.Linear, torch.nn.Conv1d"
    )
