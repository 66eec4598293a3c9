"""Tiny wav2vec2 / HuBERT checkpoints in the three formats users hold (random weights).

No hub and no fairseq or transformers: a torchaudio ``Wav2Vec2Model`` is built
with :data:`TINY` (or any) keywords and written as

* a Hugging Face folder (``config.json`` + ``model.safetensors`` or
  ``pytorch_model.bin``, keys renamed the Hugging Face way, old-style
  ``weight_g``/``weight_v`` positional conv, plus heads the loader must drop);
* a fairseq ``.pt`` (fairseq key names, ``cfg`` with the fairseq option names, a
  pickled stand-in ``fairseq.data.dictionary.Dictionary`` object, optionally
  the fine-tuned ``w2v_encoder.w2v_model.`` layout);
* a torchaudio state dict (``Wav2Vec2Model.state_dict()``, bare or with its
  builder keywords).

The renaming here is written from the formats' documented key names, not
from the loader, so the tests compare two independent spellings.
"""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path
from typing import Any

import torch
from torchaudio.models import wav2vec2_model

from espnet_allinone.foundation.safetensors_io import save_safetensors

TINY: dict[str, Any] = {
    "extractor_mode": "group_norm",
    "extractor_conv_layer_config": [[16, 10, 5], [16, 3, 2]],
    "extractor_conv_bias": False,
    "encoder_embed_dim": 32,
    "encoder_projection_dropout": 0.0,
    "encoder_pos_conv_kernel": 8,
    "encoder_pos_conv_groups": 4,
    "encoder_num_layers": 4,
    "encoder_num_heads": 4,
    "encoder_attention_dropout": 0.0,
    "encoder_ff_interm_features": 64,
    "encoder_ff_interm_dropout": 0.0,
    "encoder_dropout": 0.0,
    "encoder_layer_norm_first": False,
    "encoder_layer_drop": 0.0,
}
"""A 4-layer, 32-dim, 4-head model (16x10/5 + 16x3/2 conv front): milliseconds a step."""


@torch.no_grad()
def reference_model(seed: int = 0, **overrides: Any) -> tuple[torch.nn.Module, dict, torch.Tensor]:
    """(torchaudio model in eval mode, its keywords, a mask embedding), random but not
    trivial (layer norms perturbed)."""
    kw = {**TINY, **overrides}
    torch.manual_seed(seed)
    model = wav2vec2_model(**kw, aux_num_out=None).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.LayerNorm | torch.nn.GroupNorm):
            module.weight.add_(0.1 * torch.randn_like(module.weight))
            module.bias.add_(0.1 * torch.randn_like(module.bias))
    return model, kw, torch.randn(kw["encoder_embed_dim"])


def _weight_norm_old(key: str) -> str:
    return key.replace("parametrizations.weight.original0", "weight_g").replace(
        "parametrizations.weight.original1", "weight_v")


