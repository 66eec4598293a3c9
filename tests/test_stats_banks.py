"""BatchNorm statistics banks per subsystem (``encoder_conf.stats_banks: true``).

A training-mode forward at one subsystem moves only its own bank (by exactly
torch's momentum rule) and the shared statistics (exactly as without banks);
eval normalises each subsystem with its own bank and records outside the grid
with the shared statistics; an extracted subsystem (fp, int4, int2, unfolded)
loaded by ESPnet's own Speech2Text equals the all-in-one model in eval mode;
checkpoints without banks load; weights train bit-identically with and
without banks.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import soundfile
import torch
import torch.nn.functional as F
import yaml
from espnet2.asr.ctc import CTC
from espnet2.layers.utterance_mvn import UtteranceMVN
from helpers.toy_experiment import DEFAULT_ENCODER_CONF, write_toy_experiment

from espnet_allinone.arch import SubnetArch
from espnet_allinone.encoders.elastic_conformer import ElasticConformerEncoder
from espnet_allinone.encoders.stats_banks import StatsBankError, bank_tag, depth_free
from espnet_allinone.encoders.switching import model_probe_input
from espnet_allinone.errors import AllInOneError
from espnet_allinone.export.calibration import (
    CalibrationData,
    calibrate,
    kept_statistics,
)
from espnet_allinone.export.extract import Extractor
from espnet_allinone.models.allinone import ESPnetAllInOneASRModel
from espnet_allinone.subsystem import Subsystem

IDIM = 20
CONF = {"output_size": 16, "attention_heads": 4, "linear_units": 32, "num_blocks": 2,
        "cnn_module_kernel": 3, "input_layer": "linear", "rel_pos_type": "latest",
        "depths": [1, 2], "widths": [0.5, 1], "precisions": ["int2", "int4", "fp"],
        "elastic_conv": True, "quant_conf": {"granularity": "channel"},
        "dropout_rate": 0.0, "positional_dropout_rate": 0.0,
        "attention_dropout_rate": 0.0}
STATS = ("running_mean", "running_var", "num_batches_tracked")


def _encoder(seed: int = 0, **conf) -> ElasticConformerEncoder:
    torch.manual_seed(seed)
    return ElasticConformerEncoder(IDIM, **{**CONF, **conf})


def _inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(3, 30, IDIM, generator=gen) * 2 + 1, torch.tensor([30, 24, 17])


def _norms(encoder) -> list:
    return [b.conv_module.norm for b in encoder.blocks]


def _buffers(encoder) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in encoder.state_dict().items()
            if k.rsplit(".", 1)[-1].startswith(STATS)}


@torch.no_grad()
def _distinct_banks(encoder, seed: int = 7) -> None:
    """Every statistics bank different (as after training different paths)."""
    gen = torch.Generator().manual_seed(seed)
    for norm in _norms(encoder):
        for name, buf in norm.named_buffers(recurse=False):
            if name.startswith("running_mean"):
                buf.copy_(torch.randn(buf.shape, generator=gen))
            elif name.startswith("running_var"):
                buf.copy_(torch.rand(buf.shape, generator=gen) + 0.5)


# --- the option ---------------------------------------------------------------------
def test_banks_are_named_like_the_subsystems_and_off_by_default():
    off, on = _encoder(), _encoder(stats_banks=True)
    assert not off.stats_banks and on.stats_banks
    assert set(on.state_dict()) - set(off.state_dict()) == {
        f"encoders.{b}.conv_module.norm.{stat}_w{w}_{p}" for b in (0, 1) for stat in STATS
        for w in ("0p5", "1") for p in ("int2", "int4", "fp")}
    assert on.stats_bank("d1-w0.5-int4") == on.stats_bank("d2-w0.5-int4") == "w0p5_int4"
    norm = on.blocks[0].conv_module.norm
    assert norm.running_mean_w0p5_fp.shape == (8,) and norm.running_mean_w1_fp.shape == (16,)


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_a_non_boolean_setting_is_refused_by_value(value):
    with pytest.raises(StatsBankError, match=f"stats_banks must be true or false, got {value!r}"):
        _encoder(stats_banks=value)
    assert issubclass(StatsBankError, AllInOneError)


def test_banks_without_a_batchnorm_are_refused():
    with pytest.raises(StatsBankError, match="no BatchNorm in its blocks.*use_cnn_module: true"):
        _encoder(stats_banks=True, use_cnn_module=False, elastic_conv=False)


def test_depth_has_a_bank_only_where_a_block_input_moves_with_depth():
    """Stacked and ``unfold: repeat`` schedules are prefixes of the deepest one (no depth
    in the tag); ``blockwise`` moves a seed block's positions with the depth."""
    stacked = _encoder(stats_banks=True)
    assert depth_free(stacked.space, None, "repeat")
    repeat = _encoder(stats_banks=True, num_blocks=4, seed_blocks=2, depths=[2, 4])
    assert repeat.stats_bank("d2-w1-fp") == repeat.stats_bank("d4-w1-fp") == "w1_fp"
    blockwise = _encoder(stats_banks=True, num_blocks=4, seed_blocks=2, depths=[2, 4],
                         unfold="blockwise")
    assert not depth_free(blockwise.space, 2, "blockwise")
    assert blockwise.stats_bank("d2-w1-fp") == "d2_w1_fp"
    assert blockwise.stats_bank("d4-w1-fp") == "d4_w1_fp"
    assert bank_tag(Subsystem.parse("d4-w0.25-int8"), True) == "d4_w0p25_int8"
    norm = blockwise.blocks[1].conv_module.norm  # 2 positions per seed block at depth 4
    assert {"running_mean_d4_w1_fp_r1", "running_mean_d2_w1_fp_r1"} <= set(norm.state_dict())


