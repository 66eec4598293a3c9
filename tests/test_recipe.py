"""The egs2 stage script on the default recipe: stages, logs, and its refusals.

The default run covers stages 1-5 and every error path in seconds; the full
tiny run through training, extraction, decoding, scoring and the report
imports ESPnet in several processes (minutes).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "egs2" / "espeak_synth" / "allinone1"
TINY_DATA = "--num_train 36 --num_dev 6 --num_test 4 --num_test_unseen 3 --seed 0 --nj 2"


RUN_OUTPUTS = ("exp", "dump", "data", "downloads")
"""What a recipe run writes into its folder (the recipes' .gitignore): never copied."""


def copy_recipe(src: Path, dst: Path) -> Path:
    """A private copy of the recipe's own files (symlinks resolved), so runs do not touch
    the repository and nothing an earlier run left there (``RUN_OUTPUTS``) comes along."""

    def run_outputs(folder: str, names: list[str]) -> list[str]:
        return [n for n in names if Path(folder) == src and n in RUN_OUTPUTS]

    shutil.copytree(src, dst, symlinks=False, ignore=run_outputs)
    return dst


def test_recipe_copy_leaves_out_what_a_run_made(tmp_path):
    """A copy made after the main job ran holds none of its outputs, only the recipe."""
    recipe = copy_recipe(RECIPE, tmp_path / "ran")
    for name in RUN_OUTPUTS:
        (recipe / name / "sub").mkdir(parents=True)
        (recipe / name / "sub" / "file").write_text("a run's output")
    (recipe / "conf" / "data").mkdir()  # a recipe's own folder of that name is kept
    copy = copy_recipe(recipe, tmp_path / "copy")
    assert not [name for name in RUN_OUTPUTS if (copy / name).exists()]
    assert (copy / "conf" / "data").is_dir()
    assert sorted(p.name for p in copy.iterdir()) == sorted(
        p.name for p in recipe.iterdir() if p.name not in RUN_OUTPUTS)
    assert (copy / "run.sh").read_text() == (RECIPE / "run.sh").read_text()


def run(recipe: Path, *args: str, env: dict | None = None, timeout: int = 900,
        script: str = "./run.sh") -> subprocess.CompletedProcess:
    """Run a recipe script; stdout and stderr together in ``.stdout``."""
    full_env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
                **(env or {})}
    return subprocess.run([script, *args], cwd=recipe, env=full_env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout, check=False)


