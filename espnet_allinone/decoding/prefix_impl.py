"""Which CTC prefix scorer ESPnet's beam search uses: ours (``fast``, default) or ESPnet's.

The implementation is chosen on a built ``Speech2Text`` by swapping the class
of its ``ctc`` scorer (the object the beam search already holds as a full or
partial scorer), so nothing else about the search changes; ``espnet`` keeps
ESPnet's ``CTCPrefixScorer`` for comparison. ESPnet's ``inference()`` builds
its ``Speech2Text`` itself, by the module-level name, so
:func:`espnet_inference_with` lends that name a subclass for the call.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from espnet_allinone.errors import AllInOneError

__all__ = ["CTC_PREFIX_IMPLS", "DEFAULT_CTC_PREFIX_IMPL", "CtcPrefixImplError",
           "add_ctc_prefix_impl_argument", "check_ctc_prefix_impl", "espnet_inference_with",
           "use_ctc_prefix_impl"]

CTC_PREFIX_IMPLS = ("fast", "espnet")
DEFAULT_CTC_PREFIX_IMPL = "fast"


class CtcPrefixImplError(AllInOneError, ValueError):
    """An unknown ``--ctc_prefix_impl``; the message names it and the valid ones."""


def check_ctc_prefix_impl(impl: str) -> str:
    """``impl`` if it is one of :data:`CTC_PREFIX_IMPLS`, else :class:`CtcPrefixImplError`."""
    if impl not in CTC_PREFIX_IMPLS:
        raise CtcPrefixImplError(
            f"--ctc_prefix_impl {impl!r} is not one of {', '.join(CTC_PREFIX_IMPLS)}")
    return impl


def add_ctc_prefix_impl_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--ctc_prefix_impl`` option (checked by :func:`check_ctc_prefix_impl`, not argparse,
    so a bad value is the tools' one error line)."""
    parser.add_argument(
        "--ctc_prefix_impl", default=DEFAULT_CTC_PREFIX_IMPL,
        help=f"CTC prefix search scorer: {' or '.join(CTC_PREFIX_IMPLS)} (ESPnet's per-frame "
             f"loop; same hypotheses, slower); default {DEFAULT_CTC_PREFIX_IMPL}")


def use_ctc_prefix_impl(speech2text: Any, impl: str) -> bool:
    """Make ``speech2text``'s beam search score CTC prefixes with ``impl``; True if it has a
    CTC prefix scorer (models without CTC, transducers and time-synchronous search have none)."""
    from espnet.nets.scorers.ctc import CTCPrefixScorer

    from espnet_allinone.decoding.ctc_prefix import FastCTCPrefixScorer

    check_ctc_prefix_impl(impl)
    beam_search = getattr(speech2text, "beam_search", None)
    scorer = getattr(beam_search, "scorers", {}).get("ctc")
    if not isinstance(scorer, CTCPrefixScorer):
        return False
    scorer.__class__ = FastCTCPrefixScorer if impl == "fast" else CTCPrefixScorer
    return True


@contextmanager
def espnet_inference_with(impl: str) -> Iterator[None]:
    """Within the block, ``espnet2.bin.asr_inference.inference()`` decodes with ``impl``.

    The module's ``Speech2Text`` name (which ``inference`` and ``from_pretrained``
    look up when they build one) is a subclass that applies
    :func:`use_ctc_prefix_impl` after ESPnet's constructor; restored on exit.
    """
    from espnet2.bin import asr_inference

    check_ctc_prefix_impl(impl)
    original = asr_inference.Speech2Text

    class Speech2TextWithImpl(original):  # type: ignore[misc, valid-type]
        """ESPnet's Speech2Text, its CTC prefix scorer set to ``impl``."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            use_ctc_prefix_impl(self, impl)

    asr_inference.Speech2Text = Speech2TextWithImpl
    try:
        yield
    finally:
        asr_inference.Speech2Text = original
