"""Mixed records and the search over them.

A non-uniform record must run, size, extract and load in stock Speech2Text
with outputs equal to the all-in-one model's; the greedy search (torch-free
on a synthetic additive model, then end to end on a toy experiment with a
few synthetic wavs) must return records within budget and a front no point
of which is dominated; bad input is named and leaves nothing written.
"""

from __future__ import annotations

import json
import shutil
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml
from helpers.toy_experiment import shared_toy_experiment

from espnet_allinone.arch import SubnetArch
from espnet_allinone.bin import search as search_cli
from espnet_allinone.search.greedy import GreedySearch, SearchError, pareto_front
from espnet_allinone.search.records import (
    BlockChoice,
    MixedRecord,
    RecordError,
    build_arch,
)
from espnet_allinone.subsystem import SearchSpace

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


# --- records, torch-free ---------------------------------------------------------------
def test_record_spelling_round_trips_and_bad_ones_are_named() -> None:
    rec = MixedRecord.parse("d2:w1-int8+a0.5f1c0.5-int4")
    assert rec.depth == 2 and rec.blocks[0] == BlockChoice.uniform(1, "int8")
    assert rec.blocks[1].widths == (Fraction(1, 2), Fraction(1), Fraction(1, 2))
    assert str(rec) == "d2:w1-int8+a0.5f1c0.5-int4" and MixedRecord.parse(str(rec)) == rec
    assert str(rec.with_precision("fp")) == "d2:w1-fp+a0.5f1c0.5-fp"
    at = MixedRecord.parse("d2:w1-fp+w1-int4@int4")
    assert at.parts == 4 and str(at) == "d2:w1-fp+w1-int4@int4"
    assert str(at.with_precision("fp")) == "d2:w1-fp+w1-fp@fp"
    for bad in ("d2-w1-int4", "d2:w1-int3", "d2:", "x:w1-fp", "d2:w1.5-fp", "d2:w1-fp@int3"):
        with pytest.raises(RecordError):
            MixedRecord.parse(bad)
    space = SearchSpace.from_encoder_conf({"num_blocks": 2, "linear_units": 8,
                                           "attention_heads": 2, "output_size": 8,
                                           "widths": [0.5, 1], "precisions": ["int4", "fp"]})
    with pytest.raises(RecordError, match=r"block 0 precision int8 \(valid: int4, fp\)"):
        rec.check(space)


