"""BatchNorm statistics calibrated per subsystem at extraction.

The statistics a calibration leaves must be the cumulative average of the
per-utterance batch statistics (a direct computation), an extracted
subsystem must equal the all-in-one model run with those statistics (loaded
by ESPnet's own Speech2Text), and the all-in-one model must get its own
statistics back afterwards.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
import torch
import yaml
from helpers.toy_experiment import (
    DEFAULT_ENCODER_CONF,
    write_toy_experiment,
)

from espnet_allinone.bin import extract as extract_cli
from espnet_allinone.encoders.switching import model_probe_input
from espnet_allinone.export.calibration import (
    CalibrationData,
    CalibrationError,
    batch_norms,
    calibrate,
    kept_statistics,
)
from espnet_allinone.export.extract import Extractor

NUM_UTTS = 5


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A Kaldi-style data dir of short noisy tones of different lengths."""
    root = tmp_path_factory.mktemp("calib")
    rng = np.random.default_rng(0)
    lines = []
    for i in range(NUM_UTTS):
        n = 8000 + 2400 * i
        t = np.arange(n) / 16000
        wave = 0.3 * np.sin(2 * np.pi * (200 + 90 * i) * t) + 0.05 * rng.normal(size=n)
        path = root / f"utt{i}.wav"
        soundfile.write(path, wave.astype(np.float32), 16000)
        lines.append(f"utt{i} {path}")
    (root / "data").mkdir()
    (root / "data" / "wav.scp").write_text("\n".join(lines) + "\n")
    return root / "data"


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("calib_toy")
    return write_toy_experiment(root / "aio")


def _stats(model: torch.nn.Module) -> list[torch.Tensor]:
    return [b.clone() for n in batch_norms(model) for _, b in n.named_buffers(recurse=False)]


@pytest.mark.parametrize("sub", ["d4-w1-fp", "d2-w0.5-int2"])
@torch.no_grad()
def test_calibrated_statistics_are_pooled_over_every_frame(toy, data_dir, sub):
    """Each BatchNorm's running mean/variance after calibration = the mean and unbiased
    variance of its input over every frame of the calibration utterances (run one at a
    time, each normalised with its own statistics, as calibration runs them); the
    count = the utterances. Not the average of per-utterance variances, which would
    miss the spread between the utterances' means."""
    extractor = Extractor(toy["config"], toy["model"])
    model, data = extractor.model, CalibrationData.from_data_dir(data_dir, NUM_UTTS)
    norms = batch_norms(model.encoder)
    seen: dict[int, list[torch.Tensor]] = {id(n): [] for n in norms}

    def record(norm, inputs, _out):
        seen[id(norm)].append(inputs[0].transpose(0, 1).reshape(inputs[0].shape[1], -1))

    with extractor.encoder.use_subsystem(sub), kept_statistics(model.encoder):
        model.eval()
        for norm in norms:
            norm.train()  # batch statistics, as calibration runs them
        hooks = [n.register_forward_hook(record) for n in norms]
        for wave in data.speech():
            speech = torch.as_tensor(wave)[None]
            model.encode(speech, torch.tensor([speech.shape[1]]))
        for hook in hooks:
            hook.remove()
        assert calibrate(model, data) == len(norms)
        ran = [n for n in norms if seen[id(n)]]
        assert len(ran) == int(sub[1])  # one conv module per active block
        for norm in ran:
            frames = torch.cat(seen[id(norm)], dim=1).double()
            mean, var, count = norm.active_stats()
            assert int(count) == NUM_UTTS
            assert torch.allclose(mean.double(), frames.mean(1), atol=1e-5)
            assert torch.allclose(var.double(), frames.var(1, unbiased=True), rtol=1e-4,
                                  atol=1e-5)
            within = torch.stack([f.double().var(1) for f in seen[id(norm)]]).mean(0)
            assert (var.double() - within).abs().max() > 1e-3  # not the per-utterance average
        assert not model.training and all(not n.training for n in norms)


