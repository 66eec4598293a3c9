"""The results table: one row per subsystem, Pareto front, RESULTS.md.

Sizes come from the extracted model files (bytes on disk, low-bit weights
packed), error rates from the sclite scores the scoring stage wrote, the
real-time factor from :mod:`espnet_allinone.report.rtf`.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from espnet_allinone.errors import AllInOneError
from espnet_allinone.subsystem import Subsystem

SCORES_FILE = "scores.json"
RESULTS_FILE = "results.json"


class ReportError(AllInOneError, RuntimeError):
    """An input the report needs is missing; the message names the stage that makes it."""


@dataclass
class Row:
    """One subsystem's numbers (rates in percent, sizes in parameters and bytes)."""

    subsystem: str
    wer: float
    cer: float
    words: int
    params: int
    bytes: int
    compression: float = math.nan      # float full model bytes / this model's bytes
    rtf: float = math.nan              # CPU decoding seconds per audio second
    baseline_wer: float | None = None
    baseline_train_seconds: float | None = None
    exact_bytes: int | None = None     # from the architecture record (payload, no pickle)
    other_wer: dict[str, float] = field(default_factory=dict)  # further test sets
    vs_float: dict | None = None       # significance against the float full model
    vs_alone: dict | None = None       # significance against the twin trained alone
    vs_float_alone: dict | None = None  # against the float full model trained alone

    @property
    def alone_ratio(self) -> float | None:
        """All-in-one WER / the twin's trained alone (< 1: the all-in-one one is better)."""
        if self.baseline_wer is None:
            return None
        return self.wer / self.baseline_wer if self.baseline_wer else math.inf

    def to_dict(self) -> dict:
        out = {k: (None if isinstance(v, float) and math.isnan(v) else v)
               for k, v in asdict(self).items()}
        out["alone_ratio"] = self.alone_ratio
        return out


def verdict(sig: dict | None) -> str:
    """A table cell: MAPSSWE's verdict (``worse``/``better``/``n.s.``) with its p."""
    if not sig:
        return "-"
    test = sig["mapsswe"]
    word = "n.s." if test["better"] is None else ("better" if test["better"] == "b" else "worse")
    p = f"<{test['p']:g}" if test["p"] <= 0.001 else f"{test['p']:.3f}"
    return f"{word} (p={p})"


def summary_notes(rows: list[Row], reference: str) -> list[str]:
    """The figures the targets are stated in: alone ratios, lossless compression."""
    notes = []
    ratios = [r.alone_ratio for r in rows if r.alone_ratio is not None]
    if ratios:
        worst = max((r for r in rows if r.alone_ratio is not None), key=lambda r: r.alone_ratio)
        notes.append(f"all-in-one WER / alone WER: median {statistics.median(ratios):.3f}, "
                     f"worst {worst.alone_ratio:.3f} ({worst.subsystem}), over {len(ratios)} "
                     "subsystems")
    notes += _lossless(rows, "vs_float", reference)
    full = str(float_reference(r.subsystem for r in rows))
    twin = next((r.baseline_wer for r in rows if r.subsystem == full), None)
    label = f"{full} trained alone" + ("" if twin is None else f" (WER {twin:.2f}%)")
    notes += _lossless(rows, "vs_float_alone", label)
    return notes


def _lossless(rows: list[Row], test: str, reference: str) -> list[str]:
    """The largest compression whose WER is not significantly worse than ``reference``
    (the rows' ``test`` verdicts), as one note; none when nothing was tested."""
    tested = [r for r in rows if getattr(r, test)]
    lossless = [r for r in tested if getattr(r, test)["mapsswe"]["better"] != "a"
                and r.compression > 1.0]
    if not tested:
        return []
    if not lossless:
        return [f"every compressed subsystem is significantly worse than {reference}"]
    best = max(lossless, key=lambda r: r.compression)
    return [(f"largest compression whose WER is not significantly worse than {reference} "
            f"(MAPSSWE, p < 0.05): {best.compression:.2f}x ({best.subsystem}, "
            f"WER {best.wer:.2f}%)")]


def read_scores(decode_dir: Path, sub: str, test_set: str) -> dict:
    """``{wer: {...counts}, cer: {...}}`` written by the scoring stage for one subsystem."""
    path = decode_dir / sub / test_set / SCORES_FILE
    if not path.is_file():
        raise ReportError(f"missing {path}: made by the scoring stage (14) for subsystem {sub}")
    return json.loads(path.read_text())


def float_reference(subsystems: Iterable[str]) -> Subsystem:
    """The float full model of these subsystems' space: largest depth and width, float,
    unpruned (a pruned architecture is never the reference, even at the largest depth)."""
    return max(map(Subsystem.parse, subsystems),
               key=lambda s: (s.depth, s.width)).replace(bits="fp", prune=None)


