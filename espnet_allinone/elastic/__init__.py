"""Width-sliceable, optionally fake-quantized building blocks (torch only).

Each layer subclasses the torch / ESPnet module it replaces and keeps its
parameter names, so a model converted in place loads a stock checkpoint.
The owner (an encoder) pushes the active sizes and bits into every layer;
the layers know nothing of subsystems or search spaces.
"""

from espnet_allinone.elastic.attention import ElasticAttentionMixin
from espnet_allinone.elastic.layers import (
    ElasticConv1d,
    ElasticConv2d,
    ElasticLinear,
    convert_weight_layer,
)
from espnet_allinone.elastic.norm import ElasticBatchNorm1d
from espnet_allinone.elastic.size import SizeReport, active_size
from espnet_allinone.elastic.stack import ElasticLayerStack

__all__ = [
    "ElasticAttentionMixin",
    "ElasticBatchNorm1d",
    "ElasticConv1d",
    "ElasticConv2d",
    "ElasticLayerStack",
    "ElasticLinear",
    "SizeReport",
    "active_size",
    "convert_weight_layer",
]
