"""``python -m espnet_allinone.bin.asr_inference``: ESPnet's asr_inference, registration first.

Same command line as ``python -m espnet2.bin.asr_inference``.
"""

from espnet_allinone.registry import register

register()

from espnet2.bin.asr_inference import get_parser, main

__all__ = ["get_parser", "main"]

if __name__ == "__main__":
    main()
