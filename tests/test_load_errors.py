"""A bad checkpoint or config given to an entry point: one line naming the file, exit 2,
nothing written.

What a new user meets: a text file or a half-copied ``.pth`` passed as the
model, a YAML with a syntax error, a config lacking a key. Every entry point
that loads one goes through ``export/model_io.py``'s loaders.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from helpers.toy_experiment import shared_toy_experiment

from espnet_allinone.export.model_io import (
    CheckpointError,
    ConfigError,
    load_checkpoint,
    load_config,
)

SUB = "d2-w0.5-int4"


@pytest.fixture(scope="module")
def toy() -> dict[str, Path]:
    return shared_toy_experiment()


@pytest.fixture(scope="module")
def extracted(toy, tmp_path_factory) -> Path:
    """One extracted subsystem directory (what pack, report and decoding read)."""
    from espnet_allinone.export.extract import Extractor

    out = tmp_path_factory.mktemp("extracted")
    return Extractor(toy["config"], toy["model"]).extract(SUB, out, verify=False).directory


def bad_files(toy: dict[str, Path], where: Path) -> dict[str, tuple[Path, str]]:
    """Each bad file and the words its one-line error must hold."""
    where.mkdir(parents=True, exist_ok=True)
    garbage = where / "garbage.pth"
    garbage.write_text("this is not a checkpoint\n")
    truncated = where / "truncated.pth"
    data = toy["model"].read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    return {
        "garbage": (garbage, f"{garbage} is not a PyTorch checkpoint (torch.load: "),
        "truncated": (truncated, f"{truncated} is a damaged PyTorch checkpoint (truncated?"),
    }


def bad_yaml(where: Path) -> tuple[Path, str]:
    path = where / "broken.yaml"
    path.write_text("encoder: elastic_conformer\nencoder_conf:\n  depths: [2, 4\nmodel: x\n")
    return path, f"{path} is not valid YAML: line 4, column 6: "


def one_error_line(err: str, prog: str, expected: str) -> None:
    """The whole of stderr is one ``<prog>: error: <expected>...`` line."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    prefix = f"{prog}: error: " if prog else "error: "
    assert lines[0].startswith(prefix + expected), (lines[0], expected)


# --- the loaders ------------------------------------------------------------

def test_loaders_name_the_file_and_the_problem(toy, tmp_path: Path) -> None:
    for path, expected in bad_files(toy, tmp_path).values():
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(path)
        assert str(e.value).startswith(expected) and "\n" not in str(e.value)
        assert e.value.path == path
    with pytest.raises(CheckpointError, match=r"nowhere\.pth does not exist$"):
        load_checkpoint(tmp_path / "nowhere.pth")
    path, expected = bad_yaml(tmp_path)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value).startswith(expected) and "\n" not in str(e.value)
    # a checkpoint given as the config, a list, a missing key
    with pytest.raises(ConfigError, match=r"model\.pth is not a text \(YAML\) file$"):
        load_config(toy["model"])
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"list\.yaml is not a YAML mapping \(it is a list\)$"):
        load_config(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match=r"list2?\.yaml: missing key 'encoder'$"):
        (tmp_path / "list2.yaml").write_text("model: espnet\n")
        load_config(tmp_path / "list2.yaml", required=("encoder",))
    assert load_checkpoint(toy["model"]).keys() == __import__("torch").load(
        toy["model"], weights_only=True).keys()


# --- the entry points -------------------------------------------------------

def run_extract(config: Path, model: Path, outdir: Path) -> int:
    from espnet_allinone.bin.extract import main

    return main(["--asr_train_config", str(config), "--asr_model_file", str(model),
                 "--subsystems", SUB, "--outdir", str(outdir), "--no_progress"])


def run_export_onnx(config: Path, model: Path, outdir: Path) -> int:
    from espnet_allinone.bin.export_onnx import main

    return main(["--asr_train_config", str(config), "--asr_model_file", str(model),
                 "--outdir", str(outdir)])


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
@pytest.mark.parametrize(("prog", "entry"), [("extract", run_extract),
                                             ("export_onnx", run_export_onnx)])
def test_bad_checkpoint_given_to_model_loading_entry_points(
    toy, tmp_path: Path, capsys, kind: str, prog: str, entry: Callable[..., int]
) -> None:
    path, expected = bad_files(toy, tmp_path / "in")[kind]
    outdir = tmp_path / "out"
    assert entry(toy["config"], path, outdir) == 2
    one_error_line(capsys.readouterr().err, prog, expected)
    assert not outdir.exists()


@pytest.mark.parametrize(("prog", "entry"), [("extract", run_extract),
                                             ("export_onnx", run_export_onnx)])
def test_bad_config_given_to_model_loading_entry_points(
    toy, tmp_path: Path, capsys, prog: str, entry: Callable[..., int]
) -> None:
    path, expected = bad_yaml(tmp_path)
    outdir = tmp_path / "out"
    assert entry(path, toy["model"], outdir) == 2
    one_error_line(capsys.readouterr().err, prog, expected)
    # a config without the key a model is built from
    config = yaml.safe_load(toy["config"].read_text())
    del config["encoder"]
    (tmp_path / "no_encoder.yaml").write_text(yaml.safe_dump(config))
    assert entry(tmp_path / "no_encoder.yaml", toy["model"], outdir) == 2
    one_error_line(capsys.readouterr().err, prog, f"{tmp_path / 'no_encoder.yaml'}: missing key "
                   "'encoder'")
    assert not outdir.exists()


