"""Fake quantization: grids, gradients, initialisation, slicing, exact integer form."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from espnet_allinone.quant import (
    ActivationFakeQuantizer,
    QuantConfig,
    QuantConfigError,
    QuantizedWeight,
    WeightFakeQuantizer,
    qrange,
)
from espnet_allinone.quant.fake_quant import MIN_SCALE

OUT, IN, GS = 12, 64, 16
ALL_CONFIGS = [
    QuantConfig(symmetric=s, granularity=g, group_size=GS, clip=c, learn_scale=learn)
    for s, g, c, learn in itertools.product(
        (True, False), ("tensor", "channel", "group"), ("none", "mse"), (True, False)
    )
] + [
    QuantConfig(symmetric=s, granularity=g, group_size=GS, scale_param="log")
    for s, g in itertools.product((True, False), ("tensor", "channel", "group"))
]


def cfg_id(cfg: QuantConfig) -> str:
    return (
        f"{'sym' if cfg.symmetric else 'asym'}-{cfg.granularity}-{cfg.clip}"
        f"-{'lsq' if cfg.learn_scale else 'stat'}"
        + ("-log" if cfg.scale_param == "log" else "")
    )


def make(cfg: QuantConfig, out: int = OUT, inp: int = IN, bits=(2, 4, 8, 32)):
    return WeightFakeQuantizer(out, inp, bits, cfg)


def rand_weight(out: int = OUT, inp: int = IN, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(out, inp, generator=g) * 0.05).requires_grad_(True)


def effective_qparams(q: WeightFakeQuantizer, w: torch.Tensor, bits: int):
    """Per-element scale and zero point of the full weight, via quantize()."""
    qw = q.quantize(w, bits)
    rows, cols = qw.shape
    s = (
        qw.scale.float()
        .unsqueeze(-1)
        .expand(rows, cols // qw.group_size, qw.group_size)
    )
    z = None
    if qw.zero_point is not None:
        z = qw.zero_point.float().unsqueeze(-1).expand_as(s).reshape(rows, cols)
    return qw, s.reshape(rows, cols), z


# --- config ---------------------------------------------------------------------
def test_config_defaults_and_round_trip():
    cfg = QuantConfig.from_dict(None)
    assert cfg == QuantConfig()
    assert (cfg.symmetric, cfg.granularity, cfg.group_size, cfg.clip) == (
        True,
        "channel",
        32,
        "none",
    )
    d = {
        "symmetric": False,
        "granularity": "group",
        "group_size": 8,
        "clip": "fixed",
        "clip_ratio": 0.9,
        "learn_scale": False,
        "activation_bits": 8,
        "grid": "integer",
        "scale_param": "log",
    }
    cfg = QuantConfig.from_dict(d)
    assert cfg.to_dict() == d
    assert QuantConfig().grid == "integer"
    balanced = {**QuantConfig().to_dict(), "grid": "balanced"}
    assert QuantConfig.from_dict(balanced).to_dict() == balanced
    assert QuantConfig.from_dict(cfg) is cfg
    assert QuantConfig.from_dict({"clip": "fixed", "clip_ratio": 1}).clip_ratio == 1.0


@pytest.mark.parametrize(
    "conf, pattern",
    [
        ({"granularity": "row"}, r"granularity 'row'; valid: tensor, channel, group"),
        ({"clip": "max"}, r"clip 'max'; valid: none, fixed, mse"),
        (
            {"clip": "fixed", "clip_ratio": 0.0},
            r"clip_ratio must be a number in \(0, 1\], got 0.0",
        ),
        ({"clip": "fixed", "clip_ratio": 1.5}, r"got 1.5"),
        ({"clip": "mse", "clip_ratio": 0.5}, r"only applies to clip: fixed"),
        ({"group_size": 0}, r"group_size must be a positive integer, got 0"),
        ({"group_size": 8.0}, r"got 8.0"),
        ({"activation_bits": 4}, r"activation_bits 4; valid: null \(off\), 8"),
        ({"symmetric": "yes"}, r"symmetric must be true or false, got 'yes'"),
        (
            {"bits": 4, "granularty": "group"},
            (
                r"unknown quant_conf key\(s\) bits, granularty; "
                r"valid keys: symmetric, granularity, group_size, clip, clip_ratio, learn_scale, "
                r"activation_bits, grid, scale_param"
            ),
        ),
        ({"scale_param": "exp"}, r"scale_param 'exp'; valid: linear, log"),
        ({"grid": "mid-rise"}, r"grid 'mid-rise'; valid: integer, balanced"),
        (
            {"grid": "balanced", "symmetric": False},
            r"grid: balanced needs symmetric: true",
        ),
    ],
)
def test_config_bad_values(conf, pattern):
    with pytest.raises(QuantConfigError, match=pattern):
        QuantConfig.from_dict(conf)


def test_config_not_a_mapping():
    with pytest.raises(QuantConfigError, match="must be a mapping"):
        QuantConfig.from_dict(["group"])


# --- construction and shapes -------------------------------------------------------
@pytest.mark.parametrize(
    "gran, shape",
    [("tensor", (1, 1)), ("channel", (OUT, 1)), ("group", (OUT, IN // GS))],
)
def test_parameter_names_and_shapes(gran, shape):
    q = make(QuantConfig(granularity=gran, group_size=GS, symmetric=False))
    params = {n: tuple(p.shape) for n, p in q.named_parameters()}
    assert params == {
        f"{k}_int{b}": shape for b in (2, 4, 8) for k in ("scale", "zero_point")
    }
    assert {n for n, _ in q.named_buffers()} == {
        f"initialized_int{b}" for b in (2, 4, 8)
    }
    w = rand_weight()
    qw = q.quantize(w, 4)
    assert tuple(qw.scale.shape) == shape and qw.scale.dtype == torch.float16
    assert qw.zero_point.dtype == torch.uint8 and qw.codes.dtype == torch.int16
    assert qw.group_size == (GS if gran == "group" else IN)


def test_symmetric_has_no_zero_point_and_stat_mode_no_params():
    q = make(QuantConfig(symmetric=True))
    assert sorted(n for n, _ in q.named_parameters()) == [
        "scale_int2",
        "scale_int4",
        "scale_int8",
    ]
    assert q.quantize(rand_weight(), 2).zero_point is None
    assert q.quantize(rand_weight(), 2).codes.dtype == torch.int8
    stat = make(QuantConfig(learn_scale=False, clip="mse"))
    assert list(stat.parameters()) == []
    assert {n for n, _ in stat.named_buffers()} == {
        f"{k}_int{b}" for b in (2, 4, 8) for k in ("initialized", "clip_ratio")
    }


def test_float_only_quantizer_has_no_state():
    q = WeightFakeQuantizer(4, 8, (32,), QuantConfig())
    assert list(q.parameters()) == [] and list(q.buffers()) == []


def test_bad_construction_and_calls():
    with pytest.raises(
        ValueError, match="group_size 24 does not divide in_features 64"
    ):
        WeightFakeQuantizer(
            4, 64, (4,), QuantConfig(granularity="group", group_size=24)
        )
    with pytest.raises(
        ValueError, match=r"unsupported weight bits \[3\]; valid: 2, 4, 8, 32"
    ):
        WeightFakeQuantizer(4, 64, (3, 4), QuantConfig())
    with pytest.raises(
        ValueError, match="in_features must be a positive integer, got 0"
    ):
        WeightFakeQuantizer(4, 0, (4,), QuantConfig())
    q = WeightFakeQuantizer(
        OUT, IN, (2, 4), QuantConfig(granularity="group", group_size=GS)
    )
    w = rand_weight()
    with pytest.raises(
        ValueError, match="bits 8 not available in this quantizer; valid: 2, 4, 32"
    ):
        q(w, 8)
    with pytest.raises(
        ValueError,
        match=r"expected the full 2-D weight of shape \[12, 64\], got "
        r"\[12, 32\]",
    ):
        q(w[:, :32], 4)
    with pytest.raises(
        ValueError,
        match="cols 24 is not a multiple of the group size 16; valid: "
        "multiples of 16 up to 64",
    ):
        q(w, 4, cols=24)
    with pytest.raises(ValueError, match=r"cols must be an integer in 1..64, got 65"):
        q(w, 4, cols=65)
    with pytest.raises(ValueError, match="1-D LongTensor"):
        q(w, 4, rows=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="valid: 2, 4$"):
        q.quantize(w, 32)
    with pytest.raises(ValueError, match="not a multiple of the group size"):
        q.storage_bits(4, 40, 2)


# --- the grid ---------------------------------------------------------------------
@pytest.mark.parametrize("cfg", ALL_CONFIGS, ids=cfg_id)
def test_values_lie_on_the_grid(cfg):
    q = make(cfg)
    w = rand_weight()
    for bits in (2, 4, 8):
        out = q(w, bits).detach()
        qw, s, z = effective_qparams(q, w, bits)
        levels = out / s + (0 if z is None else z)
        qmin, qmax = qrange(bits, cfg.symmetric)
        assert torch.equal(levels, levels.round())
        assert levels.min() >= qmin and levels.max() <= qmax
        if bits == 2:
            groups = (
                levels.reshape(OUT, -1, qw.group_size)
                if cfg.granularity != "tensor"
                else levels.reshape(1, 1, -1)
            )
            for g in groups.reshape(-1, groups.shape[-1]):
                assert len(torch.unique(g)) <= 4


@pytest.mark.parametrize(
    "cfg",
    [
        QuantConfig(symmetric=True, clip="mse"),
        QuantConfig(symmetric=True, clip="fixed", clip_ratio=0.8),
        QuantConfig(symmetric=False, clip="none"),
        QuantConfig(symmetric=False, clip="mse"),
        QuantConfig(symmetric=False, clip="fixed", clip_ratio=0.8),
        QuantConfig(grid="balanced", clip="none"),
        QuantConfig(grid="balanced", clip="mse"),
        QuantConfig(grid="balanced", clip="fixed", clip_ratio=0.8),
    ],
    ids=lambda c: f"{cfg_id(c)}-{c.grid}",
)
def test_two_bit_uses_exactly_four_levels_on_random_weights(cfg):
    """Every 2-bit grid but the default one (below) uses all four codes in every row."""
    q = make(cfg, out=8, inp=256)
    w = rand_weight(8, 256, seed=1)
    qw = q.quantize(w, 2)
    for row in qw.codes:
        assert len(torch.unique(row)) == 4
    lo, hi = qrange(2, cfg.symmetric)
    assert set(torch.unique(qw.codes).tolist()) == set(range(lo, hi + 1))


def test_default_two_bit_grid_uses_three_levels_and_minus_two_only_at_the_negative_extreme():
    """The default (symmetric, integer grid, no clipping) 2-bit grid is ternary at init.

    s = 2 max|w| / 3 puts every w / s in [-1.5, 1.5]: round() gives -1, 0 or 1 and
    +1.5 is clamped to 1, so only a weight at -max|w| can reach code -2, and only when
    w / s <= -1.5 (an exact tie rounds half to even, to -2; the fp16 scale decides the
    rest). A row uses 3 levels, or 4 with -2 on that single weight.
    """
    cfg = QuantConfig()
    assert (cfg.symmetric, cfg.grid, cfg.clip) == (True, "integer", "none")
    # max|w| = 0.75 gives s = 0.5 exactly in fp16: the extremes land on x = +-1.5
    w = torch.stack([torch.linspace(-0.6, 0.75, 256), torch.linspace(-0.75, 0.6, 256)])
    assert w[0, -1] == 0.75 and w[1, 0] == -0.75
    qw = make(cfg, out=2, inp=256).quantize(w, 2)
    assert torch.equal(qw.scale.float().flatten(), torch.tensor([0.5, 0.5]))
    assert sorted(torch.unique(qw.codes[0]).tolist()) == [-1, 0, 1]
    assert sorted(torch.unique(qw.codes[1]).tolist()) == [-2, -1, 0, 1]
    assert qw.codes[1, 0] == -2 and (qw.codes[1] == -2).sum() == 1
    # random rows: exactly {-1, 0, 1} off the row's most negative weight, which is -2
    # exactly when it is the row's max|w| and lies at or beyond -1.5 s
    w = rand_weight(8, 256, seed=1).detach()
    qw = make(cfg, out=8, inp=256).quantize(w, 2)
    counts = []
    for row, codes, s in zip(w, qw.codes, qw.scale.float().flatten(), strict=True):
        low = int(row.argmin())
        rest = torch.cat([codes[:low], codes[low + 1:]])
        assert sorted(torch.unique(rest).tolist()) == [-1, 0, 1]
        at_minus_two = bool(row[low] == -row.abs().max() and row[low] / s <= -1.5)
        assert (codes[low] == -2) == at_minus_two
        counts.append(len(torch.unique(codes)))
    assert counts == [4, 4, 3, 4, 3, 3, 4, 4]  # this seed: both cases occur


def test_symmetric_levels_are_signed_and_asymmetric_unsigned():
    assert (
        qrange(2, True) == (-2, 1)
        and qrange(4, True) == (-8, 7)
        and qrange(8, True) == (-128, 127)
    )
    assert qrange(2, False) == (0, 3) and qrange(8, False) == (0, 255)


def test_asymmetric_zero_points_are_integers_even_after_training():
    q = make(QuantConfig(symmetric=False, granularity="group", group_size=GS))
    w = rand_weight()
    q(w, 2)
    # as training leaves it: off the integers, partly out of range
    with torch.no_grad():
        q.zero_point_int2.add_(torch.rand(q.zero_point_int2.shape) * 0.8 - 0.4)
        q.zero_point_int2[0, 0] = -0.7
    zp = q.zero_point_int2.detach()
    # the learned value drifted off the integers ...
    assert not torch.equal(zp, zp.round())
    qw, s, z = effective_qparams(q, w, 2)
    # ... the one used did not
    assert torch.equal(qw.zero_point.float(), zp.clamp(0, 3).round())
    out = q(w, 2).detach()
    assert torch.equal((out / s + z), (out / s + z).round())
    assert torch.equal(out, (qw.codes.float() - z) * s)


def test_all_levels_reachable_with_zero_exact():
    q = make(QuantConfig(symmetric=False, granularity="channel"))
    w = rand_weight()
    with torch.no_grad():
        w[:, :4] = 0.0
    out = q(w, 4)
    assert torch.equal(out[:, :4], torch.zeros(OUT, 4))


# --- gradients ------------------------------------------------------------------
@pytest.mark.parametrize("cfg", ALL_CONFIGS, ids=cfg_id)
def test_gradients_reach_weight_and_scales(cfg):
    q = make(cfg)
    w = rand_weight()
    for bits in (2, 4, 8):
        w.grad = None
        q.zero_grad()
        (q(w, bits) * torch.randn(OUT, IN)).sum().backward()
        assert torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0
        if cfg.learn_scale:
            sg = getattr(q, q.scale_param_name(bits)).grad
            assert sg is not None and torch.isfinite(sg).all() and sg.abs().sum() > 0
            if not cfg.symmetric:
                zg = getattr(q, f"zero_point_int{bits}").grad
                assert zg is not None and torch.isfinite(zg).all()
        else:
            assert list(q.parameters()) == []


def test_lsq_scale_gradient_value():
    """d out/d s = round(w/s) - w/s inside the range, the clamp bound outside; x 1/sqrt(n Qp)."""
    q = WeightFakeQuantizer(1, 4, (4,), QuantConfig(granularity="tensor"))
    q.initialize(torch.ones(1, 4), 4)
    with torch.no_grad():
        q.scale_int4.fill_(0.25)
    w = torch.tensor([[0.3, -0.6, 5.0, -9.0]], requires_grad=True)
    out = q(w, 4)
    out.sum().backward()
    # x = 1.2, -2.4, 20, -36 -> levels 1, -2, 7 (clamped), -8 (clamped)
    x = w.detach() / 0.25
    assert torch.equal(out.detach(), torch.tensor([[0.25, -0.5, 1.75, -2.0]]))
    expected = ((1 - x[0, 0]) + (-2 - x[0, 1]) + 7 + (-8)).item()
    assert q.scale_int4.grad.item() == pytest.approx(
        expected / math.sqrt(4 * 7), rel=1e-6
    )
    # STE, zero where clipped
    assert torch.equal(w.grad, torch.tensor([[1.0, 1.0, 0.0, 0.0]]))


def reference_fake_quant(q: WeightFakeQuantizer, w, bits, rows=None, cols=None):
    """The quantizer's forward as plain autograd ops (round -- floor on the balanced
    grid -- with identity gradient, clamp, + 1/2 on the balanced grid, LSQ-scaled
    scale and zero point), per element on the full weight."""
    cfg = q.config
    lo, hi = qrange(bits, cfg.symmetric)
    balanced = cfg.grid == "balanced"
    n = {"tensor": OUT * IN, "channel": IN, "group": GS}[cfg.granularity]
    # LSQ's Q_P, the number of positive levels: one more on the balanced grid
    g = 1.0 / math.sqrt(n * (hi + 1 if balanced else hi))

    def learned(value, p):  # value, with gradient g * d/dvalue to p
        return value + (p * g - (p * g).detach())

    def per_element(t):  # [OUT or 1, groups] -> [OUT, IN]
        return t.repeat_interleave(IN // t.shape[1], dim=1).expand(OUT, IN)

    def cut(t):
        t = t if rows is None else t[rows]
        return t if cols is None else t[:, :cols]

    sp = getattr(q, q.scale_param_name(bits))
    if cfg.scale_param == "log":
        sp = sp.exp()
    s = cut(per_element(learned(sp.detach().clamp(2**-20, 65504).half().float(), sp)))
    x = cut(w) / s
    r = (x.floor() if balanced else x.round()) + (x - x.detach())
    if balanced:
        return (r.clamp(lo, hi) + 0.5) * s
    if cfg.symmetric:
        return r.clamp(lo, hi) * s
    zp = getattr(q, f"zero_point_int{bits}")
    z = cut(per_element(learned(zp.detach().clamp(0, hi).round(), zp)))
    return ((r + z).clamp(lo, hi) - z) * s


@pytest.mark.parametrize("gran", ["tensor", "channel", "group"])
@pytest.mark.parametrize(
    "symmetric, grid, scale_param",
    [(True, "integer", "linear"), (False, "integer", "linear"), (True, "balanced", "linear"),
     (True, "integer", "log"), (False, "integer", "log")],
    ids=["sym", "asym", "balanced", "sym-log", "asym-log"],
)
def test_gradients_match_plain_op_reference(symmetric, grid, scale_param, gran):
    """Values bit-exact, gradients (weight, scale, zero point) equal to the plain-op form."""
    cfg = QuantConfig(symmetric=symmetric, granularity=gran, group_size=GS, grid=grid,
                      scale_param=scale_param)
    log = scale_param == "log"
    q = make(cfg, bits=(2, 4, 8))
    gen = torch.Generator().manual_seed(5)
    w = rand_weight(seed=4)
    for bits in (2, 4, 8):
        q.initialize(w, bits)
        with torch.no_grad():  # arbitrary learned values: some levels clip
            sp = getattr(q, q.scale_param_name(bits))
            factor = torch.rand(sp.shape, generator=gen) * 0.5 + 0.4
            if log:
                sp.add_(factor.log())
            else:
                sp.mul_(factor)
            if grid == "balanced":  # clamps only beyond 4/3 max|w| at init (2 bits)
                sp.mul_(0.75)
            if not symmetric:
                getattr(q, f"zero_point_int{bits}").add_(
                    torch.randn(sp.shape, generator=gen) * 0.6
                )
        for rows, cols in ((None, None), (torch.tensor([9, 0, 4, 5]), 32)):
            grads = []
            for fn in (q, lambda *a, **k: reference_fake_quant(q, *a, **k)):
                w.grad = None
                q.zero_grad()
                out = fn(w, bits, rows=rows, cols=cols)
                gen.manual_seed(bits)
                (out * torch.randn(out.shape, generator=gen)).sum().backward()
                grads.append([out.detach(), w.grad] + [p.grad for p in q.parameters()])
            (out, *new), (ref_out, *ref) = grads
            assert torch.equal(out, ref_out)
            assert new[0].eq(0).any() and new[0].ne(0).any()  # clipped and not
            assert len(new) == len(ref) == 1 + (3 if symmetric else 6)
            for a, b in zip(new, ref):
                if b is None:
                    assert a is None or not a.any()
                    continue
                # sums of hundreds of terms that cancel: absolute slack
                tol = 1e-3 * float(b.abs().max()) + 1e-12
                torch.testing.assert_close(a, b, rtol=1e-5, atol=tol)
            assert getattr(q, q.scale_param_name(bits)).grad.any()
            if not symmetric:
                assert getattr(q, f"zero_point_int{bits}").grad.any()


def test_learned_scales_reduce_error():
    torch.manual_seed(0)
    q = make(QuantConfig(granularity="channel"), bits=(2,))
    w = rand_weight(OUT, IN, seed=3).detach()
    opt = torch.optim.Adam(q.parameters(), lr=2e-3)
    errors = []
    for _ in range(30):
        opt.zero_grad()
        loss = (q(w, 2) - w).square().sum()
        loss.backward()
        opt.step()
        errors.append(loss.item())
    assert errors[-1] < 0.8 * errors[0]


def test_log_scales_stay_positive_where_linear_ones_cross_zero():
    """8-bit group scales of small weights (~0.002) under Adam at the recipe's lr with a
    noisy upstream gradient, as in training: linear scales random-walk through zero (the
    forward then clamps them to 2^-20 and the group quantizes to zero); log scales move
    by relative steps and stay positive, and no group's output collapses."""
    cfg = {"granularity": "group", "group_size": GS}
    w = rand_weight(seed=1).detach() * 0.05
    gen = torch.Generator()
    collapsed = {}
    for scale_param in ("linear", "log"):
        q = make(QuantConfig(**cfg, scale_param=scale_param), bits=(8,))
        q.initialize(w, 8)
        opt = torch.optim.Adam(q.parameters(), lr=2e-3)
        gen.manual_seed(0)
        for _ in range(100):
            opt.zero_grad()
            (q(w, 8) * torch.randn(OUT, IN, generator=gen)).sum().backward()
            opt.step()
        scale = q.quantize(w, 8).scale.float()
        collapsed[scale_param] = int((scale <= MIN_SCALE).sum())
    assert collapsed["log"] == 0
    assert collapsed["linear"] > OUT * IN // GS // 10


