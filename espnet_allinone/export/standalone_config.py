"""The ``config.yaml`` of an extracted model: an ordinary ESPnet ASR config.

From the all-in-one config it keeps everything ESPnet needs to rebuild the
model (frontend, normalisation, decoder, CTC, token list), turns the model
into a stock ``espnet`` one, and replaces the encoder by a stock
``conformer`` (when the architecture fits it) or a ``packed_conformer`` built
from the architecture record. The token list is written inline and the BPE model and
feature statistics are copied next to the config, so the directory stands
alone.
"""

from __future__ import annotations

import copy
import inspect
import shutil
from pathlib import Path
from typing import Any

from espnet2.asr.encoder.conformer_encoder import ConformerEncoder

from espnet_allinone.arch import SubnetArch
from espnet_allinone.encoders.options import stock_defaults

STATS_NAME = "feats_stats.npz"
BPE_NAME = "bpe.model"


def stock_model_options() -> list[str]:
    from espnet2.asr.espnet_model import ESPnetASRModel

    names = list(inspect.signature(ESPnetASRModel.__init__).parameters)
    skip = {"self", "vocab_size", "token_list", "frontend", "specaug", "normalize",
            "preencoder", "encoder", "postencoder", "decoder", "ctc", "joint_network"}
    return [n for n in names if n not in skip]


def encoder_conf(source_conf: dict[str, Any], arch: SubnetArch, *, stock: bool,
                 quant_symmetric: bool | None = None,
                 position_stats: bool = False) -> dict[str, Any]:
    """The extracted encoder's options: the source's stock ConformerEncoder options at
    the record's size; for a ``packed_conformer`` (``stock`` False) also the record's
    per-block shapes (``block_archs``, ``block_schedule``, ``front_bits``) and, for
    low-bit weights, ``quant_symmetric`` (checked against the file when loading); a
    shared block keeps BatchNorm statistics per position with ``position_stats``."""
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
        if position_stats and not arch.is_stacked:
            conf["position_stats"] = True
    return conf


def stock_conformer_misfit(arch: SubnetArch, full_heads: int, model_dim: int,
                           plugin_free: bool) -> str | None:
    """Why ESPnet's own ``conformer`` cannot hold ``arch`` (None: it can). It needs
    every block once, in order, all of one shape with every head and conv channel,
    and float weights (or low-bit ones written dequantised: ``plugin_free``)."""
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
    if not plugin_free and not arch.is_float:
        return "has low-bit weights"
    return None


def standalone_config(
    source: dict[str, Any],
    encoder: str,
    conf: dict[str, Any],
    outdir: Path,
    path_root: Path,
) -> dict[str, Any]:
    """The extracted config; copies the BPE model / stats into ``outdir``.

    Paths written into the config point into ``path_root`` (the final
    directory), while the files are copied into ``outdir`` (which may be a
    temporary directory renamed to ``path_root`` afterwards).
    """
    config = copy.deepcopy(source)
    config["model"] = "espnet"
    model_keys = set(stock_model_options())
    config["model_conf"] = {
        k: v for k, v in (source.get("model_conf") or {}).items() if k in model_keys
    }
    config["encoder"] = encoder
    config["encoder_conf"] = conf
    token_list = config.get("token_list")
    if isinstance(token_list, str):
        with open(token_list, encoding="utf-8") as f:
            config["token_list"] = [line.rstrip() for line in f if line.strip()]
    bpemodel = config.get("bpemodel")
    if isinstance(bpemodel, str) and bpemodel:
        if not Path(bpemodel).is_file():
            raise FileNotFoundError(f"bpemodel {bpemodel} named in the config does not exist")
        shutil.copyfile(bpemodel, outdir / BPE_NAME)
        config["bpemodel"] = str(path_root / BPE_NAME)
    normalize_conf = config.get("normalize_conf") or {}
    stats = normalize_conf.get("stats_file") if config.get("normalize") else None
    if stats:
        if not Path(stats).is_file():
            raise FileNotFoundError(f"stats_file {stats} named in the config does not exist")
        shutil.copyfile(stats, outdir / STATS_NAME)
        config["normalize_conf"] = {**normalize_conf, "stats_file": str(path_root / STATS_NAME)}
    for key in ("init_param", "ignore_init_mismatch", "freeze_param"):
        if key in config:
            config[key] = [] if key != "ignore_init_mismatch" else False
    return config
