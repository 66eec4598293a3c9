"""ElasticConformerEncoder: one Conformer holding a whole family of subsystems.

``encoder: elastic_conformer`` in an ESPnet YAML. It is ESPnet's own
``ConformerEncoder`` (built by ESPnet's ``__init__`` with every stock option,
run by ESPnet's ``forward``) whose blocks are converted in place to elastic
layers with the same parameter names, so a float model's ``state_dict``
equals a stock Conformer's and loads either way.

What a subsystem ``d<depth>-w<width>-<precision>`` changes:

* depth: only the first ``depth`` blocks run (``ElasticLayerStack``);
* width: the first ``width * linear_units`` FFN units and ``width *
  attention_heads`` heads (head size fixed), and with ``elastic_conv: true``
  the first ``width * output_size`` conv-module channels (the conv
  BatchNorm then keeps running statistics per width: the full width under the
  stock buffer names, narrower ones as ``running_mean_c<k>`` etc.);
* precision: every Linear in the blocks (attention q/k/v/out/pos, FFN,
  ``concat_linear``) and the conv module's pointwise and depthwise convs are
  fake-quantised on the active bit-width's grid (one float master weight,
  one learned scale set per bit-width; ``quant_conf`` is
  :class:`~espnet_allinone.quant.QuantConfig`). A depthwise conv row holds
  only ``cnn_module_kernel`` weights, so with ``granularity: group`` it uses
  one scale per channel unless the group size divides the kernel.

What stays float: the subsampling front (``embed``), all LayerNorms and the
conv BatchNorm, every bias, ``pos_bias_u/v`` and everything outside the
encoder (CTC, decoder). ``quantize_input_layer: true`` also quantises the
Linear layers of ``embed`` (its Conv2d layers stay float).

Narrower widths keep the FIRST units/heads/channels; call
``reorder_by_importance()`` (function-preserving at full width) before
training from a float checkpoint to make those the most important ones.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
from collections.abc import Iterator

import torch
from espnet.nets.pytorch_backend.transformer.attention import (
    LegacyRelPositionMultiHeadedAttention,
    MultiHeadedAttention,
    RelPositionMultiHeadedAttention,
)
from espnet.nets.pytorch_backend.transformer.repeat import MultiSequential
from espnet2.asr.encoder.conformer_encoder import ConformerEncoder
from torch import nn

from espnet_allinone.elastic import (
    ElasticAttentionMixin,
    ElasticBatchNorm1d,
    ElasticConv1d,
    ElasticLayerStack,
    ElasticLinear,
    active_size,
    convert_weight_layer,
)
from espnet_allinone.elastic.layers import ElasticWeightMixin
from espnet_allinone.quant.config import QuantConfig
from espnet_allinone.subsystem import FLOAT_BITS, SearchSpace, Subsystem


class ElasticMultiHeadedAttention(ElasticAttentionMixin, MultiHeadedAttention):
    """ESPnet's absolute-position attention with elastic heads."""


class ElasticRelPositionMultiHeadedAttention(ElasticAttentionMixin, RelPositionMultiHeadedAttention):
    """ESPnet's relative-position attention (``rel_pos_type: latest``), elastic heads."""


class ElasticLegacyRelPositionMultiHeadedAttention(
    ElasticAttentionMixin, LegacyRelPositionMultiHeadedAttention
):
    """ESPnet's legacy relative-position attention, elastic heads."""


class ElasticMultiSequential(ElasticLayerStack, MultiSequential):
    """ESPnet's block stack running its first ``depth`` blocks."""


_ATTENTION = {
    MultiHeadedAttention: ElasticMultiHeadedAttention,
    RelPositionMultiHeadedAttention: ElasticRelPositionMultiHeadedAttention,
    LegacyRelPositionMultiHeadedAttention: ElasticLegacyRelPositionMultiHeadedAttention,
}


class _RejectUnknownOptions:
    """Fail on an unknown ``encoder_conf`` key with the valid keys (before building)."""

    def __new__(cls, *args, **kwargs):
        valid = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        unknown = [k for k in kwargs if k not in valid]
        if unknown:
            hints = {k: difflib.get_close_matches(k, valid, n=1) for k in unknown}
            hint = "".join(f" ('{k}': did you mean '{m[0]}'?)" for k, m in hints.items() if m)
            raise TypeError(
                f"unknown encoder_conf key(s) {', '.join(map(repr, unknown))} for "
                f"{cls.__name__}{hint}; valid keys: {', '.join(valid)}"
            )
        return super().__new__(cls)


