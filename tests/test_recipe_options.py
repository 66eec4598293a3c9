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
    res = run(recipe, "--train_config", CONFIG, "--subsystems", "d4-w1-fp d3-w1-fp",
              script="./allinone.sh")
    assert res.returncode != 0
    assert "subsystem d3-w1-fp is not in this model's search space" in res.stdout
    assert "depth 3 (valid: 2, 4)" in res.stdout
    assert "its subsystems: d2-w0.5-int2 " in res.stdout and "d4-w1-fp)" in res.stdout
    assert "Stage 1" not in res.stdout
    # nothing was made: no data, no experiment dir, no stage log
    assert not (recipe / "exp").exists() and not (recipe / "data").exists()


def test_resolved_subsystems_are_used_by_every_stage(recipe: Path) -> None:
    """--subsystems is validated once; the canonical list is what the stages get."""
    res = run(recipe, "--stage", "100", "--train_config", CONFIG,
              "--subsystems", "d4-w1.0-fp,d2-w0.50-int2", script="./allinone.sh")
    assert res.returncode == 0, res.stdout
    assert "subsystems: d4-w1-fp d2-w0.5-int2" in res.stdout
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
