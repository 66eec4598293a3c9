"""``model: packed``: an extracted ESPnet ASR model whose output layers are bit-packed.

ESPnet's own ``ESPnetASRModel`` (same forward, same ``Speech2Text``), with the
CTC linear (and an attention decoder's output layer) stored in ``model.pth``
as packed codes and scales: loading dequantizes them to exactly the weights
the all-in-one model trained with at ``part_precisions.output`` (on the grid
the packed entries record; ``quant_grid``, when given, must agree). Extraction
writes it only when the output layers are low-bit; otherwise the model is
a stock ``espnet`` one.
"""

from __future__ import annotations

from typing import Any

from espnet2.asr.espnet_model import ESPnetASRModel
from torch import nn

from espnet_allinone.precision import FLOAT_BITS, PrecisionError, parse_precision
from espnet_allinone.quant import packed_format


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


class PackedOutputASRModel(ESPnetASRModel):
    """ESPnetASRModel with ``output_bits``-bit output layers stored bit-packed."""

    def __init__(self, *args: Any, output_bits: int | str = FLOAT_BITS,
                 quant_symmetric: bool | None = None, quant_grid: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        try:
            bits = parse_precision(output_bits)
        except PrecisionError as e:
            raise ValueError(f"model_conf.output_bits: {e}") from None
        self.weight_bits = ({} if bits == FLOAT_BITS else
                            {f"{name}.weight": bits for name in output_layers(self)})
        self.quant_symmetric = quant_symmetric
        self.quant_grid = packed_format.check_grid(quant_grid, quant_symmetric)
        packed_format.store_packed(self)
