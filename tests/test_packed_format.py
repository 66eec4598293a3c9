"""The packed low-bit format of ``encoder: packed_conformer``.

Encoder level only (no ESPnet task): an elastic encoder's subsystem is cut,
loaded into a PackedConformerEncoder, saved and loaded again; weights must
come back bit-identical and mismatched files must be refused loudly (ESPnet's
own loader uses strict=False and would otherwise keep random weights).
"""

from __future__ import annotations

import io

import pytest
import torch

from espnet_allinone.arch import ArchError, BlockArch, SubnetArch
from espnet_allinone.encoders.conformer_extraction import encoder_conf
from espnet_allinone.encoders.elastic_conformer import ElasticConformerEncoder
from espnet_allinone.encoders.packed_conformer import PackedConformerEncoder
from espnet_allinone.export.slicing import slice_encoder
from espnet_allinone.quant import packed_format

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


def _packed_for(enc: ElasticConformerEncoder, sub: str | SubnetArch):
    arch = sub if isinstance(sub, SubnetArch) else enc.resolve(sub)
    sliced = slice_encoder(enc, arch)
    conf = encoder_conf(BASE, arch, stock=False)
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
    packed.load_state_dict(sliced.state, strict=True)
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
    subsystem = enc_sub = elastic.space.validate(sub)
    bits = subsystem.bits
    n_quant = 0
    for key, value in state.items():
        if key.endswith("_codes"):
            n_quant += 1
            rows, cols = state[key[: -len("codes")] + "shape"].tolist()
            assert value.dtype == torch.uint8 and value.numel() == -(-rows * cols * bits // 8)
            assert state[key[: -len("codes")] + "scale"].dtype == torch.float16
            assert key[: -len("_codes")] not in state  # no float copy of a packed weight
    # per block: q, k, v, out, pos, 2 x 2 FFN, pointwise1, depthwise, pointwise2
    assert n_quant == (0 if enc_sub.is_float else 12 * enc_sub.depth)
    # the tensors hold exactly the bytes the subsystem's size accounting says
    payload = sum(t.numel() * t.element_size() for k, t in state.items()
                  if not k.endswith(("_shape", "_bits", "num_batches_tracked")))
    assert payload == elastic.storage_bytes(sub)


@torch.no_grad()
def test_packed_bytes_match_the_quantizer_storage_count(elastic):
    sliced, _ = _packed_for(elastic, "d2-w0.5-int2")
    w1 = "encoders.0.feed_forward.w_1.weight"
    entries = {k[len(w1):]: v for k, v in sliced.state.items() if k.startswith(w1 + "_")}
    quantizer = elastic.encoders[0].feed_forward.w_1.weight_quantizer
    code_and_scale = entries["_codes"].numel() + 2 * entries["_scale"].numel()
    assert 8 * code_and_scale == quantizer.storage_bits(64, 64, 2)  # 64 units x d 64, groups 16
    assert entries["_codes"].numel() == 64 * 64 // 4


@torch.no_grad()
def test_asymmetric_zero_points_round_trip():
    enc = _elastic(symmetric=False)
    sliced, conf = _packed_for(enc, "d2-w0.5-int4")
    packed = PackedConformerEncoder(input_size=20, **conf).eval()
    packed.load_state_dict(sliced.state, strict=True)
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
    with pytest.raises(RuntimeError, match="is asymmetric, the config says symmetric"):
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
    missing = {k: v for k, v in sliced.state.items() if "linear_q.weight_" not in k}
    with pytest.raises(RuntimeError, match=r"encoders\.0\.self_attn\.linear_q\.weight.*missing"):
        fresh.load_state_dict(missing, strict=False)
    two_bit = [dict(b, bits=2) for b in conf["block_archs"]]
    with pytest.raises(RuntimeError, match="has 4-bit codes, the config says 2"):
        PackedConformerEncoder(input_size=20, **dict(conf, block_archs=two_bit)).load_state_dict(
            dict(sliced.state))


def test_bad_options_name_the_valid_choices():
    with pytest.raises(ValueError, match=r"weight_bits: unsupported weight precision 3; "
                       "valid: int2, int4, int8, fp"):
        PackedConformerEncoder(input_size=20, **BASE, weight_bits=3)
    with pytest.raises(ValueError, match=r"block_archs\[1\]: heads 5 must be in 0\.\.4"):
        PackedConformerEncoder(input_size=20, **dict(BASE, num_blocks=2), block_archs=[
            {"heads": 2}, {"heads": 5}])
    with pytest.raises(ValueError, match=r"block_archs\[0\]: unknown key\(s\) \['head'\]"):
        PackedConformerEncoder(input_size=20, **dict(BASE, num_blocks=1),
                               block_archs=[{"head": 2}])
    with pytest.raises(ValueError, match="no module encoders.0.nope"):
        PackedConformerEncoder(input_size=20, **BASE, weight_bits=4,
                               quantized_modules=["encoders.*.nope"])
    with pytest.raises(ValueError, match=r"attention_heads_kept 5 must be in 1\.\.4"):
        PackedConformerEncoder(input_size=20, **BASE, attention_heads_kept=5)


def test_dequantize_checks_the_shape():
    from espnet_allinone.quant.fake_quant import QuantizedWeight

    qw = QuantizedWeight(codes=torch.tensor([[-2, 1, 0, 1]], dtype=torch.int8),
                         scale=torch.tensor([[0.5]], dtype=torch.float16), zero_point=None,
                         bits=2, group_size=4, shape=(1, 4))
    entries = packed_format.to_state(qw, "w")
    assert entries["w_codes"].numel() == 1  # four 2-bit codes in one byte
    back = packed_format.from_state(entries, "w")
    assert packed_format.dequantize_to(back, 2, (1, 4)).tolist() == [[-1.0, 0.5, 0.0, 0.5]]
    with pytest.raises(RuntimeError, match=r"shape \[1, 4\], the model expects \[2, 2\]"):
        packed_format.dequantize_to(back, 2, (2, 2))


def _non_uniform(enc: ElasticConformerEncoder, bits: int) -> SubnetArch:
    """Three logical blocks with their own heads, units and channels (not prefixes)."""
    return SubnetArch((
        BlockArch(2, heads=(3, 0), ffn_units=((5, 1, 60, 7), tuple(range(0, 128, 2))),
                  conv_channels=tuple(range(16, 48)), bits=bits),
        BlockArch(0, heads=(1,), ffn_units=(tuple(range(96)), (0, 127)),
                  conv_channels=tuple(range(64)), bits=bits),
        BlockArch(1, heads=(0, 1, 2, 3), ffn_units=(tuple(range(128)), tuple(range(16))),
                  conv_channels=tuple(range(48, 64)) + tuple(range(16)), bits=bits),
    ))


@pytest.mark.parametrize("bits", [32, 4])
@torch.no_grad()
def test_non_uniform_architecture_round_trips(elastic, bits):
    arch = _non_uniform(elastic, bits)
    if bits != 32:  # group scales (16 columns): FFN units kept in whole groups of 16
        groups = (tuple(range(16, 32)) + tuple(range(80, 96)), tuple(range(112, 128)))
        arch = SubnetArch(tuple(BlockArch(b.physical, b.heads, groups, b.conv_channels, bits)
                                for b in arch.blocks))
    sliced, conf = _packed_for(elastic, arch)
    # stored in order of first use (2, 0, 1), so no schedule is needed
    assert conf["num_blocks"] == 3 and "block_schedule" not in conf
    assert [b["heads"] for b in conf["block_archs"]] == [2, 1, 4]
    packed = PackedConformerEncoder(input_size=20, **conf).eval()
    packed.load_state_dict(sliced.state, strict=True)
    x, lengths = torch.randn(2, 40, 20), torch.tensor([40, 31])
    with elastic.use_arch(arch):
        ref, _, _ = elastic(x, lengths)
    out, _, _ = packed(x, lengths)
    assert (out - ref).abs().max() <= 1e-5
    if bits != 32:  # dequantized weights are bit-exact
        w = packed.encoders[0].feed_forward.w_1.weight
        with elastic.use_arch(arch):
            assert torch.equal(w, elastic.encoders[2].feed_forward.w_1.active_weight_2d())
    assert elastic.active_subsystem == elastic.space.largest  # restored


@torch.no_grad()
def test_shared_blocks_are_stored_once_with_a_schedule(elastic):
    block = elastic.resolve("d3-w0.5-int4").blocks
    arch = SubnetArch((block[1], block[0], block[1], block[0]))  # 1, 0, 1, 0
    sliced, conf = _packed_for(elastic, arch)
    assert conf["num_blocks"] == 2 and conf["block_schedule"] == [0, 1, 0, 1]
    packed = PackedConformerEncoder(input_size=20, **conf).eval()
    packed.load_state_dict(sliced.state, strict=True)
    x, lengths = torch.randn(1, 30, 20), torch.tensor([30])
    with elastic.use_arch(arch):
        ref, _, _ = elastic(x, lengths)
        assert elastic.storage_bytes(arch) == elastic.storage_bytes(SubnetArch(block[:2]))
    out, _, _ = packed(x, lengths)
    assert (out - ref).abs().max() <= 1e-5


def test_architecture_that_does_not_fit_is_refused_naming_the_entry(elastic):
    good = elastic.resolve("d2-w1-fp").blocks[0]
    cases = [
        (BlockArch(1, (0, 4), good.ffn_units, good.conv_channels),
         r"logical block 1: head index 4 outside 0\.\.3"),
        (BlockArch(5, good.heads, good.ffn_units, good.conv_channels),
         r"logical block 1 runs physical block 5; the model has blocks 0\.\.2"),
        (BlockArch(1, good.heads, good.ffn_units[:1], good.conv_channels),
         "1 FFN unit sets given, the block has 2"),
        (BlockArch(1, good.heads, good.ffn_units, (64,)),
         r"conv channel index 64 outside 0\.\.63"),
        (BlockArch(1, good.heads, good.ffn_units, good.conv_channels, bits=4), None),
    ]
    for block, message in cases:
        arch = SubnetArch((good, block))
        if message is None:
            elastic.check_arch(arch)
            continue
        with pytest.raises(ArchError, match=message):
            elastic.check_arch(arch)
    shared = SubnetArch((good, BlockArch(0, (0,), good.ffn_units, good.conv_channels)))
    with pytest.raises(ArchError, match="physical block 0 runs at two logical positions"):
        elastic.check_arch(shared)
