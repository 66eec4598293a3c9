"""``python -m espnet_allinone.bin.asr_inference``: ESPnet's asr_inference, registration first.

Same command line as ``python -m espnet2.bin.asr_inference``, plus
``--ctc_prefix_impl fast|espnet`` (default fast): CTC prefix search scored by
``espnet_allinone.decoding.ctc_prefix`` (same hypotheses, no per-frame Python
loop) or by ESPnet's own scorer, for comparison.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from espnet_allinone.registry import register

register()

from espnet2.bin.asr_inference import get_parser as espnet_parser
from espnet2.bin.asr_inference import inference

from espnet_allinone.decoding.prefix_impl import (
    add_ctc_prefix_impl_argument,
    check_ctc_prefix_impl,
    espnet_inference_with,
)
from espnet_allinone.errors import cli_errors

__all__ = ["get_parser", "main"]


def get_parser():
    """ESPnet's asr_inference parser with ``--ctc_prefix_impl``."""
    parser = espnet_parser()
    add_ctc_prefix_impl_argument(parser)
    return parser


def main(cmd: Sequence[str] | None = None) -> int:
    """ESPnet's ``main`` with the CTC prefix scorer chosen by ``--ctc_prefix_impl``."""
    from espnet.utils.cli_utils import get_commandline_args

    print(get_commandline_args(), file=sys.stderr)
    kwargs = vars(get_parser().parse_args(cmd))
    kwargs.pop("config", None)
    impl = kwargs.pop("ctc_prefix_impl")
    with cli_errors("asr_inference") as outcome:
        check_ctc_prefix_impl(impl)
    if outcome.status:
        return outcome.status
    with espnet_inference_with(impl):
        inference(**kwargs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
