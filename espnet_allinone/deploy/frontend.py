"""ESPnet's default front end in numpy: STFT power -> log-mel -> global MVN.

The constants (window, mel matrix, normalisation statistics) are taken from
the loaded ESPnet model when the model is exported (``build``) and stored in
``frontend.npz``, so this module computes what ``DefaultFrontend`` and
``GlobalMVN`` compute without torch: the same reflect padding, periodic
window, frame count ``samples // hop + 1`` and padding masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

FILE_NAME = "frontend.npz"

try:  # keep numpy's BLAS to one thread: its idle threads spin and slow onnxruntime down
    from threadpoolctl import ThreadpoolController

    _BLAS: ThreadpoolController | None = ThreadpoolController()
except ImportError:
    _BLAS = None


def _mel(power: np.ndarray, melmat: np.ndarray) -> np.ndarray:
    """power @ melmat on one BLAS thread (measured: 2 OpenBLAS threads made the next
    onnxruntime run of a small model 1.7x slower); einsum (no BLAS) without threadpoolctl."""
    if _BLAS is None:
        return np.einsum("tf,fm->tm", power, melmat)
    with _BLAS.limit(limits=1, user_api="blas"):
        return power @ melmat


@dataclass
class LogMelFrontend:
    """Log-mel filterbank features (and optional global MVN) of 1-D waveforms."""

    n_fft: int
    hop_length: int
    center: bool
    window: np.ndarray            # (n_fft,) already padded to n_fft
    melmat: np.ndarray            # (n_fft // 2 + 1, n_mels)
    log_base: float | None = None
    mean: np.ndarray | None = None
    std: np.ndarray | None = None

    def save(self, path: Path) -> None:
        arrays = {"n_fft": np.array(self.n_fft), "hop_length": np.array(self.hop_length),
                  "center": np.array(self.center), "window": self.window, "melmat": self.melmat,
                  "log_base": np.array(np.nan if self.log_base is None else self.log_base)}
        if self.mean is not None:
            arrays.update(mean=self.mean, std=self.std)
        with open(path, "wb") as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path: Path) -> LogMelFrontend:
        with np.load(path) as z:
            base = float(z["log_base"])
            return cls(int(z["n_fft"]), int(z["hop_length"]), bool(z["center"]),
                       z["window"].astype(np.float32), z["melmat"].astype(np.float32),
                       None if np.isnan(base) else base,
                       z["mean"].astype(np.float32) if "mean" in z else None,
                       z["std"].astype(np.float32) if "std" in z else None)

    @property
    def n_mels(self) -> int:
        return int(self.melmat.shape[1])

    def num_frames(self, samples: int) -> int:
        padded = samples + 2 * (self.n_fft // 2) if self.center else samples
        return (padded - self.n_fft) // self.hop_length + 1

    def __call__(self, speech: np.ndarray) -> np.ndarray:
        """(samples,) float waveform -> (frames, n_mels) float32 features."""
        x = np.asarray(speech, dtype=np.float32)
        if self.center:
            pad = self.n_fft // 2
            if x.shape[0] <= pad:
                raise ValueError(f"audio of {x.shape[0]} samples is too short for the "
                                 f"{self.n_fft}-point STFT (needs more than {pad})")
            x = np.pad(x, pad, mode="reflect")
        n = self.num_frames(len(speech))
        if n <= 0:
            raise ValueError(f"audio of {len(speech)} samples gives no STFT frame")
        frames = np.lib.stride_tricks.sliding_window_view(x, self.n_fft)[:: self.hop_length][:n]
        spec = np.fft.rfft(frames * self.window, axis=-1)
        power = (spec.real**2 + spec.imag**2).astype(np.float32)
        mel = np.maximum(_mel(power, self.melmat), np.float32(1e-10))
        if self.log_base is None:
            feats = np.log(mel)
        else:
            feats = np.log(mel) / np.float32(np.log(self.log_base))
        if self.mean is not None:
            feats = (feats - self.mean) / self.std
        return feats.astype(np.float32)

    def batch(self, speeches: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Zero-padded (batch, frames, n_mels) features and their lengths (as ESPnet masks)."""
        feats = [self(s) for s in speeches]
        lengths = np.array([f.shape[0] for f in feats], dtype=np.int64)
        out = np.zeros((len(feats), int(lengths.max()), self.n_mels), dtype=np.float32)
        for i, f in enumerate(feats):
            out[i, : f.shape[0]] = f
        return out, lengths
