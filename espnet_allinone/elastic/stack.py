"""ElasticLayerStack: a block stack that runs only its first ``depth`` blocks.

A mixin for a sequential block stack such as ESPnet's ``MultiSequential``
(``encoders`` of a Conformer); the concrete class is declared where ESPnet is
imported (``class ElasticMultiSequential(ElasticLayerStack, MultiSequential)``).
Iterating yields the active blocks only, so ESPnet's own encoder forward
(which enumerates ``self.encoders``, also for intermediate CTC) runs the
prefix unchanged, and stochastic depth (inside each block) and layer drop
(``MultiSequential.forward``) keep their semantics. ``len()``, indexing and
``state_dict`` still see every block.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn


class ElasticLayerStack:
    """Depth-prefix behaviour for an ``nn.Sequential`` subclass."""

    depth: int
    _modules: dict

    @classmethod
    def convert(cls, stack: nn.Sequential) -> nn.Sequential:
        """Make a built stack of the matching stock class elastic in place."""
        stock = next(b for b in cls.__mro__[1:] if b is not ElasticLayerStack)
        if type(stack) is not stock:
            raise TypeError(f"{cls.__name__} converts {stock.__name__}, got {type(stack).__name__}")
        stack.__class__ = cls
        stack.depth = len(stack._modules)
        return stack

    @property
    def num_blocks(self) -> int:
        return len(self._modules)

    def set_depth(self, depth: int) -> None:
        if not 1 <= depth <= self.num_blocks:
            raise ValueError(f"depth {depth} outside 1..{self.num_blocks} blocks")
        self.depth = int(depth)

    def __iter__(self) -> Iterator[nn.Module]:
        return iter(list(self._modules.values())[: self.depth])

    def inactive_children(self) -> list[nn.Module]:
        """Blocks beyond the active depth (skipped by size accounting)."""
        return list(self._modules.values())[self.depth :]
