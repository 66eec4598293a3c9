"""The searched models' test figures, read back into ``search.json``.

The search ranks records on dev CER; what a user compares them by (and what
``bin.select`` ranks) is the test WER the scoring stage writes. Once the
searched directories are decoded and scored (commands in ``bin/search.py``),
:func:`collect` reads each one's ``scores.json`` into its ``search.json`` row
and, given the float full model's scored directory, runs the report's
significance tests (``report/significance.compare``: MAPSSWE and sign test)
of each searched model against it, as the report does for the subsystems.
"""

from __future__ import annotations

import json
from pathlib import Path

from espnet_allinone.errors import AllInOneError
from espnet_allinone.report.results import SCORES_FILE
from espnet_allinone.report.significance import compare
from espnet_allinone.search.experiment import SEARCH_FILE, SEARCHED_DIR


class ScoreError(AllInOneError, ValueError):
    """A search.json or scores file that is missing; the message names it."""


def read_search(exp: Path) -> dict:
    path = Path(exp) / SEARCHED_DIR / SEARCH_FILE
    if not path.is_file():
        raise ScoreError(f"{path} not found: made by python -m espnet_allinone.bin.search")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ScoreError(f"{path}: not valid JSON ({e})") from None


def collect(exp: Path, decode_dir: Path, test_set: str, float_reference: Path | None = None
            ) -> str:
    """Fill ``wer``/``cer`` (and ``vs_float``) of each searched row; returns a summary."""
    summary = read_search(exp)
    lines = []
    for row in summary["chosen"]:  # check every file before writing anything
        scores = Path(decode_dir) / row["name"] / test_set / SCORES_FILE
        if not scores.is_file():
            raise ScoreError(f"missing {scores}: decode and score {row['name']} first (see "
                             "python -m espnet_allinone.bin.search --help)")
    if float_reference is not None and not (Path(float_reference) / "score_wer" /
                                            "hyp.trn").is_file():
        raise ScoreError(f"{float_reference}/score_wer/hyp.trn not found: the float full "
                         "model's scored test dir (recipe stage 14)")
    for row in summary["chosen"]:
        mine = Path(decode_dir) / row["name"] / test_set
        scores = json.loads((mine / SCORES_FILE).read_text())
        row.update(wer=scores["wer"]["error_rate"], cer=scores["cer"]["error_rate"],
                   words=scores["wer"]["words"], test_set=test_set)
        verdict = ""
        if float_reference is not None:
            ref = Path(float_reference) / "score_wer"
            row["vs_float"] = {k: v.to_dict() for k, v in compare(
                ref / "ref.trn", ref / "hyp.trn", mine / "score_wer" / "hyp.trn",
                Path(exp) / SEARCHED_DIR / "significance" / row["name"]).items()}
            m = row["vs_float"]["mapsswe"]
            verdict = f", vs float full: MAPSSWE p={m['p']:g}" + (
                "" if m["better"] is None else f" ({'float' if m['better'] == 'a' else 'searched'}"
                " better)")
        lines.append(f"{row['name']}: {test_set} WER {row['wer']:.2f}% CER {row['cer']:.2f}%"
                     f" (dev CER {row['dev_error']:.2f}%){verdict}")
    path = Path(exp) / SEARCHED_DIR / SEARCH_FILE
    tmp = path.with_name(f".{SEARCH_FILE}.tmp")
    tmp.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)
    return "\n".join(lines)
