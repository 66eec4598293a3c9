"""allinone.sh's command line: one declared list of options, --help, refusals.

Runs the stage script with no stage selected (``--stage 100``) or with a bad
value, so no stage runs: a few seconds each, no corpus needed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.test_recipe import RECIPE, copy_recipe, run

CONFIG = "conf/train_allinone.yaml"


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    return copy_recipe(RECIPE, tmp_path / "allinone1")


def help_options(recipe: Path) -> list[str]:
    res = run(recipe, "--help", script="./allinone.sh")
    assert res.returncode == 0, res.stdout
    return re.findall(r"^  --(\w+) ", res.stdout, flags=re.MULTILINE)


def test_help_lists_every_option_once(recipe: Path) -> None:
    names = help_options(recipe)
    assert len(names) == len(set(names)) > 40
    assert {"stage", "train_config", "subsystems", "lang", "upload_dry_run"} <= set(names)
    # every name in the help is one the parser accepts (the unknown-option message lists them)
    res = run(recipe, "--no_such_option", "1", script="./allinone.sh")
    listed = re.findall(r"--(\w+)", res.stdout.split("valid options:", 1)[1])
    assert listed == names


def test_option_declared_after_lang_is_accepted(recipe: Path) -> None:
    """The old parser knew only the options above ``lang=``; every declared one works now."""
    names = help_options(recipe)
    assert names.index("asr_tag") > names.index("lang")
    res = run(recipe, "--stage", "100", "--train_config", CONFIG, "--asr_tag", "later",
              "--report_title", "late option", "--upload_dry_run", "true",
              script="./allinone.sh")
    assert res.returncode == 0, res.stdout
    assert "experiment: exp/asr_later;" in res.stdout
    assert (recipe / "exp" / "asr_later" / "recipe_config.json").is_file()
    assert "Stage " not in res.stdout  # --stage 100: nothing ran


def test_unknown_option_is_named_with_the_valid_ones(recipe: Path) -> None:
    res = run(recipe, "--train_config", CONFIG, "--nbest_typo", "3", script="./allinone.sh")
    assert res.returncode != 0
    assert "unknown option --nbest_typo; valid options:" in res.stdout
    assert "--inference_nj" in res.stdout and "--upload_dry_run" in res.stdout
    assert not (recipe / "exp").exists() and not (recipe / "data").exists()


def test_bad_subsystem_fails_before_any_stage(recipe: Path) -> None:
    res = run(recipe, "--train_config", CONFIG, "--subsystems", "d4-w1-fp d2-w1-fp",
              script="./allinone.sh")
    assert res.returncode != 0
    assert "subsystem d2-w1-fp is not in this model's search space" in res.stdout
    assert "depth 2 (valid: 3, 4)" in res.stdout
    assert "its subsystems: d3-w0.5-int2 " in res.stdout and "d4-w1-fp)" in res.stdout
    assert "Stage 1" not in res.stdout
    # nothing was made: no data, no experiment dir, no stage log
    assert not (recipe / "exp").exists() and not (recipe / "data").exists()


def test_resolved_subsystems_are_used_by_every_stage(recipe: Path) -> None:
    """--subsystems is validated once; the canonical list is what the stages get."""
    res = run(recipe, "--stage", "100", "--train_config", CONFIG,
              "--subsystems", "d4-w1.0-fp,d3-w0.50-int2", script="./allinone.sh")
    assert res.returncode == 0, res.stdout
    assert "subsystems: d4-w1-fp d3-w0.5-int2" in res.stdout
    text = (RECIPE / "allinone.sh").read_text()
    assert text.count("recipe_util subsystems") == 1
    assert "<<'EOF'" not in text  # no inline Python left in the stage script


@pytest.mark.parametrize(("option", "value", "message"), [
    ("calibration_utts", "-5", ("--calibration_utts must be a whole number >= 0 "
                               "(0: keep the statistics training left), got '-5'")),
    ("calibration_utts", "many", "got 'many'"),
    ("train_threads", "0", "--train_threads must be a whole number >= 1, got '0'"),
])
def test_bad_numeric_option_is_named_before_any_stage(recipe: Path, option: str, value: str,
                                                       message: str) -> None:
    res = run(recipe, "--train_config", CONFIG, f"--{option}", value, script="./allinone.sh")
    assert res.returncode != 0
    assert message in res.stdout
    assert not (recipe / "exp").exists() and not (recipe / "data").exists()


# ---- asr.sh options this script does not have -------------------------------------------

def refused_names(recipe: Path) -> list[str]:
    res = run(recipe, "--help", script="./allinone.sh")
    listed = res.stdout.split("asr.sh options refused here", 1)[1].split(":", 1)[1]
    return re.findall(r"--(\w+)", listed)


def test_every_refused_asr_sh_option_is_named_with_why(recipe: Path) -> None:
    refused = refused_names(recipe)
    assert {"use_lm", "lm_config", "lm_exp", "lm_train_text", "use_word_lm", "word_vocab_size",
            "lm_args", "use_ngram", "ngram_num", "asr_config", "audio_format"} <= set(refused)
    assert len(refused) == len(set(refused))
    assert not set(refused) & set(help_options(recipe))  # refused or declared, never both
    for name in refused:
        res = run(recipe, "--train_config", CONFIG, f"--{name}", "some value",
                  script="./allinone.sh")
        assert res.returncode != 0
        line = [ln for ln in res.stdout.splitlines() if "ERROR:" in ln]
        assert len(line) == 1 and line[0].split("ERROR: ", 1)[1].startswith(f"--{name}: "), \
            res.stdout
    assert not (recipe / "exp").exists() and not (recipe / "data").exists()


@pytest.mark.parametrize(("args", "message"), [
    (("--use_lm", "true"), ("--use_lm: language-model stages 6-9 are not part of allinone.sh; "
                           "ESPnet's asr_inference shallow-fusion options go to decoding through "
                           "--inference_args")),
    (("--use-lm", "true"), "--use_lm: language-model stages 6-9 are not part of allinone.sh"),
    (("--lm_config", "conf/train_lm.yaml"), "--lm_config: language-model stages 6-9"),
    (("--use_ngram", "true"), "--use_ngram: n-gram language models are not built here"),
    (("--asr_config", "conf/train_asr.yaml"), "--asr_config: named --train_config here"),
    (("--use_lm",), "--use_lm: language-model stages 6-9"),  # no value: still refused by name
])
def test_asr_sh_option_is_refused_by_name(recipe: Path, args: tuple[str, ...],
                                          message: str) -> None:
    res = run(recipe, "--train_config", CONFIG, *args, script="./allinone.sh")
    assert res.returncode != 0
    assert message in res.stdout
    assert "unknown option" not in res.stdout
    assert not (recipe / "exp").exists() and not (recipe / "data").exists()


def test_asr_sh_defaults_that_are_no_ops_are_accepted(recipe: Path) -> None:
    res = run(recipe, "--stage", "100", "--train_config", CONFIG, "--use_lm", "false",
              "--use_ngram", "false", "--feats_type", "raw", "--asr_task", "asr", "--oov", "<unk>",
              script="./allinone.sh")
    assert res.returncode == 0, res.stdout
    assert "experiment: exp/asr_train_allinone;" in res.stdout


# ---- stage 2: speed perturbation ---------------------------------------------------------

def tiny_train(recipe: Path) -> dict[str, str]:
    """data/train: 3 utterances of a tone (0.5-0.9 s), text, utt2spk, spk2utt."""
    import numpy as np
    import soundfile

    d, audio = recipe / "data" / "train", recipe.parent / "audio"
    d.mkdir(parents=True)
    audio.mkdir(exist_ok=True)
    texts = {f"spk{i % 2}-utt{i}": f"TONE NUMBER {i}" for i in range(3)}
    for i, utt in enumerate(texts):
        t = np.arange(int(16000 * (0.5 + 0.2 * i))) / 16000
        soundfile.write(str(audio / f"{utt}.wav"), 0.3 * np.sin(2 * np.pi * 300 * t), 16000,
                        subtype="PCM_16")
    (d / "wav.scp").write_text("".join(f"{u} {audio / u}.wav\n" for u in texts))
    (d / "text").write_text("".join(f"{u} {t}\n" for u, t in texts.items()))
    (d / "utt2spk").write_text("".join(f"{u} {u.split('-')[0]}\n" for u in texts))
    (d / "spk2utt").write_text("spk0 spk0-utt0 spk0-utt2\nspk1 spk1-utt1\n")
    return texts


SP = ("--speed_perturb_factors", "0.9 1.0 1.1")


def test_stage2_writes_train_sp_and_later_stages_use_it(recipe: Path) -> None:
    from espnet_allinone.corpus.datadir import read_table

    texts = tiny_train(recipe)
    res = run(recipe, "--stage", "2", "--stop_stage", "2", "--train_config", CONFIG, *SP,
              script="./allinone.sh")
    assert res.returncode == 0, res.stdout
    assert "experiment: exp/asr_train_allinone_sp;" in res.stdout  # as asr.sh names it
    sp = recipe / "data" / "train_sp"
    assert read_table(sp / "text") == {f"{p}{u}": t for p in ("", "sp0.9-", "sp1.1-")
                                       for u, t in texts.items()}
    assert read_table(sp / "utt2spk")["sp1.1-spk1-utt1"] == "sp1.1-spk1"
    wav = read_table(sp / "wav.scp")
    assert Path(wav["sp0.9-spk0-utt0"]).is_file()
    assert Path(wav["sp0.9-spk0-utt0"]).is_relative_to(recipe / "dump" / "speed_perturb")
    log = recipe / "exp" / "asr_train_allinone_sp" / "logs" / "stage2_speed_perturb.log"
    assert "data/train -> data/train_sp: 9 utterances" in log.read_text()
    # stage 3 formats train_sp (then stops at the missing dev set); stage 10 wants train_sp
    res = run(recipe, "--stage", "3", "--stop_stage", "3", "--train_config", CONFIG, *SP,
              script="./allinone.sh")
    assert "stage 3 needs data/dev/wav.scp, which stage 1 makes" in res.stdout
    assert len(read_table(recipe / "dump" / "raw" / "org" / "train_sp" / "wav.scp")) == 9
    assert not (recipe / "dump" / "raw" / "org" / "train").exists()
    res = run(recipe, "--stage", "10", "--stop_stage", "10", "--train_config", CONFIG, *SP,
              script="./allinone.sh")
    assert "stage 10 needs dump/raw/train_sp/wav.scp, which stage 4 makes" in res.stdout


def test_stage2_is_off_without_factors(recipe: Path) -> None:
    tiny_train(recipe)
    res = run(recipe, "--stage", "2", "--stop_stage", "2", "--train_config", CONFIG,
              script="./allinone.sh")
    assert res.returncode == 0, res.stdout
    assert "Stage 2" not in res.stdout and "experiment: exp/asr_train_allinone;" in res.stdout
    assert not (recipe / "data" / "train_sp").exists() and not (recipe / "dump").exists()
    res = run(recipe, "--stage", "3", "--stop_stage", "3", "--train_config", CONFIG,
              script="./allinone.sh")
    assert "stage 3 needs data/dev/wav.scp, which stage 1 makes" in res.stdout  # train: as is


@pytest.mark.parametrize(("factors", "message"), [
    ("0.9 abc 1.1", ("--speed_perturb_factors: 'abc' is not a number; valid: positive decimal "
                    "numbers separated by spaces, e.g. \"0.9 1.0 1.1\"")),
    ("0.9,1.1", "'0.9,1.1' is not a number"),
    ("0", "--speed_perturb_factors: '0' is not positive"),
    ("-0.9 1.1", "'-0.9' is not positive"),
    ("1.1 1.10", "'1.10' is given twice"),
])
def test_bad_speed_factor_is_named_before_any_stage(recipe: Path, factors: str,
                                                   message: str) -> None:
    tiny_train(recipe)
    res = run(recipe, "--train_config", CONFIG, "--speed_perturb_factors", factors,
              script="./allinone.sh")
    assert res.returncode != 0
    assert message in res.stdout
    assert "Stage " not in res.stdout
    assert not (recipe / "exp").exists() and not (recipe / "dump").exists()
    assert sorted(p.name for p in (recipe / "data").iterdir()) == ["train"]


def test_recipes_perturb_as_espnet_does() -> None:
    from tests.test_recipe import REPO

    for name in ("librispeech_100", "swbd"):
        text = (REPO / "egs2" / name / "allinone1" / "run.sh").read_text()
        assert '--speed_perturb_factors "0.9 1.0 1.1"' in text, name
    assert "--speed_perturb_factors" not in (RECIPE / "run.sh").read_text()
