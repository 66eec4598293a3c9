"""``python -m espnet_allinone.bin.asr_train``: ESPnet's asr_train, registration first.

Same command line as ``python -m espnet2.bin.asr_train``; registering at
module level (not under ``__main__``) also serves spawned DDP workers, which
re-import this module. ESPnet reads ``--init_param`` files with
``torch.load(weights_only=False)``, so they are read weights-only here first:
a pickle that would run code is refused before ESPnet unpickles it.
"""

import sys

from espnet_allinone.errors import cli_errors
from espnet_allinone.export.model_io import load_checkpoint
from espnet_allinone.registry import register

register()

from espnet2.bin.asr_train import get_parser, main

__all__ = ["check_init_params", "get_parser", "main"]


def check_init_params(argv: list[str] | None = None) -> None:
    """Weights-only read of each ``--init_param`` file (``path[:src:dst:exclude]``)."""
    args, _ = get_parser().parse_known_args(argv)
    for spec in getattr(args, "init_param", None) or []:
        load_checkpoint(spec.split(":", 1)[0])


if __name__ == "__main__":
    with cli_errors("asr_train") as outcome:  # a bad --init_param: one line naming the file
        check_init_params()
    if outcome.status:
        sys.exit(outcome.status)
    main()