@pytest.mark.parametrize("sub", ["d4-w1-fp", "d4-w1-int4", "d2-w0.5-int2"])
@torch.no_grad()
def test_extracted_subsystem_equals_the_allinone_model_with_its_own_statistics(
        toy, data_dir, tmp_path, sub):
    from espnet2.bin.asr_inference import Speech2Text

    data = CalibrationData.from_data_dir(data_dir, NUM_UTTS)
    extractor = Extractor(toy["config"], toy["model"], calibration=data)
    before = _stats(extractor.model)
    result = extractor.extract(sub, tmp_path / "out")
    assert all(torch.equal(a, b) for a, b in zip(before, _stats(extractor.model)))
    info = yaml.safe_load((result.directory / "extract_info.yaml").read_text())
    assert info["calibration"] == {"data": str(data_dir), "utterances": NUM_UTTS}

    s2t = Speech2Text(asr_train_config=result.directory / "config.yaml",
                      asr_model_file=result.directory / "model.pth", ctc_weight=1.0)
    speech, lengths = model_probe_input(extractor.model, seed=5)
    model = extractor.model
    with extractor.encoder.use_subsystem(sub), kept_statistics(model.encoder):
        stored, _ = model.encode(speech, lengths)
        calibrate(model, data)
        ref, _ = model.encode(speech, lengths)
    out, _ = s2t.asr_model.encode(speech, lengths)
    assert (out - ref).abs().max() <= 1e-5
    assert (out - stored).abs().max() > 1e-3  # the statistics did change


@pytest.mark.parametrize(("conf", "sub"), [
    (dict(DEFAULT_ENCODER_CONF, num_blocks=6, seed_blocks=2, depths=[2, 4, 6],
          precisions=["int4", "fp"]), "d6-w1-int4"),
    (dict(DEFAULT_ENCODER_CONF, depths=[4], widths=[1], precisions=["int4", "fp"],
          elastic_conv=False, quant_conf={"granularity": "channel"}, prune_targets=[0.5]),
     "d4-w1-int4-p0.5"),
], ids=["unfolded", "pruned"])
@torch.no_grad()
def test_unfolded_and_pruned_subsystems_extract_exactly_with_calibrated_statistics(
        data_dir, tmp_path, conf, sub):
    """Every position of an unfolded seed and a pruned channel set gets statistics of
    its own; the extractor's check against the all-in-one model (1e-4) passes."""
    from espnet2.bin.asr_inference import Speech2Text

    paths = write_toy_experiment(tmp_path / "aio", encoder_conf=conf)
    plain = Extractor(paths["config"], paths["model"]).extract(sub, tmp_path / "plain")
    calibrated = Extractor(paths["config"], paths["model"],
                           calibration=CalibrationData.from_data_dir(data_dir, 3))
    result = calibrated.extract(sub, tmp_path / "calibrated")
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-4
    speech, lengths = model_probe_input(calibrated.model, seed=1)
    outs = []
    for directory in (plain.directory, result.directory):
        s2t = Speech2Text(asr_train_config=directory / "config.yaml",
                          asr_model_file=directory / "model.pth", ctc_weight=1.0)
        outs.append(s2t.asr_model.encode(speech, lengths)[0])
    assert (outs[0] - outs[1]).abs().max() > 1e-3


def test_the_draw_is_fixed_and_a_larger_count_uses_every_utterance(data_dir):
    said: list[str] = []
    assert CalibrationData.from_data_dir(data_dir, 3) == CalibrationData.from_data_dir(data_dir, 3)
    everything = CalibrationData.from_data_dir(data_dir, 50, log=said.append)
    assert everything.utterances == tuple(f"utt{i}" for i in range(NUM_UTTS))
    assert said == [(f"calibration: 50 utterances asked for, {data_dir} has {NUM_UTTS}: "
                    f"using all {NUM_UTTS}")]


@pytest.mark.parametrize("count", [0, -3])
def test_a_count_below_one_is_refused(data_dir, count):
    with pytest.raises(CalibrationError, match=f"must be a whole number >= 1, got {count}"):
        CalibrationData.from_data_dir(data_dir, count)


def test_cli_names_missing_calibration_data_and_writes_nothing(toy, tmp_path, capsys):
    missing = tmp_path / "no_such_dir"
    code = extract_cli.main([
        "--asr_train_config", str(toy["config"]), "--asr_model_file", str(toy["model"]),
        "--subsystems", "d2-w0.5-int2", "--outdir", str(tmp_path / "out"),
        "--calibration_data", str(missing)])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"calibration data {missing} has no wav.scp" in err
    assert not (tmp_path / "out").exists()
    code = extract_cli.main([
        "--asr_train_config", str(toy["config"]), "--asr_model_file", str(toy["model"]),
        "--subsystems", "d2-w0.5-int2", "--outdir", str(tmp_path / "out"),
        "--calibration_data", str(tmp_path), "--calibration_utts", "0"])
    assert code == 2 and "got 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
