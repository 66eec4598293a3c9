"""Load a fairseq checkpoint without fairseq, and without running code from it.

fairseq ``.pt`` files pickle fairseq objects (``Dictionary``, config dataclasses)
next to the plain ``model`` state dict and the ``cfg`` (omegaconf) or old
``args`` (``argparse.Namespace``); fairseq does not install on Python 3.11, and
a downloaded pickle must never run code. :func:`load_pickled` therefore reads
every checkpoint with ``torch.load(weights_only=True)``: torch's restricted
unpickler, for the zip format and for each pickle of the legacy format (its
header pickles included). On top of torch's own tensor / storage / dtype
globals it resolves only :func:`allowed_globals` (plain containers,
``argparse.Namespace``, omegaconf containers and nodes, numpy scalars and
arrays). A global under a fairseq namespace (:data:`STUB_NAMESPACES`) becomes
an inert :class:`Stub` class that only keeps what it is given. Any other global
(``builtins.eval``, ``os.system``, ``subprocess.Popen``, ``torch.hub.load``,
``getattr``...) is refused before torch reads the file: :func:`check_globals`
lists the globals the file's pickles name and raises :class:`UnsafePickleError`
naming the first one not allowed.
"""

from __future__ import annotations

import argparse
import collections
import functools
import io
import pickle
import pickletools
import typing
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import torch

from espnet_allinone.errors import AllInOneError

STUB_NAMESPACES = ("fairseq", "fairseq_cli")
"""Top-level modules whose globals load as inert :class:`Stub` classes."""

_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_PICKLES = 5
"""Pickles at the head of a legacy-format file: magic, protocol, sys info, object, keys."""


class UnsafePickleError(AllInOneError, pickle.UnpicklingError):
    """The checkpoint names a global that could run code; loading is refused."""

    def __init__(self, name: str) -> None:
        super().__init__(f"refused to load {name}: a checkpoint may hold tensors, plain "
                         "containers, configs and fairseq objects, nothing that runs code")
        self.name = name


class Stub:
    """A stand-in for a fairseq class: keeps what it was given, does nothing else."""

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


def _stub_class(full_name: str) -> type:
    """A fresh :class:`Stub` subclass standing for the global ``full_name``."""
    module, _, name = full_name.rpartition(".")
    return type(name, (Stub,), {"_stub_name": full_name, "__module__": "stub." + module})


# --- the allow-list -----------------------------------------------------------------------
def _named(objs: list[Any]) -> dict[str, Any]:
    return {f"{o.__module__}.{o.__qualname__}": o for o in objs}


def _numpy_globals() -> dict[str, Any]:
    """numpy scalars, dtypes and arrays (old ``numpy.core`` and new ``numpy._core`` names)."""
    import numpy as np

    core = np._core if hasattr(np, "_core") else np.core
    out: dict[str, Any] = {"numpy.dtype": np.dtype, "numpy.ndarray": np.ndarray}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out[f"{mod}.scalar"] = core.multiarray.scalar
        out[f"{mod}._reconstruct"] = core.multiarray._reconstruct
    for code in "?bBhHiIlLqQefdgFDG":  # numeric dtypes only: BUILD of an object dtype is refused
        cls = type(np.dtype(code))
        out[f"numpy.dtypes.{cls.__name__}"] = cls
    return out


def _omegaconf_globals() -> dict[str, Any]:
    """omegaconf's containers and value nodes (fairseq's ``cfg``)."""
    try:
        from omegaconf import base, dictconfig, listconfig, nodes
    except ImportError:  # without omegaconf such a cfg cannot load anyway
        return {}
    node_names = ("AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode",
                  "EnumNode", "BytesNode")
    return _named([dictconfig.DictConfig, listconfig.ListConfig, base.ContainerMetadata,
                   base.Metadata, *(getattr(nodes, n) for n in node_names if hasattr(nodes, n))])


