"""Peak memory of transcribing with float, int8, int4 and int2 subsystems of one model.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_memory.py [--blocks 12 --dim 256]

Builds the same freshly initialised all-in-one Conformer as bench_inference.py
(12 blocks, d=256, FFN 1024, 80 mels, groups of 32; no download), extracts the
full model at fp, int8, int4 and int2, exports each for onnxruntime
(``deploy.build``) with the default kernels ("auto": MatMulNBits where measured
no slower than float here, else a float MatMul of the bit-packed weight,
expanded at session start) and, for the low-bit ones, again with kernels
"nbits" (every quantized Linear a MatMulNBits: its weights stay N-bit in
memory). Each row is a fresh process (numpy + onnxruntime only, no torch) that
builds the recogniser (``OnnxSpeech2Text``, exact variant) and transcribes
one utterance of ``--seconds`` a few times, reading its own
``/proc/self/status``: VmRSS after the imports, VmHWM (peak) after the build,
VmRSS after the build, and VmHWM at the end (the peak of the whole run: the
number a deployment must provision). Ratios are to the float model's row of
the same run and mode; "above imports" subtracts the process's size after
importing numpy and onnxruntime (the same for every model). ``before`` rows
run the deploy path as it was before issue 19 (float model bytes kept, no
heap trim), in the same run, for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

SCRIPT = """
import json, sys, time
def status(key):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key))
import numpy as np
import onnxruntime
base = status("VmRSS")
from espnet_allinone.deploy import expand, heap
from espnet_allinone.deploy.runtime import OnnxSpeech2Text
directory, seconds, before = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "1"
if before:  # the deploy path before issue 19: graph bytes with the weights, no heap trim
    expand.DETACH_BYTES = None
    heap.release_free_memory = lambda: False
asr = OnnxSpeech2Text(directory, "exact", 1)
built_peak, built = status("VmHWM"), status("VmRSS")
wav = (np.random.default_rng(0).standard_normal(int(seconds * 16000)) * 0.1).astype(np.float32)
ids = asr(wav)[0].token_ids
best = float("inf")
for _ in range(2):
    start = time.perf_counter(); asr(wav); best = min(best, time.perf_counter() - start)
print(json.dumps({"base": base, "built_peak": built_peak, "built": built,
                  "peak": status("VmHWM"), "seconds": best, "ids": ids,
                  "torch": "torch" in sys.modules}))
"""


def measure(directory: Path, seconds: float, before: bool) -> dict:
    """One fresh process: KB figures of ``SCRIPT`` for the exported ``directory``."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(directory), str(seconds),
                          "1" if before else "0"], check=True, capture_output=True, text=True,
                         env=env)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--blocks", type=int, default=12)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--units", type=int, default=1024)
    p.add_argument("--seconds", type=float, default=10.0, help="audio length")
    p.add_argument("--no_before", action="store_true", help="skip the pre-issue-19 rows")
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tests/helpers
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_inference import bench_encoder_conf
    from helpers.toy_experiment import DEFAULT_ENCODER_CONF, write_toy_experiment

    from espnet_allinone.deploy.build import ensure_exported
    from espnet_allinone.deploy.cpu import cpu_features
    from espnet_allinone.export.extract import Extractor

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_memory-"))
    conf = bench_encoder_conf(DEFAULT_ENCODER_CONF, args.dim, args.units, args.blocks)
    paths = write_toy_experiment(work / "allinone", encoder_conf=conf, n_mels=80)
    extractor = Extractor(paths["config"], paths["model"])
    rows = []  # (subsystem, kernels, export directory)
    for precision in ("fp", "int8", "int4", "int2"):
        sub = f"d{args.blocks}-w1-{precision}"
        for kernels in ("auto",) if precision == "fp" else ("auto", "nbits"):
            root = work / f"extracted-{kernels}"
            directory = extractor.extract(sub, root, verify=False, overwrite=True).directory
            out = ensure_exported(directory, kernels=kernels, log=lambda _m: None)
            rows.append((sub, kernels, out, directory))
            log(f"  exported {sub} (kernels {kernels})")

    modes = [False] if args.no_before else [True, False]
    results = {(sub, kernels, before): measure(out, args.seconds, before)
               for before in modes for sub, kernels, out, _ in rows}
    ids = {json.dumps(r["ids"]) for r in results.values()}
    assert not any(r["torch"] for r in results.values())

    full = f"d{args.blocks}-w1-fp"
    print(f"\nCPU: {cpu_features()}")
    import onnxruntime

    print(f"onnxruntime {onnxruntime.__version__}; {args.blocks} blocks d={args.dim} FFN "
          f"{args.units}, 80 mels; {args.seconds:.0f} s of audio, 1 thread, exact variant; one "
          "fresh process per row; MB = 2^20 bytes (files: 10^6 bytes); peak = VmHWM of the "
          "whole process (build + 3 utterances); ratios to the float row of the same mode")
    print(f"greedy outputs identical across rows: {len(ids) == 1}")
    header = (f"{'mode':<7} {'subsystem':<13} {'kernels':<7} {'.pth MB':>7} {'.onnx MB':>8} "
              f"{'imports':>7} {'build peak':>10} {'after build':>11} {'peak':>6} "
              f"{'/ float':>7} {'above imports / float':>22} {'RTF':>7}")
    print(header)
    for before in modes:
        ref = results[full, "auto", before]
        for sub, kernels, out, directory in rows:
            r = results[sub, kernels, before]
            onnx_mb = (out / "model.onnx").stat().st_size / 1e6
            above = (r["peak"] - r["base"]) / (ref["peak"] - ref["base"])
            print(f"{'before' if before else 'now':<7} {sub:<13} {kernels:<7} "
                  f"{(directory / 'model.pth').stat().st_size / 1e6:>7.2f} {onnx_mb:>8.2f} "
                  f"{r['base'] / 1024:>7.1f} {r['built_peak'] / 1024:>10.1f} "
                  f"{r['built'] / 1024:>11.1f} {r['peak'] / 1024:>6.1f} "
                  f"{r['peak'] / ref['peak']:>6.2f}x {above:>21.2f}x "
                  f"{r['seconds'] / args.seconds:>7.4f}")


if __name__ == "__main__":
    main()
