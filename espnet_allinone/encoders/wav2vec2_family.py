"""The wav2vec2 / HuBERT family: torchaudio's transformer layers as block roles.

torchaudio (2.11) builds wav2vec2 and HuBERT alike: ``feature_extractor``
(conv layers), ``encoder.feature_projection``, ``encoder.transformer``
(``pos_conv_embed``, ``layer_norm``, ``layers[i]`` with ``attention.{q,k,v,
out}_proj`` and ``feed_forward.{intermediate_dense,output_dense}``). This module
lists those names once (:data:`WAV2VEC2`), gives torchaudio's ``SelfAttention``
whole-head selection (:class:`ElasticSelfAttention`), and holds the encoder
base class both ``elastic_wav2vec2`` and ``packed_wav2vec2`` build on.

Why an attention class of its own instead of ``ElasticAttentionMixin``: the
mixin answers ESPnet's attribute names (``linear_q``, ``h``, ``d_k``); torchaudio's
attention reads ``num_heads`` / ``head_dim`` and owns ``q_proj``... Its
forward is torchaudio's, unchanged: with a head set active the projections
return only those heads' rows and ``num_heads`` says how many there are.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from espnet2.asr.encoder.abs_encoder import AbsEncoder
from torch import nn
from torchaudio.models import wav2vec2_model
from torchaudio.models.wav2vec2.components import SelfAttention

from espnet_allinone.elastic import ElasticLayerStack
from espnet_allinone.elastic.attention import head_columns, head_index
from espnet_allinone.elastic.family import FamilySpec, FeedForwardRole
from espnet_allinone.elastic.layers import convert_weight_layer
from espnet_allinone.foundation.architecture import (  # noqa: F401 - the family's keywords
    ARCH_DEFAULTS,
    STRUCTURAL_KEYS,
    arch_conf,
)
from espnet_allinone.precision import FLOAT_BITS

WAV2VEC2 = FamilySpec(
    name="wav2vec2",
    blocks="model.encoder.transformer.layers",
    attention="attention",
    attention_in=("q_proj", "k_proj", "v_proj"),
    attention_out="out_proj",
    feed_forwards=(FeedForwardRole("feed_forward", "intermediate_dense", "output_dense"),),
    conv=None,
    front=("model.feature_extractor", "model.encoder.feature_projection"),
)
"""Block roles of torchaudio's wav2vec2/HuBERT encoder layer (no conv module)."""

POS_CONV = "model.encoder.transformer.pos_conv_embed.conv"
"""The positional conv: weight-normalised (torch parametrization), grouped; part of
the front ``part_precisions.front`` quantizes, next to the spec's ``front`` paths
(the conv feature extractor and the feature projection)."""


# --- attention -------------------------------------------------------------------------
class HeadedSelfAttention(SelfAttention):
    """torchaudio's attention, answering the family functions' ``h`` / ``d_k`` (narrowing)."""

    @property
    def h(self) -> int:
        return self.num_heads

    @h.setter
    def h(self, value: int) -> None:
        self.num_heads = int(value)

    @property
    def d_k(self) -> int:
        return self.head_dim

    @classmethod
    def convert(cls, module: nn.Module) -> nn.Module:
        if type(module) is not SelfAttention and not isinstance(module, HeadedSelfAttention):
            raise TypeError(f"{cls.__name__} converts torchaudio SelfAttention, got "
                            f"{type(module).__name__}")
        module.__class__ = cls
        return module


class ElasticSelfAttention(HeadedSelfAttention):
    """torchaudio's attention with an active head set (head size fixed)."""

    full_heads: int
    head_index: tuple[int, ...]

    @classmethod
    def convert(cls, module: nn.Module) -> nn.Module:
        super().convert(module)
        module.full_heads = module.num_heads
        module.head_index = tuple(range(module.num_heads))
        for name in (*WAV2VEC2.attention_in, WAV2VEC2.attention_out):
            convert_weight_layer(getattr(module, name))
        return module

    def set_active(self, heads: int | Sequence[int] | None = None,
                   bits: int = FLOAT_BITS) -> None:
        """Keep ``heads`` (None: all; h: the first h; or an index set) at ``bits``."""
        index = head_index(heads, self.full_heads)
        d = self.head_dim
        rows = head_columns(index, d)
        for name in WAV2VEC2.attention_in:
            getattr(self, name).set_active(out=rows, bits=bits)
        self.out_proj.set_active(in_=rows, bits=bits)
        self.head_index = index
        self.num_heads = len(index)

    @torch.no_grad()
    def permute_heads(self, order: torch.Tensor) -> None:
        """Reorder heads (function-preserving)."""
        d = self.head_dim
        rows = (order[:, None] * d + torch.arange(d)).reshape(-1)
        for name in WAV2VEC2.attention_in:
            getattr(self, name).permute_out(rows)
        self.out_proj.permute_in(rows)

    def head_importance(self) -> torch.Tensor:
        """Per head: norm of its value rows times norm of its output columns."""
        with torch.no_grad():
            h, d = self.full_heads, self.head_dim
            v = self.v_proj.weight.reshape(h, -1).norm(dim=1)
            out = self.out_proj.weight.reshape(-1, h, d).transpose(0, 1).reshape(h, -1)
            return v * out.norm(dim=1)


