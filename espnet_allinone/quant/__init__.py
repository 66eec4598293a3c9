"""Weight (and optional activation) fake quantisation and bit packing (torch only)."""

from espnet_allinone.quant.config import QuantConfig, QuantConfigError
from espnet_allinone.quant.fake_quant import (
    ActivationFakeQuantizer,
    QuantizedWeight,
    WeightFakeQuantizer,
    qrange,
)
from espnet_allinone.quant.packing import (
    SERIALIZED_SUFFIXES,
    pack_codes,
    packed_numel,
    quantized_from_tensors,
    quantized_to_tensors,
    unpack_codes,
)

__all__ = [
    "SERIALIZED_SUFFIXES",
    "ActivationFakeQuantizer",
    "QuantConfig",
    "QuantConfigError",
    "QuantizedWeight",
    "WeightFakeQuantizer",
    "pack_codes",
    "packed_numel",
    "qrange",
    "quantized_from_tensors",
    "quantized_to_tensors",
    "unpack_codes",
]
