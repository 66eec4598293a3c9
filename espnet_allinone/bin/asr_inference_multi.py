"""``python -m espnet_allinone.bin.asr_inference_multi``: decode several models in one process.

Every ``python -m espnet2.bin.asr_inference`` spends ~19 s importing ESPnet
before it decodes anything; a recipe that decodes a dozen extracted
subsystems per split would pay that a dozen times. This runs ESPnet's own
``inference()`` once per model directory inside one process, with the same
options as ``asr_inference`` (``--config``, ``--key_file``, ``--ctc_weight`` ...)
except the model and output paths:

    python -m espnet_allinone.bin.asr_inference_multi \\
        --model_dirs exp/x/extracted/d4-w1-fp exp/x/extracted/d2-w0.5-int2 \\
        --output_dir exp/x/decode/logdir/output.1 \\
        --data_path_and_name_and_type dump/raw/test/wav.scp,speech,sound --key_file keys.1.scp

Each model's results go to ``<output_dir>/<model dir name>/`` (the
subsystem string, for extracted models), laid out as asr_inference writes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from espnet_allinone.registry import register
from espnet_allinone.report.sizes import model_files


def main(argv: list[str] | None = None) -> None:
    ours = argparse.ArgumentParser(add_help=False)
    ours.add_argument("--model_dirs", nargs="+", required=True, type=Path)
    ours.add_argument("--output_dir", required=True, type=Path)
    args, rest = ours.parse_known_args(argv)
    for flag in ("--asr_train_config", "--asr_model_file", "--model_tag"):
        if flag in rest:
            raise SystemExit(f"{flag} is set per model from --model_dirs; remove it")
    dirs = [d for d in args.model_dirs if not (d / "config.yaml").is_file()]
    if dirs:
        raise SystemExit(
            "not a model directory (no config.yaml): " + ", ".join(map(str, dirs))
            + "; extraction (allinone.sh stage 12) makes them"
        )
    names = [d.name for d in args.model_dirs]
    if len(set(names)) != len(names):
        raise SystemExit(f"--model_dirs names must differ (outputs go by name): {names}")

    register()
    from espnet2.bin.asr_inference import get_parser, inference

    parser = get_parser()
    for model_dir in args.model_dirs:
        print(f"decoding with {model_dir}", file=sys.stderr, flush=True)
        kwargs = vars(
            parser.parse_args(
                [
                    *rest,
                    "--asr_train_config", str(model_dir / "config.yaml"),
                    "--asr_model_file", str(model_files(model_dir)[1]),
                    "--output_dir", str(args.output_dir / model_dir.name),
                ]
            )
        )
        kwargs.pop("config", None)
        inference(**kwargs)


if __name__ == "__main__":
    main()
