"""Cut one architecture out of an elastic encoder, physically.

The encoder runs the record and every elastic layer hands over its static
twin (``static_twin``): the kept heads / FFN units / conv channels, the
width's own BatchNorm statistics, and for low-bit layers the integer codes
and scales, bit-packed. Each physical block the record uses is stored once,
renumbered in order of first use; everything outside the blocks (the front,
``after_norm``) is copied (a quantised front hands over its codes too). The
result is keyed like the state_dict of the extracted encoder (a stock
``conformer`` or a ``packed_conformer`` built from ``arch.to_conf()``).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import torch

from espnet_allinone.arch import SubnetArch
from espnet_allinone.elastic.family import export_module
from espnet_allinone.elastic.size import UNCOUNTED_CHILDREN
from espnet_allinone.quant import packed_format

CODES_SUFFIX = "_codes"


@dataclass
class SlicedEncoder:
    """The tensors of one architecture's encoder; low-bit weights as packed entries."""

    arch: SubnetArch
    state: dict[str, torch.Tensor]

    def dequantized_state(self, weight_shapes: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
        """All weights as float (low-bit ones dequantised onto their grid)."""
        state = dict(self.state)
        names = [k[: -len(CODES_SUFFIX)] for k in self.state if k.endswith(CODES_SUFFIX)]
        for name in names:
            entries = packed_format.pop_state(state, name)
            qw = packed_format.from_state(entries, name)
            state[name] = packed_format.dequantize_to(qw, qw.bits, weight_shapes[name], name=name)
        return state


_POSITION_STAT = re.compile(r"(running_mean|running_var|num_batches_tracked)_r(\d+)")


def unrolled_state(sliced: SlicedEncoder, blocks_key: str) -> dict[str, torch.Tensor]:
    """The tensors of a record with shared blocks laid out as a stacked encoder: logical
    block i holds its stored block's tensors (the same tensor objects, so ``torch.save``
    writes them once) and its own position's BatchNorm statistics."""
    head = f"{blocks_key}."
    state = {k: v for k, v in sliced.state.items() if not k.startswith(head)}
    seen: Counter = Counter()
    for logical, stored in enumerate(sliced.arch.stored_schedule()):
        position = seen[stored]
        seen[stored] += 1
        prefix = f"{head}{stored}."
        for key, value in sliced.state.items():
            if not key.startswith(prefix):
                continue
            path, _, leaf = key[len(prefix):].rpartition(".")
            match = _POSITION_STAT.fullmatch(leaf)
            if match:
                if int(match[2]) != position:
                    continue
                leaf = match[1]
            elif position and f"{key}_r{position}" in sliced.state:
                continue  # this position has statistics of its own
            state[f"{head}{logical}.{path}.{leaf}" if path else f"{head}{logical}.{leaf}"] = value
    return state


def tie_shared_blocks(blocks: torch.nn.ModuleList | torch.nn.Sequential,
                      schedule: list[int]) -> None:
    """Make the stacked copies of a shared block hold the same parameter objects (so a
    saved file stores each once; a loader still makes copies in memory)."""
    first: dict[int, torch.nn.Module] = {}
    for logical, stored in enumerate(schedule):
        block = blocks[logical]
        if stored not in first:
            first[stored] = block
            continue
        for (_, mine), (_, theirs) in zip(block.named_modules(), first[stored].named_modules()):
            for name in list(mine._parameters):
                mine._parameters[name] = theirs._parameters[name]


@torch.no_grad()
def slice_encoder(encoder: torch.nn.Module, arch: SubnetArch) -> SlicedEncoder:
    """Run ``arch`` on ``encoder`` and return its tensors (the previous subsystem stays)."""
    spec = encoder.family
    state: dict[str, torch.Tensor] = {}
    with encoder.use_arch(arch):
        for stored, block in enumerate(arch.stored_blocks()):
            physical = encoder.blocks[block.physical]
            for key, value in export_module(physical).items():
                state[f"{spec.blocks}.{stored}.{key}"] = value
        for name, child in encoder.named_children():
            if name != spec.blocks and name not in UNCOUNTED_CHILDREN:
                state.update({f"{name}.{k}": v for k, v in export_module(child).items()})
        for name, value in [*encoder.named_parameters(recurse=False),
                            *encoder.named_buffers(recurse=False)]:
            state[name] = value.detach().clone()
    return SlicedEncoder(arch, state)
