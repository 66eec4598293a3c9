"""The Lagrangian that drives the expected size to the target.

``lambda1 * (s - t) + lambda2 * (s - t)^2`` (DPHuBERT; Wang et al. 2020), with
``s`` the expected size fraction and ``t`` the (ramped) target. The model
minimises it; the multipliers must *maximise* it. ESPnet builds one optimiser
over all parameters and steps it to descend, so the multipliers enter through
a gradient-reversal: the same optimiser step moves them up their gradient
(gradient ascent), with no second optimiser group to configure. Exclude them
from weight decay in spirit: they start at 0 and the default decay is tiny.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return -grad


class Lagrangian(nn.Module):
    """The two multipliers of one pruning target."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = float(scale)
        self.lambda1 = nn.Parameter(torch.zeros(()))
        self.lambda2 = nn.Parameter(torch.zeros(()))

    def multipliers(self) -> tuple[Tensor, Tensor]:
        """(lambda1, lambda2) as the penalty uses them (scaled)."""
        return self.scale * self.lambda1, self.scale * self.lambda2

    def forward(self, expected_fraction: Tensor, target: float) -> Tensor:
        gap = expected_fraction - target
        lambda1, lambda2 = (self.scale * _Reverse.apply(p) for p in (self.lambda1, self.lambda2))
        return lambda1 * gap + lambda2 * gap * gap


def ramped_target(target: float, step: int, warmup_steps: int) -> float:
    """The target falls linearly from 1 (unpruned) to ``target`` over ``warmup_steps``."""
    if warmup_steps <= 0:
        return target
    return 1.0 - (1.0 - target) * min(1.0, step / warmup_steps)