# --- degenerate weights ---------------------------------------------------------
@pytest.mark.parametrize("cfg", ALL_CONFIGS, ids=cfg_id)
@pytest.mark.parametrize("value", [0.0, 0.5, -3.0, 1e-12])
def test_zero_and_constant_weights_are_finite(cfg, value):
    q = make(cfg)
    w = torch.full((OUT, IN), value, requires_grad=True)
    for bits in (2, 4, 8):
        out = q(w, bits)
        out.sum().backward()
        assert torch.isfinite(out).all() and torch.isfinite(w.grad).all()
        for p in q.parameters():
            assert p.grad is None or torch.isfinite(p.grad).all()
        qw = q.quantize(w, bits)
        assert torch.isfinite(qw.scale.float()).all() and (qw.scale > 0).all()
        if value == 0.0:
            assert torch.equal(out.detach(), torch.zeros(OUT, IN))


# --- error behaviour ------------------------------------------------------------
@pytest.mark.parametrize("cfg", ALL_CONFIGS, ids=cfg_id)
def test_error_ordering_two_four_eight_bits(cfg):
    q = make(cfg)
    w = rand_weight(seed=5)
    err = {b: (q(w, b) - w).square().mean().item() for b in (2, 4, 8)}
    assert err[2] > err[4] > err[8] > 0
    assert err[2] > 10 * err[4] and err[4] > 10 * err[8]


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("gran", ["tensor", "channel", "group"])
def test_mse_clipping_beats_no_clipping_on_heavy_tails(symmetric, gran):
    torch.manual_seed(0)
    w = torch.distributions.StudentT(2.0).sample((OUT, IN)) * 0.02
    errs = {}
    for clip in ("none", "mse"):
        q = make(
            QuantConfig(symmetric=symmetric, granularity=gran, group_size=GS, clip=clip)
        )
        errs[clip] = {b: (q(w, b) - w).square().sum().item() for b in (2, 4)}
    for b in (2, 4):
        assert errs["mse"][b] < errs["none"][b]


