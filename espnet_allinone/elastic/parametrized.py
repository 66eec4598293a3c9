"""Weight precision for layers whose weight is computed, not stored (weight norm).

wav2vec2's positional conv holds ``g`` and ``v`` (torch's weight-norm
parametrization) and computes its weight from them every forward, so an
elastic layer cannot take its place. :class:`WeightQuantParametrization` is a
second parametrization chained after weight norm: it fake-quantizes the
computed weight at the active bits (one learned scale set per bit-width, as
every elastic layer). It speaks the front layers' interface (``set_active``,
``bits``, ``quantize_bits``); its host's size report counts the packed weight
instead of ``g`` and ``v`` when it runs quantized, as an extracted model stores
it (the weight, dequantized on load, with the weight norm removed).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from espnet_allinone.precision import FLOAT_BITS
from espnet_allinone.quant.config import QuantConfig
from espnet_allinone.quant.fake_quant import QuantizedWeight, WeightFakeQuantizer


class WeightQuantParametrization(nn.Module):
    """``weight -> fake_quant(weight)`` at ``bits`` (identity in float)."""

    def __init__(self, shape: Sequence[int], bits_choices: Sequence[int],
                 config: QuantConfig) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        self.rows, self.cols = self.shape[0], math.prod(self.shape[1:])
        if config.granularity == "group" and self.cols % config.group_size:
            config = dataclasses.replace(config, granularity="channel")
        self.quantize_bits = tuple(sorted(b for b in bits_choices if b != FLOAT_BITS))
        self.weight_quantizer = WeightFakeQuantizer(self.rows, self.cols, self.quantize_bits,
                                                    config)
        self.bits = FLOAT_BITS

    def set_active(self, out=None, in_=None, bits: int = FLOAT_BITS) -> None:
        if bits != FLOAT_BITS and bits not in self.quantize_bits:
            valid = ", ".join(str(b) for b in (*self.quantize_bits, FLOAT_BITS))
            raise ValueError(f"unsupported weight bits {bits}; valid: {valid}")
        self.bits = int(bits)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.bits == FLOAT_BITS:
            return weight
        flat = weight.reshape(self.rows, self.cols)
        return self.weight_quantizer(flat, self.bits).reshape(weight.shape)

    @torch.no_grad()
    def quantized(self, weight: torch.Tensor) -> QuantizedWeight:
        """Codes and scales of the computed ``weight`` at the active bits."""
        return self.weight_quantizer.quantize(weight.reshape(self.rows, self.cols), self.bits)


def quantize_computed_weight(layer: nn.Module, bits_choices: Sequence[int],
                             config: QuantConfig) -> WeightQuantParametrization:
    """Chain a :class:`WeightQuantParametrization` after ``layer``'s weight
    parametrizations; its size report then follows the active bits."""
    if not parametrize.is_parametrized(layer, "weight"):
        raise ValueError(f"{type(layer).__name__}.weight is not parametrized")
    quant = WeightQuantParametrization(layer.weight.shape, bits_choices, config)
    parametrize.register_parametrization(layer, "weight", quant)
    plist = layer.parametrizations.weight

    def active_own_sizes() -> list[tuple[int, int]]:
        if quant.bits == FLOAT_BITS:  # g and v as stored
            return [(p.numel(), FLOAT_BITS * p.numel()) for p in plist.parameters(recurse=False)]
        return [(quant.rows * quant.cols,
                 quant.weight_quantizer.storage_bits(quant.rows, quant.cols, quant.bits))]

    plist.active_own_sizes = active_own_sizes
    return quant