def fill_compression(rows: list[Row], float_reference_bytes: int | None = None) -> str:
    """Set ``compression`` against the float full model; return how the reference was got.

    The reference is the float model at the largest depth and width among the
    rows if it was extracted (same file format, so like with like); otherwise
    ``float_reference_bytes`` (the extraction's figure) or 4 bytes a parameter
    of the largest row.
    """
    by_sub = {Subsystem.parse(r.subsystem): r for r in rows}
    full_fp = float_reference(r.subsystem for r in rows)
    if full_fp in by_sub:
        float_reference_bytes = by_sub[full_fp].bytes
        how = f"{full_fp} as extracted ({float_reference_bytes:,} bytes on disk)"
    elif float_reference_bytes is not None:
        how = f"{float_reference_bytes:,} bytes (4 a parameter), as the extraction recorded"
    else:  # every precision of a depth and width has the same parameters
        twins = [r.params for s, r in by_sub.items() if s.with_precision("fp") == full_fp]
        if not twins:
            raise ReportError(f"no size for the float full model {full_fp}: list it or any "
                              "precision of it, or pass the extraction's full_float bytes")
        params = twins[0]
        float_reference_bytes = 4 * params
        how = f"{full_fp} estimated as 4 bytes x {params:,} parameters"
    for r in rows:
        r.compression = float_reference_bytes / r.bytes if r.bytes else math.nan
    return how


def pareto_front(rows: list[Row]) -> list[Row]:
    """Rows no other row beats on both bytes and WER (smallest first)."""
    front = []
    for r in rows:
        dominated = any(
            o.bytes <= r.bytes and o.wer <= r.wer and (o.bytes < r.bytes or o.wer < r.wer)
            for o in rows
        )
        if not dominated:
            front.append(r)
    return sorted(front, key=lambda r: (r.bytes, r.wer))


def _fmt(value: float | None, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def to_markdown(rows: list[Row], title: str, notes: list[str]) -> str:
    """RESULTS.md text: a header, the table (Pareto rows marked *), notes."""
    front = {r.subsystem for r in pareto_front(rows)}
    has_base = any(r.baseline_wer is not None for r in rows)
    has_float_test = any(r.vs_float for r in rows)
    has_float_alone = any(r.vs_float_alone for r in rows)
    others = list(dict.fromkeys(t for r in rows for t in r.other_wer))
    head = ["subsystem", "WER %"]
    head += ["vs float"] if has_float_test else []
    head += ["vs float alone"] if has_float_alone else []
    head += [f"{t} WER %" for t in others]
    head += ["CER %", "params", "bytes", "exact bytes", "compression", "RTF"]
    if has_base:
        head += ["alone WER %", "ratio", "vs alone", "alone train s"]
    lines = [f"# {title}", "", "| " + " | ".join(head) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|"]
    for r in rows:
        cells = [f"{r.subsystem}{' *' if r.subsystem in front else ''}", _fmt(r.wer, ".2f")]
        cells += [verdict(r.vs_float)] if has_float_test else []
        cells += [verdict(r.vs_float_alone)] if has_float_alone else []
        cells += [_fmt(r.other_wer.get(t), ".2f") for t in others]
        cells += [_fmt(r.cer, ".2f"), f"{r.params:,}", f"{r.bytes:,}",
                  "-" if r.exact_bytes is None else f"{r.exact_bytes:,}",
                  _fmt(r.compression, ".2f") + "x", _fmt(r.rtf, ".3f")]
        if has_base:
            cells += [_fmt(r.baseline_wer, ".2f"), _fmt(r.alone_ratio, ".3f"),
                      verdict(r.vs_alone), _fmt(r.baseline_train_seconds, ".0f")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "`*` on the Pareto front of WER against bytes on disk."]
    if has_float_test or has_base:
        lines += [("`vs float` / `vs float alone` / `vs alone`: SCTK sc_stats matched-pair "
                  "sentence-segment word error test (MAPSSWE), two-tailed: `worse`/`better` "
                  "= significant at p < 0.05 (this subsystem against the all-in-one float "
                  "full model / the float full model trained alone / its own twin trained "
                  "alone), `n.s.` = not significant; the sign test's verdicts are in "
                  "results.json.")]
    lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def to_text_table(rows: list[Row]) -> str:
    """The same table in plain columns, printed at the end of a run."""
    front = {r.subsystem for r in pareto_front(rows)}
    header = (f"{'subsystem':<16} {'WER%':>7} {'CER%':>7} {'params':>11} {'bytes':>11} "
              f"{'compr':>7} {'RTF':>7}")
    out = [header]
    for r in rows:
        name = r.subsystem + (" *" if r.subsystem in front else "")
        out.append(f"{name:<16} {_fmt(r.wer, '7.2f'):>7} {_fmt(r.cer, '7.2f'):>7} "
                   f"{r.params:>11,} {r.bytes:>11,} {_fmt(r.compression, '6.2f'):>6}x "
                   f"{_fmt(r.rtf, '7.3f'):>7}")
    return "\n".join(out)
