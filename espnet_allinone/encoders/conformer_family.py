"""The Conformer family: where ESPnet's ConformerEncoder keeps each part, and
its block stack that runs a schedule of blocks.

The one place the Conformer's attribute names are listed; the elastic
encoder, the packed encoder and extraction read them from here.
"""

from espnet.nets.pytorch_backend.transformer.repeat import MultiSequential

from espnet_allinone.elastic import ElasticLayerStack
from espnet_allinone.elastic.attention import IN_PROJECTIONS, OUT_PROJECTION
from espnet_allinone.elastic.family import ConvRole, FamilySpec, FeedForwardRole

CONFORMER = FamilySpec(
    name="conformer",
    blocks="encoders",
    attention="self_attn",
    attention_in=IN_PROJECTIONS,
    attention_out=OUT_PROJECTION,
    feed_forwards=(
        FeedForwardRole("feed_forward", "w_1", "w_2"),
        FeedForwardRole("feed_forward_macaron", "w_1", "w_2"),
    ),
    conv=ConvRole("conv_module", "pointwise_conv1", "depthwise_conv", "norm", "pointwise_conv2"),
    whole_linears=("concat_linear",),
    front=("embed",),
    output_norm="after_norm",
)


class ScheduledMultiSequential(ElasticLayerStack, MultiSequential):
    """ESPnet's block stack running a schedule of its blocks (depth prefix or shared)."""
