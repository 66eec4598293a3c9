"""The packed low-bit format of ``encoder: packed_conformer`` (issue 4).

Encoder level only (no ESPnet task): an elastic encoder's subsystem is cut,
loaded into a PackedConformerEncoder, saved and loaded again; weights must
come back bit-identical and mismatched files must be refused loudly (ESPnet's
own loader uses strict=False and would otherwise keep random weights).
"""

from __future__ import annotations

import io

import pytest
import torch

from espnet_allinone.encoders.elastic_conformer import ElasticConformerEncoder
from espnet_allinone.encoders.packed_conformer import PackedConformerEncoder
from espnet_allinone.export import packed_format
from espnet_allinone.export.slicing import slice_encoder
from espnet_allinone.export.standalone_config import encoder_conf

BASE = {
    "output_size": 64, "attention_heads": 4, "linear_units": 128, "num_blocks": 3,
    "cnn_module_kernel": 7, "input_layer": "linear", "macaron_style": True,
    "rel_pos_type": "latest", "dropout_rate": 0.0, "positional_dropout_rate": 0.0,
}


def _elastic(**quant) -> ElasticConformerEncoder:
    torch.manual_seed(0)
    enc = ElasticConformerEncoder(
        input_size=20, **BASE, depths=[2, 3], widths=[0.5, 1],
        precisions=["int2", "int4", "int8", "fp"], elastic_conv=True,
        quant_conf={"granularity": "group", "group_size": 16, **quant},
    ).eval()
    x = torch.randn(1, 30, 20)
    with torch.no_grad():
        for sub in enc.space.ordered():  # initialise every bit-width's scales
            with enc.use_subsystem(sub):
                enc(x, torch.tensor([30]))
    return enc


def _packed_for(enc: ElasticConformerEncoder, sub: str):
    sliced = slice_encoder(enc, sub)
    conf = encoder_conf(
        BASE, depth=sliced.subsystem.depth, ffn_units=sliced.ffn_units, heads=sliced.heads,
        conv_channels=sliced.conv_channels, weight_bits=sliced.subsystem.bits,
        symmetric=sliced.symmetric, quantized_modules=sliced.quantized_modules,
    )
    conf["dropout_rate"] = conf["positional_dropout_rate"] = 0.0
    return sliced, conf


@pytest.fixture(scope="module")
def elastic():
    return _elastic()


