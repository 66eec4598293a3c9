"""Exact size of the active subsystem of any module tree built from elastic layers.

A module may describe its own tensors' active slices with
``active_own_sizes() -> [(parameters, storage_bits), ...]`` (elastic layers
do; quantized weights report their exact packed bits including scales and
zero points) and may hide children with ``inactive_children()`` (a stack
beyond its depth); a child flagged ``removed`` (pruned away) is not counted. Every other module counts its own parameters in full at
4 bytes each, and its BatchNorm running statistics at 4 bytes each.
Quantizer scales are overhead inside the weight's storage bits, not
parameters. Reused by every encoder of the package.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from espnet_allinone.precision import FLOAT_BITS

UNCOUNTED_CHILDREN = ("weight_quantizer", "input_quantizer", "pruning")
"""Children that are not part of a subsystem: quantizer scales (counted inside
their layer's storage bits) and pruning gates (training-time only)."""


@dataclass(frozen=True)
class SizeReport:
    """Parameters and storage of one active subsystem."""

    params: int
    bytes: int

    def __add__(self, other: SizeReport) -> SizeReport:
        return SizeReport(self.params + other.params, self.bytes + other.bytes)


def _own_sizes(module: nn.Module) -> list[tuple[int, int]]:
    own = getattr(module, "active_own_sizes", None)
    if own is not None:
        return own()
    sizes = [(p.numel(), FLOAT_BITS * p.numel()) for p in module.parameters(recurse=False)]
    if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
        sizes += [(0, FLOAT_BITS * module.running_mean.numel())] * 2
    return sizes


def active_size(module: nn.Module) -> SizeReport:
    """Exact parameters and bytes (each tensor rounded up to whole bytes)."""
    params = 0
    nbytes = 0
    stack = [module]
    seen = set()
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        for n, bits in _own_sizes(current):
            params += n
            nbytes += math.ceil(bits / 8)
        hidden = {id(m) for m in getattr(current, "inactive_children", list)()}
        for name, child in current.named_children():
            removed = child.__dict__.get("removed", False)  # switched off by pruning
            if id(child) not in hidden and name not in UNCOUNTED_CHILDREN and not removed:
                stack.append(child)
    return SizeReport(params, nbytes)
