"""Scoring with NIST sclite: trn files from Kaldi text, and the error counts back.

sclite is the scorer ESPnet recipes use; Debian's ``sctk`` package installs it
at ``/usr/lib/sctk/bin/sclite`` (not on PATH), so it is looked up there too.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from espnet_allinone.corpus.datadir import read_table
from espnet_allinone.errors import AllInOneError

SCLITE_CANDIDATES = ("/usr/lib/sctk/bin/sclite", "/usr/bin/sclite", "/usr/local/bin/sclite")
_SUM_ROW = re.compile(r"^\s*\|\s*Sum\s*\|(?P<left>[^|]*)\|(?P<right>[^|]*)\|\s*$")


class ScoringError(AllInOneError, RuntimeError):
    """sclite missing, or its output not understood."""


@dataclass(frozen=True)
class ErrorCounts:
    """Raw sclite counts; rates in percent."""

    sentences: int
    words: int
    correct: int
    substitutions: int
    deletions: int
    insertions: int
    errors: int
    sentence_errors: int

    @property
    def error_rate(self) -> float:
        return 100.0 * self.errors / self.words if self.words else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "error_rate": round(self.error_rate, 3)}


def find_sctk_tool(name: str, candidates: tuple[str, ...]) -> str:
    """Path of an SCTK program: $<NAME>, PATH, or ``candidates`` (Debian's location)."""
    env = name.upper()
    for cand in (os.environ.get(env), shutil.which(name), *candidates):
        if cand and os.access(cand, os.X_OK):
            return cand
    raise ScoringError(
        f"{name} not found (looked at ${env}, PATH and " + ", ".join(candidates)
        + "); install it with: sudo apt-get install sctk"
    )


def find_sclite() -> str:
    return find_sctk_tool("sclite", SCLITE_CANDIDATES)


def char_tokens(text: str) -> str:
    """``AB C`` -> ``A B <space> C`` (CER counts characters, space included)."""
    return " ".join("<space>" if c == " " else c for c in " ".join(text.split()))


def write_trn(text: dict[str, str], utt2spk: dict[str, str], path: Path, unit: str,
              keys: list[str]) -> None:
    """sclite trn lines ``TOKENS (spk-utt)`` for ``keys`` (missing hyps are empty)."""
    if unit not in ("word", "char"):
        raise ValueError(f"unit must be word or char, got {unit!r}")
    with open(path, "w", encoding="utf-8") as f:
        for utt in keys:
            words = " ".join(text.get(utt, "").split())
            tokens = char_tokens(words) if unit == "char" else words
            f.write(f"{tokens} ({utt2spk[utt]}-{utt})\n")


def run_sclite(ref_trn: Path, hyp_trn: Path, result: Path) -> ErrorCounts:
    """Run sclite, keep its full report in ``result``, return the summed counts."""
    cmd = [find_sclite(), "-r", str(ref_trn), "trn", "-h", str(hyp_trn), "trn",
           "-i", "rm", "-o", "sum", "rsum", "pralign", "dtl", "stdout"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    result.write_text(proc.stdout, encoding="utf-8")
    if proc.returncode != 0:
        raise ScoringError(f"sclite failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr}")
    return parse_rsum(proc.stdout, source=str(result))


def parse_rsum(report: str, source: str = "sclite output") -> ErrorCounts:
    """The ``| Sum |`` row of sclite's raw-count summary."""
    for line in report.splitlines():
        m = _SUM_ROW.match(line)
        if m:
            nums = [int(float(x)) for x in (m["left"] + " " + m["right"]).split()]
            if len(nums) == 8:
                return ErrorCounts(*nums)
    raise ScoringError(f"no '| Sum |' raw-count row in {source}; was sclite run with -o rsum?")


def score_dir(ref_dir: Path, hyp_text: Path, out_dir: Path) -> dict[str, ErrorCounts]:
    """Score a hypothesis ``text`` against the data dir ``ref_dir`` (WER and CER).

    Writes ``out_dir/score_{wer,cer}/{ref,hyp}.trn`` and ``result.txt`` like asr.sh.
    """
    ref = read_table(ref_dir / "text")
    utt2spk = read_table(ref_dir / "utt2spk")
    hyp = read_table(hyp_text)
    unknown = sorted(set(hyp) - set(ref))
    if unknown:
        raise ScoringError(f"{hyp_text} has utterances not in {ref_dir / 'text'}: {unknown[:5]}")
    keys = sorted(ref)
    out: dict[str, ErrorCounts] = {}
    for name, unit in (("wer", "word"), ("cer", "char")):
        d = out_dir / f"score_{name}"
        d.mkdir(parents=True, exist_ok=True)
        write_trn(ref, utt2spk, d / "ref.trn", unit, keys)
        write_trn(hyp, utt2spk, d / "hyp.trn", unit, keys)
        out[name] = run_sclite(d / "ref.trn", d / "hyp.trn", d / "result.txt")
    return out


def edit_errors(ref: list[str], hyp: list[str]) -> int:
    """Levenshtein distance over tokens (an independent check on sclite)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]
