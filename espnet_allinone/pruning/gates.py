"""The gates of one pruning target over an elastic encoder, and what they decide.

Per block: one gate per attention head, per FFN unit group (each feed-forward
module), per conv channel group, and one per whole module (attention, each
feed-forward, conv), as the config's kinds say. ``masks()`` gives the per-unit
multipliers a training step applies (sampled) or eval uses (exact 0/1);
``expected_params()`` is the differentiable expected parameter count, exact
when the gates are hard; ``arch()`` turns the hard gates into the
architecture record (index sets; a module whose gate or every unit is off is
removed) that switching and extraction use.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from espnet_allinone.arch import BlockArch, BlockLimits, SubnetArch
from espnet_allinone.precision import FLOAT_BITS
from espnet_allinone.pruning.config import PruneConfig
from espnet_allinone.pruning.hard_concrete import HardConcrete


@dataclass(frozen=True)
class BlockCosts:
    """Exact parameters of one block: fixed parts plus per-unit costs (from the record)."""

    rest: int                       # norms and whatever no gate removes
    attention: tuple[int, int]      # (module fixed, per head)
    ffn: tuple[tuple[int, int], ...]  # per feed-forward: (module fixed, per unit)
    conv: tuple[int, int] | None    # (module fixed, per channel)


class BlockGates(nn.Module):
    """The gates of one block."""

    def __init__(self, limits: BlockLimits, config: PruneConfig, unit_group: int) -> None:
        super().__init__()
        gate = {"init_keep": config.init_keep, "beta": config.beta, "limits": config.limits,
                "lr_scale": config.gate_lr_scale}
        kinds = config.kinds
        self.unit_group = unit_group
        self.limits = limits
        self.heads = HardConcrete(limits.heads, **gate) if "heads" in kinds else None
        for units in (*limits.ffn_units, limits.conv_channels or unit_group):
            if units % unit_group:
                raise ValueError(f"{units} units do not split into gate groups of {unit_group}")
        self.ffn = nn.ModuleList(HardConcrete(u // unit_group, **gate) for u in limits.ffn_units) \
            if "ffn_units" in kinds else None
        has_conv = limits.conv_channels is not None
        self.conv = HardConcrete(limits.conv_channels // unit_group, **gate) \
            if has_conv and "conv_channels" in kinds else None
        n_modules = 1 + len(limits.ffn_units) + int(has_conv)
        self.modules_gate = HardConcrete(n_modules, **gate) if "modules" in kinds else None

    def _each(self, values: Tensor | None, n: int, group: int) -> Tensor | None:
        return None if values is None else values.repeat_interleave(group)[:n]

    def _parts(self, sample) -> dict:
        """Per-unit values of every gate set (``sample``: HardConcrete -> Tensor)."""
        lim, g = self.limits, self.unit_group
        out = {
            "heads": None if self.heads is None else sample(self.heads),
            "ffn": [None if self.ffn is None else self._each(sample(gates), n, g)
                    for gates, n in zip(self.ffn or [None] * len(lim.ffn_units), lim.ffn_units)],
            "conv": None if self.conv is None else self._each(sample(self.conv),
                                                              lim.conv_channels, g),
            "module": None if self.modules_gate is None else sample(self.modules_gate),
        }
        return out

    def masks(self) -> dict:
        return self._parts(lambda gates: gates())

    def keep_probs(self) -> dict:
        return self._parts(lambda gates: gates.keep_prob())

    def hard(self) -> dict:
        return self._parts(lambda gates: gates.hard().float())

    def expected_params(self, costs: BlockCosts, probs: dict, hard: bool = False) -> Tensor:
        """Expected parameters of the block under keep probabilities (or hard gates).

        A module is present when its module gate is on and at least one of its
        units is kept (the record removes it otherwise), so its fixed part is
        weighted by P(module) x P(any unit), its units by P(module) x P(unit):
        exact for hard gates.
        """
        lim = self.limits
        module = probs["module"]

        def module_p(i: int) -> Tensor | float:
            return 1.0 if module is None else module[i]

        def part(fixed: int, per: int, values: Tensor | None, n: int, group: int, i: int):
            if values is None:
                return module_p(i) * (fixed + per * n)
            if hard:
                any_kept = (values.max() > 0).to(values.dtype)
            else:  # 1 - prod over gate groups of (1 - p); units repeat each group's p
                log_none = torch.log1p(-values.clamp(max=1 - 1e-6)).sum() / group
                any_kept = 1 - torch.exp(log_none)
            return module_p(i) * (fixed * any_kept + per * values.sum())

        total = torch.tensor(float(costs.rest))
        total = total + part(*costs.attention, probs["heads"], lim.heads, 1, 0)
        for k, (cost, units) in enumerate(zip(costs.ffn, lim.ffn_units)):
            total = total + part(*cost, probs["ffn"][k], units, self.unit_group, 1 + k)
        if costs.conv is not None:
            total = total + part(*costs.conv, probs["conv"], lim.conv_channels,
                                 self.unit_group, 1 + len(lim.ffn_units))
        return total

    def block_arch(self, physical: int, bits: int) -> BlockArch:
        """The hard gates as this block's record (removed modules: empty sets)."""
        lim, hard = self.limits, self.hard()
        module = hard["module"]

        def chosen(values: Tensor | None, n: int, i: int) -> tuple[int, ...]:
            if module is not None and not module[i]:
                return ()
            if values is None:
                return tuple(range(n))
            return tuple(int(j) for j in torch.nonzero(values).flatten())

        heads = chosen(hard["heads"], lim.heads, 0)
        ffn = tuple(chosen(hard["ffn"][k], n, 1 + k) for k, n in enumerate(lim.ffn_units))
        conv = None if lim.conv_channels is None else chosen(
            hard["conv"], lim.conv_channels, 1 + len(lim.ffn_units))
        return BlockArch(physical, heads, ffn, conv, bits)


