"""Every shipped training config passes the recipe's checks before stage 1.

For each YAML in ``conf/``, ``conf/foundation/`` and ``egs2/*/allinone1/conf/train_*``:
``recipe_util subsystems --subsystems all`` exits 0 and prints the canonical members
of the space the config's own encoder defines (a wav2vec2/HuBERT config once gave
"depth 9 outside the model's 1..6 blocks": the Conformer's space was built for it),
and ``allinone.sh --stage 0 --stop_stage 0`` (option validation, the subsystem check
and the experiment-dir guard; no stage runs) passes from a copy of a recipe folder
holding only its tracked files. The foundation configs are also checked as
``run.sh --pretrained`` makes them: stamped (``foundation.conf``) from a tiny
Hugging Face checkpoint, ``pretrained_path`` pointing at it.

The stage-script runs are subprocesses (that is the point), run two at a time: each
imports torch once (~2 s); the rest runs in this process.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from espnet_allinone.bin import recipe_util
from espnet_allinone.subsystem import SearchSpace, Subsystem

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted([*ROOT.glob("conf/*.yaml"), *ROOT.glob("conf/foundation/*.yaml"),
                  *ROOT.glob("egs2/*/allinone1/conf/train_*.yaml")])
FOUNDATION = sorted(ROOT.glob("conf/foundation/*.yaml"))
TRACKED = ("run.sh", "cmd.sh", "path.sh", "db.sh", "allinone.sh", "conf", "local", "utils")
"""What a recipe folder holds in git (allinone.sh, cmd.sh, path.sh, utils are links into
TEMPLATE, copied resolved); never exp/, dump/, data/ or downloads/."""
STAMPED = "stamped:"
"""Case-name prefix of a foundation config stamped from the tiny checkpoint."""


def _id(config: Path) -> str:
    return str(config.relative_to(ROOT))


def _recipe_of(config: Path) -> str:
    """The recipe folder a config of conf/ that no recipe links is run from."""
    if config.parent.name == "foundation" or "librispeech100" in config.name:
        return "librispeech_100"
    return "swbd" if "swbd" in config.name else "espeak_synth"


def _stage_runs() -> dict[str, tuple[str, str]]:
    """case name -> (recipe folder, --train_config as run.sh gives it), once per file.

    A recipe's conf/train_*.yaml links into conf/ (the copy holds the file), so that
    file runs from its recipe as ``conf/<name>``; a file of conf/ no recipe links
    (the tiny and the foundation configs) runs from the recipe of its corpus by its
    path, as ``run.sh --train_config ../../../conf/...`` passes it.
    """
    runs, seen = {}, set()
    for config in CONFIGS:
        rel = config.relative_to(ROOT).parts
        if rel[0] != "egs2":
            continue
        recipe = rel[1]
        runs[f"{recipe}:conf/{config.name}"] = (recipe, f"conf/{config.name}")
        seen.add(config.resolve())
    for config in CONFIGS:
        if config.resolve() not in seen:
            runs[f"{_recipe_of(config)}:{_id(config)}"] = (_recipe_of(config), str(config))
            seen.add(config.resolve())
    assert seen == {c.resolve() for c in CONFIGS}
    return runs


STAGE_RUNS = _stage_runs()


def _space(config: dict) -> SearchSpace:
    """The space, from the encoder class the test names (not recipe_util's lookup)."""
    with contextlib.redirect_stdout(io.StringIO()):  # ESPnet's import notice
        from espnet_allinone.encoders.elastic_conformer import ElasticConformerEncoder
        from espnet_allinone.encoders.elastic_wav2vec2 import ElasticWav2Vec2Encoder

    cls = {"elastic_conformer": ElasticConformerEncoder,
           "elastic_wav2vec2": ElasticWav2Vec2Encoder}[config["encoder"]]
    return cls.search_space(config["encoder_conf"])


@pytest.fixture(scope="module")
def stamped(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each foundation config stamped from a tiny 12-layer Hugging Face checkpoint."""
    from helpers.foundation_checkpoints import (
        reference_model,
        write_huggingface,
    )

    from espnet_allinone.foundation.conf import stamp

    root = tmp_path_factory.mktemp("foundation")
    out = {}
    for config in FOUNDATION:
        kind = "hubert" if "hubert" in config.name else "wav2vec2"
        ref, kw, mask = reference_model(encoder_num_layers=12)
        ckpt = write_huggingface(ref, kw, mask, root / f"{config.stem}_{kind}", kind=kind)
        written = stamp(yaml.safe_load(config.read_text()), ckpt, str(config))
        assert written["encoder_conf"]["pretrained_path"] == str(ckpt.absolute())
        out[STAMPED + _id(config)] = path = root / config.name
        path.write_text(yaml.safe_dump(written, sort_keys=False))
    return out


@pytest.fixture(scope="module")
def cases(stamped: dict[str, Path]) -> dict[str, tuple[str, str]]:
    """case name -> (recipe folder, --train_config)."""
    return {**STAGE_RUNS, **{name: ("librispeech_100", str(path))
                             for name, path in stamped.items()}}


def _copy_recipe(name: str, dest: Path) -> Path:
    src = ROOT / "egs2" / name / "allinone1"
    dest.mkdir(parents=True)
    for entry in TRACKED:
        if (src / entry).is_dir():
            shutil.copytree(src / entry, dest / entry)  # links resolved
        elif (src / entry).is_file():
            shutil.copy2(src / entry, dest / entry)
    assert not {"exp", "dump", "data", "downloads"} & {p.name for p in dest.iterdir()}
    return dest


@pytest.fixture(scope="module")
def stage0(cases: dict[str, tuple[str, str]], tmp_path_factory: pytest.TempPathFactory
           ) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """case name -> (allinone.sh --stage 0 --stop_stage 0, its asr_exp dir)."""
    root = tmp_path_factory.mktemp("recipes")
    copies = {name: _copy_recipe(name, root / name) for name in {r for r, _ in cases.values()}}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    python = Path(sys.executable)
    env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"

    def run(item: tuple[str, tuple[str, str]]):
        name, (recipe, train_config) = item
        cwd = copies[recipe]
        expdir = root / "exp" / name.replace("/", "_").replace(":", "_")
        proc = subprocess.run(
            ["bash", "allinone.sh", "--train_config", train_config, "--stage", "0",
             "--stop_stage", "0", "--python", str(python), "--expdir", str(expdir)],
            cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False)
        return name, (proc, expdir / f"asr_{Path(train_config).stem}")

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(run, sorted(cases.items())))


def test_the_configs_are_found() -> None:
    assert len(FOUNDATION) == 3 and len(CONFIGS) >= 15
    assert {c.parent.name for c in CONFIGS} >= {"conf", "foundation"}
    assert {c.parts[-4] for c in CONFIGS if "egs2" in c.parts} == {
        "espeak_synth", "librispeech_100", "swbd"}


def _check_subsystems(config_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert recipe_util.main(["subsystems", "--config", str(config_path),
                             "--subsystems", "all"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.split()
    config = yaml.safe_load(config_path.read_text())
    space = _space(config)
    assert lines == [str(s) for s in space.resolve("all")]
    assert all(str(Subsystem.parse(line)) == line for line in lines)  # canonical
    valid = (config.get("model_conf") or {}).get("valid_subsystems")
    if valid:  # what training validates on is in the space the recipe checks
        assert recipe_util.main(["subsystems", "--config", str(config_path),
                                 "--subsystems", ",".join(valid)]) == 0
        assert set(capsys.readouterr().out.split()) <= set(lines)


@pytest.mark.parametrize("config", CONFIGS, ids=_id)
def test_subsystems_all_is_the_encoders_space(config: Path, capsys) -> None:
    _check_subsystems(config, capsys)


@pytest.mark.parametrize("config", FOUNDATION, ids=_id)
def test_a_foundation_config_stamped_from_a_checkpoint(config: Path, stamped, capsys) -> None:
    path = stamped[STAMPED + _id(config)]
    assert yaml.safe_load(path.read_text())["encoder_conf"]["encoder_num_layers"] == 12
    _check_subsystems(path, capsys)


@pytest.mark.parametrize("name", [*STAGE_RUNS, *(STAMPED + _id(c) for c in FOUNDATION)])
def test_the_stage_script_checks_pass(name: str, stage0) -> None:
    proc, asr_exp = stage0[name]
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Successfully finished" in proc.stdout and "Stage " not in proc.stdout
    assert (asr_exp / recipe_util.FINGERPRINT).is_file()  # the guard ran and stamped it


def test_an_encoder_that_is_not_elastic_is_named(tmp_path: Path, capsys) -> None:
    assert recipe_util.elastic_encoder_names() == ["elastic_conformer", "elastic_wav2vec2"]
    for name, why in (("conformer", "is not an elastic encoder of this package"),
                      ("packed_wav2vec2", "is not an elastic encoder (no search space"),
                      (None, "the config names no encoder")):
        path = tmp_path / "train.yaml"
        path.write_text(yaml.safe_dump({"encoder": name, "encoder_conf": {}}))
        assert recipe_util.main(["subsystems", "--config", str(path)]) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and str(path) in err and why in err
        assert "one of elastic_conformer, elastic_wav2vec2" in err
        if name:
            assert f"encoder: {name} " in err


def test_a_foundation_space_that_does_not_fit_names_the_config(tmp_path, capsys) -> None:
    config = yaml.safe_load(FOUNDATION[0].read_text())
    config["encoder_conf"]["encoder_num_layers"] = 6
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    assert recipe_util.main(["subsystems", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and str(path) in err
    assert "outside the model's 1..6 blocks" in err


def test_the_twin_of_an_unfolded_wav2vec2_is_stacked(tmp_path: Path) -> None:
    base = ROOT / "conf" / "foundation" / "train_allinone_unfold_wav2vec2_librispeech100.yaml"
    out = tmp_path / "alone.yaml"
    assert recipe_util.main(["baseline_config", "--config", str(base), "--subsystem",
                             "d6-w0.5-int4", "--out", str(out)]) == 0
    alone, source = yaml.safe_load(out.read_text()), yaml.safe_load(base.read_text())
    enc = alone["encoder_conf"]
    assert "seed_blocks" not in enc and "unfold" not in enc and enc["depths"] == [6]
    assert enc["encoder_num_layers"] == source["encoder_conf"]["encoder_num_layers"]
    assert alone["model_conf"]["subsystems"] == ["d6-w0.5-int4"]
    space = _space(alone)
    assert space.validate("d6-w0.5-int4") and len(space.members()) == 4
    stacked = ROOT / "conf" / "foundation" / "train_allinone_wav2vec2_librispeech100.yaml"
    assert recipe_util.main(["baseline_config", "--config", str(stacked), "--subsystem",
                             "d9-w1-int8", "--out", str(out)]) == 0
    assert yaml.safe_load(out.read_text())["encoder_conf"] == yaml.safe_load(
        stacked.read_text())["encoder_conf"]


def test_the_twin_of_an_unfolded_conformer_is_stacked(tmp_path: Path) -> None:
    base = ROOT / "conf" / "train_allinone_unfold_default.yaml"
    source = yaml.safe_load(base.read_text())["encoder_conf"]
    depth = max(source["depths"])
    sub = str(_space({"encoder": "elastic_conformer", "encoder_conf": source}).largest)
    out = tmp_path / "alone.yaml"
    assert recipe_util.main(["baseline_config", "--config", str(base), "--subsystem", sub,
                             "--out", str(out)]) == 0
    enc = yaml.safe_load(out.read_text())["encoder_conf"]
    assert not {"seed_blocks", "unfold", "position_stats"} & set(enc)
    assert (enc["num_blocks"], enc["depths"]) == (depth, [depth])
