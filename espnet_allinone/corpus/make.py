"""Make the espeak-ng corpus: draw texts, voices and effects from one seed, synthesise in parallel."""

from __future__ import annotations

import json
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from espnet_allinone.corpus.datadir import write_datadir
from espnet_allinone.corpus.synth import UttJob, synthesize
from espnet_allinone.corpus.text import to_espeak, unique_transcripts
from espnet_allinone.corpus.tools import require_tools
from espnet_allinone.corpus.voices import make_speakers, make_unseen_speakers

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

    def __post_init__(self) -> None:
        for name in ("num_train", "num_dev", "num_test"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.num_test_unseen < 0:
            raise ValueError(f"num_test_unseen must be >= 0, got {self.num_test_unseen}")

    def counts(self) -> dict[str, int]:
        counts = {"train": self.num_train, "dev": self.num_dev, "test": self.num_test}
        if self.num_test_unseen:
            counts["test_unseen"] = self.num_test_unseen
        return counts


def plan_jobs(config: CorpusConfig, wavdir: Path) -> dict[str, list[tuple[UttJob, str, str]]]:
    """Every utterance's (job, transcript, speaker id), per split; no audio made."""
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
            rate = spk.rate if held_out else spk.rate + rng.randint(-15, 15)
            pitch = min(99, max(0, spk.pitch + rng.randint(-8, 8)))
            reverb = ((rng.randint(10, 60), rng.randint(10, 60))
                      if config.reverb and rng.random() < 0.5 else None)
            snr = round(rng.uniform(20, 40), 2) if config.noise and rng.random() < 0.6 else None
            band = ((rng.randint(60, 300), rng.randint(3000, 6500))
                    if config.band_limit and rng.random() < 0.3 else None)
            utt_id = f"{spk.spk_id}-{split}{i:06d}"
            job = UttJob(utt_id, str((wavdir / split / f"{utt_id}.wav").resolve()),
                         to_espeak(text), spk.espeak_voice, rate, pitch, reverb, snr,
                         noise_seed=rng.getrandbits(32), band=band)
            items.append((job, text, spk.spk_id))
        plan[split] = items
        start += counts[split]
    return plan


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
    require_tools()
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
