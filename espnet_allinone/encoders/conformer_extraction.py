"""What an extracted Conformer subsystem is: ESPnet's ``conformer`` or our ``packed_conformer``.

The encoder options of the extracted model, and whether the stock encoder can
hold an architecture record at all.
"""

from __future__ import annotations

import copy
from typing import Any

from espnet2.asr.encoder.conformer_encoder import ConformerEncoder

from espnet_allinone.arch import SubnetArch
from espnet_allinone.encoders.options import stock_defaults


def encoder_conf(source_conf: dict[str, Any], arch: SubnetArch, *, stock: bool,
                 quant_symmetric: bool | None = None,
                 position_stats: bool = False,
                 quant_grid: str | None = None) -> dict[str, Any]:
    """The extracted encoder's options: the source's stock ConformerEncoder options at
    the record's size; for a ``packed_conformer`` (``stock`` False) also the record's
    per-block shapes (``block_archs``, ``block_schedule``, ``front_bits``,
    ``front_channels``) and, for
    low-bit weights, ``quant_symmetric`` and, for a grid other than the integer one,
    ``quant_grid`` (both checked against the file when loading); a shared block keeps
    BatchNorm statistics per position with ``position_stats``."""
    keep = set(stock_defaults(ConformerEncoder))
    conf = {k: copy.deepcopy(v) for k, v in source_conf.items() if k in keep}
    stored = arch.stored_blocks()
    conf["num_blocks"] = len(stored)
    conf["linear_units"] = stored[0].shape()["ffn_units"][0]
    rate = conf.get("stochastic_depth_rate")
    if isinstance(rate, list):
        conf["stochastic_depth_rate"] = [rate[b.physical] for b in stored]
    if conf.get("interctc_layer_idx"):
        conf["interctc_layer_idx"] = [i for i in conf["interctc_layer_idx"] if i < arch.depth]
    if not stock:
        conf.update(arch.to_conf())
        if quant_symmetric is not None and not arch.is_float:
            conf["quant_symmetric"] = bool(quant_symmetric)
        if quant_grid not in (None, "integer") and not arch.is_float:
            conf["quant_grid"] = str(quant_grid)
        if position_stats and not arch.is_stacked:
            conf["position_stats"] = True
    return conf


def stock_conformer_misfit(arch: SubnetArch, full_heads: int, model_dim: int,
                           plugin_free: bool) -> str | None:
    """Why ESPnet's own ``conformer`` cannot hold ``arch`` (None: it can). It needs
    every block once, in order, all of one shape with every head and conv channel,
    the whole front, and float weights (or low-bit ones written dequantized: ``plugin_free``)."""
    shapes = [b.shape() for b in arch.blocks]
    first = shapes[0]
    if not arch.is_stacked:
        return "runs shared blocks (a block schedule)"
    if any(s != first for s in shapes) or len(set(first["ffn_units"])) != 1:
        return "has per-block shapes (heads, FFN units, conv channels or bits differ)"
    if first["heads"] != full_heads:
        return f"keeps {first['heads']} of {full_heads} attention heads"
    if first.get("conv_channels", model_dim) != model_dim:
        return f"keeps {first['conv_channels']} of {model_dim} conv channels"
    if arch.front_channels is not None:
        return f"keeps {arch.front_channels} of {model_dim} front channels"
    if not plugin_free and not arch.is_float:
        return "has low-bit weights"
    return None