def test_fixed_clip_ratio_shrinks_the_scale():
    w = rand_weight()
    full = make(QuantConfig()).quantize(w, 4).scale.float()
    half = make(QuantConfig(clip="fixed", clip_ratio=0.5)).quantize(w, 4).scale.float()
    assert torch.allclose(half, full * 0.5, rtol=2e-3)


# --- slicing ---------------------------------------------------------------------
@pytest.mark.parametrize("cfg", ALL_CONFIGS, ids=cfg_id)
def test_slice_equals_full_then_slice(cfg):
    q = make(cfg)
    w = rand_weight(seed=7)
    rows = torch.tensor([5, 0, 11, 3])
    for bits in (2, 4, 8, 32):
        full = q(w, bits)
        for r, c in ((rows, None), (None, 32), (rows, 48), (torch.arange(6), 16)):
            part = q(w, bits, rows=r, cols=c)
            ref = full if r is None else full[r]
            ref = ref if c is None else ref[:, :c]
            assert torch.equal(part, ref), (bits, r, c)


def test_float_bits_returns_the_slice_unchanged():
    q = make(QuantConfig())
    w = rand_weight()
    assert q(w, 32) is w
    rows = torch.tensor([1, 2])
    assert torch.equal(q(w, 32, rows, 8), w[rows][:, :8])
    assert not q.initialized_int2  # float use initialises nothing


