"""Make the synthetic corpus (espeak-ng, optionally festival) as Kaldi-style data dirs.

    python -m espnet_allinone.bin.make_corpus --outdir data \
        --num_train 2000 --num_dev 100 --num_test 200 --seed 0
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from espnet_allinone.corpus import CorpusConfig, make_corpus
from espnet_allinone.errors import cli_errors


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--outdir", required=True, help="writes OUTDIR/{train,dev,test[,test_unseen]}")
    p.add_argument("--wavdir", default=None, help="where the wavs go (default OUTDIR/wavs)")
    p.add_argument("--num_train", type=int, default=2000)
    p.add_argument("--num_dev", type=int, default=100)
    p.add_argument("--num_test", type=int, default=200)
    p.add_argument("--num_test_unseen", type=int, default=0,
                   help="test_unseen: voices and rates held out of training (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num_speakers", type=int, default=0, help="0 = all 656 training voices")
    p.add_argument("--festival_share", type=float, default=0.0,
                   help="share of training utterances spoken by festival's voices (0..1; "
                        "dev and test sets stay espeak-ng)")
    p.add_argument("--no_noise", action="store_true", help="no additive white noise")
    p.add_argument("--no_reverb", action="store_true", help="no sox reverb")
    p.add_argument("--nj", type=int, default=4, help="parallel synthesis jobs")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    with cli_errors("make_corpus", ValueError) as outcome:
        config = CorpusConfig(
            num_train=args.num_train, num_dev=args.num_dev, num_test=args.num_test,
            num_test_unseen=args.num_test_unseen, seed=args.seed, num_speakers=args.num_speakers,
            noise=not args.no_noise, reverb=not args.no_reverb, festival_share=args.festival_share,
        )
        make_corpus(args.outdir, config, wavdir=args.wavdir, nj=args.nj)
    return outcome.status


if __name__ == "__main__":
    sys.exit(main())
