"""Kaldi-style data directories (wav.scp, text, utt2spk, spk2utt), written anew.

The ESPnet wheel ships no Kaldi ``utils/``; the recipes use these helpers
(through ``python -m espnet_allinone.bin.datadir``) to write, check, split
and subset data dirs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from espnet_allinone.errors import AllInOneError

PathLike = str | Path
REQUIRED = ("wav.scp", "text", "utt2spk")
NOT_TABLES = ("spk2utt", "audio_format", "fs", "feats_type")  # not keyed by utterance


class DataDirError(AllInOneError, ValueError):
    """A data directory that is missing files or is inconsistent."""


def read_table(path: PathLike) -> dict[str, str]:
    """``key rest-of-line`` -> dict (order kept); a repeated key is an error."""
    table: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            key, _, value = line.partition(" ")
            if key in table:
                raise DataDirError(f"{path}:{n}: key {key!r} appears twice")
            table[key] = value.strip()
    return table


def write_table(path: PathLike, table: Mapping[str, str]) -> None:
    """Write ``key value`` lines sorted by key (C locale order)."""
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(f"{key} {table[key]}\n" if table[key] != "" else f"{key}\n" for key in sorted(table))


def spk2utt_of(utt2spk: Mapping[str, str]) -> dict[str, str]:
    """Invert utt2spk (utterances sorted within each speaker)."""
    out: dict[str, list[str]] = {}
    for utt in sorted(utt2spk):
        out.setdefault(utt2spk[utt], []).append(utt)
    return {spk: " ".join(utts) for spk, utts in out.items()}


def write_datadir(
    directory: PathLike,
    wav_scp: Mapping[str, str],
    text: Mapping[str, str],
    utt2spk: Mapping[str, str],
    extra: Mapping[str, Mapping[str, str]] | None = None,
    segments: Mapping[str, str] | None = None,
) -> None:
    """Write a consistent data dir (every table has the same utterances).

    With ``segments`` (``utt -> "reco start end"``) wav.scp is keyed by recording.
    """
    keys = set(segments) if segments is not None else set(wav_scp)
    for name, table in (("text", text), ("utt2spk", utt2spk), *(extra or {}).items()):
        if set(table) != keys:
            diff = sorted(keys.symmetric_difference(table))[:5]
            raise DataDirError(f"{name} and wav.scp list different utterances, e.g. {diff}")
    if segments is not None:
        missing = sorted({v.split()[0] for v in segments.values()} - set(wav_scp))[:5]
        if missing:
            raise DataDirError(f"segments name recordings not in wav.scp, e.g. {missing}")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    write_table(d / "wav.scp", wav_scp)
    write_table(d / "text", text)
    write_table(d / "utt2spk", utt2spk)
    write_table(d / "spk2utt", spk2utt_of(utt2spk))
    if segments is not None:
        write_table(d / "segments", segments)
    for name, table in (extra or {}).items():
        write_table(d / name, table)


def validate_datadir(directory: PathLike, check_audio: bool = False) -> int:
    """Check the files exist and agree; return the number of utterances."""
    d = Path(directory)
    if not d.is_dir():
        raise DataDirError(f"data directory {d} does not exist")
    missing = [n for n in REQUIRED if not (d / n).is_file()]
    if missing:
        raise DataDirError(f"data directory {d} lacks {', '.join(missing)}")
    wav = read_table(d / "wav.scp")
    if not wav:
        raise DataDirError(f"{d / 'wav.scp'} is empty")
    keys, keyed_by = set(wav), d / "wav.scp"
    if (d / "segments").is_file():
        segments = read_table(d / "segments")
        missing = sorted({v.split()[0] for v in segments.values()} - set(wav))[:5]
        if missing:
            raise DataDirError(f"{d / 'segments'} names recordings not in wav.scp: {missing}")
        keys, keyed_by = set(segments), d / "segments"
    for name in ("text", "utt2spk"):
        table = read_table(d / name)
        if set(table) != keys:
            diff = sorted(keys.symmetric_difference(table))[:5]
            raise DataDirError(f"{d / name} and {keyed_by} list different utterances, "
                               f"e.g. {diff}")
    if check_audio:
        for utt, value in wav.items():
            if not value.endswith("|") and not Path(value).is_file():
                raise DataDirError(f"{d / 'wav.scp'}: audio of {utt} not found: {value}")
    return len(keys)


def _tables(d: Path) -> dict[str, dict[str, str]]:
    return {f.name: read_table(f) for f in sorted(d.iterdir())
            if f.is_file() and f.name not in NOT_TABLES and not f.name.startswith(".")}


def _write_tables(dst: PathLike, tables: dict[str, dict[str, str]]) -> int:
    segments = tables.pop("segments", None)
    wav = tables.pop("wav.scp")
    if segments is not None:
        used = {v.split()[0] for v in segments.values()}
        wav = {k: v for k, v in wav.items() if k in used}
    text, utt2spk = tables.pop("text"), tables.pop("utt2spk")
    write_datadir(dst, wav, text, utt2spk, tables, segments=segments)
    return len(text)


def subset_datadir(src: PathLike, dst: PathLike, utts: Iterable[str]) -> int:
    """Copy the tables of ``src`` restricted to ``utts`` into ``dst``."""
    s, keep = Path(src), set(utts)
    validate_datadir(s)
    tables = _tables(s)
    segmented = "segments" in tables
    for name, table in tables.items():
        if not (segmented and name == "wav.scp"):
            tables[name] = {k: v for k, v in table.items() if k in keep}
    return _write_tables(dst, tables)


def combine_datadirs(srcs: list[PathLike], dst: PathLike) -> int:
    """Union of data dirs (utterance ids must not clash); tables all have in common."""
    merged: dict[str, dict[str, str]] = {}
    per_dir = []
    for src in srcs:
        validate_datadir(src)
        per_dir.append(_tables(Path(src)))
    common = set.intersection(*(set(t) for t in per_dir))
    for tables in per_dir:
        for name in common:
            clash = set(merged.get(name, {})) & set(tables[name])
            if clash and name != "wav.scp":
                raise DataDirError(f"utterance ids in more than one of {srcs}: {sorted(clash)[:5]}")
            merged.setdefault(name, {}).update(tables[name])
    return _write_tables(dst, merged)


def split_scp(path: PathLike, outputs: list[PathLike]) -> None:
    """Split a key-value file into len(outputs) contiguous, near-equal parts."""
    lines = [ln for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]
    n = len(outputs)
    if n < 1:
        raise ValueError("split_scp needs at least one output")
    if len(lines) < n:
        raise DataDirError(f"{path} has {len(lines)} lines, fewer than the {n} splits asked")
    base, rem = divmod(len(lines), n)
    start = 0
    for i, out in enumerate(outputs):
        size = base + (1 if i < rem else 0)
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text("".join(ln + "\n" for ln in lines[start:start + size]),
                             encoding="utf-8")
        start += size
