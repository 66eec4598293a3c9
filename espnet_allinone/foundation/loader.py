"""One loader for users' wav2vec2 / HuBERT checkpoints, offline, in three formats.

What the path holds decides the format:

* a folder with ``config.json`` and ``model.safetensors`` or ``pytorch_model.bin``:
  a Hugging Face model (``Wav2Vec2Model``/``ForCTC``/``ForPreTraining``,
  ``HubertModel``/``ForCTC``); keys map onto torchaudio's by prefix;
* a pickled file with ``model`` and ``cfg`` (or old ``args``): a fairseq ``.pt``
  (wav2vec2 / HuBERT, pretrained or fine-tuned), read without fairseq
  (:mod:`.pickle_stubs`); keys mapped by torchaudio's own fairseq key map;
* a pickled state dict with torchaudio's keys (``feature_extractor.conv_layers...``,
  ``encoder.transformer...``; also under a prefix such as ESPnet's
  ``encoder.hubert_pretrain_model.wav2vec2.``), optionally wrapped as
  ``{"state_dict": ..., "config": {<wav2vec2_model keywords>}}``. Without a
  config the shapes give the architecture except the head count (head size 64
  assumed), the conv strides (first layer kernel/2, then 2) and the layer-norm
  order (post-LN assumed): those are marked ``guessed`` and an ``encoder_conf``
  value overrides them.

The result is the architecture as torchaudio ``wav2vec2_model`` keywords (what
goes into ``encoder_conf``), whether the model expects normalised waveforms,
and the weights under torchaudio ``Wav2Vec2Model`` keys (plus the mask
embedding when the checkpoint has one). Every problem is a
:class:`FoundationError` whose one-line message names the file.

Nothing a user downloads is trusted: both pickled formats are read by
:func:`.pickle_stubs.load_pickled` (torch's weights-only unpickler plus a short
allow-list, fairseq classes as inert stubs); a pickle that names anything else
(``builtins.eval``, ``os.system``...) is refused by name. See docs/security.md.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torchaudio.models import wav2vec2_model
from torchaudio.models.wav2vec2.utils.import_fairseq import _convert_state_dict

from espnet_allinone.errors import AllInOneError
from espnet_allinone.foundation.architecture import ARCH_DEFAULTS, STRUCTURAL_KEYS
from espnet_allinone.foundation.pickle_stubs import UnsafePickleError, load_pickled
from espnet_allinone.foundation.safetensors_io import SafetensorsError, load_safetensors

FORMATS = ("huggingface", "fairseq", "torchaudio")
POS_CONV = "encoder.transformer.pos_conv_embed.conv."
_WEIGHT_NORM = {"weight_g": "parametrizations.weight.original0",
                "weight_v": "parametrizations.weight.original1"}


class FoundationError(AllInOneError, ValueError):
    """A checkpoint the loader cannot use; the message names the file and the problem."""


@dataclass
class FoundationCheckpoint:
    """A user's checkpoint, read once: architecture, waveform normalisation, weights."""

    path: Path
    format: str
    arch: dict[str, Any]
    normalize_waveform: bool
    state: dict[str, torch.Tensor]
    mask_embedding: torch.Tensor | None = None
    guessed: tuple[str, ...] = field(default=())

    def encoder_conf(self) -> dict[str, Any]:
        """The ``encoder_conf`` keys this checkpoint decides (architecture + normalisation)."""
        return {**self.arch, "normalize_waveform": self.normalize_waveform}


def load_foundation(path: str | Path) -> FoundationCheckpoint:
    """Read ``path`` in whichever of the three formats it holds; check weights vs config."""
    path = Path(path)
    if not path.exists():
        raise FoundationError(f"{path}: no such file or directory")
    if path.is_dir():
        ckpt = _huggingface(path)
    else:
        obj = _unpickle(path)
        fairseq = isinstance(obj, Mapping) and "model" in obj and ("cfg" in obj or "args" in obj)
        try:
            ckpt = _fairseq(path, obj) if fairseq else _torchaudio(path, obj)
        except FoundationError:
            raise
        except Exception as err:  # noqa: BLE001 - a crafted config must not end in a traceback
            raise FoundationError(f"{path}: unreadable {'fairseq' if fairseq else 'torchaudio'} "
                                  f"checkpoint ({_one_line(err)})") from None
    check_fits(ckpt)
    return ckpt


