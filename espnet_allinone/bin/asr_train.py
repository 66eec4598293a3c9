"""``python -m espnet_allinone.bin.asr_train``: ESPnet's asr_train, registration first.

Same command line as ``python -m espnet2.bin.asr_train``; registering at
module level (not under ``__main__``) also serves spawned DDP workers, which
re-import this module.
"""

from espnet_allinone.registry import register

register()

from espnet2.bin.asr_train import get_parser, main

__all__ = ["get_parser", "main"]

if __name__ == "__main__":
    main()
