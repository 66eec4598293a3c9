"""Data-dir tools for the recipes (the ESPnet wheel has no Kaldi utils/).

    python -m espnet_allinone.bin.datadir validate DIR [--check_audio]
    python -m espnet_allinone.bin.datadir format SRC DST --fs 16000 [--nj 4]
    python -m espnet_allinone.bin.datadir filter SRC DST --fs 16000 --min 0.1 --max 20
    python -m espnet_allinone.bin.datadir split FILE OUT1 OUT2 ...
    python -m espnet_allinone.bin.datadir combine DST SRC1 SRC2 ...
    python -m espnet_allinone.bin.datadir subset SRC DST (--first N | --skip_first N)
    python -m espnet_allinone.bin.datadir speed_perturb SRC DST --factors "0.9 1.0 1.1" \
        --audio_dir DIR [--nj 4]
    python -m espnet_allinone.bin.datadir speed_factors --factors "0.9 1.0 1.1"  (check only)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from espnet_allinone.corpus.datadir import (
    combine_datadirs,
    read_table,
    split_scp,
    subset_datadir,
    validate_datadir,
)
from espnet_allinone.corpus.dump import filter_datadir, format_datadir
from espnet_allinone.corpus.speed_perturb import parse_factors, perturb_datadir
from espnet_allinone.errors import cli_errors


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    v = sub.add_parser("validate", help="check a data dir's files agree")
    v.add_argument("dir", type=Path)
    v.add_argument("--check_audio", action="store_true")
    f = sub.add_parser("format", help="copy a data dir with audio ESPnet reads directly")
    f.add_argument("src", type=Path)
    f.add_argument("dst", type=Path)
    f.add_argument("--fs", type=int, required=True)
    f.add_argument("--nj", type=int, default=4)
    fl = sub.add_parser("filter", help="drop too short/long utterances and empty texts")
    fl.add_argument("src", type=Path)
    fl.add_argument("dst", type=Path)
    fl.add_argument("--fs", type=int, required=True)
    fl.add_argument("--min", type=float, default=0.1, help="seconds")
    fl.add_argument("--max", type=float, default=20.0, help="seconds")
    fl.add_argument("--max_chars", type=int, default=0, help="0: no limit")
    s = sub.add_parser("split", help="split a key-value file into N parts")
    s.add_argument("file", type=Path)
    s.add_argument("outputs", type=Path, nargs="+")
    c = sub.add_parser("combine", help="union of data dirs")
    c.add_argument("dst", type=Path)
    c.add_argument("srcs", type=Path, nargs="+")
    su = sub.add_parser("subset", help="the first N utterances (sorted), or all but them")
    su.add_argument("src", type=Path)
    su.add_argument("dst", type=Path)
    g = su.add_mutually_exclusive_group(required=True)
    g.add_argument("--first", type=int)
    g.add_argument("--skip_first", type=int)
    sp = sub.add_parser("speed_perturb", help="one copy per speed factor, Kaldi's sp<f>- ids "
                        "(asr.sh stage 2)")
    sp.add_argument("src", type=Path)
    sp.add_argument("dst", type=Path)
    sp.add_argument("--factors", required=True, help='e.g. "0.9 1.0 1.1"')
    sp.add_argument("--audio_dir", type=Path, required=True,
                    help="the perturbed audio goes to AUDIO_DIR/sp<f>/")
    sp.add_argument("--nj", type=int, default=4)
    sf = sub.add_parser("speed_factors", help="check speed perturbation factors; print them")
    sf.add_argument("--factors", required=True, help='e.g. "0.9 1.0 1.1"')
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    with cli_errors(f"datadir {args.command}") as outcome:
        if args.command == "validate":
            print(f"{args.dir}: {validate_datadir(args.dir, args.check_audio)} utterances")
        elif args.command == "format":
            n = format_datadir(args.src, args.dst, args.fs, args.nj)
            print(f"{args.src} -> {args.dst}: {n} utterances")
        elif args.command == "filter":
            kept, total = filter_datadir(args.src, args.dst, args.fs, args.min, args.max,
                                         args.max_chars)
            print(f"{args.src} -> {args.dst}: kept {kept} of {total} utterances")
        elif args.command == "combine":
            print(f"{args.dst}: {combine_datadirs(list(args.srcs), args.dst)} utterances")
        elif args.command == "subset":
            utts = sorted(read_table(args.src / "text"))
            keep = utts[: args.first] if args.first is not None else utts[args.skip_first:]
            print(f"{args.dst}: {subset_datadir(args.src, args.dst, keep)} utterances")
        elif args.command == "speed_perturb":
            n = perturb_datadir(args.src, args.dst, args.factors, args.audio_dir, args.nj)
            print(f"{args.src} -> {args.dst}: {n} utterances (speed factors {args.factors})")
        elif args.command == "speed_factors":
            print(" ".join(word for word, _ in parse_factors(args.factors)))
        else:
            split_scp(args.file, list(args.outputs))
    return outcome.status


if __name__ == "__main__":
    sys.exit(main())
