"""The espeak-ng corpus: Kaldi dirs, disjoint texts, varied voices, bit-identical per seed."""

from __future__ import annotations

import hashlib
import shutil
import wave
from dataclasses import replace
from pathlib import Path

import pytest

from espnet_allinone.bin import make_corpus as make_corpus_cli
from espnet_allinone.corpus import (
    CorpusConfig,
    ToolMissingError,
    make_corpus,
    plan_jobs,
)
from espnet_allinone.corpus.datadir import (
    DataDirError,
    read_table,
    split_scp,
    subset_datadir,
    validate_datadir,
)
from espnet_allinone.corpus.synth import synthesize
from espnet_allinone.corpus.text import (
    LETTER_PHONEMES,
    to_espeak,
    to_festival,
    vocabulary,
)
from espnet_allinone.corpus.voices import FESTIVAL_VOICES, TRAIN_RATES, UNSEEN_VARIANTS


def _digest(data: Path) -> dict[str, str]:
    out = {}
    for split in ("train", "dev", "test"):
        for utt, path in read_table(data / split / "wav.scp").items():
            out[utt] = hashlib.md5(Path(path).read_bytes()).hexdigest()
    return out


def test_tiny_corpus_is_kaldi_style(tiny_corpus: Path) -> None:
    counts = {s: validate_datadir(tiny_corpus / s, check_audio=True) for s in ("train", "dev", "test")}
    assert counts == {"train": 36, "dev": 10, "test": 10}
    texts = {s: set(read_table(tiny_corpus / s / "text").values()) for s in counts}
    assert len(texts["train"]) == 36  # texts unique inside a split too
    assert not texts["train"] & texts["dev"]
    assert not texts["train"] & texts["test"]
    assert not texts["dev"] & texts["test"]
    words = {w for ts in texts.values() for t in ts for w in t.split()}
    assert words <= vocabulary()
    utt2spk = read_table(tiny_corpus / "train" / "utt2spk")
    spk2utt = read_table(tiny_corpus / "train" / "spk2utt")
    assert sorted(u for us in spk2utt.values() for u in us.split()) == sorted(utt2spk)
    assert all(utt.startswith(spk + "-") for utt, spk in utt2spk.items())
    for utt, path in read_table(tiny_corpus / "test" / "wav.scp").items():
        with wave.open(path) as f:
            assert (f.getframerate(), f.getnchannels(), f.getsampwidth()) == (16000, 1, 2)
            seconds = f.getnframes() / 16000
        assert 0.5 < seconds < 8, (utt, seconds)
        assert abs(float(read_table(tiny_corpus / "test" / "utt2dur")[utt]) - seconds) < 1e-3


def test_same_seed_is_bit_identical_and_rerun_is_kept(tmp_path: Path) -> None:
    config = CorpusConfig(num_train=6, num_dev=2, num_test=2, seed=7)
    make_corpus(tmp_path / "a", config, wavdir=tmp_path / "wa", nj=2, log=lambda *_: None)
    make_corpus(tmp_path / "b", config, wavdir=tmp_path / "wb", nj=1, log=lambda *_: None)
    a, b = _digest(tmp_path / "a"), _digest(tmp_path / "b")
    assert a == b and len(a) == 10
    other = CorpusConfig(num_train=6, num_dev=2, num_test=2, seed=8)
    make_corpus(tmp_path / "c", other, nj=2, log=lambda *_: None)
    assert set(_digest(tmp_path / "c").values()).isdisjoint(a.values())
    messages: list[str] = []
    make_corpus(tmp_path / "a", config, wavdir=tmp_path / "wa", log=messages.append)
    assert messages and "kept" in messages[0]


