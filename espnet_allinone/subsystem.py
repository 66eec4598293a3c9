"""The subsystem: one point of the all-in-one search space, and the space itself.

A subsystem is spelled exactly one way everywhere a person types or reads
one (YAML, command lines, ``exp/`` directory names, report rows, zoo names)::

    d6-w0.5-int4     6 blocks, half width, 4-bit weights
    d12-w1-fp        12 blocks, full width, float weights

The string is a sequence of named *parts* (:data:`PARTS`), each with its own
parse, format, validation and order. ``d`` is the depth (logical blocks),
``w`` the width fraction of the FFN units and attention heads (head size
fixed; also of the conv-module channels when the space says so) and the last
part the weight precision (``int2``, ``int4``, ``int8`` or ``fp``). A later
part can be added as an optional suffix with a default that is left out of
the string, so no existing name changes. This module knows nothing of ESPnet
or torch, so every layer above can import it. What a subsystem *is* inside a
model (which blocks, heads, units, bits) is the encoder's architecture record,
:class:`espnet_allinone.arch.SubnetArch`.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from espnet_allinone.errors import AllInOneError
from espnet_allinone.precision import (
    FLOAT_BITS,
    SUPPORTED_BITS,
    PrecisionError,
    parse_precision,
    precision_name,
)

__all__ = [
    "FLOAT_BITS",
    "PARTS",
    "SUPPORTED_BITS",
    "SearchSpace",
    "Subsystem",
    "SubsystemError",
    "SubsystemPart",
    "parse_precision",
    "precision_name",
]


class SubsystemError(AllInOneError, ValueError):
    """A subsystem string or value that is malformed or outside its space."""


def _format_width(width: Fraction) -> str:
    """Shortest decimal that parses back to ``width`` (1 -> "1", 1/2 -> "0.5")."""
    text = f"{float(width):.6f}".rstrip("0").rstrip(".")
    if Fraction(text) != width:
        raise SubsystemError(f"width {width} has no short decimal form")
    return text


def _depth(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise SubsystemError(f"depth must be a positive integer, got {value!r}")
    return value


def _unit_fraction(value: Any, what: str) -> Fraction:
    """A fraction in (0, 1] from a number or its decimal text, or an error naming ``what``."""
    try:
        fraction = Fraction(str(value)) if isinstance(value, float | str) else Fraction(value)
    except (TypeError, ValueError):
        raise SubsystemError(f"{what} must be a number in (0, 1], got {value!r}") from None
    if not 0 < fraction <= 1:
        raise SubsystemError(f"{what} must be in (0, 1], got {value!r}")
    return fraction


def _width(value: Any) -> Fraction:
    return _unit_fraction(value, "width")


def _prune(value: Any) -> Fraction | None:
    return None if value is None else _unit_fraction(value, "pruning target")


def _bits(value: Any) -> int:
    try:
        return parse_precision(value)
    except PrecisionError as e:
        raise SubsystemError(str(e)) from None


_REQUIRED = object()


@dataclass(frozen=True)
class SubsystemPart:
    """One named part of the subsystem string.

    ``field`` is the Subsystem attribute, ``prefix`` + ``pattern`` its text,
    ``parse``/``format`` convert text and value, ``check`` normalises and
    validates a value (raising SubsystemError), ``order`` gives its sort key,
    ``choices`` names the search space attribute holding the valid values. A
    part with a ``default`` is optional: left out of the string when equal to it.
    """

    field: str
    prefix: str
    pattern: str
    parse: Callable[[str], Any]
    format: Callable[[Any], str]
    check: Callable[[Any], Any]
    choices: str
    label: str
    order: Callable[[Any], Any] = lambda value: value
    default: Any = _REQUIRED

    @property
    def optional(self) -> bool:
        return self.default is not _REQUIRED

    def regex(self) -> str:
        body = f"{re.escape(self.prefix)}(?P<{self.field}>{self.pattern})"
        return f"(?:-{body})?" if self.optional else body


PARTS: tuple[SubsystemPart, ...] = (
    SubsystemPart("depth", "d", r"\d+", int, str, _depth, "depths", "depth"),
    SubsystemPart("width", "w", r"\d+(?:\.\d+)?", Fraction, _format_width, _width, "widths",
                  "width"),
    SubsystemPart("bits", "", r"int\d+|fp", _bits, precision_name, _bits, "bits",
                  "precision"),
    SubsystemPart("prune", "p", r"\d+(?:\.\d+)?", Fraction, _format_width, _prune, "prunes",
                  "pruning target", order=lambda p: (p is None, p or 0), default=None),
)
"""The parts of the string, in order (optional parts, with defaults, come last)."""

_PATTERN = re.compile(
    "^" + PARTS[0].regex() + "".join(
        ("-" + p.regex()) if not p.optional else p.regex() for p in PARTS[1:]
    ) + "$"
)
_SPELLING = "-".join(f"{p.prefix}<{p.label}>" for p in PARTS if not p.optional)


@dataclass(frozen=True)
class Subsystem:
    """One nested system: depth (logical blocks), width fraction, weight bits and,
    for a pruned model, the pruning target (its learned architecture for a size
    fraction, e.g. ``d4-w1-int4-p0.5``)."""

    depth: int
    width: Fraction
    bits: int
    prune: Fraction | None = None

    def __post_init__(self) -> None:
        for part in PARTS:
            object.__setattr__(self, part.field, part.check(getattr(self, part.field)))

    @classmethod
    def parse(cls, text: str | Subsystem) -> Subsystem:
        """Parse the canonical string (``d6-w0.5-int4``); a Subsystem passes through."""
        if isinstance(text, Subsystem):
            return text
        match = _PATTERN.match(str(text).strip())
        if match is None:
            raise SubsystemError(
                f"malformed subsystem {text!r}; expected {_SPELLING}, "
                "e.g. d12-w1-fp or d6-w0.5-int4 (precision: int2, int4, int8, fp)"
            )
        values = {
            p.field: p.parse(match[p.field]) for p in PARTS if match[p.field] is not None
        }
        return cls(**values)

    def replace(self, **changes: Any) -> Subsystem:
        """This subsystem with some parts changed (``sub.replace(bits=32)``)."""
        if "bits" in changes:
            changes["bits"] = _bits(changes["bits"])
        return dataclasses.replace(self, **changes)

    def with_precision(self, precision: str | int) -> Subsystem:
        """The same subsystem at another precision (``"fp"``: its float twin)."""
        return self.replace(bits=precision)

    @property
    def is_float(self) -> bool:
        return self.bits == FLOAT_BITS

    @property
    def precision(self) -> str:
        return precision_name(self.bits)

    @property
    def canonical_key(self) -> tuple:
        """Deterministic order of the parts (depth, width, precision, ...)."""
        return tuple(p.order(getattr(self, p.field)) for p in PARTS)

    def __str__(self) -> str:
        out = []
        for part in PARTS:
            value = getattr(self, part.field)
            if part.optional and value == part.default:
                continue
            out.append(f"{part.prefix}{part.format(value)}")
        return "-".join(out)

    def __repr__(self) -> str:
        return f"Subsystem('{self}')"


@dataclass(frozen=True)
class SearchSpace:
    """The subsystems one all-in-one model is trained to contain.

    Every combination of the parts' choices (``depths`` x ``widths`` x
    ``bits``) is a member. The width fraction must give whole numbers of FFN
    units and attention heads (and conv channels when ``elastic_conv``) for
    the full-size dimensions. ``num_blocks`` is the deepest logical depth
    (an unfolding encoder builds fewer physical blocks and says which depths
    its seed can make). ``prunes`` lists the pruning targets (None: unpruned);
    a target applies to the full model, so ``d<max>-w<max>-<precision>-p<t>``
    are the pruned members.
    """

    depths: tuple[int, ...]
    widths: tuple[Fraction, ...]
    bits: tuple[int, ...]
    num_blocks: int
    linear_units: int
    attention_heads: int
    output_size: int
    elastic_conv: bool = False
    prunes: tuple[Fraction | None, ...] = (None,)
    _members: frozenset = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        depths = tuple(sorted({_depth(int(d)) for d in self.depths}))
        widths = tuple(sorted({_width(w) for w in self.widths}))
        bits = tuple(sorted({_bits(b) for b in self.bits}))
        if not depths or not widths or not bits:
            raise SubsystemError("a search space needs at least one depth, width and precision")
        for d in depths:
            if not 1 <= d <= self.num_blocks:
                raise SubsystemError(f"depth {d} outside the model's 1..{self.num_blocks} blocks")
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
        prune_part = PARTS[-1]
        prunes = tuple(sorted({_prune(p) for p in self.prunes} | {None}, key=prune_part.order))
        object.__setattr__(self, "prunes", prunes)
        members = {Subsystem(d, w, b) for d, w, b in itertools.product(depths, widths, bits)}
        members |= {Subsystem(depths[-1], widths[-1], b, p)
                    for b, p in itertools.product(bits, prunes) if p is not None}
        object.__setattr__(self, "_members", frozenset(members))

    @classmethod
    def from_encoder_conf(cls, conf: Mapping[str, Any]) -> SearchSpace:
        """The space an elastic encoder's ``encoder_conf`` defines.

        ``conf`` holds the model dimensions (``num_blocks``, ``linear_units``,
        ``attention_heads``, ``output_size``; the encoder fills its defaults in
        first, see ``ElasticConformerEncoder.search_space``) and the space
        lists ``depths``, ``widths``, ``precisions``, ``elastic_conv``; an
        omitted list means the full size only.
        """
        missing = [k for k in ("num_blocks", "linear_units", "attention_heads", "output_size")
                   if k not in conf]
        if missing:
            raise SubsystemError(f"encoder_conf lacks {', '.join(missing)} to build a search space")
        num_blocks = int(conf["num_blocks"])
        return cls(
            prunes=(None, *(conf.get("prune_targets") or ())),
            depths=tuple(conf.get("depths") or (num_blocks,)),
            widths=tuple(_width(w) for w in (conf.get("widths") or (1,))),
            bits=tuple(_bits(p) for p in (conf.get("precisions") or ("fp",))),
            num_blocks=num_blocks,
            linear_units=int(conf["linear_units"]),
            attention_heads=int(conf["attention_heads"]),
            output_size=int(conf["output_size"]),
            elastic_conv=bool(conf.get("elastic_conv", False)),
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
        return iter(self.members())

    def __len__(self) -> int:
        return len(self._members)

    def validate(self, item: str | Subsystem) -> Subsystem:
        """Parse and check membership; the error names the bad part and the choices."""
        sub = Subsystem.parse(item)
        problems = []
        for part in PARTS:
            value, valid = getattr(sub, part.field), getattr(self, part.choices)
            if value not in valid:
                named = [part.format(v) for v in valid if v is not None]
                problems.append(
                    f"{part.label} {part.format(value)} "
                    f"(valid: {', '.join(named) if named else 'none in this model'})"
                )
        if not problems and sub.prune is not None and (
                sub.depth, sub.width) != (self.depths[-1], self.widths[-1]):
            problems.append(
                f"a pruning target applies to the full model: use d{self.depths[-1]}-w"
                f"{_format_width(self.widths[-1])}-{sub.precision}-p{_format_width(sub.prune)}")
        if problems:
            raise SubsystemError(
                f"subsystem {item} is not in this model's search space: " + "; ".join(problems)
            )
        return sub

    def resolve(self, items: str | Iterable[str | Subsystem]) -> list[Subsystem]:
        """``"all"``, one string, a comma/space separated string or a list -> subsystems."""
        if isinstance(items, str):
            if items.strip() == "all":
                return self.members()
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
        """The deepest, widest, most precise unpruned member."""
        return Subsystem(self.depths[-1], self.widths[-1], self.bits[-1])

    @property
    def smallest(self) -> Subsystem:
        """The shallowest, narrowest, least precise unpruned member."""
        return Subsystem(self.depths[0], self.widths[0], self.bits[0])

    @property
    def pruned(self) -> list[Subsystem]:
        """The pruned members (every target at every precision)."""
        return [s for s in self.members() if s.prune is not None]

    def members(self) -> list[Subsystem]:
        """Every member in the canonical order (depth, then width, then precision)."""
        return sorted(self._members, key=lambda s: s.canonical_key)

    def ordered(self, nbytes: Callable[[Subsystem], int] | None = None) -> list[Subsystem]:
        """Every member smallest first by exact bytes (``nbytes(sub)``, e.g. the
        encoder's ``storage_bytes``), ties broken by depth, then width; without
        ``nbytes`` the canonical order."""
        if nbytes is None:
            return self.members()
        return sorted(self._members, key=lambda s: (nbytes(s), *s.canonical_key))
