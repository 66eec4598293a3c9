"""Scoring with sclite, the results table, the Pareto front, the plot, bin/report."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import yaml

from espnet_allinone.bin import report as report_cli
from espnet_allinone.bin import score as score_cli
from espnet_allinone.corpus.datadir import write_datadir
from espnet_allinone.export.extracted_dir import subsystem_size
from espnet_allinone.report.results import (
    ReportError,
    Row,
    fill_compression,
    pareto_front,
    to_markdown,
)
from espnet_allinone.report.scoring import (
    char_tokens,
    edit_errors,
    parse_rsum,
    score_dir,
)


def _ref_dir(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    rng = random.Random(3)
    words = ["ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "A", "B", "C", "RED", "GREEN"]
    text = {f"s{i % 3}-u{i:03d}": " ".join(rng.choice(words) for _ in range(rng.randint(2, 6)))
            for i in range(12)}
    d = tmp_path / "ref"
    write_datadir(d, {u: f"/x/{u}.wav" for u in text}, text, {u: u.split("-")[0] for u in text})
    return d, text


def _corrupt(text: dict[str, str], seed: int) -> dict[str, str]:
    rng = random.Random(seed)
    out = {}
    for u, t in text.items():
        w = t.split()
        op = rng.randrange(4)
        if op == 0:
            w[0] = "NINE"
        elif op == 1 and len(w) > 1:
            w.pop()
        elif op == 2:
            w.insert(1, "OH")
        out[u] = " ".join(w)
    return out


def test_sclite_scores_match_an_independent_edit_distance(tmp_path: Path) -> None:
    ref_dir, ref = _ref_dir(tmp_path)
    hyp = _corrupt(ref, 5)
    hyp.pop(min(hyp))  # a missing hypothesis counts as all deletions
    hyp_file = tmp_path / "hyp.txt"
    hyp_file.write_text("".join(f"{u} {t}\n" for u, t in hyp.items()))
    scores = score_dir(ref_dir, hyp_file, tmp_path / "out")
    want_w = sum(edit_errors(ref[u].split(), hyp.get(u, "").split()) for u in ref)
    want_c = sum(edit_errors(char_tokens(ref[u]).split(), char_tokens(hyp.get(u, "")).split())
                 for u in ref)
    assert scores["wer"].errors == want_w > 0
    assert scores["wer"].words == sum(len(t.split()) for t in ref.values())
    assert scores["cer"].errors == want_c
    assert scores["wer"].error_rate == pytest.approx(100 * want_w / scores["wer"].words)
    assert (tmp_path / "out" / "score_wer" / "result.txt").read_text().count("Sum") >= 1
    assert char_tokens("AB  C") == "A B <space> C"


def test_score_cli_writes_scores_json_and_rejects_bad_input(tmp_path: Path, capsys) -> None:
    ref_dir, ref = _ref_dir(tmp_path)
    hyp_file = tmp_path / "hyp.txt"
    hyp_file.write_text("".join(f"{u} {t}\n" for u, t in ref.items()))
    assert score_cli.main(["--ref_dir", str(ref_dir), "--hyp_text", str(hyp_file),
                           "--outdir", str(tmp_path / "o")]) == 0
    scores = json.loads((tmp_path / "o" / "scores.json").read_text())
    assert scores["wer"]["error_rate"] == 0.0 and scores["cer"]["errors"] == 0
    hyp_file.write_text("nobody-x HELLO\n")
    assert score_cli.main(["--ref_dir", str(ref_dir), "--hyp_text", str(hyp_file),
                           "--outdir", str(tmp_path / "o")]) == 2
    assert "nobody-x" in capsys.readouterr().err
    with pytest.raises(RuntimeError, match="no '| Sum |' raw-count row"):
        parse_rsum("garbage")


def test_pareto_front_and_compression() -> None:
    rows = [Row("d4-w1-fp", 5.0, 2.0, 100, 1000, 4000), Row("d4-w1-int4", 5.5, 2.1, 100, 1000, 600),
            Row("d2-w1-fp", 9.0, 4.0, 100, 500, 2000), Row("d2-w0.5-int2", 20.0, 9.0, 100, 300, 150),
            Row("d2-w1-int4", 9.5, 4.2, 100, 500, 700)]
    front = [r.subsystem for r in pareto_front(rows)]
    assert front == ["d2-w0.5-int2", "d4-w1-int4", "d4-w1-fp"]
    how = fill_compression(rows)
    assert "d4-w1-fp as extracted" in how
    assert [round(r.compression, 3) for r in rows] == [1.0, 6.667, 2.0, 26.667, 5.714]
    rows2 = rows[1:]
    assert "estimated as 4 bytes x 1,000" in fill_compression(rows2)
    assert rows2[0].compression == pytest.approx(4000 / 600)
    fill_compression(rows2, float_reference_bytes=6000)
    assert rows2[0].compression == pytest.approx(10.0)
    md = to_markdown(rows, "T", ["note one"])
    lines = [ln for ln in md.splitlines() if ln.startswith("| d")]
    assert len(lines) == 5 and lines[0].startswith("| d4-w1-fp * | 5.00 | 2.00 |")
    assert "| d2-w1-fp | 9.00" in md and "- note one" in md
    pruned_first = [Row("d4-w1-fp-p0.5", 7.0, 3.0, 100, 500, 2000), *rows]
    assert "d4-w1-fp as extracted" in fill_compression(pruned_first)
    assert pruned_first[0].compression == pytest.approx(2.0)
    with pytest.raises(ReportError, match="no size for the float full model d4-w1-fp"):
        fill_compression([Row("d4-w1-fp-p0.5", 7.0, 3.0, 100, 500, 2000)])


def test_subsystem_size_reads_extractions_exact_params(tmp_path: Path) -> None:
    d = tmp_path / "d2-w0.5-int4"
    d.mkdir()
    (d / "config.yaml").write_text("encoder: x\n")
    torch.save({"w": torch.zeros(100)}, d / "model.pth")
    with pytest.raises(FileNotFoundError, match=r"extract_info.yaml .*stage \(12\)"):
        subsystem_size(d)
    (d / "extract_info.yaml").write_text(yaml.safe_dump({"params": 1234}))
    assert subsystem_size(d) == (1234, (d / "model.pth").stat().st_size)


def _fake_exp(tmp_path: Path, subs: dict[str, tuple[float, int]]) -> Path:
    """An experiment dir as stages 12-14 leave it: extracted models and scores."""
    exp = tmp_path / "exp"
    for sub, (wer, n) in subs.items():
        d = exp / "extracted" / sub
        d.mkdir(parents=True)
        (d / "config.yaml").write_text("encoder: x\n")
        torch.save({"w": torch.zeros(n)}, d / "model.pth")
        (d / "extract_info.yaml").write_text(
            yaml.safe_dump({"params": n, "bytes": {"full_float": 40000}}))
        s = exp / "decode" / sub / "test"
        s.mkdir(parents=True)
        counts = {"words": 200, "errors": int(wer * 2), "error_rate": wer}
        (s / "scores.json").write_text(json.dumps({"wer": counts,
                                                   "cer": {**counts, "error_rate": wer / 2}}))
    return exp


def test_report_cli_writes_results_plot_and_table(tmp_path: Path, capsys) -> None:
    exp = _fake_exp(tmp_path, {"d2-w1-fp": (8.0, 5000), "d2-w0.5-int4": (12.5, 800),
                               "d1-w1-fp": (15.0, 3000)})
    base = tmp_path / "baselines.json"
    base.write_text(json.dumps({"d2-w1-fp": {"wer": 9.0, "train_seconds": 100},
                                "d2-w0.5-int4": {"wer": 14.0, "train_seconds": 60},
                                "d1-w1-fp": {"wer": 16.0, "train_seconds": 40}}))
    rc = report_cli.main(["--asr_exp", str(exp), "--rtf_utts", "0", "--baselines", str(base),
                          "--allinone_train_seconds", "80"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "d2-w0.5-int4 *" in out and "d1-w1-fp " in out and "RESULTS.md" in out
    md = (exp / "RESULTS.md").read_text()
    rows = json.loads((exp / "results.json").read_text())["rows"]
    assert [r["subsystem"] for r in rows] == ["d2-w0.5-int4", "d1-w1-fp", "d2-w1-fp"]
    assert [r["wer"] for r in rows] == [12.5, 15.0, 8.0]
    assert all(r["params"] > 0 and r["bytes"] > r["params"] * 4 * 0.9 for r in rows)
    assert rows[0]["compression"] > rows[1]["compression"] > 1.0  # vs the extracted d2-w1-fp
    assert rows[2]["compression"] == pytest.approx(1.0)
    assert rows[0]["baseline_wer"] == 14.0 and rows[0]["rtf"] is None
    assert "ratio 2.50x" in md and "alone WER %" in md
    png = exp / "wer_vs_size.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_report_cli_names_the_missing_stage(tmp_path: Path, capsys) -> None:
    exp = _fake_exp(tmp_path, {"d2-w1-fp": (8.0, 50)})
    assert report_cli.main(["--asr_exp", str(exp), "--rtf_utts", "0",
                            "--subsystems", "d2-w1-fp d9-w1-fp"]) == 2
    assert "d9-w1-fp/test/scores.json: made by the scoring stage (14)" in capsys.readouterr().err
    (exp / "decode" / "d2-w1-fp" / "test" / "scores.json").unlink()
    assert report_cli.main(["--asr_exp", str(exp), "--rtf_utts", "0"]) == 2
    assert "scoring stage (14)" in capsys.readouterr().err
    assert report_cli.main(["--asr_exp", str(tmp_path / "none"), "--rtf_utts", "0"]) == 2
    assert "decoding stage (13)" in capsys.readouterr().err
    assert report_cli.main(["--asr_exp", str(exp), "--subsystems", "d2-w1-fp", "--rtf_utts",
                            "3"]) == 2
    assert "scoring stage (14)" in capsys.readouterr().err


def test_plot_labels_do_not_overlap(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from espnet_allinone.report.plot import label_without_overlap

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    points = [("d2-w1-int2", 1.95, 29.3), ("d2-w0.5-int2", 1.82, 29.8), ("d2-w0.5-int4", 1.96, 29.1),
              ("d4-w1-fp", 9.7, 11.8)]
    ax.scatter([p[1] for p in points], [p[2] for p in points])
    labels = label_without_overlap(ax, points)
    renderer = fig.canvas.get_renderer()
    boxes = [a.get_window_extent(renderer) for a in labels]
    assert sorted(a.get_text() for a in labels) == sorted(p[0] for p in points)
    assert not any(boxes[i].overlaps(boxes[j]) for i in range(len(boxes))
                   for j in range(i + 1, len(boxes)))
    plt.close(fig)


def _trn(path: Path, hyps: dict[str, str]) -> Path:
    path.write_text("".join(f"{text} (spk{int(utt[1:]) % 20}-{utt})\n"
                            for utt, text in hyps.items()))
    return path


def _systems(tmp_path: Path, n: int = 120) -> tuple[Path, Path, Path]:
    """A reference and two systems: one right on 95% of the utterances, one on 30%."""
    rng = random.Random(0)
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf"]
    ref = {f"u{i:03d}": " ".join(rng.choice(words) for _ in range(6)) for i in range(n)}

    def noisy(p_right: float) -> dict[str, str]:
        out = {}
        for utt, text in ref.items():
            toks = text.split()
            if rng.random() > p_right:
                toks[rng.randrange(6)] = "zulu"
                toks[rng.randrange(6)] = "yankee"
            out[utt] = " ".join(toks)
        return out

    return (_trn(tmp_path / "ref.trn", ref), _trn(tmp_path / "good.trn", noisy(0.95)),
            _trn(tmp_path / "bad.trn", noisy(0.3)))


def test_significance_finds_a_clear_difference_and_none_between_equal_systems(tmp_path):
    from espnet_allinone.report.significance import compare

    ref, good, bad = _systems(tmp_path)
    clear = compare(ref, good, bad, tmp_path / "clear")
    assert clear["mapsswe"].better == "a" and clear["mapsswe"].p < 0.05
    assert clear["sign"].better == "a" and clear["sign"].p < 0.05
    flipped = compare(ref, bad, good, tmp_path / "flipped")
    assert flipped["mapsswe"].better == "b" and flipped["mapsswe"].p < 0.05
    assert flipped["sign"].better == "b" and flipped["sign"].p < 0.05
    same = compare(ref, good, good, tmp_path / "same")
    assert same["mapsswe"].better is None and same["mapsswe"].p == 1.0
    assert same["sign"].better is None and same["sign"].p == 1.0
    assert not same["sign"].significant
    # one utterance worse of 120: a difference, but not a significant one
    lines = good.read_text().splitlines()
    lines[0] = "zulu yankee " + lines[0]
    near = tmp_path / "near.trn"
    near.write_text("\n".join(lines) + "\n")
    close = compare(ref, good, near, tmp_path / "close")
    assert close["mapsswe"].better is None and 0.05 < close["mapsswe"].p < 1.0
    assert close["sign"].better is None and close["sign"].p >= 0.05


def test_missing_sc_stats_names_the_install_command(tmp_path, monkeypatch):
    from espnet_allinone.report import significance

    monkeypatch.setattr(significance, "SC_STATS_CANDIDATES", ())
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("SC_STATS", raising=False)
    ref, good, bad = _systems(tmp_path)
    with pytest.raises(RuntimeError, match="sc_stats not found.*apt-get install sctk"):
        significance.compare(ref, good, bad, tmp_path / "x")


def test_report_marks_significance_and_names_missing_baselines(tmp_path, capsys):
    exp = _fake_exp(tmp_path, {"d2-w1-fp": (8.0, 5000), "d2-w0.5-int2": (40.0, 800),
                               "d2-w1-int4": (8.5, 1500)})
    ref, good, bad = _systems(tmp_path)
    for sub, hyp in (("d2-w1-fp", good), ("d2-w0.5-int2", bad), ("d2-w1-int4", good)):
        d = exp / "decode" / sub / "test" / "score_wer"
        d.mkdir()
        (d / "ref.trn").write_text(ref.read_text())
        (d / "hyp.trn").write_text(hyp.read_text())
        unseen = exp / "decode" / sub / "test_unseen"
        unseen.mkdir()
        (unseen / "scores.json").write_text(json.dumps(
            {"wer": {"words": 50, "error_rate": 20.0}, "cer": {"error_rate": 9.0}}))
    base = tmp_path / "baselines.json"
    base.write_text(json.dumps({
        "d2-w1-int4": {"wer": 9.0, "cer": 4.0, "train_seconds": 50, "hyp_trn": str(bad)},
        "d2-w1-fp": {"wer": 8.4, "cer": 4.0, "train_seconds": 70, "hyp_trn": str(good)},
        "missing": {"d2-w0.5-int2": "no baselines/d2-w0.5-int2/train_seconds (training "
                                    "or scoring did not finish)"}}))
    assert report_cli.main(["--asr_exp", str(exp), "--rtf_utts", "0", "--baselines", str(base),
                            "--other_test_sets", "test_unseen",
                            "--allinone_train_seconds", "60"]) == 0
    rows = {r["subsystem"]: r for r in json.loads((exp / "results.json").read_text())["rows"]}
    assert rows["d2-w0.5-int2"]["vs_float"]["mapsswe"]["better"] == "a"  # worse than float
    assert rows["d2-w1-int4"]["vs_float"]["mapsswe"]["better"] is None
    assert rows["d2-w1-int4"]["vs_alone"]["mapsswe"]["better"] == "b"   # beats its twin
    assert rows["d2-w1-fp"]["vs_float"] is None and rows["d2-w0.5-int2"]["baseline_wer"] is None
    assert rows["d2-w1-int4"]["alone_ratio"] == pytest.approx(8.5 / 9.0)
    assert rows["d2-w1-fp"]["other_wer"] == {"test_unseen": 20.0}
    md = (exp / "RESULTS.md").read_text()
    assert "no baseline for d2-w0.5-int2: no baselines/d2-w0.5-int2/train_seconds" in md
    # against the float full model trained alone (its twin's hypotheses are `good`)
    assert rows["d2-w0.5-int2"]["vs_float_alone"]["mapsswe"]["better"] == "a"
    assert rows["d2-w1-int4"]["vs_float_alone"]["mapsswe"]["better"] is None
    assert rows["d2-w1-fp"]["vs_float_alone"] == rows["d2-w1-fp"]["vs_alone"]
    assert "| d2-w0.5-int2 * | 40.00 | worse (p=<0.001) | worse (p=<0.001) | 20.00 |" in md
    assert "not significantly worse than d2-w1-fp trained alone (WER 8.40%) (MAPSSWE, " \
           f"p < 0.05): {rows['d2-w1-int4']['compression']:.2f}x (d2-w1-int4" in md
    assert "test_unseen WER %" in md and "ratio 2.00x" in md
    assert "not significantly worse than the float full model d2-w1-fp (MAPSSWE, p < 0.05): " \
           f"{rows['d2-w1-int4']['compression']:.2f}x (d2-w1-int4" in md
    assert "median 0.948, worst 0.952 (d2-w1-fp), over 2 subsystems" in md


def _scored_run(root: Path, hyps: dict[str, Path], ref: Path, wers: dict[str, float]) -> Path:
    """A run after the report stage: extracted models, scores, sclite inputs, results.json."""
    root.mkdir()
    exp = _fake_exp(root, {sub: (wers[sub], 5000) for sub in hyps})
    for sub, hyp in hyps.items():
        d = exp / "decode" / sub / "test" / "score_wer"
        d.mkdir()
        (d / "ref.trn").write_text(ref.read_text())
        (d / "hyp.trn").write_text(hyp.read_text())
    base = root / "baselines.json"
    base.write_text(json.dumps({sub: {"wer": 10.0, "cer": 4.0, "train_seconds": 50}
                                for sub in hyps}))
    assert report_cli.main(["--asr_exp", str(exp), "--rtf_utts", "0",
                            "--baselines", str(base)]) == 0
    return exp


def test_compare_runs_tests_each_run_against_the_first(tmp_path, capsys):
    from espnet_allinone.bin import compare_runs

    ref, good, bad = _systems(tmp_path)
    default = _scored_run(tmp_path / "a", {"d2-w1-fp": good, "d2-w1-int4": bad}, ref,
                          {"d2-w1-fp": 8.0, "d2-w1-int4": 30.0})
    distill = _scored_run(tmp_path / "b", {"d2-w1-fp": good, "d2-w1-int4": good}, ref,
                          {"d2-w1-fp": 8.0, "d2-w1-int4": 9.0})
    out = tmp_path / "ablation.md"
    capsys.readouterr()
    assert compare_runs.main(["--run", f"default={default}", "--run", f"distill={distill}",
                              "--out", str(out)]) == 0
    table = out.read_text()
    assert table == capsys.readouterr().out
    assert "| d2-w1-int4 | 30.00 | 3.000 | 9.00 | 0.900 | better (p=<0.001) |" in table
    assert "| d2-w1-fp | 8.00 | 0.800 | 8.00 | 0.800 | n.s. (p=1.000) |" in table
    assert "| default | 1.900 | 3.000 (d2-w1-int4) | 1 of 2 | - |" in table
    assert "| distill | 0.850 | 0.900 (d2-w1-int4) | 2 of 2 | 1 / 0 |" in table


def test_compare_runs_names_what_is_missing(tmp_path, capsys):
    from espnet_allinone.bin import compare_runs

    ref, good, _ = _systems(tmp_path)
    full = _scored_run(tmp_path / "a", {"d2-w1-fp": good, "d2-w1-int4": good}, ref,
                       {"d2-w1-fp": 8.0, "d2-w1-int4": 9.0})
    part = _scored_run(tmp_path / "b", {"d2-w1-fp": good}, ref, {"d2-w1-fp": 8.0})
    assert compare_runs.main(["--run", f"x={full}", "--run", f"y={part}"]) == 2
    assert "run 'y' has no result for d2-w1-int4 (it has d2-w1-fp)" in capsys.readouterr().err
    assert compare_runs.main(["--run", f"x={full}", "--run", f"y={tmp_path}"]) == 2
    assert "results.json: made by the report stage (16)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        compare_runs.main(["--run", f"x={full}"])
    assert "at least two runs" in capsys.readouterr().err
