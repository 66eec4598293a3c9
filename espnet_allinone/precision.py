"""Weight precisions: the one definition of the bit constants and their names.

Torch-free, so the subsystem string, the quantizers, the elastic layers and
the packed format all import the same constants from here.
"""

from __future__ import annotations

import re

from espnet_allinone.errors import AllInOneError

FLOAT_BITS = 32
"""Bits of a weight kept in float (the ``fp`` precision)."""

QUANT_BITS = (2, 4, 8)
"""Integer weight precisions: fake-quantized in training, bit-packed on extraction."""

SUPPORTED_BITS = (*QUANT_BITS, FLOAT_BITS)
"""Every weight precision a subsystem may have."""

VALID_NAMES = "int2, int4, int8, fp"


class PrecisionError(AllInOneError, ValueError):
    """A weight precision that is malformed or not supported."""


def precision_name(bits: int) -> str:
    """``4`` -> ``"int4"``, ``32`` -> ``"fp"``."""
    if bits not in SUPPORTED_BITS or isinstance(bits, bool):
        raise PrecisionError(f"unsupported weight precision {bits!r} bits; valid: {VALID_NAMES}")
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
            raise PrecisionError(f"unknown weight precision {text!r}; valid: {VALID_NAMES}")
    if bits not in SUPPORTED_BITS:
        raise PrecisionError(f"unsupported weight precision {text!r}; valid: {VALID_NAMES}")
    return bits
