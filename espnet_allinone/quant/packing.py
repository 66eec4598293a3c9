"""Bit packing of integer weight codes into uint8.

Low-bit weights must really take 2 or 4 bits on disk: four 2-bit, two 4-bit
or one 8-bit code per byte, plain shift-and-mask (code i of a byte sits at
bits ``(i % per_byte) * bits``, lowest first), zero padding to whole bytes.
The layout is trivial to unpack in any language and round-trips exactly.

The state_dict layout of packed weights is :mod:`espnet_allinone.quant.packed_format`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from espnet_allinone.precision import QUANT_BITS as PACKABLE_BITS


def _check_bits(bits: int) -> int:
    if bits not in PACKABLE_BITS or isinstance(bits, bool):
        raise ValueError(
            f"cannot pack {bits!r}-bit codes; valid: {', '.join(map(str, PACKABLE_BITS))}"
        )
    return int(bits)


def packed_numel(numel: int, bits: int) -> int:
    """Bytes that ``numel`` codes of ``bits`` bits take after packing."""
    per_byte = 8 // _check_bits(bits)
    return -(-numel // per_byte)


def pack_codes(codes: Tensor, bits: int) -> Tensor:
    """Flatten integer ``codes`` and pack them ``8 // bits`` to a byte (1-D uint8).

    Codes must fit in ``bits`` bits as signed or unsigned integers, i.e. lie in
    [-2^(bits-1), 2^bits - 1]; negative codes are stored in two's complement.
    """
    bits = _check_bits(bits)
    if (
        codes.dtype.is_floating_point
        or codes.dtype.is_complex
        or codes.dtype == torch.bool
    ):
        raise TypeError(f"codes must be an integer tensor, got {codes.dtype}")
    flat = codes.reshape(-1).to(torch.int16)
    if flat.numel():
        lo, hi = int(flat.min()), int(flat.max())
        if lo < -(2 ** (bits - 1)) or hi > 2**bits - 1:
            raise ValueError(
                f"codes in [{lo}, {hi}] do not fit in {bits} bits; valid: "
                f"[{-(2 ** (bits - 1))}, {2 ** (bits - 1) - 1}] signed or [0, {2**bits - 1}] "
                "unsigned"
            )
    mask = (1 << bits) - 1
    values = (flat & mask).to(torch.uint8)
    per_byte = 8 // bits
    pad = (-values.numel()) % per_byte
    if pad:
        values = torch.cat([values, values.new_zeros(pad)])
    values = values.reshape(-1, per_byte)
    packed = values[:, 0].clone()
    for j in range(1, per_byte):
        packed |= values[:, j] << (j * bits)
    return packed


def unpack_codes(packed: Tensor, bits: int, numel: int, signed: bool) -> Tensor:
    """Inverse of ``pack_codes``: the first ``numel`` codes, 1-D.

    Returns int8 when ``signed`` (symmetric codes), int16 otherwise
    (asymmetric codes up to 255), the dtypes of ``QuantizedWeight.codes``.
    """
    bits = _check_bits(bits)
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed codes must be uint8, got {packed.dtype}")
    packed = packed.reshape(-1)
    if (
        not isinstance(numel, int)
        or numel < 0
        or packed.numel() != packed_numel(numel, bits)
    ):
        raise ValueError(
            f"{packed.numel()} packed bytes cannot hold exactly {numel!r} {bits}-bit codes "
            f"(expected {packed_numel(numel, bits) if isinstance(numel, int) and numel >= 0 else '?'}"
            " bytes)"
        )
    mask = (1 << bits) - 1
    per_byte = 8 // bits
    parts = [(packed >> (j * bits)) & mask for j in range(per_byte)]
    values = torch.stack(parts, dim=1).reshape(-1)[:numel].to(torch.int16)
    if signed:
        half = 1 << (bits - 1)
        values = torch.where(values >= half, values - (1 << bits), values)
        return values.to(torch.int8)
    return values
