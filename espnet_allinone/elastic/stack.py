"""ElasticLayerStack: a block stack that runs a schedule of its blocks.

A mixin for a sequential block stack such as ESPnet's ``MultiSequential``
(``encoders`` of a Conformer); the concrete class is declared where ESPnet is
imported (``class ScheduledMultiSequential(ElasticLayerStack, MultiSequential)``).
The schedule lists the physical block each logical position runs: the first
``depth`` blocks for a depth prefix, or seed blocks again when blocks are
shared (unfolding). Iterating yields the scheduled blocks, so ESPnet's own
encoder forward (which enumerates ``self.encoders``, also for intermediate
CTC) runs them unchanged, and stochastic depth (inside each block) and layer
drop (``MultiSequential.forward``) keep their semantics. ``len()`` is the
number of logical blocks (what the stock forward draws layer-drop
probabilities for); integer indexing and ``state_dict`` see every physical
block once.

A block run at several positions tells its position-aware modules (a
BatchNorm keeping statistics per position, ``set_repeat``) which occurrence
is about to run, just before it runs (the helpers of ``unfolding.py``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from torch import nn

from espnet_allinone.elastic.unfolding import (
    occurrences,
    position_aware,
    set_position,
    set_position_counts,
)


class ElasticLayerStack:
    """Block-schedule behaviour for an ``nn.Sequential`` subclass."""

    schedule: tuple[int, ...]
    _modules: dict

    @classmethod
    def convert(cls, stack: nn.Sequential) -> nn.Sequential:
        """Make a built stack of the matching stock class elastic in place."""
        stock = next(b for b in cls.__mro__[1:] if b is not ElasticLayerStack)
        if type(stack) is not stock:
            raise TypeError(f"{cls.__name__} converts {stock.__name__}, got {type(stack).__name__}")
        stack.__class__ = cls
        # Each block once, in order; the position-aware modules are looked up on the
        # first set_schedule (the blocks' own modules are converted after the stack).
        stack.schedule, stack._shared, stack._aware = tuple(range(len(stack._modules))), False, None
        return stack

    @property
    def num_blocks(self) -> int:
        return len(self._modules)

    @property
    def depth(self) -> int:
        """Logical blocks run."""
        return len(self.schedule)

    def set_schedule(self, schedule: Sequence[int]) -> None:
        """Run the physical blocks ``schedule`` in order (``range(d)``: a depth prefix)."""
        schedule = tuple(int(i) for i in schedule)
        bad = [i for i in schedule if not 0 <= i < self.num_blocks]
        if not schedule or bad:
            raise ValueError(
                f"block schedule {list(schedule)} invalid; valid: a non-empty list of "
                f"blocks 0..{self.num_blocks - 1}"
            )
        self.schedule = schedule
        self._shared = len(set(schedule)) < len(schedule)
        if self.__dict__.get("_aware") is None:  # a walk over every module: once, not per switch
            self._aware = [position_aware(b) for b in self._modules.values()]
        set_position_counts(self._aware, schedule)

    def __len__(self) -> int:
        return len(self.schedule)

    def __getitem__(self, idx):
        """An integer index names a physical block (``stack[3]``: block 3, active or not)."""
        if isinstance(idx, int):
            blocks = list(self._modules.values())
            if not -len(blocks) <= idx < len(blocks):
                raise IndexError(f"block {idx} out of range: {len(blocks)} blocks")
            return blocks[idx]
        return super().__getitem__(idx)

    def __iter__(self) -> Iterator[nn.Module]:
        blocks = list(self._modules.values())
        if not self._shared:
            return iter([blocks[i] for i in self.schedule])
        return self._iter_shared(blocks)

    def _iter_shared(self, blocks: list[nn.Module]) -> Iterator[nn.Module]:
        for i, position in occurrences(self.schedule):
            set_position(self._aware[i], position)
            yield blocks[i]

    def inactive_children(self) -> list[nn.Module]:
        """Blocks the schedule does not run (skipped by size accounting)."""
        used = set(self.schedule)
        return [b for i, b in enumerate(self._modules.values()) if i not in used]
