"""The wav2vec2 / HuBERT architecture as ``encoder_conf`` keys, and its search space.

torchaudio's ``wav2vec2_model`` keywords are what a checkpoint is read into
(:mod:`.loader`), what ``encoder_conf`` holds (:mod:`.conf` writes them) and
what the elastic and packed wav2vec2 encoders build from; they are listed
here once, below the encoders, so checkpoint reading needs no encoder.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from espnet_allinone.subsystem import SearchSpace

ARCH_DEFAULTS: dict[str, Any] = {
    "extractor_mode": "group_norm",
    "extractor_conv_layer_config": [[512, 10, 5]] + [[512, 3, 2]] * 4 + [[512, 2, 2]] * 2,
    "extractor_conv_bias": False,
    "encoder_embed_dim": 768,
    "encoder_projection_dropout": 0.1,
    "encoder_pos_conv_kernel": 128,
    "encoder_pos_conv_groups": 16,
    "encoder_num_layers": 12,
    "encoder_num_heads": 12,
    "encoder_attention_dropout": 0.1,
    "encoder_ff_interm_features": 3072,
    "encoder_ff_interm_dropout": 0.0,
    "encoder_dropout": 0.1,
    "encoder_layer_norm_first": False,
    "encoder_layer_drop": 0.0,
}
"""torchaudio ``wav2vec2_model`` keywords (wav2vec2-base / HuBERT-base values; layer
drop off for fine-tuning). The same names as ESPnet's ``torchaudiohubert``."""

STRUCTURAL_KEYS = ("extractor_mode", "extractor_conv_layer_config", "extractor_conv_bias",
                   "encoder_embed_dim", "encoder_pos_conv_kernel", "encoder_pos_conv_groups",
                   "encoder_num_layers", "encoder_num_heads", "encoder_ff_interm_features",
                   "encoder_layer_norm_first")
"""The keys that decide tensor shapes and wiring (dropouts do not)."""

SEED_TERMS = {"blocks_key": "encoder_num_layers", "unit": "layer"}
"""The family's words for its blocks in unfolding errors (``unfolding.check_seed``)."""


def arch_conf(conf: Mapping[str, Any]) -> dict[str, Any]:
    """The torchaudio keywords of an ``encoder_conf`` (defaults filled in)."""
    out = {k: conf.get(k, v) for k, v in ARCH_DEFAULTS.items()}
    out["extractor_conv_layer_config"] = [[int(c) for c in layer]
                                          for layer in out["extractor_conv_layer_config"]]
    return out


def space_conf(conf: Mapping[str, Any]) -> dict[str, Any]:
    """The search-space view of a wav2vec2 ``encoder_conf`` (SearchSpace's key names)."""
    arch = arch_conf(conf)
    return {"num_blocks": arch["encoder_num_layers"],
            "linear_units": arch["encoder_ff_interm_features"],
            "attention_heads": arch["encoder_num_heads"],
            "output_size": arch["encoder_embed_dim"],
            "depths": conf.get("depths"), "widths": conf.get("widths"),
            "precisions": conf.get("precisions")}


def search_space(conf: Mapping[str, Any]) -> SearchSpace:
    """The space a wav2vec2 ``encoder_conf`` defines (its architecture keys, torchaudio's
    wav2vec2-base defaults for those it omits, and ``depths``/``widths``/``precisions``)."""
    return SearchSpace.from_encoder_conf(space_conf(conf))
