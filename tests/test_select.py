"""``select``: the best subsystem under a budget, from results.json."""

from __future__ import annotations

import json
import shutil

import pytest

from espnet_allinone.deploy.select import (
    SelectError,
    choose,
    pareto_front,
    parse_budget,
)

ROWS = [  # known figures: WER %, parameters, bytes, RTF
    {"subsystem": "d4-w1-fp", "wer": 11.0, "params": 2_400_000, "bytes": 9_688_063, "rtf": 0.05},
    {"subsystem": "d4-w1-int4", "wer": 13.7, "params": 2_400_000, "bytes": 2_845_759,
     "rtf": 0.04},
    {"subsystem": "d4-w0.5-int4", "wer": 16.3, "params": 1_900_000, "bytes": 2_347_583,
     "rtf": 0.03},
    {"subsystem": "d4-w1-int2", "wer": 21.5, "params": 2_400_000, "bytes": 2_346_047,
     "rtf": None},
    {"subsystem": "d2-w0.5-int2", "wer": 28.0, "params": 1_200_000, "bytes": 1_815_327,
     "rtf": 0.02},
    {"subsystem": "d2-w1-fp", "wer": 30.0, "params": 1_500_000, "bytes": 6_000_000, "rtf": 0.03},
]


@pytest.fixture
def exp(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"rows": ROWS, "notes": []}))
    return tmp_path


def test_budget_units():
    assert parse_budget("max_bytes", "2MB") == 2_000_000
    assert parse_budget("max_bytes", "1.5 MiB") == 1.5 * 2**20
    assert parse_budget("max_bytes", "2500000") == 2_500_000
    assert parse_budget("max_params", "1.2M") == 1_200_000
    assert parse_budget("max_wer", "15%") == 15
    assert parse_budget("max_rtf", "0.05") == 0.05
    with pytest.raises(SelectError, match=r"--max_bytes '2MBs': unknown unit 'MBs'; valid "
                                          r"units: B, kB, MB, GB, KiB, MiB, GiB"):
        parse_budget("max_bytes", "2MBs")
    with pytest.raises(SelectError, match="not a number"):
        parse_budget("max_params", "lots")


def test_choice_front_and_refusals():
    assert [r["subsystem"] for r in pareto_front(ROWS)] == [
        "d2-w0.5-int2", "d4-w1-int2", "d4-w0.5-int4", "d4-w1-int4", "d4-w1-fp"]
    assert choose(ROWS, {"max_bytes": 2.5e6}).chosen["subsystem"] == "d4-w0.5-int4"
    assert choose(ROWS, {"max_bytes": 3e6}).chosen["subsystem"] == "d4-w1-int4"
    assert choose(ROWS, {"max_params": 1.6e6}).chosen["subsystem"] == "d2-w0.5-int2"
    assert choose(ROWS, {"max_wer": 20, "max_params": 2e6}).chosen["subsystem"] == \
        "d4-w0.5-int4"
    # equal WER: the smaller file wins
    tie = [*ROWS, {"subsystem": "d4-w1-int8", "wer": 11.0, "params": 2_400_000,
                   "bytes": 3_000_000, "rtf": 0.04}]
    assert choose(tie, {"max_bytes": 1e9}).chosen["subsystem"] == "d4-w1-int8"
    # a row without RTF is not eligible under --max_rtf, and the note says so
    choice = choose(ROWS, {"max_rtf": 0.035})
    assert choice.chosen["subsystem"] == "d4-w0.5-int4"
    assert any("d4-w1-int2" in n and "--max_rtf" in n for n in choice.notes)
    with pytest.raises(SelectError, match=r"no subsystem fits --max_bytes 1,000,000 bytes "
                                          r"\(1.00 MB\): the smallest bytes on disk available "
                                          r"is d2-w0.5-int2 at 1,815,327 bytes"):
        choose(ROWS, {"max_bytes": 1e6})
    with pytest.raises(SelectError, match="ruled out by --max_wer"):
        choose(ROWS, {"max_wer": 12, "max_bytes": 2e6})
    no_rtf = [{**r, "rtf": None} for r in ROWS]
    with pytest.raises(SelectError, match="has no real-time factor"):
        choose(no_rtf, {"max_rtf": 1})


def test_cli_dry_run_and_errors(exp, capsys):
    from espnet_allinone.bin.select import main

    assert main(["--exp", str(exp), "--max_bytes", "2.4MB", "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert "chosen: d4-w0.5-int4 (WER 16.30%) under --max_bytes 2.4MB" in out
    assert "d4-w0.5-int4 *" in out and "<- chosen" in out
    assert not (exp / "selected.json").exists()
    assert main(["--exp", str(exp), "--max_bytes", "1MB"]) == 3
    assert "smallest bytes on disk available is d2-w0.5-int2" in capsys.readouterr().err
    assert main(["--exp", str(exp), "--max_bytes", "2 furlongs"]) == 2
    assert "unknown unit 'furlongs'" in capsys.readouterr().err
    assert main(["--exp", str(exp)]) == 2
    assert "give at least one budget" in capsys.readouterr().err
    assert main(["--exp", str(exp / "missing"), "--max_wer", "20"]) == 2
    assert "results.json not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0 and "budget on WER %" in capsys.readouterr().out


def test_cli_extracts_packs_and_records_the_choice(exp, capsys):
    """A real all-in-one checkpoint: the chosen subsystem is extracted and packed once."""
    from helpers.toy_experiment import shared_toy_experiment

    from espnet_allinone.bin.select import main
    from espnet_allinone.export.extracted_dir import subsystem_size

    paths = shared_toy_experiment()
    shutil.copyfile(paths["config"], exp / "config.yaml")
    shutil.copyfile(paths["model"], exp / "valid.loss.ave.pth")
    assert main(["--exp", str(exp), "--max_bytes", "2.5MB"]) == 0
    out = capsys.readouterr().out
    directory = exp / "extracted" / "d4-w0.5-int4"
    assert f"extracted: {directory}" in out
    assert (exp / "packed" / "d4-w0.5-int4.zip").is_file()
    assert subsystem_size(directory)[1] > 0
    record = json.loads((exp / "selected.json").read_text())
    assert record["subsystem"] == "d4-w0.5-int4" and record["budget"] == "--max_bytes 2.5MB"
    assert (exp / "selected.png").stat().st_size > 0
    stamp = (directory / "model.pth").stat().st_mtime_ns
    assert main(["--exp", str(exp), "--max_bytes", "2.5MB"]) == 0  # already there: reused
    assert (directory / "model.pth").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in (exp / "extracted").iterdir()) == ["d4-w0.5-int4"]


def test_mark_selected_draws_on_a_report_plot(exp):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from espnet_allinone.deploy.select import mark_selected

    fig, ax = plt.subplots()
    assert mark_selected(ax, exp) is False  # nothing selected yet
    (exp / "selected.json").write_text(json.dumps({**ROWS[2], "budget": "--max_bytes 2.4MB"}))
    assert mark_selected(ax, exp) is True
    assert any("selected: d4-w0.5-int4" in t.get_text() for t in ax.legend().get_texts())
    plt.close(fig)
