"""Zip extracted subsystems in the ESPnet model-zoo format (ESPnet's ``pack``), one zip each.

    python -m espnet_allinone.bin.pack --extracted_dir exp/asr_allinone/extracted \\
        --outdir exp/asr_allinone/packed [--subsystems all] [--results results.json]

writes ``<outdir>/<subsystem>.zip`` with ESPnet's ``espnet2.bin.pack asr``
(``meta.yaml`` + config, weights, stats, BPE model) and a README.md model
card (subsystem, size, compression, WER from ``--results`` when given).
``Speech2Text.from_pretrained("<outdir>/<subsystem>.zip")`` loads each.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from espnet_allinone.errors import cli_errors
from espnet_allinone.export.extracted_dir import INFO_NAME, model_files
from espnet_allinone.export.model_io import load_checkpoint, load_config, load_yaml
from espnet_allinone.export.zoo import extracted_dirs, pack_extracted, read_results
from espnet_allinone.subsystem import Subsystem


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m espnet_allinone.bin.pack",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--extracted_dir", type=Path, required=True,
                   help="--outdir of espnet_allinone.bin.extract")
    p.add_argument("--outdir", type=Path, required=True, help="where the zips go")
    p.add_argument("--subsystems", nargs="+", default=["all"],
                   help='"all" or subsystem strings (e.g. d6-w0.5-int4)')
    p.add_argument("--results", type=Path, default=None,
                   help="JSON/YAML with the WER per subsystem for the model cards")
    p.add_argument("--repo_id_template", default=None,
                   help="Hub repo id shown in the model card, '{subsystem}' is replaced")
    return p


def check_inputs(dirs: Sequence[Path], results: Path | None) -> None:
    """Read every file packing copies before writing any zip (a bad one is named at once)."""
    if results is not None:
        load_yaml(results)
    for directory in dirs:
        config, model = model_files(directory)
        load_config(directory / INFO_NAME, required=("subsystem",))
        load_config(config)
        load_checkpoint(model)


def main(argv: Sequence[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    with cli_errors("pack", FileNotFoundError) as outcome:
        dirs = extracted_dirs(args.extracted_dir, " ".join(args.subsystems))
        check_inputs(dirs, args.results)
        results = read_results(args.results)
        for directory in dirs:
            sub = str(Subsystem.parse(directory.name))
            repo_id = args.repo_id_template.format(subsystem=sub) if args.repo_id_template else None
            path = pack_extracted(directory, args.outdir, results.get(sub), repo_id)
            print(f"{sub}: {path} ({path.stat().st_size:,} bytes)")
    return outcome.status


if __name__ == "__main__":
    sys.exit(main())
