"""ElasticConformerEncoder: one Conformer holding a whole family of subsystems.

``encoder: elastic_conformer`` in an ESPnet YAML. It is ESPnet's own
``ConformerEncoder`` (built by ESPnet's ``__init__`` with every stock option,
run by ESPnet's ``forward``) whose blocks are converted in place to elastic
layers with the same parameter names, so a float model's ``state_dict``
equals a stock Conformer's and loads either way.

A subsystem ``d<depth>-w<width>-<precision>`` resolves (``resolve``) to an
architecture record, :class:`~espnet_allinone.arch.SubnetArch`:

* depth: the first ``depth`` blocks run (the block schedule ``0..depth-1``);
* width: the first ``width * linear_units`` FFN units and ``width *
  attention_heads`` heads (head size fixed), and with ``elastic_conv: true``
  the first ``width * output_size`` conv-module channels (the conv
  BatchNorm then keeps running statistics per width: the full width under the
  stock buffer names, narrower ones as ``running_mean_c<k>`` etc.);
* precision: every Linear in the blocks (attention q/k/v/out/pos, FFN,
  ``concat_linear``) and the conv module's pointwise and depthwise convs are
  fake-quantized on the active bit-width's grid (one float master weight,
  one learned scale set per bit-width; ``quant_conf`` is
  :class:`~espnet_allinone.quant.QuantConfig`). A depthwise conv row holds
  only ``cnn_module_kernel`` weights, so with ``granularity: group`` it uses
  one scale per channel unless the group size divides the kernel.

``apply_arch`` runs any record that fits the model, also a non-uniform one
(per-block heads, units and channels as index sets): that is what pruning
builds on.

Unfolding (``seed_blocks: S``): ESPnet builds only S blocks, the seed, and a
depth d (a multiple of S, up to ``num_blocks``) runs them unfolded: logical
block i runs seed block ``i mod S`` (``unfold: repeat``, the whole seed stack
repeated, our reading of Li et al. 2025) or ``i // (d/S)`` (``unfold:
blockwise``; the schedules, checks and per-position statistics live in
``elastic/unfolding.py``). Width and precision stay elastic. With
``position_stats: true`` (default) each logical position keeps its own
conv-module BatchNorm running statistics (positions see different
activations); nothing else is per position, so parameters do not grow with depth.

``stats_banks: true`` (default false) gives the conv BatchNorm one statistics
bank per width x precision of the space (switchable BatchNorm; buffers
``running_mean_w0p5_int4`` etc.), selected with each subsystem: training
updates the active subsystem's bank (and the shared statistics, which
records outside the grid use), eval and extraction use it
(``encoders/stats_banks.py``).

``part_precisions`` (:class:`~espnet_allinone.quant.parts.PartPrecisions`)
sets the bits of the subsampling front (``embed``: its Conv2d and Linear
weights) and of the output layers (the model attaches its CTC linear, see
``attach_output_layers``) in quantized subsystems: ``{front: int8, output:
int8}`` with 2-bit blocks is the papers' mixed scheme; ``decoder: same`` puts a
hybrid model's attention-decoder blocks at the subsystem's bits
(``attach_decoder_layers``); all are float by default. What stays float: all
LayerNorms and the conv BatchNorm, every bias and ``pos_bias_u/v``.

Narrower widths keep the FIRST units/heads/channels; call
``reorder_by_importance()`` (function-preserving at full width) before
training from a float checkpoint to make those the most important ones.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from espnet.nets.pytorch_backend.transformer.attention import (
    LegacyRelPositionMultiHeadedAttention,
    MultiHeadedAttention,
    RelPositionMultiHeadedAttention,
)
from espnet2.asr.encoder.conformer_encoder import ConformerEncoder
from torch import nn

from espnet_allinone.arch import SubnetArch
from espnet_allinone.elastic import ElasticAttentionMixin
from espnet_allinone.elastic.family import (
    block_limits,
    make_block_elastic,
    reorder_block,
)
from espnet_allinone.elastic.unfolding import (
    check_seed,
    position_count,
    refuse_other_block_count,
)
from espnet_allinone.encoders.conformer_extraction import (
    encoder_conf,
    stock_conformer_misfit,
)
from espnet_allinone.encoders.conformer_family import (
    CONFORMER,
    ScheduledMultiSequential,
)
from espnet_allinone.encoders.options import (
    RejectUnknownOptions,
    publish_signature,
    stock_defaults,
)
from espnet_allinone.encoders.stats_banks import check_option as check_stats_banks
from espnet_allinone.encoders.switching import SubsystemSwitching
from espnet_allinone.precision import FLOAT_BITS
from espnet_allinone.pruning.apply import gated
from espnet_allinone.pruning.config import PruneConfig
from espnet_allinone.pruning.costs import encoder_costs
from espnet_allinone.pruning.targets import Pruning
from espnet_allinone.quant.config import QuantConfig
from espnet_allinone.subsystem import SearchSpace, Subsystem


class ElasticMultiHeadedAttention(ElasticAttentionMixin, MultiHeadedAttention):
    """ESPnet's absolute-position attention with elastic heads."""


