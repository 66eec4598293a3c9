"""Speed perturbation of a data dir, as Kaldi's ``utils/perturb_data_dir_speed.sh``
and ESPnet's asr.sh stage 2 (``--speed_perturb_factors "0.9 1.0 1.1"``) do it.

For each factor ``f`` other than 1 every utterance, speaker and recording id
gets the prefix ``sp<f>-`` (``f`` as written: ``sp0.9-<utt>``); its audio is
sox's ``speed f`` effect (tempo and pitch by ``f``, duration by ``1/f``, same
sampling rate), written as 16-bit wav files under ``audio_dir`` (ESPnet's
sound reader takes files, not Kaldi pipes); ``segments`` times, ``utt2dur``
and ``reco2dur`` are divided by ``f``. Factor 1 keeps the original ids and
audio. The copies are combined into one data dir with ``utt2uniq`` naming
each utterance's original.
"""

from __future__ import annotations

import io
import math
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from espnet_allinone.corpus.datadir import (
    NOT_TABLES,
    DataDirError,
    PathLike,
    read_table,
    spk2utt_of,
    validate_datadir,
    write_table,
)
from espnet_allinone.corpus.dump import _read_audio
from espnet_allinone.corpus.tools import INSTALL_HINT

VALID = 'positive decimal numbers separated by spaces, e.g. "0.9 1.0 1.1"'
_NUMBER = re.compile(r"(\d+\.?\d*|\.\d+)")

DROPPED = ("feats.scp", "cmvn.scp", "utt2num_frames", "utt2num_samples", "spk2utt")
"""Not carried over: features and lengths no longer match the audio (the format
stage writes utt2num_samples anew); spk2utt is rebuilt from utt2spk."""
SPEAKER_TABLES = ("spk2gender",)
RECORDING_TABLES = ("reco2dur", "reco2file_and_channel")


def parse_factors(text: str) -> list[tuple[str, float]]:
    """``"0.9 1.0 1.1"`` -> ``[("0.9", 0.9), ("1.0", 1.0), ("1.1", 1.1)]``; refuses
    a non-number, a factor <= 0, a factor given twice or no factor at all."""
    out: list[tuple[str, float]] = []
    for word in text.split():
        try:
            value = float(word)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise DataDirError(f"--speed_perturb_factors: {word!r} is not a number; valid: {VALID}")
        if value <= 0:
            raise DataDirError(f"--speed_perturb_factors: {word!r} is not positive; valid: {VALID}")
        if not _NUMBER.fullmatch(word):  # it becomes part of the ids (sp<f>-)
            raise DataDirError(f"--speed_perturb_factors: {word!r} is not written as a plain "
                               f"decimal number; valid: {VALID}")
        same = [w for w, v in out if v == value]
        if same:
            raise DataDirError(f"--speed_perturb_factors: {word!r} is given twice "
                               f"(as {same[0]!r}); valid: {VALID}, each once")
        out.append((word, value))
    if not out:
        raise DataDirError(f"--speed_perturb_factors: no factor given; valid: {VALID}")
    return out


def _perturb_audio(value: str, factor: str, out: Path) -> None:
    """sox ``speed factor`` of one wav.scp entry (a file or a ``cmd |`` pipe) into ``out``."""
    import soundfile

    data, rate = _read_audio(value)
    buf = io.BytesIO()
    soundfile.write(buf, data, rate, format="WAV", subtype="PCM_16")
    # -R: the same dither on every run (a rerun writes the same files)
    proc = subprocess.run(["sox", "-R", "-t", "wav", "-", "-t", "wav", "-b", "16", str(out),
                           "speed", factor], input=buf.getvalue(), capture_output=True,
                          check=False)
    if proc.returncode != 0:
        raise DataDirError(f"sox speed {factor} of {value!r} failed: "
                           f"{proc.stderr.decode(errors='replace')[:300]}")


def _seconds(x: float) -> str:
    return f"{x:.4f}"


def perturb_datadir(src: PathLike, dst: PathLike, factors: str, audio_dir: PathLike,
                    nj: int = 4) -> int:
    """Write ``dst``: ``src`` once per factor (see the module doc); return its utterances.

    ``dst`` is replaced; ``audio_dir/sp<f>/`` holds factor ``f``'s audio (replaced too).
    """
    parsed = parse_factors(factors)
    s, d, audio = Path(src), Path(dst), Path(audio_dir).resolve()
    validate_datadir(s)
    if any(v != 1.0 for _, v in parsed) and shutil.which("sox") is None:
        raise DataDirError(f"speed perturbation needs sox on PATH; install with: "
                           f"{INSTALL_HINT['sox']}")
    tables: dict[str, dict[str, str]] = {}
    for f in sorted(s.iterdir()):
        if f.is_file() and not f.name.startswith(".") and f.name not in (*NOT_TABLES, *DROPPED):
            try:
                tables[f.name] = read_table(f)
            except (UnicodeDecodeError, DataDirError):
                print(f"speed perturbation: {f} is not a table: not carried over")
    segments = tables.get("segments")
    utts = set(segments) if segments is not None else set(tables["wav.scp"])
    skipped = [n for n, t in tables.items()
               if n not in ("wav.scp", "segments", *SPEAKER_TABLES, *RECORDING_TABLES)
               and not set(t) <= utts]
    for name in skipped:
        print(f"speed perturbation: {s / name} is not keyed by utterance: not carried over")
        del tables[name]
    uniq = tables.get("utt2uniq", {})

    jobs: list[tuple[str, str, Path]] = []
    out: dict[str, dict[str, str]] = {name: {} for name in tables}
    out["utt2uniq"] = {}
    for word, f in parsed:
        p = "" if f == 1.0 else f"sp{word}-"
        for name, table in tables.items():
            for key, value in table.items():
                if f == 1.0 or name == "utt2uniq":
                    new = value
                elif name == "utt2spk":
                    new = p + value
                elif name == "segments":
                    reco, start, end = value.split()
                    new = f"{p}{reco} {_seconds(float(start) / f)} {_seconds(float(end) / f)}"
                elif name in ("utt2dur", "reco2dur"):
                    new = _seconds(float(value) / f)
                elif name == "reco2file_and_channel":
                    fields = value.split()
                    new = " ".join([p + fields[0], *fields[1:]])
                elif name == "wav.scp":
                    path = audio / f"sp{word}" / (key.replace("/", "_") + ".wav")
                    jobs.append((value, word, path))
                    new = str(path)
                else:
                    new = value
                if name == "utt2uniq":
                    continue
                if p + key in out[name]:
                    raise DataDirError(f"speed perturbation: id {p + key!r} of {s / name} "
                                       "clashes with another utterance's")
                out[name][p + key] = new
        for utt in utts:
            out["utt2uniq"][p + utt] = uniq.get(utt, utt)

    for word, f in parsed:
        if f != 1.0:
            shutil.rmtree(audio / f"sp{word}", ignore_errors=True)
            (audio / f"sp{word}").mkdir(parents=True)
    with ThreadPoolExecutor(max_workers=max(1, nj)) as pool:
        list(pool.map(lambda job: _perturb_audio(*job), jobs))

    tmp = d.with_name(d.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, table in out.items():
        write_table(tmp / name, table)
    write_table(tmp / "spk2utt", spk2utt_of(out["utt2spk"]))
    n = validate_datadir(tmp)
    shutil.rmtree(d, ignore_errors=True)
    tmp.rename(d)
    return n
