"""Mixed records: every block at its own trained precision and width.

A uniform subsystem (``d4-w0.5-int4``) gives every block the same width and
precision. The all-in-one model trains each block at every width and
precision of its space, so it also holds every *mixed* record: a depth from
the space's depths and, per physical block, a precision and a width
(optionally one width per module kind: attention heads, feed-forward units,
conv channels). :class:`MixedRecord` names one without torch, so training can
draw them reproducibly and the search can walk them; one spelling, e.g.::

    d4:w1-int8+w0.5-int4+w1-fp+w1-int2      choice k applies to physical block k
    d4:a0.5f1c1-int4+w1-int8+w1-int8+w1-int8  per module kind (attention, ffn, conv)
    d4:w1-fp+w1-int4+w1-int4+w1-int4@int4   front and output as in a uniform int4 subsystem

:func:`build_arch` turns a record into the encoder's
:class:`~espnet_allinone.arch.SubnetArch` through the encoder's own
``resolve`` (each block's entries are taken from the uniform subsystem with
that block's choice), so every family and unfolded encoders work without
family knowledge here: a block shared by several logical positions runs its
one choice at each of them. The front, the output layers and the attention
decoder's blocks run as in the uniform subsystem of the record's ``parts`` precision (``part_precisions``:
``{front: int8}`` gives an int8 front to every quantized one, ``same`` the
precision itself); without ``@<precision>`` they follow the most precise
block, so they never run below any block. Torch-free.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Protocol

from espnet_allinone.arch import ArchError, BlockArch, SubnetArch
from espnet_allinone.precision import FLOAT_BITS
from espnet_allinone.subsystem import PARTS, SearchSpace, Subsystem, SubsystemError

KINDS = ("attention", "ffn", "conv")
"""Module kinds with a width of their own in a per-module record (spelled a, f, c)."""

_WIDTH, _BITS = PARTS[1], PARTS[2]  # the subsystem string's own width and precision parts
_NUMBER = r"\d+(?:\.\d+)?"
_BLOCK = re.compile(rf"^(?:w(?P<w>{_NUMBER})|a(?P<a>{_NUMBER})f(?P<f>{_NUMBER})"
                    rf"c(?P<c>{_NUMBER}))-(?P<bits>int\d+|fp)$")


class RecordError(SubsystemError):
    """A mixed record that is malformed or outside the model's space."""


@dataclass(frozen=True, order=True)
class BlockChoice:
    """One physical block's precision and widths (attention, ffn, conv)."""

    bits: int
    widths: tuple[Fraction, Fraction, Fraction]

    @classmethod
    def uniform(cls, width: Any, bits: Any) -> BlockChoice:
        w = _WIDTH.check(width)
        return cls(_BITS.check(bits), (w, w, w))

    @property
    def is_uniform(self) -> bool:
        return len(set(self.widths)) == 1

    def replace(self, *, bits: int | None = None, kind: str | None = None,
                width: Fraction | None = None) -> BlockChoice:
        """This choice at other bits, or with one kind's (None: every kind's) width changed."""
        widths = self.widths
        if width is not None:
            widths = tuple(width if kind in (None, k) else w for k, w in zip(KINDS, widths))
        return BlockChoice(self.bits if bits is None else bits, widths)  # type: ignore[arg-type]

    def __str__(self) -> str:
        bits = _BITS.format(self.bits)
        if self.is_uniform:
            return f"w{_WIDTH.format(self.widths[0])}-{bits}"
        a, f, c = (_WIDTH.format(w) for w in self.widths)
        return f"a{a}f{f}c{c}-{bits}"

    @classmethod
    def parse(cls, text: str) -> BlockChoice:
        match = _BLOCK.match(text.strip())
        if match is None:
            raise RecordError(f"malformed block choice {text!r}; expected w<width>-<precision> "
                              "or a<width>f<width>c<width>-<precision>, e.g. w0.5-int4")
        try:
            if match["w"] is not None:
                return cls.uniform(Fraction(match["w"]), match["bits"])
            widths = tuple(_WIDTH.check(Fraction(match[k])) for k in "afc")
            return cls(_BITS.check(match["bits"]), widths)  # type: ignore[arg-type]
        except SubsystemError as e:
            raise RecordError(f"block choice {text!r}: {e}") from None


