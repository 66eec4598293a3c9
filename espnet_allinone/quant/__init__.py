"""Weight (and optional activation) fake quantization, bit packing and the packed
state_dict layout (torch only)."""

from espnet_allinone.quant.config import QuantConfig, QuantConfigError
from espnet_allinone.quant.fake_quant import (
    ActivationFakeQuantizer,
    QuantizedWeight,
    WeightFakeQuantizer,
    qrange,
)
from espnet_allinone.quant.packed_format import QuantizedLayer, from_state, to_state
from espnet_allinone.quant.packing import pack_codes, packed_numel, unpack_codes

__all__ = [
    "ActivationFakeQuantizer",
    "QuantConfig",
    "QuantConfigError",
    "QuantizedLayer",
    "QuantizedWeight",
    "WeightFakeQuantizer",
    "from_state",
    "pack_codes",
    "packed_numel",
    "qrange",
    "to_state",
    "unpack_codes",
]
