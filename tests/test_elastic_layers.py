"""Elastic building blocks: slices equal stock layers holding the sliced weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from espnet_allinone.elastic import (
    ElasticBatchNorm1d,
    ElasticConv1d,
    ElasticLinear,
    active_size,
)
from espnet_allinone.quant import QuantConfig


def test_linear_full_float_is_stock_and_keeps_keys():
    torch.manual_seed(0)
    stock = nn.Linear(8, 6)
    layer = ElasticLinear.convert(nn.Linear(8, 6))
    layer.load_state_dict(stock.state_dict(), strict=True)
    assert list(layer.state_dict()) == list(stock.state_dict())
    x = torch.randn(3, 8)
    assert torch.equal(layer(x), stock(x))


def test_linear_slices_first_rows_and_columns():
    torch.manual_seed(0)
    layer = ElasticLinear(8, 6)
    layer.set_active(out=4, in_=5)
    x = torch.randn(3, 5)
    expected = F.linear(x, layer.weight[:4, :5], layer.bias[:4])
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)
    assert layer.active_own_sizes() == [(20, 20 * 32), (4, 4 * 32)]


def test_set_active_rejects_out_of_range_and_unsupported_bits():
    layer = ElasticLinear(8, 6)
    with pytest.raises(ValueError, match=r"active out 7 outside 1\.\.6"):
        layer.set_active(out=7)
    with pytest.raises(ValueError, match=r"active in 0 outside 1\.\.8"):
        layer.set_active(in_=0)
    with pytest.raises(ValueError, match=r"unsupported weight bits 4; valid: 32"):
        layer.set_active(bits=4)


def test_glu_pointwise_keeps_first_rows_of_each_half():
    torch.manual_seed(0)
    conv = ElasticConv1d.convert(nn.Conv1d(6, 8, 1), split_halves=True)  # 2 x 4 channels
    conv.set_active(out=2)
    x = torch.randn(2, 6, 5)
    rows = torch.tensor([0, 1, 4, 5])
    expected = F.conv1d(x, conv.weight[rows], conv.bias[rows])
    torch.testing.assert_close(conv(x), expected, rtol=0, atol=0)
    assert conv(x).shape == (2, 4, 5)


def test_depthwise_and_dense_conv_equal_stock_convs_with_sliced_weights():
    torch.manual_seed(0)
    depthwise = ElasticConv1d.convert(nn.Conv1d(6, 6, 3, padding=1, groups=6))
    depthwise.set_active(out=4)
    stock = nn.Conv1d(4, 4, 3, padding=1, groups=4)
    stock.load_state_dict({"weight": depthwise.weight[:4], "bias": depthwise.bias[:4]})
    x = torch.randn(2, 4, 7)
    torch.testing.assert_close(depthwise(x), stock(x), rtol=0, atol=1e-7)

    dense = ElasticConv1d.convert(nn.Conv1d(6, 5, 3, padding=1))
    dense.set_active(out=3, in_=4)
    stock = nn.Conv1d(4, 3, 3, padding=1)
    stock.load_state_dict({"weight": dense.weight[:3, :4], "bias": dense.bias[:3]})
    torch.testing.assert_close(dense(x), stock(x), rtol=0, atol=1e-6)
    assert dense.active_own_sizes() == [(3 * 4 * 3, 3 * 4 * 3 * 32), (3, 96)]


def test_quantized_slice_uses_the_quantizer_and_counts_its_exact_bits():
    torch.manual_seed(0)
    config = QuantConfig(granularity="group", group_size=4)
    layer = ElasticLinear(8, 6)
    layer.enable_quantization((2, 4, 32), config)
    layer.set_active(out=3, in_=4, bits=2)
    x = torch.randn(5, 4)
    w = layer.weight_quantizer(layer.weight, 2, torch.arange(3), 4)
    torch.testing.assert_close(layer(x), F.linear(x, w, layer.bias[:3]), rtol=0, atol=0)
    for row in w:  # 2 bits: at most 4 levels per group (here one group per row)
        assert row.unique().numel() <= 4
    assert layer.active_own_sizes()[0] == (12, layer.weight_quantizer.storage_bits(3, 4, 2))
    assert layer.active_own_sizes()[0][1] == 12 * 2 + 3 * 16  # codes + one fp16 scale per group
    layer(x).sum().backward()
    assert layer.weight.grad.abs().sum() > 0
    assert layer.weight_quantizer.scale_int2.grad.abs().sum() > 0


def test_group_size_must_fit_the_active_columns():
    layer = ElasticLinear(8, 6)
    layer.enable_quantization((4, 32), QuantConfig(granularity="group", group_size=4))
    with pytest.raises(ValueError, match="6 weight columns, not a multiple of quant group_size 4"):
        layer.set_active(in_=6, bits=4)
    assert (layer.active_in, layer.bits) == (8, 32)  # unchanged after the error
    with pytest.raises(ValueError, match="group_size 3 does not divide in_features 8"):
        ElasticLinear(8, 6).enable_quantization((4,), QuantConfig(granularity="group", group_size=3))


def test_depthwise_conv_falls_back_to_channel_scales_when_group_does_not_divide_kernel():
    conv = ElasticConv1d.convert(nn.Conv1d(4, 4, 3, padding=1, groups=4))
    conv.enable_quantization((4,), QuantConfig(granularity="group", group_size=8))
    assert conv.weight_quantizer.config.granularity == "channel"


def test_permutations_preserve_the_function():
    torch.manual_seed(0)
    w1 = ElasticLinear(5, 7)
    w1.enable_quantization((4, 32), QuantConfig())
    w2 = ElasticLinear(7, 5)
    x = torch.randn(3, 5)
    before = w2(torch.relu(w1(x)))
    w1.set_active(bits=4)
    q_before = w1(x)
    perm = torch.randperm(7)
    w1.permute_out(perm)
    w2.permute_in(perm)
    torch.testing.assert_close(w1(x), q_before[:, perm])  # scales moved with their rows
    w1.set_active(bits=32)
    torch.testing.assert_close(w2(torch.relu(w1(x))), before)


def test_batchnorm_keeps_separate_statistics_per_width():
    torch.manual_seed(0)
    bn = ElasticBatchNorm1d.convert(nn.BatchNorm1d(6), widths=(3, 6))
    assert {"running_mean_c3", "running_var_c3", "num_batches_tracked_c3"} <= set(bn.state_dict())
    full_mean, full_var = bn.running_mean.clone(), bn.running_var.clone()
    bn.train()
    bn.set_active(3)
    bn(torch.randn(4, 3, 10) + 5.0)
    assert torch.equal(bn.running_mean, full_mean) and torch.equal(bn.running_var, full_var)
    assert int(bn.num_batches_tracked) == 0 and int(bn.num_batches_tracked_c3) == 1
    narrow_mean = bn.running_mean_c3.clone()
    assert narrow_mean.min() > 0.4  # moved towards the batch mean (momentum 0.1 x ~5)
    bn.set_active(6)
    bn(torch.randn(4, 6, 10) - 5.0)
    assert torch.equal(bn.running_mean_c3, narrow_mean)
    assert bn.running_mean.max() < -0.4
    # eval at the narrow width uses the narrow statistics and the first affine entries
    bn.eval()
    bn.set_active(3)
    x = torch.randn(2, 3, 4)
    expected = F.batch_norm(
        x, bn.running_mean_c3, bn.running_var_c3, bn.weight[:3], bn.bias[:3], False, 0.0, bn.eps
    )
    torch.testing.assert_close(bn(x), expected)
    with pytest.raises(ValueError, match="BatchNorm width 4 not prepared; valid: 3, 6"):
        bn.set_active(4)


def test_batchnorm_without_extra_widths_has_stock_keys():
    assert list(ElasticBatchNorm1d.convert(nn.BatchNorm1d(4)).state_dict()) == list(
        nn.BatchNorm1d(4).state_dict()
    )


def test_active_size_walks_only_active_slices():
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8))
    model[0] = ElasticLinear.convert(model[0])
    assert active_size(model).params == 4 * 8 + 8 + 8 + 8
    model[0].set_active(out=8, in_=2)
    report = active_size(model)
    assert report.params == 2 * 8 + 8 + 16
    assert report.bytes == 4 * report.params


@torch.no_grad()
def test_index_sets_select_any_units_and_static_twins_equal_the_active_slice():
    torch.manual_seed(0)
    lin = ElasticLinear(12, 6)
    lin.set_active(out=[4, 0, 5], in_=[1, 3, 7, 8])
    x = torch.randn(2, 4)  # the active inputs (features 1, 3, 7, 8 of the full layer)
    want = F.linear(x, lin.weight[[4, 0, 5]][:, [1, 3, 7, 8]], lin.bias[[4, 0, 5]])
    assert torch.equal(lin(x), want)
    twin = lin.static_twin()
    assert type(twin) is nn.Linear and twin.weight.shape == (3, 4)
    assert torch.equal(twin(x), want)
    conv = ElasticConv1d.convert(nn.Conv1d(6, 8, 3, padding=1))
    conv.set_active(out=[7, 2], in_=[5, 0])
    x = torch.randn(1, 2, 10)
    want = F.conv1d(x, conv.weight[[7, 2]][:, [5, 0]], conv.bias[[7, 2]], padding=1)
    assert torch.equal(conv(x), want) and torch.equal(conv.static_twin()(x), want)


@torch.no_grad()
def test_quantized_twin_is_the_fake_quantized_slice_and_groups_stay_whole():
    torch.manual_seed(0)
    lin = ElasticLinear(32, 8)
    lin.enable_quantization((4, 32), QuantConfig(granularity="group", group_size=8))
    lin.set_active(out=[1, 6], in_=list(range(16, 24)) + list(range(8)), bits=4)
    twin = lin.static_twin()
    assert twin.weight.bits == 4 and twin.weight.shape == (2, 16)
    assert torch.equal(twin.dequantized_weight(), lin.active_weight_2d())
    with pytest.raises(ValueError, match="not made of whole groups of 8 columns"):
        lin.set_active(in_=list(range(4, 20)), bits=4)
    assert lin.in_index == tuple(range(16, 24)) + tuple(range(8))  # unchanged after the error


def test_batchnorm_channel_sets_use_and_update_the_full_statistics():
    bn = ElasticBatchNorm1d.convert(nn.BatchNorm1d(6), widths=[3])
    bn.set_active([5, 1])
    bn.train()
    x = torch.randn(4, 2, 7) + 3.0
    bn(x)
    assert bn.running_mean[[5, 1]].gt(0.2).all() and bn.running_mean[[0, 2, 3, 4]].eq(0).all()
    assert bn.running_mean_c3.eq(0).all()  # the width-3 statistics are untouched
    twin = bn.eval().static_twin()
    assert twin.num_features == 2 and torch.equal(twin.running_mean, bn.running_mean[[5, 1]])
    with pytest.raises(ValueError, match="valid: distinct indices in 0..5"):
        bn.set_active([1, 1])
