"""ElasticWav2Vec2Encoder: one wav2vec2 / HuBERT model holding a family of subsystems.

``encoder: elastic_wav2vec2`` in an ESPnet YAML (``input_size: 1``, ``frontend:
null``, raw waveforms). It is torchaudio's ``Wav2Vec2Model`` (the same class for
wav2vec2 and HuBERT) whose transformer layers are converted in place to elastic
layers with the same parameter names, so at full size and float it computes
exactly what torchaudio computes with the same weights.

A subsystem ``d<depth>-w<width>-<precision>`` resolves (``resolve``) to an
architecture record: the first ``depth`` transformer layers (or, with
``seed_blocks: S``, S layers unfolded to ``depth``), the first ``width *
encoder_num_heads`` heads (head size fixed) and ``width *
encoder_ff_interm_features`` FFN units, and every Linear of the transformer
layers (attention q/k/v/out, FFN) fake-quantized at the precision. The conv
feature extractor, the feature projection and the positional conv (the
front) are quantized by ``part_precisions.front`` (as the Conformer's
subsampling front; default float); the layer norms stay float.

Weights: ``pretrained_path`` names a user's checkpoint (a Hugging Face folder, a
fairseq ``.pt`` or a torchaudio state dict, see :mod:`espnet_allinone.foundation`).
It is read once when the encoder is built; ESPnet's ``initialize()``
re-initialises the model and then calls :meth:`reload_pretrained_parameters`,
which loads it again from memory. The architecture keys of ``encoder_conf``
must agree with the checkpoint (``python -m espnet_allinone.foundation.conf``
writes them); an unfolded encoder takes the checkpoint's first ``seed_blocks`` layers.

Fine-tuning: ``mask_prob`` > 0 masks time spans of the projected features with
the checkpoint's mask embedding (torchaudio's ``MaskGenerator``, training only);
``freeze_feature_extractor`` (default true) keeps the conv front fixed (and then
computes it once per batch for all subsystems); ``freeze_encoder_updates: N``
runs the whole encoder without gradient for the first N training steps (a step
is a new input batch, not a subsystem path); layer drop is off
(``encoder_layer_drop: 0``, depth is elastic instead).
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any

import torch
from torchaudio.models.wav2vec2.components import MaskGenerator

from espnet_allinone.arch import ArchError, SubnetArch
from espnet_allinone.elastic.family import make_block_elastic, reorder_block
from espnet_allinone.elastic.parametrized import quantize_computed_weight
from espnet_allinone.elastic.unfolding import check_seed
from espnet_allinone.encoders import packed_wav2vec2
from espnet_allinone.encoders.options import RejectUnknownOptions, publish_signature
from espnet_allinone.encoders.switching import SubsystemSwitching, waveform_probe
from espnet_allinone.encoders.wav2vec2_family import (
    ARCH_DEFAULTS,
    POS_CONV,
    WAV2VEC2,
    ElasticSelfAttention,
    Wav2Vec2EncoderBase,
    arch_conf,
)
from espnet_allinone.foundation.architecture import SEED_TERMS
from espnet_allinone.foundation.architecture import search_space as wav2vec2_space
from espnet_allinone.foundation.loader import load_foundation, structural_mismatch
from espnet_allinone.quant.config import QuantConfig
from espnet_allinone.subsystem import SearchSpace, SubsystemError


class ElasticWav2Vec2Encoder(RejectUnknownOptions, SubsystemSwitching, Wav2Vec2EncoderBase):
    """wav2vec2 / HuBERT encoder with elastic depth, heads, FFN units and weight bits."""

    family = WAV2VEC2
    stock_encoder = packed_wav2vec2.STOCK

    def __init__(
        self,
        input_size: int = 1,
        *,
        normalize_waveform: bool = False,
        pretrained_path: str | None = None,
        mask_prob: float = 0.0,
        mask_length: int = 10,
        mask_selection: str = "static",
        mask_other: float = 0.0,
        no_mask_overlap: bool = False,
        mask_min_space: int = 1,
        mask_channel_prob: float = 0.0,
        mask_channel_length: int = 10,
        freeze_feature_extractor: bool = True,
        freeze_encoder_updates: int = 0,
        depths: list[int] | None = None,
        widths: list[float | str] | None = None,
        precisions: list[int | str] | None = None,
        quant_conf: dict | None = None,
        part_precisions: dict | None = None,
        seed_blocks: int | None = None,
        unfold: str = "repeat",
        **architecture: Any,
    ):
        conf = arch_conf(architecture)
        if input_size != 1:
            raise ValueError(f"elastic_wav2vec2 reads raw waveforms: input_size must be 1 "
                             f"(frontend: null), got {input_size}")
        try:
            space = self.search_space({**conf, "depths": depths, "widths": widths,
                                       "precisions": precisions})
        except SubsystemError as err:
            raise ValueError(f"elastic_wav2vec2 search space: {err}") from None
        check_seed(space, seed_blocks, unfold, **SEED_TERMS)
        physical = dict(conf, encoder_num_layers=seed_blocks or conf["encoder_num_layers"])
        super().__init__(physical, normalize_waveform)
        self.conf = conf
        self._init_elastic(space, QuantConfig.from_dict(quant_conf), part_precisions,
                           seed_blocks, unfold, positions=1)  # no BatchNorm in the layers
        self.mask_generator = MaskGenerator(
            conf["encoder_embed_dim"], mask_prob, mask_selection, mask_other, mask_length,
            no_mask_overlap, mask_min_space, mask_channel_prob, "static", 0.0,
            mask_channel_length, False, 1)
        self.freeze_feature_extractor = bool(freeze_feature_extractor)
        self.freeze_encoder_updates = int(freeze_encoder_updates)
        self.register_buffer("global_step", torch.zeros((), dtype=torch.long))
        self._last_batch: weakref.ref | None = None
        for block in self.blocks:
            make_block_elastic(block, WAV2VEC2, ElasticSelfAttention.convert)
        self._make_quantizable()
        front_bits = self.part_precisions.quantized_bits("front", space.bits)
        if front_bits:  # the positional conv's weight is computed (weight norm)
            self._input_layers.append(quantize_computed_weight(
                self.get_submodule(POS_CONV), front_bits, self.quant_config))
        self._freeze_front()
        self.pretrained_path = pretrained_path
        self._pretrained: dict[str, torch.Tensor] | None = None
        if pretrained_path:
            self._pretrained = self._read_pretrained(pretrained_path)
            self.reload_pretrained_parameters()
        self._start_switching()

    @classmethod
    def search_space(cls, encoder_conf: Mapping[str, Any]) -> SearchSpace:
        """The space an ``encoder_conf`` defines: its own architecture keys
        (``encoder_num_layers``, ``encoder_num_heads``, ``encoder_ff_interm_features``,
        ``encoder_embed_dim``; torchaudio's wav2vec2-base defaults for those it omits,
        as the encoder builds) and ``depths``, ``widths``, ``precisions``. A checkpoint
        (``pretrained_path``) is not read: it must match these keys (the encoder
        refuses one that does not; ``python -m espnet_allinone.foundation.conf``
        writes them from it)."""
        return wav2vec2_space(encoder_conf)

    @classmethod
    def _stacked_twin(cls, depth: int) -> dict[str, Any]:
        """An ordinary stacked model whose first ``depth`` layers run (the architecture
        keys stay, so the same checkpoint loads)."""
        return {"depths": [depth]}

    # --- weights ------------------------------------------------------------------------
    def _read_pretrained(self, path: str) -> dict[str, torch.Tensor]:
        ckpt = load_foundation(path)
        bad = structural_mismatch(ckpt, self.conf, num_layers_at_least=bool(self.seed_blocks))
        if bad:
            raise ValueError(f"pretrained_path {path}: the checkpoint does not fit encoder_conf "
                             f"({bad}); write encoder_conf from the checkpoint with python -m "
                             "espnet_allinone.foundation.conf")
        if ckpt.normalize_waveform != self.normalize_waveform:
            raise ValueError(f"pretrained_path {path}: the checkpoint expects "
                             f"normalize_waveform: {ckpt.normalize_waveform}, encoder_conf "
                             f"says {self.normalize_waveform}")
        n = len(self.blocks)
        state = {}
        for key, value in ckpt.state.items():
            parts = key.split(".")
            if key.startswith("encoder.transformer.layers.") and int(parts[3]) >= n:
                continue  # an unfolded seed takes the first seed_blocks layers
            state["model." + key] = value
        if ckpt.mask_embedding is not None:
            state["mask_generator.mask_embedding"] = ckpt.mask_embedding
        return state

    def reload_pretrained_parameters(self) -> None:
        """Load the checkpoint read at build time (ESPnet calls this after ``init:``)."""
        if self._pretrained is None:
            return
        missing, unexpected = self.load_state_dict(self._pretrained, strict=False)
        bad = [k for k in missing if "weight_quantizer" not in k and k != "global_step"
               and not k.startswith("mask_generator.")]
        if bad or unexpected:
            raise RuntimeError(f"pretrained_path {self.pretrained_path}: weights do not load "
                               f"(missing {bad[:3]}, unexpected {unexpected[:3]})")
        for module in self.modules():
            quantizer = getattr(module, "weight_quantizer", None)
            if quantizer is not None:
                quantizer.reset()  # scales from the pretrained weights, on first use
        self._freeze_front()

    def _freeze_front(self) -> None:
        for p in self.model.feature_extractor.parameters():
            p.requires_grad_(not self.freeze_feature_extractor)

    # --- forward --------------------------------------------------------------------------
    def _mask(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if not self.training or self.mask_generator.mask_prob <= 0 and \
                self.mask_generator.mask_channel_prob <= 0:
            return x
        padding = torch.arange(x.shape[1], device=x.device)[None, :] >= lengths[:, None]
        return self.mask_generator(x, padding)[0]

    def forward(self, xs_pad: torch.Tensor, ilens: torch.Tensor,
                prev_states: torch.Tensor | None = None):
        frozen = False
        if self.training:
            if self._last_batch is None or self._last_batch() is not xs_pad:
                self.global_step += 1
                self._last_batch = weakref.ref(xs_pad)
            frozen = int(self.global_step) <= self.freeze_encoder_updates
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            x, lengths = self._encode(xs_pad, ilens, self.freeze_feature_extractor or frozen)
        return x, lengths, None

    # --- architecture records ------------------------------------------------------------
    def _check_blocks(self, arch: SubnetArch) -> None:
        """torchaudio's layers always run their attention and feed-forward modules."""
        for i, block in enumerate(arch.blocks):
            if not block.heads or not all(block.ffn_units):
                raise ArchError(f"logical block {i}: removing a whole attention or feed-"
                                "forward module is not supported for wav2vec2/HuBERT layers")

    @property
    def block_stack(self) -> torch.nn.Module:
        """The scheduled transformer layer list."""
        return self.layers

    @torch.no_grad()
    def reorder_by_importance(self) -> None:
        """Heads and FFN units most important first (function-preserving at full width)."""
        for block in self.blocks:
            reorder_block(block, WAV2VEC2, conv_channels=False)

    # --- extraction ---------------------------------------------------------------------
    def probe_input(self, model: torch.nn.Module, input_size: int | None,
                    seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """1 s and 0.75 s of random 16 kHz audio: the encoder reads raw waveforms."""
        return waveform_probe(seed)

    def extracted_encoder(self, arch: SubnetArch, plugin_free: bool,
                          source_conf: Mapping[str, Any]) -> tuple[str, dict, bool, bool]:
        """(encoder name, encoder_conf, is stock, unrolled) of ``arch``'s extracted model
        (built from this encoder's own architecture; shared layers are never unrolled)."""
        return (*packed_wav2vec2.extracted_encoder(self, arch, plugin_free), False)

    def extracted_state(self, sliced_state: dict, arch: SubnetArch, stock: bool,
                        target: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The sliced tensors keyed for the extracted encoder ``target`` (the layers sit
        inside ``model``; the stock encoder keys them under torchaudio's HuBERT)."""
        return packed_wav2vec2.extracted_state(self, sliced_state, arch, stock, target)


publish_signature(ElasticWav2Vec2Encoder, ARCH_DEFAULTS)
