"""Which subsystems a training step runs: the sampling strategies.

One all-in-one step runs several subsystems ("paths") on the same batch. The
strategies, chosen in YAML (``model_conf.sampling``):

``sandwich`` (default)
    the largest and the smallest subsystem plus ``num_random`` others drawn
    uniformly without replacement (the "sandwich rule": the extremes bound
    every subsystem in between, the random ones cover the middle).
``all``
    every subsystem of ``subsystems`` (or of the whole space) every step.
``random``
    ``num_random`` subsystems drawn uniformly without replacement.
``explicit``
    the fixed list ``subsystems`` every step, in the given order (the
    largest subsystem, the distillation teacher, moved to the front).

Every DDP rank must run the same paths (same graph, same stats keys), so the
draw never touches the global RNG: each step seeds its own
``torch.Generator`` from ``(seed, step)``, where ``step`` is a counter kept
by the caller (the model keeps it in a buffer, so it is in the checkpoint
and ``--resume`` continues the sequence). The teacher for self-distillation
is the space's largest subsystem; it is always the first path when present.

:meth:`SubsystemSampler.draw` tells the *fixed* paths of a step (run every
step: sandwich's largest and smallest, every path of ``all``/``explicit``)
from the *random* ones (drawn this step). The model reports the fixed paths
under their own keys and the random ones under one aggregate key per stat,
so every key is reported every step and the training log shows no ``nan``.

Draw weights (``model_conf.draw_weights``, default none: uniform): a mapping
``{subsystem: weight}`` over the drawable subsystems (sandwich's middle, or
the pool of ``random``); unlisted ones weigh 1. The random paths are then
drawn without replacement with probabilities proportional to the weights,
so a schedule can favour the subsystems furthest from their twins at the
same cost per step.

Mixed records (``model_conf.mixed_share``, default 0): each random path is,
with this probability, replaced by a *mixed* record
(:class:`~espnet_allinone.search.records.MixedRecord`): a depth from the
space's depths and, for each of ``num_blocks`` block positions, a precision
and a width drawn uniformly from the space (``mixed_per_module``: one width
per module kind), and the precision the front and output layers follow
(``part_precisions``), so training covers the non-uniform records a search later
picks from. The draw comes from the same per-step generator after the
uniform draw, so it is as reproducible, the uniform draws are unchanged, and
the number of paths (and stats keys) stays fixed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from espnet_allinone.search.records import KINDS, BlockChoice, MixedRecord
from espnet_allinone.subsystem import SearchSpace, Subsystem, SubsystemError

STRATEGIES = ("sandwich", "all", "random", "explicit")
"""Valid values of ``model_conf.sampling``."""


@dataclass(frozen=True)
class StepPaths:
    """The paths of one training step: ``fixed`` ones run every step, ``random`` ones drawn."""

    fixed: tuple[Subsystem, ...]
    random: tuple[Subsystem | MixedRecord, ...]

    @property
    def paths(self) -> list[Subsystem | MixedRecord]:
        """All paths in run order (fixed first; ``path_weights`` follow this order)."""
        return [*self.fixed, *self.random]


def step_seed(seed: int, step: int) -> int:
    """A 63-bit seed that depends only on ``(seed, step)`` (same on every host)."""
    digest = hashlib.blake2b(f"{int(seed)}:{int(step)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class SubsystemSampler:
    """Chooses the paths of each training step, deterministically from the step number."""

    def __init__(
        self,
        space: SearchSpace,
        strategy: str = "sandwich",
        num_random: int = 1,
        subsystems: str | Sequence[str | Subsystem] | None = None,
        seed: int = 0,
        mixed_share: float = 0.0,
        mixed_per_module: bool = False,
        draw_weights: dict[str, float] | None = None,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(
                f"unknown sampling strategy {strategy!r}; valid: {', '.join(STRATEGIES)}"
            )
        if not isinstance(num_random, int) or isinstance(num_random, bool) or num_random < 0:
            raise ValueError(f"num_random must be an integer >= 0, got {num_random!r}")
        self.space = space
        self.strategy = strategy
        self.seed = int(seed)
        if strategy == "explicit" and not subsystems:
            raise ValueError(
                "sampling 'explicit' needs a list in model_conf.subsystems, "
                f"e.g. [{space.largest}, {space.smallest}]"
            )
        # The pool: where paths come from (validated against the space). Pruned
        # subsystems are not drawn: their gated paths run every step (the model).
        pool = space.resolve(subsystems) if subsystems else space.members()
        pruned = [str(s) for s in pool if s.prune is not None]
        if pruned and subsystems:
            raise ValueError(
                f"model_conf.subsystems lists pruned subsystem(s) {', '.join(pruned)}: their "
                "gated paths run every step by themselves; list unpruned subsystems only")
        pool = [s for s in pool if s.prune is None]
        if strategy == "explicit":  # the given order (path_weights follow it), teacher first
            pool = sorted(pool, key=lambda s: s != space.largest)
        else:
            pool = _largest_first(pool, space)
        self.pool: list[Subsystem] = pool
        if strategy == "random":
            if num_random < 1:
                raise ValueError("sampling 'random' needs num_random >= 1")
            if num_random > len(self.pool):
                raise ValueError(
                    f"num_random {num_random} exceeds the {len(self.pool)} subsystems "
                    "to draw from; lower it or use sampling 'all'"
                )
        self.num_random = num_random
        self.draw_weights = self._check_draw_weights(draw_weights)
        self.mixed_share = _check_share(mixed_share)
        self.mixed_per_module = bool(mixed_per_module)
        if self.mixed_share > 0 and self.num_paths == len(self.fixed):
            raise ValueError(
                f"mixed_share {mixed_share} replaces randomly drawn paths, but sampling "
                f"{strategy!r} draws none here (num_random {num_random}, "
                f"{len(self._sandwich_middle()) if strategy == 'sandwich' else len(pool)} "
                "subsystems to draw from); use sampling sandwich or random with num_random "
                ">= 1, or mixed_share 0")

    # --- the fixed part of each step ------------------------------------
    @property
    def fixed(self) -> list[Subsystem]:
        """Paths run on every step (before any random ones)."""
        if self.strategy in ("all", "explicit"):
            return list(self.pool)
        if self.strategy == "sandwich":
            big, small = self.space.largest, self.space.smallest
            return [big] if big == small else [big, small]
        return []

    @property
    def num_paths(self) -> int:
        """How many paths every step runs (the length ``path_weights`` must have)."""
        if self.strategy == "sandwich":
            return len(self.fixed) + min(self.num_random, len(self._sandwich_middle()))
        if self.strategy == "random":
            return self.num_random
        return len(self.pool)

    @property
    def always_has_largest(self) -> bool:
        """True when every step contains the space's largest subsystem (the teacher)."""
        return self.space.largest in self.fixed

    def _sandwich_middle(self) -> list[Subsystem]:
        fixed = set(self.fixed)
        return [s for s in self.pool if s not in fixed]

    def _drawable(self) -> list[Subsystem]:
        """The subsystems random paths come from (none for ``all``/``explicit``)."""
        if self.strategy == "sandwich":
            return self._sandwich_middle()
        return self.pool if self.strategy == "random" else []

    def _check_draw_weights(self, weights: dict[str, float] | None) -> torch.Tensor | None:
        """The weight of each drawable subsystem in draw order, or None (uniform)."""
        if not weights:
            return None
        drawable = self._drawable()
        if not drawable:
            raise ValueError(f"draw_weights needs randomly drawn paths, but sampling "
                             f"{self.strategy!r} draws none here; use sampling sandwich or "
                             "random, or drop draw_weights")
        if not isinstance(weights, dict):
            raise TypeError(f"draw_weights must map subsystems to weights, got {weights!r}")
        names = {str(s): i for i, s in enumerate(drawable)}
        values = [1.0] * len(drawable)
        for key, weight in weights.items():
            try:
                sub = str(self.space.validate(key))
            except SubsystemError as e:
                raise ValueError(f"draw_weights: {e}") from None
            if sub not in names:
                raise ValueError(f"draw_weights names {key!r}, which is never drawn here "
                                 f"(it runs every step or is outside the pool); drawable: "
                                 f"{', '.join(names)}")
            if (not isinstance(weight, (int, float)) or isinstance(weight, bool)
                    or not weight > 0 or weight == float("inf")):
                raise ValueError(f"draw_weights[{key!r}] must be a positive number, "
                                 f"got {weight!r}")
            values[names[sub]] = float(weight)
        return torch.tensor(values, dtype=torch.float64)

    # --- the draw --------------------------------------------------------
    def draw(self, step: int) -> StepPaths:
        """The fixed and the random paths of training step ``step``; the same on every process.

        How many random paths a step has is the same every step (so are its stats keys).
        """
        fixed = tuple(self.fixed)
        if self.strategy in ("all", "explicit"):
            return StepPaths(fixed, ())
        gen = torch.Generator().manual_seed(step_seed(self.seed, step))
        source = self._drawable()
        k = min(self.num_random, len(source))
        if self.draw_weights is None:
            pick = torch.randperm(len(source), generator=gen)[:k].tolist()
        else:
            pick = torch.multinomial(self.draw_weights, k, replacement=False,
                                     generator=gen).tolist()
        drawn: list[Subsystem | MixedRecord] = [source[i] for i in sorted(pick)]
        if self.mixed_share > 0:  # after the subsystem draw: that stays what it was
            for i in range(len(drawn)):
                if float(torch.rand((), generator=gen)) < self.mixed_share:
                    drawn[i] = self._mixed(gen)
        return StepPaths(fixed, tuple(drawn))

    def _mixed(self, gen: torch.Generator) -> MixedRecord:
        """One mixed record: a depth, then per block position a precision and width(s)."""
        space = self.space

        def pick(options: tuple) -> object:
            return options[int(torch.randint(len(options), (), generator=gen))]

        depth = pick(space.depths)
        blocks = []
        for _ in range(space.num_blocks):
            bits = pick(space.bits)
            widths = (tuple(pick(space.widths) for _ in KINDS) if self.mixed_per_module
                      else (pick(space.widths),) * len(KINDS))
            blocks.append(BlockChoice(bits, widths))
        return MixedRecord(depth, tuple(blocks), pick(space.bits))

    def sample(self, step: int) -> list[Subsystem | MixedRecord]:
        """The paths of training step ``step`` in run order (fixed, then random)."""
        return self.draw(step).paths