class ElasticRelPositionMultiHeadedAttention(ElasticAttentionMixin, RelPositionMultiHeadedAttention):
    """ESPnet's relative-position attention (``rel_pos_type: latest``), elastic heads."""


class ElasticLegacyRelPositionMultiHeadedAttention(
    ElasticAttentionMixin, LegacyRelPositionMultiHeadedAttention
):
    """ESPnet's legacy relative-position attention, elastic heads."""


_ATTENTION = {
    MultiHeadedAttention: ElasticMultiHeadedAttention,
    RelPositionMultiHeadedAttention: ElasticRelPositionMultiHeadedAttention,
    LegacyRelPositionMultiHeadedAttention: ElasticLegacyRelPositionMultiHeadedAttention,
}


def convert_attention(module: nn.Module) -> nn.Module:
    """ESPnet attention -> its elastic class, in place."""
    elastic = _ATTENTION.get(type(module))
    if elastic is None:
        raise ValueError(
            f"attention {type(module).__name__} cannot be made elastic; "
            f"valid: {', '.join(c.__name__ for c in _ATTENTION)}"
        )
    return elastic.convert(module)


class ElasticConformerEncoder(RejectUnknownOptions, SubsystemSwitching, ConformerEncoder):
    """Conformer encoder with elastic depth, width and weight precision.

    Every stock ``ConformerEncoder`` option keeps its meaning and default. The
    search space: ``depths`` (block counts, default all blocks), ``widths``
    (fractions of FFN units / heads, default 1), ``precisions`` (int2, int4,
    int8, fp; default fp), ``elastic_conv`` (width also narrows the conv
    module), ``quant_conf`` (QuantConfig options), ``part_precisions`` (bits
    of the front and output layers in quantized subsystems), ``depth_norms`` (the
    final norm keeps its own weights per depth, ``elastic/depth_norm.py``),
    ``stats_banks`` (default false; true: the conv BatchNorm keeps running
    statistics per width x precision, selected with each subsystem, so eval and
    extraction use the subsystem's own; records outside the grid use the shared
    statistics; ``encoders/stats_banks.py``), ``elastic_front`` (default false; true:
    the conv2d subsampling front keeps the first ``width`` of its channels, so a
    narrow subsystem has a narrow front; ``elastic/front.py``). See the module
    docstring for what is quantized and what stays float.
    """

    family = CONFORMER
    stock_encoder = "conformer"

    def __init__(
        self,
        input_size: int,
        *,
        depths: list[int] | None = None,
        widths: list[float | str] | None = None,
        precisions: list[int | str] | None = None,
        elastic_conv: bool = False,
        quant_conf: dict | None = None,
        part_precisions: dict | None = None,
        seed_blocks: int | None = None,
        unfold: str = "repeat",
        position_stats: bool = True,
        prune_targets: list[float] | None = None,
        prune_conf: dict | None = None,
        depth_norms: bool = False,
        stats_banks: bool = False,
        elastic_front: bool = False,
        **stock_options: Any,
    ):
        space = self.search_space({**stock_options, "depths": depths, "widths": widths,
                                   "precisions": precisions, "elastic_conv": elastic_conv,
                                   "prune_targets": prune_targets})
        if prune_targets and seed_blocks:
            raise ValueError("prune_targets with seed_blocks: pruning an unfolded encoder is "
                             "not supported; prune a stacked one")
        if elastic_conv and not stock_options.get("use_cnn_module", True):
            raise ValueError("elastic_conv: true needs use_cnn_module: true")
        check_seed(space, seed_blocks, unfold)
        check_stats_banks(stats_banks)
        quant_config = QuantConfig.from_dict(quant_conf)
        physical = space.num_blocks if seed_blocks is None else seed_blocks
        super().__init__(input_size=input_size, **{**stock_options, "num_blocks": physical})
        self._init_elastic(space, quant_config, part_precisions, seed_blocks, unfold,
                           position_count(space.num_blocks, seed_blocks, position_stats))
        if elastic_front:
            if prune_targets:
                raise ValueError("elastic_front with prune_targets: a pruned subsystem keeps "
                                 "the whole front; use one or the other")
            self.make_front_elastic()
        self._make_elastic()
        if stats_banks:
            self.make_stats_banks()
        if depth_norms:
            self.make_depth_norm()
        self._register_load_state_dict_pre_hook(refuse_other_block_count, with_module=True)
        self._start_switching()
        if prune_targets:
            self.pruning = self._make_pruning(PruneConfig.from_dict(prune_conf))

    @classmethod
    def search_space(cls, encoder_conf: Mapping[str, Any]) -> SearchSpace:
        """The space an ``encoder_conf`` defines, ESPnet's defaults filled in."""
        conf = {**stock_defaults(ConformerEncoder), **{
            k: v for k, v in encoder_conf.items() if v is not None}}
        return SearchSpace.from_encoder_conf(conf)

    @classmethod
    def _stacked_twin(cls, depth: int) -> dict[str, Any]:
        """An ordinary stacked Conformer of ``depth`` blocks of its own."""
        return {"num_blocks": depth, "depths": [depth]}

    # --- construction -----------------------------------------------------
    def _make_elastic(self) -> None:
        ScheduledMultiSequential.convert(self.encoders)
        conv_widths = sorted({int(w * self.space.output_size) for w in self.space.widths})
        for block in self.blocks:
            make_block_elastic(block, self.family, convert_attention,
                               conv_widths if self.space.elastic_conv else (), self.positions)
        self._make_quantizable()

    def _make_pruning(self, config: PruneConfig) -> Pruning:
        """Gate sets for every target, with the exact costs of the full model."""
        group = config.unit_group
        quantized = any(b != FLOAT_BITS for b in self.space.bits)
        if quantized and self.quant_config.granularity == "group":
            group = max(group, self.quant_config.group_size)  # keep whole quantizer groups
            d_k = self.blocks[0].self_attn.d_k
            if d_k % self.quant_config.group_size:
                raise ValueError(
                    f"pruning heads with group_size {self.quant_config.group_size} needs the "
                    f"head size {d_k} to be a multiple of it (whole quantizer groups)")
        full = self.resolve(self.space.largest)
        outside, costs = encoder_costs(self, full)
        limits = [block_limits(b, self.family, self.space.bits) for b in self.blocks]
        targets = [t for t in self.space.prunes if t is not None]
        return Pruning(targets, limits, config, group, outside, costs, self.num_params(full))

    @contextlib.contextmanager
    def gated(self, sub: Subsystem) -> Iterator[Subsystem]:
        """Run a pruned subsystem's training path: the full model at its precision,
        with the target's gates (sampled in training) applied as masks."""
        sub = self.space.validate(sub)
        with self.use_subsystem(sub.replace(prune=None)), self.shared_statistics(), \
                gated(self.blocks, self.family, self.pruning.masks(sub.prune)):
            yield sub

    @property
    def block_stack(self) -> nn.Module:
        """The scheduled block stack (ESPnet's ``encoders``)."""
        return self.encoders

    @property
    def blocks(self) -> list[nn.Module]:
        """Every physical block (active or not)."""
        return list(self.encoders._modules.values())

    # --- extraction -----------------------------------------------------------
    def extracted_encoder(self, arch: SubnetArch, plugin_free: bool,
                          source_conf: Mapping[str, Any]) -> tuple[str, dict, bool, bool]:
        """(encoder name, encoder_conf, is stock, unrolled) of ``arch``'s extracted model.

        ESPnet's ``conformer`` where it can hold the record (with ``plugin_free``,
        low-bit weights dequantized and shared blocks unrolled); else ``packed_conformer``.
        """
        unroll = plugin_free and not arch.is_stacked
        target = arch.unrolled() if unroll else arch
        misfit = stock_conformer_misfit(target, self.space.attention_heads,
                                        self.space.output_size, plugin_free)
        if plugin_free and misfit:
            raise ValueError(f"{misfit}, which ESPnet's conformer encoder cannot express; "
                             "extract it without --plugin_free (it then uses encoder: "
                             "packed_conformer)")
        stock = misfit is None
        conf = encoder_conf(dict(source_conf), target, stock=stock,
                            quant_symmetric=self.quant_config.symmetric,
                            position_stats=self.positions > 1,
                            quant_grid=self.quant_config.grid)
        return (self.stock_encoder if stock else "packed_conformer"), conf, stock, unroll

    def shared_front(self) -> nn.Module:
        """The subsampling front (``embed``): outside the search space, so every path at
        one front precision computes the same output from the same features."""
        return self.embed

    # --- importance ---------------------------------------------------------
    @torch.no_grad()
    def reorder_by_importance(self) -> None:
        """Permute FFN units, heads (and elastic conv and front channels) most important first.

        Importance is a weight-magnitude product of each unit's input and
        output connections. The permutation is function-preserving at full
        width; narrower widths then keep the most important units.
        """
        for block in self.blocks:
            reorder_block(block, self.family, self.space.elastic_conv)
        if self._elastic_front is not None:
            self._elastic_front.reorder_by_importance()


publish_signature(ElasticConformerEncoder, ConformerEncoder)
