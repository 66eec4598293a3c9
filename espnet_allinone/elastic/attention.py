"""Elastic multi-head attention: the first h heads, head size fixed.

A mixin for ESPnet's ``MultiHeadedAttention`` and its relative-position
variants (legacy and latest). Concrete classes are declared next to the
encoder that imports ESPnet (``class X(ElasticAttentionMixin, Stock): pass``)
so this package stays torch-only. With h heads active, ``linear_q/k/v`` and
``linear_pos`` keep their first ``h * d_k`` output rows, ``linear_out`` its
first ``h * d_k`` input columns, ``pos_bias_u/v`` their first h rows. At all
heads the stock forward runs unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from espnet_allinone.elastic.layers import (
    FLOAT_BITS,
    ElasticWeightMixin,
    convert_weight_layer,
)

_IN_PROJECTIONS = ("linear_q", "linear_k", "linear_v", "linear_pos")


class ElasticAttentionMixin:
    """Slices whole heads of a stock ESPnet attention module."""

    h: int
    d_k: int
    full_heads: int

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
        for name in (*_IN_PROJECTIONS, "linear_out"):
            if getattr(module, name, None) is not None:
                convert_weight_layer(getattr(module, name))
        return module

    @property
    def is_relative(self) -> bool:
        return hasattr(self, "pos_bias_u")

    def weight_layers(self) -> list[ElasticWeightMixin]:
        return [getattr(self, n) for n in (*_IN_PROJECTIONS, "linear_out") if hasattr(self, n)]

    def set_active(self, heads: int | None = None, bits: int = FLOAT_BITS) -> None:
        heads = self.full_heads if heads is None else int(heads)
        if not 1 <= heads <= self.full_heads:
            raise ValueError(f"attention heads {heads} outside 1..{self.full_heads}")
        width = heads * self.d_k
        for name in _IN_PROJECTIONS:
            if hasattr(self, name):
                getattr(self, name).set_active(out=width, bits=bits)
        self.linear_out.set_active(in_=width, bits=bits)
        self.h = heads

    def forward(self, *args, **kwargs):
        if self.h == self.full_heads or not self.is_relative:
            return super().forward(*args, **kwargs)
        return self._forward_relative(*args, **kwargs)

    def _forward_relative(self, query, key, value, pos_emb, mask):
        """ESPnet's relative-position attention with the bias rows of the active heads."""
        q, k, v = self.forward_qkv(query, key, value)
        q = q.transpose(1, 2)  # (batch, time1, head, d_k)
        p = self.linear_pos(pos_emb).view(pos_emb.size(0), -1, self.h, self.d_k)
        p = p.transpose(1, 2)
        q_with_bias_u = (q + self.pos_bias_u[: self.h]).transpose(1, 2)
        q_with_bias_v = (q + self.pos_bias_v[: self.h]).transpose(1, 2)
        matrix_ac = torch.matmul(q_with_bias_u, k.transpose(-2, -1))
        matrix_bd = self.rel_shift(torch.matmul(q_with_bias_v, p.transpose(-2, -1)))
        scores = (matrix_ac + matrix_bd) / math.sqrt(self.d_k)
        return self.forward_attention(v, scores, mask)

    def active_own_sizes(self) -> list[tuple[int, int]]:
        """pos_bias_u/v rows of the active heads (the linears count themselves)."""
        if not self.is_relative:
            return []
        n = self.h * self.d_k
        return [(n, FLOAT_BITS * n), (n, FLOAT_BITS * n)]

    @torch.no_grad()
    def permute_heads(self, order: torch.Tensor) -> None:
        """Reorder heads (function-preserving)."""
        order = order.to(self.linear_q.weight.device)
        rows = (order[:, None] * self.d_k + torch.arange(self.d_k, device=order.device)).reshape(-1)
        for name in _IN_PROJECTIONS:
            if hasattr(self, name):
                getattr(self, name).permute_out(rows)
        self.linear_out.permute_in(rows)
        if self.is_relative:
            self.pos_bias_u.copy_(self.pos_bias_u[order])
            self.pos_bias_v.copy_(self.pos_bias_v[order])

    def head_importance(self) -> torch.Tensor:
        """Per head: norm of its value rows times norm of its output columns."""
        with torch.no_grad():
            v = self.linear_v.weight.reshape(self.full_heads, -1).norm(dim=1)
            out = self.linear_out.weight.reshape(-1, self.full_heads, self.d_k)
            return v * out.transpose(0, 1).reshape(self.full_heads, -1).norm(dim=1)
