"""Switching and sizing shared by every elastic encoder family.

An encoder provides ``family``, ``space``, ``blocks``, ``block_stack`` (the
scheduled block stack), ``_input_layers``, ``part_precisions``, ``quant_config``,
``resolve`` and ``check_arch``; this mixin runs records on it, switches
subsystems and measures them exactly. The model's output layers (CTC linear,
decoder output layer) are switched with the record too once the model has
attached them (``attach_output_layers``): a record's ``output_bits`` is theirs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

from torch import nn

from espnet_allinone.arch import ArchError, SubnetArch
from espnet_allinone.elastic import SizeReport, active_size, convert_weight_layer
from espnet_allinone.elastic.depth_norm import DepthLayerNorm
from espnet_allinone.elastic.family import apply_block
from espnet_allinone.elastic.layers import ElasticWeightMixin
from espnet_allinone.precision import FLOAT_BITS
from espnet_allinone.subsystem import Subsystem


class SubsystemSwitching:
    """Apply architecture records, switch subsystems, count exact sizes."""

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
        for layer in self._input_layers:
            layer.set_active(bits=arch.front_bits)
        for layer in self.output_layers.values():
            layer.set_active(bits=arch.output_bits)
        if self.depth_norm is not None:
            try:
                self.depth_norm.set_depth(arch.depth)
            except ValueError as err:
                raise ArchError(str(err)) from None
        self.block_stack.set_schedule(arch.schedule)
        self._active_arch = arch

    def _make_quantisable(self) -> None:
        """Convert the front's weight layers when ``part_precisions`` quantises it, and
        give every elastic layer its quantiser: the front's layers the front's bits,
        the others the space's."""
        front_bits = self.part_precisions.quantised_bits("front", self.space.bits)
        self._input_layers = [convert_weight_layer(m) for m in
                              self.family.front_weight_layers(self).values()] if front_bits else []
        if all(b == FLOAT_BITS for b in self.space.bits):
            return
        front = set(map(id, self._input_layers))
        for name, module in self.named_modules():
            if isinstance(module, ElasticWeightMixin):
                bits = front_bits if id(module) in front else self.space.bits
                try:
                    module.enable_quantization(bits, self.quant_config)
                except ValueError as err:
                    raise ValueError(f"encoder layer {name}: {err}") from None

    def make_depth_norm(self) -> None:
        """Give the family's final norm its own weights per depth of the space."""
        norm = self._output_norm()
        if norm is None:
            raise ValueError(f"depth_norms: true needs a final norm after the blocks; this "
                             f"{self.family.name} encoder has none (Conformer: "
                             "normalize_before: true)")
        DepthLayerNorm.convert(norm, self.space.depths)

    def check_part_bits(self, arch: SubnetArch) -> None:
        """A quantised front needs quantisable front layers (``part_precisions.front``)."""
        bits = {layer.quantize_bits for layer in self._input_layers}
        if arch.front_bits != FLOAT_BITS and not any(arch.front_bits in b for b in bits):
            raise ArchError(f"front at {arch.front_bits} bits, but this encoder's front runs "
                            f"at {self.part_precisions.front} (part_precisions.front)")

    def attach_output_layers(self, layers: Mapping[str, nn.Module]) -> None:
        """Make the model's output layers (keys: their names in the model) elastic in
        precision and switch them with every record (``arch.output_bits``).

        They stay the model's modules (not the encoder's: no second copy in the
        state_dict); the encoder only sets their bits.
        """
        bits = self.part_precisions.quantised_bits("output", self.space.bits)
        if not bits:  # float output layers: nothing to switch
            return
        for name, layer in layers.items():
            layer = convert_weight_layer(layer)
            layer.enable_quantization(bits, self.quant_config)
            self.output_layers[name] = layer
        if self._active_arch is not None:
            self.apply_arch(self._active_arch)

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
        """Exact bytes of ``sub``'s encoder: quantised weights packed (codes, fp16
        scales, zero points), every other parameter and BatchNorm statistic 4 bytes."""
        with self._sized(sub):
            return active_size(self).bytes

    def output_layers_size(self, sub: str | Subsystem | SubnetArch | None = None) -> SizeReport:
        """Exact parameters and bytes of the attached output layers under ``sub``
        (packed when quantised); zero when the model attached none."""
        with self._sized(sub):
            return sum((active_size(layer) for layer in self.output_layers.values()),
                       SizeReport(0, 0))

    def ordered_subsystems(self) -> list[Subsystem]:
        """Every subsystem, smallest exact bytes first (ties: depth, then width)."""
        return self.space.ordered(lambda s: self.storage_bytes(s) + self.output_layers_size(s).bytes)
