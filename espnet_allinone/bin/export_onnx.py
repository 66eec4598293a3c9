"""Export an extracted model's encoder + CTC head to ONNX for onnxruntime.

    python -m espnet_allinone.bin.export_onnx \\
        --asr_train_config extracted/d6-w1-int4/config.yaml \\
        --asr_model_file extracted/d6-w1-int4/model.pth --outdir onnx/d6-w1-int4 [--int8] [--nbits]

writes ``encoder.onnx`` (float), with ``--int8`` also ``encoder.int8.onnx``
(onnxruntime dynamic int8) and with ``--nbits`` (2/4/8-bit models)
``encoder.q<bits>.onnx`` whose quantized Linear layers are ``MatMulNBits`` nodes
holding the model's own low-bit codes and scales. For the whole pipeline
(front end, CTC search, files kept next to the model) use
``python -m espnet_allinone.bin.transcribe``. Inputs: ``feats``
(batch, frames, mel bins, after the model's normalisation) and
``feats_lengths``; outputs ``encoder_out``, ``encoder_out_lens``,
``ctc_log_probs``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from espnet_allinone.deploy import onnx_export
from espnet_allinone.errors import cli_errors
from espnet_allinone.export import model_io


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m espnet_allinone.bin.export_onnx",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--asr_train_config", type=Path, required=True)
    p.add_argument("--asr_model_file", type=Path, required=True)
    p.add_argument("--outdir", type=Path, required=True)
    p.add_argument("--int8", action="store_true", help="also write encoder.int8.onnx")
    p.add_argument("--nbits", action="store_true",
                   help="also write encoder.q<bits>.onnx (2/4/8-bit models: MatMulNBits)")
    args = p.parse_args(argv)
    with cli_errors("export_onnx") as outcome:
        model_io.check_model_files(args.asr_train_config, args.asr_model_file)
    if outcome.status:
        return outcome.status
    from espnet2.tasks.asr import ASRTask

    model, train_args = ASRTask.build_model_from_file(
        args.asr_train_config, args.asr_model_file, "cpu"
    )
    model.eval()
    if model.frontend is not None:
        input_size = model.frontend.output_size()
    else:
        input_size = int(train_args.input_size)
    path = onnx_export.export_onnx(model, args.outdir / "encoder.onnx", input_size)
    print(f"wrote {path}")
    if args.int8:
        print(f"wrote {onnx_export.quantize_onnx_int8(path, args.outdir / 'encoder.int8.onnx')}")
    if args.nbits:
        with cli_errors("export_onnx", ValueError) as outcome:
            bits = next((int(v) for k, v in model.state_dict().items() if k.endswith("_bits")),
                        "")
            report = onnx_export.onnx_matmul_nbits(model, path, args.outdir / f"encoder.q{bits}.onnx")
        if outcome.status:
            return outcome.status
        print(f"wrote {report.path}: {report.replaced} MatMulNBits layers"
              + (f", {len(report.skipped)} kept float" if report.skipped else ""))
        for line in report.skipped:
            print(f"  kept float: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
