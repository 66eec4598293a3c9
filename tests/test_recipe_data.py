"""Data prep of the real-corpus recipes, on tiny fake corpora laid out like the real ones.

LibriSpeech: <root>/LibriSpeech/<part>/<spk>/<chapter>/*.flac + *.trans.txt.
Switchboard: two-channel u-law SPHERE conversations + ISIP ms98 transcripts;
eval2000: SPHERE + an .stm reference. The audio is made with sox; each run
goes through the recipe's own run.sh stages 1-4 (data prep, format, filter).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import soundfile
from test_recipe import REPO, copy_recipe, run

from espnet_allinone.corpus.datadir import read_table

LIBRI_PARTS = ("train-clean-100", "dev-clean", "dev-other", "test-clean", "test-other")


def _sox(*args: str) -> None:
    subprocess.run(["sox", "-R", *args], check=True, capture_output=True)


def fake_librispeech(root: Path) -> dict[str, str]:
    """Two speakers x one chapter x two utterances per part; returns utt -> text."""
    texts = {}
    for p, part in enumerate(LIBRI_PARTS):
        for spk in (100 + 10 * p, 101 + 10 * p):
            chap = 2000 + spk
            d = root / "LibriSpeech" / part / str(spk) / str(chap)
            d.mkdir(parents=True)
            lines = []
            for i in range(2):
                utt = f"{spk}-{chap}-{i:04d}"
                _sox("-n", "-r", "16000", "-c", "1", "-b", "16", str(d / f"{utt}.flac"),
                     "synth", f"{1 + 0.5 * i}", "sine", f"{200 + 50 * i}")
                texts[utt] = f"HELLO WORLD NUMBER {i} OF {part.upper()}"
                lines.append(f"{utt} {texts[utt]}")
            (d / f"{spk}-{chap}.trans.txt").write_text("\n".join(lines) + "\n")
    return texts


def test_librispeech_recipe_data_prep(tmp_path: Path) -> None:
    texts = fake_librispeech(tmp_path / "corpus")
    recipe = copy_recipe(REPO / "egs2" / "librispeech_100" / "allinone1", tmp_path / "r")
    res = run(recipe, "--stop_stage", "4", env={"LIBRISPEECH": str(tmp_path / "corpus")})
    assert res.returncode == 0, res.stdout[-4000:]
    train = read_table(recipe / "data" / "train_clean_100" / "text")
    assert train == {u: t for u, t in texts.items() if u.startswith(("100-", "101-"))}
    assert read_table(recipe / "data" / "train_clean_100" / "utt2spk")["101-2101-0001"] \
        == "101-2101"
    dev = read_table(recipe / "data" / "dev" / "text")  # dev-clean + dev-other
    assert len(dev) == 8 and any("DEV-OTHER" in t for t in dev.values())
    for dset, n in (("dev", 8), ("test_clean", 4), ("test_other", 4)):
        scp = read_table(recipe / "dump" / "raw" / dset / "wav.scp")
        assert len(scp) == n
        assert all(p.endswith(".flac") for p in scp.values())  # read in place
        samples = read_table(recipe / "dump" / "raw" / dset / "utt2num_samples")
        assert sorted(set(samples.values())) == ["16000", "24000"]
    # the recipe trains on speed-perturbed data (0.9 1.0 1.1), as ESPnet's does
    scp = read_table(recipe / "dump" / "raw" / "train_clean_100_sp" / "wav.scp")
    assert sorted(scp) == sorted(f"{p}{u}" for u in train for p in ("", "sp0.9-", "sp1.1-"))
    assert all(path.endswith(".flac") == (utt in train) for utt, path in scp.items())


def fake_swbd(root: Path, eval_root: Path) -> None:
    """Two conversations (A: 300 Hz, B: 500 Hz) with ms98 transcripts; one eval2000 file."""
    for n, conv in enumerate(("2001", "2005")):
        data = root / f"swb1_d{n + 1}" / "data"
        data.mkdir(parents=True)
        _sox("-n", "-r", "8000", "-c", "2", "-e", "u-law", "-b", "8", "-t", "sph",
             str(data / f"sw0{conv}.sph"), "synth", "12", "sine", "300", "sine", "500")
        for side in "AB":
            d = root / "swb_ms98_transcriptions" / conv[:2] / conv
            d.mkdir(parents=True, exist_ok=True)
            (d / f"sw{conv}{side}-ms98-a-trans.text").write_text(
                f"sw{conv}{side}-ms98-a-0001 0.000000 1.500000 [silence]\n"
                f"sw{conv}{side}-ms98-a-0002 1.500000 4.250000 uh-huh [laughter-yes] i know\n"
                f"sw{conv}{side}-ms98-a-0003 5.000000 7.000000 [noise] that's -[t]he point\n"
                f"sw{conv}{side}-ms98-a-0004 8.000000 11.000000 okay {side.lower()}\n")
    (eval_root / "english").mkdir(parents=True)
    _sox("-n", "-r", "8000", "-c", "2", "-e", "u-law", "-b", "8", "-t", "sph",
         str(eval_root / "english" / "en_4156.sph"), "synth", "6", "sine", "300", "sine", "500")
    (eval_root / "hub5e00.english.000405.stm").write_text(
        ";; comment\n"
        "en_4156 A en_4156_A 0.50 2.00 <O,en,F,en-F> oh yeah (%HESITATION) right\n"
        "en_4156 B en_4156_B 1.00 3.50 <O,en,M,en-M> i think so\n"
        "en_4156 B en_4156_B 4.00 5.00 <O,en,M,en-M> ignore_time_segment_in_scoring\n")


def _peak_hz(path: str) -> float:
    a, sr = soundfile.read(path)
    return float(np.argmax(np.abs(np.fft.rfft(a))) * sr / len(a))


def test_swbd_recipe_data_prep_cuts_segments_and_channels(tmp_path: Path) -> None:
    fake_swbd(tmp_path / "swbd", tmp_path / "eval2000")
    recipe = copy_recipe(REPO / "egs2" / "swbd" / "allinone1", tmp_path / "r")
    res = run(recipe, "--stop_stage", "4", "--local_data_opts", "--dev_utts 2",
              env={"SWBD": str(tmp_path / "swbd"), "EVAL2000": str(tmp_path / "eval2000")})
    assert res.returncode == 0, res.stdout[-4000:]
    text = read_table(recipe / "data" / "train_all" / "text")
    assert len(text) == 12  # [silence]-only lines dropped
    assert text["sw02001-A_000150-000425"] == "UH-HUH YES I KNOW"
    assert text["sw02005-B_000500-000700"] == "THAT'S HE POINT"
    assert len(read_table(recipe / "data" / "train_dev" / "text")) == 2
    assert len(read_table(recipe / "data" / "train_nodev" / "text")) == 10
    assert read_table(recipe / "data" / "eval2000" / "text") == {
        "en_4156-A_000050-000200": "OH YEAH RIGHT", "en_4156-B_000100-000350": "I THINK SO"}
    scp = read_table(recipe / "dump" / "raw" / "train_nodev_sp" / "wav.scp")
    samples = read_table(recipe / "dump" / "raw" / "train_nodev_sp" / "utt2num_samples")
    assert len(scp) == 30  # speed perturbation 0.9 1.0 1.1, as ESPnet's recipe
    assert samples["sw02005-B_000800-001100"] == str(3 * 8000)
    assert abs(int(samples["sp1.1-sw02005-B_000800-001100"]) - 3 * 8000 / 1.1) <= 8
    for utt, path in scp.items():
        info = soundfile.info(path)
        assert (info.samplerate, info.channels) == (8000, 1)
        if not utt.startswith("sp"):
            assert _peak_hz(path) == (300.0 if "-A_" in utt else 500.0)
    ev = read_table(recipe / "dump" / "raw" / "eval2000" / "utt2num_samples")
    assert ev == {"en_4156-A_000050-000200": "12000", "en_4156-B_000100-000350": "20000"}
