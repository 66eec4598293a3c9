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

``--ctc_greedy``: best-path CTC decoding (the argmax token of every frame,
repeats merged, blanks dropped) of each utterance with the model that
``Speech2Text`` loads, instead of ESPnet's beam search; for CTC-only models
it is many times faster than the prefix search with beam 1 and is what the
ONNX ``transcribe`` path computes.

``--ctc_prefix_impl fast|espnet`` (default fast): the CTC prefix search is
scored by ``espnet_allinone.decoding.ctc_prefix`` (ESPnet's hypotheses without
its per-frame Python loop) or, for comparison, by ESPnet's own scorer.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from espnet_allinone.decoding.prefix_impl import (
    add_ctc_prefix_impl_argument,
    check_ctc_prefix_impl,
    espnet_inference_with,
)
from espnet_allinone.errors import AllInOneError, cli_errors
from espnet_allinone.export.extracted_dir import model_files
from espnet_allinone.export.model_io import check_model_files, load_config
from espnet_allinone.registry import register


class MultiInferenceError(AllInOneError, ValueError):
    """Arguments this wrapper refuses; the message says what to change."""


def get_parser() -> argparse.ArgumentParser:
    """Our options; every other one goes to ESPnet's asr_inference parser unchanged."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--model_dirs", nargs="+", required=True, type=Path)
    p.add_argument("--output_dir", required=True, type=Path)
    p.add_argument("--config", type=Path, default=None, help="decoding YAML (asr_inference's)")
    p.add_argument("--ctc_greedy", action="store_true",
                   help="best-path CTC decoding instead of ESPnet's beam search")
    add_ctc_prefix_impl_argument(p)
    return p


def ctc_greedy_inference(asr_train_config: str, asr_model_file: str, output_dir: str,
                         data_path_and_name_and_type, key_file: str | None = None,
                         ngpu: int = 0, dtype: str = "float32", num_workers: int = 1,
                         allow_variable_data_keys: bool = False, **_: object) -> None:
    """Best-path CTC decoding, one utterance at a time (no padding), written as
    ``asr_inference`` writes its 1-best (``1best_recog/{text,token,token_int,score}``)."""
    import torch
    from espnet2.bin.asr_inference import Speech2Text
    from espnet2.fileio.datadir_writer import DatadirWriter
    from espnet2.tasks.asr import ASRTask

    device = "cuda" if ngpu > 0 else "cpu"
    s2t = Speech2Text(asr_train_config=asr_train_config, asr_model_file=asr_model_file,
                      device=device, dtype=dtype, ctc_weight=1.0, beam_size=1)
    model = s2t.asr_model
    if model.ctc is None:
        raise MultiInferenceError(f"{asr_train_config}: --ctc_greedy needs a model with CTC")
    loader = ASRTask.build_streaming_iterator(
        data_path_and_name_and_type, dtype=dtype, batch_size=1, key_file=key_file,
        num_workers=num_workers,
        preprocess_fn=ASRTask.build_preprocess_fn(s2t.asr_train_args, False),
        collate_fn=ASRTask.build_collate_fn(s2t.asr_train_args, False),
        allow_variable_data_keys=allow_variable_data_keys, inference=True)
    with DatadirWriter(output_dir) as writer, torch.no_grad():
        for keys, batch in loader:
            speech = batch["speech"].to(device)
            lengths = batch["speech_lengths"].to(device)
            enc, enc_lens = model.encode(speech, lengths)
            log_probs = model.ctc.log_softmax(enc)[0, : enc_lens[0]]
            best, ids = log_probs.max(-1)
            ids = torch.unique_consecutive(ids)
            ids = ids[ids != model.blank_id].tolist()
            tokens = s2t.converter.ids2tokens(ids)
            out = writer["1best_recog"]
            out["token"][keys[0]] = " ".join(tokens)
            out["token_int"][keys[0]] = " ".join(map(str, ids))
            out["text"][keys[0]] = s2t.tokenizer.tokens2text(tokens) if s2t.tokenizer else ""
            out["score"][keys[0]] = str(float(best.sum()))


def check_models(model_dirs: Sequence[Path], rest: Sequence[str]) -> list[Path]:
    """Every model's files read before decoding starts; returns each model file.

    A bad file is found here, named in one line, before any output is written
    (ESPnet would fail on it mid-run with a traceback).
    """
    for flag in ("--asr_train_config", "--asr_model_file", "--model_tag"):
        if flag in rest:
            raise MultiInferenceError(f"{flag} is set per model from --model_dirs; remove it")
    missing = [d for d in model_dirs if not (d / "config.yaml").is_file()]
    if missing:
        raise MultiInferenceError(
            "not a model directory (no config.yaml): " + ", ".join(map(str, missing))
            + "; extraction (allinone.sh stage 12) makes them"
        )
    names = [d.name for d in model_dirs]
    if len(set(names)) != len(names):
        raise MultiInferenceError(f"--model_dirs names must differ (outputs go by name): {names}")
    model_paths = []
    for model_dir in model_dirs:
        config, model = model_files(model_dir)
        check_model_files(config, model)
        model_paths.append(model)
    return model_paths


def main(argv: Sequence[str] | None = None) -> int:
    args, rest = get_parser().parse_known_args(argv)
    with cli_errors("asr_inference_multi", FileNotFoundError) as outcome:
        check_ctc_prefix_impl(args.ctc_prefix_impl)
        if args.config is not None:
            load_config(args.config)
            rest = ["--config", str(args.config), *rest]
        model_paths = check_models(args.model_dirs, rest)
    if outcome.status:
        return outcome.status

    register()
    from espnet2.bin.asr_inference import get_parser as espnet_parser
    from espnet2.bin.asr_inference import inference

    parser = espnet_parser()
    for model_dir, model in zip(args.model_dirs, model_paths):
        print(f"decoding with {model_dir}", file=sys.stderr, flush=True)
        kwargs = vars(
            parser.parse_args(
                [
                    *rest,
                    "--asr_train_config", str(model_dir / "config.yaml"),
                    "--asr_model_file", str(model),
                    "--output_dir", str(args.output_dir / model_dir.name),
                ]
            )
        )
        kwargs.pop("config", None)
        if args.ctc_greedy:
            ctc_greedy_inference(**kwargs)
        else:
            with espnet_inference_with(args.ctc_prefix_impl):
                inference(**kwargs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
