"""The subsystem: one point of the all-in-one search space, and the space itself.

A subsystem is spelled exactly one way everywhere a person types or reads
one (YAML, command lines, ``exp/`` directory names, report rows, zoo names)::

    d6-w0.5-int4     6 blocks, half width, 4-bit weights
    d12-w1-fp        12 blocks, full width, float weights

``d`` is the depth (a prefix of the block stack), ``w`` the width fraction
applied to the FFN units and attention heads (head size fixed; also to the
conv-module channels when the space says so) and the last part the weight
precision (``int2``, ``int4``, ``int8`` or ``fp``). The string is short,
readable and safe as a directory name. This module knows nothing of ESPnet
or torch, so every layer above can import it.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

FLOAT_BITS = 32
"""Bits of a weight kept in float (the ``fp`` precision)."""

SUPPORTED_BITS = (2, 4, 8, FLOAT_BITS)
"""Weight precisions a subsystem may have; 32 means float."""

_PATTERN = re.compile(r"^d(?P<depth>\d+)-w(?P<width>\d+(?:\.\d+)?)-(?P<prec>int\d+|fp)$")


class SubsystemError(ValueError):
    """A subsystem string or value that is malformed or outside its space."""


def precision_name(bits: int) -> str:
    """``4`` -> ``"int4"``, ``32`` -> ``"fp"``."""
    if bits not in SUPPORTED_BITS:
        raise SubsystemError(
            f"unsupported weight precision {bits!r} bits; valid: "
            + ", ".join(precision_name(b) for b in SUPPORTED_BITS)
        )
    return "fp" if bits == FLOAT_BITS else f"int{bits}"


def parse_precision(text: str | int) -> int:
    """``"int4"``, ``"4"``, ``4`` -> 4; ``"fp"``, ``"float"``, ``32`` -> 32."""
    if isinstance(text, int) and not isinstance(text, bool):
        bits = text
    else:
        word = str(text).strip().lower()
        if word in ("fp", "float", "fp32", "float32"):
            bits = FLOAT_BITS
        elif re.fullmatch(r"(int)?\d+", word):
            bits = int(word.removeprefix("int"))
        else:
            raise SubsystemError(
                f"unknown weight precision {text!r}; valid: int2, int4, int8, fp"
            )
    if bits not in SUPPORTED_BITS:
        raise SubsystemError(
            f"unsupported weight precision {text!r}; valid: int2, int4, int8, fp"
        )
    return bits


def _format_width(width: Fraction) -> str:
    """Shortest decimal that parses back to ``width`` (1 -> "1", 1/2 -> "0.5")."""
    text = f"{float(width):.6f}".rstrip("0").rstrip(".")
    if Fraction(text) != width:
        raise SubsystemError(f"width {width} has no short decimal form")
    return text


@dataclass(frozen=True, order=False)
class Subsystem:
    """One nested system: depth (blocks), width fraction, weight bits."""

    depth: int
    width: Fraction
    bits: int

    def __post_init__(self) -> None:
        if not isinstance(self.depth, int) or isinstance(self.depth, bool) or self.depth < 1:
            raise SubsystemError(f"depth must be a positive integer, got {self.depth!r}")
        width = Fraction(str(self.width)) if isinstance(self.width, float) else Fraction(self.width)
        if not 0 < width <= 1:
            raise SubsystemError(f"width must be in (0, 1], got {self.width!r}")
        object.__setattr__(self, "width", width)
        precision_name(self.bits)

    @classmethod
    def parse(cls, text: str | Subsystem) -> Subsystem:
        """Parse the canonical string (``d6-w0.5-int4``); a Subsystem passes through."""
        if isinstance(text, Subsystem):
            return text
        match = _PATTERN.match(str(text).strip())
        if match is None:
            raise SubsystemError(
                f"malformed subsystem {text!r}; expected d<depth>-w<width>-<precision>, "
                "e.g. d12-w1-fp or d6-w0.5-int4 (precision: int2, int4, int8, fp)"
            )
        return cls(
            depth=int(match["depth"]),
            width=Fraction(match["width"]),
            bits=parse_precision(match["prec"]),
        )

    @property
    def is_float(self) -> bool:
        return self.bits == FLOAT_BITS

    @property
    def precision(self) -> str:
        return precision_name(self.bits)

    @property
    def size_key(self) -> tuple:
        """Sort key, smallest first: depth x width x bits, then each part."""
        return (self.depth * self.width * self.bits, self.depth, self.width, self.bits)

    def __str__(self) -> str:
        return f"d{self.depth}-w{_format_width(self.width)}-{self.precision}"

    def __repr__(self) -> str:
        return f"Subsystem('{self}')"


@dataclass(frozen=True)
class SearchSpace:
    """The subsystems one all-in-one model is trained to contain.

    Every combination of ``depths`` x ``widths`` x ``bits`` is a member. The
    width fraction must give whole numbers of FFN units and attention heads
    (and conv channels when ``elastic_conv``) for the full-size dimensions.
    """

    depths: tuple[int, ...]
    widths: tuple[Fraction, ...]
    bits: tuple[int, ...]
    num_blocks: int
    linear_units: int
    attention_heads: int
    output_size: int
    elastic_conv: bool = False
    _members: frozenset = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        depths = tuple(sorted({int(d) for d in self.depths}))
        widths = tuple(sorted({Subsystem(1, w, FLOAT_BITS).width for w in self.widths}))
        bits = tuple(sorted({parse_precision(b) for b in self.bits}))
        if not depths or not widths or not bits:
            raise SubsystemError("a search space needs at least one depth, width and precision")
        for d in depths:
            if not 1 <= d <= self.num_blocks:
                raise SubsystemError(
                    f"depth {d} outside the model's 1..{self.num_blocks} blocks"
                )
        for w in widths:
            for name, full in self._width_dims():
                if (w * full).denominator != 1:
                    raise SubsystemError(
                        f"width {_format_width(w)} gives {float(w * full)} {name} of {full}; "
                        f"choose widths w with w*{full} a whole number"
                    )
        object.__setattr__(self, "depths", depths)
        object.__setattr__(self, "widths", widths)
        object.__setattr__(self, "bits", bits)
        members = frozenset(
            Subsystem(d, w, b) for d, w, b in itertools.product(depths, widths, bits)
        )
        object.__setattr__(self, "_members", members)

    @classmethod
    def from_config(
        cls,
        *,
        num_blocks: int,
        linear_units: int,
        attention_heads: int,
        output_size: int,
        depths: Sequence[int] | None = None,
        widths: Sequence[float | str] | None = None,
        precisions: Sequence[int | str] | None = None,
        elastic_conv: bool = False,
    ) -> SearchSpace:
        """Build from YAML-style lists; an omitted list means the full size only."""
        return cls(
            depths=tuple(depths or (num_blocks,)),
            widths=tuple(Fraction(str(w)) for w in (widths or (1,))),
            bits=tuple(parse_precision(p) for p in (precisions or ("fp",))),
            num_blocks=num_blocks,
            linear_units=linear_units,
            attention_heads=attention_heads,
            output_size=output_size,
            elastic_conv=elastic_conv,
        )

    def _width_dims(self) -> list[tuple[str, int]]:
        dims = [("FFN units", self.linear_units), ("attention heads", self.attention_heads)]
        if self.elastic_conv:
            dims.append(("conv channels", self.output_size))
        return dims

    # --- membership -----------------------------------------------------
    def __contains__(self, item: object) -> bool:
        try:
            return Subsystem.parse(item) in self._members  # type: ignore[arg-type]
        except SubsystemError:
            return False

    def __iter__(self) -> Iterator[Subsystem]:
        return iter(self.ordered())

    def __len__(self) -> int:
        return len(self._members)

    def validate(self, item: str | Subsystem) -> Subsystem:
        """Parse and check membership; the error names the bad part and the choices."""
        sub = Subsystem.parse(item)
        problems = []
        if sub.depth not in self.depths:
            problems.append(f"depth {sub.depth} (valid: {', '.join(map(str, self.depths))})")
        if sub.width not in self.widths:
            problems.append(
                f"width {_format_width(sub.width)} "
                f"(valid: {', '.join(_format_width(w) for w in self.widths)})"
            )
        if sub.bits not in self.bits:
            problems.append(
                f"precision {sub.precision} "
                f"(valid: {', '.join(precision_name(b) for b in self.bits)})"
            )
        if problems:
            raise SubsystemError(
                f"subsystem {item} is not in this model's search space: "
                + "; ".join(problems)
            )
        return sub

    def resolve(self, items: str | Iterable[str | Subsystem]) -> list[Subsystem]:
        """``"all"``, one string, a comma/space separated string or a list -> subsystems."""
        if isinstance(items, str):
            if items.strip() == "all":
                return self.ordered()
            items = [t for t in re.split(r"[,\s]+", items) if t]
        subs = [self.validate(t) for t in items]
        if not subs:
            raise SubsystemError("no subsystem given; name at least one, or 'all'")
        return list(dict.fromkeys(subs))

    # --- sizes ----------------------------------------------------------
    def ffn_units(self, sub: Subsystem) -> int:
        return int(sub.width * self.linear_units)

    def heads(self, sub: Subsystem) -> int:
        return int(sub.width * self.attention_heads)

    def conv_channels(self, sub: Subsystem) -> int:
        return int(sub.width * self.output_size) if self.elastic_conv else self.output_size

    @property
    def largest(self) -> Subsystem:
        return Subsystem(self.depths[-1], self.widths[-1], self.bits[-1])

    @property
    def smallest(self) -> Subsystem:
        return Subsystem(self.depths[0], self.widths[0], self.bits[0])

    def ordered(self) -> list[Subsystem]:
        """Every member, smallest first (by depth x width x bits, then each)."""
        return sorted(self._members, key=lambda s: s.size_key)
