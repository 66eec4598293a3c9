"""ElasticConformerEncoder against ESPnet's own ConformerEncoder (tiny sizes)."""

from __future__ import annotations

import math

import pytest
import torch
from espnet.nets.pytorch_backend.conformer.convolution import ConvolutionModule
from espnet2.asr.encoder.conformer_encoder import ConformerEncoder
from torch import nn

from espnet_allinone.elastic.layers import ElasticWeightMixin
from espnet_allinone.encoders.elastic_conformer import ElasticConformerEncoder
from espnet_allinone.quant import QuantConfigError
from espnet_allinone.subsystem import SubsystemError

IDIM = 20
BASE = {"output_size": 16, "attention_heads": 4, "linear_units": 32, "num_blocks": 2, "cnn_module_kernel": 3}
LATEST = {"rel_pos_type": "latest"}
CONFIGS = {
    "conv2d": dict(input_layer="conv2d", **LATEST),
    "conv2d6": dict(input_layer="conv2d6", **LATEST),
    "conv2d8": dict(input_layer="conv2d8", **LATEST),
    "linear": dict(input_layer="linear", **LATEST),
    "legacy_rel_pos": {"input_layer": "linear", "rel_pos_type": "legacy"},
    "abs_pos_selfattn": dict(
        input_layer="linear", pos_enc_layer_type="abs_pos", selfattention_layer_type="selfattn",
        **LATEST,
    ),
    "ff_conv1d": dict(input_layer="linear", positionwise_layer_type="conv1d", **LATEST),
    "ff_conv1d_linear": dict(input_layer="linear", positionwise_layer_type="conv1d-linear", **LATEST),
    "macaron": dict(input_layer="linear", macaron_style=True, **LATEST),
    "kernel5": dict(input_layer="linear", cnn_module_kernel=5, **LATEST),
    "no_cnn": dict(input_layer="linear", use_cnn_module=False, **LATEST),
    "concat_after_post_norm": dict(
        input_layer="linear", concat_after=True, normalize_before=False, **LATEST
    ),
    "interctc": dict(input_layer="linear", interctc_layer_idx=[1], **LATEST),
}


def _inputs(frames: int = 50):
    torch.manual_seed(123)
    return torch.randn(2, frames, IDIM), torch.tensor([frames, frames - 13])


def _outputs(encoder, xs, lens):
    out, olens, _ = encoder(xs, lens)
    if isinstance(out, tuple):  # intermediate CTC: (final, [(layer, hidden), ...])
        return [out[0], *[h for _, h in out[1]]], olens
    return [out], olens


def _max_diff(a, b) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))


def _build(conf: dict, seed: int = 0, **space):
    opts = {**BASE, **conf}
    torch.manual_seed(seed)
    stock = ConformerEncoder(IDIM, **opts)
    torch.manual_seed(seed)
    elastic = ElasticConformerEncoder(IDIM, **opts, **space)
    return stock, elastic


@pytest.mark.parametrize("name", list(CONFIGS))
def test_largest_float_subsystem_equals_stock(name):
    stock, elastic = _build(CONFIGS[name], depths=[1, 2], widths=[0.5, 1])
    assert str(elastic.active_subsystem) == "d2-w1-fp"
    assert list(elastic.state_dict()) == list(stock.state_dict())
    torch.manual_seed(7)
    other = ConformerEncoder(IDIM, **{**BASE, **CONFIGS[name]})  # different weights
    elastic.load_state_dict(other.state_dict(), strict=True)
    stock.load_state_dict(elastic.state_dict(), strict=True)
    xs, lens = _inputs()
    for model in (stock, elastic, other):
        model.eval()
    with torch.no_grad():
        ref, ref_lens = _outputs(other, xs, lens)
        got, got_lens = _outputs(elastic, xs, lens)
        back, _ = _outputs(stock, xs, lens)
    assert torch.equal(ref_lens, got_lens)
    assert _max_diff(ref, got) <= 1e-6
    assert _max_diff(ref, back) <= 1e-6


def test_training_mode_uses_the_same_randomness_as_stock():
    conf = dict(input_layer="linear", stochastic_depth_rate=0.5, dropout_rate=0.2, **LATEST)
    stock, elastic = _build(conf, depths=[1, 2])
    xs, lens = _inputs()
    for seed in range(3):
        torch.manual_seed(seed)
        ref = stock(xs, lens)[0]
        torch.manual_seed(seed)
        got = elastic(xs, lens)[0]
        assert (ref - got).abs().max().item() <= 1e-6


