"""Users' speech foundation checkpoints (wav2vec2 / HuBERT), read offline.

:func:`load_foundation` reads a Hugging Face folder, a fairseq ``.pt`` (without
fairseq) or a torchaudio state dict into torchaudio's architecture keywords and
key names; ``python -m espnet_allinone.foundation.conf`` writes them into a
training config.
"""

from espnet_allinone.foundation.loader import (
    FoundationCheckpoint,
    FoundationError,
    load_foundation,
)

__all__ = ["FoundationCheckpoint", "FoundationError", "load_foundation"]