def test_sliced_gradients_only_reach_kept_rows_and_scales():
    q = make(QuantConfig(granularity="group", group_size=GS))
    w = rand_weight()
    rows = torch.tensor([1, 4])
    q(w, 4, rows=rows, cols=32).sum().backward()
    kept = torch.zeros(OUT, IN, dtype=torch.bool)
    kept[1, :32] = kept[4, :32] = True
    assert (w.grad[~kept] == 0).all() and (w.grad[kept] != 0).any()
    sg = q.scale_int4.grad
    assert (sg[[1, 4], :2] != 0).all() and (sg[:, 2:] == 0).all() and (sg[0] == 0).all()


# --- initialisation and checkpoints ---------------------------------------------------
@pytest.mark.parametrize("clip", ["none", "mse"])
def test_lazy_init_uses_the_full_weight_even_for_a_slice(clip):
    cfg = QuantConfig(granularity="tensor", clip=clip)
    w = rand_weight()
    a, b = make(cfg), make(cfg)
    assert not a.initialized_int4
    a(w, 4, rows=torch.tensor([0]), cols=8)  # first use through a small slice
    b(w, 4)
    assert a.initialized_int4 and not a.initialized_int2
    assert torch.equal(a.scale_int4, b.scale_int4)
    if clip == "none":  # 16 levels spanning [-max|w|, max|w|], rounded to fp16
        assert a.scale_int4.item() == (2 * w.abs().max() / 15).half().item()