def test_plan_varies_voice_rate_pitch_and_effects() -> None:
    plan = plan_jobs(CorpusConfig(num_train=300, num_dev=20, num_test=20, seed=0), Path("/x"))
    jobs = [job for items in plan.values() for job, _, _ in items]
    assert len({j.voice.split("+")[0] for j in jobs}) >= 6
    assert len({j.voice for j in jobs}) >= 60
    assert max(j.rate for j in jobs) - min(j.rate for j in jobs) >= 50
    assert max(j.pitch for j in jobs) - min(j.pitch for j in jobs) >= 40
    reverbed = sum(j.reverb is not None for j in jobs) / len(jobs)
    noisy = sum(j.snr_db is not None for j in jobs) / len(jobs)
    assert 0.35 < reverbed < 0.65 and 0.45 < noisy < 0.75
    assert all(20 <= j.snr_db <= 40 for j in jobs if j.snr_db is not None)
    clean = plan_jobs(CorpusConfig(num_train=50, num_dev=5, num_test=5, noise=False,
                                   reverb=False), Path("/x"))
    assert all(j.reverb is None and j.snr_db is None for it in clean.values() for j, _, _ in it)


def test_letters_are_spelled_with_phonemes() -> None:
    assert to_espeak("SPELL A B") == "spell [['eI]] [[b'i:]]"
    assert to_espeak("ROOM I FIVE") == "room [['aI]] five"
    assert set(LETTER_PHONEMES) == set("ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def test_missing_tools_error_names_install_command(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    config = CorpusConfig(num_train=2, num_dev=1, num_test=1)
    with pytest.raises(ToolMissingError, match="apt-get install espeak-ng") as err:
        make_corpus(tmp_path / "d", config, log=lambda *_: None)
    assert "sox" in str(err.value)
    rc = make_corpus_cli.main(["--outdir", str(tmp_path / "d"), "--num_train", "2"])
    assert rc == 2
    assert "espeak-ng" in capsys.readouterr().err


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="num_dev must be at least 1"):
        CorpusConfig(num_dev=0)
    with pytest.raises(ValueError, match="num_speakers must be in 0..656"):
        plan_jobs(CorpusConfig(num_speakers=700), Path("/x"))
    with pytest.raises(ValueError, match="num_test_unseen must be >= 0, got -1"):
        CorpusConfig(num_test_unseen=-1)


def test_unseen_voice_split_uses_voices_and_rates_no_training_utterance_has() -> None:
    plan = plan_jobs(CorpusConfig(num_train=400, num_dev=20, num_test=40, num_test_unseen=60,
                                  seed=3), Path("/x"))
    assert list(plan) == ["train", "dev", "test", "test_unseen"]
    seen = [job for split in ("train", "dev", "test") for job, _, _ in plan[split]]
    unseen = [job for job, _, _ in plan["test_unseen"]]
    assert len(unseen) == 60
    variants = {j.voice.split("+")[1] for j in unseen}
    assert variants <= set(UNSEEN_VARIANTS) and len(variants) >= 10
    assert variants.isdisjoint(j.voice.split("+")[1] for j in seen)
    train_rates = {j.rate for j, _, _ in plan["train"]}
    assert all(not min(train_rates) <= j.rate <= max(train_rates) for j in unseen)
    assert {s for _, _, s in plan["test_unseen"]}.isdisjoint(s for _, _, s in plan["train"])
    assert "test_unseen" not in plan_jobs(CorpusConfig(num_train=5, num_dev=1, num_test=1),
                                          Path("/x"))
    band = [j.band for j in seen if j.band is not None]
    assert 0.2 < len(band) / len(seen) < 0.4 and all(lo < hi for lo, hi in band)