def copy_with_bad_model(extracted: Path, toy, where: Path, kind: str) -> tuple[Path, str]:
    """A copy of the extracted directory whose model.pth is a bad file."""
    directory = where / "extracted" / SUB
    shutil.copytree(extracted, directory)
    bad, _ = bad_files(toy, where / "bad")[kind]
    shutil.copyfile(bad, directory / "model.pth")
    model = directory / "model.pth"
    words = "is not a PyTorch checkpoint" if kind == "garbage" else "is a damaged PyTorch"
    return directory, f"{model} {words}"


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_pack_refuses_a_bad_model_file_before_packing(extracted, toy, tmp_path, capsys,
                                                      kind) -> None:
    from espnet_allinone.bin.pack import main

    directory, expected = copy_with_bad_model(extracted, toy, tmp_path, kind)
    out = tmp_path / "packed"
    assert main(["--extracted_dir", str(directory.parent), "--outdir", str(out)]) == 2
    one_error_line(capsys.readouterr().err, "pack", expected)
    assert not out.exists()
    # a results file with a syntax error
    shutil.copyfile(extracted / "model.pth", directory / "model.pth")
    path, expected = bad_yaml(tmp_path)
    assert main(["--extracted_dir", str(directory.parent), "--outdir", str(out),
                 "--results", str(path)]) == 2
    one_error_line(capsys.readouterr().err, "pack", expected)
    assert not out.exists()


def test_report_refuses_a_bad_model_file_or_config(extracted, toy, tmp_path, capsys) -> None:
    from espnet_allinone.bin.report import main

    directory, expected = copy_with_bad_model(extracted, toy, tmp_path, "truncated")
    exp = directory.parent.parent
    scores = exp / "decode" / SUB / "test"
    scores.mkdir(parents=True)
    counts = {"words": 20, "errors": 2, "error_rate": 10.0}
    (scores / "scores.json").write_text(json.dumps({"wer": counts, "cer": counts}))
    out = tmp_path / "report"
    args = ["--asr_exp", str(exp), "--rtf_utts", "0", "--outdir", str(out)]
    assert main(args) == 2
    one_error_line(capsys.readouterr().err, "report", expected)
    shutil.copyfile(extracted / "model.pth", directory / "model.pth")
    path, expected = bad_yaml(tmp_path)
    assert main([*args, "--inference_config", str(path)]) == 2
    one_error_line(capsys.readouterr().err, "report", expected)
    (directory / "config.yaml").write_text("a: [\n")
    assert main(args) == 2
    one_error_line(capsys.readouterr().err, "report", f"{directory / 'config.yaml'} is not "
                   "valid YAML: line 2")
    assert not out.exists()
    (scores / "scores.json").write_text('{"wer": ')
    assert main(args) == 2
    one_error_line(capsys.readouterr().err, "report", f"{scores / 'scores.json'} is not valid")


def test_multi_decoding_checks_every_model_before_decoding(extracted, toy, tmp_path,
                                                           capsys) -> None:
    from espnet_allinone.bin.asr_inference_multi import main

    directory, expected = copy_with_bad_model(extracted, toy, tmp_path, "garbage")
    out = tmp_path / "decode"
    args = ["--model_dirs", str(extracted), str(directory), "--output_dir", str(out),
            "--data_path_and_name_and_type", "nowhere/wav.scp,speech,sound"]
    assert main(args) == 2  # two dirs of one name: refused before anything is loaded
    one_error_line(capsys.readouterr().err, "asr_inference_multi", "--model_dirs names must")
    good = tmp_path / "good" / "other"
    shutil.copytree(extracted, good)
    args[1:3] = [str(good), str(directory)]
    assert main(args) == 2
    one_error_line(capsys.readouterr().err, "asr_inference_multi", expected)
    path, expected = bad_yaml(tmp_path)
    shutil.copyfile(extracted / "model.pth", directory / "model.pth")
    assert main([*args, "--config", str(path)]) == 2
    one_error_line(capsys.readouterr().err, "asr_inference_multi", expected)
    assert not out.exists()


def test_recipe_util_names_a_broken_config(tmp_path, capsys) -> None:
    from espnet_allinone.bin.recipe_util import main

    path, expected = bad_yaml(tmp_path)
    assert main(["subsystems", "--config", str(path)]) == 2
    one_error_line(capsys.readouterr().err, "", expected)
    out = tmp_path / "alone.yaml"
    assert main(["baseline_config", "--config", str(path), "--subsystem", SUB,
                 "--out", str(out)]) == 2
    assert expected in capsys.readouterr().err and not out.exists()


def test_demo_names_a_bad_option_value(capsys) -> None:
    from espnet_allinone.bin.demo import main

    assert main(["--num_blocks", "2", "--depths", "1,2", "--subsystems", "d3-w1-fp"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("demo: error: ") and "d3-w1-fp" in err and len(err.splitlines()) == 1
    assert main(["--depths", "two"]) == 2
    assert "demo: error: " in capsys.readouterr().err
