"""Cut one subsystem out of an ElasticConformerEncoder, physically.

The encoder is switched to the subsystem and every elastic layer hands over
its active slice: the first blocks, the first heads / FFN units / conv
channels, the width's own BatchNorm statistics, and for low-bit subsystems
the integer codes and scales of the fake-quantised weights
(``WeightFakeQuantizer.quantize``), which are bit-packed. Everything that is
not elastic (subsampling, layer norms, ``after_norm``) is copied. The
result has the parameter names of a stock ``ConformerEncoder`` of the
subsystem's size, so ESPnet's ``conformer`` (float, full heads and channels)
or this package's ``packed_conformer`` loads it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from espnet_allinone.elastic.layers import ElasticConv1d, ElasticWeightMixin
from espnet_allinone.elastic.norm import ElasticBatchNorm1d
from espnet_allinone.export import packed_format
from espnet_allinone.subsystem import FLOAT_BITS, Subsystem

_BLOCK = re.compile(r"^encoders\.(\d+)\.")


@dataclass
class SlicedEncoder:
    """The tensors of one subsystem's encoder, keyed like a stock ConformerEncoder."""

    subsystem: Subsystem
    heads: int
    ffn_units: int
    conv_channels: int
    float_state: dict[str, torch.Tensor] = field(default_factory=dict)
    packed_state: dict[str, torch.Tensor] = field(default_factory=dict)
    quantized_modules: list[str] = field(default_factory=list)
    symmetric: bool = True

    def dequantized_state(self, weight_shapes: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
        """All weights as float (low-bit ones dequantised onto their grid)."""
        state = dict(self.float_state)
        packed = dict(self.packed_state)
        for name in sorted({k.rsplit("_", 1)[0] for k in packed if k.endswith("_codes")}):
            entries = packed_format.pop_entries(packed, name, self.symmetric)
            state[name] = packed_format.dequantize_entries(
                entries, self.subsystem.bits, weight_shapes[name]
            )
        return state


@torch.no_grad()
def slice_encoder(encoder: torch.nn.Module, sub: Subsystem) -> SlicedEncoder:
    """Switch ``encoder`` to ``sub`` and return its active tensors (restores the old one)."""
    space = encoder.space
    sub = space.validate(sub)
    result = SlicedEncoder(
        subsystem=sub,
        heads=space.heads(sub),
        ffn_units=space.ffn_units(sub),
        conv_channels=space.conv_channels(sub),
        symmetric=_quant_symmetric(encoder),
    )
    with encoder.use_subsystem(sub):
        owned = set()
        quantized: list[str] = []
        for name, module in encoder.named_modules():
            block = _block_index(name)
            if block is not None and block >= sub.depth:
                continue
            prefix = f"{name}." if name else ""
            if isinstance(module, ElasticWeightMixin):
                _take_weight_layer(module, prefix, result, quantized)
                owned.update(prefix + n for n, _ in module.named_parameters())
                owned.update(prefix + n for n, _ in module.named_buffers())
            elif isinstance(module, ElasticBatchNorm1d):
                _take_batch_norm(module, prefix, result.float_state)
                owned.update(prefix + n for n, _ in module.named_parameters(recurse=False))
                owned.update(prefix + n for n, _ in module.named_buffers(recurse=False))
        for key, value in encoder.state_dict().items():
            block = _block_index(key)
            if key in owned or (block is not None and block >= sub.depth):
                continue
            leaf = key.rsplit(".", 1)[-1]
            if leaf in ("pos_bias_u", "pos_bias_v"):
                value = value[: result.heads]
            result.float_state[key] = value.detach().clone().contiguous()
    result.quantized_modules = sorted({_block_relative(n) for n in quantized})
    return result


def _take_weight_layer(module: ElasticWeightMixin, prefix: str, result: SlicedEncoder,
                       quantized: list[str]) -> None:
    weight_shape = _active_weight_shape(module)
    if module.bits != FLOAT_BITS:
        full = module.weight.reshape(module.rows_full, -1)
        n_cols = module._n_cols()
        qw = module.weight_quantizer.quantize(
            full, module.bits, module._row_index(), None if n_cols == full.shape[1] else n_cols
        )
        entries = packed_format.encode_quantized(qw)
        for suffix, tensor in entries.items():
            result.packed_state[f"{prefix}weight{suffix}"] = tensor
        quantized.append(prefix.rstrip("."))
    else:
        weight = module.active_weight_2d().reshape(weight_shape)
        result.float_state[prefix + "weight"] = weight.detach().clone().contiguous()
    bias = module.active_bias()
    if bias is not None:
        result.float_state[prefix + "bias"] = bias.detach().clone().contiguous()


def _active_weight_shape(module: ElasticWeightMixin) -> tuple:
    rows = module._n_rows()
    if isinstance(module, ElasticConv1d):
        kernel = module.kernel_size[0]
        return (rows, module._n_cols() // kernel, kernel)
    return (rows, module._n_cols())


def _take_batch_norm(module: ElasticBatchNorm1d, prefix: str, state: dict) -> None:
    k = module.active_channels
    if module.affine:
        state[prefix + "weight"] = module.weight[:k].detach().clone()
        state[prefix + "bias"] = module.bias[:k].detach().clone()
    if module.track_running_stats:
        mean, var, count = module.stats(k)
        state[prefix + "running_mean"] = mean.detach().clone()
        state[prefix + "running_var"] = var.detach().clone()
        state[prefix + "num_batches_tracked"] = count.detach().clone()


def _quant_symmetric(encoder: torch.nn.Module) -> bool:
    for module in encoder.modules():
        quantizer = getattr(module, "weight_quantizer", None)
        if quantizer is not None:
            return bool(quantizer.config.symmetric)
    return True


def _block_index(name: str) -> int | None:
    match = _BLOCK.match(name + ".")
    return int(match[1]) if match else None


def _block_relative(name: str) -> str:
    """``encoders.3.feed_forward.w_1`` -> ``encoders.*.feed_forward.w_1``."""
    return _BLOCK.sub("encoders.*.", name + ".").rstrip(".")