def tiny_config(recipe: Path, name: str = "train_tiny.yaml", **top) -> str:
    """The default config shrunk to seconds: 2 blocks of d=32, space d{1,2} x w{0.5,1} x {int4,fp}."""
    conf = yaml.safe_load((recipe / "conf" / "train_allinone.yaml").read_text())
    conf["encoder_conf"].update(
        output_size=32, attention_heads=2, linear_units=64, num_blocks=2, cnn_module_kernel=7,
        depths=[1, 2], widths=[0.5, 1.0], precisions=["int4", "fp"],
        quant_conf={"granularity": "channel"})
    conf["model_conf"].update(valid_subsystems=["d2-w1-fp", "d1-w0.5-int4"],
                              float_warmup_steps=2)  # of the tiny run's few updates
    conf.update({"max_epoch": 1, "keep_nbest_models": 1, "batch_bins": 400000,
                 "num_workers": 0, "best_model_criterion": [["valid", "loss", "min"]],
                 "scheduler_conf": {"warmup_steps": 5}, **top})
    (recipe / "conf" / name).write_text(yaml.safe_dump(conf, sort_keys=False))
    return f"conf/{name}"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default recipe after stages 1-5 on a tiny corpus."""
    recipe = copy_recipe(RECIPE, tmp_path_factory.mktemp("recipe") / "allinone1")
    config = tiny_config(recipe)
    res = run(recipe, "--stop_stage", "5", "--train_config", config,
              "--local_data_opts", TINY_DATA)
    assert res.returncode == 0, res.stdout[-6000:]
    return recipe


def test_data_stages_make_dump_and_token_list(prepared: Path) -> None:
    for dset, n in (("train", 36), ("dev", 6), ("test", 4)):
        assert len((prepared / "data" / dset / "text").read_text().splitlines()) == n
        scp = (prepared / "dump" / "raw" / dset / "wav.scp").read_text().splitlines()
        assert len(scp) == n and all(Path(line.split()[1]).is_file() for line in scp)
        samples = (prepared / "dump" / "raw" / dset / "utt2num_samples").read_text().split()
        assert all(16000 * 0.3 < int(s) < 16000 * 8 for s in samples[1::2])
    tokens = (prepared / "data" / "en_token_list" / "char" / "tokens.txt").read_text().split()
    assert tokens[:2] == ["<blank>", "<unk>"] and tokens[-1] == "<sos/eos>"
    assert "<space>" in tokens and {"E", "T"} <= set(tokens)
    logs = prepared / "exp" / "asr_train_tiny" / "logs"
    for name in ("stage1_data_prep", "stage3_format", "stage4_filter", "stage5_token_list"):
        assert (logs / f"{name}.log").stat().st_size > 0, name
    assert "kept 36 of 36" in (logs / "stage4_filter.log").read_text()


def test_stage_before_its_inputs_names_the_missing_file(prepared: Path) -> None:
    config = "conf/train_tiny.yaml"
    res = run(prepared, "--stage", "11", "--stop_stage", "11", "--train_config", config)
    assert res.returncode != 0
    assert ("stage 11 needs exp/asr_train_tiny/stats/train/feats_stats.npz, which stage 10 "
            "makes") in res.stdout
    res = run(prepared, "--stage", "13", "--stop_stage", "13", "--train_config", config,
              "--subsystems", "d1-w0.5-int4")
    assert "stage 13 needs exp/asr_train_tiny/extracted/d1-w0.5-int4/config.yaml, which " \
           "stage 12 makes" in res.stdout
    assert "stage13_decode.log" in res.stdout  # the failing stage's log is named
    res = run(prepared, "--stage", "12", "--stop_stage", "12", "--train_config", config)
    assert "stage 12 needs exp/asr_train_tiny/config.yaml, which stage 11 makes" in res.stdout
    res = run(prepared, "--stage", "16", "--stop_stage", "16", "--train_config", config)
    assert "scores.json, which stage 14 makes" in res.stdout


def test_bad_options_and_subsystems_are_refused(prepared: Path) -> None:
    config = "conf/train_tiny.yaml"
    res = run(prepared, "--stage", "5", "--stop_stage", "5", "--train_config", config,
              "--subsystems", "d3-w1-fp,d2-w1-int8")
    assert res.returncode != 0
    assert "depth 3 (valid: 1, 2)" in res.stdout
    res = run(prepared, "--stop_stage", "5", "--train_config", config, "--subsystems", "d3-w2")
    assert "malformed subsystem" in res.stdout
    res = run(prepared, "--train_config", config, "--nbest_typo", "3")
    assert "unknown option --nbest_typo" in res.stdout and "inference_nj" in res.stdout
    res = run(prepared, "--train_config", "conf/missing.yaml")
    assert "--train_config conf/missing.yaml does not exist" in res.stdout
    res = run(prepared, "--train_config", config, "--token_type", "word")
    assert "--token_type must be bpe or char, got 'word'" in res.stdout


def test_expdir_from_another_config_is_refused(prepared: Path, tmp_path: Path) -> None:
    # Same name (so same asr_exp), different content: refused, naming the difference.
    other = tiny_config(prepared, "other.yaml", max_epoch=3)
    res = run(prepared, "--stage", "5", "--stop_stage", "5", "--train_config", other,
              "--asr_tag", "train_tiny")
    assert res.returncode != 0
    assert "exp/asr_train_tiny was made with a different configuration" in res.stdout
    assert "train_config.max_epoch: 1 then, 3 now" in res.stdout
    res = run(prepared, "--stage", "5", "--stop_stage", "5",
              "--train_config", "conf/train_tiny.yaml", "--token_type", "bpe")
    assert "options.token_type: 'char' then, 'bpe' now" in res.stdout
    foreign = tmp_path / "foreign"
    (foreign / "asr_train_tiny").mkdir(parents=True)
    (foreign / "asr_train_tiny" / "model.pth").write_text("x")
    res = run(prepared, "--stage", "5", "--stop_stage", "5",
              "--train_config", "conf/train_tiny.yaml", "--expdir", str(foreign))
    assert "is not empty and has no recipe_config.json" in res.stdout


def test_missing_corpus_paths_are_named(tmp_path: Path) -> None:
    libri = copy_recipe(REPO / "egs2" / "librispeech_100" / "allinone1", tmp_path / "libri")
    res = run(libri, script="local/data.sh", env={"LIBRISPEECH": ""})
    assert res.returncode != 0 and "LIBRISPEECH is not set" in res.stdout
    res = run(libri, "--stop_stage", "1", env={"LIBRISPEECH": str(tmp_path / "nowhere")})
    assert res.returncode != 0
    assert f"LibriSpeech root {tmp_path / 'nowhere'} does not exist" in res.stdout
    assert "db.sh" in res.stdout
    swbd = copy_recipe(REPO / "egs2" / "swbd" / "allinone1", tmp_path / "swbd")
    res = run(swbd, script="local/data.sh", env={"SWBD": "", "EVAL2000": ""})
    assert res.returncode != 0 and "SWBD is not set" in res.stdout
    res = run(swbd, script="local/data.sh", env={"SWBD": str(tmp_path / "x"), "EVAL2000": "y"})
    assert f"Switchboard root {tmp_path / 'x'} does not exist" in res.stdout


def test_tiny_run_through_every_stage_to_the_report(prepared: Path) -> None:
    """Stages 10-18 (baselines off, upload as a dry run) on the tiny corpus and model."""
    subs = "d2-w1-fp d1-w0.5-int4"
    res = run(prepared, "--stage", "10", "--train_config", "conf/train_tiny.yaml",
              "--nj", "1", "--inference_nj", "2", "--rtf_utts", "2", "--subsystems", subs,
              "--skip_upload", "false", timeout=1500)
    assert res.returncode == 0, res.stdout[-8000:]
    exp = prepared / "exp" / "asr_train_tiny"
    md = (exp / "RESULTS.md").read_text()
    rows = {r["subsystem"]: r for r in json.loads((exp / "results.json").read_text())["rows"]}
    assert sorted(rows) == ["d1-w0.5-int4", "d2-w1-fp"]
    test_ids = sorted(line.split()[0] for line in
                      (prepared / "dump" / "raw" / "test" / "text").read_text().splitlines())
    for sub, r in rows.items():
        assert f"| {sub}" in md
        # the table's WER/CER are sclite's counts for this subsystem's hypotheses
        scores = json.loads((exp / "decode" / sub / "test" / "scores.json").read_text())
        for unit in ("wer", "cer"):
            counts = scores[unit]
            assert counts["errors"] == (counts["substitutions"] + counts["deletions"]
                                        + counts["insertions"])
            assert r[unit] == pytest.approx(100.0 * counts["errors"] / counts["words"], abs=1e-3)
        assert r["words"] == scores["wer"]["words"] > 0
        # one hypothesis per test utterance, and sclite read every one of them
        hyp = (exp / "decode" / sub / "test" / "text").read_text().splitlines()
        assert sorted(line.split()[0] for line in hyp) == test_ids
        assert scores["wer"]["sentences"] == len(test_ids)
        # parameters and bytes are the extracted model's own
        info = yaml.safe_load((exp / "extracted" / sub / "extract_info.yaml").read_text())
        assert r["params"] == info["params"]
        assert r["bytes"] == (exp / "extracted" / sub / "model.pth").stat().st_size
        assert r["rtf"] > 0 and math.isfinite(r["rtf"]) and not math.isnan(r["compression"])
        assert (exp / "packed" / f"{sub}.zip").stat().st_size > 1000
    small, big = rows["d1-w0.5-int4"], rows["d2-w1-fp"]
    assert small["params"] < big["params"] and small["bytes"] < big["bytes"]
    # the unseen-voice set has its own column; every subsystem is tested against the float one
    assert set(small["other_wer"]) == {"test_unseen"} and "test_unseen WER %" in md
    # the verdict against the float full model is sc_stats' on the two subsystems' own
    # sclite inputs, float first (its known answers: test_report.py's significance test)
    from espnet_allinone.report.significance import compare

    trn = {sub: exp / "decode" / sub / "test" / "score_wer" for sub in rows}
    verdict = compare(trn["d2-w1-fp"] / "ref.trn", trn["d2-w1-fp"] / "hyp.trn",
                      trn["d1-w0.5-int4"] / "hyp.trn", prepared / "significance_check")
    assert small["vs_float"] == {k: v.to_dict() for k, v in verdict.items()}
    assert set(small["vs_float"]) == {"mapsswe", "sign"} and big["vs_float"] is None
    assert big["compression"] == pytest.approx(1.0) and small["compression"] > 1.2
    assert (exp / "wer_vs_size.png").read_bytes()[:4] == b"\x89PNG"
    assert "| d1-w0.5-int4" in res.stdout  # the table is printed at the end
    train_log = (exp / "train.log").read_text()  # ESPnet's own training log
    # sandwich: the largest and smallest paths every step, the drawn one averaged under
    # *_random; CTC-only (no loss_att, acc); KL for every path but the teacher
    epochs = [x.split("epoch results: [train] ", 1)[1].split(", [valid]")[0]
              for x in train_log.splitlines() if "epoch results: [train]" in x]
    assert len(epochs) == 1, epochs
    logged = {kv.split("=")[0] for kv in epochs[0].split(", ")
              if re.match(r"(loss|kl|acc)", kv) and not kv.startswith("loss_scale=")}
    assert logged == {"loss", "loss_d2-w1-fp", "loss_ctc_d2-w1-fp",
                      "loss_d1-w0.5-int4", "loss_ctc_d1-w0.5-int4", "kl_d1-w0.5-int4",
                      "loss_random", "loss_ctc_random", "kl_random"}, logged
    # a healthy run reads healthy in every training and validation log window (a
    # CTC-only model leaves out the attention-decoder stats it cannot compute)
    windows = [x.split("epoch results: ", 1)[1] for x in train_log.splitlines()
               if "epoch results: [train]" in x]
    windows += [x for x in train_log.splitlines() if "epoch:train:" in x]
    assert windows and "cer_ctc_d1-w0.5-int4=" in windows[0]
    assert not [x for x in windows if re.search(r"=\s*nan\b", x)]
    # TensorBoard: one curve per subsystem's loss, as in the log
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curves = EventAccumulator(str(exp / "tensorboard" / "train")).Reload().Tags()["scalars"]
    assert {"loss_d2-w1-fp", "loss_d1-w0.5-int4", "loss_random", "kl_random"} <= set(curves)
    extract_log = (exp / "logs" / "stage12_extract.log").read_text()
    assert all(sub in extract_log for sub in rows)  # the extraction table names each one
    # each subsystem's BatchNorm statistics calibrated on the (tiny) training set
    assert "calibration: 50 utterances asked for, dump/raw/train has 36: using all 36" \
        in extract_log
    info = yaml.safe_load((exp / "extracted" / "d1-w0.5-int4" / "extract_info.yaml").read_text())
    assert info["calibration"] == {"data": "dump/raw/train", "utterances": 36}


def test_baselines_stage_adds_alone_wer_and_training_time_ratio(prepared: Path) -> None:
    """Stage 15 after the tiny run above: one subsystem trained alone, then the report."""
    res = run(prepared, "--stage", "15", "--stop_stage", "16", "--skip_baselines", "false",
              "--train_config", "conf/train_tiny.yaml", "--nj", "1", "--inference_nj", "1",
              "--rtf_utts", "0", "--subsystems", "d1-w0.5-int4", timeout=1500)
    assert res.returncode == 0, res.stdout[-8000:]
    exp = prepared / "exp" / "asr_train_tiny"
    alone = yaml.safe_load((exp / "baselines" / "d1-w0.5-int4" / "train_alone.yaml").read_text())
    assert alone["model_conf"]["sampling"] == "explicit"
    assert alone["model_conf"]["subsystems"] == ["d1-w0.5-int4"]
    base = json.loads((exp / "baselines.json").read_text())["d1-w0.5-int4"]
    alone_scores = json.loads((exp / "baselines" / "d1-w0.5-int4" / "decode" / "d1-w0.5-int4"
                               / "test" / "scores.json").read_text())
    assert base["wer"] == alone_scores["wer"]["error_rate"] and base["train_seconds"] > 0
    row = json.loads((exp / "results.json").read_text())["rows"][0]
    assert row["baseline_wer"] == base["wer"]
    assert row["alone_ratio"] == pytest.approx(row["wer"] / row["baseline_wer"])
    assert set(row["vs_alone"]) == {"mapsswe", "sign"}  # sc_stats against the twin
    assert "trained one by one" in (exp / "RESULTS.md").read_text()


def test_baseline_config_trains_one_path(tmp_path: Path) -> None:
    from espnet_allinone.bin import recipe_util

    out, config = tmp_path / "alone.yaml", tmp_path / "allinone.yaml"
    allinone = yaml.safe_load((RECIPE / "conf" / "train_allinone.yaml").read_text())
    allinone["model_conf"]["distill_twin_weight"] = 0.5
    config.write_text(yaml.safe_dump(allinone))
    assert recipe_util.main(["baseline_config", "--config", str(config),
                             "--subsystem", "d3-w0.5-int4", "--out", str(out)]) == 0
    conf = yaml.safe_load(out.read_text())
    assert conf["model_conf"]["sampling"] == "explicit"
    assert conf["model_conf"]["subsystems"] == ["d3-w0.5-int4"]
    assert conf["model_conf"]["valid_subsystems"] == ["d3-w0.5-int4"]
    assert conf["model_conf"]["distill_weight"] == 0.0
    # One path: nothing drawn, nothing distilled (no twin KL from its own float path).
    assert not {"draw_weights", "distill_temperature", "distill_start_steps",
                "distill_twin_weight"} & set(conf["model_conf"])
    assert conf["encoder_conf"] == yaml.safe_load(
        (RECIPE / "conf" / "train_allinone.yaml").read_text())["encoder_conf"]
    assert recipe_util.main(["baseline_config", "--config", str(RECIPE / "conf" /
                             "train_allinone.yaml"), "--subsystem", "d4-w0.5-int8",
                             "--out", str(out)]) == 2
