"""Load a fairseq checkpoint without fairseq: an unpickler that stubs its classes.

fairseq ``.pt`` files pickle fairseq objects (``Dictionary``, config dataclasses)
next to the plain ``model`` state dict and the ``cfg`` / ``args``; fairseq
does not install on Python 3.11. :func:`load_pickled` unpickles such a file
with ``fairseq.*`` (and other unavailable modules a checkpoint may name)
replaced by inert stand-ins that just keep their state, while torch tensors,
containers, ``argparse.Namespace`` and omegaconf configs load as themselves.
Only modules on :data:`REAL_MODULES` are imported; anything else is a stub, so
loading runs no code from the checkpoint's classes.
"""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

REAL_MODULES = ("torch", "collections", "argparse", "builtins", "copyreg", "numpy",
                "omegaconf", "_codecs", "enum", "typing", "pathlib", "datetime")
"""Top-level modules whose classes are loaded for real (data containers)."""


class Stub:
    """A stand-in for a class that is not available: keeps what it was given."""

    _stub_name = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._stub_args = args
        self.__dict__.update(kwargs)

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self._stub_state = state

    def __repr__(self) -> str:
        return f"<stub {self._stub_name}>"


def _stub_class(module: str, name: str) -> type:
    return type(name, (Stub,), {"_stub_name": f"{module}.{name}", "__module__": "stub." + module})


class StubUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose unknown classes become :class:`Stub` subclasses."""

    def find_class(self, module: str, name: str) -> Any:
        if module.split(".", 1)[0] in REAL_MODULES:
            try:
                return super().find_class(module, name)
            except (ImportError, AttributeError):
                pass
        return _stub_class(module, name)


stub_pickle = SimpleNamespace(Unpickler=StubUnpickler, load=pickle.load, __name__="stub_pickle")
"""A ``pickle_module`` for ``torch.load`` (only ``Unpickler`` and ``load`` are used)."""


def load_pickled(path: str | Path) -> Any:
    """``torch.load`` of a checkpoint whose pickle may name unavailable classes."""
    importlib.import_module("torch.serialization")
    return torch.load(str(path), map_location="cpu", pickle_module=stub_pickle,
                      weights_only=False)
