"""The ``config.yaml`` of an extracted model: an ordinary ESPnet ASR config.

From the all-in-one config it keeps everything ESPnet needs to rebuild the
model (frontend, normalisation, decoder, CTC, token list), turns the model
into a stock ``espnet`` one (``packed`` when its output layers or decoder blocks are
low-bit), and replaces the encoder by the one the
elastic encoder names for the architecture (``encoder.extracted_encoder``). The token list is written inline and the BPE model and
feature statistics are copied next to the config, so the directory stands
alone.
"""

from __future__ import annotations

import copy
import inspect
import shutil
from pathlib import Path
from typing import Any

STATS_NAME = "feats_stats.npz"
BPE_NAME = "bpe.model"


def stock_model_options() -> list[str]:
    from espnet2.asr.espnet_model import ESPnetASRModel

    names = list(inspect.signature(ESPnetASRModel.__init__).parameters)
    skip = {"self", "vocab_size", "token_list", "frontend", "specaug", "normalize",
            "preencoder", "encoder", "postencoder", "decoder", "ctc", "joint_network"}
    return [n for n in names if n not in skip]


def standalone_config(
    source: dict[str, Any],
    encoder: str,
    conf: dict[str, Any],
    outdir: Path,
    path_root: Path,
    output: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The extracted config; copies the BPE model / stats into ``outdir``.

    ``output``: the ``model_conf`` keys of low-bit output layers and decoder blocks
    (``output_bits``, ``decoder_bits``, ``quant_symmetric``); the model is then ``packed``
    (:mod:`espnet_allinone.models.packed`), else a stock ``espnet`` one.

    Paths written into the config point into ``path_root`` (the final
    directory), while the files are copied into ``outdir`` (which may be a
    temporary directory renamed to ``path_root`` afterwards).
    """
    config = copy.deepcopy(source)
    config["model"] = "packed" if output else "espnet"
    model_keys = set(stock_model_options())
    config["model_conf"] = {
        k: v for k, v in (source.get("model_conf") or {}).items() if k in model_keys
    } | dict(output or {})
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
