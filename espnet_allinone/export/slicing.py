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

from dataclasses import dataclass

import torch

from espnet_allinone.arch import SubnetArch
from espnet_allinone.elastic.family import export_module
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
            if name != spec.blocks:
                state.update({f"{name}.{k}": v for k, v in export_module(child).items()})
        for name, value in [*encoder.named_parameters(recurse=False),
                            *encoder.named_buffers(recurse=False)]:
            state[name] = value.detach().clone()
    return SlicedEncoder(arch, state)