def _additive(blocks: int = 4):
    """A synthetic model: bytes and error add up per block; block 0 hates low bits."""
    space = SearchSpace.from_encoder_conf({
        "num_blocks": blocks, "linear_units": 8, "attention_heads": 2, "output_size": 8,
        "depths": [blocks // 2, blocks], "widths": [0.5, 1],
        "precisions": ["int2", "int4", "int8", "fp"]})
    calls = []

    def used(r: MixedRecord) -> set[int]:
        return set(range(r.depth))

    def size(r: MixedRecord) -> int:
        return 1000 + sum(int(100 * c.widths[0] * c.bits) for c in r.blocks[: r.depth])

    def error(r: MixedRecord) -> float:
        calls.append(r)
        err = 10.0 + 5.0 * (space.num_blocks - r.depth)
        for k, c in enumerate(r.blocks[: r.depth]):
            err += (8.0 if k == 0 else 1.0) * (32 / c.bits - 1) / 15 + (1 - float(c.widths[0]))
        return err

    return space, GreedySearch(space, blocks, used, size, error, log=lambda _: None), calls


def test_greedy_search_meets_every_budget_with_a_front_of_undominated_points() -> None:
    _, search, calls = _additive()
    floor = search.size(search.smallest())
    budgets = [floor, 2000, 5000]
    result = search.run(budgets)
    for b in budgets:
        pick = result.chosen[b]
        assert pick.bytes <= b
        assert pick.error == min(c.error for c in result.candidates if c.bytes <= b)
    front = result.front
    assert front == pareto_front(result.candidates)
    for c in front:
        assert not any(o.bytes <= c.bytes and o.error <= c.error and o != c
                       and (o.bytes, o.error) != (c.bytes, c.error) for o in result.candidates)
    assert [c.bytes for c in result.path] == sorted((c.bytes for c in result.path), reverse=True)
    assert len(calls) == len(set(calls)) == len(result.candidates)  # each record scored once
    # the sensitive block 0 keeps more bits than the others on the way down
    mid = next(c for c in result.path if c.bytes <= 5000)
    assert mid.record.blocks[0].bits >= max(b.bits for b in mid.record.blocks[1:])


def test_a_budget_below_the_smallest_record_names_its_size() -> None:
    _, search, calls = _additive()
    floor = search.size(search.smallest())
    with pytest.raises(SearchError, match=f"smallest reachable size is {floor} bytes"):
        search.run([floor - 1, 10**6])
    assert calls == []  # refused before any record is scored


# --- the toy experiment -----------------------------------------------------------------
@pytest.fixture(scope="module")
def toy() -> dict[str, Path]:
    return shared_toy_experiment()


@pytest.fixture(scope="module")
def extractor(toy):
    from espnet_allinone.export.extract import Extractor

    return Extractor(toy["config"], toy["model"])


MIXED = ["d4:w0.5-int4+w1-int8+w1-fp+w0.5-int2", "d2:a0.5f1c0.5-int8+a1f0.5c1-int2"]


@pytest.mark.parametrize("text", MIXED)
@torch.no_grad()
def test_a_mixed_record_runs_sizes_extracts_and_loads_in_stock_speech2text(
        extractor, tmp_path, text) -> None:
    from espnet2.bin.asr_inference import Speech2Text

    from espnet_allinone.encoders.switching import model_probe_input

    encoder = extractor.encoder
    arch = build_arch(encoder, text)
    assert len({(len(b.heads), b.ffn_units and len(b.ffn_units[0]), b.bits)
                for b in arch.blocks}) > 1  # really non-uniform
    full, small = encoder.space.largest, encoder.space.smallest
    assert encoder.num_params(small) < encoder.num_params(arch) < encoder.num_params(full)
    nbytes = extractor.exact_bytes(arch)
    result = extractor.extract(arch, tmp_path, name="mixed")
    assert result.exact_bytes == nbytes and result.max_abs_diff <= 1e-4
    info = yaml.safe_load((result.directory / "extract_info.yaml").read_text())
    assert info["architecture"] == arch.to_dict()
    assert SubnetArch.from_dict(info["architecture"]) == arch
    s2t = Speech2Text(asr_train_config=result.directory / "config.yaml",
                      asr_model_file=result.directory / "model.pth", ctc_weight=1.0)
    speech, lengths = model_probe_input(extractor.model, seed=3)
    with encoder.use_arch(arch):
        ref, _ = extractor.model.encode(speech, lengths)
    out, _ = s2t.asr_model.encode(speech, lengths)
    assert (out - ref).abs().max() <= 1e-5
    assert encoder.active_subsystem == full


def test_front_and_output_follow_the_records_parts_precision(tmp_path) -> None:
    """With part_precisions {front: int8, output: int8} a record's front and output run
    at 8 bits once its parts precision is quantized, also beside float blocks; without
    one they follow the most precise block. Extraction stays exact."""
    from helpers.toy_experiment import (
        DEFAULT_ENCODER_CONF,
        write_toy_experiment,
    )

    from espnet_allinone.export.extract import Extractor

    conf = dict(DEFAULT_ENCODER_CONF, part_precisions={"front": "int8", "output": "int8"})
    paths = write_toy_experiment(tmp_path / "aio", encoder_conf=conf, model="allinone")
    ex = Extractor(paths["config"], paths["model"])
    follow = build_arch(ex.encoder, "d2:w1-fp+w1-int4")
    assert (follow.front_bits, follow.output_bits) == (32, 32)
    low = build_arch(ex.encoder, "d2:w1-fp+w1-int4@int4")
    assert (low.front_bits, low.output_bits) == (8, 8) and low.blocks[0].bits == 32
    assert ex.exact_bytes(low) < ex.exact_bytes(follow)
    result = ex.extract(low, tmp_path / "out", name="parts")
    assert result.max_abs_diff <= 1e-4 and result.exact_bytes == ex.exact_bytes(low)


def test_a_record_outside_the_model_is_named(extractor) -> None:
    with pytest.raises(RecordError, match=r"depth 3 \(valid: 2, 4\)"):
        build_arch(extractor.encoder, "d3:w1-fp+w1-fp+w1-fp")
    with pytest.raises(RecordError, match="1 block choice"):
        build_arch(extractor.encoder, "d4:w1-fp")


@pytest.fixture(scope="module")
def experiment(toy, tmp_path_factory) -> Path:
    """exp/aio (config naming dev/train data, a valid.loss.ave.pth) and data/{dev,train}."""
    root = tmp_path_factory.mktemp("search")
    rng = np.random.default_rng(0)
    for part, n in (("dev", 4), ("train", 3)):
        d = root / "data" / part
        d.mkdir(parents=True)
        wavs, texts = [], []
        for i in range(n):
            t = np.arange(8000 + 2400 * i) / 16000
            wave = 0.3 * np.sin(2 * np.pi * (180 + 70 * i) * t) + 0.05 * rng.normal(size=t.size)
            soundfile.write(d / f"{part}{i}.wav", wave.astype(np.float32), 16000)
            wavs.append(f"{part}{i} {d / f'{part}{i}.wav'}")
            texts.append(f"{part}{i} abc d{'e' * i}")
        (d / "wav.scp").write_text("\n".join(wavs) + "\n")
        (d / "text").write_text("\n".join(texts) + "\n")
    exp = root / "exp" / "aio"
    exp.mkdir(parents=True)
    config = yaml.safe_load(Path(toy["config"]).read_text())
    for key, part in (("valid", "dev"), ("train", "train")):
        config[f"{key}_data_path_and_name_and_type"] = [
            [str(root / "data" / part / "wav.scp"), "speech", "sound"],
            [str(root / "data" / part / "text"), "text", "text"]]
    (exp / "config.yaml").write_text(yaml.safe_dump(config))
    shutil.copyfile(toy["model"], exp / "valid.loss.ave.pth")
    return exp


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = search_cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def searched(experiment) -> tuple[int, str, str, float]:
    """The search run once on the toy experiment: (exit code, stdout, stderr, seconds)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = search_cli.main(["--exp", str(experiment), "--max_bytes", "0.5MB",
                                "--max_bytes", "330KiB", "--calibration_utts", "2"])
    return code, out.getvalue(), err.getvalue(), time.perf_counter() - start


def test_search_on_a_tiny_model_picks_within_budget_and_extracts(experiment, searched) -> None:
    from espnet2.bin.asr_inference import Speech2Text

    code, out, err, seconds = searched
    assert code == 0, err
    summary = json.loads((experiment / "searched" / "search.json").read_text())
    print(f"tiny search: {summary['evaluations']} records scored, {summary['seconds']} s in "
          f"the search, {seconds:.1f} s in all")
    assert summary["dev"]["utterances"] == 4 and summary["calibration"]["utterances"] == 2
    budgets = {b["budget"]: b for b in summary["budgets"]}
    assert set(budgets) == {"0.5MB", "330KiB"}
    rows = {c["name"]: c for c in summary["chosen"]}
    cands = summary["candidates"]
    for text, limit in (("0.5MB", 500_000), ("330KiB", 330 * 1024)):
        pick = rows[budgets[text]["chosen"]]
        assert pick["bytes"] <= limit and budgets[text]["max_bytes"] == limit
        assert pick["dev_error"] == min(c["dev_error"] for c in cands if c["bytes"] <= limit)
        assert pick["name"].startswith(f"searched-{pick['bytes']}-")
        info = yaml.safe_load((Path(pick["directory"]) / "extract_info.yaml").read_text())
        assert info["architecture"] == pick["architecture"]
        assert info["bytes"]["exact"] == pick["bytes"]
        assert info["calibration"]["utterances"] == 2
        assert pick["name"] in out
    front = summary["front"]
    for p in front:
        assert not any(o["bytes"] <= p["bytes"] and o["dev_error"] <= p["dev_error"]
                       and (o["bytes"] < p["bytes"] or o["dev_error"] < p["dev_error"])
                       for o in cands)
    assert any(c["uniform"] for c in cands) and any(not c["uniform"] for c in cands)
    assert "Pareto front of exact bytes against dev CER" in out
    # an ordinary extracted directory: stock Speech2Text decodes it (recipe stage 13)
    first = next(iter(rows.values()))
    s2t = Speech2Text(asr_train_config=Path(first["directory"]) / "config.yaml",
                      asr_model_file=Path(first["directory"]) / "model.pth", ctc_weight=1.0)
    s2t(np.zeros(16000, dtype=np.float32))


def test_a_budget_below_every_record_and_unknown_units_write_nothing(experiment, tmp_path,
                                                                     capsys) -> None:
    exp = tmp_path / "exp" / "aio"
    shutil.copytree(experiment, exp, ignore=shutil.ignore_patterns("searched"))
    code, _, err = _run(capsys, "--exp", str(exp), "--max_bytes", "1kB",
                        "--calibration_utts", "0")
    assert code == 3 and "smallest reachable size is" in err and "bytes (d2:" in err
    code, _, err = _run(capsys, "--exp", str(exp), "--max_bytes", "1 MX")
    assert code == 2 and "unknown unit 'MX'; valid units: B, kB, MB, GB, KiB, MiB, GiB" in err
    code, _, err = _run(capsys, "--exp", str(exp))
    assert code == 2 and "give at least one budget" in err
    assert not (exp / "searched").exists()


def test_missing_model_or_held_out_data_is_named_and_nothing_written(experiment, tmp_path,
                                                                      capsys) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    code, _, err = _run(capsys, "--exp", str(bare), "--max_bytes", "1MB")
    assert code == 2 and f"{bare / 'config.yaml'} not found" in err
    untrained = tmp_path / "untrained"
    untrained.mkdir()
    shutil.copyfile(experiment / "config.yaml", untrained / "config.yaml")
    code, _, err = _run(capsys, "--exp", str(untrained), "--max_bytes", "1MB")
    assert code == 2 and "no trained model in" in err and "valid.loss.ave.pth" in err
    no_dev = tmp_path / "no_dev"
    no_dev.mkdir()
    config = yaml.safe_load((experiment / "config.yaml").read_text())
    config["valid_data_path_and_name_and_type"] = []
    (no_dev / "config.yaml").write_text(yaml.safe_dump(config))
    shutil.copyfile(experiment / "valid.loss.ave.pth", no_dev / "valid.acc.best.pth")
    code, _, err = _run(capsys, "--exp", str(no_dev), "--max_bytes", "1MB")
    assert code == 2 and "no held-out data" in err and "--dev_data" in err
    empty = tmp_path / "empty_dev"
    empty.mkdir()
    (empty / "wav.scp").write_text("")
    code, _, err = _run(capsys, "--exp", str(no_dev), "--max_bytes", "1MB", "--dev_data",
                        str(empty))
    assert code == 2 and f"{empty / 'text'} not found" in err
    for d in (bare, untrained, no_dev):
        assert not (d / "searched").exists()


def test_select_and_the_plot_take_the_searched_front(experiment, searched, tmp_path,
                                                     capsys) -> None:
    """Searched picks join select's rows (not eligible until their test WER is collected),
    collect reads scores and tests significance, select then extracts a searched pick
    (again from search.json when its directory is gone), the report's plot adds a panel."""
    import matplotlib.image

    from espnet_allinone.bin import select as select_cli
    from espnet_allinone.report.plot import plot_wer_vs_size
    from espnet_allinone.report.results import Row
    from tests.test_report import _systems

    assert searched[0] == 0
    exp = tmp_path / "exp"
    shutil.copytree(experiment, exp)
    summary = json.loads((exp / "searched" / "search.json").read_text())
    for row in summary["chosen"]:  # the copy's own directories
        row["directory"] = str(exp / "searched" / row["name"])
    (exp / "searched" / "search.json").write_text(json.dumps(summary))
    names = [c["name"] for c in summary["chosen"]]
    uniform = [{"subsystem": "d4-w1-fp", "wer": 30.0, "params": 200_000, "bytes": 1_400_000,
                "rtf": 0.05}, {"subsystem": "d2-w0.5-int2", "wer": 60.0, "params": 90_000,
                               "bytes": 270_000, "rtf": 0.02}]
    (exp / "results.json").write_text(json.dumps({"rows": uniform}))
    assert select_cli.main(["--exp", str(exp), "--max_bytes", "1MB", "--dry_run"]) == 0
    out, err = capsys.readouterr()
    assert "chosen: d2-w0.5-int2" in out and f"{names[0]}" in out and "(searched)" in out
    assert f"{names[0]} has no WER in search.json: not eligible" in err

    ref, good, bad = _systems(tmp_path)
    decode = tmp_path / "decode"
    for d, hyp, wer in [(decode / "float" / "test", bad, 40.0),
                        *((decode / n / "test", good, 20.0 + i) for i, n in enumerate(names))]:
        (d / "score_wer").mkdir(parents=True)
        shutil.copyfile(ref, d / "score_wer" / "ref.trn")
        shutil.copyfile(hyp, d / "score_wer" / "hyp.trn")
        (d / "scores.json").write_text(json.dumps({
            "wer": {"error_rate": wer, "words": 720}, "cer": {"error_rate": wer / 2}}))
    code, out, err = _run(capsys, "--exp", str(exp), "--collect", str(decode / "missing"))
    assert code == 2 and "missing" in err and "decode and score" in err
    code, out, err = _run(capsys, "--exp", str(exp), "--collect", str(decode),
                          "--float_reference", str(decode / "float" / "test"))
    assert code == 0, err
    rows = json.loads((exp / "searched" / "search.json").read_text())["chosen"]
    assert [r["wer"] for r in rows] == [20.0 + i for i in range(len(rows))]
    assert all(r["vs_float"]["mapsswe"]["better"] == "b" for r in rows)  # searched better

    best = rows[0]["name"]
    shutil.rmtree(exp / "searched" / best)  # gone: extracted again from search.json
    assert select_cli.main(["--exp", str(exp), "--max_bytes", "1MB"]) == 0
    out, err = capsys.readouterr()
    assert f"chosen: {best} (WER 20.00%)" in out and "not packed" in err
    assert f"extracted: {exp / 'searched' / best}" in out
    info = yaml.safe_load((exp / "searched" / best / "extract_info.yaml").read_text())
    assert info["architecture"] == rows[0]["architecture"]
    assert json.loads((exp / "selected.json").read_text())["searched"] is True
    assert not (exp / "packed").exists()

    report_rows = [Row(r["subsystem"], r["wer"], r["wer"] / 2, 720, r["params"], r["bytes"])
                   for r in uniform]
    with_search = plot_wer_vs_size(report_rows, exp / "wer_vs_size.png")
    shutil.move(exp / "searched", tmp_path / "aside")
    without = plot_wer_vs_size(report_rows, exp / "plain.png")
    assert matplotlib.image.imread(with_search).shape[1] > \
        1.5 * matplotlib.image.imread(without).shape[1]  # the dev panel beside the plot


@pytest.mark.parametrize("seed_blocks", [None, 2], ids=["stacked", "unfolded"])
def test_mixed_records_of_wav2vec2_models_extract_exactly(tmp_path, seed_blocks
                                                                     ) -> None:
    """Family-neutral: records come from the encoder's resolve; a seed block shared by
    two logical positions runs its one choice at both."""
    from espnet_allinone.export.extract import Extractor
    from tests.test_wav2vec2_extract import SPACE, write_experiment

    space = dict(SPACE, seed_blocks=seed_blocks) if seed_blocks else SPACE
    paths = write_experiment(tmp_path / "exp", **space)
    ex = Extractor(paths["config"], paths["model"])
    text = "d4:w0.5-int4+a1f0.5c0.5-int8" + ("" if seed_blocks else "+w1-fp+w0.5-int8")
    arch = build_arch(ex.encoder, text)
    if seed_blocks:
        assert arch.schedule == (0, 1, 0, 1) and arch.blocks[0] == arch.blocks[2]
    assert arch.blocks[1].conv_channels is None and len(arch.blocks[1].ffn_units[0]) < \
        len(ex.encoder.resolve("d4-w1-fp").blocks[1].ffn_units[0])
    result = ex.extract(arch, tmp_path / "out", name="mixed")
    assert result.max_abs_diff <= 1e-4 and result.exact_bytes == ex.exact_bytes(arch)
