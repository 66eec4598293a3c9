"""Compact Conformer encoder for extracted subsystems (``encoder: packed_conformer``).

An extracted subsystem is usually smaller than ESPnet's own ``conformer``
can express: fewer attention heads than ``output_size / head_size`` allows,
conv-module channels narrower than the model dimension, and low-bit weights.
This encoder is a stock :class:`ConformerEncoder` (built by ESPnet itself)
whose blocks are narrowed in place to ``attention_heads_kept`` heads of the
original head size and ``conv_channels`` conv channels. The weights of
``quantized_modules`` (encoder-relative module names; ``encoders.*.`` stands
for every block) are ``weight_bits``-bit. Its ``state_dict``
stores the quantised weights bit-packed (uint8 codes, fp16 scales, integer
zero points, see :mod:`espnet_allinone.export.packed_format`), and loading
dequantises them to exactly the fake-quantised weights the all-in-one model
used, so the forward pass is the stock Conformer one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from espnet2.asr.encoder.conformer_encoder import ConformerEncoder
from typeguard import typechecked

from espnet_allinone.export import packed_format
from espnet_allinone.subsystem import FLOAT_BITS, SUPPORTED_BITS


class PackedConformerEncoder(ConformerEncoder):
    """A narrowed Conformer whose listed weights are stored bit-packed."""

    @typechecked
    def __init__(
        self,
        input_size: int,
        output_size: int = 256,
        attention_heads: int = 4,
        linear_units: int = 2048,
        num_blocks: int = 6,
        dropout_rate: float = 0.1,
        positional_dropout_rate: float = 0.1,
        attention_dropout_rate: float = 0.0,
        input_layer: str | None = "conv2d",
        normalize_before: bool = True,
        concat_after: bool = False,
        positionwise_layer_type: str = "linear",
        positionwise_conv_kernel_size: int = 3,
        macaron_style: bool = False,
        rel_pos_type: str = "legacy",
        pos_enc_layer_type: str = "rel_pos",
        selfattention_layer_type: str = "rel_selfattn",
        activation_type: str = "swish",
        use_cnn_module: bool = True,
        zero_triu: bool = False,
        cnn_module_kernel: int = 31,
        padding_idx: int = -1,
        interctc_layer_idx: list[int] = [],  # noqa: B006 - the stock default
        interctc_use_conditioning: bool = False,
        ctc_trim: bool = False,
        stochastic_depth_rate: float | list[float] = 0.0,
        layer_drop_rate: float = 0.0,
        max_pos_emb_len: int = 5000,
        qk_norm: bool = False,
        use_flash_attn: bool = True,
        attention_heads_kept: int | None = None,
        conv_channels: int | None = None,
        weight_bits: int = FLOAT_BITS,
        quant_symmetric: bool = True,
        quantized_modules: list[str] | None = None,
    ):
        super().__init__(
            input_size=input_size,
            output_size=output_size,
            attention_heads=attention_heads,
            linear_units=linear_units,
            num_blocks=num_blocks,
            dropout_rate=dropout_rate,
            positional_dropout_rate=positional_dropout_rate,
            attention_dropout_rate=attention_dropout_rate,
            input_layer=input_layer,
            normalize_before=normalize_before,
            concat_after=concat_after,
            positionwise_layer_type=positionwise_layer_type,
            positionwise_conv_kernel_size=positionwise_conv_kernel_size,
            macaron_style=macaron_style,
            rel_pos_type=rel_pos_type,
            pos_enc_layer_type=pos_enc_layer_type,
            selfattention_layer_type=selfattention_layer_type,
            activation_type=activation_type,
            use_cnn_module=use_cnn_module,
            zero_triu=zero_triu,
            cnn_module_kernel=cnn_module_kernel,
            padding_idx=padding_idx,
            interctc_layer_idx=interctc_layer_idx,
            interctc_use_conditioning=interctc_use_conditioning,
            ctc_trim=ctc_trim,
            stochastic_depth_rate=stochastic_depth_rate,
            layer_drop_rate=layer_drop_rate,
            max_pos_emb_len=max_pos_emb_len,
            qk_norm=qk_norm,
            use_flash_attn=use_flash_attn,
        )
        if weight_bits not in SUPPORTED_BITS:
            raise ValueError(
                f"weight_bits {weight_bits} not supported; valid: {list(SUPPORTED_BITS)}"
            )
        heads = attention_heads if attention_heads_kept is None else attention_heads_kept
        if not 1 <= heads <= attention_heads:
            raise ValueError(
                f"attention_heads_kept {heads} must be in 1..{attention_heads}"
            )
        channels = output_size if conv_channels is None else conv_channels
        if not 1 <= channels <= output_size:
            raise ValueError(f"conv_channels {channels} must be in 1..{output_size}")
        self.weight_bits = weight_bits
        self.quant_symmetric = quant_symmetric
        for block in self.encoders:
            _narrow_attention(block.self_attn, heads)
            if block.conv_module is not None:
                _narrow_conv_module(block.conv_module, channels)
        self.quantized_weights: list[str] = []
        if weight_bits != FLOAT_BITS:
            names = dict(self.named_modules())
            for pattern in quantized_modules or []:
                expanded = (
                    [pattern.replace("*", str(i), 1) for i in range(num_blocks)]
                    if pattern.startswith("encoders.*.")
                    else [pattern]
                )
                for name in expanded:
                    if name not in names or not hasattr(names[name], "weight"):
                        raise ValueError(
                            f"quantized_modules entry {pattern!r}: no module {name} with a "
                            "weight in this encoder"
                        )
                    self.quantized_weights.append(f"{name}.weight")
        elif quantized_modules:
            raise ValueError("quantized_modules given but weight_bits is float (32)")
        self._packed: dict[str, torch.Tensor] = {}
        self.state_dict_packed = True
        self._register_state_dict_hook(_save_packed)
        self._register_load_state_dict_pre_hook(_load_packed, with_module=True)

    @contextlib.contextmanager
    def float_state_dict(self) -> Iterator[None]:
        """``state_dict`` shows the dequantised float weights (tracing, ONNX export)."""
        previous, self.state_dict_packed = self.state_dict_packed, False
        try:
            yield
        finally:
            self.state_dict_packed = previous


def _load_packed(module: PackedConformerEncoder, state_dict, prefix, local_metadata, strict,
                 missing_keys, unexpected_keys, error_msgs) -> None:
    """Replace the packed entries by the dequantised float weights (before loading)."""
    params = dict(module.named_parameters())
    packed: dict[str, torch.Tensor] = {}
    for name in module.quantized_weights:
        entries = packed_format.pop_entries(state_dict, prefix + name, module.quant_symmetric)
        if entries is None:
            if prefix + name in state_dict:
                raise RuntimeError(
                    f"{prefix}{name} is stored as a float weight, but this "
                    f"packed_conformer expects it bit-packed ({module.weight_bits} bits): "
                    "the config and the model file do not belong together"
                )
            raise RuntimeError(
                f"packed weight {prefix}{name} (codes/scale) missing from the model "
                "file: the config and the model file do not belong together"
            )
        weight = packed_format.dequantize_entries(
            entries, module.weight_bits, tuple(params[name].shape)
        )
        state_dict[prefix + name] = weight.to(params[name].dtype)
        packed.update({f"{name}{k}": v for k, v in entries.items()})
    module._packed = packed


def _save_packed(module: PackedConformerEncoder, state_dict, prefix, local_metadata):
    """Write the packed codes/scales instead of the float quantised weights."""
    if not module.quantized_weights or not module.state_dict_packed:
        return state_dict
    if not module._packed:
        raise RuntimeError(
            "this packed_conformer holds no packed weights yet: load a model file "
            "before saving it"
        )
    for name in module.quantized_weights:
        del state_dict[prefix + name]
    for key, value in module._packed.items():
        state_dict[prefix + key] = value
    return state_dict


def _narrow_attention(attn: torch.nn.Module, heads: int) -> None:
    """Keep ``heads`` heads of the original head size (output ``heads * d_k``)."""
    if heads == attn.h:
        return
    model_dim = attn.linear_q.in_features
    inner = heads * attn.d_k
    attn.h = heads
    for name in ("linear_q", "linear_k", "linear_v"):
        old = getattr(attn, name)
        setattr(attn, name, torch.nn.Linear(model_dim, inner, bias=old.bias is not None))
    old = attn.linear_out
    attn.linear_out = torch.nn.Linear(inner, model_dim, bias=old.bias is not None)
    if hasattr(attn, "linear_pos"):
        attn.linear_pos = torch.nn.Linear(model_dim, inner, bias=False)
    for name in ("pos_bias_u", "pos_bias_v"):
        if hasattr(attn, name):
            setattr(attn, name, torch.nn.Parameter(torch.zeros(heads, attn.d_k)))


def _narrow_conv_module(conv: torch.nn.Module, channels: int) -> None:
    """Conv module with ``channels`` inner channels between model-dim in/out."""
    model_dim = conv.pointwise_conv1.in_channels
    if channels == model_dim:
        return
    bias = conv.pointwise_conv1.bias is not None
    kernel = conv.depthwise_conv.kernel_size[0]
    conv.pointwise_conv1 = torch.nn.Conv1d(model_dim, 2 * channels, 1, bias=bias)
    conv.depthwise_conv = torch.nn.Conv1d(
        channels, channels, kernel, padding=(kernel - 1) // 2, groups=channels,
        bias=conv.depthwise_conv.bias is not None,
    )
    if isinstance(conv.norm, torch.nn.BatchNorm1d):
        conv.norm = torch.nn.BatchNorm1d(channels)
    else:  # LayerNorm variants
        conv.norm = type(conv.norm)(channels)
    conv.pointwise_conv2 = torch.nn.Conv1d(channels, model_dim, 1, bias=bias)