# --- training and eval -----------------------------------------------------------------
@torch.no_grad()
def test_training_moves_only_the_active_bank_by_the_momentum_rule():
    on, off = _encoder(stats_banks=True), _encoder()
    _distinct_banks(on)
    off.load_state_dict({k: v for k, v in on.state_dict().items() if k in off.state_dict()})
    seen: dict[int, torch.Tensor] = {}
    norm = _norms(on)[0]
    norm.register_forward_pre_hook(lambda m, args: seen.__setitem__(0, args[0].clone()))
    before = _buffers(on)
    xs, lens = _inputs()
    on.train(), off.train()
    with on.use_subsystem("d2-w0.5-int4"), off.use_subsystem("d2-w0.5-int4"):
        on(xs, lens)
        off(xs, lens)
    after = _buffers(on)
    changed = {k.split(".", 1)[1] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {f"{b}.conv_module.norm.{stat}{suffix}" for b in (0, 1)
                       for stat in STATS for suffix in ("_c8", "_w0p5_int4")}
    # the shared statistics move exactly as without banks
    shared = _buffers(off)
    assert all(torch.equal(after[k], shared[k]) for k in shared)
    # the bank: torch's momentum update from the batch mean and unbiased variance
    x = seen[0].double()
    momentum = norm.momentum
    old = "encoders.0.conv_module.norm.{}_w0p5_int4"
    torch.testing.assert_close(
        after[old.format("running_mean")].double(),
        (1 - momentum) * before[old.format("running_mean")].double()
        + momentum * x.mean((0, 2)), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(
        after[old.format("running_var")].double(),
        (1 - momentum) * before[old.format("running_var")].double()
        + momentum * x.var((0, 2), unbiased=True), rtol=1e-6, atol=1e-6)
    assert int(after[old.format("num_batches_tracked")]) == 1


@torch.no_grad()
def test_eval_normalises_each_subsystem_with_its_own_bank():
    on = _encoder(stats_banks=True)
    _distinct_banks(on)
    on.eval()
    norm = _norms(on)[1]
    seen: dict[str, torch.Tensor] = {}
    norm.register_forward_hook(
        lambda m, args, out: seen.update(x=args[0].clone(), out=out.clone()))
    xs, lens = _inputs()
    outputs = {}
    for sub in ("d2-w1-fp", "d2-w1-int4", "d2-w0.5-int2"):
        with on.use_subsystem(sub):
            outputs[sub] = on(xs, lens)[0]
            tag, k = on.stats_bank(sub), norm.active_channels
        mean, var = getattr(norm, f"running_mean_{tag}"), getattr(norm, f"running_var_{tag}")
        expected = F.batch_norm(seen["x"], mean, var, norm.weight[:k], norm.bias[:k],
                                False, 0.0, norm.eps)
        torch.testing.assert_close(seen["out"], expected, rtol=0, atol=0)
    assert (outputs["d2-w1-fp"] - outputs["d2-w1-int4"]).abs().max() > 1e-3


@torch.no_grad()
def test_records_outside_the_grid_use_and_update_only_the_shared_statistics():
    """A mixed record (blocks at different precisions) has no bank: eval normalises with
    the shared statistics, training moves them and no bank."""
    on = _encoder(stats_banks=True)
    _distinct_banks(on)
    uniform = on.resolve("d2-w1-int4")
    mixed = SubnetArch((uniform.blocks[0], dataclasses.replace(uniform.blocks[1], bits=32)),
                       uniform.front_bits, uniform.output_bits)
    assert on.stats_bank(mixed) is None
    assert on.stats_bank(SubnetArch(uniform.blocks, uniform.front_bits,
                                    uniform.output_bits)) == "w1_int4"  # equal, not same
    norm = _norms(on)[1]
    seen: dict[str, torch.Tensor] = {}
    norm.register_forward_hook(
        lambda m, args, out: seen.update(x=args[0].clone(), out=out.clone()))
    xs, lens = _inputs()
    on.eval()
    with on.use_arch(mixed):
        on(xs, lens)
    expected = F.batch_norm(seen["x"], norm.running_mean, norm.running_var, norm.weight,
                            norm.bias, False, 0.0, norm.eps)
    torch.testing.assert_close(seen["out"], expected, rtol=0, atol=0)
    before = _buffers(on)
    on.train()
    with on.use_arch(mixed):
        on(xs, lens)
    after = _buffers(on)
    changed = {k.rsplit(".", 1)[1] for k in before if not torch.equal(before[k], after[k])}
    assert changed == set(STATS)


@torch.no_grad()
def test_a_pruned_training_path_uses_only_the_shared_statistics():
    on = _encoder(stats_banks=True, depths=[2], widths=[1], precisions=["int4", "fp"],
                  elastic_conv=False, prune_targets=[0.5])
    _distinct_banks(on)
    before = _buffers(on)
    on.train()
    with on.gated(Subsystem.parse("d2-w1-int4-p0.5")):
        on(*_inputs())
    after = _buffers(on)
    changed = {k.rsplit(".", 1)[1] for k in before if not torch.equal(before[k], after[k])}
    assert changed == set(STATS)
    assert all(n.bank == "w1_fp" for n in _norms(on))  # the largest comes back


@torch.no_grad()
def test_reordering_units_moves_the_full_width_banks_with_the_channels():
    on = _encoder(stats_banks=True)
    _distinct_banks(on)
    on.eval()
    xs, lens = _inputs()
    with on.use_subsystem("d2-w1-int4"):
        before = on(xs, lens)[0]
    on.reorder_by_importance()
    with on.use_subsystem("d2-w1-int4"):
        after = on(xs, lens)[0]
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    norm = _norms(on)[0]
    assert int(norm.num_batches_tracked_w0p5_int4) == 0  # narrower banks no longer apply
    assert torch.equal(norm.running_var_w0p5_int4, torch.ones(8))


# --- checkpoints --------------------------------------------------------------------------
def _roundtrip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@torch.no_grad()
def test_a_checkpoint_without_banks_loads_unchanged_with_and_without_banks():
    source = _encoder(seed=3)
    _distinct_banks(source)
    state = _roundtrip(source.state_dict())
    assert not any("_w0p5_" in k or "_w1_" in k for k in state)
    plain = _encoder()
    plain.load_state_dict(state, strict=True)
    assert all(torch.equal(v, state[k]) for k, v in plain.state_dict().items())
    banked = _encoder(stats_banks=True)
    banked.load_state_dict(state, strict=True)  # each bank starts from the shared ones
    norm = _norms(banked)[0]
    assert torch.equal(norm.running_mean_w0p5_int2, norm.running_mean_c8)
    assert torch.equal(norm.running_var_w1_fp, norm.running_var)
    source.eval(), banked.eval()
    xs, lens = _inputs()
    for sub in ("d2-w1-fp", "d1-w0.5-int2"):
        with source.use_subsystem(sub), banked.use_subsystem(sub):
            assert torch.equal(source(xs, lens)[0], banked(xs, lens)[0])
    again = _encoder(stats_banks=True)
    again.load_state_dict(_roundtrip(banked.state_dict()), strict=True)
    assert all(torch.equal(v, banked.state_dict()[k]) for k, v in again.state_dict().items())


# --- validation and training of the model ------------------------------------------------
TOKENS = ["<blank>", "<unk>", "a", "b", "c", "d", "<sos/eos>"]


def _model(stats_banks: bool, seed: int = 0) -> ESPnetAllInOneASRModel:
    torch.manual_seed(seed)
    encoder = ElasticConformerEncoder(IDIM, stats_banks=stats_banks, **CONF)
    vocab = len(TOKENS)
    return ESPnetAllInOneASRModel(
        vocab_size=vocab, token_list=list(TOKENS), frontend=None, specaug=None,
        normalize=UtteranceMVN(), preencoder=None, encoder=encoder, postencoder=None,
        decoder=None, ctc=CTC(odim=vocab, encoder_output_size=encoder.output_size()),
        joint_network=None, ctc_weight=1.0, sampling="sandwich",
        valid_subsystems=["d2-w1-fp", "d1-w0.5-int2"])


def _batch(seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    text = torch.randint(2, 6, (3, 4), generator=gen)
    text[1, 3:] = -1
    text[2, 2:] = -1
    return {"speech": torch.randn(3, 30, IDIM, generator=gen),
            "speech_lengths": torch.tensor([30, 24, 17]), "text": text,
            "text_lengths": torch.tensor([4, 3, 2])}


def test_weights_train_bit_identically_with_and_without_banks():
    """Two optimiser steps of the multi-path model: the same parameters and shared
    statistics to the bit (running statistics never enter a training forward)."""
    runs = {}
    for banks in (False, True):
        model = _model(banks)
        model.train()
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
        for step in range(2):
            optimiser.zero_grad()
            loss, _, _ = model(**_batch(step))
            loss.backward()
            optimiser.step()
        runs[banks] = model.state_dict()
    assert set(runs[False]) < set(runs[True])
    assert all(torch.equal(v, runs[True][k]) for k, v in runs[False].items())
    banks = {k: v for k, v in runs[True].items() if k.endswith("num_batches_tracked_w1_fp")}
    assert banks and all(int(v) >= 2 for v in banks.values())  # the largest ran each step


@torch.no_grad()
def test_validation_scores_each_subsystem_with_its_own_bank():
    model = _model(True)
    _distinct_banks(model.encoder)
    model.eval()
    base = model(**_batch(5))[1]  # a fresh batch each call: the model edits text in place
    tag = model.encoder.stats_bank("d1-w0.5-int2")
    norm = _norms(model.encoder)[0]
    getattr(norm, f"running_var_{tag}").mul_(4.0)
    moved = model(**_batch(5))[1]
    assert torch.equal(moved["loss_d2-w1-fp"], base["loss_d2-w1-fp"])
    assert not torch.equal(moved["loss_d1-w0.5-int2"], base["loss_d1-w0.5-int2"])


# --- extraction ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def banked_toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("banks_toy")
    return write_toy_experiment(root / "aio", encoder_conf=dict(DEFAULT_ENCODER_CONF,
                                                                stats_banks=True))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("banks_calib")
    rng = np.random.default_rng(0)
    lines = []
    for i in range(2):
        path = root / f"utt{i}.wav"
        soundfile.write(path, (0.2 * rng.normal(size=8000 + 1600 * i)).astype(np.float32),
                        16000)
        lines.append(f"utt{i} {path}")
    (root / "wav.scp").write_text("\n".join(lines) + "\n")
    return root


def _speech2text_output(directory, speech, lengths) -> torch.Tensor:
    from espnet2.bin.asr_inference import Speech2Text

    s2t = Speech2Text(asr_train_config=directory / "config.yaml",
                      asr_model_file=directory / "model.pth", ctc_weight=1.0)
    return s2t.asr_model.encode(speech, lengths)[0]


@pytest.mark.parametrize("sub", ["d4-w1-fp", "d4-w1-int4", "d2-w0.5-int2"])
@torch.no_grad()
def test_extracted_subsystem_equals_the_allinone_model_with_its_bank(banked_toy, tmp_path, sub):
    extractor = Extractor(banked_toy["config"], banked_toy["model"])
    result = extractor.extract(sub, tmp_path / "out")
    tag = extractor.encoder.stats_bank(sub)
    info = yaml.safe_load((result.directory / "extract_info.yaml").read_text())
    assert info["statistics_bank"] == tag == bank_tag(Subsystem.parse(sub), False)
    speech, lengths = model_probe_input(extractor.model, seed=5)
    model = extractor.model
    model.eval()
    with extractor.encoder.use_subsystem(sub):
        ref = model.encode(speech, lengths)[0]
        with extractor.encoder.shared_statistics():
            shared = model.encode(speech, lengths)[0]
    out = _speech2text_output(result.directory, speech, lengths)
    assert (out - ref).abs().max() <= 1e-5
    assert (out - shared).abs().max() > 1e-3  # the bank, not the shared statistics


@torch.no_grad()
def test_an_unfolded_subsystem_extracts_with_its_bank_at_every_position(tmp_path):
    conf = dict(DEFAULT_ENCODER_CONF, num_blocks=6, seed_blocks=2, depths=[2, 4, 6],
                precisions=["int4", "fp"], stats_banks=True)
    paths = write_toy_experiment(tmp_path / "aio", encoder_conf=conf)
    extractor = Extractor(paths["config"], paths["model"])
    norm = extractor.encoder.blocks[0].conv_module.norm
    assert not torch.equal(norm.running_mean_w1_int4, norm.running_mean_w1_int4_r2)
    sub = "d6-w1-int4"
    result = extractor.extract(sub, tmp_path / "out")
    speech, lengths = model_probe_input(extractor.model, seed=2)
    extractor.model.eval()
    with extractor.encoder.use_subsystem(sub):
        ref = extractor.model.encode(speech, lengths)[0]
    out = _speech2text_output(result.directory, speech, lengths)
    assert (out - ref).abs().max() <= 1e-5


@torch.no_grad()
def test_calibration_still_overrides_the_bank(banked_toy, data_dir, tmp_path):
    data = CalibrationData.from_data_dir(data_dir, 2)
    extractor = Extractor(banked_toy["config"], banked_toy["model"], calibration=data)
    sub = "d2-w0.5-int4"
    result = extractor.extract(sub, tmp_path / "out")
    info = yaml.safe_load((result.directory / "extract_info.yaml").read_text())
    assert "statistics_bank" not in info and info["calibration"]["utterances"] == 2
    model = extractor.model
    speech, lengths = model_probe_input(model, seed=3)
    with extractor.encoder.use_subsystem(sub), kept_statistics(model.encoder):
        banked = model.encode(speech, lengths)[0]
        calibrate(model, data)  # writes the subsystem's bank
        ref = model.encode(speech, lengths)[0]
    out = _speech2text_output(result.directory, speech, lengths)
    assert (out - ref).abs().max() <= 1e-5
    assert (out - banked).abs().max() > 1e-3
