"""Switchboard-1 (LDC97S62) and eval2000 (LDC2002S09/T43) data preparation.

Switchboard layout: two-channel SPHERE files anywhere under ``<swbd>``
(``swb1_d1/data/sw02001.sph`` ...) and the ISIP ms98 transcripts
(``swb_ms98_transcriptions/20/2001/sw2001A-ms98-a-trans.text``, lines
``sw2001A-ms98-a-0001 0.000000 0.977625 words``). Each conversation side is
one recording (``sw02001-A``); utterances are segments of it. Audio is read
through ``sph2pipe`` when installed (the LDC files are shorten-compressed),
else through sox (uncompressed SPHERE only).

eval2000: ``*.sph`` under ``<eval2000>`` and one ``*.stm`` reference.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from espnet_allinone.corpus.datadir import DataDirError, write_datadir

_NOISE = re.compile(r"^\[(silence|noise|laughter|vocalized-noise)\]$")
_LAUGH_WORD = re.compile(r"^\[laughter-(.+)\]$")


def normalise(words: str) -> str:
    """Drop noise marks, keep laughed words, upper-case (ms98 conventions, simplified)."""
    out = []
    for w in words.lower().split():
        if _NOISE.match(w) or w.startswith("<") or w in ("(%hesitation)",):
            continue
        m = _LAUGH_WORD.match(w)
        if m:
            w = m.group(1)
        w = re.sub(r"\[[^\]]*\]", "", w).strip("-")  # partial words: "-[t]he" -> "he"
        w = w.replace("{", "").replace("}", "")
        if w:
            out.append(w.upper())
    return " ".join(out)


def audio_command(sph: Path, channel: int) -> str:
    """A wav.scp pipe that writes one channel of a SPHERE file as wav."""
    if shutil.which("sph2pipe"):
        return f"sph2pipe -f wav -p -c {channel} {sph} |"
    return f"sox -t sph {sph} -t wav -e signed-integer -b 16 - remix {channel} |"


def _sph_files(root: Path) -> dict[str, Path]:
    found = {p.stem.lower(): p.resolve() for p in root.rglob("*.sph")}
    if not found:
        raise DataDirError(f"no .sph files under {root}")
    return found


def prepare_swbd(root: Path, outdir: Path) -> int:
    """Kaldi data dir (with segments) of all of Switchboard-1; return utterances."""
    if not root.is_dir():
        raise DataDirError(f"Switchboard root {root} does not exist; set SWBD in db.sh to the "
                           "LDC97S62 directory (with swb_ms98_transcriptions/ inside)")
    trans_files = sorted(root.rglob("*-ms98-a-trans.text"))
    if not trans_files:
        raise DataDirError(f"no *-ms98-a-trans.text transcripts under {root} "
                           "(swb_ms98_transcriptions/ from ISIP)")
    sph = _sph_files(root)
    wav, text, utt2spk, segments = {}, {}, {}, {}
    for tf in trans_files:
        m = re.match(r"sw(\d+)([AB])-ms98-a-trans", tf.stem)
        if not m:
            continue
        conv, side = f"sw0{m.group(1)}", m.group(2)
        if conv not in sph:
            raise DataDirError(f"{tf} has no audio {conv}.sph under {root}")
        reco = f"{conv}-{side}"
        for line in tf.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.split(None, 3)
            if len(parts) < 4:
                continue
            start, end = float(parts[1]), float(parts[2])
            words = normalise(parts[3])
            if not words or end <= start:
                continue
            utt = f"{reco}_{round(start * 100):06d}-{round(end * 100):06d}"
            wav[reco] = audio_command(sph[conv], 1 if side == "A" else 2)
            segments[utt] = f"{reco} {start:.2f} {end:.2f}"
            text[utt] = words
            utt2spk[utt] = reco
    if not text:
        raise DataDirError(f"no usable transcript lines under {root}")
    _write_segmented(outdir, wav, segments, text, utt2spk)
    return len(text)


def prepare_eval2000(root: Path, outdir: Path) -> int:
    """Kaldi data dir of eval2000 from its .sph files and .stm reference."""
    if not root.is_dir():
        raise DataDirError(f"eval2000 root {root} does not exist; set EVAL2000 in db.sh")
    stms = sorted(root.rglob("*.stm"))
    if not stms:
        raise DataDirError(f"no .stm reference under {root}")
    sph = _sph_files(root)
    wav, text, utt2spk, segments = {}, {}, {}, {}
    for line in stms[0].read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith(";;") or not line.strip():
            continue
        parts = line.split(None, 6)
        if len(parts) < 7 or "ignore_time_segment_in_scoring" in parts[6]:
            continue
        name, side, start, end = parts[0], parts[1], float(parts[3]), float(parts[4])
        words = normalise(re.sub(r"\([^)]*\)", "", parts[6]))
        if name.lower() not in sph or not words:
            continue
        reco = f"{name}-{side}"
        utt = f"{reco}_{round(start * 100):06d}-{round(end * 100):06d}"
        wav[reco] = audio_command(sph[name.lower()], 1 if side == "A" else 2)
        segments[utt] = f"{reco} {start:.2f} {end:.2f}"
        text[utt] = words
        utt2spk[utt] = reco
    if not text:
        raise DataDirError(f"no scorable segment in {stms[0]} with audio under {root}")
    _write_segmented(outdir, wav, segments, text, utt2spk)
    return len(text)


def _write_segmented(outdir, wav, segments, text, utt2spk) -> None:
    write_datadir(outdir, wav, text, utt2spk, segments=segments)
