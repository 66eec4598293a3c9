"""One adapter per model family: block roles mapped to module paths, once.

A :class:`FamilySpec` names where a family's blocks keep their attention, feed-
forward and conv modules (Conformer: ``self_attn``, ``feed_forward``/
``feed_forward_macaron`` with ``w_1``/``w_2``, ``conv_module`` ...). The
functions here do everything role by role through the spec: make a built
block elastic, apply one block's architecture record, say what a block holds
(its limits), export a block's active tensors, reorder units by importance,
and narrow a plain block to an extracted shape. Adding a family means
writing one spec (and its attention class), not touching export.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from espnet_allinone.arch import BlockArch, BlockLimits
from espnet_allinone.elastic.depth_norm import DepthLayerNorm
from espnet_allinone.elastic.layers import (
    ElasticConv1d,
    ElasticWeightMixin,
    convert_weight_layer,
)
from espnet_allinone.elastic.norm import ElasticBatchNorm1d
from espnet_allinone.elastic.size import UNCOUNTED_CHILDREN
from espnet_allinone.quant.packed_format import QuantizedLayer, to_state


@dataclass(frozen=True)
class FeedForwardRole:
    """A feed-forward module: ``inner`` expands to the units, ``outer`` projects back."""

    path: str
    inner: str
    outer: str


@dataclass(frozen=True)
class ConvRole:
    """A conv module: ``expand`` (GLU: two halves), ``depthwise``, ``norm``, ``project``."""

    path: str
    expand: str
    depthwise: str
    norm: str
    project: str


@dataclass(frozen=True)
class FamilySpec:
    """Where a family's block roles live (paths relative to a block)."""

    name: str
    blocks: str
    attention: str
    attention_in: tuple[str, ...]
    attention_out: str
    feed_forwards: tuple[FeedForwardRole, ...]
    conv: ConvRole | None
    whole_linears: tuple[str, ...] = ()
    front: tuple[str, ...] = ("embed",)  # paths whose weight layers make the front
    output_norm: str | None = None  # the encoder's norm after its last block, if any

    def __post_init__(self) -> None:
        if isinstance(self.front, str):  # a bare string would be read letter by letter
            raise TypeError(f"FamilySpec.front is a tuple of module paths, got {self.front!r}")

    # --- lookup -------------------------------------------------------------
    def front_weight_layers(self, root: nn.Module) -> dict[str, nn.Module]:
        """The front's weight layers (Linear, Conv1d, Conv2d; stock or elastic) by name
        in ``root``: what ``part_precisions.front`` quantizes."""
        return {f"{path}.{name}": module for path in self.front
                for name, module in root.get_submodule(path).named_modules()
                if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d))}

    def attention_of(self, block: nn.Module) -> nn.Module:
        return block.get_submodule(self.attention)

    def feed_forwards_of(self, block: nn.Module) -> list[tuple[FeedForwardRole, nn.Module]]:
        """The block's feed-forward modules that exist, in the spec's order."""
        out = []
        for role in self.feed_forwards:
            module = _optional(block, role.path)
            if module is not None:
                out.append((role, module))
        return out

    def conv_of(self, block: nn.Module) -> nn.Module | None:
        return None if self.conv is None else _optional(block, self.conv.path)

    def whole_linears_of(self, block: nn.Module) -> list[nn.Module]:
        return [m for m in (_optional(block, p) for p in self.whole_linears) if m is not None]

    def weight_layer_paths(self, block: nn.Module) -> list[str]:
        """Block-relative paths of every weight layer a precision applies to."""
        attention = self.attention_of(block)
        paths = [] if is_removed(attention) else [
            f"{self.attention}.{n}" for n in (*self.attention_in, self.attention_out)
            if _optional(attention, n) is not None]
        for role, ff in self.feed_forwards_of(block):
            if not is_removed(ff):
                paths += [f"{role.path}.{role.inner}", f"{role.path}.{role.outer}"]
        conv = self.conv_of(block)
        if conv is not None and not is_removed(conv):
            c = self.conv
            paths += [f"{c.path}.{c.expand}", f"{c.path}.{c.depthwise}", f"{c.path}.{c.project}"]
        paths += [p for p in self.whole_linears if _optional(block, p) is not None]
        return paths


def _optional(module: nn.Module, path: str) -> nn.Module | None:
    try:
        return module.get_submodule(path)
    except AttributeError:
        return None


class RemovedModule(nn.Module):
    """A pruned-away attention, feed-forward or conv module: its branch adds nothing.

    Returns zeros shaped like its first input, so the block's residual sum is
    unchanged without it (the norm before it stays, as in the gated model).
    """

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return torch.zeros_like(x)


def is_removed(module: nn.Module) -> bool:
    """A removed module: replaced (extracted model) or switched off (elastic model)."""
    return isinstance(module, RemovedModule) or bool(module.__dict__.get("removed", False))


def _set_removed(module: nn.Module, removed: bool) -> None:
    module.__dict__["removed"] = removed


