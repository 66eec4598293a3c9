"""Make the synthetic corpus: draw texts, voices and effects from one seed, synthesise in parallel."""

from __future__ import annotations

import json
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from espnet_allinone.corpus.datadir import write_datadir
from espnet_allinone.corpus.synth import UttJob, synthesize
from espnet_allinone.corpus.text import to_espeak, to_festival, unique_transcripts
from espnet_allinone.corpus.tools import CORPUS_TOOLS, FESTIVAL_TOOLS, require_tools
from espnet_allinone.corpus.voices import (
    Speaker,
    make_festival_speakers,
    make_speakers,
    make_unseen_speakers,
)

MANIFEST = "corpus.json"


@dataclass(frozen=True)
class CorpusConfig:
    """What to make; equal configs make bit-identical corpora."""

    num_train: int = 2000
    num_dev: int = 100
    num_test: int = 200
    num_test_unseen: int = 0       # test_unseen: voices and rates no training utterance has
    seed: int = 0
    num_speakers: int = 0          # 0: every training voice x variant pair (656)
    noise: bool = True             # white noise at 20-40 dB SNR on ~60% of utterances
    reverb: bool = True            # sox reverb on ~50% of utterances
    band_limit: bool = True        # sox high/low-pass on ~30% of utterances
    festival_share: float = 0.0    # share of training utterances spoken by festival voices

    def __post_init__(self) -> None:
        for name in ("num_train", "num_dev", "num_test"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.num_test_unseen < 0:
            raise ValueError(f"num_test_unseen must be >= 0, got {self.num_test_unseen}")
        if not 0.0 <= self.festival_share <= 1.0:
            raise ValueError(f"festival_share must be in [0, 1], got {self.festival_share}")

    def counts(self) -> dict[str, int]:
        counts = {"train": self.num_train, "dev": self.num_dev, "test": self.num_test}
        if self.num_test_unseen:
            counts["test_unseen"] = self.num_test_unseen
        return counts


def plan_jobs(config: CorpusConfig, wavdir: Path) -> dict[str, list[tuple[UttJob, str, str]]]:
    """Every utterance's (job, transcript, speaker id), per split; no audio made.

    Festival voices replace espeak-ng in a share of the training utterances,
    drawn from a random stream of their own: every other utterance, and every
    dev and test utterance, is the same as in the corpus without them, so runs
    on either corpus share their test sets.
    """
    rng = random.Random(config.seed)
    speakers = make_speakers(rng, config.num_speakers)
    unseen = make_unseen_speakers(rng)
    counts = config.counts()
    texts = unique_transcripts(rng, sum(counts.values()))
    plan: dict[str, list[tuple[UttJob, str, str]]] = {}
    start = 0
    for split in counts:
        items = []
        held_out = split == "test_unseen"
        for i, text in enumerate(texts[start:start + counts[split]]):
            spk = rng.choice(unseen if held_out else speakers)
            rate, pitch = _rate_and_pitch(rng, spk, vary_rate=not held_out)
            reverb = ((rng.randint(10, 60), rng.randint(10, 60))
                      if config.reverb and rng.random() < 0.5 else None)
            snr = round(rng.uniform(20, 40), 2) if config.noise and rng.random() < 0.6 else None
            band = ((rng.randint(60, 300), rng.randint(3000, 6500))
                    if config.band_limit and rng.random() < 0.3 else None)
            utt_id, path = _utterance(spk, split, i, wavdir)
            job = UttJob(utt_id, path, to_espeak(text), spk.engine_voice, rate, pitch, reverb, snr,
                         noise_seed=rng.getrandbits(32), band=band)
            items.append((job, text, spk.spk_id))
        plan[split] = items
        start += counts[split]
    if config.festival_share:
        plan["train"] = _festival_share(plan["train"], config, wavdir)
    return plan


def _rate_and_pitch(rng: random.Random, spk: Speaker, vary_rate: bool) -> tuple[int, int]:
    """One utterance's rate (the speaker's, varied by +-15 wpm unless held out) and pitch."""
    rate = spk.rate + rng.randint(-15, 15) if vary_rate else spk.rate
    return rate, min(99, max(0, spk.pitch + rng.randint(-8, 8)))


def _utterance(spk: Speaker, split: str, index: int, wavdir: Path) -> tuple[str, str]:
    """(utterance id, absolute wav path) of a split's ``index``-th utterance."""
    utt_id = f"{spk.spk_id}-{split}{index:06d}"
    return utt_id, str((wavdir / split / f"{utt_id}.wav").resolve())


def _festival_share(items: list[tuple[UttJob, str, str]], config: CorpusConfig,
                    wavdir: Path) -> list[tuple[UttJob, str, str]]:
    """Give ``festival_share`` of the training utterances (same texts and effects) to festival speakers."""
    rng = random.Random(f"festival-{config.seed}")
    speakers = make_festival_speakers(rng)
    chosen = set(rng.sample(range(len(items)), round(config.festival_share * len(items))))
    out = []
    for i, (job, text, spk_id) in enumerate(items):
        if i in chosen:
            spk = rng.choice(speakers)
            rate, pitch = _rate_and_pitch(rng, spk, vary_rate=True)
            utt_id, path = _utterance(spk, "train", i, wavdir)
            job = replace(job, utt_id=utt_id, path=path, text=to_festival(text),
                          voice=spk.engine_voice, rate=rate, pitch=pitch, engine=spk.engine)
            spk_id = spk.spk_id
        out.append((job, text, spk_id))
    return out


def make_corpus(
    outdir: str | Path,
    config: CorpusConfig,
    wavdir: str | Path | None = None,
    nj: int = 4,
    log=print,
) -> dict[str, int]:
    """Write ``outdir/{train,dev,test}`` data dirs and their wavs; return utterance counts.

    A corpus already made with the same config is kept (cheap re-runs).
    """
    out = Path(outdir)
    wav_root = Path(wavdir) if wavdir else out / "wavs"
    manifest = out / MANIFEST
    wanted = {"config": asdict(config), "wavdir": str(wav_root.resolve())}
    if manifest.is_file() and json.loads(manifest.read_text()) == wanted and all(
        (out / s / "wav.scp").is_file() for s in config.counts()
    ):
        log(f"[make_corpus] {out} already holds this corpus ({MANIFEST} matches); kept")
        return config.counts()
    require_tools(CORPUS_TOOLS + (FESTIVAL_TOOLS if config.festival_share else ()))
    plan = plan_jobs(config, wav_root)
    jobs = [job for items in plan.values() for job, _, _ in items]
    log(f"[make_corpus] synthesising {len(jobs)} utterances with {nj} jobs into {wav_root}")
    with ThreadPoolExecutor(max_workers=max(1, nj)) as pool:
        durations = dict(zip((j.utt_id for j in jobs), pool.map(synthesize, jobs)))
    for split, items in plan.items():
        write_datadir(
            out / split,
            wav_scp={job.utt_id: job.path for job, _, _ in items},
            text={job.utt_id: text for job, text, _ in items},
            utt2spk={job.utt_id: spk for job, _, spk in items},
            extra={"utt2dur": {job.utt_id: f"{durations[job.utt_id]:.3f}" for job, _, _ in items}},
        )
        hours = sum(durations[job.utt_id] for job, _, _ in items) / 3600
        log(f"[make_corpus] {out / split}: {len(items)} utterances, {hours:.2f} h")
    manifest.write_text(json.dumps(wanted, indent=1, sort_keys=True) + "\n")
    return config.counts()
