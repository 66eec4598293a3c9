"""Extracted wav2vec2 / HuBERT subsystems: ``encoder: packed_wav2vec2`` or stock.

An extracted foundation subsystem is torchaudio's ``Wav2Vec2Model`` with its
layers narrowed to the architecture record's shapes (``block_archs``: per
stored layer ``heads`` of the original head size, ``ffn_units``, ``bits``;
``block_schedule`` when layers are shared), low-bit weights stored bit-packed
exactly as ``packed_conformer`` stores them (the same load/save hooks) and
dequantized on load onto the trained grid. A float, full-width, stacked record
of a model without waveform normalisation instead becomes ESPnet's own
``encoder: torchaudiohubert`` (``finetuning: true``), which needs no plugin.
The mask embedding and training-only state are not kept.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn.utils import parametrize

from espnet_allinone.arch import SubnetArch
from espnet_allinone.elastic.family import export_module, narrow_block
from espnet_allinone.encoders.options import RejectUnknownOptions, publish_signature
from espnet_allinone.encoders.wav2vec2_family import (
    ARCH_DEFAULTS,
    POS_CONV,
    WAV2VEC2,
    HeadedSelfAttention,
    Wav2Vec2EncoderBase,
    arch_conf,
)
from espnet_allinone.precision import FLOAT_BITS, PrecisionError, parse_precision
from espnet_allinone.quant import packed_format

STOCK = "torchaudiohubert"
STOCK_PREFIX = "hubert_pretrain_model.wav2vec2."


class PackedWav2Vec2Encoder(RejectUnknownOptions, Wav2Vec2EncoderBase):
    """torchaudio wav2vec2/HuBERT of per-layer shapes, low-bit weights bit-packed."""

    family = WAV2VEC2

    def __init__(
        self,
        input_size: int = 1,
        *,
        normalize_waveform: bool = False,
        block_archs: list[dict] | None = None,
        block_schedule: list[int] | None = None,
        front_bits: int = FLOAT_BITS,
        quant_symmetric: bool | None = None,
        quant_grid: str | None = None,
        **architecture: Any,
    ):
        conf = arch_conf(architecture)
        if input_size != 1:
            raise ValueError(f"packed_wav2vec2 reads raw waveforms: input_size must be 1, "
                             f"got {input_size}")
        if block_archs is None:
            block_archs = [{}] * conf["encoder_num_layers"]
        shapes = [_block_shape(i, b, conf) for i, b in enumerate(block_archs)]
        if len(shapes) != conf["encoder_num_layers"]:
            raise ValueError(f"encoder_num_layers {conf['encoder_num_layers']} but {len(shapes)} "
                             "block_archs")
        super().__init__(conf, normalize_waveform)
        out: dict[str, int] = {}
        for i, (block, shape) in enumerate(zip(self.blocks, shapes)):
            HeadedSelfAttention.convert(block.attention)
            narrow_block(block, WAV2VEC2, shape["heads"], shape["ffn_units"], None)
            if shape["bits"] != FLOAT_BITS:
                for path in WAV2VEC2.weight_layer_paths(block):
                    out[f"{WAV2VEC2.blocks}.{i}.{path}.weight"] = shape["bits"]
        if block_schedule is not None:
            self.layers.set_schedule(block_schedule)
        try:
            front_bits = parse_precision(front_bits)
        except PrecisionError as e:
            raise ValueError(f"front_bits: {e}") from None
        if front_bits != FLOAT_BITS:
            for name in WAV2VEC2.front_weight_layers(self):
                out[f"{name}.weight"] = front_bits
            # the positional conv stores its (quantized) weight, not weight norm's g and v;
            # built under no_grad, removal would leave a plain tensor instead of a Parameter
            with torch.enable_grad():
                parametrize.remove_parametrizations(self.get_submodule(POS_CONV), "weight")
            out[f"{POS_CONV}.weight"] = front_bits
        self.weight_bits = out
        self.quant_symmetric = quant_symmetric
        self.quant_grid = packed_format.check_grid(quant_grid, quant_symmetric)
        packed_format.store_packed(self)


def _block_shape(i: int, arch: dict, conf: dict) -> dict:
    """Validate one ``block_archs`` entry against the model's dimensions."""
    where = f"block_archs[{i}]"
    unknown = set(arch) - {"heads", "ffn_units", "bits"}
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; valid: bits, ffn_units, "
                         "heads")
    full_heads, full_units = conf["encoder_num_heads"], conf["encoder_ff_interm_features"]
    heads = int(arch.get("heads", full_heads))
    if not 1 <= heads <= full_heads:
        raise ValueError(f"{where}: heads {heads} must be in 1..{full_heads}")
    units = [int(u) for u in arch.get("ffn_units", [full_units])]
    if len(units) != 1 or not 1 <= units[0] <= full_units:
        raise ValueError(f"{where}: ffn_units {units} must be one size in 1..{full_units}")
    try:
        bits = parse_precision(arch.get("bits", FLOAT_BITS))
    except PrecisionError as e:
        raise ValueError(f"{where}: {e}") from None
    return {"heads": heads, "ffn_units": units, "bits": bits}


