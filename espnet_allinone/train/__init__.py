"""One-pass all-in-one training: subsystem sampling, self-distillation, the model.

``sampling`` and ``distill`` need torch only; ``model`` (the ESPnet model class
registered as ``model: allinone``) imports ESPnet, so import it explicitly:
``from espnet_allinone.train.model import ESPnetAllInOneASRModel``.
"""

from espnet_allinone.train.sampling import STRATEGIES, SubsystemSampler

__all__ = ["STRATEGIES", "SubsystemSampler"]
