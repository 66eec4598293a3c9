"""Write RESULTS.md, results.json and the WER-vs-size plot; print the table.

    python -m espnet_allinone.bin.report --asr_exp exp/asr_x --test_set test \
        --data_dir dump/raw/test --inference_config conf/decode.yaml
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from espnet_allinone.corpus.datadir import read_table
from espnet_allinone.errors import cli_errors
from espnet_allinone.export.extracted_dir import (
    INFO_NAME,
    exact_bytes,
    model_files,
    subsystem_size,
)
from espnet_allinone.export.model_io import load_checkpoint, load_config, load_yaml
from espnet_allinone.report.plot import plot_wer_vs_size
from espnet_allinone.report.results import (
    RESULTS_FILE,
    SCORES_FILE,
    ReportError,
    Row,
    fill_compression,
    float_reference,
    read_scores,
    summary_notes,
    to_markdown,
    to_text_table,
)
from espnet_allinone.report.rtf import measure_rtf, speech2text_kwargs
from espnet_allinone.report.significance import compare
from espnet_allinone.subsystem import Subsystem


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--asr_exp", type=Path, required=True, help="experiment dir")
    p.add_argument("--decode_dir", type=Path, default=None, help="default ASR_EXP/decode")
    p.add_argument("--extracted_dir", type=Path, default=None, help="default ASR_EXP/extracted")
    p.add_argument("--test_set", default="test")
    p.add_argument("--other_test_sets", nargs="*", default=[],
                   help="further scored test sets, one WER column each (e.g. test_unseen)")
    p.add_argument("--subsystems", default=None,
                   help="space/comma separated; default: every subsystem decoded")
    p.add_argument("--data_dir", type=Path, default=None, help="test data dir (for the RTF)")
    p.add_argument("--inference_config", type=Path, default=None)
    p.add_argument("--rtf_utts", type=int, default=10, help="utterances timed; 0: no RTF")
    p.add_argument("--baselines", type=Path, default=None,
                   help="baselines.json from the baselines stage")
    p.add_argument("--allinone_train_seconds", type=float, default=None)
    p.add_argument("--title", default=None)
    p.add_argument("--outdir", type=Path, default=None, help="default ASR_EXP")
    return p


def _subsystems(args: argparse.Namespace, decode_dir: Path) -> list[str]:
    if args.subsystems:
        names = [s for s in args.subsystems.replace(",", " ").split() if s]
    else:
        names = [d.name for d in sorted(decode_dir.iterdir()) if (d / args.test_set).is_dir()] \
            if decode_dir.is_dir() else []
    if not names:
        raise ReportError(f"no decoded subsystem under {decode_dir}: made by the decoding "
                          "stage (13) and scored by stage 14")
    extracted = args.extracted_dir or args.asr_exp / "extracted"

    def size_order(name: str) -> tuple:
        sub = Subsystem.parse(name)
        nbytes = exact_bytes(extracted / name) if (extracted / name).is_dir() else 0
        return (nbytes, sub.depth, sub.width)

    return sorted(names, key=size_order)


def full_float_bytes(extracted: Path, rows: list[Row]) -> int | None:
    """The float full model's bytes as the extraction stage recorded them, if it did."""
    for r in rows:
        info = extracted / r.subsystem / "extract_info.yaml"
        if info.is_file():
            value = (load_config(info).get("bytes") or {}).get("full_float")
            if value:
                return int(value)
    return None


def build_rows(args: argparse.Namespace) -> tuple[list[Row], list[str]]:
    decode_dir = args.decode_dir or args.asr_exp / "decode"
    extracted = args.extracted_dir or args.asr_exp / "extracted"
    rows = []
    for name in _subsystems(args, decode_dir):
        scores = read_scores(decode_dir, name, args.test_set)
        sub_dir = extracted / name
        if not sub_dir.is_dir():
            raise ReportError(f"missing {sub_dir}: made by the extraction stage (12)")
        params, nbytes = subsystem_size(sub_dir)
        rows.append(Row(name, scores["wer"]["error_rate"], scores["cer"]["error_rate"],
                        scores["wer"]["words"], params, nbytes,
                        exact_bytes=exact_bytes(sub_dir)))
        for other in args.other_test_sets:
            rows[-1].other_wer[other] = read_scores(decode_dir, name, other)["wer"]["error_rate"]
    notes = [f"test set `{args.test_set}`: {rows[0].words} words; WER/CER by sclite",
             "bytes: the extracted model file on disk (low-bit weights packed)"]
    for other in args.other_test_sets:
        words = read_scores(decode_dir, rows[0].subsystem, other)["wer"]["words"]
        notes.append(f"`{other} WER %`: test set `{other}`, {words} words")
    notes.append("compression against the float full model: "
                 + fill_compression(rows, full_float_bytes(extracted, rows)))
    if args.baselines and args.baselines.is_file():
        base = json.loads(args.baselines.read_text())
        missing = base.pop("missing", {})
        total = 0.0
        for r in rows:
            if r.subsystem in base:
                r.baseline_wer = base[r.subsystem]["wer"]
                r.baseline_train_seconds = base[r.subsystem]["train_seconds"]
                total += r.baseline_train_seconds
        for sub, why in missing.items():
            notes.append(f"no baseline for {sub}: {why}")
        if total and args.allinone_train_seconds:
            trained = sum(r.baseline_train_seconds is not None for r in rows)
            notes.append(
                f"training time (wall clock, process start included): {trained} subsystems "
                f"trained one by one {total:.0f} s, all-in-one {args.allinone_train_seconds:.0f} s"
                f": ratio {total / args.allinone_train_seconds:.2f}x"
            )
    return rows, notes


