"""Synthesise one utterance: espeak-ng or festival -> sox (16 kHz mono, pitch, reverb, band limits) -> light noise.

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

from espnet_allinone.corpus.tools import FESTIVAL_PACKAGES
from espnet_allinone.corpus.voices import ENGINES

SAMPLE_RATE = 16000

FESTIVAL_WPM = 152
"""Festival's speaking rate at ``Duration_Stretch`` 1, in espeak-ng's words per minute
(measured: a 26-word sentence lasts 8.0-8.3 s in the three voices, 7.3 s in espeak-ng at 170)."""

FESTIVAL_CENTS_PER_PITCH_STEP = 8
"""Festival has no pitch argument: sox shifts it by this many cents per espeak-ng pitch step from 50."""


@dataclass(frozen=True)
class UttJob:
    """Everything needed to make one wav file."""

    utt_id: str
    path: str
    text: str            # what the engine reads: to_espeak() for espeak-ng, the transcript for festival
    voice: str           # espeak-ng -v argument ("en-us+m3") or festival voice ("kal_diphone")
    rate: int            # words per minute
    pitch: int           # 0..99
    reverb: tuple[int, int] | None   # (reverberance %, room scale %) or None
    snr_db: float | None             # white-noise SNR or None
    noise_seed: int
    band: tuple[int, int] | None = None  # (high-pass Hz, low-pass Hz) or None
    engine: str = "espeak-ng"            # one of voices.ENGINES


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


def _festival(job: UttJob, out: str) -> list[str]:
    """text2wave writes a file (its header needs a seek); sox reads it and shifts the pitch."""
    stretch = round(FESTIVAL_WPM / job.rate, 4)
    text2wave = ["text2wave", "-eval", f"(voice_{job.voice})",
                 "-eval", f"(Parameter.set 'Duration_Stretch {stretch})", "-o", out]
    p = subprocess.run(text2wave, input=job.text.encode(), capture_output=True, check=False)
    # festival exits 0 on an unknown voice: an error on stderr or no file is the failure
    if p.returncode != 0 or b"ERROR" in p.stderr or not Path(out).is_file():
        raise RuntimeError(f"synthesising {job.utt_id} failed: {' '.join(text2wave)!r}: "
                           f"{p.stderr.decode(errors='replace').strip()} (festival's voices: "
                           f"apt-get install {FESTIVAL_PACKAGES})")
    return ["pitch", str((job.pitch - 50) * FESTIVAL_CENTS_PER_PITCH_STEP)]


def _sox(job: UttJob, source: str, effects: list[str]) -> list[str]:
    """sox from ``source`` ("-": stdin) to the job's 16 kHz mono wav with its effects."""
    sox = ["sox", "-R", "-t", "wav", source, "-t", "wav", "-r", str(SAMPLE_RATE), "-c", "1",
           "-b", "16", "-e", "signed-integer", job.path, *effects, "pad", "0.15", "0.2"]
    if job.reverb is not None:
        sox += ["reverb", str(job.reverb[0]), "50", str(job.reverb[1])]
    if job.band is not None:
        sox += ["highpass", str(job.band[0]), "lowpass", str(job.band[1])]
    return sox + ["gain", "-n", "-3"]


def synthesize(job: UttJob) -> float:
    """Write ``job.path`` and return its duration in seconds."""
    Path(job.path).parent.mkdir(parents=True, exist_ok=True)
    if job.engine == "espeak-ng":  # piped into sox
        espeak = ["espeak-ng", "-v", job.voice, "-s", str(job.rate), "-p", str(job.pitch),
                  "--stdout", job.text]
        _run_pipeline(job.utt_id, espeak, _sox(job, "-", []))
    elif job.engine == "festival":  # a file into sox, which shifts the pitch
        festival_wav = job.path + ".festival.wav"
        try:
            pitch = _festival(job, festival_wav)
            _run_pipeline(job.utt_id, None, _sox(job, festival_wav, pitch))
        finally:
            Path(festival_wav).unlink(missing_ok=True)
    else:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {job.engine!r}")
    if job.snr_db is not None:
        _add_noise(job.path, job.snr_db, job.noise_seed)
    with wave.open(job.path, "rb") as f:
        return f.getnframes() / f.getframerate()


def _run_pipeline(utt_id: str, src_cmd: list[str] | None, sox: list[str]) -> None:
    """``src_cmd | sox`` (or sox alone when the source is a file); raise with both commands' stderr."""
    p1 = subprocess.Popen(src_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) if src_cmd else None
    p2 = subprocess.run(sox, check=False, stdin=p1.stdout if p1 else subprocess.DEVNULL,
                        capture_output=True)
    err1, rc1 = b"", 0
    if p1 is not None:
        assert p1.stdout is not None
        p1.stdout.close()
        err1 = p1.stderr.read() if p1.stderr else b""
        rc1 = p1.wait()
    if rc1 != 0 or p2.returncode != 0:
        first = f"{' '.join(src_cmd)!r} | " if src_cmd else ""
        raise RuntimeError(
            f"synthesising {utt_id} failed: {first}{' '.join(sox)!r}: "
            f"{err1.decode(errors='replace')} {p2.stderr.decode(errors='replace')}".strip()
        )
