"""Bit packing of codes into uint8 and the packed state_dict form of a QuantizedWeight."""

from __future__ import annotations

import io

import pytest
import torch

from espnet_allinone.quant import (
    QuantConfig,
    WeightFakeQuantizer,
    from_state,
    pack_codes,
    packed_numel,
    to_state,
    unpack_codes,
)
from espnet_allinone.quant.packed_format import SUFFIXES, PackedFormatError


def random_codes(n: int, bits: int, signed: bool, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1)) if signed else (0, 2**bits)
    dtype = torch.int8 if signed else torch.int16
    return torch.randint(lo, hi, (n,), generator=g).to(dtype)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("n", [0, 1, 3, 5, 7, 8, 1001])
def test_round_trip(bits, signed, n):
    codes = random_codes(n, bits, signed, seed=n)
    if n >= 2:  # make sure both extremes are present
        lo, hi = (
            (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        )
        codes[0], codes[-1] = lo, hi
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.dim() == 1
    assert packed.numel() == -(-n * bits // 8) == packed_numel(n, bits)
    back = unpack_codes(packed, bits, n, signed=signed)
    assert back.dtype == (torch.int8 if signed else torch.int16)
    assert torch.equal(back, codes)


def test_byte_layout_is_plain_shift_and_mask():
    assert pack_codes(torch.tensor([1, 2, 3, 0, 3]), 2).tolist() == [
        1 | 2 << 2 | 3 << 4,
        3,
    ]
    assert pack_codes(torch.tensor([-1, 3, -8]), 4).tolist() == [0x3F, 0x08]
    assert pack_codes(torch.tensor([-128, 255, 7]), 8).tolist() == [128, 255, 7]
    # a [rows, cols] matrix packs row-major
    m = torch.tensor([[0, 1], [2, 3]])
    assert torch.equal(pack_codes(m, 2), pack_codes(m.reshape(-1), 2))


def test_packing_errors():
    with pytest.raises(ValueError, match="cannot pack 3-bit codes; valid: 2, 4, 8"):
        pack_codes(torch.tensor([1]), 3)
    with pytest.raises(
        TypeError, match="codes must be an integer tensor, got torch.float32"
    ):
        pack_codes(torch.tensor([1.0]), 4)
    with pytest.raises(
        ValueError,
        match=r"codes in \[-3, 1\] do not fit in 2 bits; valid: "
        r"\[-2, 1\] signed or \[0, 3\] unsigned",
    ):
        pack_codes(torch.tensor([-3, 1]), 2)
    with pytest.raises(ValueError, match=r"codes in \[0, 16\] do not fit in 4 bits"):
        pack_codes(torch.tensor([0, 16]), 4)
    with pytest.raises(
        ValueError,
        match="3 packed bytes cannot hold exactly 5 2-bit codes "
        r"\(expected 2 bytes\)",
    ):
        unpack_codes(torch.zeros(3, dtype=torch.uint8), 2, 5, signed=True)
    with pytest.raises(TypeError, match="packed codes must be uint8, got torch.int8"):
        unpack_codes(torch.zeros(3, dtype=torch.int8), 8, 3, signed=True)


CONFIGS = [
    QuantConfig(symmetric=s, granularity=g, group_size=16)
    for s in (True, False)
    for g in ("tensor", "channel", "group")
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.symmetric}-{c.granularity}")
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_serialised_weight_round_trip_and_exact_size(cfg, bits):
    out_f, in_f = 10, 48
    q = WeightFakeQuantizer(out_f, in_f, (2, 4, 8), cfg)
    w = torch.randn(out_f, in_f) * 0.1
    rows, cols = torch.tensor([9, 1, 4]), 32
    qw = q.quantize(w, bits, rows=rows, cols=cols)
    tensors = to_state(qw, "weight")
    expected_keys = {f"weight_{s}" for s in SUFFIXES}
    if cfg.symmetric:
        expected_keys.discard("weight_zero_point")
    if cfg.grid == "integer":  # no grid record: the files written before grids existed
        expected_keys.discard("weight_grid")
    assert set(tensors) == expected_keys
    assert tensors["weight_codes"].dtype == torch.uint8
    assert tensors["weight_scale"].dtype == torch.float16
    assert (
        tensors["weight_shape"].tolist() == [3, 32]
        and int(tensors["weight_bits"]) == bits
    )
    if not cfg.symmetric:
        assert tensors["weight_zero_point"].dtype == torch.uint8

    buf = io.BytesIO()
    torch.save(tensors, buf)
    buf.seek(0)
    back = from_state(torch.load(buf), "weight")
    assert torch.equal(back.codes, qw.codes) and back.codes.dtype == qw.codes.dtype
    assert torch.equal(back.scale, qw.scale)
    assert (
        back.group_size == qw.group_size
        and back.shape == qw.shape
        and back.bits == bits
    )
    assert torch.equal(back.dequantize(), q(w, bits, rows=rows, cols=cols))

    # storage_bits is exactly the bytes of the packed codes, fp16 scales and uint8 zero points
    data_bytes = sum(
        t.numel() * t.element_size()
        for k, t in tensors.items()
        if k.endswith(("codes", "scale", "zero_point"))
    )
    assert 8 * data_bytes == q.storage_bits(3, 32, bits) == back.storage_bits()


def test_storage_bits_with_padding_rounds_up_to_whole_bytes():
    q = WeightFakeQuantizer(3, 5, (2,), QuantConfig(granularity="channel"))
    w = torch.randn(3, 5)
    qw = q.quantize(w, 2)  # 15 codes x 2 bits = 30 bits -> 4 bytes
    tensors = to_state(qw, "weight")
    assert tensors["weight_codes"].numel() == 4
    assert q.storage_bits(3, 5, 2) == 30 + 3 * 16
    assert torch.equal(from_state(tensors, "weight").dequantize(), q(w, 2))


def test_deserialise_errors():
    q = WeightFakeQuantizer(4, 8, (4,), QuantConfig(symmetric=False))
    tensors = to_state(q.quantize(torch.randn(4, 8), 4), "w")
    del tensors["w_scale"]
    with pytest.raises(
        PackedFormatError,
        match="packed weight is missing w_scale; expected keys "
        "w_codes, w_scale, w_zero_point, w_shape, w_bits",
    ):
        from_state(tensors, "w")
    tensors = to_state(q.quantize(torch.randn(4, 8), 4), "weight")
    tensors["weight_scale"] = torch.ones(4, 3, dtype=torch.float16)
    with pytest.raises(
        PackedFormatError,
        match=r"weight_scale has shape \[4, 3\], which does not split "
        "8 columns",
    ):
        from_state(tensors, "weight")
