"""The format and filter stages: data dirs whose audio ESPnet can read directly.

``wav.scp`` values may be file paths or Kaldi-style commands ending in ``|``
(e.g. ``sph2pipe -f wav -p -c 1 x.sph |``); with a ``segments`` file the
utterances are cut out of their recordings. Plain files at the right rate
without segments are referenced in place; everything else is written as
16-bit PCM wav under ``<dst>/data``. ``utt2num_samples`` is written for the
filter stage and ESPnet's shape files.
"""

from __future__ import annotations

import io
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from espnet_allinone.corpus.datadir import (
    DataDirError,
    read_table,
    spk2utt_of,
    subset_datadir,
    validate_datadir,
    write_table,
)


def _read_audio(value: str):
    import soundfile

    if value.endswith("|"):
        proc = subprocess.run(value[:-1], shell=True, capture_output=True, check=False)
        if proc.returncode != 0:
            raise DataDirError(f"audio command failed: {value!r}: "
                               f"{proc.stderr.decode(errors='replace')[:300]}")
        return soundfile.read(io.BytesIO(proc.stdout), dtype="int16", always_2d=True)
    return soundfile.read(value, dtype="int16", always_2d=True)


def format_datadir(src: Path, dst: Path, fs: int, nj: int = 4) -> int:
    """Copy ``src`` to ``dst`` with readable audio at ``fs`` Hz; return the utterance count."""
    import soundfile

    validate_datadir(src)
    wav = read_table(src / "wav.scp")
    segments = read_table(src / "segments") if (src / "segments").is_file() else None
    dst.mkdir(parents=True, exist_ok=True)
    audio_dir = (dst / "data").resolve()
    out_scp: dict[str, str] = {}
    num_samples: dict[str, str] = {}

    def in_place(value: str) -> bool:
        if value.endswith("|") or segments is not None:
            return False
        try:
            info = soundfile.info(value)
        except RuntimeError as e:
            raise DataDirError(f"{src / 'wav.scp'}: cannot read {value}: {e}") from e
        return info.samplerate == fs and info.channels == 1

    def do_reco(reco: str) -> list[tuple[str, str, int]]:
        value = wav[reco]
        if in_place(value):
            return [(reco, str(Path(value).resolve()), soundfile.info(value).frames)]
        data, rate = _read_audio(value)
        if rate != fs:
            raise DataDirError(f"{reco}: audio at {rate} Hz but fs={fs}; set --fs {rate} or "
                               "resample in local/data.sh")
        pieces = by_reco.get(reco, [(reco, 0.0, None)]) if segments is not None else [
            (reco, 0.0, None)]
        out = []
        audio_dir.mkdir(parents=True, exist_ok=True)
        for utt, start, end in pieces:
            a = data[int(start * rate): None if end is None else int(end * rate), :1]
            path = audio_dir / f"{utt}.wav"
            soundfile.write(str(path), a, rate, subtype="PCM_16")
            out.append((utt, str(path), len(a)))
        return out

    by_reco: dict[str, list[tuple[str, float, float | None]]] = {}
    if segments is not None:
        for utt, v in segments.items():
            reco, start, end = v.split()
            if reco not in wav:
                raise DataDirError(f"{src / 'segments'}: {utt} names recording {reco} "
                                   f"not in {src / 'wav.scp'}")
            by_reco.setdefault(reco, []).append((utt, float(start), float(end)))
        recos = sorted(by_reco)
    else:
        recos = sorted(wav)
    with ThreadPoolExecutor(max_workers=max(1, nj)) as pool:
        for items in pool.map(do_reco, recos):
            for utt, path, n in items:
                out_scp[utt] = path
                num_samples[utt] = str(n)
    keep = set(out_scp)
    for name in ("text", "utt2spk"):
        table = {k: v for k, v in read_table(src / name).items() if k in keep}
        write_table(dst / name, table)
    write_table(dst / "wav.scp", out_scp)
    write_table(dst / "utt2num_samples", num_samples)
    write_table(dst / "spk2utt", spk2utt_of(read_table(dst / "utt2spk")))
    (dst / "audio_format").write_text("wav\n")
    (dst / "fs").write_text(f"{fs}\n")
    return validate_datadir(dst)


def filter_datadir(src: Path, dst: Path, fs: int, min_seconds: float, max_seconds: float,
                   max_tokens: int = 0) -> tuple[int, int]:
    """Keep utterances with ``min <= duration <= max`` and a non-empty text
    (of at most ``max_tokens`` characters when > 0); return (kept, total)."""
    if not (src / "utt2num_samples").is_file():
        raise DataDirError(f"{src / 'utt2num_samples'} missing: made by the format stage (3)")
    n = read_table(src / "utt2num_samples")
    text = read_table(src / "text")
    keep = [
        u for u in n
        if min_seconds * fs <= int(n[u]) <= max_seconds * fs and text.get(u, "").strip()
        and (max_tokens <= 0 or len(text[u]) <= max_tokens)
    ]
    if not keep:
        raise DataDirError(f"no utterance of {src} is {min_seconds}-{max_seconds} s long "
                           "with a non-empty text")
    subset_datadir(src, dst, keep)
    for extra in ("audio_format", "fs"):
        if (src / extra).is_file():
            (dst / extra).write_text((src / extra).read_text())
    return len(keep), len(n)
