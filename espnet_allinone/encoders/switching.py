"""What every elastic encoder family shares: construction, records, switching, sizes.

A family (``ElasticConformerEncoder``, ``ElasticWav2Vec2Encoder``) builds its
stock model, calls :meth:`SubsystemSwitching._init_elastic`, makes its blocks
elastic and calls :meth:`SubsystemSwitching._start_switching`; this mixin then
resolves subsystems to records (unfolded through ``elastic/unfolding.py``),
checks and runs records, switches subsystems, measures them exactly and
answers the hooks of ``ExtractableEncoder`` that generic code asks (with the
defaults a family overrides where it differs). The model's output layers (CTC
linear, decoder output layer) are switched with the record too once the model
has attached them (``attach_output_layers``): a record's ``output_bits`` is
theirs; likewise the attention decoder's block Linears (``attach_decoder_layers``,
``decoder_bits``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from espnet_allinone.arch import ArchError, BlockArch, SubnetArch, prefix
from espnet_allinone.elastic import SizeReport, active_size, convert_weight_layer
from espnet_allinone.elastic.depth_norm import DepthLayerNorm
from espnet_allinone.elastic.family import FamilySpec, apply_block, block_limits
from espnet_allinone.elastic.front import ElasticFront
from espnet_allinone.elastic.layers import ElasticWeightMixin
from espnet_allinone.elastic.unfolding import stacked_conf, unfold_schedule
from espnet_allinone.encoders.stats_banks import (
    add_banks,
    bank_of,
    conv_norms,
    select,
    shared_statistics,
)
from espnet_allinone.precision import FLOAT_BITS
from espnet_allinone.pruning.targets import Pruning
from espnet_allinone.quant.config import QuantConfig
from espnet_allinone.quant.parts import PartPrecisions
from espnet_allinone.subsystem import SearchSpace, Subsystem


def waveform_probe(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """1 s and 0.75 s of random 16 kHz audio (a fixed input for equality checks)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(2, 16000, generator=gen) * 0.1, torch.tensor([16000, 12000])


