"""Hard-concrete gates (Louizos et al. 2018): a relaxed, differentiable L0 norm.

Each gate is a stretched, clamped binary concrete variable: in training it is
sampled (``u ~ U(0, 1)``, ``s = sigmoid((log u - log(1-u) + log_alpha) / beta)``,
``z = clamp(s * (r - l) + l, 0, 1)``), so exact zeros and ones occur and the
gradient reaches ``log_alpha``; in eval it is deterministic and exactly 0 or 1.
``keep_prob`` is P(z > 0), the expected L0 norm of a gate. The deterministic
gates keep the ``round(sum(keep_prob))`` gates of largest ``log_alpha`` (as
DPHuBERT and CoFi do), so the hard architecture has the size the Lagrangian
drove the *expected* size to; keeping ``log_alpha > 0`` (the median) instead
drops gates whose keep probability is still up to 0.83 and lands well below
the target (measured: 0.39 of the parameters for a 0.5 target). A gate set
given a ``threshold`` (the budget fit of ``PruningGates.fit``) keeps the gates
whose logit is at least that instead.

``lr_scale``: the gate logits are ``lr_scale`` times the stored parameter, so
one optimiser (ESPnet builds a single one, at the model's learning rate) moves
the gates ``lr_scale`` times faster than the weights, as DPHuBERT's separate
learning rate for them does.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class HardConcrete(nn.Module):
    """``n`` independent gates with temperature ``beta`` and stretch limits ``(l, r)``."""

    def __init__(self, n: int, init_keep: float = 0.9, beta: float = 2 / 3,
                 limits: tuple[float, float] = (-0.1, 1.1), lr_scale: float = 1.0) -> None:
        super().__init__()
        if n < 1:
            raise ValueError(f"a gate set needs n >= 1 gates, got {n}")
        if not 0 < init_keep < 1:
            raise ValueError(f"init_keep must be in (0, 1), got {init_keep}")
        low, high = limits
        if not (low < 0 and high > 1):
            raise ValueError(f"stretch limits must satisfy l < 0 < 1 < r, got {limits}")
        if lr_scale <= 0:
            raise ValueError(f"lr_scale must be > 0, got {lr_scale}")
        self.beta, self.low, self.high = float(beta), float(low), float(high)
        self.lr_scale = float(lr_scale)
        self.log_alpha = nn.Parameter(
            torch.full((n,), math.log(init_keep / (1 - init_keep)) / self.lr_scale))
        self.threshold: float | None = None  # set by a budget fit; None: the count rule

    @property
    def logits(self) -> Tensor:
        """The gates' log alpha (the stored parameter times ``lr_scale``)."""
        return self.lr_scale * self.log_alpha

    def extra_repr(self) -> str:
        return f"n={self.log_alpha.numel()}, beta={self.beta:.3g}, limits=({self.low}, {self.high})"

    def forward(self) -> Tensor:
        """Sampled gates in training; the deterministic 0/1 gates in eval."""
        if not self.training:
            return self.hard().to(self.log_alpha.dtype)
        u = torch.rand_like(self.log_alpha).clamp(1e-6, 1 - 1e-6)
        s = torch.sigmoid((u.log() - (-u).log1p() + self.logits) / self.beta)
        return (s * (self.high - self.low) + self.low).clamp(0.0, 1.0)

    def keep_prob(self) -> Tensor:
        """P(z > 0) of each gate: its expected contribution to the L0 norm."""
        return torch.sigmoid(self.logits - self.beta * math.log(-self.low / self.high))

    def hard(self) -> Tensor:
        """The deterministic gates: the round(E[L0]) gates of largest log alpha are on
        (or, after a budget fit, those whose logit reaches the fitted threshold)."""
        if self.threshold is not None:
            return self.logits.detach() >= self.threshold
        keep = round(float(self.keep_prob().detach().sum()))
        mask = torch.zeros_like(self.log_alpha, dtype=torch.bool)
        if keep:
            mask[torch.topk(self.log_alpha.detach(), keep).indices] = True
        return mask
