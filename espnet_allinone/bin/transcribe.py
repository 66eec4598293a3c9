"""Transcribe wav files with an extracted subsystem on onnxruntime (no PyTorch at run time).

    python -m espnet_allinone.bin.transcribe --model exp/x/extracted/d4-w1-int4 a.wav b.wav
    python -m espnet_allinone.bin.transcribe --model exp/x/packed/d4-w1-int4.zip \\
        --wav_scp data/test/wav.scp --search beam --beam_size 10 --num_threads 2 --output hyp.txt

The first run exports the model next to it (``<dir>.onnx/`` or ``<zip stem>.onnx/``,
which needs torch and ESPnet); later runs load only numpy and onnxruntime.
The whole pipeline runs on onnxruntime/numpy: STFT log-mel front end and
normalisation, encoder and CTC head, CTC greedy or prefix beam search (the
search ESPnet's Speech2Text runs for a CTC-only model). Prints
``<utterance id><TAB><text>`` per file (to --output, written atomically, or stdout)
and a real-time-factor line on stderr.

Exit status: 0 every file transcribed; 1 some files were skipped (each one is
reported on stderr); 2 bad arguments or not a usable model; 3 no file could be
transcribed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from espnet_allinone.deploy.audio import AudioError, read_audio
from espnet_allinone.deploy.build import load_model
from espnet_allinone.deploy.onnx_front import FRONT_MODES
from espnet_allinone.errors import cli_errors

EXIT_OK, EXIT_SOME_SKIPPED, EXIT_USAGE, EXIT_NONE = 0, 1, 2, 3


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m espnet_allinone.bin.transcribe",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("wavs", nargs="*", type=Path, help="audio files")
    p.add_argument("--model", type=Path, required=True,
                   help="an extracted model directory (config.yaml, model.pth) or a zoo .zip")
    p.add_argument("--wav_scp", type=Path, default=None, help="Kaldi wav.scp: '<id> <path>'")
    p.add_argument("--variant", choices=("exact", "fast", "int8"), default="exact",
                   help="exact: the subsystem's own weights, float activations (output as "
                        "Speech2Text); fast: low-bit layers' MatMulNBits with int8 compute "
                        "(accuracy_level 4; not exact); int8: dynamic int8 for the float "
                        "layers (faster, not exact)")
    p.add_argument("--fast", action="store_true", help="the same as --variant fast")
    p.add_argument("--search", choices=("greedy", "beam"), default="greedy")
    p.add_argument("--beam_size", type=int, default=10)
    p.add_argument("--num_threads", type=int, default=1)
    p.add_argument("--kernels", choices=("auto", "nbits", "float"), default="auto",
                   help="low-bit layers: auto = MatMulNBits where it is measured fast on this "
                        "CPU; nbits = always; float = never (float MatMuls of the weights, "
                        "which the file stores bit-packed either way)")
    p.add_argument("--front", choices=FRONT_MODES, default="auto",
                   help="the conv2d front of the fast and int8 variants: auto = int8 GEMMs "
                        "over patches (MatMulInteger) where measured faster than the float "
                        "Conv on this CPU; int8 = always; gemm = float GEMMs; conv = the "
                        "float Conv (the exact variant's front, always)")
    p.add_argument("--no_resample", action="store_true",
                   help="refuse (skip) files at another sample rate instead of resampling")
    p.add_argument("--output", type=Path, default=None, help="default: stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bar or export log")
    return p


def _inputs(args: argparse.Namespace) -> list[tuple[str, Path]]:
    items = [(str(w), w) for w in args.wavs]
    if args.wav_scp is not None:
        if not args.wav_scp.is_file():
            raise ValueError(f"--wav_scp {args.wav_scp}: no such file")
        for n, line in enumerate(args.wav_scp.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split(maxsplit=1)
            if len(parts) != 2 or parts[1].rstrip().endswith("|"):
                raise ValueError(f"{args.wav_scp}:{n}: expected '<id> <wav path>' (pipes are "
                                 f"not supported), got {line!r}")
            items.append((parts[0], Path(parts[1].strip())))
    if not items:
        raise ValueError("no audio given: pass wav files or --wav_scp")
    return items


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    say = (lambda _m: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
    if args.fast:
        if args.variant not in ("exact", "fast"):
            print(f"transcribe: error: --fast and --variant {args.variant} exclude each other",
                  file=sys.stderr)
            return EXIT_USAGE
        args.variant = "fast"
    if args.num_threads < 1 or args.beam_size < 1:
        print("transcribe: error: --num_threads and --beam_size must be >= 1 (got "
              f"{args.num_threads}, {args.beam_size})", file=sys.stderr)
        return EXIT_USAGE
    with cli_errors("transcribe", ValueError, status=EXIT_USAGE) as outcome:
        items = _inputs(args)
    if outcome.status:
        return outcome.status

    with cli_errors("transcribe", ValueError, status=EXIT_USAGE) as outcome:
        asr = load_model(args.model, args.variant, args.num_threads, args.search,
                         args.beam_size, args.kernels, log=say, front=args.front)
    if outcome.status:
        return outcome.status
    from tqdm import tqdm

    lines, skipped = [], []
    compute = audio_seconds = 0.0
    bar = tqdm(items, desc="transcribe", unit="file", file=sys.stderr,
               disable=args.quiet or len(items) < 2)
    def note(message: str) -> None:  # above the progress bar, never on stdout
        bar.write(message, file=sys.stderr)

    for utt, path in bar:
        try:
            speech = read_audio(path, asr.sample_rate, resample=not args.no_resample,
                                min_samples=asr.min_samples, warn=note)
        except AudioError as e:
            note(f"skipped: {e}")
            skipped.append(utt)
            continue
        start = time.perf_counter()
        try:
            hyp = asr(speech)[0]
        except (ValueError, RuntimeError) as e:  # onnxruntime's errors are RuntimeErrors
            note(f"skipped: {path}: transcription failed: {str(e).splitlines()[0]}")
            skipped.append(utt)
            continue
        compute += time.perf_counter() - start
        audio_seconds += speech.shape[0] / asr.sample_rate
        lines.append(f"{utt}\t{hyp.text}\n")
    bar.close()
    text = "".join(lines)
    if args.output is not None:
        _write_atomic(args.output, text)
    else:
        sys.stdout.write(text)
    done = len(items) - len(skipped)
    if done:
        print(f"RTF {compute / audio_seconds:.4f} ({compute:.2f} s compute / "
              f"{audio_seconds:.1f} s audio, {done} files, {args.num_threads} thread(s), "
              f"variant {asr.variant}, {args.search} search)", file=sys.stderr)
    if skipped:
        print(f"transcribe: {len(skipped)} of {len(items)} files skipped: "
              f"{', '.join(skipped)}", file=sys.stderr)
    if not done:
        return EXIT_NONE
    return EXIT_SOME_SKIPPED if skipped else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
