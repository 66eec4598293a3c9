"""Real-time factor of extracted subsystems, side by side (CPU).

    .venv/bin/python benchmarks/bench_inference.py [--blocks 12 --dim 256 --threads 1]

Builds a freshly initialised all-in-one Conformer of a realistic size (random
weights are fine for speed: 12 blocks, d=256, 4 heads, FFN 1024, 80 mels),
extracts subsystems, and times decoding-side compute (frontend + encoder +
CTC posteriors, greedy) on the same audio for:

    torch float   the extracted model as ESPnet runs it
    torch int8    dynamic int8 Linear (quantize_dynamic; ESPnet's quantize_asr_model)
    onnx float    onnxruntime, encoder + CTC exported by espnet_allinone.export.fast
    onnx int8     onnxruntime dynamic int8
    onnx q4       4-bit subsystems: MatMulNBits with the model's own codes

RTF = compute seconds / audio seconds (median of repeats); speed-up is
against the float full model run by torch. Targets from issue 4: >= 2x for
the full-size int8 model, >= 4x for a half-depth int8 subsystem.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def _time_round_robin(variants: dict, rounds: int) -> dict:
    """Fastest of ``rounds`` runs of each variant, interleaved.

    Interleaving and taking the minimum keeps a busy shared CPU from
    favouring whichever variant happened to run in a quiet moment.
    """
    for fn in variants.values():
        fn()  # warm-up
    times = {key: [] for key in variants}
    for _ in range(rounds):
        for key, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return {key: (min(t), statistics.median(t)) for key, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--blocks", type=int, default=12)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--units", type=int, default=1024)
    p.add_argument("--seconds", type=float, default=10.0, help="audio length")
    p.add_argument("--repeats", type=int, default=7, help="interleaved rounds")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from espnet2.tasks.asr import ASRTask

    from espnet_allinone.export import fast
    from espnet_allinone.export.extract import Extractor
    from espnet_allinone.testing.toy_experiment import DEFAULT_ENCODER_CONF, write_toy_experiment

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_inference-"))
    half = args.blocks // 2
    conf = dict(
        DEFAULT_ENCODER_CONF, output_size=args.dim, linear_units=args.units,
        num_blocks=args.blocks, cnn_module_kernel=15, depths=[half, args.blocks],
        widths=[0.5, 1], precisions=["int4", "fp"], elastic_conv=False,
        quant_conf={"granularity": "group", "group_size": 32},
    )
    paths = write_toy_experiment(work / "allinone", encoder_conf=conf, n_mels=80)
    extractor = Extractor(paths["config"], paths["model"])
    full = f"d{args.blocks}-w1-fp"
    subs = [full, f"d{half}-w1-fp", f"d{args.blocks}-w1-int4", f"d{half}-w1-int4",
            f"d{half}-w0.5-int4"]
    samples = int(args.seconds * 16000)
    speech = torch.randn(1, samples, generator=torch.Generator().manual_seed(0)) * 0.1
    lengths = torch.tensor([samples])
    variants = {}
    sizes = {}
    for sub in subs:
        result = extractor.extract(sub, work / "extracted", verify=False, overwrite=True)
        model, _ = ASRTask.build_model_from_file(
            result.directory / "config.yaml", result.directory / "model.pth", "cpu")
        model.eval()
        feats, _ = fast.features(model, speech, lengths)

        def run_torch(m):
            with torch.no_grad():
                f, fl = fast.features(m, speech, lengths)
                out, _, _ = m.encoder(f, fl)
                m.ctc.log_softmax(out).argmax(-1)

        sizes[sub] = result.disk_bytes
        variants[sub, "torch float"] = lambda m=model: run_torch(m)
        q8 = fast.int8_dynamic(model)
        variants[sub, "torch int8"] = lambda m=q8: run_torch(m)
        onnx_path = fast.export_onnx(model, work / "onnx" / f"{sub}.onnx", feats.shape[-1])
        sessions = {"onnx float": fast.OnnxEncoder(onnx_path, args.threads)}
        int8_path = fast.quantize_onnx_int8(onnx_path, work / "onnx" / f"{sub}.int8.onnx")
        sessions["onnx int8"] = fast.OnnxEncoder(int8_path, args.threads)
        if result.subsystem.bits == 4:
            report = fast.onnx_matmul_nbits(model, onnx_path, work / "onnx" / f"{sub}.q4.onnx")
            sessions["onnx q4"] = fast.OnnxEncoder(report.path, args.threads)
        for name, session in sessions.items():
            def run_onnx(s=session, m=model):
                f, fl = fast.features(m, speech, lengths)
                s(f, fl)[2].argmax(-1)

            variants[sub, name] = run_onnx
        print(f"  prepared {sub}", flush=True)
    timed = _time_round_robin(variants, args.repeats)
    rows = [(sub, name, sizes[sub], best / args.seconds, median / args.seconds)
            for (sub, name), (best, median) in timed.items()]
    base = next(r[3] for r in rows if r[0] == full and r[1] == "torch float")
    print(f"\nthreads={args.threads}, audio {args.seconds:.0f} s, model {args.blocks} blocks "
          f"d={args.dim} FFN {args.units}; {args.repeats} interleaved rounds; RTF of the "
          f"fastest round (median in brackets); speed-up vs {full} torch float")
    print(f"{'subsystem':<14} {'runtime':<12} {'MB on disk':>10} {'RTF':>8} {'(median)':>9} "
          f"{'speed-up':>9}")
    for sub, name, size, rtf, med in rows:
        print(f"{sub:<14} {name:<12} {size / 1e6:>10.2f} {rtf:>8.4f} {med:>9.4f} "
              f"{base / rtf:>8.2f}x")
    best = {}
    for sub, name, _, rtf, _ in rows:
        if "int8" in name:
            best[sub] = max(best.get(sub, 0.0), base / rtf)
    half_int8 = max(v for k, v in best.items() if k.startswith(f"d{half}-"))
    print(f"\ntarget full-size int8 >= 2x: {best[full]:.2f}x "
          f"({'met' if best[full] >= 2 else 'NOT met'})")
    print(f"target half-depth int8 >= 4x: {half_int8:.2f}x "
          f"({'met' if half_int8 >= 4 else 'NOT met'})")


if __name__ == "__main__":
    main()
