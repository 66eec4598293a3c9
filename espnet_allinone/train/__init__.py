"""One-pass all-in-one training: subsystem sampling and self-distillation (torch
only). The ESPnet model class that runs them is :mod:`espnet_allinone.models.allinone`
(``model: allinone``)."""

from espnet_allinone.train.sampling import STRATEGIES, SubsystemSampler

__all__ = ["STRATEGIES", "SubsystemSampler"]
