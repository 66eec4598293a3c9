"""Cut one architecture out of an elastic encoder, physically.

The encoder runs the record and every elastic layer hands over its static
twin (``static_twin``): the kept heads / FFN units / conv channels, the
width's own BatchNorm statistics (the record's statistics bank when the
encoder keeps banks, ``encoders/stats_banks.py``), and for low-bit layers the integer codes
and scales, bit-packed. Each physical block the record uses is stored once,
renumbered in order of first use; everything outside the blocks (the front,
``after_norm``) is copied (a quantized front hands over its codes too). The
result is keyed like the state_dict of the family's extracted encoder (its
stock encoder, or its packed one built from ``arch.to_conf()``); a family
whose extracted encoder keys differ re-keys it (``extracted_state``), and
shared blocks are laid out stacked by ``elastic/unfolding.py`` when asked.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from espnet_allinone.arch import SubnetArch
from espnet_allinone.elastic.family import export_module
from espnet_allinone.elastic.size import UNCOUNTED_CHILDREN
from espnet_allinone.elastic.unfolding import unrolled_state
from espnet_allinone.quant import packed_format

CODES_SUFFIX = "_codes"


@dataclass
class SlicedEncoder:
    """The tensors of one architecture's encoder; low-bit weights as packed entries."""

    arch: SubnetArch
    state: dict[str, torch.Tensor]

    def dequantized_state(self, weight_shapes: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
        """All weights as float (low-bit ones dequantized onto their grid)."""
        state = dict(self.state)
        names = [k[: -len(CODES_SUFFIX)] for k in self.state if k.endswith(CODES_SUFFIX)]
        for name in names:
            entries = packed_format.pop_state(state, name)
            qw = packed_format.from_state(entries, name)
            state[name] = packed_format.dequantize_to(qw, qw.bits, weight_shapes[name], name=name)
        return state

    def unrolled(self, blocks_key: str) -> SlicedEncoder:
        """The same tensors with shared blocks laid out as a stacked encoder (each logical
        block its stored block's tensors and its own position's statistics)."""
        return SlicedEncoder(self.arch, unrolled_state(self.state, self.arch.stored_schedule(),
                                                       blocks_key))


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
