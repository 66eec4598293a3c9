"""Encoder constructor options: ESPnet's ConformerEncoder keywords plus our own.

ESPnet prints an encoder's options (``--print_config``) and checks YAML keys
from the constructor's signature, so an encoder that passes the stock
options through ``**stock_options`` publishes the merged signature here
instead of repeating ConformerEncoder's ~30 keywords by hand.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping
from typing import Any


def stock_parameters(stock_class: type) -> list[inspect.Parameter]:
    """Keyword parameters of ``stock_class.__init__`` (self and input_size excluded)."""
    params = inspect.signature(stock_class.__init__).parameters.values()
    return [p for p in params if p.name not in ("self", "input_size")
            and p.kind is not inspect.Parameter.VAR_KEYWORD]


def stock_defaults(stock_class: type) -> dict[str, Any]:
    return {p.name: p.default for p in stock_parameters(stock_class)}


def publish_signature(cls: type, stock: type | Mapping[str, Any]) -> type:
    """Give ``cls.__init__`` the signature ``(self, input_size, <stock options>, <own>)``;
    ``stock`` is the class whose options pass through ``**``, or their defaults."""
    own = inspect.signature(cls.__init__).parameters.values()
    head = [p for p in own if p.name in ("self", "input_size")]
    extra = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own
             if p.kind is inspect.Parameter.KEYWORD_ONLY]
    keyword = inspect.Parameter.KEYWORD_ONLY
    passed = (stock_parameters(stock) if isinstance(stock, type) else
              [inspect.Parameter(k, keyword, default=v) for k, v in stock.items()])
    stock = [p.replace(kind=keyword) for p in passed]
    cls.__init__.__signature__ = inspect.Signature([*head, *stock, *extra])
    return cls


class RejectUnknownOptions:
    """Fail on an unknown ``encoder_conf`` key with the valid keys (before building)."""

    def __new__(cls, *args: Any, **kwargs: Any):
        valid = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        unknown = [k for k in kwargs if k not in valid]
        if unknown:
            hints = {k: difflib.get_close_matches(k, valid, n=1) for k in unknown}
            hint = "".join(f" ('{k}': did you mean '{m[0]}'?)" for k, m in hints.items() if m)
            raise TypeError(
                f"unknown encoder_conf key(s) {', '.join(map(repr, unknown))} for "
                f"{cls.__name__}{hint}; valid keys: {', '.join(valid)}"
            )
        return super().__new__(cls)
