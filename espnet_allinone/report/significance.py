"""Is one system's WER really different from another's? SCTK's ``sc_stats``.

Two tests, as the papers report them: the matched-pair sentence-segment word
error test (MAPSSWE, NIST's standard for ASR) and the sign test over
speakers. Both are two-tailed; a difference is significant at p < 0.05.
Each system's hypotheses are aligned by sclite (``-o sgml``) against the same
reference, then ``sc_stats`` compares the two alignments.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from espnet_allinone.report.scoring import ScoringError, find_sclite, find_sctk_tool

SC_STATS_CANDIDATES = ("/usr/lib/sctk/bin/sc_stats", "/usr/bin/sc_stats",
                       "/usr/local/bin/sc_stats")
TESTS = {"MP": "mapsswe", "SI": "sign"}
"""sc_stats' abbreviations -> our names."""
LEVEL = 0.05

_CELL = re.compile(r"^\s*(?P<who>\S+)\s+(?P<p>[<>]?\d*\.\d+)\s*\**\s*$")


@dataclass(frozen=True)
class Significance:
    """One test's verdict on systems a and b: p (an upper bound where sc_stats prints
    ``<0.001``) and which system is better when the difference is significant."""

    test: str
    p: float
    better: str | None      # "a", "b" or None (no difference at p < LEVEL)

    @property
    def significant(self) -> bool:
        return self.better is not None

    def to_dict(self) -> dict:
        return {"test": self.test, "p": self.p, "better": self.better}


def find_sc_stats() -> str:
    return find_sctk_tool("sc_stats", SC_STATS_CANDIDATES)


def _sgml(ref_trn: Path, hyp_trn: Path, workdir: Path, name: str) -> Path:
    """sclite's alignment of ``hyp_trn`` (system title ``name``) as SGML."""
    hyp = workdir / name
    shutil.copyfile(hyp_trn, hyp)
    cmd = [find_sclite(), "-r", str(Path(ref_trn).absolute()), "trn", "-h", name, "trn",
           "-i", "rm", "-o", "sgml", "-n", name]  # run in workdir: the system is titled name
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=workdir)
    out = workdir / f"{name}.sgml"
    if proc.returncode != 0 or not out.is_file():
        raise ScoringError(f"sclite failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr}")
    return out


def compare(ref_trn: Path, hyp_a: Path, hyp_b: Path, workdir: Path) -> dict[str, Significance]:
    """MAPSSWE and sign test of system a against system b on the same reference.

    ``workdir`` keeps sc_stats' reports (``stats.*``) for inspection.
    """
    sc_stats = find_sc_stats()
    workdir.mkdir(parents=True, exist_ok=True)
    sgml = [_sgml(ref_trn, hyp, workdir, name) for hyp, name in ((hyp_a, "a"), (hyp_b, "b"))]
    cmd = [sc_stats, "-p", "-t", "mapsswe", "sign", "-u", "-n", "stats"]
    proc = subprocess.run(cmd, input="".join(p.read_text() for p in sgml),
                          capture_output=True, text=True, check=False, cwd=workdir)
    report = workdir / "stats.stats.unified"
    if proc.returncode != 0 or not report.is_file():
        raise ScoringError(f"sc_stats failed ({proc.returncode}): {' '.join(cmd)}\n"
                           f"{proc.stdout[-2000:]}{proc.stderr}")
    return parse_unified(report.read_text(), source=str(report))


def parse_unified(report: str, source: str = "sc_stats output") -> dict[str, Significance]:
    """The verdicts of sc_stats' unified report for systems titled ``a`` and ``b``.

    Each test row holds ``~  p`` (no difference at 0.05) or ``<better system>  p  *``.
    """
    out: dict[str, Significance] = {}
    for line in report.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 4 or cells[0] not in TESTS or not cells[-1] in TESTS:
            continue
        verdict = next((c for c in cells[1:-1] if _CELL.match(c)), None)
        if verdict is None:
            continue
        m = _CELL.match(verdict)
        p = float(m["p"].lstrip("<>"))
        who = m["who"]
        if who not in ("~", "a", "b"):
            raise ScoringError(f"{source}: unexpected system {who!r} in {line.strip()!r}")
        out[TESTS[cells[0]]] = Significance(TESTS[cells[0]], p, None if who == "~" else who)
    missing = [t for t in TESTS.values() if t not in out]
    if missing:
        raise ScoringError(f"no {', '.join(missing)} verdict in {source}")
    return out
