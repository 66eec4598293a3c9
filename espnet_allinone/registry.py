"""The one place that adds this package's classes to ESPnet's ASR task tables.

ESPnet 202511 has no plugin mechanism: YAML names (``encoder:``, ``model:``)
resolve through module-level ``ClassChoices`` in ``espnet2.tasks.asr``. Adding
to them is the route that also serves ESPnet's own ``asr_train``,
``asr_inference`` / ``Speech2Text`` and ``from_pretrained``. ``register()``
is idempotent; it runs automatically when ``espnet2.tasks.asr`` is imported
(``espnet_allinone._import_hook``, installed by a ``.pth`` file) and first
thing in this package's entry points.
"""

from __future__ import annotations

import importlib

from espnet_allinone.errors import AllInOneError

ENTRIES: tuple[tuple[str, str, str], ...] = (
    # (ClassChoices variable in espnet2.tasks.asr, YAML name, "module:Class")
    ("encoder_choices", "elastic_conformer",
     "espnet_allinone.encoders.elastic_conformer:ElasticConformerEncoder"),
    ("encoder_choices", "packed_conformer",
     "espnet_allinone.encoders.packed_conformer:PackedConformerEncoder"),
    ("encoder_choices", "elastic_wav2vec2",
     "espnet_allinone.encoders.elastic_wav2vec2:ElasticWav2Vec2Encoder"),
    ("encoder_choices", "packed_wav2vec2",
     "espnet_allinone.encoders.packed_wav2vec2:PackedWav2Vec2Encoder"),
    ("model_choices", "allinone", "espnet_allinone.models.allinone:ESPnetAllInOneASRModel"),
    ("model_choices", "packed", "espnet_allinone.models.packed:PackedOutputASRModel"),
)
"""What ``register()`` adds; a later encoder or model is one more line here."""

_done = False


class RegistrationError(AllInOneError, ImportError):
    """An entry's class could not be imported (the other entries are registered)."""


def load_class(target: str) -> type:
    """The class an entry's ``"module:Class"`` names (its module imported)."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def register() -> list[str]:
    """Add every entry to ``espnet2.tasks.asr`` (once); returns the names added.

    A class already registered under its name is left alone, so calling this
    again (or from several entry points) changes nothing.
    """
    global _done
    import espnet2.tasks.asr as asr_task

    added, failed = [], []
    for table_name, key, target in ENTRIES:
        table = getattr(asr_task, table_name)
        if key in table.classes:
            continue
        try:
            table.classes[key] = load_class(target)
        except Exception as err:  # noqa: BLE001 - one broken entry must not hide the others
            failed.append(f"{key} ({target}): {type(err).__name__}: {err}")
            continue
        added.append(key)
    _done = True
    if failed:
        raise RegistrationError("could not register " + "; ".join(failed))
    return added
