"""Unfolding: a few seed blocks run at many logical positions (Li et al. 2025).

An unfolded encoder (``seed_blocks: S``) builds only S physical blocks and
makes a depth d (a multiple of S) by running them again: the *schedule* lists
the physical block of each logical position. Everything that knows about
this lives here, so the families, the block stack, extraction and the config
tools ask one module:

* the schedules (:data:`UNFOLD_RULES`, :func:`unfold_schedule`) and the
  check of a seed against a search space (:func:`check_seed`);
* the ``encoder_conf`` keys of unfolding and the conf of a stacked twin
  (:data:`UNFOLDING_KEYS`, :func:`stacked_conf`);
* per-position statistics: how many banks a shared block keeps
  (:func:`position_count`), their buffer names (:func:`position_suffix`),
  which occurrence of its block each logical position is (:func:`occurrences`),
  and telling the position-aware modules of a block which one runs
  (:func:`position_aware`, :func:`set_position_counts`, :func:`set_position`);
* shared blocks laid out as a stacked encoder (:func:`unrolled_state`,
  :func:`tie_shared_blocks`) and the refusal of a checkpoint of the other
  kind (:func:`refuse_other_block_count`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from espnet_allinone.arch import ArchError
from espnet_allinone.subsystem import SearchSpace

if TYPE_CHECKING:  # modules are handled by what they answer; torch is not needed here
    from torch import Tensor, nn

UNFOLD_RULES = ("repeat", "blockwise")
"""How a seed of S blocks makes a logical depth d (a multiple of S):
``repeat``: the whole seed stack again and again (logical block i runs seed
block ``i mod S``); ``blockwise``: each seed block k = d/S times in a row
(logical block i runs seed block ``i // k``)."""

UNFOLDING_KEYS = ("seed_blocks", "unfold", "position_stats")
"""The ``encoder_conf`` keys of unfolding (a stacked twin has none of them)."""

POSITION_STATS = ("running_mean", "running_var", "num_batches_tracked")
"""The statistics a position-aware BatchNorm keeps once per logical position."""

_POSITION_STAT = re.compile(rf"({'|'.join(POSITION_STATS)})_r(\d+)")


# --- schedules --------------------------------------------------------------------------
def unfold_schedule(depth: int, seed_blocks: int | None, rule: str = "repeat") -> tuple[int, ...]:
    """Physical block of each logical block (``seed_blocks`` None: a stacked prefix)."""
    if seed_blocks is None:
        return tuple(range(depth))
    if rule not in UNFOLD_RULES:
        raise ArchError(f"unknown unfold rule {rule!r}; valid: {', '.join(UNFOLD_RULES)}")
    if depth % seed_blocks:
        raise ArchError(f"depth {depth} is not a multiple of seed_blocks {seed_blocks}")
    if rule == "repeat":
        return tuple(i % seed_blocks for i in range(depth))
    times = depth // seed_blocks
    return tuple(i // times for i in range(depth))


def check_seed(space: SearchSpace, seed_blocks: int | None, rule: str, *,
               blocks_key: str = "num_blocks", unit: str = "block") -> None:
    """A seed that can make every depth of ``space``, or a ValueError naming the valid
    ones; ``blocks_key`` and ``unit`` are the family's words for its block count."""
    if seed_blocks is None:
        return
    if rule not in UNFOLD_RULES:
        raise ValueError(f"unknown unfold {rule!r}; valid: {', '.join(UNFOLD_RULES)}")
    n = space.num_blocks
    if not isinstance(seed_blocks, int) or not 1 <= seed_blocks <= n:
        raise ValueError(f"seed_blocks {seed_blocks!r} must be in 1..{blocks_key} ({n})")
    bad = [d for d in space.depths if d % seed_blocks]
    if bad:
        valid = ", ".join(map(str, range(seed_blocks, n + 1, seed_blocks)))
        raise ValueError(
            f"depth(s) {bad} cannot be made by unfolding a {seed_blocks}-{unit} seed; valid "
            f"depths: {valid} (multiples of seed_blocks up to {blocks_key})"
        )


def stacked_conf(encoder_conf: Mapping[str, Any]) -> dict[str, Any]:
    """``encoder_conf`` without its unfolding keys (the stacked twin's)."""
    return {k: v for k, v in encoder_conf.items() if k not in UNFOLDING_KEYS}


# --- per-position statistics ------------------------------------------------------------
def position_count(num_blocks: int, seed_blocks: int | None, position_stats: bool) -> int:
    """Statistics banks a seed block keeps: one per logical position it can run at
    (``position_stats``), else one shared by all."""
    return num_blocks // seed_blocks if seed_blocks and position_stats else 1


def position_suffix(position: int) -> str:
    """Buffer-name suffix of a statistics bank at ``position`` (none at the first)."""
    return f"_r{position}" if position else ""


def occurrences(schedule: Iterable[int]) -> Iterator[tuple[int, int]]:
    """(block, position) of each logical block: the how-many-th run of its block it is."""
    seen: Counter = Counter()
    for block in schedule:
        yield block, seen[block]
        seen[block] += 1


def position_aware(block: nn.Module) -> list[nn.Module]:
    """Modules of ``block`` that keep state per logical position (``set_repeat``)."""
    return [m for m in block.modules() if hasattr(m, "set_repeat")]


def set_position_counts(aware: Sequence[list[nn.Module]], schedule: Sequence[int]) -> None:
    """Tell each block's position-aware modules at how many positions it runs now."""
    counts = Counter(schedule)
    for i, modules in enumerate(aware):
        for module in modules:
            module.set_active_repeats(min(counts.get(i, 1), module.repeats))


def set_position(modules: Iterable[nn.Module], position: int) -> None:
    """Select the statistics of ``position`` in a block about to run there."""
    for module in modules:
        module.set_repeat(min(position, module.active_repeats - 1))


# --- shared blocks laid out as a stacked encoder ----------------------------------------
def unrolled_state(state: Mapping[str, Tensor], schedule: Sequence[int],
                   blocks_key: str) -> dict[str, Tensor]:
    """``state`` of stored blocks run at ``schedule`` laid out as a stacked encoder:
    logical block i holds its stored block's tensors (the same tensor objects, so
    ``torch.save`` writes them once) and its own position's BatchNorm statistics."""
    head = f"{blocks_key}."
    out = {k: v for k, v in state.items() if not k.startswith(head)}
    for logical, (stored, position) in enumerate(occurrences(schedule)):
        prefix = f"{head}{stored}."
        for key, value in state.items():
            if not key.startswith(prefix):
                continue
            path, _, leaf = key[len(prefix):].rpartition(".")
            match = _POSITION_STAT.fullmatch(leaf)
            if match:
                if int(match[2]) != position:
                    continue
                leaf = match[1]
            elif position and f"{key}{position_suffix(position)}" in state:
                continue  # this position has statistics of its own
            out[f"{head}{logical}.{path}.{leaf}" if path else f"{head}{logical}.{leaf}"] = value
    return out


def tie_shared_blocks(blocks: nn.ModuleList | nn.Sequential, schedule: Sequence[int]) -> None:
    """Make the stacked copies of a shared block hold the same parameter objects (so a
    saved file stores each once; a loader still makes copies in memory)."""
    first: dict[int, nn.Module] = {}
    for logical, stored in enumerate(schedule):
        block = blocks[logical]
        if stored not in first:
            first[stored] = block
            continue
        for (_, mine), (_, theirs) in zip(block.named_modules(), first[stored].named_modules()):
            for name in list(mine._parameters):
                mine._parameters[name] = theirs._parameters[name]


def refuse_other_block_count(module: nn.Module, state_dict: Mapping[str, Any], prefix: str,
                             *args: Any) -> None:
    """Load pre-hook: refuse a checkpoint of a stacked encoder in an unfolded one (or the
    reverse) by name, instead of torch's list of missing keys."""
    head = f"{prefix}{module.family.blocks}."
    held = {int(k[len(head):].split(".", 1)[0]) for k in state_dict if k.startswith(head)}
    if not held:
        return
    have, want = max(held) + 1, len(module.blocks)
    if have != want:
        kind = (f"an unfolded encoder with a {want}-block seed (seed_blocks {want})"
                if module.seed_blocks else f"a stacked encoder of {want} blocks")
        raise RuntimeError(
            f"the checkpoint holds {have} encoder blocks, but this is {kind}: a "
            f"{'stacked' if have > want else 'seed'} checkpoint does not fit; set "
            f"num_blocks/seed_blocks as in the config it was trained with"
        )