def _slice_into_stock(elastic, stock, heads, units, channels, elastic_conv):
    """Give a stock encoder of the smaller sizes the first heads/units/channels."""
    d_model = BASE["output_size"]
    with torch.no_grad():
        for key, value in stock.state_dict().items():
            if not key.startswith("encoders."):
                value.copy_(elastic.state_dict()[key])
        for e_blk, s_blk in zip(elastic.blocks, stock.encoders, strict=False):
            e_att = e_blk.self_attn
            width = heads * e_att.d_k
            s_att = type(e_att).__mro__[2](heads, width, 0.0)  # the stock attention class
            for name in ("linear_q", "linear_k", "linear_v", "linear_pos"):
                if hasattr(e_att, name):
                    src = getattr(e_att, name)
                    dst = nn.Linear(d_model, width, bias=src.bias is not None)
                    dst.weight.copy_(src.weight[:width])
                    if src.bias is not None:
                        dst.bias.copy_(src.bias[:width])
                    setattr(s_att, name, dst)
            s_att.linear_out = nn.Linear(width, d_model)
            s_att.linear_out.weight.copy_(e_att.linear_out.weight[:, :width])
            s_att.linear_out.bias.copy_(e_att.linear_out.bias)
            if hasattr(e_att, "pos_bias_u"):
                s_att.pos_bias_u.copy_(e_att.pos_bias_u[:heads])
                s_att.pos_bias_v.copy_(e_att.pos_bias_v[:heads])
            s_blk.self_attn = s_att
            for ff in ("feed_forward", "feed_forward_macaron"):
                if getattr(s_blk, ff) is None:
                    continue
                e_ff, s_ff = getattr(e_blk, ff), getattr(s_blk, ff)
                s_ff.w_1.weight.copy_(e_ff.w_1.weight[:units])
                s_ff.w_1.bias.copy_(e_ff.w_1.bias[:units])
                s_ff.w_2.weight.copy_(e_ff.w_2.weight[:, :units])
                s_ff.w_2.bias.copy_(e_ff.w_2.bias)
            e_conv = e_blk.conv_module
            if elastic_conv:
                kernel = e_conv.depthwise_conv.kernel_size[0]
                s_conv = ConvolutionModule(channels, kernel, e_conv.activation)
                s_conv.pointwise_conv1 = nn.Conv1d(d_model, 2 * channels, 1)
                s_conv.pointwise_conv2 = nn.Conv1d(channels, d_model, 1)
                s_blk.conv_module = s_conv
            s_conv = s_blk.conv_module
            rows = torch.cat([torch.arange(channels), d_model + torch.arange(channels)])
            s_conv.pointwise_conv1.weight.copy_(e_conv.pointwise_conv1.weight[rows])
            s_conv.pointwise_conv1.bias.copy_(e_conv.pointwise_conv1.bias[rows])
            s_conv.depthwise_conv.weight.copy_(e_conv.depthwise_conv.weight[:channels])
            s_conv.depthwise_conv.bias.copy_(e_conv.depthwise_conv.bias[:channels])
            s_conv.norm.weight.copy_(e_conv.norm.weight[:channels])
            s_conv.norm.bias.copy_(e_conv.norm.bias[:channels])
            mean, var, _ = e_conv.norm.stats(channels)
            s_conv.norm.running_mean.copy_(mean)
            s_conv.norm.running_var.copy_(var)
            s_conv.pointwise_conv2.weight.copy_(e_conv.pointwise_conv2.weight[:, :channels])
            s_conv.pointwise_conv2.bias.copy_(e_conv.pointwise_conv2.bias)


@pytest.mark.parametrize("elastic_conv", [False, True], ids=["conv_full", "conv_elastic"])
@pytest.mark.parametrize(
    "attention",
    [{"rel_pos_type": "latest"}, {"rel_pos_type": "legacy"},
     {"pos_enc_layer_type": "abs_pos", "selfattention_layer_type": "selfattn", "rel_pos_type": "latest"}],
    ids=["rel_latest", "rel_legacy", "abs"],
)
def test_smaller_float_subsystem_equals_stock_of_those_sizes(attention, elastic_conv):
    conf = dict(input_layer="conv2d", macaron_style=True, num_blocks=3, **attention)
    _, elastic = _build(conf, depths=[2, 3], widths=[0.5, 1], elastic_conv=elastic_conv)
    sub = elastic.set_subsystem("d2-w0.5-fp")
    xs, lens = _inputs()
    elastic.train()
    for _ in range(2):  # give the narrow width its own BatchNorm statistics
        elastic(xs, lens)
    heads, units, channels = 2, 16, 8 if elastic_conv else 16
    torch.manual_seed(0)
    stock = ConformerEncoder(IDIM, **{**BASE, **conf, "num_blocks": 2, "linear_units": units})
    _slice_into_stock(elastic, stock, heads, units, channels, elastic_conv)
    elastic.eval()
    stock.eval()
    with torch.no_grad():
        diff = (elastic(xs, lens)[0] - stock(xs, lens)[0]).abs().max().item()
    assert diff <= 1e-6
    n_params = sum(p.numel() for p in stock.parameters())
    assert elastic.num_params(sub) == n_params
    bn_stats = 2 * channels * 2  # running mean and variance, two blocks
    assert elastic.storage_bytes(sub) == 4 * (n_params + bn_stats)