class PruningGates(nn.Module):
    """All blocks' gates of one pruning target."""

    def __init__(self, limits: list[BlockLimits], config: PruneConfig, unit_group: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(BlockGates(lim, config, unit_group) for lim in limits)
        self._fitted: tuple | None = None

    def _unit_gates(self) -> list[HardConcrete]:
        return [g for b in self.blocks for g in (b.heads, *(b.ffn or ()), b.conv)
                if g is not None]

    @torch.no_grad()
    def fit(self, costs: list[BlockCosts], budget: float) -> None:
        """Fit the deterministic architecture to ``budget`` parameters (blocks only).

        One logit threshold over every unit gate (heads, FFN unit groups, conv channel
        groups; module gates keep their count rule): of the thresholds at the gates'
        own logits, the one whose hard architecture's exact size is closest to the
        budget. The Lagrangian drives the expected size to the target, but in a short
        run it lags the ramp and then overshoots; this makes the extracted model the
        target's size whatever the residual (to within one unit group). Cached until
        the gate logits change.
        """
        gates = self._unit_gates()
        key = (tuple(g.log_alpha._version for g in gates), float(budget))
        if self._fitted == key or not gates:
            return
        logits = torch.cat([g.logits.detach() for g in gates])
        best = None
        for tau in sorted(set(logits.tolist())):
            for g in gates:
                g.threshold = tau
            size = float(self.expected_params(costs, hard=True))
            if best is None or abs(size - budget) < best[0]:
                best = (abs(size - budget), tau)
            if size < budget:  # sizes only fall as the threshold rises
                break
        for g in gates:
            g.threshold = best[1]
        self._fitted = key

    def masks(self) -> list[dict]:
        return [block.masks() for block in self.blocks]

    def expected_params(self, costs: list[BlockCosts], hard: bool = False) -> Tensor:
        return sum(b.expected_params(c, b.hard() if hard else b.keep_probs(), hard)
                   for b, c in zip(self.blocks, costs))

    def arch(self, bits: int = FLOAT_BITS, front_bits: int = FLOAT_BITS,
             output_bits: int = FLOAT_BITS) -> SubnetArch:
        blocks = tuple(b.block_arch(i, bits) for i, b in enumerate(self.blocks))
        return SubnetArch(blocks, front_bits=front_bits, output_bits=output_bits)
