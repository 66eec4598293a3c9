"""Structured L0 pruning: gate maths, exact expected size, the Lagrangian reaching its
target, and the learned architecture extracted as a physically smaller model."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
import yaml
from helpers.toy_experiment import (
    DEFAULT_ENCODER_CONF,
    write_toy_experiment,
)

from espnet_allinone.encoders.elastic_conformer import ElasticConformerEncoder
from espnet_allinone.encoders.switching import model_probe_input
from espnet_allinone.export.extract import Extractor
from espnet_allinone.pruning.hard_concrete import HardConcrete
from espnet_allinone.subsystem import SubsystemError

STOCK = {
    "output_size": 32, "attention_heads": 4, "linear_units": 64, "cnn_module_kernel": 5,
    "input_layer": "linear", "macaron_style": True, "rel_pos_type": "latest",
    "dropout_rate": 0.0, "positional_dropout_rate": 0.0, "attention_dropout_rate": 0.0,
}


def _pruned_encoder(**kw) -> ElasticConformerEncoder:
    torch.manual_seed(0)
    conf = {"num_blocks": 2, "precisions": ["int4", "fp"],
            "quant_conf": {"granularity": "channel"}, "prune_targets": [0.5], **kw}
    return ElasticConformerEncoder(input_size=10, **STOCK, **conf)


@torch.no_grad()
def _scramble(encoder: ElasticConformerEncoder, seed: int = 0) -> None:
    """Random gate parameters: some units, heads and modules off."""
    gen = torch.Generator().manual_seed(seed)
    for gates in encoder.pruning.modules():
        if isinstance(gates, HardConcrete):
            gates.log_alpha.copy_(torch.randn(gates.log_alpha.shape, generator=gen) + 0.3)


def test_hard_concrete_expected_l0_matches_sampling_and_eval_is_binary():
    torch.manual_seed(0)  # the sampled share is within 0.01 of the expectation for this seed
    gates = HardConcrete(6)
    with torch.no_grad():
        gates.log_alpha.copy_(torch.tensor([-3.0, -1.0, 0.0, 0.5, 1.0, 3.0]))
    gates.train()
    samples = torch.stack([gates() for _ in range(20000)])
    assert torch.allclose((samples > 0).float().mean(0), gates.keep_prob(), atol=0.01)
    assert samples.min() == 0.0 and samples.max() == 1.0  # exact zeros and ones occur
    gates.eval()  # binary: the round(E[L0]) = round(4.49) = 4 gates of largest log alpha
    assert round(float(gates.keep_prob().detach().sum()), 2) == 4.49
    assert gates().tolist() == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match=r"init_keep must be in \(0, 1\)"):
        HardConcrete(3, init_keep=1.0)


@torch.no_grad()
def test_a_unit_gated_off_contributes_nothing():
    enc = _pruned_encoder().eval()
    _scramble(enc)
    arch = enc.resolve("d2-w1-fp-p0.5")
    kept = set(arch.blocks[0].ffn_units[1])
    off = next(u for u in range(64) if u not in kept)
    x, lengths = torch.randn(2, 20, 10), torch.tensor([20, 14])
    with enc.gated(enc.space.validate("d2-w1-fp-p0.5")):
        before, _, _ = enc(x, lengths)
        enc.encoders[0].feed_forward.w_1.weight[off].add_(5.0)
        after, _, _ = enc(x, lengths)
    assert (before - after).abs().max() <= 1e-5  # zero up to the BLAS summation order
    with enc.use_subsystem("d2-w1-fp-p0.5"):  # the record computes what the gates do
        recorded, _, _ = enc(x, lengths)
    assert (recorded - after).abs().max() <= 1e-5


def test_expected_size_is_exact_when_the_gates_are_hard():
    enc = _pruned_encoder()
    for seed in range(4):
        _scramble(enc, seed)
        arch = enc.resolve("d2-w1-fp-p0.5")
        assert float(enc.pruning.expected_params(arch and 0.5, hard=True)) == \
            enc.num_params(arch)
    full = enc.num_params("d2-w1-fp")
    assert enc.pruning.full_params == full
    soft = float(enc.pruning.expected_params(0.5))
    assert 0 < soft < full


def test_the_lagrangian_drives_the_expected_size_to_the_target():
    enc = _pruned_encoder(prune_conf={"warmup_steps": 50})
    params = list(enc.pruning.parameters())
    opt = torch.optim.Adam(params, lr=0.05)
    target = 0.5
    for step in range(400):
        penalty, fraction, ramp = enc.pruning.penalty(target, step)
        opt.zero_grad()
        penalty.backward()
        opt.step()
    assert ramp == target
    assert abs(float(fraction) - target) < 0.01, float(fraction)
    lagrangian = enc.pruning.lagrangians["p0_5"]
    assert float(lagrangian.lambda1) != 0.0  # the multipliers moved (gradient ascent)


def test_bad_pruning_input_names_the_value_and_the_choices():
    with pytest.raises(SubsystemError, match=r"pruning target must be in \(0, 1\], got 1.5"):
        _pruned_encoder(prune_targets=[1.5])
    with pytest.raises(ValueError, match=r"unknown \['channels'\]; valid: heads, ffn_units, "
                       "conv_channels, modules"):
        _pruned_encoder(prune_conf={"kinds": ["heads", "channels"]})
    unpruned = ElasticConformerEncoder(input_size=10, **STOCK, num_blocks=2)
    with pytest.raises(SubsystemError, match=r"pruning target 0\.5 \(valid: none in this model\)"):
        unpruned.set_subsystem("d2-w1-fp-p0.5")
    with pytest.raises(SubsystemError, match=r"pruning target 0\.3 \(valid: 0\.5\)"):
        _pruned_encoder().resolve("d2-w1-fp-p0.3")
    with pytest.raises(ValueError, match="pruning an unfolded encoder is not supported"):
        _pruned_encoder(num_blocks=4, seed_blocks=2, depths=[2, 4])


@pytest.fixture(scope="module")
def pruned_experiment(tmp_path_factory):
    root = tmp_path_factory.mktemp("prune")
    conf = dict(DEFAULT_ENCODER_CONF, depths=[4], widths=[1], precisions=["int4", "fp"],
                elastic_conv=False, quant_conf={"granularity": "channel"}, prune_targets=[0.5])
    paths = write_toy_experiment(root / "aio", encoder_conf=conf)
    extractor = Extractor(paths["config"], paths["model"])
    with torch.no_grad():  # a learned-looking architecture: whole modules off too
        gen = torch.Generator().manual_seed(3)
        for gates in extractor.encoder.pruning.modules():
            if isinstance(gates, HardConcrete):
                gates.log_alpha.copy_(torch.randn(gates.log_alpha.shape, generator=gen))
    return root, extractor


@pytest.mark.parametrize("sub", ["d4-w1-fp-p0.5", "d4-w1-int4-p0.5"])
@torch.no_grad()
def test_pruned_subsystem_extracts_physically_smaller_and_loads_in_speech2text(
        pruned_experiment, sub):
    from espnet2.bin.asr_inference import Speech2Text

    root, extractor = pruned_experiment
    result = extractor.extract(sub, root / "out")
    full = extractor.extract("d4-w1-fp", root / "out")
    arch = extractor.encoder.resolve(sub)
    assert result.encoder == "packed_conformer" and result.disk_bytes < full.disk_bytes
    conf = yaml.safe_load((result.directory / "config.yaml").read_text())["encoder_conf"]
    assert [b["heads"] for b in conf["block_archs"]] == [len(b.heads) for b in arch.blocks]
    assert any(0 in [b["heads"], *b["ffn_units"], b["conv_channels"]]
               for b in conf["block_archs"])  # a module removed outright
    s2t = Speech2Text(asr_train_config=result.directory / "config.yaml",
                      asr_model_file=result.directory / "model.pth", ctc_weight=1.0)
    speech, lengths = model_probe_input(extractor.model, seed=6)
    extractor.model.eval()
    with extractor.encoder.gated(extractor.space.validate(sub)):  # eval: hard gates as masks
        if sub.endswith("fp-p0.5"):
            gated, _ = extractor.model.encode(speech, lengths)
    with extractor.encoder.use_subsystem(sub):
        ref, _ = extractor.model.encode(speech, lengths)
    out, _ = s2t.asr_model.encode(speech, lengths)
    assert (out - ref).abs().max() <= 1e-5
    if sub.endswith("fp-p0.5"):
        assert (out - gated).abs().max() <= 1e-5
    n = sum(p.numel() for p in s2t.asr_model.encoder.parameters())
    assert n == extractor.encoder.num_params(arch) == round(float(
        extractor.encoder.pruning.expected_params(0.5, hard=True)))
    assert not math.isnan(result.compression)


def _pruning_model(**model_conf):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_allinone_model import FEAT_DIM, TOKENS, build

    torch.manual_seed(0)
    enc = ElasticConformerEncoder(
        FEAT_DIM, output_size=16, attention_heads=2, linear_units=32, num_blocks=2,
        input_layer="linear", depths=[1, 2], precisions=["int4", "fp"],
        quant_conf={"granularity": "channel"}, prune_targets=[0.5],
        prune_conf={"warmup_steps": 4}, dropout_rate=0.0, positional_dropout_rate=0.0)
    model = build(encoder=enc, sampling="sandwich", num_random=1, **model_conf)
    gen = torch.Generator().manual_seed(1)
    batch = {"speech": torch.randn(3, 30, FEAT_DIM, generator=gen),
             "speech_lengths": torch.tensor([30, 25, 20]),
             "text": torch.randint(2, len(TOKENS) - 1, (3, 4), generator=gen),
             "text_lengths": torch.tensor([4, 3, 2])}
    return model, batch


@pytest.mark.parametrize("teacher", ["self", "frozen"])
def test_training_step_runs_each_pruned_path_with_its_penalty_and_distillation(teacher):
    model, batch = _pruning_model(distill_weight=0.5, layer_distill_weight=1.0,
                                  layer_distill_teacher=teacher,
                                  valid_subsystems=["d2-w1-fp", "d2-w1-int4-p0.5"])
    assert [str(s) for s in model.pruned_paths] == ["d2-w1-fp-p0.5"]
    assert all(s.prune is None for s in model.sampler.pool)  # never drawn at random
    model.train()
    loss, stats, _ = model(**{k: v.clone() for k, v in batch.items()})
    loss.backward()
    sub = "d2-w1-fp-p0.5"
    for key in ("loss", "kl", "layer_distill", "expected_size", "target_size", "lambda1"):
        assert math.isfinite(float(stats[f"{key}_{sub}"])), key
    assert float(stats[f"target_size_{sub}"]) == pytest.approx(1 - 0.5 / 4)  # ramp step 1
    gates = model.encoder.pruning.gates["p0_5"]
    assert all(p.grad is not None for p in gates.parameters())
    assert model.encoder.pruning.lagrangians["p0_5"].lambda1.grad is not None
    model.eval()
    with torch.no_grad():
        _, stats, _ = model(**{k: v.clone() for k, v in batch.items()})
    assert "loss_d2-w1-int4-p0.5" in stats  # a pruned subsystem validates like the others


def test_layer_distillation_needs_pruning_targets_and_a_known_teacher():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_allinone_model import build

    with pytest.raises(ValueError, match="layer_distill_weight > 0 needs pruning targets"):
        build(layer_distill_weight=1.0)
    with pytest.raises(ValueError, match="layer_distill_teacher 'teacher'; valid: self, frozen"):
        _pruning_model(layer_distill_weight=1.0, layer_distill_teacher="teacher")


@torch.no_grad()
def test_the_pruned_architecture_is_fitted_to_the_target_size():
    """Whatever the gates' residual, the deterministic architecture has the target size
    to within one gated unit (here the gates alone would keep about 80%)."""
    enc = _pruned_encoder().eval()
    _scramble(enc)
    pruning = enc.pruning
    full = enc.num_params("d2-w1-fp")
    gates = pruning.gates["p0_5"]
    counted = sum(float(g.keep_prob().sum()) for g in gates._unit_gates())
    assert counted / sum(g.log_alpha.numel() for g in gates._unit_gates()) > 0.7
    size = enc.num_params("d2-w1-fp-p0.5")
    unit = max(max(c.attention[1], *(f[1] for f in c.ffn), c.conv[1]) for c in pruning.costs)
    assert abs(size - 0.5 * full) <= unit * pruning.gates["p0_5"].blocks[0].unit_group
    assert size == int(pruning.expected_params(Fraction(1, 2), hard=True))
    kept = enc.resolve("d2-w1-fp-p0.5")  # the units kept are those of largest logit
    heads = gates.blocks[0].heads
    on = set(kept.blocks[0].heads)
    if on and len(on) < heads.log_alpha.numel():
        off = [i for i in range(heads.log_alpha.numel()) if i not in on]
        assert min(heads.logits[list(on)]) >= max(heads.logits[off])


def test_pruned_paths_distil_only_after_the_start_step():
    """The pruned paths follow ``distill_start_steps`` like the sampled ones: no KL in
    their loss before it (it is logged), weight times the KL after it."""
    plain, batch = _pruning_model(distill_weight=0.0)
    delayed, _ = _pruning_model(distill_weight=0.5, distill_start_steps=1)
    delayed.load_state_dict(plain.state_dict())
    plain.train()
    delayed.train()
    sub = "d2-w1-fp-p0.5"
    for step in range(2):
        torch.manual_seed(step)  # the same gate samples in both models
        _, without, _ = plain(**{k: v.clone() for k, v in batch.items()})
        torch.manual_seed(step)
        _, stats, _ = delayed(**{k: v.clone() for k, v in batch.items()})
        assert float(stats[f"kl_{sub}"]) > 0  # logged from the first step
        weight = 0.0 if step == 0 else 0.5
        assert float(stats[f"loss_{sub}"]) == pytest.approx(
            float(without[f"loss_{sub}"]) + weight * float(stats[f"kl_{sub}"]), rel=1e-5)


def test_pruned_paths_train_at_every_precision_with_one_penalty_per_target():
    """``pruned_precisions: all``: each target also runs at the space's low-bit precisions
    (its int4 loss is that of the gated model at 4 bits, not the float one), the size
    penalty enters the loss once per target, and in the float warm-up every pruned
    path runs float under its own key."""
    model, batch = _pruning_model(pruned_precisions="all", layer_distill_weight=0.0)
    assert [str(s) for s in model.pruned_paths] == ["d2-w1-fp-p0.5", "d2-w1-int4-p0.5"]
    lagrangian = model.encoder.pruning.lagrangians["p0_5"]
    with torch.no_grad():  # non-zero multipliers: a visible penalty
        lagrangian.lambda1.fill_(0.5)
        lagrangian.lambda2.fill_(0.3)
    model.train()
    torch.manual_seed(0)
    _, stats, _ = model(**{k: v.clone() for k, v in batch.items()})

    def asr_loss(sub: str) -> float:
        ctc, att = float(stats[f"loss_ctc_{sub}"]), float(stats[f"loss_att_{sub}"])
        return model.ctc_weight * ctc + (1 - model.ctc_weight) * att

    fp, q = "d2-w1-fp-p0.5", "d2-w1-int4-p0.5"
    assert asr_loss(fp) != pytest.approx(asr_loss(q), rel=1e-4)  # the int4 path ran quantized
    penalty = float(stats[f"loss_{fp}"]) - asr_loss(fp)
    assert abs(penalty) > 1e-3
    assert float(stats[f"loss_{q}"]) == pytest.approx(asr_loss(q), rel=1e-5)  # no penalty

    warm, _ = _pruning_model(pruned_precisions="all", float_warmup_steps=1)
    ran = []
    gated = warm.encoder.gated
    warm.encoder.gated = lambda sub: ran.append(str(sub)) or gated(sub)
    warm.train()
    _, wstats, _ = warm(**{k: v.clone() for k, v in batch.items()})
    assert ran == ["d2-w1-fp-p0.5", "d2-w1-fp-p0.5"]  # the int4 path ran its float twin
    assert "loss_d2-w1-int4-p0.5" in wstats  # under its own key
    warm(**{k: v.clone() for k, v in batch.items()})
    assert ran[2:] == ["d2-w1-fp-p0.5", "d2-w1-int4-p0.5"]  # after the warm-up: 4 bits


def test_pruned_precisions_must_be_a_known_choice():
    with pytest.raises(ValueError, match="pruned_precisions 'int4'; valid: float, all"):
        _pruning_model(pruned_precisions="int4")
