"""DepthLayerNorm: the encoder's final LayerNorm with its own affine weights per depth.

With one shared final norm, the first blocks of a deep model must also be the
last blocks of a shallow one, and one gain/bias must fit both outputs. Here
each listed depth gets its own weight and bias (the full depth keeps the stock
names ``weight``/``bias``, others add ``weight_d<depth>``/``bias_d<depth>``),
chosen with the architecture record. The extracted model holds only its
depth's pair, as a plain ``nn.LayerNorm`` (``static_twin``), so stock loading
is unchanged and the file does not grow.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from espnet_allinone.precision import FLOAT_BITS


class DepthLayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` with one (weight, bias) per encoder depth."""

    @classmethod
    def convert(cls, module: nn.LayerNorm, depths: Iterable[int]) -> DepthLayerNorm:
        """Turn a built LayerNorm (torch's, or ESPnet's over the last dimension) into
        this class in place; each depth but the largest starts from a copy of the
        stock affine weights."""
        if not isinstance(module, nn.LayerNorm) or getattr(module, "dim", -1) != -1:
            raise TypeError(f"expected a LayerNorm over the last dimension, got {module!r}")
        if not module.elementwise_affine:
            raise ValueError("a final norm per depth needs elementwise_affine LayerNorm")
        depths = tuple(sorted({int(d) for d in depths}))
        if not depths or depths[0] < 1:
            raise ValueError(f"depths must be positive block counts, got {list(depths)}")
        module.__class__ = cls
        module.depths = depths
        module.depth = depths[-1]
        for depth in depths[:-1]:
            module.register_parameter(f"weight_d{depth}",
                                      nn.Parameter(module.weight.detach().clone()))
            module.register_parameter(f"bias_d{depth}",
                                      nn.Parameter(module.bias.detach().clone()))
        return module

    def set_depth(self, depth: int) -> None:
        """Use the affine weights of ``depth`` (a listed depth)."""
        if depth not in self.depths:
            raise ValueError(f"final norm has no weights for depth {depth}; depths: "
                             + ", ".join(map(str, self.depths)))
        self.depth = depth

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) of the active depth."""
        if self.depth == self.depths[-1]:
            return self.weight, self.bias
        return getattr(self, f"weight_d{self.depth}"), getattr(self, f"bias_d{self.depth}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.affine()
        return F.layer_norm(x, self.normalized_shape, weight, bias, self.eps)

    @torch.no_grad()
    def static_twin(self) -> nn.LayerNorm:
        """A plain ``nn.LayerNorm`` holding the active depth's weights."""
        twin = nn.LayerNorm(self.normalized_shape, eps=self.eps)
        weight, bias = self.affine()
        twin.weight.copy_(weight)
        twin.bias.copy_(bias)
        return twin

    def active_own_sizes(self) -> list[tuple[int, int]]:
        """(parameters, storage bits) of the active depth's weight and bias."""
        n = self.weight.numel()
        return [(n, FLOAT_BITS * n)] * 2

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, depths={list(self.depths)}"