# --- what extraction asks of the elastic encoder ------------------------------------------
def stock_misfit(encoder: Any, arch: SubnetArch, plugin_free: bool) -> str | None:
    """Why ESPnet's ``torchaudiohubert`` cannot hold ``arch`` (None: it can)."""
    if not arch.is_stacked:
        return "runs shared layers (a block schedule)"
    space = encoder.space
    for b in arch.blocks:
        if len(b.heads) != space.attention_heads or b.heads != tuple(range(len(b.heads))):
            return f"keeps {len(b.heads)} of {space.attention_heads} attention heads"
        if b.ffn_units[0] != tuple(range(space.linear_units)):
            return f"keeps {len(b.ffn_units[0])} of {space.linear_units} FFN units"
    if arch.front_bits != FLOAT_BITS:  # stock keeps weight norm's g and v: off the grid
        return f"has a {arch.front_bits}-bit front (its weight-normalised positional conv)"
    if not plugin_free and not arch.is_float:
        return "has low-bit weights"
    if encoder.normalize_waveform:
        return "normalises the waveform (torchaudiohubert does not)"
    return None


def extracted_encoder(encoder: Any, arch: SubnetArch, plugin_free: bool
                      ) -> tuple[str, dict[str, Any], bool]:
    """(encoder name, encoder_conf, is stock) of the standalone model for ``arch``."""
    misfit = stock_misfit(encoder, arch, plugin_free)
    conf = arch_conf(encoder.conf)
    if misfit is None:
        conf.update(encoder_num_layers=arch.depth, encoder_layer_drop=0.0, finetuning=True,
                    mask_prob=0.0)
        return STOCK, conf, True
    if plugin_free:
        raise ValueError(f"{misfit}, which ESPnet's {STOCK} encoder cannot express; extract "
                         "it without --plugin_free (it then uses encoder: packed_wav2vec2)")
    conf.update(encoder_num_layers=len(arch.stored_blocks()), encoder_layer_drop=0.0,
                normalize_waveform=encoder.normalize_waveform)
    conf.update(arch.to_conf())
    for block in conf["block_archs"]:
        block.pop("conv_channels", None)
    if not arch.is_float:
        conf["quant_symmetric"] = bool(encoder.quant_config.symmetric)
        if encoder.quant_config.grid != "integer":
            conf["quant_grid"] = encoder.quant_config.grid
    return "packed_wav2vec2", conf, False


@torch.no_grad()
def extracted_state(encoder: Any, sliced_state: dict[str, torch.Tensor], arch: SubnetArch,
                    stock: bool, target: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The cut tensors keyed like ``target``'s state_dict (packed entries kept).

    The layers are exported again here, one per stored layer, because the generic
    slicer walks only the encoder's direct children and the layer list sits inside
    ``model``."""
    head = WAV2VEC2.blocks + "."
    state = {k: v for k, v in sliced_state.items()
             if k.startswith("model.") and not k.startswith(head)}
    with encoder.use_arch(arch):
        for stored, block in enumerate(arch.stored_blocks()):
            for key, value in export_module(encoder.blocks[block.physical]).items():
                state[f"{head}{stored}.{key}"] = value
        if arch.front_bits != FLOAT_BITS:  # the positional conv's weight on its grid
            plist = encoder.get_submodule(POS_CONV).parametrizations.weight
            weight = plist[0](plist.original0, plist.original1)  # weight norm's output
            for k in ("original0", "original1"):
                del state[f"{POS_CONV}.parametrizations.weight.{k}"]
            state.update(packed_format.to_state(plist[1].quantized(weight), f"{POS_CONV}.weight"))
    if not stock:
        return state
    out = {STOCK_PREFIX + k[len("model."):]: v for k, v in state.items()}
    out["hubert_pretrain_model.mask_generator.mask_embedding"] = \
        encoder.mask_generator.mask_embedding.detach().clone()
    for key, value in target.state_dict().items():  # pretraining heads, step counter
        out.setdefault(key, value)
    return out


publish_signature(PackedWav2Vec2Encoder, {**ARCH_DEFAULTS, "encoder_layer_drop": 0.0})