def model_probe_input(model: nn.Module, input_size: int | None = None,
                      seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed random input for an ESPnet ASR model: 1 s of audio in front of a
    frontend, else 100 feature frames of ``input_size``."""
    if model.frontend is not None:
        return waveform_probe(seed)
    if input_size is None:
        raise ValueError("the config has neither a frontend nor an input_size")
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(2, 100, int(input_size), generator=gen), torch.tensor([100, 75])


class SubsystemSwitching:
    """Resolve, apply and switch architecture records; count exact sizes.

    What the family class provides: ``family`` and ``stock_encoder`` (class
    attributes), ``blocks`` (every physical block) and ``block_stack`` (the
    scheduled stack holding them). What :meth:`_init_elastic` sets: the rest
    below. ``_input_layers`` are the front's quantizable layers
    (``_make_quantizable``); ``pruning`` exists when the space has pruning targets.
    """

    family: ClassVar[FamilySpec]
    stock_encoder: ClassVar[str]
    blocks: list[nn.Module]
    block_stack: nn.Module
    space: SearchSpace
    quant_config: QuantConfig
    part_precisions: PartPrecisions
    output_layers: dict[str, nn.Module]
    decoder_layers: dict[str, nn.Module]
    seed_blocks: int | None
    unfold: str
    positions: int
    pruning: Pruning
    _input_layers: list[nn.Module]
    _archs: dict[Subsystem, SubnetArch]
    _active: Subsystem
    _active_arch: SubnetArch | None
    _bank_tags: dict[Subsystem, str] | None = None  # stats_banks: true (make_stats_banks)
    _elastic_front: ElasticFront | None = None  # elastic_front: true (make_front_elastic)
    _bank_norms: tuple[nn.Module, ...] = ()

    # --- construction -----------------------------------------------------------
    def _init_elastic(self, space: SearchSpace, quant_config: QuantConfig,
                      part_precisions: Mapping[str, Any] | None, seed_blocks: int | None,
                      unfold: str, positions: int) -> None:
        """Set what switching needs (after the stock model is built, before its blocks
        are made elastic); ``positions``: statistics banks per seed block."""
        self.space = space
        self.quant_config = quant_config
        self.part_precisions = PartPrecisions.from_conf(part_precisions)
        self.output_layers = {}
        self.decoder_layers = {}
        self.seed_blocks = seed_blocks
        self.unfold = unfold
        self.positions = positions
        self._input_layers = []
        self._archs = {}
        self._active = space.largest
        self._active_arch = None

    def _start_switching(self) -> None:
        """Switch to every unpruned member once (each must be reachable, e.g. group
        sizes), then to the largest."""
        for sub in self.space.members():
            if sub.prune is None:
                self.set_subsystem(sub)
        self.set_subsystem(self.space.largest)

    @classmethod
    def alone_conf(cls, encoder_conf: Mapping[str, Any], sub: Subsystem) -> dict[str, Any]:
        """The ``encoder_conf`` of ``sub``'s twin trained alone: this one (training then
        samples ``sub`` only), or for an unfolded encoder (``seed_blocks``) what the
        unfolding paper compares with, an ordinary stacked model of the subsystem's
        logical depth (:meth:`_stacked_twin`), not a seed run again."""
        conf = dict(encoder_conf)
        if conf.get("seed_blocks"):
            conf = {**stacked_conf(conf), **cls._stacked_twin(sub.depth)}
        return conf

    @classmethod
    def _stacked_twin(cls, depth: int) -> dict[str, Any]:
        """The ``encoder_conf`` keys that make a stacked twin of logical depth ``depth``
        (each family spells its block count its own way)."""
        raise NotImplementedError(f"{cls.__name__} defines no stacked twin of an unfolded model")

    # --- architecture records -------------------------------------------------
    def resolve(self, sub: str | Subsystem) -> SubnetArch:
        """The architecture record of ``sub`` (validated against the space)."""
        sub = self.space.validate(sub)
        if sub.prune is not None:  # learned by the gates: never cached
            return self.pruned_arch(sub)
        arch = self._archs.get(sub)
        if arch is None:
            arch = self._archs[sub] = self._uniform_arch(sub)
        return arch

    def _uniform_arch(self, sub: Subsystem) -> SubnetArch:
        """The first units, heads and channels of each block ``sub``'s schedule runs."""
        space = self.space
        heads = prefix(space.heads(sub))
        units = prefix(space.ffn_units(sub))
        channels = prefix(space.conv_channels(sub))
        blocks = []
        for i in unfold_schedule(sub.depth, self.seed_blocks, self.unfold):
            block = self.blocks[i]
            n_ffn = len(self.family.feed_forwards_of(block))
            has_conv = self.family.conv_of(block) is not None
            blocks.append(BlockArch(physical=i, heads=heads, ffn_units=(units,) * n_ffn,
                                    conv_channels=channels if has_conv else None,
                                    bits=sub.bits))
        parts = self.part_precisions
        front = self._elastic_front
        return SubnetArch(tuple(blocks), front_bits=parts.bits("front", sub.bits),
                          output_bits=parts.bits("output", sub.bits),
                          decoder_bits=self._decoder_bits(sub.bits),
                          front_channels=None if front is None else front.channels_for(sub.width))

    def pruned_arch(self, sub: Subsystem) -> SubnetArch:
        """The architecture a pruned subsystem's gates have learned (hard gates)."""
        parts = self.part_precisions
        arch = self.pruning.arch(sub.prune, sub.bits, parts.bits("front", sub.bits),
                                 parts.bits("output", sub.bits))
        return dataclasses.replace(arch, decoder_bits=self._decoder_bits(sub.bits))

    def _decoder_bits(self, block_bits: int) -> int:
        """The decoder blocks' bits (``part_precisions.decoder``); float while the model
        attached none (a CTC-only model, or a float decoder part)."""
        if not self.decoder_layers:
            return FLOAT_BITS
        return self.part_precisions.bits("decoder", block_bits)

    def check_arch(self, arch: SubnetArch) -> None:
        """Raise ArchError naming the first entry of ``arch`` that does not fit."""
        arch.check([block_limits(b, self.family, self.space.bits) for b in self.blocks])
        if arch.front_channels is not None and self._elastic_front is None:
            raise ArchError(f"front channels {arch.front_channels}, but this encoder's front "
                            "keeps all its channels (elastic_front: false)")
        self._check_blocks(arch)
        self.check_part_bits(arch)

    def _check_blocks(self, arch: SubnetArch) -> None:
        """What the family's blocks cannot run beyond their limits (default: nothing)."""

    # --- what generic code asks (ExtractableEncoder) ---------------------------
    def extracted_state(self, sliced_state: dict[str, torch.Tensor], arch: SubnetArch,
                        stock: bool, target: nn.Module) -> dict[str, torch.Tensor]:
        """The sliced tensors keyed for the extracted encoder ``target`` (by default
        the slicer's keys are the extracted encoder's)."""
        return sliced_state

    def probe_input(self, model: nn.Module, input_size: int | None,
                    seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """A fixed random input of ``model`` (the model's own: audio before a
        frontend, else feature frames)."""
        return model_probe_input(model, input_size, seed)

    def shared_front(self) -> nn.Module | None:
        """The front module every path at one front precision shares (none by default)."""
        return None

    @property
    def depth_norm(self) -> DepthLayerNorm | None:
        """The final norm when it keeps weights per depth (``depth_norms: true``)."""
        norm = self._output_norm()
        return norm if isinstance(norm, DepthLayerNorm) else None

    def _output_norm(self) -> nn.Module | None:
        path = self.family.output_norm
        try:
            return None if path is None else self.get_submodule(path)
        except AttributeError:  # e.g. a post-norm Conformer (normalize_before: false)
            return None

    def apply_arch(self, arch: SubnetArch) -> None:
        """Run ``arch`` (any record that fits the model, uniform or not)."""
        self.check_arch(arch)
        for block in arch.stored_blocks():
            try:
                apply_block(self.blocks[block.physical], self.family, block)
            except ValueError as err:
                raise ArchError(f"physical block {block.physical}: {err}") from None
        narrowed = ()
        if self._elastic_front is not None:
            self._elastic_front.set_active(arch.front_channels, arch.front_bits)
            narrowed = self._elastic_front.layers
        for layer in self._input_layers:
            if not any(layer is n for n in narrowed):
                layer.set_active(bits=arch.front_bits)
        for layer in self.output_layers.values():
            layer.set_active(bits=arch.output_bits)
        for layer in self.decoder_layers.values():
            layer.set_active(bits=arch.decoder_bits)
        if self.depth_norm is not None:
            try:
                self.depth_norm.set_depth(arch.depth)
            except ValueError as err:
                raise ArchError(str(err)) from None
        self.block_stack.set_schedule(arch.schedule)
        if self._bank_tags is not None:  # the record's own BatchNorm statistics, if it has any
            select(self._bank_norms, bank_of(self, self._bank_tags, arch))
        self._active_arch = arch

    def _make_quantizable(self) -> None:
        """Convert the front's weight layers when ``part_precisions`` quantizes it, and
        give every elastic layer its quantizer: the front's layers the front's bits,
        the others the space's."""
        front_bits = self.part_precisions.quantized_bits("front", self.space.bits)
        front_layers = self.family.front_weight_layers(self).values()
        self._input_layers = [convert_weight_layer(m) for m in front_layers] if front_bits else []
        if all(b == FLOAT_BITS for b in self.space.bits):
            return
        front = set(map(id, front_layers))  # a float front made elastic stays float
        for name, module in self.named_modules():
            if isinstance(module, ElasticWeightMixin):
                bits = front_bits if id(module) in front else self.space.bits
                try:
                    module.enable_quantization(bits, self.quant_config)
                except ValueError as err:
                    raise ValueError(f"encoder layer {name}: {err}") from None

    def make_front_elastic(self) -> None:
        """Let the subsampling front keep the first ``width`` of its channels in each
        subsystem (``elastic_front: true``, ``elastic/front.py``)."""
        self._elastic_front = ElasticFront(self.shared_front())

    @property
    def elastic_front(self) -> bool:
        """The front's channels narrow with the subsystem's width."""
        return self._elastic_front is not None

    def make_depth_norm(self) -> None:
        """Give the family's final norm its own weights per depth of the space."""
        norm = self._output_norm()
        if norm is None:
            raise ValueError(f"depth_norms: true needs a final norm after the blocks; this "
                             f"{self.family.name} encoder has none (Conformer: "
                             "normalize_before: true)")
        DepthLayerNorm.convert(norm, self.space.depths)

    def make_stats_banks(self) -> None:
        """Give the blocks' BatchNorms one statistics bank per width x precision of the
        space, selected with each record (``stats_banks: true``, ``stats_banks.py``)."""
        self._bank_tags = add_banks(self)
        self._bank_norms = tuple(conv_norms(self))

    @property
    def stats_banks(self) -> bool:
        """The BatchNorms keep statistics banks per width x precision."""
        return self._bank_tags is not None

    def stats_bank(self, sub_or_arch: str | Subsystem | SubnetArch) -> str | None:
        """The bank tag a subsystem or record uses (None: the shared statistics)."""
        if self._bank_tags is None:
            return None
        arch = sub_or_arch if isinstance(sub_or_arch, SubnetArch) else self.resolve(sub_or_arch)
        return bank_of(self, self._bank_tags, arch)

    def shared_statistics(self) -> contextlib.AbstractContextManager:
        """Within the block the BatchNorms use their shared statistics, not the active
        record's bank (a pruned training path; nothing to do without banks)."""
        if self._bank_tags is None:
            return contextlib.nullcontext()
        return shared_statistics(self._bank_norms)

    def check_part_bits(self, arch: SubnetArch) -> None:
        """A quantized front (decoder) needs quantizable front (decoder block) layers
        (``part_precisions.front``, ``part_precisions.decoder``)."""
        bits = {layer.quantize_bits for layer in self._input_layers}
        if arch.front_bits != FLOAT_BITS and not any(arch.front_bits in b for b in bits):
            raise ArchError(f"front at {arch.front_bits} bits, but this encoder's front runs "
                            f"at {self.part_precisions.front} (part_precisions.front)")
        bits = {layer.quantize_bits for layer in self.decoder_layers.values()}
        if arch.decoder_bits != FLOAT_BITS and not any(arch.decoder_bits in b for b in bits):
            runs = (self.part_precisions.decoder if self.decoder_layers
                    else "float (no quantized decoder blocks attached)")
            raise ArchError(f"decoder blocks at {arch.decoder_bits} bits, but this model's "
                            f"decoder blocks run at {runs} (part_precisions.decoder)")

    def attach_output_layers(self, layers: Mapping[str, nn.Module]) -> None:
        """Make the model's output layers (keys: their names in the model) elastic in
        precision and switch them with every record (``arch.output_bits``).

        They stay the model's modules (not the encoder's: no second copy in the
        state_dict); the encoder only sets their bits.
        """
        if self._attach_part("output", layers, self.output_layers) \
                and self._active_arch is not None:
            self.apply_arch(self._active_arch)

    def attach_decoder_layers(self, layers: Mapping[str, nn.Module]) -> None:
        """Make the attention decoder's block Linears (keys: their names in the model)
        fake-quantized at ``part_precisions.decoder`` of every quantized record (the
        blocks keep full width and depth) and switch their bits with every record
        (``arch.decoder_bits``); like the output layers they stay the model's."""
        if self._attach_part("decoder", layers, self.decoder_layers):
            self._archs.clear()  # records resolved before had float decoder blocks
            self._force(self._active)

    def _attach_part(self, part: str, layers: Mapping[str, nn.Module],
                     attached: dict[str, nn.Module]) -> bool:
        """Make ``layers`` quantizable at every integer precision ``part`` runs at in the
        space and add them to ``attached``; False when the part is float or none given."""
        bits = self.part_precisions.quantized_bits(part, self.space.bits)
        if not bits or not layers:
            return False
        for name, layer in layers.items():
            layer = convert_weight_layer(layer)
            try:
                layer.enable_quantization(bits, self.quant_config)
            except ValueError as err:
                raise ValueError(f"{part} layer {name}: {err}") from None
            attached[name] = layer
        return True

    @property
    def active_arch(self) -> SubnetArch:
        return self._active_arch

    @contextlib.contextmanager
    def use_arch(self, arch: SubnetArch) -> Iterator[SubnetArch]:
        """Run a block with ``arch`` active; what was active before (a subsystem, or the
        record of an enclosing ``use_arch``) comes back after."""
        previous, previous_arch = self._active, self._active_arch
        try:
            self.apply_arch(arch)
            yield arch
        finally:
            if previous_arch is None:
                self._force(previous)
            else:
                self.apply_arch(previous_arch)

    # --- the active subsystem -----------------------------------------------
    @property
    def active_subsystem(self) -> Subsystem:
        return self._active

    def set_subsystem(self, sub: str | Subsystem) -> Subsystem:
        """Switch to ``sub`` (validated against the search space); returns it."""
        sub = self.space.validate(sub)
        if sub != self._active or sub.prune is not None \
                or self._active_arch is not self._archs.get(sub):
            self._force(sub)
        return sub

    def _force(self, sub: Subsystem) -> None:
        arch = self.resolve(sub)
        try:
            self.apply_arch(arch)
        except ArchError as err:
            raise ValueError(f"subsystem {sub}: {err}") from None
        self._active = sub

    @contextlib.contextmanager
    def use_subsystem(self, sub: str | Subsystem) -> Iterator[Subsystem]:
        """Run a block with ``sub`` active; the previous subsystem comes back after."""
        previous = self._active
        try:
            yield self.set_subsystem(sub)
        finally:
            self.set_subsystem(previous)

    # --- sizes ------------------------------------------------------------------
    def _sized(self, sub: str | Subsystem | SubnetArch | None):
        if sub is None:
            return contextlib.nullcontext()
        if isinstance(sub, SubnetArch):
            return self.use_arch(sub)
        return self.use_subsystem(sub)

    def num_params(self, sub: str | Subsystem | SubnetArch | None = None) -> int:
        """Exact parameters of ``sub`` (a subsystem or a record; default: the active
        one), encoder only; shared blocks count once."""
        with self._sized(sub):
            return active_size(self).params

    def storage_bytes(self, sub: str | Subsystem | SubnetArch | None = None) -> int:
        """Exact bytes of ``sub``'s encoder: quantized weights packed (codes, fp16
        scales, zero points), every other parameter and BatchNorm statistic 4 bytes."""
        with self._sized(sub):
            return active_size(self).bytes

    def output_layers_size(self, sub: str | Subsystem | SubnetArch | None = None) -> SizeReport:
        """Exact parameters and bytes of the attached output layers and decoder block
        layers under ``sub`` (packed when quantized); zero when the model attached none."""
        layers = [*self.output_layers.values(), *self.decoder_layers.values()]
        with self._sized(sub):
            return sum((active_size(layer) for layer in layers), SizeReport(0, 0))

    def ordered_subsystems(self) -> list[Subsystem]:
        """Every subsystem, smallest exact bytes first (ties: depth, then width)."""
        return self.space.ordered(lambda s: self.storage_bytes(s) + self.output_layers_size(s).bytes)
