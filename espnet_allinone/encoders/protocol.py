"""What an elastic encoder promises the rest of the package.

:class:`ElasticEncoder` is what training (``model: allinone``) needs: a search
space and switching between its subsystems. :class:`RecipeEncoder` is what the
recipe tools (``bin/recipe_util``) ask the class registered under a YAML's
``encoder:`` name before any encoder is built: the space its ``encoder_conf``
defines and the conf of a subsystem's twin trained alone; an encoder name
whose class keeps it is an elastic encoder. :class:`ExtractableEncoder` adds
what extraction and size accounting need: the family spec, architecture
records and exact sizes, and everything family-specific that generic code
(extraction, search, training, export) asks instead of probing attributes
(every family implements it, most of it through the shared mixin,
``encoders/switching.py``). :class:`PackedEncoder` is what exporting an
extracted model asks of an encoder keeping low-bit weights packed. Test fakes
are checked against these with :func:`protocol_violations`, so a fake cannot
drift from the real encoder; an encoder entering the model or the extractor
is checked with :func:`encoder_violations`, and errors name the elastic
encoders the registry holds (:func:`elastic_encoder_names`,
:func:`registered_encoders`).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any, ClassVar, Protocol

from torch import Tensor, nn

from espnet_allinone.arch import SubnetArch
from espnet_allinone.elastic.family import FamilySpec
from espnet_allinone.elastic.size import SizeReport
from espnet_allinone.quant.config import QuantConfig
from espnet_allinone.quant.parts import PartPrecisions
from espnet_allinone.registry import ENTRIES, load_class
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
    """An elastic encoder whose subsystems resolve to architecture records, and that
    answers what generic code needs to know of its family."""

    family: FamilySpec
    quant_config: QuantConfig
    part_precisions: PartPrecisions
    output_layers: dict[str, nn.Module]
    decoder_layers: dict[str, nn.Module]
    stock_encoder: ClassVar[str]
    """ESPnet's own encoder an extracted subsystem becomes where its shapes allow."""

    @property
    def blocks(self) -> list[nn.Module]:
        """Every physical block (active or not)."""
        ...

    @property
    def active_arch(self) -> SubnetArch: ...

    def resolve(self, sub: str | Subsystem) -> SubnetArch: ...

    def check_arch(self, arch: SubnetArch) -> None: ...

    def apply_arch(self, arch: SubnetArch) -> None: ...

    def use_arch(self, arch: SubnetArch) -> AbstractContextManager[SubnetArch]: ...

    def num_params(self, sub: str | Subsystem | SubnetArch | None = None) -> int: ...

    def storage_bytes(self, sub: str | Subsystem | SubnetArch | None = None) -> int: ...

    def output_layers_size(self, sub: str | Subsystem | SubnetArch | None = None
                           ) -> SizeReport: ...

    def attach_output_layers(self, layers: Mapping[str, nn.Module]) -> None:
        """Switch the model's output layers' bits with every record."""
        ...

    def attach_decoder_layers(self, layers: Mapping[str, nn.Module]) -> None:
        """Switch the attention decoder's block Linears' bits with every record."""
        ...

    def extracted_encoder(self, arch: SubnetArch, plugin_free: bool,
                          source_conf: Mapping[str, Any]) -> tuple[str, dict, bool, bool]: ...

    def extracted_state(self, sliced_state: dict[str, Tensor], arch: SubnetArch, stock: bool,
                        target: nn.Module) -> dict[str, Tensor]:
        """The sliced tensors keyed for the extracted encoder ``target``."""
        ...

    def probe_input(self, model: nn.Module, input_size: int | None,
                    seed: int = 0) -> tuple[Tensor, Tensor]:
        """A fixed random input of ``model`` (the one holding this encoder), long enough
        for the encoder: extraction checks the extracted model on it."""
        ...

    def shared_front(self) -> nn.Module | None:
        """The front module whose output every path at one front precision shares
        (training runs it once per step and precision); None: none to share."""
        ...


class PackedEncoder(Protocol):
    """An extracted model's encoder keeping low-bit weights bit-packed in its state_dict."""

    def float_state_dict(self) -> AbstractContextManager[None]:
        """``state_dict`` shows the dequantized float weights inside (tracing, ONNX)."""
        ...


def protocol_violations(cls: type, protocol: type) -> list[str]:
    """Members of ``protocol`` that ``cls`` lacks or whose parameters differ by name
    (class-level ones, ``ClassVar`` attributes included)."""
    problems = []
    members = {n for base in protocol.__mro__ if base not in (object, Protocol)
               for n in vars(base) if not n.startswith("_")}
    annotations = _annotations(protocol)
    for name in sorted(members | set(annotations)):
        if name in annotations and name not in members:
            if _is_classvar(annotations[name]) and not hasattr(cls, name):
                problems.append(f"{cls.__name__} lacks {name}")
            continue  # other attributes are set in __init__: encoder_violations
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


def encoder_violations(encoder: object, protocol: type) -> list[str]:
    """:func:`protocol_violations` of ``encoder``'s class, plus the attributes the
    protocol declares that the built ``encoder`` lacks."""
    problems = protocol_violations(type(encoder), protocol)
    for name, annotation in sorted(_annotations(protocol).items()):
        if not _is_classvar(annotation) and not hasattr(encoder, name):
            problems.append(f"{type(encoder).__name__} lacks {name}")
    return problems


def registered_encoders(protocol: type) -> dict[str, type]:
    """``encoder:`` name -> class of each encoder registry.ENTRIES adds whose class keeps
    ``protocol``, in their order (the classes are imported)."""
    classes = {name: load_class(target) for table, name, target in ENTRIES
               if table == "encoder_choices"}
    return {name: cls for name, cls in classes.items() if not protocol_violations(cls, protocol)}


def elastic_encoder_names() -> list[str]:
    """The registered ``encoder:`` names whose class keeps RecipeEncoder (the elastic
    encoders); for errors that say what to use instead."""
    return list(registered_encoders(RecipeEncoder))


def _annotations(protocol: type) -> dict[str, Any]:
    return {n: a for base in reversed(protocol.__mro__)
            for n, a in getattr(base, "__annotations__", {}).items()}


def _is_classvar(annotation: Any) -> bool:
    return str(annotation).startswith(("ClassVar", "typing.ClassVar"))


def _is_classmethod(cls: type, name: str) -> bool:
    return isinstance(inspect.getattr_static(cls, name), classmethod)