def _check_share(value: object) -> float:
    """``mixed_share``: a number in [0, 1], or an error naming the option."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(f"mixed_share must be a number in [0, 1] (the share of random paths "
                         f"that are mixed records), got {value!r}")
    return float(value)


def _largest_first(subs: Sequence[Subsystem], space: SearchSpace) -> list[Subsystem]:
    """Order paths largest first, so the teacher (if present) runs first."""
    rank = {s: i for i, s in enumerate(space.ordered())}
    return sorted(dict.fromkeys(subs), key=lambda s: -rank[s])


def check_path_weights(weights: Sequence[float] | None, num_paths: int,
                       strategy: str) -> list[float]:
    """``None`` -> all ones; otherwise one non-negative float per path of a step."""
    if weights is None:
        return [1.0] * num_paths
    weights = [float(w) for w in weights]
    if len(weights) != num_paths:
        raise ValueError(
            f"path_weights has {len(weights)} entries but sampling {strategy!r} runs "
            f"{num_paths} paths per step; give exactly {num_paths} weights "
            "in path order (sandwich: largest, smallest, then the random ones; all: largest "
            "first; explicit: as listed, the largest subsystem moved to the front)"
        )
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"path_weights must be >= 0 with a positive sum, got {weights}")
    return weights


__all__ = ["STRATEGIES", "MixedRecord", "StepPaths", "SubsystemError", "SubsystemSampler", "check_path_weights",
           "step_seed"]