@pytest.mark.parametrize("sub", ["d2-w0.5-int2", "d3-w1-int4", "d2-w1-int8", "d3-w0.5-fp"])
@torch.no_grad()
def test_round_trip_is_exact_and_really_packed(elastic, sub):
    sliced, conf = _packed_for(elastic, sub)
    packed = PackedConformerEncoder(input_size=20, **conf).eval()
    packed.load_state_dict({**sliced.float_state, **sliced.packed_state}, strict=True)
    buffer = io.BytesIO()
    torch.save(packed.state_dict(), buffer)
    state = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    again = PackedConformerEncoder(input_size=20, **conf).eval()
    again.load_state_dict(state, strict=True)
    x = torch.randn(2, 40, 20)
    lengths = torch.tensor([40, 31])
    with elastic.use_subsystem(sub):
        ref, ref_lens, _ = elastic(x, lengths)
    out, out_lens, _ = again(x, lengths)
    assert torch.equal(out_lens, ref_lens)
    assert (out - ref).abs().max() <= 1e-5
    for name, p in packed.named_parameters():
        assert torch.equal(p, dict(again.named_parameters())[name]), name
    bits = sliced.subsystem.bits
    n_quant = 0
    for key, value in state.items():
        if key.endswith("_codes"):
            n_quant += 1
            rows, cols = state[key[: -len("codes")] + "shape"].tolist()
            assert value.dtype == torch.uint8 and value.numel() == -(-rows * cols * bits // 8)
            assert state[key[: -len("codes")] + "scale"].dtype == torch.float16
            assert key[: -len("_codes")] not in state  # no float copy of a packed weight
    # per block: q, k, v, out, pos, 2 x 2 FFN, pointwise1, depthwise, pointwise2
    assert n_quant == (0 if sliced.subsystem.is_float else 12 * sliced.subsystem.depth)
    # the tensors hold exactly the bytes the subsystem's size accounting says
    payload = sum(t.numel() * t.element_size() for k, t in state.items()
                  if not k.endswith(("_shape", "_bits", "num_batches_tracked")))
    assert payload == elastic.storage_bytes(sub)


@torch.no_grad()
def test_packed_bytes_match_the_quantiser_storage_count(elastic):
    sliced, _ = _packed_for(elastic, "d2-w0.5-int2")
    w1 = "encoders.0.feed_forward.w_1.weight"
    entries = {k[len(w1):]: v for k, v in sliced.packed_state.items() if k.startswith(w1 + "_")}
    quantizer = elastic.encoders[0].feed_forward.w_1.weight_quantizer
    code_and_scale = entries["_codes"].numel() + 2 * entries["_scale"].numel()
    assert 8 * code_and_scale == quantizer.storage_bits(64, 64, 2)  # 64 units x d 64, groups 16
    assert entries["_codes"].numel() == 64 * 64 // 4


@torch.no_grad()
def test_asymmetric_zero_points_round_trip():
    enc = _elastic(symmetric=False)
    sliced, conf = _packed_for(enc, "d2-w0.5-int4")
    packed = PackedConformerEncoder(input_size=20, **conf).eval()
    packed.load_state_dict({**sliced.float_state, **sliced.packed_state}, strict=True)
    state = packed.state_dict()
    zp = state["encoders.0.feed_forward.w_1.weight_zero_point"]
    assert zp.dtype == torch.uint8 and zp.shape == (64, 4)
    x = torch.randn(1, 25, 20)
    with enc.use_subsystem("d2-w0.5-int4"):
        ref, _, _ = enc(x, torch.tensor([25]))
    out, _, _ = packed(x, torch.tensor([25]))
    assert (out - ref).abs().max() <= 1e-5
    # a symmetric config cannot read an asymmetric file
    wrong = PackedConformerEncoder(input_size=20, **dict(conf, quant_symmetric=True))
    with pytest.raises(RuntimeError, match="zero_point found but the config says symmetric"):
        wrong.load_state_dict(dict(state))


def test_mismatched_files_are_refused_not_half_loaded(elastic):
    sliced, conf = _packed_for(elastic, "d2-w0.5-int4")
    fresh = PackedConformerEncoder(input_size=20, **conf)
    with pytest.raises(RuntimeError, match="holds no packed weights yet"):
        fresh.state_dict()
    # a float file for a packed config (even with strict=False, as ESPnet loads)
    float_state = sliced.dequantized_state({n: p.shape for n, p in fresh.named_parameters()})
    with pytest.raises(RuntimeError, match="stored as a float weight.*do not belong together"):
        fresh.load_state_dict(float_state, strict=False)
    missing = {k: v for k, v in sliced.packed_state.items() if "linear_q" not in k}
    with pytest.raises(RuntimeError, match=r"encoders\.0\.self_attn\.linear_q\.weight.*missing"):
        fresh.load_state_dict({**sliced.float_state, **missing}, strict=False)
    with pytest.raises(RuntimeError, match="packed weight has 4-bit codes, the config says 2"):
        PackedConformerEncoder(input_size=20, **dict(conf, weight_bits=2)).load_state_dict(
            {**sliced.float_state, **sliced.packed_state})


def test_bad_options_name_the_valid_choices():
    with pytest.raises(ValueError, match=r"weight_bits 3 not supported; valid: \[2, 4, 8, 32\]"):
        PackedConformerEncoder(input_size=20, **BASE, weight_bits=3)
    with pytest.raises(ValueError, match="no module encoders.0.nope"):
        PackedConformerEncoder(input_size=20, **BASE, weight_bits=4,
                               quantized_modules=["encoders.*.nope"])
    with pytest.raises(ValueError, match=r"attention_heads_kept 5 must be in 1\.\.4"):
        PackedConformerEncoder(input_size=20, **BASE, attention_heads_kept=5)


def test_dequantize_entries_checks_the_shape():
    from espnet_allinone.quant.fake_quant import QuantizedWeight

    qw = QuantizedWeight(codes=torch.tensor([[-2, 1, 0, 1]], dtype=torch.int8),
                         scale=torch.tensor([[0.5]], dtype=torch.float16), zero_point=None,
                         bits=2, group_size=4, shape=(1, 4))
    entries = packed_format.encode_quantized(qw)
    assert entries["_codes"].numel() == 1  # four 2-bit codes in one byte
    w = packed_format.dequantize_entries(entries, 2, (1, 4))
    assert w.tolist() == [[-1.0, 0.5, 0.0, 0.5]]
    with pytest.raises(RuntimeError, match=r"shape \[1, 4\], the model expects \[2, 2\]"):
        packed_format.dequantize_entries(entries, 2, (2, 2))