def test_switching_is_explicit_and_restored():
    _, elastic = _build(LATEST, depths=[1, 2], widths=[0.5, 1], precisions=["int4", "fp"])
    assert str(elastic.active_subsystem) == "d2-w1-fp"
    with elastic.use_subsystem("d1-w0.5-int4") as sub:
        assert elastic.active_subsystem == sub and elastic.encoders.depth == 1
        assert elastic.blocks[0].feed_forward.w_1.active_out == 16
        assert elastic.blocks[0].self_attn.h == 2
    assert str(elastic.active_subsystem) == "d2-w1-fp"
    assert elastic.blocks[0].self_attn.h == 4 and len(list(elastic.encoders)) == 2


def test_reorder_by_importance_preserves_full_width_and_sorts_units():
    conf = dict(input_layer="linear", macaron_style=True, **LATEST)
    _, elastic = _build(conf, widths=[0.5, 1], elastic_conv=True)
    xs, lens = _inputs()
    elastic.train()
    elastic(xs, lens)  # non-trivial BatchNorm statistics
    elastic.eval()
    with torch.no_grad():
        full_before = elastic(xs, lens)[0]
        with elastic.use_subsystem("d2-w0.5-fp"):
            narrow_before = elastic(xs, lens)[0]
        elastic.reorder_by_importance()
        full_after = elastic(xs, lens)[0]
        with elastic.use_subsystem("d2-w0.5-fp"):
            narrow_after = elastic(xs, lens)[0]
    assert (full_before - full_after).abs().max().item() <= 1e-5
    assert (narrow_before - narrow_after).abs().max().item() > 1e-3
    ff = elastic.blocks[0].feed_forward
    score = ff.w_1.weight.norm(dim=1) * ff.w_2.weight.norm(dim=0)
    assert torch.all(score[:-1] >= score[1:] - 1e-6)
    head = elastic.blocks[0].self_attn.head_importance()
    assert torch.all(head[:-1] >= head[1:] - 1e-6)


def test_training_one_conv_width_leaves_the_other_widths_statistics():
    _, elastic = _build(dict(input_layer="linear", **LATEST), widths=[0.5, 1], elastic_conv=True)
    norm = elastic.blocks[0].conv_module.norm
    assert {"running_mean_c8", "running_var_c8"} <= {n.split(".")[-1] for n in norm.state_dict()}
    xs, lens = _inputs()
    elastic.train()
    full = [t.clone() for t in norm.stats(16)]
    with elastic.use_subsystem("d2-w0.5-fp"):
        elastic(xs, lens)
    assert all(torch.equal(a, b) for a, b in zip(full, norm.stats(16), strict=True))
    narrow = [t.clone() for t in norm.stats(8)]
    assert int(narrow[2]) == 1
    elastic(xs, lens)
    assert all(torch.equal(a, b) for a, b in zip(narrow, norm.stats(8), strict=True))
    assert int(norm.num_batches_tracked) == 1


