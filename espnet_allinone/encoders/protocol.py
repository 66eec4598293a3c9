"""What an elastic encoder promises the rest of the package.

:class:`ElasticEncoder` is what training (``model: allinone``) needs: a search
space and switching between its subsystems. :class:`RecipeEncoder` is what the
recipe tools (``bin/recipe_util``) ask the class registered under a YAML's
``encoder:`` name before any encoder is built: the space its ``encoder_conf``
defines and the conf of a subsystem's twin trained alone; an encoder name
whose class keeps it is an elastic encoder. :class:`ExtractableEncoder` adds
what extraction and size accounting need: the family spec, architecture
records and exact sizes (every family implements both). Test fakes are
checked against these with :func:`protocol_violations`, so a fake cannot
drift from the real encoder.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any, Protocol

from espnet_allinone.arch import SubnetArch
from espnet_allinone.elastic.family import FamilySpec
from espnet_allinone.subsystem import SearchSpace, Subsystem


class ElasticEncoder(Protocol):
    """An ESPnet encoder holding a search space of subsystems."""

    space: SearchSpace

    @property
    def active_subsystem(self) -> Subsystem: ...

    def set_subsystem(self, sub: str | Subsystem) -> Subsystem: ...

    def use_subsystem(self, sub: str | Subsystem) -> AbstractContextManager[Subsystem]: ...

    def output_size(self) -> int: ...


class RecipeEncoder(Protocol):
    """An elastic encoder class asked from a training YAML alone (no model is built)."""

    @classmethod
    def search_space(cls, encoder_conf: Mapping[str, Any]) -> SearchSpace:
        """The space ``encoder_conf`` defines (the encoder's defaults filled in), exactly
        the one an encoder built from it holds; SubsystemError when it defines none."""
        ...

    @classmethod
    def alone_conf(cls, encoder_conf: Mapping[str, Any], sub: Subsystem) -> dict[str, Any]:
        """The ``encoder_conf`` of ``sub``'s twin trained alone (the baselines stage)."""
        ...


class ExtractableEncoder(ElasticEncoder, RecipeEncoder, Protocol):
    """An elastic encoder whose subsystems resolve to architecture records."""

    family: FamilySpec

    def resolve(self, sub: str | Subsystem) -> SubnetArch: ...

    def check_arch(self, arch: SubnetArch) -> None: ...

    def apply_arch(self, arch: SubnetArch) -> None: ...

    def use_arch(self, arch: SubnetArch) -> AbstractContextManager[SubnetArch]: ...

    def num_params(self, sub: str | Subsystem | SubnetArch | None = None) -> int: ...

    def storage_bytes(self, sub: str | Subsystem | SubnetArch | None = None) -> int: ...

    def extracted_encoder(self, arch: SubnetArch, plugin_free: bool,
                          source_conf: Mapping[str, Any]) -> tuple[str, dict, bool, bool]: ...


def protocol_violations(cls: type, protocol: type) -> list[str]:
    """Members of ``protocol`` that ``cls`` lacks or whose parameters differ by name."""
    problems = []
    members = {n for base in protocol.__mro__ if base not in (object, Protocol)
               for n in vars(base) if not n.startswith("_")}
    annotations = {n for base in protocol.__mro__
                   for n in getattr(base, "__annotations__", {})}
    for name in sorted(members | annotations):
        if name in annotations and name not in members:
            continue  # attributes are set in __init__; checked on instances by the caller
        want = getattr(protocol, name)
        have = getattr(cls, name, None)
        if have is None:
            problems.append(f"{cls.__name__} lacks {name}")
            continue
        if isinstance(want, property) != isinstance(have, property):
            problems.append(f"{cls.__name__}.{name}: property mismatch")
        elif _is_classmethod(protocol, name) != _is_classmethod(cls, name):
            problems.append(f"{cls.__name__}.{name}: classmethod mismatch")
        elif callable(want) and not isinstance(want, property):
            w = list(inspect.signature(want).parameters)
            h = list(inspect.signature(have).parameters)
            if w != h:
                problems.append(f"{cls.__name__}.{name}{h} != protocol {w}")
    return problems


def _is_classmethod(cls: type, name: str) -> bool:
    return isinstance(inspect.getattr_static(cls, name), classmethod)