def test_init_after_loading_a_float_checkpoint_and_survives_checkpoints():
    cfg = QuantConfig(granularity="group", group_size=GS)
    layer = torch.nn.Linear(IN, OUT)
    layer.quant = make(cfg)
    pretrained = rand_weight(seed=9).detach()
    missing = layer.load_state_dict(
        {"weight": pretrained, "bias": torch.zeros(OUT)}, strict=False
    )
    assert "quant.scale_int2" in missing.missing_keys
    out = layer.quant(layer.weight, 2)  # initialises from the loaded weight
    expected = make(cfg)(pretrained, 2)
    assert torch.equal(out, expected)

    state = {k: v.clone() for k, v in layer.state_dict().items()}
    assert state["quant.initialized_int2"].item() is True
    assert state["quant.initialized_int4"].item() is False
    fresh = torch.nn.Linear(IN, OUT)
    fresh.quant = make(cfg)
    fresh.load_state_dict(state)
    with torch.no_grad():
        # a loaded initialised bit-width must not be re-initialised
        fresh.weight.mul_(3.0)
    fresh.quant(fresh.weight, 2)
    assert torch.equal(fresh.quant.scale_int2, state["quant.scale_int2"])
    fresh.quant(fresh.weight, 4)  # but an uninitialised one is, from the current weight
    assert fresh.quant.initialized_int4


