"""Speed perturbation of a data dir (allinone.sh stage 2, asr.sh's --speed_perturb_factors):
Kaldi's sp<f>- ids, sox's speed effect on the audio, durations scaled by 1/f."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile

from espnet_allinone.bin import datadir as cli
from espnet_allinone.corpus.datadir import DataDirError, read_table, validate_datadir
from espnet_allinone.corpus.dump import format_datadir
from espnet_allinone.corpus.speed_perturb import parse_factors, perturb_datadir

pytestmark = pytest.mark.skipif(shutil.which("sox") is None, reason="needs sox")

FS = 16000
SECONDS = {"spkA-u1": 0.6, "spkA-u2": 0.9, "spkB-u3": 1.2}
TONE_HZ = 400.0


def tone(seconds: float, hz: float = TONE_HZ, fs: int = FS) -> np.ndarray:
    t = np.arange(round(seconds * fs)) / fs
    return (0.3 * np.sin(2 * np.pi * hz * t) * 32767).astype(np.int16)


def peak_hz(path: str) -> float:
    a, sr = soundfile.read(path)
    return float(np.argmax(np.abs(np.fft.rfft(a))) * sr / len(a))


def tiny_datadir(root: Path) -> Path:
    """3 utterances of a 400 Hz tone, 2 speakers, with utt2dur."""
    d = root / "train"
    (root / "wav").mkdir(parents=True)
    d.mkdir()
    for utt, sec in SECONDS.items():
        soundfile.write(str(root / "wav" / f"{utt}.wav"), tone(sec), FS, subtype="PCM_16")
    lines = {
        "wav.scp": [f"{u} {root / 'wav' / u}.wav" for u in SECONDS],
        "text": [f"{u} HELLO NUMBER {i}" for i, u in enumerate(SECONDS)],
        "utt2spk": [f"{u} {u.split('-')[0]}" for u in SECONDS],
        "spk2utt": ["spkA spkA-u1 spkA-u2", "spkB spkB-u3"],
        "utt2dur": [f"{u} {s}" for u, s in SECONDS.items()],
    }
    for name, rows in lines.items():
        (d / name).write_text("".join(r + "\n" for r in rows))
    return d


def test_three_factors_give_kaldi_ids_scaled_audio_and_the_same_texts(tmp_path: Path) -> None:
    src = tiny_datadir(tmp_path)
    n = perturb_datadir(src, tmp_path / "train_sp", "0.9 1.0 1.1", tmp_path / "dump" / "sp", nj=2)
    dst = tmp_path / "train_sp"
    assert n == 9 == validate_datadir(dst, check_audio=True)
    text, orig_text = read_table(dst / "text"), read_table(src / "text")
    assert set(text) == {f"{p}{u}" for p in ("", "sp0.9-", "sp1.1-") for u in SECONDS}
    for utt, t in text.items():
        assert t == orig_text[re.sub(r"^sp(0\.9|1\.1)-", "", utt)]
    utt2spk = read_table(dst / "utt2spk")
    assert utt2spk["sp0.9-spkA-u2"] == "sp0.9-spkA" and utt2spk["spkB-u3"] == "spkB"
    assert read_table(dst / "spk2utt") == {
        "spkA": "spkA-u1 spkA-u2", "spkB": "spkB-u3",
        "sp0.9-spkA": "sp0.9-spkA-u1 sp0.9-spkA-u2", "sp0.9-spkB": "sp0.9-spkB-u3",
        "sp1.1-spkA": "sp1.1-spkA-u1 sp1.1-spkA-u2", "sp1.1-spkB": "sp1.1-spkB-u3"}
    assert read_table(dst / "utt2uniq")["sp1.1-spkA-u1"] == "spkA-u1"
    wav, utt2dur = read_table(dst / "wav.scp"), read_table(dst / "utt2dur")
    assert wav["spkA-u1"] == read_table(src / "wav.scp")["spkA-u1"]  # factor 1: the original
    for f in (0.9, 1.0, 1.1):
        for utt, sec in SECONDS.items():
            key = utt if f == 1.0 else f"sp{f}-{utt}"
            info = soundfile.info(wav[key])
            assert info.samplerate == FS and info.channels == 1
            assert abs(info.frames - sec * FS / f) <= 2, (key, info.frames)  # 1/f, to a sample
            assert float(utt2dur[key]) == pytest.approx(sec / f, abs=1e-4)
            if f != 1.0:
                assert Path(wav[key]).parent == (tmp_path / "dump" / "sp" / f"sp{f}").resolve()
                assert peak_hz(wav[key]) == pytest.approx(TONE_HZ * f, rel=0.02)  # speed, not tempo


def test_segments_and_pipes_are_perturbed_per_recording(tmp_path: Path) -> None:
    """Kaldi's segments: recording ids prefixed, times / f; a ``cmd |`` wav.scp entry is read."""
    soundfile.write(str(tmp_path / "reco.wav"), tone(3.0), FS, subtype="PCM_16")
    src = tmp_path / "segd"
    src.mkdir()
    (src / "wav.scp").write_text(f"rec1 cat {tmp_path / 'reco.wav'} |\n")
    (src / "segments").write_text("rec1_a rec1 0.50 1.40\nrec1_b rec1 1.80 2.70\n")
    (src / "text").write_text("rec1_a ONE\nrec1_b TWO\n")
    (src / "utt2spk").write_text("rec1_a rec1\nrec1_b rec1\n")
    (src / "reco2dur").write_text("rec1 3.0\n")
    dst = tmp_path / "segd_sp"
    assert perturb_datadir(src, dst, "1.0 0.9", tmp_path / "audio", nj=1) == 4
    seg = read_table(dst / "segments")
    assert seg["rec1_a"] == "rec1 0.50 1.40"
    assert seg["sp0.9-rec1_b"] == "sp0.9-rec1 2.0000 3.0000"
    assert read_table(dst / "reco2dur")["sp0.9-rec1"] == "3.3333"
    wav = read_table(dst / "wav.scp")
    assert wav["rec1"].endswith("|") and soundfile.info(wav["sp0.9-rec1"]).frames \
        == pytest.approx(3.0 * FS / 0.9, abs=2)
    # the format stage (3) cuts the perturbed segments: 0.9 s / 0.9 = 1 s each
    assert format_datadir(dst, tmp_path / "formatted", FS, nj=1) == 4
    samples = read_table(tmp_path / "formatted" / "utt2num_samples")
    assert abs(int(samples["rec1_a"]) - 0.9 * FS) <= 2
    assert abs(int(samples["sp0.9-rec1_a"]) - FS) <= 2