def _zero_if_removed(module: nn.Module, args, output):
    """Forward hook of an elastic role module: a switched-off module adds nothing."""
    if module.__dict__.get("removed", False):
        return torch.zeros_like(args[0])
    return None


# --- elastic blocks ----------------------------------------------------------------
def make_block_elastic(block: nn.Module, spec: FamilySpec,
                       attention_class: Callable[[nn.Module], nn.Module],
                       conv_widths: Sequence[int] = (), positions: int = 1) -> None:
    """Convert a built block's role modules to elastic layers in place (same tensors);
    the conv norm keeps statistics for ``conv_widths`` and ``positions`` positions."""
    attention_class(spec.attention_of(block))
    spec.attention_of(block).register_forward_hook(_zero_if_removed)
    for role, ff in spec.feed_forwards_of(block):
        convert_weight_layer(ff.get_submodule(role.inner))
        convert_weight_layer(ff.get_submodule(role.outer))
        ff.register_forward_hook(_zero_if_removed)
    conv = spec.conv_of(block)
    if conv is not None:
        conv.register_forward_hook(_zero_if_removed)
        c = spec.conv
        ElasticConv1d.convert(conv.get_submodule(c.expand), split_halves=True)
        ElasticConv1d.convert(conv.get_submodule(c.depthwise))
        ElasticBatchNorm1d.convert(conv.get_submodule(c.norm), conv_widths, positions)
        ElasticConv1d.convert(conv.get_submodule(c.project))
    for linear in spec.whole_linears_of(block):
        convert_weight_layer(linear)


def block_limits(block: nn.Module, spec: FamilySpec, bits: Sequence[int]) -> BlockLimits:
    """The valid indices of an elastic block's units (for checking a record)."""
    conv = spec.conv_of(block)
    return BlockLimits(
        heads=spec.attention_of(block).full_heads,
        ffn_units=tuple(ff.get_submodule(r.inner).full_out for r, ff in spec.feed_forwards_of(block)),
        conv_channels=None if conv is None else conv.get_submodule(spec.conv.depthwise).full_out,
        bits=tuple(bits),
    )


def apply_block(block: nn.Module, spec: FamilySpec, arch: BlockArch) -> None:
    """Make an elastic block run ``arch`` (heads, units, channels, bits); an empty set
    switches its module off (pruned away)."""
    bits = arch.bits
    attention = spec.attention_of(block)
    _set_removed(attention, not arch.heads)
    if arch.heads:
        attention.set_active(heads=arch.heads, bits=bits)
    for (role, ff), units in zip(spec.feed_forwards_of(block), arch.ffn_units):
        _set_removed(ff, not units)
        if units:
            ff.get_submodule(role.inner).set_active(out=units, bits=bits)
            ff.get_submodule(role.outer).set_active(in_=units, bits=bits)
    conv = spec.conv_of(block)
    if conv is not None:
        c, channels = spec.conv, arch.conv_channels
        _set_removed(conv, not channels)
    if conv is not None and channels:
        conv.get_submodule(c.expand).set_active(out=channels, bits=bits)
        conv.get_submodule(c.depthwise).set_active(out=channels, bits=bits)
        conv.get_submodule(c.norm).set_active(channels)
        conv.get_submodule(c.project).set_active(in_=channels, bits=bits)
    for linear in spec.whole_linears_of(block):
        linear.set_active(bits=bits)


# --- export --------------------------------------------------------------------------
TWINNED = (ElasticWeightMixin, ElasticBatchNorm1d, DepthLayerNorm)
"""Modules that hand over their active tensors as a static twin (``static_twin``)."""