class ElasticConformerEncoder(_RejectUnknownOptions, ConformerEncoder):
    """Conformer encoder with elastic depth, width and weight precision.

    Every stock ``ConformerEncoder`` option keeps its meaning and default. The
    search space: ``depths`` (block counts, default all blocks), ``widths``
    (fractions of FFN units / heads, default 1), ``precisions`` (int2, int4,
    int8, fp; default fp), ``elastic_conv`` (width also narrows the conv
    module), ``quant_conf`` (QuantConfig options), ``quantize_input_layer``
    (also quantise the Linear layers of the subsampling front). See the
    module docstring for what is quantised and what stays float.
    """

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
        interctc_layer_idx: list[int] = [],  # noqa: B006 - the stock default, shown by --print_config
        interctc_use_conditioning: bool = False,
        ctc_trim: bool = False,
        stochastic_depth_rate: float | list[float] = 0.0,
        layer_drop_rate: float = 0.0,
        max_pos_emb_len: int = 5000,
        qk_norm: bool = False,
        use_flash_attn: bool = True,
        depths: list[int] | None = None,
        widths: list[float | str] | None = None,
        precisions: list[int | str] | None = None,
        elastic_conv: bool = False,
        quant_conf: dict | None = None,
        quantize_input_layer: bool = False,
    ):
        space = SearchSpace.from_config(
            num_blocks=num_blocks,
            linear_units=linear_units,
            attention_heads=attention_heads,
            output_size=output_size,
            depths=depths,
            widths=widths,
            precisions=precisions,
            elastic_conv=elastic_conv,
        )
        if elastic_conv and not use_cnn_module:
            raise ValueError("elastic_conv: true needs use_cnn_module: true")
        quant_config = QuantConfig.from_dict(quant_conf)
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
        self.space = space
        self.quant_config = quant_config
        self.quantize_input_layer = quantize_input_layer
        self._make_elastic()
        self._active: Subsystem = space.largest
        for sub in space.ordered():  # every member must be reachable (e.g. group sizes)
            self._configure(sub)
        self.set_subsystem(space.largest)

    # --- construction -----------------------------------------------------
    def _make_elastic(self) -> None:
        ElasticMultiSequential.convert(self.encoders)
        conv_widths = sorted({int(w * self.space.output_size) for w in self.space.widths})
        for block in self.blocks:
            attention = _ATTENTION.get(type(block.self_attn))
            if attention is None:
                raise ValueError(
                    f"attention {type(block.self_attn).__name__} cannot be made elastic; "
                    f"valid: {', '.join(c.__name__ for c in _ATTENTION)}"
                )
            attention.convert(block.self_attn)
            for ff in self._feed_forwards(block):
                convert_weight_layer(ff.w_1)
                convert_weight_layer(ff.w_2)
            if block.conv_module is not None:
                conv = block.conv_module
                ElasticConv1d.convert(conv.pointwise_conv1, split_halves=True)
                ElasticConv1d.convert(conv.depthwise_conv)
                ElasticBatchNorm1d.convert(
                    conv.norm, conv_widths if self.space.elastic_conv else ()
                )
                ElasticConv1d.convert(conv.pointwise_conv2)
            if block.concat_after:
                convert_weight_layer(block.concat_linear)
        self._input_layers = []
        if self.quantize_input_layer:
            for module in self.embed.modules():
                if type(module) is nn.Linear:
                    self._input_layers.append(ElasticLinear.convert(module))
        if any(b != FLOAT_BITS for b in self.space.bits):
            for name, module in self.named_modules():
                if isinstance(module, ElasticWeightMixin):
                    try:
                        module.enable_quantization(self.space.bits, self.quant_config)
                    except ValueError as err:
                        raise ValueError(f"encoder layer {name}: {err}") from None

    @property
    def blocks(self) -> list[nn.Module]:
        """Every block (active or not)."""
        return list(self.encoders._modules.values())

    @staticmethod
    def _feed_forwards(block: nn.Module) -> list[nn.Module]:
        return [ff for ff in (block.feed_forward, block.feed_forward_macaron) if ff is not None]

    def _configure(self, sub: Subsystem) -> None:
        units, heads = self.space.ffn_units(sub), self.space.heads(sub)
        channels, bits = self.space.conv_channels(sub), sub.bits
        try:
            for i, block in enumerate(self.blocks):
                where = f"block {i}"
                block.self_attn.set_active(heads=heads, bits=bits)
                for ff in self._feed_forwards(block):
                    ff.w_1.set_active(out=units, bits=bits)
                    ff.w_2.set_active(in_=units, bits=bits)
                if block.conv_module is not None:
                    conv = block.conv_module
                    conv.pointwise_conv1.set_active(out=channels, bits=bits)
                    conv.depthwise_conv.set_active(out=channels, bits=bits)
                    conv.norm.set_active(channels)
                    conv.pointwise_conv2.set_active(in_=channels, bits=bits)
                if block.concat_after:
                    block.concat_linear.set_active(bits=bits)
            where = "embed"
            for layer in self._input_layers:
                layer.set_active(bits=bits)
        except ValueError as err:
            raise ValueError(f"subsystem {sub}: {where}: {err}") from None
        self.encoders.set_depth(sub.depth)
        self._active = sub

    # --- the active subsystem -----------------------------------------------
    @property
    def active_subsystem(self) -> Subsystem:
        return self._active

    def set_subsystem(self, sub: str | Subsystem) -> Subsystem:
        """Switch to ``sub`` (validated against the search space); returns it."""
        sub = self.space.validate(sub)
        if sub != self._active or self.encoders.depth != sub.depth:
            self._configure(sub)
        return sub

    @contextlib.contextmanager
    def use_subsystem(self, sub: str | Subsystem) -> Iterator[Subsystem]:
        """Run a block with ``sub`` active; the previous subsystem comes back after."""
        previous = self._active
        try:
            yield self.set_subsystem(sub)
        finally:
            self.set_subsystem(previous)

    def _sized(self, sub):
        return self.use_subsystem(sub) if sub is not None else contextlib.nullcontext()

    def num_params(self, sub: str | Subsystem | None = None) -> int:
        """Exact parameters of ``sub`` (default: the active one), encoder only."""
        with self._sized(sub):
            return active_size(self).params

    def storage_bytes(self, sub: str | Subsystem | None = None) -> int:
        """Exact bytes of ``sub``'s encoder: quantised weights packed (codes, fp16
        scales, zero points), every other parameter and BatchNorm statistic 4 bytes."""
        with self._sized(sub):
            return active_size(self).bytes

    # --- importance ---------------------------------------------------------
    @torch.no_grad()
    def reorder_by_importance(self) -> None:
        """Permute FFN units, heads (and elastic conv channels) most important first.

        Importance is a weight-magnitude product of each unit's input and
        output connections. The permutation is function-preserving at full
        width; narrower widths then keep the most important units.
        """
        for block in self.blocks:
            attn = block.self_attn
            attn.permute_heads(torch.argsort(attn.head_importance(), descending=True))
            for ff in self._feed_forwards(block):
                score = _out_norms(ff.w_1.weight) * _in_norms(ff.w_2.weight)
                order = torch.argsort(score, descending=True)
                ff.w_1.permute_out(order)
                ff.w_2.permute_in(order)
            if block.conv_module is not None and self.space.elastic_conv:
                conv = block.conv_module
                gain = conv.norm.weight.abs() / (conv.norm.running_var + conv.norm.eps).sqrt()
                score = _out_norms(conv.depthwise_conv.weight) * gain
                order = torch.argsort(score * _in_norms(conv.pointwise_conv2.weight), descending=True)
                conv.pointwise_conv1.permute_out(order)
                conv.depthwise_conv.permute_out(order)
                conv.norm.permute(order)
                conv.pointwise_conv2.permute_in(order)


def _out_norms(weight: torch.Tensor) -> torch.Tensor:
    """L2 norm of each output row ([out, in] or [out, in, k])."""
    return weight.reshape(weight.shape[0], -1).norm(dim=1)


def _in_norms(weight: torch.Tensor) -> torch.Tensor:
    """L2 norm of each input column (with its kernel taps)."""
    return weight.transpose(0, 1).reshape(weight.shape[1], -1).norm(dim=1)
