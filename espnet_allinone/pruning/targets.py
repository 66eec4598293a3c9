"""Pruning: the gates and Lagrangian of every target, held by an elastic encoder.

``encoder_conf.prune_targets: [0.5]`` gives the encoder one gate set per
target (``encoder.pruning``); the target is a fraction of the encoder's
unpruned parameters. The pruned subsystem ``d<max>-w<max>-<prec>-p0.5`` is
the architecture those gates have learned (hard gates, fitted to the target
size: ``PruningGates.fit``), at that precision.
"""

from __future__ import annotations

from fractions import Fraction

import torch
from torch import Tensor, nn

from espnet_allinone.arch import BlockLimits, SubnetArch
from espnet_allinone.pruning.config import PruneConfig
from espnet_allinone.pruning.gates import BlockCosts, PruningGates
from espnet_allinone.pruning.lagrangian import Lagrangian, ramped_target


def target_key(target: Fraction) -> str:
    """A module-name-safe key: 1/2 -> ``p0_5``."""
    return "p" + f"{float(target):g}".replace(".", "_")


class Pruning(nn.Module):
    """Gate sets and multipliers of each target, with the encoder's exact costs."""

    def __init__(self, targets: list[Fraction], limits: list[BlockLimits], config: PruneConfig,
                 unit_group: int, outside: int, costs: list[BlockCosts], full_params: int):
        super().__init__()
        self.config = config
        self.targets = list(targets)
        self.gates = nn.ModuleDict(
            {target_key(t): PruningGates(limits, config, unit_group) for t in targets})
        self.lagrangians = nn.ModuleDict(
            {target_key(t): Lagrangian(config.lambda_scale) for t in targets})
        self.outside, self.costs, self.full_params = outside, costs, full_params
        # Updates since pruning began (the target ramp's clock): in the checkpoint, and
        # 0 when pruning starts from a model trained without gates (init_param).
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def _fitted(self, target: Fraction) -> PruningGates:
        """The target's gates with their deterministic architecture fitted to the target
        size (``PruningGates.fit``)."""
        gates = self.gates[target_key(target)]
        gates.fit(self.costs, float(target) * self.full_params - self.outside)
        return gates

    def expected_params(self, target: Fraction, hard: bool = False) -> Tensor:
        """Expected encoder parameters under the target's gates (with ``hard``: exact,
        of the deterministic architecture fitted to the target)."""
        gates = self._fitted(target) if hard else self.gates[target_key(target)]
        return self.outside + gates.expected_params(self.costs, hard=hard)

    def penalty(self, target: Fraction, step: int | None = None
                ) -> tuple[Tensor, Tensor, float]:
        """(Lagrangian term, expected size fraction, the ramped target at ``step``;
        default: the pruning clock ``self.step``)."""
        step = int(self.step) if step is None else step
        fraction = self.expected_params(target) / self.full_params
        ramp = ramped_target(float(target), step, self.config.warmup_steps)
        return self.lagrangians[target_key(target)](fraction, ramp), fraction, ramp

    def masks(self, target: Fraction) -> list[dict]:
        """Sampled masks in training; in eval those of the fitted architecture."""
        gates = self.gates[target_key(target)]
        return (gates if self.training else self._fitted(target)).masks()

    def arch(self, target: Fraction, bits: int, front_bits: int,
             output_bits: int) -> SubnetArch:
        with torch.no_grad():
            return self._fitted(target).arch(bits, front_bits, output_bits)
