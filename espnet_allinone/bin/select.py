"""Pick the best subsystem for a budget and make it ready to ship.

    python -m espnet_allinone.bin.select --exp exp/asr_train_allinone --max_bytes 2MB
    python -m espnet_allinone.bin.select --exp exp/x --max_params 1.5M --max_rtf 0.05
    python -m espnet_allinone.bin.select --exp exp/x --max_wer 15 --dry_run

Reads ``<exp>/results.json`` (the report stage's per-subsystem WER, parameters,
bytes on disk and RTF), prints every subsystem with the Pareto front of WER
against bytes (``*``), and picks the lowest WER within every budget (ties: the
smaller file). Unless ``--dry_run``, the chosen subsystem is extracted to
``<exp>/extracted/<subsystem>/`` and packed to ``<exp>/packed/<subsystem>.zip`` if
it is not already, and ``<exp>/selected.json`` + ``<exp>/selected.png`` record
the choice. Budgets: bytes with a unit (B, kB, MB, GB, KiB, MiB, GiB),
parameters as a count (k, M, G), RTF as a ratio, WER in percent.

With ``<exp>/searched/search.json`` (``python -m espnet_allinone.bin.search``) the
searched records' picks join the table, marked ``(searched)``; one with a test
WER (``bin.search --collect``) can be chosen like any subsystem: its directory
is ``<exp>/searched/<name>/`` (re-extracted from the record in search.json if it
is gone). The model-zoo packer names archives by subsystem string, so a
searched pick is extracted but not packed.

Exit status: 0 chosen; 2 bad arguments or results file; 3 no subsystem fits
the budget (the message names the smallest available); 4 extraction or
packing failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from espnet_allinone.deploy.select import (
    BUDGETS,
    SELECTED_FILE,
    SelectError,
    choose,
    format_table,
    parse_budget,
    plot_selection,
    read_results,
    read_searched,
)
from espnet_allinone.errors import cli_errors
from espnet_allinone.export.extracted_dir import INFO_NAME
from espnet_allinone.report.results import RESULTS_FILE
from espnet_allinone.search.experiment import extract_searched

EXIT_OK, EXIT_USAGE, EXIT_NO_FIT, EXIT_BUILD = 0, 2, 3, 4
CHECKPOINTS = ("valid.loss.ave.pth", "valid.acc.ave.pth", "valid.loss.best.pth",
               "valid.acc.best.pth")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m espnet_allinone.bin.select", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp", type=Path, required=True, help="experiment dir (exp/<tag>)")
    p.add_argument("--results", type=Path, default=None, help="default EXP/results.json")
    for option, (_, what) in BUDGETS.items():
        p.add_argument(f"--{option}", default=None,
                       help=f"budget on {what}".replace("%", "%%"))  # argparse formats help
    p.add_argument("--asr_model_file", type=Path, default=None,
                   help="all-in-one checkpoint to extract from; default: the first of "
                        + ", ".join(CHECKPOINTS) + " in EXP")
    p.add_argument("--no_pack", action="store_true", help="extract only, no zoo zip")
    p.add_argument("--dry_run", action="store_true", help="print the choice, write nothing")
    return p


def _checkpoint(exp: Path, given: Path | None) -> Path:
    if given is not None:
        if not given.is_file():
            raise SelectError(f"--asr_model_file {given}: no such file")
        return given
    for name in CHECKPOINTS:
        if (exp / name).is_file():
            return exp / name
    raise SelectError(f"no checkpoint to extract from in {exp} (looked for "
                      f"{', '.join(CHECKPOINTS)}); pass --asr_model_file")


def materialise(exp: Path, sub: str, model_file: Path | None, pack: bool) -> tuple[Path, Path | None]:
    """Extract (and pack) ``sub`` unless it already is; returns (directory, zip or None)."""
    # deferred: torch, only when a subsystem is extracted
    from espnet_allinone.export.extract import extract_all

    directory = exp / "extracted" / sub
    if not (directory / INFO_NAME).is_file():
        config = exp / "config.yaml"
        if not config.is_file():
            raise SelectError(f"{sub} is not extracted and {config} (the all-in-one config) "
                              "is missing")
        extract_all(config, _checkpoint(exp, model_file), [sub], exp / "extracted",
                    progress=False, log=lambda m: print(m, file=sys.stderr))
    archive = exp / "packed" / f"{sub}.zip"
    if pack and not archive.is_file():
        # deferred: torch, only when a subsystem is packed
        from espnet_allinone.export.zoo import pack_extracted

        archive = pack_extracted(directory, exp / "packed")
    return directory, archive if pack else None


def materialise_searched(exp: Path, row: dict, model_file: Path | None) -> Path:
    """A searched pick's directory, re-extracted from its record in search.json if gone."""
    directory = exp / "searched" / row["subsystem"]
    if not (directory / INFO_NAME).is_file():
        directory = extract_searched(exp, row["subsystem"], model_file)
    return directory


def _rows(args: argparse.Namespace) -> list[dict]:
    """results.json's rows and the searched picks; results.json may be missing only when
    there are searched rows."""
    searched = read_searched(args.exp)
    path = args.results or args.exp / RESULTS_FILE
    if searched and args.results is None and not path.is_file():
        return searched
    return read_results(path) + searched


def main(argv: Sequence[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    with cli_errors("select", status=EXIT_USAGE) as outcome:
        budgets = {o: parse_budget(o, getattr(args, o)) for o in BUDGETS
                   if getattr(args, o) is not None}
        rows = _rows(args)
    if outcome.status:
        return outcome.status
    if not budgets:
        print("select: error: give at least one budget: "
              + ", ".join(f"--{o}" for o in BUDGETS), file=sys.stderr)
        return EXIT_USAGE
    try:
        choice = choose(rows, budgets)
    except SelectError as e:
        print(format_table(rows, None, []))
        print(f"select: {e}", file=sys.stderr)
        return EXIT_NO_FIT
    for note in choice.notes:
        print(f"note: {note}", file=sys.stderr)
    print(format_table(rows, choice.chosen, choice.front))
    budget_text = ", ".join(f"--{o} {getattr(args, o)}" for o in budgets)
    sub = choice.chosen["subsystem"]
    print(f"(* = Pareto front of WER against bytes)\nchosen: {sub} (WER "
          f"{choice.chosen['wer']:.2f}%) under {budget_text}")
    if args.dry_run:
        return EXIT_OK
    with cli_errors("select", OSError, RuntimeError, ValueError, status=EXIT_BUILD,
                    prefix=f"{sub}: ") as outcome:
        if choice.chosen.get("searched"):
            directory, archive = materialise_searched(args.exp, choice.chosen,
                                                      args.asr_model_file), None
            if not args.no_pack:
                print("note: a searched record is not packed (the zoo packer names archives "
                      "by subsystem string)", file=sys.stderr)
        else:
            directory, archive = materialise(args.exp, sub, args.asr_model_file,
                                             not args.no_pack)
    if outcome.status:
        return outcome.status
    record = {**choice.chosen, "budget": budget_text, "extracted": str(directory),
              "packed": None if archive is None else str(archive)}
    tmp = args.exp / f".{SELECTED_FILE}.tmp"
    tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    tmp.replace(args.exp / SELECTED_FILE)
    plot = plot_selection(rows, args.exp)
    print(f"extracted: {directory}")
    if archive is not None:
        print(f"packed: {archive}")
    print(f"recorded: {args.exp / SELECTED_FILE}, {plot}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
