"""Runs of one recipe side by side (an ablation), each tested against the first.

    python -m espnet_allinone.bin.compare_runs --test_set test --other_test_set test_unseen \
        --run default=exp/asr_train_allinone --run distill=exp/asr_abl_distill \
        --out exp/ablation.md

Each ``--run NAME=EXP`` needs the report stage's ``results.json`` (run the
report with the same ``--baselines`` for every run, so the alone ratios share
their twins) and the scoring stage's sclite inputs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from espnet_allinone.errors import cli_errors
from espnet_allinone.report.ablation import (
    common_subsystems,
    load_run,
    to_markdown,
    versus_first,
)


def _run_arg(text: str) -> tuple[str, Path]:
    name, sep, exp = text.partition("=")
    if not sep or not name or not exp:
        raise argparse.ArgumentTypeError(f"--run {text!r}: expected NAME=EXP_DIR")
    return name, Path(exp)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run", type=_run_arg, action="append", required=True,
                   help="NAME=EXP_DIR; the first run is the reference; at least two")
    p.add_argument("--test_set", default="test")
    p.add_argument("--other_test_set", default=None,
                   help="a further test set whose WER of the largest subsystem is summarised")
    p.add_argument("--decode_tag", default="decode")
    p.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = p.parse_args(argv)
    names = [name for name, _ in args.run]
    if len(args.run) < 2 or len(set(names)) != len(names):
        p.error(f"--run needs at least two runs with distinct names, got {names}")
    with cli_errors("compare_runs") as outcome:
        runs = [load_run(name, exp) for name, exp in args.run]
        subs = common_subsystems(runs)
        workdir = (args.out.parent if args.out else runs[0].exp) / "significance_runs"
        tests = versus_first(runs, subs, args.test_set, args.decode_tag, workdir)
    if outcome.status:
        return outcome.status
    table = to_markdown(runs, subs, tests, args.other_test_set)
    if args.out:
        args.out.write_text(table)
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
