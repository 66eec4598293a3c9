"""Several runs of one recipe side by side: which training recipe is better?

An ablation changes one thing in the training config and runs the recipe
again on the same data. Each run's report (stage 16, ``results.json``) has
every subsystem's WER and its ratio to the twin trained alone; this module
puts the runs next to each other and tests each run against the first one
(the reference recipe) with sc_stats on the same test set, so that "distillation
helps the 2-bit paths" is a MAPSSWE verdict and not a reading of two numbers.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from espnet_allinone.report.results import (
    RESULTS_FILE,
    ReportError,
    float_reference,
    verdict,
)
from espnet_allinone.report.significance import compare

TRAIN_SECONDS_FILE = "train_seconds"
RATIO_TARGET = 1.05
"""The issue's target for all-in-one WER / alone WER, counted per run."""


@dataclass(frozen=True)
class Run:
    """One run's report rows (by subsystem) and where its hypotheses are."""

    name: str
    exp: Path
    rows: dict[str, dict]
    train_seconds: float | None

    def hyp_trn(self, sub: str, test_set: str, decode_tag: str) -> Path:
        return self.exp / decode_tag / sub / test_set / "score_wer" / "hyp.trn"

    def ratios(self) -> dict[str, float]:
        return {s: r["alone_ratio"] for s, r in self.rows.items()
                if r.get("alone_ratio") is not None}


def load_run(name: str, exp: Path) -> Run:
    """Read a run's ``results.json`` (written by the report stage)."""
    path = exp / RESULTS_FILE
    if not path.is_file():
        raise ReportError(f"run {name!r}: missing {path}: made by the report stage (16)")
    rows = {r["subsystem"]: r for r in json.loads(path.read_text())["rows"]}
    seconds = exp / TRAIN_SECONDS_FILE
    return Run(name, exp, rows,
               float(seconds.read_text()) if seconds.is_file() else None)


def common_subsystems(runs: list[Run]) -> list[str]:
    """The first run's subsystems (its order); every run must have them all."""
    subs = list(runs[0].rows)
    for run in runs[1:]:
        missing = [s for s in subs if s not in run.rows]
        if missing:
            raise ReportError(f"run {run.name!r} has no result for {', '.join(missing)} "
                              f"(it has {', '.join(run.rows)}); compare runs of one "
                              "subsystem list")
    return subs


def versus_first(runs: list[Run], subs: list[str], test_set: str, decode_tag: str,
                 workdir: Path) -> dict[tuple[str, str], dict]:
    """sc_stats of every later run against the first, per subsystem: {(run, sub): tests}."""
    first = runs[0]
    out = {}
    for run in runs[1:]:
        for sub in subs:
            ref_dir = first.hyp_trn(sub, test_set, decode_tag).parent
            mine = run.hyp_trn(sub, test_set, decode_tag)
            for path in (ref_dir / "ref.trn", ref_dir / "hyp.trn", mine):
                if not path.is_file():
                    raise ReportError(f"missing {path}: made by the scoring stage (14)")
            out[run.name, sub] = {k: v.to_dict() for k, v in compare(
                ref_dir / "ref.trn", ref_dir / "hyp.trn", mine,
                workdir / f"{run.name}_vs_{first.name}" / sub).items()}
    return out


def _cell(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def to_markdown(runs: list[Run], subs: list[str], tests: dict[tuple[str, str], dict],
                other_set: str | None = None) -> str:
    """Per-subsystem WER, alone ratio and verdict against the first run; then per-run
    summary figures (the issue's targets)."""
    first = runs[0].name
    head = ["subsystem"]
    for i, run in enumerate(runs):
        head += [f"{run.name} WER %", f"{run.name} ratio"]
        if i:
            head.append(f"{run.name} vs {first}")
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for sub in subs:
        cells = [sub]
        for i, run in enumerate(runs):
            row = run.rows[sub]
            cells += [f"{row['wer']:.2f}", _cell(row.get("alone_ratio"), ".3f")]
            if i:
                cells.append(verdict(tests.get((run.name, sub))))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", _summary(runs, subs, tests, other_set)]
    return "\n".join(lines) + "\n"


def _summary(runs: list[Run], subs: list[str], tests: dict[tuple[str, str], dict],
             other_set: str | None) -> str:
    """One line per run: median/worst alone ratio, how many meet the target, how many
    subsystems are significantly better/worse than the first run, training time."""
    head = ["run", "median ratio", "worst ratio", f"ratio <= {RATIO_TARGET}",
            f"better / worse than {runs[0].name}", "training s"]
    largest = str(float_reference(subs))
    if other_set:
        head.insert(5, f"{largest} {other_set} WER %")
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for run in runs:
        ratios = run.ratios()
        worst = max(ratios, key=ratios.get) if ratios else None
        winners = [tests[run.name, s]["mapsswe"]["better"] for s in subs
                   if (run.name, s) in tests]
        cells = [run.name,
                 _cell(statistics.median(ratios.values()) if ratios else None, ".3f"),
                 f"{ratios[worst]:.3f} ({worst})" if worst else "-",
                 f"{sum(r <= RATIO_TARGET for r in ratios.values())} of {len(ratios)}",
                 "-" if run is runs[0] else f"{winners.count('b')} / {winners.count('a')}",
                 _cell(run.train_seconds, ".0f")]
        if other_set:
            row = run.rows.get(largest, {})  # "-" when the float full model is not listed
            cells.insert(5, _cell(row.get("other_wer", {}).get(other_set), ".2f"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