def test_load_state_dict_resets_the_ready_cache():
    cfg = QuantConfig()
    q = make(cfg)
    w = rand_weight()
    q(w, 2)
    blank = make(cfg).state_dict()
    q.load_state_dict(blank)  # initialized_int2 back to False
    q(w * 2, 2)
    assert torch.equal(q.scale_int2, make(cfg).quantize(w * 2, 2).scale.float())


def test_reset_and_permute_rows():
    cfg = QuantConfig(symmetric=False, granularity="group", group_size=GS)
    q = make(cfg)
    w = rand_weight()
    q(w, 2)
    out = q(w, 4).detach()
    perm = torch.randperm(OUT, generator=torch.Generator().manual_seed(0))
    q.permute_rows_(perm)
    assert torch.equal(q(w.detach()[perm], 4), out[perm])
    q.reset(4)
    assert not q.initialized_int4 and q.initialized_int2
    q(w * 0.5, 4)
    assert torch.equal(q.scale_int4, make(cfg).quantize(w * 0.5, 4).scale.float())


def test_stat_mode_follows_the_current_weight():
    q = make(QuantConfig(learn_scale=False))
    w = rand_weight()
    s1 = q.quantize(w, 4).scale
    s2 = q.quantize(w * 2, 4).scale
    assert torch.equal(s2.float(), s1.float() * 2)