class ScheduledModuleList(ElasticLayerStack, nn.ModuleList):
    """torchaudio's layer list running a schedule of its layers (prefix or unfolded)."""


# --- the shared encoder ------------------------------------------------------------------
class Wav2Vec2EncoderBase(AbsEncoder):
    """An ESPnet encoder holding torchaudio's ``Wav2Vec2Model`` as ``self.model``.

    Input: raw waveforms ``(B, T)`` or ``(B, T, 1)`` (``input_size: 1``, no
    frontend). The forward is torchaudio's own pieces in torchaudio's order
    (feature extractor, ``encoder._preprocess``, ``encoder.transformer``), so at
    full size it equals ``Wav2Vec2Model.forward``; subclasses add masking and
    freezing between the pieces. ``normalize_waveform``: zero mean, unit variance
    per utterance over its valid samples (checkpoints trained with fairseq's
    ``normalize: true``).
    """

    family = WAV2VEC2

    def __init__(self, arch: Mapping[str, Any], normalize_waveform: bool = False):
        super().__init__()
        self.arch = arch_conf(arch)
        heads, dim = self.arch["encoder_num_heads"], self.arch["encoder_embed_dim"]
        if heads < 1 or dim % heads:
            raise ValueError(f"encoder_embed_dim {dim} is not a multiple of encoder_num_heads "
                             f"{heads}")
        self.model = wav2vec2_model(**self.arch, aux_num_out=None)
        ScheduledModuleList.convert(self.model.encoder.transformer.layers)
        self.normalize_waveform = bool(normalize_waveform)
        self._front_cache: tuple | None = None

    @property
    def layers(self) -> ScheduledModuleList:
        return self.model.encoder.transformer.layers

    @property
    def blocks(self) -> list[nn.Module]:
        """Every physical layer (active or not)."""
        return list(self.layers._modules.values())

    def output_size(self) -> int:
        return self.arch["encoder_embed_dim"]

    def _waveform(self, xs_pad: torch.Tensor, ilens: torch.Tensor) -> torch.Tensor:
        if xs_pad.dim() == 3 and xs_pad.shape[-1] == 1:
            xs_pad = xs_pad.squeeze(-1)
        if xs_pad.dim() != 2:
            raise ValueError(f"{type(self).__name__} takes raw waveforms (B, T) or (B, T, 1) "
                             f"(input_size: 1, frontend: null); got shape {list(xs_pad.shape)}")
        if not self.normalize_waveform:
            return xs_pad
        valid = (torch.arange(xs_pad.shape[1], device=xs_pad.device)[None, :]
                 < ilens[:, None]).to(xs_pad.dtype)
        n = valid.sum(1, keepdim=True).clamp(min=1)
        mean = (xs_pad * valid).sum(1, keepdim=True) / n
        var = (((xs_pad - mean) * valid) ** 2).sum(1, keepdim=True) / n
        return (xs_pad - mean) / torch.sqrt(var + 1e-5) * valid

    def _features(self, xs_pad: torch.Tensor, ilens: torch.Tensor, frozen: bool):
        """Conv features; when frozen (no graph), reused for the same input tensor (the
        all-in-one model runs several subsystems on one batch)."""
        key = None
        if frozen:  # same input object, same lengths, front weights untouched since
            versions = tuple(p._version for p in self.model.feature_extractor.parameters())
            bits = tuple(layer.bits for layer in getattr(self, "_input_layers", ()))
            key = (versions, xs_pad._version, ilens.tolist(), bits)
            cache = self._front_cache
            if cache is not None and cache[0]() is xs_pad and cache[1] == key:
                return cache[2], cache[3]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            wav = self._waveform(xs_pad, ilens)
            feats, lengths = self.model.feature_extractor(wav, ilens)
        self._front_cache = (weakref.ref(xs_pad), key, feats, lengths) if frozen else None
        return feats, lengths

    def _mask(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Hook for time masking (training); identity here."""
        return x

    def _encode(self, xs_pad: torch.Tensor, ilens: torch.Tensor, frozen_front: bool):
        feats, lengths = self._features(xs_pad, ilens, frozen_front)
        x, attention_mask = self.model.encoder._preprocess(feats, lengths)
        x = self._mask(x, lengths)
        x = self.model.encoder.transformer(x, attention_mask=attention_mask)
        return x, lengths

    def forward(self, xs_pad: torch.Tensor, ilens: torch.Tensor,
                prev_states: torch.Tensor | None = None):
        x, lengths = self._encode(xs_pad, ilens, frozen_front=False)
        return x, lengths, None
