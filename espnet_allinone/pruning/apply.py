"""Apply gate masks to an elastic encoder during one forward pass (training).

Hooks through the family spec: an attention's output projection sees its
heads' context multiplied by the head gates, a feed-forward's outer layer its
units multiplied by the unit gates, the conv module's projection its channels
multiplied by the channel gates, and each module's output is multiplied by
its module gate. Nothing of ESPnet's forward is copied; the hooks are removed
when the block ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import Tensor, nn

from espnet_allinone.elastic.family import FamilySpec


def _scale_input(mask: Tensor, channel_dim: int):
    def hook(module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        shape = [1] * x.dim()
        shape[channel_dim] = -1
        return (x * mask.to(x.dtype).reshape(shape), *args[1:])
    return hook


def _scale_output(gate: Tensor):
    def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        return output * gate.to(output.dtype)
    return hook


@contextlib.contextmanager
def gated(blocks: list[nn.Module], spec: FamilySpec, masks: list[dict]) -> Iterator[None]:
    """Within the block, every block runs with its gate masks (``PruningGates.masks()``)."""
    handles = []
    try:
        for block, mask in zip(blocks, masks):
            attention = spec.attention_of(block)
            module = mask["module"]
            if mask["heads"] is not None:
                per_column = mask["heads"].repeat_interleave(attention.d_k)
                out = attention.get_submodule(spec.attention_out)
                handles.append(out.register_forward_pre_hook(_scale_input(per_column, -1)))
            if module is not None:
                handles.append(attention.register_forward_hook(_scale_output(module[0])))
            for k, (role, ff) in enumerate(spec.feed_forwards_of(block)):
                if mask["ffn"][k] is not None:
                    outer = ff.get_submodule(role.outer)
                    handles.append(outer.register_forward_pre_hook(
                        _scale_input(mask["ffn"][k], -1)))
                if module is not None:
                    handles.append(ff.register_forward_hook(_scale_output(module[1 + k])))
            conv = spec.conv_of(block)
            if conv is not None:
                if mask["conv"] is not None:
                    project = conv.get_submodule(spec.conv.project)
                    handles.append(project.register_forward_pre_hook(
                        _scale_input(mask["conv"], 1)))
                if module is not None:
                    n_ffn = len(mask["ffn"])
                    handles.append(conv.register_forward_hook(_scale_output(module[1 + n_ffn])))
        yield
    finally:
        for handle in handles:
            handle.remove()


