"""Reading wav files for transcription: mono float32 at the model's rate, or a clear error.

Another sample rate is resampled (polyphase, scipy) with a warning, or refused
with ``resample=False``. A file that is missing, empty, corrupt or too short is an
``AudioError`` naming the file, so a batch run can report and skip it.
"""

from __future__ import annotations

from math import gcd
from pathlib import Path

import numpy as np

from espnet_allinone.errors import AllInOneError


class AudioError(AllInOneError, ValueError):
    """One input file that cannot be transcribed (the message names it and why)."""


def read_audio(path: str | Path, sample_rate: int, resample: bool = True,
               min_samples: int = 1, warn=None) -> np.ndarray:
    """(samples,) float32 in [-1, 1] at ``sample_rate``; first channel of multi-channel files."""
    import soundfile

    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: empty file")
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError) as e:
        raise AudioError(f"{path}: not a readable audio file ({e})") from None
    speech = data[:, 0]
    if rate != sample_rate:
        if not resample:
            raise AudioError(f"{path}: sample rate {rate} Hz, the model takes {sample_rate} Hz "
                             "(resample it, or drop --no_resample)")
        if warn is not None:
            warn(f"warning: {path}: sample rate {rate} Hz resampled to the model's "
                 f"{sample_rate} Hz")
        from scipy.signal import resample_poly

        g = gcd(int(rate), int(sample_rate))
        speech = resample_poly(speech, sample_rate // g, rate // g).astype(np.float32)
    if speech.shape[0] < min_samples:
        raise AudioError(f"{path}: {speech.shape[0]} samples, too short (the model needs at "
                         f"least {min_samples}, {min_samples / sample_rate:.3f} s)")
    return speech
