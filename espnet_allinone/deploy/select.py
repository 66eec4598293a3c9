"""The right subsystem for a budget, from the figures the report measured.

``results.json`` (written by ``python -m espnet_allinone.bin.report``) holds
one row per subsystem with its test WER, parameters, bytes on disk and CPU
real-time factor. Budgets (``max_bytes``, ``max_params``, ``max_rtf``,
``max_wer``) filter the rows; the pick is the lowest WER, then the smallest
file. A figure a budget needs but a row lacks makes that row ineligible, and
the reason is reported. Works for any subsystem string the project defines:
only the rows are read, never the string's parts.

Searched records (``python -m espnet_allinone.bin.search``) join the rows when
``<exp>/searched/search.json`` exists (:func:`read_searched`), marked
``"searched": true``: each budget's pick, sized by its extracted model file
like the report's rows, with the test WER once ``bin.search --collect`` has
read its scores (until then it is listed but not eligible, as any row
without a WER).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from espnet_allinone.errors import AllInOneError
from espnet_allinone.search.experiment import SEARCH_FILE, SEARCHED_DIR

SELECTED_FILE = "selected.json"

BYTE_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9,
              "kib": 2**10, "mib": 2**20, "gib": 2**30}
COUNT_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9}
BUDGETS = {  # budget -> (results.json field, what it is)
    "max_bytes": ("bytes", "bytes on disk"),
    "max_params": ("params", "parameters"),
    "max_rtf": ("rtf", "real-time factor"),
    "max_wer": ("wer", "WER %"),
}


class SelectError(AllInOneError, ValueError):
    """A budget, results file or pick that cannot be honoured; the message says why."""


def _number_and_unit(option: str, text: str) -> tuple[float, str]:
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z%]*)\s*", str(text))
    if not match:
        raise SelectError(f"--{option} {text!r}: not a number with an optional unit")
    return float(match.group(1)), match.group(2)


def parse_budget(option: str, text: str) -> float:
    """``--max_bytes 2MB`` -> 2e6; units: bytes B/kB/MB/GB/KiB/MiB/GiB, counts k/M/G, WER %."""
    value, unit = _number_and_unit(option, text)
    if option == "max_bytes":
        scale = BYTE_UNITS.get(unit.lower() if unit else "b")
        valid = "B, kB, MB, GB, KiB, MiB, GiB"
    elif option == "max_params":
        scale = COUNT_UNITS.get(unit.lower())
        valid = "none, k, M, G"
    elif option == "max_wer":
        scale = 1.0 if unit in ("", "%") else None
        valid = "none or %"
    elif option == "max_rtf":
        scale = 1.0 if unit == "" else None
        valid = "none (a ratio: compute seconds per audio second)"
    else:
        raise SelectError(f"unknown budget --{option}; valid: "
                          + ", ".join(f"--{b}" for b in BUDGETS))
    if scale is None:
        raise SelectError(f"--{option} {text!r}: unknown unit {unit!r}; valid units: {valid}")
    return value * scale


@dataclass
class Choice:
    chosen: dict
    front: list[dict]
    eligible: list[dict]
    notes: list[str] = field(default_factory=list)


def read_results(path: Path) -> list[dict]:
    """The rows of ``results.json`` (``{"rows": [...]}`` or a bare list), checked."""
    path = Path(path)
    if not path.is_file():
        raise SelectError(f"{path} not found: made by the report stage "
                          "(python -m espnet_allinone.bin.report, recipe stage 16)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SelectError(f"{path}: not valid JSON ({e})") from None
    rows = data.get("rows") if isinstance(data, Mapping) else data
    if not isinstance(rows, list) or not rows:
        raise SelectError(f"{path}: expected {{\"rows\": [{{\"subsystem\": ..., \"wer\": ..., "
                          "\"bytes\": ...}, ...]}} with at least one row")
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping) or not row.get("subsystem"):
            raise SelectError(f"{path}: row {i} has no 'subsystem': {row!r}")
    return [dict(r) for r in rows]


def read_searched(exp: Path) -> list[dict]:
    """The searched picks of ``<exp>/searched/search.json`` as rows (none when absent)."""
    path = Path(exp) / SEARCHED_DIR / SEARCH_FILE
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SelectError(f"{path}: not valid JSON ({e})") from None
    rows = []
    for entry in data.get("chosen") or []:
        if not isinstance(entry, Mapping) or not entry.get("name"):
            raise SelectError(f"{path}: a 'chosen' entry has no 'name': {entry!r}")
        rows.append({"subsystem": entry["name"], "searched": True, "wer": entry.get("wer"),
                     "cer": entry.get("cer"), "params": entry.get("params"),
                     "bytes": entry.get("disk_bytes", entry.get("bytes")),
                     "exact_bytes": entry.get("exact_bytes"), "rtf": entry.get("rtf"),
                     "dev_error": entry.get("dev_error"), "record": entry.get("record")})
    return rows


def _source(row: Mapping) -> str:
    return "search.json" if row.get("searched") else "results.json"


def _value(row: Mapping, key: str) -> float | None:
    value = row.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def pareto_front(rows: list[dict]) -> list[dict]:
    """Rows no other row beats on both bytes and WER, smallest first (rows lacking either skip)."""
    known = [r for r in rows if _value(r, "wer") is not None and _value(r, "bytes") is not None]
    front = [r for r in known if not any(
        o["bytes"] <= r["bytes"] and o["wer"] <= r["wer"]
        and (o["bytes"] < r["bytes"] or o["wer"] < r["wer"]) for o in known)]
    return sorted(front, key=lambda r: (r["bytes"], r["wer"]))


def choose(rows: list[dict], budgets: Mapping[str, float]) -> Choice:
    """Lowest WER, then fewest bytes, among rows within every budget; else a clear error."""
    notes = []
    eligible = list(rows)
    for option, limit in budgets.items():
        key, what = BUDGETS[option]
        missing = [r["subsystem"] for r in eligible if _value(r, key) is None]
        if missing:
            notes.append(f"no {what} ({key}) in results.json/search.json for "
                         f"{', '.join(missing)}: not eligible under --{option}")
        measured = [r for r in rows if _value(r, key) is not None]
        if not measured:
            raise SelectError(f"--{option}: results.json has no {what} ({key!r}) for any "
                              "subsystem; re-run the report with that figure measured")
        within = [r for r in eligible if _value(r, key) is not None and r[key] <= limit]
        if not within:
            best = min(measured, key=lambda r: r[key])
            if best[key] > limit:
                raise SelectError(
                    f"no subsystem fits --{option} {_fmt(key, limit)}: the smallest {what} "
                    f"available is {best['subsystem']} at {_fmt(key, best[key])}")
            raise SelectError(
                f"no subsystem fits every budget: those within --{option} "
                f"{_fmt(key, limit)} are ruled out by " + ", ".join(
                    f"--{o}" for o in budgets if o != option and list(budgets).index(o)
                    < list(budgets).index(option)))
        eligible = within
    for r in eligible:
        if _value(r, "wer") is None:
            hint = (" (decode, score and collect it: python -m espnet_allinone.bin.search "
                    "--help)") if r.get("searched") else ""
            notes.append(f"{r['subsystem']} has no WER in {_source(r)}: not eligible{hint}")
    ranked = [r for r in eligible if _value(r, "wer") is not None]
    if not ranked:
        raise SelectError("no subsystem within the budget has a WER in results.json")
    chosen = min(ranked, key=lambda r: (r["wer"], _value(r, "bytes") or math.inf))
    return Choice(chosen, pareto_front(rows), ranked, notes)


def _fmt(key: str, value: float) -> str:
    if key == "bytes":
        return f"{int(value):,} bytes ({value / 1e6:.2f} MB)"
    if key == "params":
        return f"{int(value):,} parameters"
    if key == "wer":
        return f"WER {value:.2f}%"
    return f"RTF {value:.4f}"


def format_table(rows: list[dict], chosen: dict | None, front: list[dict]) -> str:
    """Every row, the Pareto front marked ``*`` and the chosen one ``<-``."""
    on_front = {r["subsystem"] for r in front}
    width = max([18, *(len(r["subsystem"]) + 3 for r in rows)])
    lines = [f"{'subsystem':<{width}} {'WER%':>7} {'params':>12} {'bytes':>12} {'RTF':>8}"]

    def cell(r, k, spec):
        v = _value(r, k)
        return "-" if v is None else format(v, spec)

    for r in sorted(rows, key=lambda r: (_value(r, "bytes") or math.inf, r["subsystem"])):
        mark = (" *" if r["subsystem"] in on_front else "  ")
        pick = "  <- chosen" if chosen is not None and r["subsystem"] == chosen["subsystem"] else ""
        searched = "  (searched)" if r.get("searched") else ""
        lines.append(f"{r['subsystem'] + mark:<{width}} {cell(r, 'wer', '.2f'):>7} "
                     f"{cell(r, 'params', ',.0f'):>12} {cell(r, 'bytes', ',.0f'):>12} "
                     f"{cell(r, 'rtf', '.4f'):>8}{searched}{pick}")
    return "\n".join(lines)


def mark_selected(ax, outdir: Path) -> bool:
    """Star the subsystem ``select`` chose (``outdir/selected.json``) on a WER-vs-MB plot.

    For ``report/plot.py``: one call, ``mark_selected(ax, path.parent)``, before the
    legend. Returns False (and draws nothing) when nothing was selected.
    """
    path = Path(outdir) / SELECTED_FILE
    if not path.is_file():
        return False
    row = json.loads(path.read_text(encoding="utf-8"))
    if _value(row, "bytes") is None or _value(row, "wer") is None:
        return False
    ax.scatter([row["bytes"] / 1e6], [row["wer"]], marker="*", s=220, facecolors="none",
               edgecolors="k", linewidths=1.5, zorder=4,
               label=f"selected: {row['subsystem']} ({row.get('budget', '')})".rstrip(" ()"))
    return True


def plot_selection(rows: list[dict], outdir: Path, title: str = "") -> Path:
    """``outdir/selected.png``: WER against bytes, the Pareto front, the chosen one starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    known = [r for r in rows if _value(r, "wer") is not None and _value(r, "bytes") is not None]
    front = pareto_front(rows)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.scatter([r["bytes"] / 1e6 for r in known], [r["wer"] for r in known], c="C0", zorder=3,
               label="subsystem")
    ax.plot([r["bytes"] / 1e6 for r in front], [r["wer"] for r in front], "C3o--", zorder=3,
            label="Pareto front")
    for r in known:
        ax.annotate(r["subsystem"], (r["bytes"] / 1e6, r["wer"]), textcoords="offset points",
                    xytext=(4, 4), fontsize=7)
    mark_selected(ax, outdir)
    ax.set_xlabel("bytes on disk (MB)")
    ax.set_ylabel("WER (%)")
    ax.set_title(title or "subsystem selection")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(outdir) / "selected.png"
    fig.savefig(path)
    plt.close(fig)
    return path
