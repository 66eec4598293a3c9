"""Extract subsystems of an all-in-one model into standalone ESPnet models.

    python -m espnet_allinone.bin.extract \\
        --asr_train_config exp/asr_allinone/config.yaml \\
        --asr_model_file exp/asr_allinone/valid.acc.ave.pth \\
        --subsystems all --outdir exp/asr_allinone/extracted

writes ``<outdir>/<subsystem>/{config.yaml, model.pth, extract_info.yaml,
feats_stats.npz, bpe.model}`` for each subsystem and prints bytes on disk
next to the exact figure and the float full model. Each directory loads with
ESPnet's ``Speech2Text(asr_train_config=..., asr_model_file=...)``.

With ``--calibration_data dump/raw/train`` each subsystem's BatchNorm statistics
are re-estimated for it on ``--calibration_utts`` of those utterances before it
is cut out (the statistics training left are a mixture of every path's).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from espnet_allinone.errors import cli_errors
from espnet_allinone.export.calibration import DEFAULT_CALIBRATION_UTTS, CalibrationData
from espnet_allinone.export.extract import extract_all


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m espnet_allinone.bin.extract",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--asr_train_config", type=Path, required=True,
                   help="config.yaml of the all-in-one experiment")
    p.add_argument("--asr_model_file", type=Path, required=True,
                   help="its weights, e.g. valid.acc.ave.pth")
    p.add_argument("--subsystems", nargs="+", default=["all"],
                   help='"all", or subsystem strings such as d6-w0.5-int4 '
                        "(space or comma separated)")
    p.add_argument("--outdir", type=Path, required=True,
                   help="one directory per subsystem is written here")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a directory that holds a different model")
    p.add_argument("--plugin_free", action="store_true",
                   help="write low-bit subsystems dequantized as a stock conformer "
                        "(float-sized; only when heads and conv channels are full width)")
    p.add_argument("--no_verify", action="store_true",
                   help="skip comparing each extracted model with the all-in-one model")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.add_argument("--calibration_data", type=Path, default=None,
                   help="Kaldi-style data dir (wav.scp) whose utterances re-estimate each "
                        "subsystem's BatchNorm statistics, e.g. dump/raw/train "
                        "(default: keep the statistics training left)")
    p.add_argument("--calibration_utts", type=int, default=DEFAULT_CALIBRATION_UTTS,
                   help="utterances drawn from --calibration_data (all when it has fewer)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    subsystems = " ".join(args.subsystems)
    with cli_errors("extract", FileNotFoundError) as outcome:
        calibration = None if args.calibration_data is None else CalibrationData.from_data_dir(
            args.calibration_data, args.calibration_utts)
        extract_all(
            args.asr_train_config,
            args.asr_model_file,
            "all" if subsystems.strip() == "all" else subsystems,
            args.outdir,
            plugin_free=args.plugin_free,
            overwrite=args.overwrite,
            verify=not args.no_verify,
            progress=not args.no_progress,
            calibration=calibration,
        )
    return outcome.status


if __name__ == "__main__":
    sys.exit(main())