def _skipped(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in UNCOUNTED_CHILDREN


@torch.no_grad()
def export_module(module: nn.Module) -> dict[str, torch.Tensor]:
    """The active tensors of an elastic module tree, keyed like its static twin's
    state_dict; quantized weights as packed entries (``quant.packed_format``)."""
    state: dict[str, torch.Tensor] = {}
    for name, child in _walk(module):
        prefix = f"{name}." if name else ""
        if isinstance(child, TWINNED):
            twin = child.static_twin()
            if isinstance(twin, QuantizedLayer):
                state.update(to_state(twin.weight, prefix + "weight"))
                if twin.bias is not None:
                    state[prefix + "bias"] = twin.bias
            else:
                state.update({prefix + k: v for k, v in twin.state_dict().items()})
            continue
        head_params = getattr(child, "static_head_parameters", None)
        own = head_params() if head_params is not None else {}
        for key, value in child.named_parameters(recurse=False):
            state[prefix + key] = own.get(key, value.detach().clone())
        for key, value in child.named_buffers(recurse=False):
            if key not in child._non_persistent_buffers_set:
                state[prefix + key] = value.detach().clone()
    return state


def _walk(module: nn.Module, name: str = "") -> Iterator[tuple[str, nn.Module]]:
    """Modules of a tree, not descending into elastic layers, quantizers or modules
    switched off by pruning."""
    yield name, module
    if isinstance(module, TWINNED):
        return
    for child_name, child in module.named_children():
        if not _skipped(child_name) and not is_removed(child):
            yield from _walk(child, f"{name}.{child_name}" if name else child_name)


# --- importance ------------------------------------------------------------------------
@torch.no_grad()
def reorder_block(block: nn.Module, spec: FamilySpec, conv_channels: bool) -> None:
    """Permute heads, FFN units (and conv channels) most important first (function-
    preserving at full width). Importance: a weight-magnitude product of each unit's
    input and output connections."""
    attn = spec.attention_of(block)
    attn.permute_heads(torch.argsort(attn.head_importance(), descending=True))
    for role, ff in spec.feed_forwards_of(block):
        inner, outer = ff.get_submodule(role.inner), ff.get_submodule(role.outer)
        order = torch.argsort(_out_norms(inner.weight) * _in_norms(outer.weight), descending=True)
        inner.permute_out(order)
        outer.permute_in(order)
    conv = spec.conv_of(block)
    if conv is not None and conv_channels:
        c = spec.conv
        expand, depthwise = conv.get_submodule(c.expand), conv.get_submodule(c.depthwise)
        norm, project = conv.get_submodule(c.norm), conv.get_submodule(c.project)
        gain = norm.weight.abs() / (norm.running_var + norm.eps).sqrt()
        score = _out_norms(depthwise.weight) * gain * _in_norms(project.weight)
        order = torch.argsort(score, descending=True)
        expand.permute_out(order)
        depthwise.permute_out(order)
        norm.permute(order)
        project.permute_in(order)


def _out_norms(weight: torch.Tensor) -> torch.Tensor:
    """L2 norm of each output row ([out, in] or [out, in, k])."""
    return weight.reshape(weight.shape[0], -1).norm(dim=1)


def _in_norms(weight: torch.Tensor) -> torch.Tensor:
    """L2 norm of each input column (with its kernel taps)."""
    return weight.transpose(0, 1).reshape(weight.shape[1], -1).norm(dim=1)


# --- narrowing a plain block to an extracted shape --------------------------------------
def narrow_block(block: nn.Module, spec: FamilySpec, heads: int, ffn_units: Sequence[int],
                 conv_channels: int | None) -> None:
    """Replace a plain block's role modules by ones of the extracted sizes (fresh tensors,
    to be loaded). Head size stays; ``ffn_units`` has one entry per feed-forward."""
    if heads == 0:
        setattr(block, spec.attention, RemovedModule())
    attn = spec.attention_of(block)
    if heads and heads != attn.h:
        model_dim = attn.get_submodule(spec.attention_in[0]).in_features
        inner = heads * attn.d_k
        for name in spec.attention_in:
            old = _optional(attn, name)
            if old is not None:
                setattr(attn, name, nn.Linear(model_dim, inner, bias=old.bias is not None))
        old = attn.get_submodule(spec.attention_out)
        setattr(attn, spec.attention_out, nn.Linear(inner, model_dim, bias=old.bias is not None))
        for name, param in list(attn.named_parameters(recurse=False)):
            if param.shape[:1] == (attn.h,):  # per-head parameters
                setattr(attn, name, nn.Parameter(torch.zeros(heads, *param.shape[1:])))
        attn.h = heads
    feed_forwards = spec.feed_forwards_of(block)
    if len(ffn_units) != len(feed_forwards):
        raise ValueError(f"{len(ffn_units)} FFN sizes given, the block has {len(feed_forwards)} "
                         "feed-forward modules")
    for (role, ff), units in zip(feed_forwards, ffn_units):
        if units == 0:
            setattr(block, role.path, RemovedModule())
            continue
        inner, outer = ff.get_submodule(role.inner), ff.get_submodule(role.outer)
        if units != inner.out_features:
            setattr(ff, role.inner, nn.Linear(inner.in_features, units, bias=inner.bias is not None))
            setattr(ff, role.outer, nn.Linear(units, outer.out_features, bias=outer.bias is not None))
    conv = spec.conv_of(block)
    if conv is not None and conv_channels == 0:
        setattr(block, spec.conv.path, RemovedModule())
    elif conv is not None and conv_channels is not None:
        c = spec.conv
        expand, depthwise = conv.get_submodule(c.expand), conv.get_submodule(c.depthwise)
        if conv_channels != depthwise.out_channels:
            model_dim, kernel = expand.in_channels, depthwise.kernel_size[0]
            bias = expand.bias is not None
            setattr(conv, c.expand, nn.Conv1d(model_dim, 2 * conv_channels, 1, bias=bias))
            setattr(conv, c.depthwise, nn.Conv1d(
                conv_channels, conv_channels, kernel, padding=depthwise.padding,
                groups=conv_channels, bias=depthwise.bias is not None))
            norm = conv.get_submodule(c.norm)
            setattr(conv, c.norm, type(norm)(conv_channels))
            project = conv.get_submodule(c.project)
            setattr(conv, c.project, nn.Conv1d(conv_channels, project.out_channels, 1,
                                               bias=project.bias is not None))