def add_significance(rows: list[Row], args: argparse.Namespace, notes: list[str]) -> str:
    """sc_stats against the float full model and against each twin trained alone, from
    the scoring stage's sclite inputs; returns the float reference's name."""
    decode_dir = args.decode_dir or args.asr_exp / "decode"
    subs = {Subsystem.parse(r.subsystem) for r in rows}
    reference = float_reference(r.subsystem for r in rows)
    trn = {r.subsystem: decode_dir / r.subsystem / args.test_set / "score_wer"
           for r in rows}
    if not all((d / "hyp.trn").is_file() for d in trn.values()):
        notes.append("significance not tested: the sclite inputs (score_wer/hyp.trn, "
                     "scoring stage 14) are missing")
        return str(reference)
    if reference not in subs:
        notes.append(f"not tested against the float full model: {reference} is not listed")
    work = (args.outdir or args.asr_exp) / "significance"
    base = json.loads(args.baselines.read_text()) if args.baselines and \
        args.baselines.is_file() else {}
    float_alone = (base.get(str(reference)) or {}).get("hyp_trn")
    for r in rows:
        mine = trn[r.subsystem]
        if reference in subs and r.subsystem != str(reference):
            ref_dir = trn[str(reference)]
            r.vs_float = {k: v.to_dict() for k, v in compare(
                ref_dir / "ref.trn", ref_dir / "hyp.trn", mine / "hyp.trn",
                work / f"{r.subsystem}_vs_{reference}").items()}
        alone = (base.get(r.subsystem) or {}).get("hyp_trn")
        if alone and Path(alone).is_file():
            r.vs_alone = {k: v.to_dict() for k, v in compare(
                mine / "ref.trn", Path(alone), mine / "hyp.trn",
                work / f"{r.subsystem}_vs_alone").items()}
        if float_alone and Path(float_alone).is_file():
            r.vs_float_alone = r.vs_alone if r.subsystem == str(reference) else {
                k: v.to_dict() for k, v in compare(
                    mine / "ref.trn", Path(float_alone), mine / "hyp.trn",
                    work / f"{r.subsystem}_vs_float_alone").items()}
    return f"the float full model {reference}"


def add_rtf(rows: list[Row], args: argparse.Namespace, notes: list[str]) -> None:
    if args.rtf_utts <= 0:
        notes.append("RTF not measured (--rtf_utts 0)")
        return
    if args.data_dir is None or not (args.data_dir / "wav.scp").is_file():
        raise ReportError(f"the RTF needs --data_dir with wav.scp (got {args.data_dir}): "
                          "made by the format stage (3)")

    wavs = [Path(v) for v in list(read_table(args.data_dir / "wav.scp").values())
            [: args.rtf_utts + 1]]
    kwargs = speech2text_kwargs(args.inference_config)
    extracted = args.extracted_dir or args.asr_exp / "extracted"
    for r in rows:
        config, model = model_files(extracted / r.subsystem)
        r.rtf = measure_rtf(config, model, wavs, kwargs)
    notes.append(f"RTF: CPU decoding time / audio time, 1 thread, {max(len(wavs) - 1, 1)} "
                 "utterances after one warm-up, ESPnet Speech2Text with the inference config")


def check_inputs(args: argparse.Namespace) -> None:
    """Read every file the report uses before writing anything; a bad one is named at once."""
    decode_dir = args.decode_dir or args.asr_exp / "decode"
    extracted = args.extracted_dir or args.asr_exp / "extracted"
    for extra in (args.inference_config, args.baselines):
        if extra is not None and extra.is_file():
            load_yaml(extra)  # JSON is YAML
    for name in _subsystems(args, decode_dir):
        scores = decode_dir / name / args.test_set / SCORES_FILE
        if scores.is_file():
            load_yaml(scores)
        if (extracted / name).is_dir():
            config, model = model_files(extracted / name)
            load_config(config)
            if (extracted / name / INFO_NAME).is_file():
                load_config(extracted / name / INFO_NAME)
            load_checkpoint(model)


def main(argv: Sequence[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    outdir = args.outdir or args.asr_exp
    with cli_errors("report", FileNotFoundError) as outcome:
        check_inputs(args)
        rows, notes = build_rows(args)
        reference = add_significance(rows, args, notes)
        notes += summary_notes(rows, reference)
        add_rtf(rows, args, notes)
    if outcome.status:
        return outcome.status
    title = args.title or f"Results: {args.asr_exp.name}"
    outdir.mkdir(parents=True, exist_ok=True)
    plot = plot_wer_vs_size(rows, outdir / "wer_vs_size.png", title=title)
    notes.append(f"plot: {plot.name}")
    (outdir / "RESULTS.md").write_text(to_markdown(rows, title, notes), encoding="utf-8")
    (outdir / RESULTS_FILE).write_text(
        json.dumps({"rows": [r.to_dict() for r in rows], "notes": notes}, indent=1) + "\n")
    print(to_text_table(rows))
    print(f"(* = Pareto front)  {outdir / 'RESULTS.md'}  {plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
