"""Synthesise one utterance: espeak-ng -> sox (16 kHz mono, reverb, band limits) -> light noise.

Every random choice is made by the caller and carried in the job, so an
utterance is a pure function of its job: re-generation is bit-identical
(sox runs with ``-R``; the noise comes from a seeded numpy generator).
"""

from __future__ import annotations

import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000


@dataclass(frozen=True)
class UttJob:
    """Everything needed to make one wav file."""

    utt_id: str
    path: str
    espeak_text: str
    voice: str           # espeak-ng -v argument, e.g. "en-us+m3"
    rate: int            # words per minute
    pitch: int           # 0..99
    reverb: tuple[int, int] | None   # (reverberance %, room scale %) or None
    snr_db: float | None             # white-noise SNR or None
    noise_seed: int
    band: tuple[int, int] | None = None  # (high-pass Hz, low-pass Hz) or None


def _add_noise(path: str, snr_db: float, seed: int) -> None:
    with wave.open(path, "rb") as f:
        params = f.getparams()
        audio = np.frombuffer(f.readframes(params.nframes), dtype="<i2").astype(np.float64)
    power = float(np.mean(audio**2)) if audio.size else 0.0
    if power > 0:
        noise = np.random.default_rng(seed).standard_normal(audio.size)
        audio = audio + noise * np.sqrt(power / 10 ** (snr_db / 10))
    out = np.clip(np.round(audio), -32768, 32767).astype("<i2")
    with wave.open(path, "wb") as f:
        f.setparams(params)
        f.writeframes(out.tobytes())


def synthesize(job: UttJob) -> float:
    """Write ``job.path`` and return its duration in seconds."""
    Path(job.path).parent.mkdir(parents=True, exist_ok=True)
    espeak = ["espeak-ng", "-v", job.voice, "-s", str(job.rate), "-p", str(job.pitch),
              "--stdout", job.espeak_text]
    sox = ["sox", "-R", "-t", "wav", "-", "-t", "wav", "-r", str(SAMPLE_RATE), "-c", "1",
           "-b", "16", "-e", "signed-integer", job.path, "pad", "0.15", "0.2"]
    if job.reverb is not None:
        sox += ["reverb", str(job.reverb[0]), "50", str(job.reverb[1])]
    if job.band is not None:
        sox += ["highpass", str(job.band[0]), "lowpass", str(job.band[1])]
    sox += ["gain", "-n", "-3"]
    p1 = subprocess.Popen(espeak, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p2 = subprocess.run(sox, check=False, stdin=p1.stdout, capture_output=True)
    assert p1.stdout is not None
    p1.stdout.close()
    err1 = p1.stderr.read() if p1.stderr else b""
    if p1.wait() != 0 or p2.returncode != 0:
        raise RuntimeError(
            f"synthesising {job.utt_id} failed: {' '.join(espeak)!r} | {' '.join(sox)!r}: "
            f"{err1.decode(errors='replace')} {p2.stderr.decode(errors='replace')}".strip()
        )
    if job.snr_db is not None:
        _add_noise(job.path, job.snr_db, job.noise_seed)
    with wave.open(job.path, "rb") as f:
        return f.getnframes() / f.getframerate()
