"""PruneConfig: what is gated and how (YAML ``encoder_conf.prune_conf``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

KINDS = ("heads", "ffn_units", "conv_channels", "modules")
"""What can carry gates: attention heads, FFN intermediate units, conv-module
channels, and whole modules (each attention, feed-forward and conv module)."""


@dataclass(frozen=True)
class PruneConfig:
    """Gate kinds and hyper-parameters; the target ramp and the Lagrangian's start.

    ``unit_group``: FFN units and conv channels are gated in groups of this
    many (1: each alone). With group-wise quantization the groups must be
    whole quantizer groups, so the encoder raises it to the group size.
    ``warmup_steps``: the target falls linearly from 1 to the target over
    these many updates (DPHuBERT ramps it over the first part of training).
    ``gate_lr_scale``: the gates learn this many times faster than the weights
    (ESPnet has one optimiser; see ``HardConcrete``).
    ``lambda_scale``: the multipliers are ``lambda_scale`` times their trained
    parameters, so with Adam (steps of about the learning rate) they can grow
    to the size of an ASR loss summed over an utterance within a few hundred
    updates; 1 suits a loss of order 1.
    """

    kinds: tuple[str, ...] = KINDS
    init_keep: float = 0.9
    beta: float = 2 / 3
    limits: tuple[float, float] = (-0.1, 1.1)
    unit_group: int = 1
    warmup_steps: int = 1000
    gate_lr_scale: float = 1.0
    lambda_scale: float = 1.0

    def __post_init__(self) -> None:
        kinds = tuple(self.kinds)
        bad = [k for k in kinds if k not in KINDS]
        if bad or not kinds:
            raise ValueError(f"prune_conf kinds {list(kinds)}: unknown {bad}; valid: "
                             f"{', '.join(KINDS)}")
        object.__setattr__(self, "kinds", kinds)
        object.__setattr__(self, "limits", tuple(float(x) for x in self.limits))
        if self.unit_group < 1 or self.warmup_steps < 0:
            raise ValueError("prune_conf unit_group must be >= 1 and warmup_steps >= 0")

    @classmethod
    def from_dict(cls, conf: dict[str, Any] | None) -> PruneConfig:
        conf = dict(conf or {})
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in conf if k not in valid]
        if unknown:
            raise ValueError(f"unknown prune_conf key(s) {unknown}; valid keys: "
                             f"{', '.join(valid)}")
        return cls(**conf)
