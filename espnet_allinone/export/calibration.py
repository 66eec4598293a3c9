"""Normalisation statistics per subsystem: BatchNorm recalibration before extraction.

Every path of an all-in-one model updates the same BatchNorm running statistics
(per conv width with ``elastic_conv``, per position when unfolded), so a
subsystem extracted as trained inherits a mixture dominated by the last steps'
paths (unless the encoder keeps a statistics bank per subsystem,
``stats_banks: true``; calibration then overrides the subsystem's bank).
Calibration re-estimates them for one subsystem, as once-for-all does
for each subnet: forward passes only, one utterance at a time (no padding
enters the statistics), dropout off, BatchNorm normalising with each
utterance's own statistics as in training, and each BatchNorm's running
mean/variance set to the pooled mean/variance of its input over every frame of
the calibration utterances (at each position it runs at). Pooled, not the
average of per-utterance variances: that average misses the spread between
utterances' means, which training's multi-utterance batches contain. No
weight changes; the model's own statistics come back when the block ends, so
the next subsystem starts from the same model.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from espnet_allinone.elastic.norm import ElasticBatchNorm1d
from espnet_allinone.errors import AllInOneError

CALIBRATION_SEED = 0
"""Seed of the utterance draw: the same data dir and count give the same utterances."""

DEFAULT_CALIBRATION_UTTS = 50
"""Utterances a subsystem's statistics are estimated on unless told otherwise: 50 scored
as well as 200 on two checkpoints of the main job (docs/experiments/statistics_and_distillation.md)
at a quarter of the cost."""

STAT_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


class CalibrationError(AllInOneError, ValueError):
    """Calibration data that cannot be used (missing, empty, a bad count)."""


@dataclass(frozen=True)
class CalibrationData:
    """Utterances drawn from a Kaldi-style data dir (its ``wav.scp``), read as training reads them."""

    data_dir: Path
    utterances: tuple[str, ...]

    @classmethod
    def from_data_dir(cls, data_dir: str | Path, count: int,
                      log: Callable[[str], None] = print) -> CalibrationData:
        """``count`` utterances of ``data_dir`` drawn with a fixed seed; all of them when it
        holds fewer (said through ``log``)."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise CalibrationError(f"calibration utterance count must be a whole number >= 1, "
                                   f"got {count!r}")
        data_dir = Path(data_dir)
        scp = data_dir / "wav.scp"
        if not scp.is_file():
            raise CalibrationError(f"calibration data {data_dir} has no wav.scp "
                                   "(expected a Kaldi-style data dir, e.g. dump/raw/train)")
        keys = sorted(line.split(maxsplit=1)[0] for line in scp.read_text().splitlines()
                      if line.strip())
        if not keys:
            raise CalibrationError(f"calibration data {scp} lists no utterances")
        if count >= len(keys):
            if count > len(keys):
                log(f"calibration: {count} utterances asked for, {data_dir} has "
                    f"{len(keys)}: using all {len(keys)}")
            chosen = keys
        else:
            chosen = sorted(random.Random(CALIBRATION_SEED).sample(keys, count))
        return cls(data_dir, tuple(chosen))

    def describe(self) -> dict:
        """What an extracted model's fingerprint records of its calibration."""
        return {"data": str(self.data_dir), "utterances": len(self.utterances)}

    def speech(self) -> Iterator[np.ndarray]:
        """Each chosen utterance's waveform (float32), as ESPnet's dataset gives it to training."""
        # ESPnet's dataset module is slow to import: only when calibration runs.
        from espnet2.train.dataset import ESPnetDataset

        dataset = ESPnetDataset([(str(self.data_dir / "wav.scp"), "speech", "sound")],
                                keys_to_load={"speech"})
        for key in self.utterances:
            yield dataset[key][1]["speech"]


def batch_norms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``module`` that keep running statistics."""
    return [m for m in module.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def _stat_buffers(norm: nn.Module) -> dict[str, torch.Tensor]:
    """Every statistics bank of a BatchNorm (the stock names and any per-width or
    per-position banks ``ElasticBatchNorm1d`` adds)."""
    return {name: buf for name, buf in norm.named_buffers(recurse=False)
            if name.startswith(STAT_BUFFERS)}


@contextmanager
def kept_statistics(module: nn.Module) -> Iterator[None]:
    """Within the block the BatchNorm statistics of ``module`` may change; after it they
    are the ones it had before (also when the block fails)."""
    saved = {id(norm): {k: v.clone() for k, v in _stat_buffers(norm).items()}
             for norm in batch_norms(module)}
    try:
        yield
    finally:
        with torch.no_grad():
            for norm in batch_norms(module):
                for name, buf in _stat_buffers(norm).items():
                    buf.copy_(saved[id(norm)][name])


class _Pooled:
    """Per-channel frame count, sum and sum of squares of a BatchNorm's input (float64)."""

    def __init__(self) -> None:
        self.frames = 0
        self.utterances = 0
        self.total: torch.Tensor | None = None
        self.squares: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        channels = x.transpose(0, 1).reshape(x.shape[1], -1).double()  # (C, frames)
        total, squares = channels.sum(1), channels.square().sum(1)
        self.total = total if self.total is None else self.total + total
        self.squares = squares if self.squares is None else self.squares + squares
        self.frames += channels.shape[1]
        self.utterances += 1

    def mean_var(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled mean and unbiased variance over every frame seen."""
        mean = self.total / self.frames
        var = (self.squares - self.frames * mean.square()) / max(self.frames - 1, 1)
        return mean.float(), var.clamp(min=0).float()


def _assign(norm: nn.modules.batchnorm._BatchNorm, position: int, pooled: _Pooled) -> None:
    """Write the pooled statistics into the bank ``norm`` uses at ``position``."""
    mean, var = pooled.mean_var()
    if isinstance(norm, ElasticBatchNorm1d):
        norm.repeat = position
        norm.assign_active_stats(mean, var, pooled.utterances)
        norm.repeat = 0
        return
    norm.running_mean.copy_(mean.to(norm.running_mean))
    norm.running_var.copy_(var.to(norm.running_var))
    norm.num_batches_tracked.fill_(pooled.utterances)


@torch.no_grad()
def calibrate(model: nn.Module, data: CalibrationData) -> int:
    """Re-estimate the encoder's BatchNorm statistics for the active subsystem.

    ``model`` is an ESPnet ASR model (its ``encode`` runs frontend, normalisation
    and the encoder); returns the number of BatchNorm layers calibrated (0: the
    encoder has none, nothing changes). The caller keeps the statistics it
    wants back (:func:`kept_statistics`).
    """
    norms = batch_norms(model.encoder)
    if not norms:
        return 0
    pooled: dict[tuple[int, int], tuple[nn.Module, int, _Pooled]] = {}

    def record(norm: nn.Module, inputs: tuple) -> None:
        position = getattr(norm, "repeat", 0)  # a shared block's logical position
        key = (id(norm), position)
        pooled.setdefault(key, (norm, position, _Pooled()))[2].add(inputs[0])

    was_training = model.training
    model.eval()
    for norm in norms:
        norm.train()  # each utterance normalised with its own statistics, as in training
    hooks = [norm.register_forward_pre_hook(record) for norm in norms]
    device = next(model.parameters()).device
    try:
        for wave in data.speech():
            speech = torch.as_tensor(wave, dtype=torch.float32, device=device)[None]
            model.encode(speech, torch.tensor([speech.shape[1]], device=device))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    for norm, position, stats in pooled.values():
        _assign(norm, position, stats)
    return len(norms)
