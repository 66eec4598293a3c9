"""Upload packed subsystems to the Hugging Face Hub (huggingface_hub).

    python -m espnet_allinone.bin.upload --packed exp/packed/d6-w0.5-int4.zip \\
        --repo_id user/allinone-{subsystem} [--token T] [--private] [--dry_run]

For each zip the exact folder that goes to the Hub (the archive's tree, with
``meta.yaml`` and ``README.md`` at the root, as ESPnet's Hub models are laid
out) is written to ``--workdir/<subsystem>`` (default: ``hf_upload`` next to
the zip). ``--dry_run`` stops there. Without a token or network the upload
fails with a clear message and a non-zero exit; the packed files stay.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from espnet_allinone.errors import cli_errors
from espnet_allinone.export.zoo import upload, upload_folder_from_zip
from espnet_allinone.subsystem import Subsystem


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m espnet_allinone.bin.upload",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--packed", type=Path, nargs="+", required=True,
                   help="zips written by espnet_allinone.bin.pack")
    p.add_argument("--repo_id", required=True,
                   help="Hub model repo, e.g. user/allinone-{subsystem} "
                        "('{subsystem}' is required when several zips are given)")
    p.add_argument("--token", default=None, help="default: HF_TOKEN or the stored login")
    p.add_argument("--private", action="store_true")
    p.add_argument("--workdir", type=Path, default=None,
                   help="where the upload folders are written (default: <zip dir>/hf_upload)")
    p.add_argument("--dry_run", action="store_true",
                   help="write the folders that would be uploaded, upload nothing")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    if len(args.packed) > 1 and "{subsystem}" not in args.repo_id:
        print("upload: error: several zips need '{subsystem}' in --repo_id", file=sys.stderr)
        return 2
    failed = 0
    for packed in args.packed:
        with cli_errors("upload", FileNotFoundError, status=1, prefix=f"{packed}: ",
                        suffix="; the packed file is left in place") as outcome:
            sub = str(Subsystem.parse(packed.name.removesuffix(".zip")))
            repo_id = args.repo_id.format(subsystem=sub)
            workdir = args.workdir or packed.absolute().parent / "hf_upload"
            folder = upload_folder_from_zip(packed, workdir / sub)
            if args.dry_run:
                print(f"{sub}: dry run, would upload {folder} to https://huggingface.co/{repo_id}")
                continue
            url = upload(folder, repo_id, args.token, private=args.private)
            print(f"{sub}: uploaded to {url}")
        failed += outcome.status != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