def _one_line(err: BaseException) -> str:
    """``Type: first line`` of an error (torch's weights-only text: its actual reason)."""
    text = str(err).split("WeightsUnpickler error:", 1)[-1].strip()
    line = re.split(r"(?<=[a-z])\. ", text.splitlines()[0])[0][:200] if text else ""
    return f"{type(err).__name__}: {line}" if line else type(err).__name__


def _unpickle(path: Path) -> Any:
    """The file's object, read by the restricted unpickler (nothing in it runs)."""
    try:
        return load_pickled(path)
    except UnsafePickleError as err:
        raise FoundationError(f"{path}: {err}") from None
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same answer
        raise FoundationError(
            f"{path}: not a Hugging Face folder, fairseq .pt or torchaudio state dict "
            f"(cannot unpickle it: {_one_line(err)})") from None


# --- fitting ------------------------------------------------------------------------------
def check_fits(ckpt: FoundationCheckpoint) -> None:
    """Refuse weights that do not fit the architecture (names the first bad key)."""
    with torch.device("meta"):
        model = wav2vec2_model(**ckpt.arch, aux_num_out=None)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in ckpt.state.items()}
    where = f"{ckpt.path}: the {ckpt.format} checkpoint's weights do not fit its config"
    missing = sorted(set(want) - set(have))
    if missing:
        raise FoundationError(f"{where}: {len(missing)} tensor(s) missing, e.g. {missing[0]}")
    extra = sorted(set(have) - set(want))
    if extra:
        raise FoundationError(f"{where}: unexpected tensor {extra[0]}")
    for key, shape in want.items():
        if have[key] != shape:
            raise FoundationError(f"{where}: {key} has shape {list(have[key])}, the config "
                                  f"gives {list(shape)}")
    dim = ckpt.arch["encoder_embed_dim"]
    if ckpt.mask_embedding is not None and tuple(ckpt.mask_embedding.shape) != (dim,):
        raise FoundationError(f"{where}: mask embedding of shape "
                              f"{list(ckpt.mask_embedding.shape)}, expected [{dim}]")