@functools.lru_cache(maxsize=1)
def allowed_globals() -> dict[str, Any]:
    """Globals resolved for real on top of torch's weights-only defaults: data types only."""
    plain = _named([dict, list, tuple, int, float, str, bool, bytes, typing.Any,
                    collections.OrderedDict, collections.defaultdict, argparse.Namespace])
    return {**plain, **_numpy_globals(), **_omegaconf_globals()}


def _torch_allowed(name: str) -> bool:
    """Whether torch's weights-only unpickler resolves ``name`` by itself."""
    try:
        from torch._weights_only_unpickler import _get_allowed_globals
    except ImportError:  # a torch without the list: its own unpickler still decides
        return name.startswith("torch.")
    return name in _get_allowed_globals()


# --- scanning -----------------------------------------------------------------------------
def _canonical(module: str, name: str) -> str:
    """``module.name`` as torch's unpickler reads it (Python 2 names mapped, as it does)."""
    from torch._utils import IMPORT_MAPPING, NAME_MAPPING

    if (module, name) in NAME_MAPPING:
        module, name = NAME_MAPPING[(module, name)]
    elif module in IMPORT_MAPPING:
        module = IMPORT_MAPPING[module]
    return f"{module}.{name}"


def _globals_in(stream: IO[bytes]) -> Iterator[str]:
    """The globals one pickle names, in order. Protocol 4's STACK_GLOBAL (never in a
    torch.save file; torch's unpickler refuses the opcode) is named from the strings
    before it, for the message; other opcodes torch refuses need no name."""
    strings: list[str] = []
    memo: dict[int, Any] = {}
    for op, arg, _ in pickletools.genops(stream):
        if op.name == "GLOBAL":
            module, _, name = arg.partition(" ")
            yield _canonical(module, name)
        elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
            yield ".".join(strings[-2:])
        elif isinstance(arg, str) and "UNICODE" in op.name:
            strings.append(arg)
        elif op.name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT") and strings:
            memo[len(memo) if arg is None else arg] = strings[-1]
        elif op.name in ("GET", "BINGET", "LONG_BINGET") and isinstance(memo.get(arg), str):
            strings.append(memo[arg])


def _pickles(path: Path) -> Iterator[IO[bytes]]:
    """The pickle streams torch reads: ``*/data.pkl`` of a zip, else the legacy file's head."""
    with path.open("rb") as f:
        is_zip = f.read(4) == _ZIP_MAGIC
    if is_zip:
        try:
            with zipfile.ZipFile(path) as archive:
                records = [archive.read(i) for i in archive.infolist()
                           if i.filename.endswith("data.pkl")]
        except (zipfile.BadZipFile, OSError, EOFError):
            return  # torch cannot read it either, and says why
        yield from (io.BytesIO(r) for r in records)
        return
    with path.open("rb") as f:
        for _ in range(_LEGACY_PICKLES):
            yield f


def pickle_globals(path: str | Path) -> list[str]:
    """Every global the file's pickles name, in order of appearance, without running any."""
    found: list[str] = []
    for stream in _pickles(Path(path)):
        try:
            for name in _globals_in(stream):
                if name not in found:
                    found.append(name)
        except (ValueError, EOFError, UnicodeDecodeError, IndexError):
            break  # damaged from here on: torch stops reading there too
    return found


def check_globals(path: str | Path) -> list[str]:
    """The fairseq globals of ``path`` (to stub); :class:`UnsafePickleError` on any other
    global that is neither torch's nor in :func:`allowed_globals`."""
    stubs = []
    for name in pickle_globals(path):
        if _torch_allowed(name) or name in allowed_globals():
            continue
        if name.split(".", 1)[0] in STUB_NAMESPACES and "." in name:
            stubs.append(name)
            continue
        raise UnsafePickleError(name)
    return stubs


def load_pickled(path: str | Path) -> Any:
    """``torch.load(weights_only=True)`` of a checkpoint whose pickle may name fairseq
    classes (stubbed); refuses anything else that is not plain data."""
    stubs = [(_stub_class(name), name) for name in check_globals(path)]
    safe = [(obj, name) for name, obj in allowed_globals().items()] + stubs
    with torch.serialization.safe_globals(safe):
        return torch.load(str(path), map_location="cpu", weights_only=True)