@dataclass(frozen=True)
class MixedRecord:
    """A depth, one :class:`BlockChoice` per physical block (choice k: block k) and the
    precision the front and output layers follow (None: the most precise block's)."""

    depth: int
    blocks: tuple[BlockChoice, ...]
    parts: int | None = None

    def __str__(self) -> str:
        parts = "" if self.parts is None else f"@{_BITS.format(self.parts)}"
        return f"d{self.depth}:" + "+".join(map(str, self.blocks)) + parts

    def __repr__(self) -> str:
        return f"MixedRecord('{self}')"

    @classmethod
    def parse(cls, text: str | MixedRecord) -> MixedRecord:
        """Parse ``d<depth>:<choice>+<choice>...`` (a MixedRecord passes through)."""
        if isinstance(text, MixedRecord):
            return text
        head, sep, body = str(text).strip().partition(":")
        body, at, parts = body.partition("@")
        if not sep or not re.fullmatch(r"d\d+", head) or not body:
            raise RecordError(f"malformed mixed record {text!r}; expected d<depth>:<choice>+"
                              "<choice>..., e.g. d2:w1-int8+w0.5-int4")
        try:
            depth = PARTS[0].check(int(head[1:]))
            bits = _BITS.check(parts) if at else None
        except SubsystemError as e:
            raise RecordError(f"mixed record {text!r}: {e}") from None
        return cls(depth, tuple(BlockChoice.parse(t) for t in body.split("+")), bits)

    def with_precision(self, precision: str | int) -> MixedRecord:
        """Every block at ``precision`` (``"fp"``: the float twin), widths kept."""
        bits = _BITS.check(precision)
        return MixedRecord(self.depth, tuple(b.replace(bits=bits) for b in self.blocks),
                           None if self.parts is None else bits)

    def replace_block(self, index: int, choice: BlockChoice) -> MixedRecord:
        blocks = list(self.blocks)
        blocks[index] = choice
        return MixedRecord(self.depth, tuple(blocks), self.parts)

    @property
    def is_float(self) -> bool:
        return all(b.bits == FLOAT_BITS for b in self.blocks)

    def check(self, space: SearchSpace) -> None:
        """Raise RecordError naming the first part outside ``space``."""
        if self.depth not in space.depths:
            raise RecordError(f"record {self}: depth {self.depth} (valid: "
                              f"{', '.join(map(str, space.depths))})")
        if self.parts is not None and self.parts not in space.bits:
            raise RecordError(f"record {self}: front/output precision "
                              f"{_BITS.format(self.parts)} (valid: "
                              f"{', '.join(map(_BITS.format, space.bits))})")
        for k, block in enumerate(self.blocks):
            if block.bits not in space.bits:
                raise RecordError(f"record {self}: block {k} precision {_BITS.format(block.bits)}"
                                  f" (valid: {', '.join(map(_BITS.format, space.bits))})")
            bad = [w for w in block.widths if w not in space.widths]
            if bad:
                raise RecordError(f"record {self}: block {k} width {_WIDTH.format(bad[0])} "
                                  f"(valid: {', '.join(map(_WIDTH.format, space.widths))})")


def uniform_record(space: SearchSpace, sub: str | Subsystem, blocks: int | None = None
                   ) -> MixedRecord:
    """The mixed spelling of a uniform subsystem (``blocks`` choices, default num_blocks)."""
    sub = space.validate(sub)
    if sub.prune is not None:
        raise RecordError(f"{sub} is pruned: its learned architecture is not a mixed record")
    choice = BlockChoice.uniform(sub.width, sub.bits)
    return MixedRecord(sub.depth, (choice,) * (blocks or space.num_blocks))


class ResolvingEncoder(Protocol):
    """What :func:`build_arch` asks of an encoder (part of ``ExtractableEncoder``)."""

    space: SearchSpace

    def resolve(self, sub: str | Subsystem) -> SubnetArch: ...

    def check_arch(self, arch: SubnetArch) -> None: ...


def build_arch(encoder: ResolvingEncoder, record: MixedRecord | str) -> SubnetArch:
    """The encoder's architecture record of ``record`` (checked against the model).

    Each logical block takes its entries from the uniform subsystem of the same
    depth with its physical block's choice (heads from the attention width's,
    units from the ffn width's, channels from the conv width's).
    """
    record = MixedRecord.parse(record)
    space = encoder.space
    record.check(space)
    uniform: dict[tuple[Fraction, int], SubnetArch] = {}

    def resolved(width: Fraction, bits: int) -> SubnetArch:
        if (width, bits) not in uniform:
            uniform[width, bits] = encoder.resolve(Subsystem(record.depth, width, bits))
        return uniform[width, bits]

    schedule = resolved(space.widths[-1], space.bits[-1]).schedule
    used = sorted(set(schedule))
    if used[-1] >= len(record.blocks):
        raise RecordError(f"record {record}: {len(record.blocks)} block choice(s), but depth "
                          f"{record.depth} runs physical block {used[-1]}")
    blocks = []
    for i, physical in enumerate(schedule):
        choice = record.blocks[physical]
        parts = [resolved(w, choice.bits).blocks[i] for w in choice.widths]
        if any(p.physical != physical for p in parts):
            raise ArchError(f"logical block {i} runs different physical blocks at different "
                            "widths/precisions in this encoder; mixed records need one schedule "
                            "per depth")
        attention, ffn, conv = parts
        blocks.append(BlockArch(physical, heads=attention.heads, ffn_units=ffn.ffn_units,
                                conv_channels=conv.conv_channels, bits=choice.bits))
    top = resolved(space.widths[-1], parts_bits(record, used))
    arch = SubnetArch(tuple(blocks), front_bits=top.front_bits, output_bits=top.output_bits,
                      decoder_bits=top.decoder_bits)
    encoder.check_arch(arch)
    return arch


def parts_bits(record: MixedRecord, used: Iterable[int]) -> int:
    """The precision the front and output follow: ``parts``, else the most precise used
    block's."""
    return record.parts if record.parts is not None else max(record.blocks[p].bits
                                                             for p in used)


def physical_blocks(encoder: ResolvingEncoder) -> int:
    """How many physical blocks the encoder's deepest subsystem runs (a record's choices)."""
    return max(encoder.resolve(encoder.space.largest).schedule) + 1


def records_of(space: SearchSpace, subs: Iterable[str | Subsystem], blocks: int
               ) -> list[MixedRecord]:
    """The mixed spellings of uniform subsystems (pruned ones left out)."""
    return [uniform_record(space, s, blocks) for s in subs
            if space.validate(s).prune is None]
