"""Search the trained all-in-one model's mixed records for byte budgets.

    python -m espnet_allinone.bin.search --exp exp/asr_x --max_bytes 1MB --max_bytes 800kB

The uniform subsystems the recipe lists are a few points of what the model
holds: every block can run at any trained precision and width. This loads
``<exp>/config.yaml`` and the checkpoint the recipe extracts from (the first of
valid.loss.ave.pth, valid.acc.ave.pth, valid.loss.best.pth, valid.acc.best.pth;
or ``--asr_model_file``), scores records on held-out data (``--dev_data``, a
Kaldi data dir with wav.scp and text; default the config's valid data) by
greedy CTC CER, each with BatchNorm statistics calibrated for it
(``--calibration_data``, default the config's train data; ``--calibration_utts
0``: training's statistics), and searches greedily (``search/greedy.py``: a
per-block sensitivity pass, then a descent from the largest record taking the
cheapest error-per-byte step until every budget is met). It prints the
Pareto front of exact bytes against dev CER, extracts each budget's pick into
``<exp>/searched/searched-<bytes>-<hash>/`` (an ordinary extracted directory;
the record in ``extract_info.yaml``) and writes ``<exp>/searched/search.json``.
Budgets: a number with a unit B, kB, MB, GB, KiB, MiB, GiB (case-insensitive;
bytes when none). ``bin.select`` then picks from these rows too, and the
report's plot draws the searched front.

Decoding and scoring the searched models on a test set: what recipe stages
13-14 run for ``<exp>/extracted/<subsystem>`` (``decode_models``, ``bin.score``),
here for ``<exp>/searched/<name>``, into a decode dir of their own (``bin.report``
without ``--subsystems`` reads every dir of ``<exp>/decode``; run in the recipe
directory, ``--config`` the recipe's ``--inference_config``)::

    names=$(python -c "import json; print(' '.join(c['name'] for c in \\
        json.load(open('exp/x/searched/search.json'))['chosen']))")
    python -m espnet_allinone.bin.asr_inference_multi --batch_size 1 --ngpu 0 \\
        --data_path_and_name_and_type dump/raw/test/wav.scp,speech,sound \\
        --output_dir exp/x/decode_searched/logdir --config conf/decode_ctc.yaml \\
        --model_dirs $(for n in $names; do echo exp/x/searched/$n; done)
    for n in $names; do
        mkdir -p exp/x/decode_searched/$n/test
        sort exp/x/decode_searched/logdir/$n/1best_recog/text \\
            > exp/x/decode_searched/$n/test/text
        python -m espnet_allinone.bin.score --ref_dir dump/raw/test \\
            --hyp_text exp/x/decode_searched/$n/test/text --outdir exp/x/decode_searched/$n/test
    done
    python -m espnet_allinone.bin.search --exp exp/x --collect exp/x/decode_searched \\
        --test_set test --float_reference exp/x/decode/d12-w1-fp/test

``--collect DIR`` reads each searched model's ``DIR/<name>/<test_set>/scores.json``
into ``search.json`` (test WER and CER: what ``bin.select`` ranks) and, with
``--float_reference`` (the float full model's scored dir from stage 14), runs the
report's significance tests (``sc_stats``: MAPSSWE, sign test) of each searched
model against it; no search is run.

Exit status: 0 done; 2 bad arguments or a missing input (named; nothing
written); 3 a budget below the smallest record the model can make (its size
named).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from espnet_allinone.deploy.select import SelectError, parse_budget
from espnet_allinone.errors import cli_errors
from espnet_allinone.export.calibration import DEFAULT_CALIBRATION_UTTS
from espnet_allinone.search.evaluate import DEFAULT_DEV_UTTS
from espnet_allinone.search.experiment import format_front, locate, run_search
from espnet_allinone.search.greedy import SearchError
from espnet_allinone.search.scores import collect

EXIT_OK, EXIT_USAGE, EXIT_NO_FIT = 0, 2, 3
def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m espnet_allinone.bin.search", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp", type=Path, required=True, help="experiment dir (exp/<tag>)")
    p.add_argument("--max_bytes", action="append", default=[],
                   help="a byte budget, e.g. 1MB; repeat for several")
    p.add_argument("--asr_model_file", type=Path, default=None,
                   help="checkpoint; default as the recipe picks it")
    p.add_argument("--dev_data", type=Path, default=None,
                   help="held-out Kaldi data dir (wav.scp, text); default: the config's valid data")
    p.add_argument("--dev_utts", type=int, default=DEFAULT_DEV_UTTS,
                   help="dev utterances scored (a fixed draw)")
    p.add_argument("--calibration_data", type=Path, default=None,
                   help="data dir for BatchNorm statistics; default: the config's train data")
    p.add_argument("--calibration_utts", type=int, default=DEFAULT_CALIBRATION_UTTS,
                   help="utterances per record's statistics; 0 keeps training's")
    p.add_argument("--per_module", action="store_true",
                   help="lower attention, feed-forward and conv widths separately")
    p.add_argument("--no_uniform", action="store_true",
                   help="do not also score the uniform subsystems")
    p.add_argument("--batch_size", type=int, default=1,
                   help="dev utterances per forward (1: exact, as decoding; more: padding "
                        "changes the scores)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a searched directory holding a different model")
    p.add_argument("--collect", type=Path, default=None, metavar="DECODE_DIR",
                   help="instead of searching: read the searched models' test scores")
    p.add_argument("--test_set", default="test", help="with --collect: the scored test set")
    p.add_argument("--float_reference", type=Path, default=None,
                   help="with --collect: the float full model's scored test dir (score_wer/)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    if args.collect is not None:
        with cli_errors("search", OSError, status=EXIT_USAGE) as outcome:
            print(collect(args.exp, args.collect, args.test_set, args.float_reference))
        return outcome.status or EXIT_OK

    with cli_errors("search", status=EXIT_USAGE) as outcome:
        if not args.max_bytes:
            raise SelectError("give at least one budget: --max_bytes 1MB [--max_bytes 800kB]")
        budgets = [(text, int(parse_budget("max_bytes", text))) for text in args.max_bytes]
        for option in ("dev_utts", "batch_size"):
            if getattr(args, option) < 1:
                raise SelectError(f"--{option} must be >= 1, got {getattr(args, option)}")
        if args.calibration_utts < 0:
            raise SelectError(f"--calibration_utts must be >= 0, got {args.calibration_utts}")
        inputs = locate(args.exp, args.asr_model_file, args.dev_data, args.calibration_data,
                        args.calibration_utts)
    if outcome.status:
        return outcome.status
    with cli_errors("search", ValueError, OSError, RuntimeError, status=EXIT_USAGE) as outcome:
        try:
            summary = run_search(inputs, budgets, dev_utts=args.dev_utts,
                                 calibration_utts=args.calibration_utts,
                                 per_module=args.per_module, uniform=not args.no_uniform,
                                 batch_size=args.batch_size, overwrite=args.overwrite,
                                 log=lambda m: print(m, file=sys.stderr))
        except SearchError as e:  # no record fits a budget: not a usage error
            print(f"search: {e}", file=sys.stderr)
            return EXIT_NO_FIT
    if outcome.status:
        return outcome.status
    print(format_front(summary))
    print(f"(Pareto front of exact bytes against dev CER; {summary['evaluations']} records "
          f"scored; {summary['seconds']:.1f} s, {summary['load_seconds']:.1f} s of it loading)")
    for b in summary["budgets"]:
        print(f"--max_bytes {b['budget']}: {b['chosen']}")
    print(f"written: {args.exp / 'searched'}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