def test_rerun_replaces_the_output(tmp_path: Path) -> None:
    src = tiny_datadir(tmp_path)
    dst = tmp_path / "train_sp"
    perturb_datadir(src, dst, "0.9 1.0 1.1", tmp_path / "sp", nj=2)
    (dst / "stale").write_text("x 1\n")
    (src / "notes.bin").write_bytes(b"\xa4\x00\xff")  # not a table: left out, not an error
    assert perturb_datadir(src, dst, "1.2", tmp_path / "sp", nj=2) == 3
    assert not (dst / "stale").exists() and not (dst / "notes.bin").exists()
    assert sorted(read_table(dst / "text")) == [f"sp1.2-{u}" for u in SECONDS]


@pytest.mark.parametrize(("factors", "message"), [
    ("0.9 abc", "'abc' is not a number"),
    ("0.9,1.1", "'0.9,1.1' is not a number"),
    ("nan", "'nan' is not a number"),
    ("0", "'0' is not positive"),
    ("1.1 -0.9", "'-0.9' is not positive"),
    ("1e-1", "'1e-1' is not written as a plain decimal number"),
    ("0.9 0.90", "'0.90' is given twice (as '0.9')"),
    ("   ", "no factor given"),
])
def test_bad_factors_are_named_and_nothing_is_written(tmp_path: Path, capsys, factors: str,
                                                      message: str) -> None:
    with pytest.raises(DataDirError, match="valid: positive decimal numbers") as e:
        parse_factors(factors)
    assert message in str(e.value)
    src = tiny_datadir(tmp_path)
    assert cli.main(["speed_perturb", str(src), str(tmp_path / "out"), f"--factors={factors}",
                     "--audio_dir", str(tmp_path / "audio")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "audio").exists()


def test_factors_cli_prints_them() -> None:
    assert parse_factors("0.9  1 1.1") == [("0.9", 0.9), ("1", 1.0), ("1.1", 1.1)]
    assert cli.main(["speed_factors", "--factors=0.9 1.0 1.1"]) == 0
