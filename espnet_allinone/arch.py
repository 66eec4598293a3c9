"""The architecture record: what one subsystem runs, block by block.

The subsystem string is what people type; inside, an elastic encoder
resolves it once (``encoder.resolve(sub)``) to a :class:`SubnetArch`: for each
logical block, which physical block it runs (the first blocks for a depth
prefix; a seed block again when blocks are shared) and which attention
heads, FFN units and conv channels it keeps (index sets: a prefix for a
uniform width, any set for a pruned block), with the weight bits of its
quantized layers, plus the bits of the front, the output layers and the
attention decoder's blocks.
Switching, exact size accounting, extraction and the packed format consume
this record and nothing else. Torch-free.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from espnet_allinone.errors import AllInOneError
from espnet_allinone.precision import FLOAT_BITS, PrecisionError, parse_precision


class ArchError(AllInOneError, ValueError):
    """An architecture record that does not fit the model it is applied to."""


def _indices(values: Sequence[int], what: str) -> tuple[int, ...]:
    out = tuple(int(v) for v in values)
    if len(set(out)) != len(out):
        raise ArchError(f"{what}: repeated index in {list(out)}")
    return out


def prefix(n: int) -> tuple[int, ...]:
    """The index set of the first ``n`` units."""
    return tuple(range(int(n)))


@dataclass(frozen=True)
class BlockArch:
    """One logical block: the physical block it runs and what of it is kept.

    ``ffn_units`` has one index set per feed-forward module of the block, in
    the family's order (Conformer: ``feed_forward``, ``feed_forward_macaron``);
    ``conv_channels`` is None for a block without a conv module. An empty
    index set removes that module (pruning).
    """

    physical: int
    heads: tuple[int, ...]
    ffn_units: tuple[tuple[int, ...], ...]
    conv_channels: tuple[int, ...] | None = None
    bits: int = FLOAT_BITS

    def __post_init__(self) -> None:
        object.__setattr__(self, "heads", _indices(self.heads, "heads"))
        object.__setattr__(
            self, "ffn_units", tuple(_indices(u, "FFN units") for u in self.ffn_units)
        )
        if self.conv_channels is not None:
            object.__setattr__(self, "conv_channels", _indices(self.conv_channels, "conv channels"))
        try:
            object.__setattr__(self, "bits", parse_precision(self.bits))
        except PrecisionError as e:
            raise ArchError(str(e)) from None

    def shape(self) -> dict[str, Any]:
        """The sizes an extracted block is built with (indices renumbered from 0)."""
        out: dict[str, Any] = {"heads": len(self.heads),
                               "ffn_units": [len(u) for u in self.ffn_units]}
        if self.conv_channels is not None:
            out["conv_channels"] = len(self.conv_channels)
        out["bits"] = self.bits
        return out

    def same_parts(self, other: BlockArch) -> bool:
        return (self.heads, self.ffn_units, self.conv_channels, self.bits) == (
            other.heads, other.ffn_units, other.conv_channels, other.bits)


@dataclass(frozen=True)
class BlockLimits:
    """What a physical block holds: the valid indices of its units."""

    heads: int
    ffn_units: tuple[int, ...]
    conv_channels: int | None
    bits: tuple[int, ...]


@dataclass(frozen=True)
class SubnetArch:
    """One subsystem's whole encoder: its logical blocks, the front and the output;
    ``decoder_bits``: the attention decoder's block weights (full width and depth);
    ``front_channels``: the subsampling front's channels when it keeps only the
    first ones (``elastic_front``; None: all)."""

    blocks: tuple[BlockArch, ...]
    front_bits: int = FLOAT_BITS
    output_bits: int = FLOAT_BITS
    decoder_bits: int = FLOAT_BITS
    front_channels: int | None = None

    @property
    def depth(self) -> int:
        return len(self.blocks)

    @property
    def schedule(self) -> tuple[int, ...]:
        """Physical block of each logical block."""
        return tuple(b.physical for b in self.blocks)

    def physical_blocks(self) -> list[int]:
        """The physical blocks used, in order of first use (each once)."""
        return list(dict.fromkeys(self.schedule))

    def stored_blocks(self) -> list[BlockArch]:
        """One record per physical block used (what an extracted model stores)."""
        first = {}
        for block in self.blocks:
            first.setdefault(block.physical, block)
        return [first[p] for p in self.physical_blocks()]

    def stored_schedule(self) -> list[int]:
        """The schedule renumbered to the stored blocks (0, 1, ... in first-use order)."""
        number = {p: i for i, p in enumerate(self.physical_blocks())}
        return [number[p] for p in self.schedule]

    @property
    def is_float(self) -> bool:
        return self.front_bits == FLOAT_BITS and all(b.bits == FLOAT_BITS for b in self.blocks)

    @property
    def is_stacked(self) -> bool:
        """Every stored block runs once, in order (no shared blocks)."""
        return self.stored_schedule() == list(range(self.depth))

    def unrolled(self) -> SubnetArch:
        """The same record with every logical block on a block of its own (what a stock
        stacked encoder holding copies of shared blocks runs)."""
        blocks = tuple(BlockArch(i, b.heads, b.ffn_units, b.conv_channels, b.bits)
                       for i, b in enumerate(self.blocks))
        return SubnetArch(blocks, self.front_bits, self.output_bits, self.decoder_bits,
                          self.front_channels)

    def check(self, limits: Sequence[BlockLimits]) -> None:
        """Raise ArchError naming the first entry that does not fit the model."""
        if not self.blocks:
            raise ArchError("an architecture needs at least one block")
        for i, block in enumerate(self.blocks):
            where = f"logical block {i}"
            if not 0 <= block.physical < len(limits):
                raise ArchError(
                    f"{where} runs physical block {block.physical}; the model has blocks "
                    f"0..{len(limits) - 1}"
                )
            lim = limits[block.physical]
            _check_range(block.heads, lim.heads, f"{where}: head")
            if len(block.ffn_units) != len(lim.ffn_units):
                raise ArchError(
                    f"{where}: {len(block.ffn_units)} FFN unit sets given, the block has "
                    f"{len(lim.ffn_units)} feed-forward modules"
                )
            for k, (units, full) in enumerate(zip(block.ffn_units, lim.ffn_units)):
                _check_range(units, full, f"{where}: FFN {k} unit")
            if (block.conv_channels is None) != (lim.conv_channels is None):
                have = "has" if lim.conv_channels is not None else "has no"
                raise ArchError(f"{where}: conv channels given wrongly; the block {have} a "
                                "conv module")
            if block.conv_channels is not None:
                _check_range(block.conv_channels, lim.conv_channels, f"{where}: conv channel")
            if block.bits not in lim.bits:
                raise ArchError(f"{where}: {block.bits}-bit weights; valid: {list(lim.bits)}")
        for block in self.blocks:
            first = next(b for b in self.blocks if b.physical == block.physical)
            if not block.same_parts(first):
                raise ArchError(
                    f"physical block {block.physical} runs at two logical positions with "
                    "different heads/units/channels/bits; a shared block keeps one set"
                )

    # --- the record in files (extract_info.yaml's ``architecture``, search.json) ----
    def to_dict(self) -> dict[str, Any]:
        """The record with its index sets, as plain YAML/JSON data."""
        return {
            "blocks": [
                {"physical": b.physical, "heads": list(b.heads),
                 "ffn_units": [list(u) for u in b.ffn_units],
                 "conv_channels": None if b.conv_channels is None else list(b.conv_channels),
                 "bits": b.bits}
                for b in self.blocks
            ],
            "front_bits": self.front_bits,
        } | ({"output_bits": self.output_bits} if self.output_bits != FLOAT_BITS else {}) \
          | ({"decoder_bits": self.decoder_bits} if self.decoder_bits != FLOAT_BITS else {}) \
          | ({"front_channels": self.front_channels} if self.front_channels is not None else {})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SubnetArch:
        """Inverse of :meth:`to_dict`; ArchError names what is missing."""
        try:
            blocks = tuple(BlockArch(int(b["physical"]), tuple(b["heads"]),
                                     tuple(tuple(u) for u in b["ffn_units"]),
                                     None if b.get("conv_channels") is None
                                     else tuple(b["conv_channels"]), b["bits"])
                           for b in data["blocks"])
        except (KeyError, TypeError) as e:
            raise ArchError(f"architecture record lacks {e}") from None
        channels = data.get("front_channels")
        return cls(blocks, data.get("front_bits", FLOAT_BITS),
                   data.get("output_bits", FLOAT_BITS), data.get("decoder_bits", FLOAT_BITS),
                   None if channels is None else int(channels))

    # --- the extracted model's encoder_conf --------------------------------
    def to_conf(self) -> dict[str, Any]:
        """``block_archs`` (+ ``block_schedule`` when blocks are shared, ``front_bits`` and
        ``front_channels`` when not the defaults) of a packed config."""
        conf: dict[str, Any] = {"block_archs": [b.shape() for b in self.stored_blocks()]}
        if not self.is_stacked:
            conf["block_schedule"] = self.stored_schedule()
        if self.front_bits != FLOAT_BITS:
            conf["front_bits"] = self.front_bits
        if self.front_channels is not None:
            conf["front_channels"] = self.front_channels
        return conf


def _check_range(index: tuple[int, ...], full: int, what: str) -> None:
    bad = [i for i in index if not 0 <= i < full]
    if bad:
        raise ArchError(f"{what} index {bad[0]} outside 0..{full - 1}")
