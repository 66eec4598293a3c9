"""ElasticLayerStack: a block stack that runs a schedule of its blocks.

A mixin for a sequential block stack such as ESPnet's ``MultiSequential``
(``encoders`` of a Conformer); the concrete class is declared where ESPnet is
imported (``class ScheduledMultiSequential(ElasticLayerStack, MultiSequential)``).
The schedule lists the physical block each logical position runs: the first
``depth`` blocks for a depth prefix, or seed blocks again when blocks are
shared (unfolding). Iterating yields the scheduled blocks, so ESPnet's own
encoder forward (which enumerates ``self.encoders``, also for intermediate
CTC) runs them unchanged, and stochastic depth (inside each block) and layer
drop (``MultiSequential.forward``) keep their semantics. ``len()``, indexing
and ``state_dict`` still see every physical block once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from torch import nn


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
        stack.schedule = tuple(range(len(stack._modules)))
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

    def __iter__(self) -> Iterator[nn.Module]:
        blocks = list(self._modules.values())
        return iter([blocks[i] for i in self.schedule])

    def inactive_children(self) -> list[nn.Module]:
        """Blocks the schedule does not run (skipped by size accounting)."""
        used = set(self.schedule)
        return [b for i, b in enumerate(self._modules.values()) if i not in used]
