"""LibriSpeech data preparation from a local copy (no download).

Layout (as distributed on openslr.org, resource 12)::

    <root>/LibriSpeech/<part>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac
    <root>/LibriSpeech/<part>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt

``root`` may also be the ``LibriSpeech`` directory itself. Speakers are
``<speaker>-<chapter>`` as in the Kaldi recipe; the flac files are read by
ESPnet directly.
"""

from __future__ import annotations

from pathlib import Path

from espnet_allinone.corpus.datadir import DataDirError, write_datadir

PARTS = ("train-clean-100", "train-clean-360", "train-other-500", "dev-clean", "dev-other",
         "test-clean", "test-other")


def part_dir(root: Path, part: str) -> Path:
    """``<root>/LibriSpeech/<part>`` or ``<root>/<part>``; the error names what was looked for."""
    if part not in PARTS:
        raise DataDirError(f"unknown LibriSpeech part {part!r}; valid: {', '.join(PARTS)}")
    if not root.is_dir():
        raise DataDirError(
            f"LibriSpeech root {root} does not exist; set LIBRISPEECH in db.sh to the "
            "directory holding LibriSpeech/ (download from https://www.openslr.org/12)"
        )
    for cand in (root / "LibriSpeech" / part, root / part):
        if cand.is_dir():
            return cand
    raise DataDirError(f"no {part} under {root} (looked for {root / 'LibriSpeech' / part} "
                       f"and {root / part})")


def prepare(root: Path, part: str, outdir: Path) -> int:
    """Write a Kaldi data dir for one part; return its number of utterances."""
    base = part_dir(root, part)
    wav, text, utt2spk = {}, {}, {}
    for trans in sorted(base.glob("*/*/*.trans.txt")):
        for line in trans.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            utt, _, words = line.partition(" ")
            flac = trans.parent / f"{utt}.flac"
            if not flac.is_file():
                raise DataDirError(f"{trans} lists {utt} but {flac} is missing")
            speaker, chapter = utt.split("-")[:2]
            wav[utt] = str(flac.resolve())
            text[utt] = " ".join(words.split())
            utt2spk[utt] = f"{speaker}-{chapter}"
    if not wav:
        raise DataDirError(f"no *.trans.txt under {base}/<speaker>/<chapter>/")
    write_datadir(outdir, wav, text, utt2spk)
    return len(wav)