# --- the integer form -------------------------------------------------------------
@pytest.mark.parametrize("cfg", ALL_CONFIGS, ids=cfg_id)
def test_quantize_dequantize_equals_forward_exactly(cfg):
    q = make(cfg)
    w = rand_weight(seed=11)
    if cfg.learn_scale:  # move the scales off their initial values first
        opt = torch.optim.Adam(list(q.parameters()), lr=1e-2)
        for bits in (2, 4, 8):
            opt.zero_grad()
            (q(w, bits) - 0.01).square().sum().backward()
            opt.step()
    rows = torch.tensor([7, 2, 9])
    for bits in (2, 4, 8):
        for r, c in ((None, None), (rows, 32)):
            qw = q.quantize(w, bits, rows=r, cols=c)
            assert isinstance(qw, QuantizedWeight) and qw.bits == bits
            assert qw.dequantize().dtype == torch.float32
            assert torch.equal(qw.dequantize(), q(w, bits, rows=r, cols=c))
            lo, hi = qrange(bits, cfg.symmetric)
            assert qw.codes.min() >= lo and qw.codes.max() <= hi


@pytest.mark.parametrize("gran", ["tensor", "channel", "group"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_storage_bits_formula(gran, symmetric):
    q = make(QuantConfig(symmetric=symmetric, granularity=gran, group_size=GS))
    w = rand_weight()
    per_scale = 16 if symmetric else 24
    n_scales = {"tensor": 1, "channel": 5, "group": 5 * 32 // GS}[gran]
    assert q.storage_bits(5, 32, 2) == 5 * 32 * 2 + per_scale * n_scales
    assert q.storage_bits(5, 32, 32) == 5 * 32 * 32
    for bits in (2, 4, 8):
        qw = q.quantize(w, bits, rows=torch.arange(5), cols=32)
        assert qw.storage_bits() == q.storage_bits(5, 32, bits)
    full = q.quantize(w, 4)
    assert full.storage_bits() == q.storage_bits(OUT, IN, 4)


def test_quantized_weight_rejects_inconsistent_parts():
    with pytest.raises(
        ValueError, match=r"scale has shape \(3, 2\); expected \[4 or 1, 2\]"
    ):
        QuantizedWeight(
            torch.zeros(4, 8, dtype=torch.int8),
            torch.ones(3, 2).half(),
            None,
            4,
            4,
            (4, 8),
        )
    with pytest.raises(ValueError, match="group_size 3 does not divide 8"):
        QuantizedWeight(
            torch.zeros(4, 8, dtype=torch.int8),
            torch.ones(4, 2).half(),
            None,
            4,
            3,
            (4, 8),
        )


def test_half_precision_master_weight():
    q = make(QuantConfig(granularity="group", group_size=GS))
    w = rand_weight().detach().half()
    out = q(w, 4)
    assert out.dtype == torch.float16
    assert torch.equal(out, q.quantize(w, 4).dequantize().half())


# --- activations ---------------------------------------------------------------
def test_activation_fake_quant():
    act = ActivationFakeQuantizer(8)
    x = (torch.randn(4, 10, 16) * 3).requires_grad_(True)
    y = act(x)
    lo, hi = min(x.min().item(), 0.0), max(x.max().item(), 0.0)
    step = (hi - lo) / 255
    assert (y - x).abs().max().item() <= step / 2 + 1e-6
    assert len(torch.unique(y.detach())) <= 256
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))  # STE
    assert act(torch.zeros(3, 3)).abs().sum() == 0
    assert act(torch.empty(0, 4)).shape == (0, 4)
    assert act(x.detach().bfloat16()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="unsupported activation bits 4; valid: 8"):
        ActivationFakeQuantizer(4)
