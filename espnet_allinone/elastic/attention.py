"""Elastic multi-head attention: a set of heads, head size fixed.

A mixin for ESPnet's ``MultiHeadedAttention`` and its relative-position
variants (legacy and latest). Concrete classes are declared next to the
encoder that imports ESPnet (``class X(ElasticAttentionMixin, Stock): pass``)
so this package stays torch-only. With a head set active (the first h heads,
or any index set for a pruned block), ``linear_q/k/v`` and ``linear_pos``
keep those heads' output rows, ``linear_out`` their input columns, and the
per-head parameters ``pos_bias_u/v`` their rows. ESPnet's own forward runs in
every case: it reads ``self.h`` and the per-head parameters, and this mixin
answers those reads with the active heads' rows (``__getattr__``), so no
part of ESPnet's attention is copied here.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import nn

from espnet_allinone.elastic.layers import as_index, convert_weight_layer
from espnet_allinone.precision import FLOAT_BITS

IN_PROJECTIONS = ("linear_q", "linear_k", "linear_v", "linear_pos")
OUT_PROJECTION = "linear_out"
HEAD_PARAMETERS = ("pos_bias_u", "pos_bias_v")
"""Parameters with one row per head."""


def head_index(heads: int | Sequence[int] | None, full_heads: int) -> tuple[int, ...]:
    """The kept heads: None (all), h (the first h) or an index set, checked (once)."""
    return as_index(heads, full_heads, "attention heads")


@functools.lru_cache(maxsize=1024)
def head_columns(heads: tuple[int, ...], head_size: int) -> tuple[int, ...]:
    """The projection rows (or output columns) of ``heads``, each ``head_size`` wide."""
    return tuple(h * head_size + j for h in heads for j in range(head_size))


class ElasticAttentionMixin:
    """Selects whole heads of a stock ESPnet attention module."""

    h: int
    d_k: int
    full_heads: int
    head_index: tuple[int, ...]

    @classmethod
    def convert(cls, module: nn.Module) -> nn.Module:
        """Turn a built stock attention module into ``cls`` in place (same tensors)."""
        stock = [b for b in cls.__mro__[1:] if b is not ElasticAttentionMixin]
        if type(module) is not stock[0]:
            raise TypeError(f"{cls.__name__} converts {stock[0].__name__}, got {type(module).__name__}")
        if getattr(module, "use_sdpa", False):
            raise ValueError("elastic attention does not support use_sdpa=True")
        module.__class__ = cls
        module.full_heads = module.h
        module.head_index = tuple(range(module.h))
        module._head_rows = None
        for name in (*IN_PROJECTIONS, OUT_PROJECTION):
            if getattr(module, name, None) is not None:
                convert_weight_layer(getattr(module, name))
        return module

    def __getattr__(self, name: str):
        value = super().__getattr__(name)
        if name in HEAD_PARAMETERS and self.__dict__.get("_head_rows") is not None:
            return value.index_select(0, self._head_rows.to(value.device))
        return value

    def set_active(self, heads: int | Sequence[int] | None = None,
                   bits: int = FLOAT_BITS) -> None:
        """Keep ``heads`` (None: all; h: the first h; or an index set) at ``bits``."""
        index = head_index(heads, self.full_heads)
        rows = head_columns(index, self.d_k)
        for name in IN_PROJECTIONS:
            if name in self._modules:
                self._modules[name].set_active(out=rows, bits=bits)
        self._modules[OUT_PROJECTION].set_active(in_=rows, bits=bits)
        self.head_index = index
        self.h = len(index)
        prefix = index == tuple(range(len(index)))
        self._head_rows = None if prefix and len(index) == self.full_heads else torch.tensor(index)

    @property
    def head_parameter_names(self) -> list[str]:
        return [n for n in HEAD_PARAMETERS if n in self._parameters]

    @torch.no_grad()
    def static_head_parameters(self) -> dict[str, torch.Tensor]:
        """The per-head parameters of the active heads (what an extracted block holds)."""
        return {n: getattr(self, n).detach().clone().contiguous()
                for n in self.head_parameter_names}

    def active_own_sizes(self) -> list[tuple[int, int]]:
        """The per-head parameters' active rows (the linears count themselves)."""
        n = self.h * self.d_k
        return [(n, FLOAT_BITS * n) for _ in self.head_parameter_names]

    @torch.no_grad()
    def permute_heads(self, order: torch.Tensor) -> None:
        """Reorder heads (function-preserving)."""
        order = order.to(self.linear_q.weight.device)
        rows = (order[:, None] * self.d_k + torch.arange(self.d_k, device=order.device)).reshape(-1)
        for name in IN_PROJECTIONS:
            if name in self._modules:
                self._modules[name].permute_out(rows)
        self._modules[OUT_PROJECTION].permute_in(rows)
        for name in self.head_parameter_names:
            param = self._parameters[name]
            param.copy_(param[order])

    def head_importance(self) -> torch.Tensor:
        """Per head: norm of its value rows times norm of its output columns."""
        with torch.no_grad():
            v = self.linear_v.weight.reshape(self.full_heads, -1).norm(dim=1)
            out = self.linear_out.weight.reshape(-1, self.full_heads, self.d_k)
            return v * out.transpose(0, 1).reshape(self.full_heads, -1).norm(dim=1)