def _canonical(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weight-norm pos conv keys as torch's parametrisation names; tensors float."""
    out = {}
    for key, value in state.items():
        if key.startswith(POS_CONV):
            leaf = key[len(POS_CONV):]
            key = POS_CONV + _WEIGHT_NORM.get(leaf, leaf)
        out[key] = value.float() if value.is_floating_point() else value
    return out


def _arch(path: Path, values: dict[str, Any]) -> dict[str, Any]:
    arch = {**ARCH_DEFAULTS, **values}
    arch["extractor_conv_layer_config"] = [[int(c) for c in layer]
                                           for layer in arch["extractor_conv_layer_config"]]
    arch["encoder_layer_drop"] = 0.0  # fine-tuning with elastic depth: layer drop off
    heads, dim = arch["encoder_num_heads"], arch["encoder_embed_dim"]
    if heads < 1 or dim % heads:
        raise FoundationError(f"{path}: hidden size {dim} is not a multiple of the "
                              f"{heads} attention heads")
    if arch["extractor_mode"] not in ("group_norm", "layer_norm"):
        raise FoundationError(f"{path}: unsupported feature extractor norm "
                              f"{arch['extractor_mode']!r}; supported: group, layer")
    return arch


# --- Hugging Face ---------------------------------------------------------------------------
def _huggingface(path: Path) -> FoundationCheckpoint:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FoundationError(
            f"{path}: a folder without config.json: not a Hugging Face model folder (the "
            "other formats are files: a fairseq .pt or a torchaudio state dict)")
    try:
        cfg = json.loads(config_file.read_text(encoding="utf-8"))
    except ValueError as err:
        raise FoundationError(f"{config_file}: not valid JSON ({err})") from None
    model_type = cfg.get("model_type")
    if model_type not in ("wav2vec2", "hubert"):
        raise FoundationError(f"{config_file}: model_type {model_type!r} is not supported; "
                              "supported: wav2vec2, hubert")
    for key in ("feat_extract_activation", "hidden_act"):
        if cfg.get(key, "gelu") != "gelu":
            raise FoundationError(f"{config_file}: {key} {cfg[key]!r} is not supported; "
                                  "supported: gelu")
    if cfg.get("conv_pos_batch_norm"):
        raise FoundationError(f"{config_file}: conv positional embedding with batch norm "
                              "(conv_pos_batch_norm: true) is not supported")
    if cfg.get("feat_proj_layer_norm", True) is False:
        raise FoundationError(f"{config_file}: a feature projection without layer norm "
                              "(feat_proj_layer_norm: false) is not supported")
    arch = _arch(config_file, {
        "extractor_mode": f"{cfg.get('feat_extract_norm', 'group')}_norm",
        "extractor_conv_layer_config": list(zip(cfg["conv_dim"], cfg["conv_kernel"],
                                                cfg["conv_stride"])),
        "extractor_conv_bias": bool(cfg.get("conv_bias", False)),
        "encoder_embed_dim": cfg["hidden_size"],
        "encoder_projection_dropout": cfg.get("feat_proj_dropout", 0.0),
        "encoder_pos_conv_kernel": cfg.get("num_conv_pos_embeddings", 128),
        "encoder_pos_conv_groups": cfg.get("num_conv_pos_embedding_groups", 16),
        "encoder_num_layers": cfg["num_hidden_layers"],
        "encoder_num_heads": cfg["num_attention_heads"],
        "encoder_attention_dropout": cfg.get("attention_dropout", 0.1),
        "encoder_ff_interm_features": cfg["intermediate_size"],
        "encoder_ff_interm_dropout": cfg.get("activation_dropout", 0.0),
        "encoder_dropout": cfg.get("hidden_dropout", 0.1),
        "encoder_layer_norm_first": bool(cfg.get("do_stable_layer_norm", False)),
    })
    prep = path / "preprocessor_config.json"
    normalize = bool(json.loads(prep.read_text()).get("do_normalize", False)) \
        if prep.is_file() else False
    raw = _hf_weights(path)
    state, mask = {}, None
    for key, value in raw.items():
        key = re.sub(r"^(wav2vec2|hubert)\.", "", key)
        if key == "masked_spec_embed":
            mask = value.float()
        elif key.startswith("feature_extractor."):
            state[key] = value
        elif key.startswith("feature_projection."):
            state["encoder." + key] = value
        elif key.startswith("encoder."):
            state["encoder.transformer." + key[len("encoder."):]] = value
        # quantizer, project_q/hid, lm_head, final_proj...: not part of the encoder
    return FoundationCheckpoint(path, "huggingface", arch, normalize, _canonical(state), mask)


def _hf_weights(path: Path) -> dict[str, torch.Tensor]:
    st, pt = path / "model.safetensors", path / "pytorch_model.bin"
    try:
        if st.is_file():
            return load_safetensors(st)
        if pt.is_file():
            return torch.load(pt, map_location="cpu", weights_only=True)
    except (SafetensorsError, RuntimeError, OSError, ValueError) as err:
        raise FoundationError(f"{st if st.is_file() else pt}: cannot read weights "
                              f"({type(err).__name__}: {str(err).splitlines()[0][:200]})") from None
    raise FoundationError(f"{path}: Hugging Face folder without model.safetensors or "
                          "pytorch_model.bin (sharded checkpoints are not supported)")


# --- fairseq ------------------------------------------------------------------------------------
def _get(obj: Any, key: str, default: Any = None) -> Any:
    if obj is None:
        return default
    if isinstance(obj, Mapping):  # dict, omegaconf DictConfig; never a stub's own "get"
        value = obj.get(key, default)
    else:
        value = getattr(obj, key, default)
    return default if value is None else value


def _layers_spec(path: Path, text: Any) -> list[tuple[int, int, int]]:
    """fairseq's ``conv_feature_layers`` string (a list expression), evaluated safely."""
    if not isinstance(text, str):
        return [tuple(x) for x in text]

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.List | ast.Tuple):
            items = [ev(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Mult):
            left, right = ev(node.left), ev(node.right)
            return left + right if isinstance(node.op, ast.Add) else left * right
        raise ValueError(ast.dump(node))

    try:
        return [tuple(int(v) for v in layer) for layer in ev(ast.parse(text, mode="eval"))]
    except (SyntaxError, ValueError, TypeError):
        raise FoundationError(f"{path}: cannot read conv_feature_layers {text!r}") from None


def _fairseq(path: Path, ckpt: Mapping[str, Any]) -> FoundationCheckpoint:
    cfg = ckpt.get("cfg")
    if cfg is not None:
        model_cfg, task_cfg = _get(cfg, "model"), _get(cfg, "task")
    else:
        model_cfg = task_cfg = ckpt["args"]
    w2v_args = _get(model_cfg, "w2v_args")
    fine_tuned = w2v_args is not None or _get(model_cfg, "w2v_path") is not None
    if fine_tuned:
        if w2v_args is None:
            raise FoundationError(f"{path}: a fine-tuned fairseq checkpoint without w2v_args "
                                  "(the pretrained model's config) is not supported")
        if _get(w2v_args, "model") is not None:
            model_cfg, task_cfg = _get(w2v_args, "model"), _get(w2v_args, "task")
        else:
            model_cfg = task_cfg = w2v_args
    if _get(model_cfg, "conv_pos_batch_norm", False):
        raise FoundationError(f"{path}: conv positional embedding with batch norm "
                              "(conv_pos_batch_norm: true) is not supported")
    if int(_get(model_cfg, "pos_conv_depth", 1)) != 1:
        raise FoundationError(f"{path}: pos_conv_depth {_get(model_cfg, 'pos_conv_depth')} "
                              "is not supported (torchaudio has one positional conv)")
    if _get(model_cfg, "activation_fn", "gelu") != "gelu":
        raise FoundationError(f"{path}: activation_fn {_get(model_cfg, 'activation_fn')!r} "
                              "is not supported; supported: gelu")
    mode = _get(model_cfg, "extractor_mode", "default")
    arch = _arch(path, {
        "extractor_mode": "group_norm" if mode == "default" else mode,
        "extractor_conv_layer_config": _layers_spec(path, _get(
            model_cfg, "conv_feature_layers", "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] * 2")),
        "extractor_conv_bias": bool(_get(model_cfg, "conv_bias", False)),
        "encoder_embed_dim": int(_get(model_cfg, "encoder_embed_dim", 768)),
        "encoder_projection_dropout": float(_get(model_cfg, "dropout_input", 0.0)),
        "encoder_pos_conv_kernel": int(_get(model_cfg, "conv_pos", 128)),
        "encoder_pos_conv_groups": int(_get(model_cfg, "conv_pos_groups", 16)),
        "encoder_num_layers": int(_get(model_cfg, "encoder_layers", 12)),
        "encoder_num_heads": int(_get(model_cfg, "encoder_attention_heads", 12)),
        "encoder_attention_dropout": float(_get(model_cfg, "attention_dropout", 0.1)),
        "encoder_ff_interm_features": int(_get(model_cfg, "encoder_ffn_embed_dim", 3072)),
        "encoder_ff_interm_dropout": float(_get(model_cfg, "activation_dropout", 0.0)),
        "encoder_dropout": float(_get(model_cfg, "dropout", 0.1)),
        "encoder_layer_norm_first": bool(_get(model_cfg, "layer_norm_first", False)),
    })
    normalize = bool(_get(task_cfg, "normalize", False))
    weights = ckpt["model"]
    if not isinstance(weights, Mapping) or not all(isinstance(k, str) and isinstance(
            v, torch.Tensor) for k, v in weights.items()):
        raise FoundationError(f"{path}: a fairseq checkpoint whose model is not a state dict "
                              "(names to tensors)")
    raw = {}
    for key, value in weights.items():
        key = key.removeprefix("w2v_encoder.")
        key = re.sub(r"pos_conv\.0\.parametrizations\.weight\.original([01])",
                     lambda m: "pos_conv.0." + ("weight_g", "weight_v")[int(m[1])], key)
        raw[key] = value
    mask = raw.get("w2v_model.mask_emb", raw.get("mask_emb"))
    try:
        state = _convert_state_dict(raw)
    except ValueError as err:
        raise FoundationError(f"{path}: fairseq checkpoint with a key torchaudio does not "
                              f"know ({err})") from None
    state = {k: v for k, v in state.items() if not k.startswith("aux.")
             and k != "label_embs_concat"}
    return FoundationCheckpoint(path, "fairseq", arch, normalize, _canonical(state),
                                None if mask is None else mask.float())


# --- torchaudio -----------------------------------------------------------------------------
ANCHOR = "feature_extractor.conv_layers.0.conv.weight"


def _torchaudio(path: Path, obj: Any) -> FoundationCheckpoint:
    config = None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        config, obj = obj.get("config"), obj["state_dict"]
    none = (f"{path}: not a Hugging Face folder, fairseq .pt (model + cfg/args) or "
            f"torchaudio state dict (no key ending in {ANCHOR})")
    if not isinstance(obj, Mapping):
        raise FoundationError(none)
    anchors = [k for k in obj if isinstance(k, str) and k.endswith(ANCHOR)]
    if not anchors:
        raise FoundationError(none)
    prefix = min(anchors, key=len)[: -len(ANCHOR)]
    state = {k[len(prefix):]: v for k, v in obj.items()
             if isinstance(k, str) and k.startswith(prefix) and isinstance(v, torch.Tensor)
             and k[len(prefix):].startswith(("feature_extractor.", "encoder."))}
    mask = next((v for k, v in obj.items() if isinstance(k, str)
                 and k.endswith("mask_embedding") and isinstance(v, torch.Tensor)), None)
    state = _canonical(state)
    if config is not None:
        unknown = set(config) - set(ARCH_DEFAULTS) - {"aux_num_out", "normalize_waveform"}
        if unknown:
            raise FoundationError(f"{path}: unknown config key(s) {sorted(unknown)}; valid: "
                                  f"{sorted(ARCH_DEFAULTS)}")
        values = {k: v for k, v in config.items() if k in ARCH_DEFAULTS}
        guessed: tuple[str, ...] = ()
        normalize = bool(config.get("normalize_waveform", False))
    else:
        values, guessed = _infer(path, state), ("encoder_num_heads",
                                                "extractor_conv_layer_config",
                                                "encoder_layer_norm_first")
        normalize = False
    arch = _arch(path, values)
    return FoundationCheckpoint(path, "torchaudio", arch, normalize, state,
                                None if mask is None else mask.float(), guessed)


def _infer(path: Path, state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Architecture from tensor shapes (heads, strides and LN order assumed, see module doc)."""
    try:
        convs = []
        i = 0
        while f"feature_extractor.conv_layers.{i}.conv.weight" in state:
            out, _, kernel = state[f"feature_extractor.conv_layers.{i}.conv.weight"].shape
            convs.append([int(out), int(kernel), max(1, int(kernel) // 2) if i == 0 else 2])
            i += 1
        dim = int(state["encoder.feature_projection.projection.weight"].shape[0])
        pos = state[POS_CONV + "parametrizations.weight.original1"]
        layers = 0
        while f"encoder.transformer.layers.{layers}.attention.q_proj.weight" in state:
            layers += 1
        ffn = int(state["encoder.transformer.layers.0.feed_forward.intermediate_dense.weight"]
                  .shape[0])
    except (KeyError, ValueError) as err:
        raise FoundationError(f"{path}: torchaudio state dict lacks {err} to infer the "
                              "architecture") from None
    return {
        "extractor_mode": "layer_norm" if "feature_extractor.conv_layers.1.layer_norm.weight"
        in state else "group_norm",
        "extractor_conv_layer_config": convs,
        "extractor_conv_bias": "feature_extractor.conv_layers.0.conv.bias" in state,
        "encoder_embed_dim": dim,
        "encoder_pos_conv_kernel": int(pos.shape[2]),
        "encoder_pos_conv_groups": dim // int(pos.shape[1]),
        "encoder_num_layers": layers,
        "encoder_num_heads": max(1, dim // 64),
        "encoder_ff_interm_features": ffn,
    }


def structural_mismatch(ckpt: FoundationCheckpoint, conf: Mapping[str, Any],
                        num_layers_at_least: bool = False) -> str | None:
    """The first structural ``encoder_conf`` key that disagrees with the checkpoint (keys the
    loader only guessed yield to the conf); None when they agree."""
    for key in STRUCTURAL_KEYS:
        if key in ckpt.guessed:
            continue
        have, want = ckpt.arch[key], conf.get(key, ARCH_DEFAULTS[key])
        if key == "extractor_conv_layer_config":
            want = [[int(c) for c in layer] for layer in want]
        if key == "encoder_num_layers" and num_layers_at_least:
            if want > have:
                return f"{key}: encoder_conf builds {want} layers, the checkpoint has {have}"
            continue
        if have != want:
            return f"{key}: {have!r} in the checkpoint, {want!r} in encoder_conf"
    return None