def test_quantized_subsystems_train_and_are_smaller_exactly():
    _, elastic = _build(
        dict(input_layer="linear", macaron_style=True, **LATEST),
        widths=[0.5, 1], precisions=["int2", "int4", "int8", "fp"],
        quant_conf={"granularity": "channel"},
    )
    xs, lens = _inputs()
    elastic.eval()
    with torch.no_grad():
        ref = elastic(xs, lens)[0]
        errors = {}
        for bits in ("int2", "int4", "int8"):
            with elastic.use_subsystem(f"d2-w1-{bits}"):
                out = elastic(xs, lens)[0]
            assert torch.isfinite(out).all()
            errors[bits] = (out - ref).pow(2).mean().item()
    assert errors["int2"] > errors["int4"] > errors["int8"] > 0
    # exact storage: channel scales are one fp16 per row of each quantized weight
    n_params = elastic.num_params("d2-w1-fp")
    quantized = [m.weight for m in elastic.encoders.modules() if isinstance(m, ElasticWeightMixin)]
    n_quantized = sum(w.numel() for w in quantized)
    bn_stats = 2 * 2 * 16
    for bits in (2, 4, 8):
        packed = sum(math.ceil((w.numel() * bits + 16 * w.shape[0]) / 8) for w in quantized)
        expected = 4 * (n_params - n_quantized + bn_stats) + packed
        assert elastic.storage_bytes(f"d2-w1-int{bits}") == expected
    assert elastic.storage_bytes("d2-w1-fp") == 4 * (n_params + bn_stats)
    elastic.train()
    with elastic.use_subsystem("d2-w0.5-int2"):
        elastic(xs, lens)[0].pow(2).mean().backward()
    ff = elastic.blocks[0].feed_forward
    assert ff.w_1.weight.grad[:16].abs().sum() > 0 and ff.w_1.weight.grad[16:].abs().sum() == 0
    assert ff.w_1.weight_quantizer.scale_int2.grad.abs().sum() > 0


def _make(**kw):
    return ElasticConformerEncoder(IDIM, **{**BASE, "input_layer": "linear", **kw})


@pytest.mark.parametrize(
    ("sub", "message"),
    [
        ("d2-w1", "malformed subsystem 'd2-w1'; expected d<depth>-w<width>-<precision>"),
        ("d5-w1-fp", r"depth 5 \(valid: 1, 2\)"),
        ("d2-w0.25-fp", r"width 0.25 \(valid: 0.5, 1\)"),
        ("d2-w1-int8", r"precision int8 \(valid: int4, fp\)"),
    ],
)
def test_bad_subsystem_names_the_value_and_the_choices(sub, message):
    encoder = _make(depths=[1, 2], widths=[0.5, 1], precisions=["int4", "fp"])
    with pytest.raises(SubsystemError, match=message):
        encoder.set_subsystem(sub)
    assert str(encoder.active_subsystem) == "d2-w1-fp"


@pytest.mark.parametrize(
    ("kw", "error", "message"),
    [
        ({"widths": [0.3, 1]}, SubsystemError, "width 0.3 gives 9.6 FFN units of 32"),
        ({"depths": [3]}, SubsystemError, r"depth 3 outside the model's 1\.\.2 blocks"),
        ({"precisions": ["int3"]}, SubsystemError,
         "unsupported weight precision 'int3'; valid: int2, int4, int8, fp"),
        ({"precisions": ["int4"], "quant_conf": {"granularity": "group", "group_size": 5}},
         ValueError, (r"encoder layer encoders\.0\.self_attn\.linear_q: group_size 5 does not "
         "divide in_features 16")),
        ({"widths": [0.25, 1], "precisions": ["int4"],
              "quant_conf": {"granularity": "group", "group_size": 8}},
         ValueError, r"subsystem d2-w0\.25-int4: physical block 0: .* not a multiple of quant group_size 8"),
        ({"precisions": ["int4"], "quant_conf": {"bitz": 3}}, QuantConfigError,
         "unknown quant_conf key.*bitz; valid keys: symmetric"),
        ({"num_block": 3}, TypeError,
         ("unknown encoder_conf key.*'num_block'.*did you mean 'num_blocks'.*valid keys: "
         "input_size, output_size")),
    ],
    ids=["width", "depth", "bits", "group_in", "group_width", "quant_key", "encoder_key"],
)
def test_bad_configuration_names_the_value_and_the_choices(kw, error, message):
    with pytest.raises(error, match=message):
        _make(**kw)


def test_nested_use_arch_gives_the_enclosing_record_back():
    """A block run with another record inside ``use_arch`` (a scorer, a calibration)
    leaves the enclosing record active, not the last subsystem set."""
    from helpers.toy_experiment import DEFAULT_ENCODER_CONF

    enc = ElasticConformerEncoder(20, **DEFAULT_ENCODER_CONF)
    outer, inner = enc.resolve("d2-w0.5-int2"), enc.resolve("d4-w1-int4")
    with enc.use_arch(outer):
        with enc.use_arch(inner):
            assert enc.active_arch is inner
        assert enc.active_arch is outer
        with enc.use_arch(outer):
            pass
        assert enc.active_arch is outer
    assert enc.active_arch == enc.resolve(enc.space.largest)
