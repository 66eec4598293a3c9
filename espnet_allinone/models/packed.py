"""``model: packed``: an extracted ESPnet ASR model whose output layers are bit-packed.

ESPnet's own ``ESPnetASRModel`` (same forward, same ``Speech2Text``, same joint
CTC/attention beam search), with the CTC linear (and an attention decoder's
output layer) stored in ``model.pth`` as packed codes and scales at
``output_bits``, and the attention decoder's block Linears at ``decoder_bits``:
loading dequantizes them to exactly the weights the all-in-one model trained
with at ``part_precisions.output`` / ``part_precisions.decoder`` (on the grid
the packed entries record; ``quant_grid``, when given, must agree). Extraction
writes it only when some of these layers are low-bit; otherwise the model is
a stock ``espnet`` one.
"""

from __future__ import annotations

from typing import Any

from espnet2.asr.espnet_model import ESPnetASRModel
from torch import nn

from espnet_allinone.errors import AllInOneError
from espnet_allinone.precision import FLOAT_BITS, PrecisionError, parse_precision
from espnet_allinone.quant import packed_format


class DecoderPartError(AllInOneError, ValueError):
    """Decoder-block quantization asked of a decoder without Transformer blocks."""


def output_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The output layers a model's ``part_precisions.output`` covers, by name in the
    model: the CTC linear and the attention decoder's output layer, when present."""
    layers = {}
    ctc = getattr(model, "ctc", None)
    if ctc is not None:
        layers["ctc.ctc_lo"] = ctc.ctc_lo
    output = getattr(getattr(model, "decoder", None), "output_layer", None)
    if isinstance(output, nn.Linear):
        layers["decoder.output_layer"] = output
    return layers


def decoder_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every Linear of the attention decoder's blocks (self-attention, source attention,
    feed-forward), by name in the model: what ``part_precisions.decoder`` covers. Empty
    without a decoder; DecoderPartError for a decoder without Transformer blocks
    (ESPnet's ``decoders``, e.g. ``rnn``), naming it."""
    decoder = getattr(model, "decoder", None)
    if decoder is None:
        return {}
    blocks = getattr(decoder, "decoders", None)
    if not isinstance(blocks, nn.Module):
        raise DecoderPartError(
            f"part_precisions.decoder quantizes Transformer decoder blocks (decoder.decoders), "
            f"but decoder {type(decoder).__name__} has none; valid: a decoder with Transformer "
            "blocks (transformer, lightweight_conv, dynamic_conv, ...), or part_precisions."
            "decoder left out (float)")
    return {f"decoder.decoders.{name}": m for name, m in blocks.named_modules()
            if isinstance(m, nn.Linear)}


def _bits(key: str, value: int | str) -> int:
    try:
        return parse_precision(value)
    except PrecisionError as e:
        raise ValueError(f"model_conf.{key}: {e}") from None


class PackedOutputASRModel(ESPnetASRModel):
    """ESPnetASRModel with ``output_bits``-bit output layers and ``decoder_bits``-bit
    decoder block Linears stored bit-packed."""

    def __init__(self, *args: Any, output_bits: int | str = FLOAT_BITS,
                 decoder_bits: int | str = FLOAT_BITS,
                 quant_symmetric: bool | None = None, quant_grid: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.weight_bits = {}
        for key, bits, layers in (("output_bits", output_bits, output_layers),
                                  ("decoder_bits", decoder_bits, decoder_layers)):
            bits = _bits(key, bits)
            if bits != FLOAT_BITS:
                self.weight_bits.update({f"{name}.weight": bits for name in layers(self)})
        self.quant_symmetric = quant_symmetric
        self.quant_grid = packed_format.check_grid(quant_grid, quant_symmetric)
        packed_format.store_packed(self)
