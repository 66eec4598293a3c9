"""Kaldi data dirs from a local copy of a real corpus (the recipes' local/data.sh).

    python -m espnet_allinone.bin.prepare_corpus librispeech --root $LIBRISPEECH \
        --part train-clean-100 --outdir data/train_clean_100
    python -m espnet_allinone.bin.prepare_corpus swbd --root $SWBD --outdir data/train_all
    python -m espnet_allinone.bin.prepare_corpus eval2000 --root $EVAL2000 --outdir data/eval2000
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from espnet_allinone.corpus import librispeech, swbd
from espnet_allinone.corpus.datadir import DataDirError
from espnet_allinone.errors import cli_errors


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("corpus", choices=["librispeech", "swbd", "eval2000"])
    p.add_argument("--root", type=Path, required=True, help="the corpus path from db.sh")
    p.add_argument("--part", default=None, help="LibriSpeech part, e.g. train-clean-100")
    p.add_argument("--outdir", type=Path, required=True)
    args = p.parse_args(argv)
    with cli_errors(f"prepare_corpus {args.corpus}") as outcome:
        if args.corpus == "librispeech":
            if not args.part:
                raise DataDirError("librispeech needs --part; valid: "
                                   + ", ".join(librispeech.PARTS))
            n = librispeech.prepare(args.root, args.part, args.outdir)
        elif args.corpus == "swbd":
            n = swbd.prepare_swbd(args.root, args.outdir)
        else:
            n = swbd.prepare_eval2000(args.root, args.outdir)
    if outcome.status:
        return outcome.status
    print(f"{args.outdir}: {n} utterances")
    return 0


if __name__ == "__main__":
    sys.exit(main())
