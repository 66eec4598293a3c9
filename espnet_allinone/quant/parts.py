"""Per-part weight precision: the front, the output layers and the decoder's blocks.

``encoder_conf.part_precisions: {front: int8, output: int8}`` is the mixed
scheme of the low-bit Conformer papers in one line: the blocks run at the
subsystem's precision (``d4-w1-int2``: 2-bit), the subsampling front (its
Conv2d and Linear weights) and the output layers (the CTC linear, and the
attention decoder's output layer when there is one) at 8 bits. ``decoder``
covers every Linear weight of a hybrid model's attention-decoder blocks
(self-attention, source attention, feed-forward); their width and depth stay
full, only their precision follows the subsystem. ``same`` makes a part
follow the blocks. Unnamed parts stay float (files written before a part
existed read as before). A float subsystem is float throughout: it is the
reference every low-bit one is compared with. Torch-free.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from espnet_allinone.errors import AllInOneError
from espnet_allinone.precision import (
    FLOAT_BITS,
    VALID_NAMES,
    PrecisionError,
    parse_precision,
)

PARTS = ("front", "output", "decoder")
"""Model parts with a precision of their own (the encoder blocks follow the subsystem)."""

SAME = "same"
"""A part whose weights follow the blocks' precision."""


class PartPrecisionError(AllInOneError, ValueError):
    """An unknown part or a precision no quantizer offers."""


@dataclass(frozen=True)
class PartPrecisions:
    """Bits of each part in a quantized subsystem (None: the blocks' bits)."""

    front: int | None = FLOAT_BITS
    output: int | None = FLOAT_BITS
    decoder: int | None = FLOAT_BITS

    @classmethod
    def from_conf(cls, conf: Mapping[str, Any] | PartPrecisions | None) -> PartPrecisions:
        """From ``part_precisions`` in YAML; unknown parts or precisions are named."""
        if conf is None:
            return cls()
        if isinstance(conf, PartPrecisions):
            return conf
        if not isinstance(conf, Mapping):
            raise PartPrecisionError(
                f"part_precisions must map parts ({', '.join(PARTS)}) to precisions, "
                f"got {conf!r}")
        unknown = sorted(str(k) for k in conf if k not in PARTS)
        if unknown:
            raise PartPrecisionError(f"unknown part(s) {', '.join(unknown)} in part_precisions; "
                                     f"valid: {', '.join(PARTS)}")
        bits = {}
        for part, value in conf.items():
            if str(value).strip().lower() == SAME:
                bits[part] = None
                continue
            try:
                bits[part] = parse_precision(value)
            except PrecisionError:
                raise PartPrecisionError(
                    f"part_precisions.{part}: {value!r} is not a precision the quantizers "
                    f"offer; valid: {VALID_NAMES}, {SAME}") from None
        return cls(**bits)

    def bits(self, part: str, block_bits: int) -> int:
        """The bits of ``part`` in a subsystem whose blocks run at ``block_bits``."""
        if block_bits == FLOAT_BITS:
            return FLOAT_BITS
        own = getattr(self, part)
        return block_bits if own is None else own

    def quantized_bits(self, part: str, block_bits: tuple[int, ...]) -> tuple[int, ...]:
        """Every integer bit-width ``part`` runs at over a space's block precisions."""
        return tuple(sorted({b for b in (self.bits(part, bb) for bb in block_bits)
                             if b != FLOAT_BITS}))