# --- Hugging Face ------------------------------------------------------------------------
def write_huggingface(model: torch.nn.Module, kw: dict, mask: torch.Tensor, folder: Path, *,
                      kind: str = "wav2vec2", safetensors: bool = True, for_ctc: bool = True,
                      do_normalize: bool = False, **config_overrides: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    conv = kw["extractor_conv_layer_config"]
    config = {
        "model_type": kind, "architectures": [f"{kind.capitalize()}ForCTC"],
        "feat_extract_norm": kw["extractor_mode"].split("_")[0],
        "conv_dim": [c[0] for c in conv], "conv_kernel": [c[1] for c in conv],
        "conv_stride": [c[2] for c in conv], "conv_bias": kw["extractor_conv_bias"],
        "hidden_size": kw["encoder_embed_dim"], "feat_proj_dropout": 0.0,
        "num_conv_pos_embeddings": kw["encoder_pos_conv_kernel"],
        "num_conv_pos_embedding_groups": kw["encoder_pos_conv_groups"],
        "num_hidden_layers": kw["encoder_num_layers"],
        "num_attention_heads": kw["encoder_num_heads"],
        "intermediate_size": kw["encoder_ff_interm_features"],
        "do_stable_layer_norm": kw["encoder_layer_norm_first"],
        "hidden_act": "gelu", "feat_extract_activation": "gelu", "layerdrop": 0.1,
        "vocab_size": 5, **config_overrides,
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "preprocessor_config.json").write_text(json.dumps({"do_normalize": do_normalize}))
    top = f"{kind}." if for_ctc else ""
    state = {}
    for key, value in model.state_dict().items():
        key = _weight_norm_old(key)
        if key.startswith("encoder.feature_projection."):
            key = key[len("encoder."):]
        elif key.startswith("encoder.transformer."):
            key = "encoder." + key[len("encoder.transformer."):]
        state[top + key] = value.clone()
    state[top + "masked_spec_embed"] = mask.clone()
    if for_ctc:
        state["lm_head.weight"] = torch.randn(5, kw["encoder_embed_dim"])
        state["lm_head.bias"] = torch.zeros(5)
    if safetensors:
        save_safetensors(state, folder / "model.safetensors")
    else:
        torch.save(state, folder / "pytorch_model.bin")
    return folder


# --- fairseq ---------------------------------------------------------------------------------
_FAIRSEQ = [
    (r"feature_extractor\.conv_layers\.(\d+)\.conv\.", r"feature_extractor.conv_layers.\1.0."),
    (r"encoder\.feature_projection\.projection\.", "post_extract_proj."),
    (r"encoder\.feature_projection\.layer_norm\.", "layer_norm."),
    (r"encoder\.transformer\.pos_conv_embed\.conv\.", "encoder.pos_conv.0."),
    (r"encoder\.transformer\.layer_norm\.", "encoder.layer_norm."),
    (r"encoder\.transformer\.layers\.(\d+)\.attention\.", r"encoder.layers.\1.self_attn."),
    (r"encoder\.transformer\.layers\.(\d+)\.layer_norm\.", r"encoder.layers.\1.self_attn_layer_norm."),
    (r"encoder\.transformer\.layers\.(\d+)\.feed_forward\.intermediate_dense\.", r"encoder.layers.\1.fc1."),
    (r"encoder\.transformer\.layers\.(\d+)\.feed_forward\.output_dense\.", r"encoder.layers.\1.fc2."),
    (r"encoder\.transformer\.layers\.", "encoder.layers."),
]


def _fairseq_key(key: str, mode: str) -> str:
    key = _weight_norm_old(key)
    match = re.match(r"feature_extractor\.conv_layers\.(\d+)\.layer_norm\.(\w+)", key)
    if match:
        i, leaf = match.groups()
        return (f"feature_extractor.conv_layers.{i}.2.{leaf}" if mode == "group_norm"
                else f"feature_extractor.conv_layers.{i}.2.1.{leaf}")
    for pattern, repl in _FAIRSEQ:
        new = re.sub("^" + pattern, repl, key)
        if new != key:
            return new
    raise KeyError(key)


def fairseq_dictionary_class() -> type:
    """A class pickled as ``fairseq.data.dictionary.Dictionary`` (then forgotten)."""
    class Dictionary:
        def __init__(self) -> None:
            self.symbols = ["<s>", "<pad>", "</s>", "<unk>"]

    Dictionary.__module__ = "fairseq.data.dictionary"
    Dictionary.__qualname__ = "Dictionary"
    return Dictionary


def write_fairseq(model: torch.nn.Module, kw: dict, mask: torch.Tensor, path: Path, *,
                  kind: str = "hubert", fine_tuned: bool = False, normalize: bool = False,
                  **model_overrides: Any) -> Path:
    conv = " + ".join(f"[({c[0]}, {c[1]}, {c[2]})]" for c in kw["extractor_conv_layer_config"])
    model_cfg = {
        "_name": kind, "extractor_mode": "default" if kw["extractor_mode"] == "group_norm"
        else "layer_norm", "conv_feature_layers": conv, "conv_bias": kw["extractor_conv_bias"],
        "encoder_embed_dim": kw["encoder_embed_dim"], "encoder_layers": kw["encoder_num_layers"],
        "encoder_attention_heads": kw["encoder_num_heads"],
        "encoder_ffn_embed_dim": kw["encoder_ff_interm_features"],
        "layer_norm_first": kw["encoder_layer_norm_first"], "conv_pos": kw["encoder_pos_conv_kernel"],
        "conv_pos_groups": kw["encoder_pos_conv_groups"], "dropout": 0.1,
        "attention_dropout": 0.1, "activation_dropout": 0.0, "dropout_input": 0.0,
        "encoder_layerdrop": 0.05, "activation_fn": "gelu", **model_overrides,
    }
    dictionary = fairseq_dictionary_class()
    task_cfg = {"_name": "hubert_pretraining", "normalize": normalize,
                "dictionaries": [dictionary()]}
    state = {_fairseq_key(k, kw["extractor_mode"]): v.clone()
             for k, v in model.state_dict().items()}
    state["mask_emb"] = mask.clone()
    if kind == "hubert":
        state["label_embs_concat"] = torch.randn(7, 8)
        state["final_proj.weight"] = torch.randn(8, kw["encoder_embed_dim"])
        state["final_proj.bias"] = torch.zeros(8)
    cfg = {"model": model_cfg, "task": task_cfg}
    if fine_tuned:
        state = {f"w2v_encoder.w2v_model.{k}": v for k, v in state.items()}
        state["w2v_encoder.proj.weight"] = torch.randn(5, kw["encoder_embed_dim"])
        state["w2v_encoder.proj.bias"] = torch.zeros(5)
        cfg = {"model": {"_name": f"{kind}_ctc", "w2v_path": "/nowhere/pretrained.pt",
                         "w2v_args": cfg}, "task": {"_name": "audio_finetuning"}}
    names = ("fairseq", "fairseq.data", "fairseq.data.dictionary")
    for name in names:
        sys.modules[name] = types.ModuleType(name)
    sys.modules[names[-1]].Dictionary = dictionary
    try:
        torch.save({"model": state, "cfg": cfg, "optimizer_history": []}, path)
    finally:
        for name in names:  # fairseq is gone again: loading must not need it
            del sys.modules[name]
    return path


# --- torchaudio ---------------------------------------------------------------------------------
def write_torchaudio(model: torch.nn.Module, kw: dict, path: Path, *,
                     with_config: bool = False) -> Path:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "config": dict(kw)} if with_config else state, path)
    return path