def test_datadir_helpers(tiny_corpus: Path, tmp_path: Path) -> None:
    parts = [tmp_path / f"split/{i}/wav.scp" for i in range(3)]
    split_scp(tiny_corpus / "dev" / "wav.scp", parts)
    sizes = [len(p.read_text().splitlines()) for p in parts]
    assert sizes == [4, 3, 3]
    joined = "".join(p.read_text() for p in parts)
    assert joined == (tiny_corpus / "dev" / "wav.scp").read_text()
    with pytest.raises(DataDirError, match="fewer than the 20 splits"):
        split_scp(tiny_corpus / "dev" / "wav.scp", [tmp_path / f"s{i}" for i in range(20)])
    keep = sorted(read_table(tiny_corpus / "train" / "text"))[:5]
    assert subset_datadir(tiny_corpus / "train", tmp_path / "sub", keep) == 5
    assert validate_datadir(tmp_path / "sub") == 5
    assert sorted(read_table(tmp_path / "sub" / "utt2dur")) == keep
    (tmp_path / "sub" / "text").write_text("only-one HELLO\n")
    with pytest.raises(DataDirError, match="list different utterances"):
        validate_datadir(tmp_path / "sub")
    with pytest.raises(DataDirError, match="does not exist"):
        validate_datadir(tmp_path / "nowhere")


def test_festival_share_replaces_only_its_training_utterances() -> None:
    base = CorpusConfig(num_train=200, num_dev=10, num_test=10, num_test_unseen=10, seed=5)
    plain = plan_jobs(base, Path("/x"))
    mixed = plan_jobs(replace(base, festival_share=0.3), Path("/x"))
    for split in ("dev", "test", "test_unseen"):  # test sets shared with the plain corpus
        assert mixed[split] == plain[split]
    festival = [(job, text) for job, text, _ in mixed["train"] if job.engine == "festival"]
    assert len(festival) == 60
    assert {j.voice for j, _ in festival} == set(FESTIVAL_VOICES.values())
    assert all(j.utt_id.startswith("fest") and j.text == to_festival(t) for j, t in festival)
    lo, hi = TRAIN_RATES
    assert all(lo - 15 <= j.rate <= hi + 15 for j, _ in festival)  # no unseen-set rate leaks in
    kept = [(a, b) for a, b in zip(plain["train"], mixed["train"]) if b[0].engine == "espeak-ng"]
    assert len(kept) == 140 and all(a == b for a, b in kept)
    assert {t for _, t, _ in mixed["train"]} == {t for _, t, _ in plain["train"]}
    with pytest.raises(ValueError, match="festival_share must be in \\[0, 1\\], got 1.5"):
        CorpusConfig(festival_share=1.5)


def test_festival_utterance_is_16k_mono_and_follows_its_rate(tmp_path: Path) -> None:
    plan = plan_jobs(CorpusConfig(num_train=30, num_dev=1, num_test=1, seed=2, festival_share=1.0,
                                  noise=False, reverb=False, band_limit=False), tmp_path)
    job = plan["train"][0][0]
    job = replace(job, text="set the alarm for seven thirty")
    slow = replace(job, utt_id="slow", path=str(tmp_path / "slow.wav"), rate=110)
    fast = replace(job, utt_id="fast", path=str(tmp_path / "fast.wav"), rate=200)
    seconds = {j.utt_id: synthesize(j) for j in (slow, fast)}
    with wave.open(slow.path) as f:
        assert (f.getframerate(), f.getnchannels(), f.getsampwidth()) == (16000, 1, 2)
    assert 1.5 < seconds["slow"] / seconds["fast"] < 2.0  # 200/110 = 1.82, plus fixed padding
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fast.wav", "slow.wav"]  # no leftovers
    with pytest.raises(RuntimeError, match="voice_no_such_voice.*festvox-kallpc16k"):
        synthesize(replace(job, voice="no_such_voice", path=str(tmp_path / "bad.wav")))


def test_festival_corpus_without_festival_names_its_packages(tmp_path: Path, monkeypatch) -> None:
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda n: None if n == "text2wave" else real_which(n))
    with pytest.raises(ToolMissingError, match="text2wave: sudo apt-get install festival festvox"):
        make_corpus(tmp_path / "d", CorpusConfig(num_train=2, num_dev=1, num_test=1,
                                                 festival_share=0.5), log=lambda *_: None)
    assert not (tmp_path / "d").exists()
