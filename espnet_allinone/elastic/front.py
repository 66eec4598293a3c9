"""A subsampling front whose channels narrow with the subsystem's width (``elastic_front``).

Why: ESPnet's conv2d subsampling front has as many channels as the model
(``output_size``), whatever the subsystem. Its second Conv2d (C -> C, 3 x 3
over a quarter of the frames' time-frequency plane) is more multiply-adds
than six half-width blocks of the benchmarks' 12-block model, so it caps how
fast a small subsystem runs and sets most of its activation memory
(``docs/experiments/inference.md``). Keeping the first ``k = width * C``
channels makes that layer ``(k / C)^2`` as large and the others ``k / C``.

ESPnet's ``Conv2dSubsampling*`` (``input_layer: conv2d``, ``conv2d1``,
``conv2d2``, ``conv2d6``, ``conv2d8``) hold ``conv`` = [Conv2d(1, C), ReLU,
Conv2d(C, C), ReLU, ...] and ``out`` = [Linear(C * F, d), positional
encoding], with the channels flattened before the frequencies. The first k
channels are therefore: the first k outputs of the first Conv2d, the first k
inputs and outputs of the others, and the first ``k * F`` inputs of the
Linear (a prefix), so the narrowed front is itself a ``Conv2dSubsampling*``
with k channels, which :func:`narrow_front` builds for an extracted model.
"""

from __future__ import annotations

from fractions import Fraction

import torch
from torch import nn

from espnet_allinone.arch import ArchError
from espnet_allinone.elastic.layers import ElasticWeightMixin, convert_weight_layer
from espnet_allinone.precision import FLOAT_BITS


def front_layers(embed: nn.Module) -> tuple[list[nn.Conv2d], nn.Linear]:
    """The Conv2d chain and the Linear of a conv2d subsampling front, checked to be
    the shape this module narrows; ValueError names what differs."""
    convs = [m for m in getattr(embed, "conv", ()) if isinstance(m, nn.Conv2d)]
    out = getattr(embed, "out", None)
    linear = out[0] if isinstance(out, nn.Sequential) and len(out) else None
    if not convs or not isinstance(linear, nn.Linear):
        raise ValueError(f"elastic_front needs a conv2d subsampling front (input_layer conv2d, "
                         f"conv2d1, conv2d2, conv2d6 or conv2d8); this encoder's front is "
                         f"{type(embed).__name__}")
    channels = convs[0].out_channels
    if convs[0].in_channels != 1 or any(c.in_channels != channels or c.out_channels != channels
                                        for c in convs[1:]):
        raise ValueError("elastic_front needs a front of Conv2d(1, C) then Conv2d(C, C) layers")
    if linear.in_features % channels:
        raise ValueError(f"elastic_front: the front's Linear takes {linear.in_features} inputs, "
                         f"not whole frequency rows of {channels} channels")
    return convs, linear


def front_units(embed: nn.Module, channels: int) -> list[tuple[nn.Module, int, int | None]]:
    """``(layer, active outputs, active inputs)`` of each weight layer of ``embed`` when it
    keeps its first ``channels`` channels (None: all inputs)."""
    return _units(*front_layers(embed), channels)


def _units(convs: list[nn.Conv2d], linear: nn.Linear,
           channels: int) -> list[tuple[nn.Module, int, int | None]]:
    freqs = linear.in_features // convs[0].out_channels
    units: list[tuple[nn.Module, int, int | None]] = [(convs[0], channels, None)]
    units += [(conv, channels, channels) for conv in convs[1:]]
    return [*units, (linear, linear.out_features, channels * freqs)]


class ElasticFront:
    """The front's weight layers, made elastic, narrowed together to a channel count."""

    def __init__(self, embed: nn.Module):
        self.convs, self.linear = front_layers(embed)  # checked once: switching is per step
        self.full = self.convs[0].out_channels
        self.layers: list[ElasticWeightMixin] = [
            convert_weight_layer(layer) for layer, _, _ in _units(self.convs, self.linear,
                                                                  self.full)]

    def channels_for(self, width: Fraction) -> int | None:
        """The channels a subsystem of ``width`` keeps (None: all)."""
        channels = self.full * Fraction(width)
        if channels.denominator != 1 or channels < 1:
            raise ValueError(f"elastic_front: width {width} of the front's {self.full} channels "
                             "is not a whole number of channels")
        return None if channels == self.full else int(channels)

    @torch.no_grad()
    def reorder_by_importance(self) -> None:
        """Permute the front's channels most important first (function-preserving at full
        width): each Conv2d's output channels by the L2 norms of their input and output
        weights, the next layer's inputs with them (the Linear's in channel-major rows)."""
        convs, linear = self.convs, self.linear
        freqs = linear.in_features // self.full
        for index, conv in enumerate(convs):
            last = index + 1 == len(convs)
            following = (linear.weight.reshape(linear.out_features, self.full, freqs) if last
                         else convs[index + 1].weight).transpose(0, 1)
            order = torch.argsort(_norms(conv.weight) * _norms(following), descending=True)
            conv.permute_out(order)
            if last:
                linear.permute_in((order[:, None] * freqs + torch.arange(freqs)).reshape(-1))
            else:
                convs[index + 1].permute_in(order)

    def set_active(self, channels: int | None, bits: int = FLOAT_BITS) -> None:
        """Run the first ``channels`` channels (None: all) at ``bits``; ArchError when the
        count does not fit (outside 1..C, or not whole quantizer groups)."""
        count = self.full if channels is None else int(channels)
        if not 1 <= count <= self.full:
            raise ArchError(f"front channels {count} outside 1..{self.full}")
        for layer, out, in_ in _units(self.convs, self.linear, count):
            try:
                layer.set_active(out, in_, bits=bits)
            except ValueError as err:
                raise ArchError(f"front channels {count}: {err}") from None


def narrow_front(embed: nn.Module, channels: int) -> None:
    """Replace ``embed``'s weight layers by fresh ones of the first ``channels`` channels
    (an extracted model's front, whose tensors are then loaded)."""
    convs, _ = front_layers(embed)
    if not 1 <= channels <= convs[0].out_channels:
        raise ValueError(f"front_channels {channels} outside 1..{convs[0].out_channels}")
    replaced = {}
    for layer, out, in_ in front_units(embed, channels):
        if isinstance(layer, nn.Conv2d):
            replaced[id(layer)] = nn.Conv2d(
                in_ or layer.in_channels, out, layer.kernel_size, stride=layer.stride,
                padding=layer.padding, dilation=layer.dilation, bias=layer.bias is not None)
        else:
            replaced[id(layer)] = nn.Linear(in_, out, bias=layer.bias is not None)
    for sequential in (embed.conv, embed.out):
        for index, module in enumerate(sequential):
            if id(module) in replaced:
                sequential[index] = replaced[id(module)]


def _norms(weight: torch.Tensor) -> torch.Tensor:
    """L2 norm of each slice along the first dimension."""
    return weight.reshape(weight.shape[0], -1).norm(dim=1)
