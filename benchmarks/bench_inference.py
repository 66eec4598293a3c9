"""CPU speed of extracted subsystems: PyTorch, espnet_onnx and our onnxruntime path, side by side.

    .venv/bin/python benchmarks/bench_inference.py [--blocks 12 --dim 256 --threads 1,2]

Builds a freshly initialised all-in-one Conformer of a realistic size (random
weights are fine for speed: 12 blocks, d=256, 4 heads, FFN 1024, 80 mels,
depth {6,12} x width {0.5,1} x {int2,int4,int8,fp}, groups of 32), extracts
the full float model, the full model at each precision and the smallest
subsystem, and times, on the same 10 s of audio, in one run, interleaved:

    torch float        the extracted model as ESPnet runs it (front end, encoder,
                       CTC, greedy): THE BASELINE, full model, same thread count
    torch int8         dynamic int8 Linear (ESPnet's quantize_asr_model)
    espnet_onnx float  espnet_onnx 0.2.1 export of the same stock conformer model
    espnet_onnx quant  its quantised (dynamic int8) export; both time front end +
                       encoder only (no CTC), so they do less work than ours
    ours exact         espnet_allinone.deploy: numpy front end, onnxruntime encoder
                       + CTC, greedy; low-bit weights as MatMulNBits where measured
                       fast (else dequantised float, the reason printed)
    ours int8          the same with dynamic int8 for the float MatMuls, and for the
                       convolutions (conv2d front included, ConvInteger) where that
                       is measured faster at export (the choice is printed)

RTF = compute seconds / audio seconds (fastest of the interleaved rounds,
median in brackets). Then, per subsystem, the RTF and peak resident memory of
our onnxruntime path in a fresh process (numpy + onnxruntime only) on one
10 s utterance and on a batch of 16, for sizing a server.
"""

from __future__ import annotations

import os

# numpy's OpenBLAS threads spin ~0.1 s after each call and slow whatever runs
# next (our front end's mel matmul and espnet_onnx's alike): one BLAS thread
# for every variant of this process. torch uses its own thread pool.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ESPNET_ONNX_PUBLISHED = "espnet_onnx docs: 12-block Conformer encoder 48.6 ms torch -> 19.0 ms " \
    "quantised + fused onnxruntime (2.56x)"


def _time_round_robin(variants: dict, rounds: int) -> dict:
    """Fastest and median of ``rounds`` interleaved runs of each variant (after a warm-up).

    Interleaving and taking the minimum keeps a busy shared CPU from
    favouring whichever variant happened to run in a quiet moment.
    """
    for fn in variants.values():
        fn()
    times = {key: [] for key in variants}
    for _ in range(rounds):
        for key, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return {key: (min(t), statistics.median(t)) for key, t in times.items()}


def _torch_runner(model, speech: torch.Tensor):
    from espnet_allinone.deploy import ctc
    from espnet_allinone.export import fast

    lengths = torch.tensor([speech.shape[1]])

    def run():
        with torch.no_grad():
            f, fl = fast.features(model, speech, lengths)
            out, _, _ = model.encoder(f, fl)
            ctc.greedy(model.ctc.log_softmax(out)[0].numpy())
    return run


def _front_runner(model, speech: torch.Tensor):
    """Front end + conv2d subsampling only: the part no encoder subsystem makes smaller."""
    from espnet_allinone.export import fast

    lengths = torch.tensor([speech.shape[1]])

    def run():
        with torch.no_grad():
            f, _ = fast.features(model, speech, lengths)
            model.encoder.embed(f, None)
    return run


def _espnet_onnx(directory: Path, work: Path, threads_list: list[int], log) -> dict | str:
    """{(quantised, threads): runner} for espnet_onnx's export of ``directory``, or why not."""
    try:
        import onnxruntime as ort
        import typeguard
        import yaml

        # espnet_onnx 0.2.1 pins typeguard 2.13 and calls its argument-less
        # check_argument_types(); typeguard 4 (espnet 202511's) has another signature
        # and rejects its calls: a no-op shim before espnet_onnx is imported.
        for name in ("check_argument_types", "check_return_type"):
            setattr(typeguard, name, lambda *a, **k: True)
        from espnet2.bin.asr_inference import Speech2Text
        from espnet_onnx import Speech2Text as OnnxS2T
        from espnet_onnx.export import ASRModelExport
    except ImportError as e:
        return f"espnet_onnx not importable ({e}); pip install espnet_onnx==0.2.1 --no-deps six"
    # 0.2.1 on PyPI ships without export/convert_map.yml (wheel and sdist), so
    # ASRModelExport() fails with FileNotFoundError; give it the map for a conformer.
    emb, onnx_models = "espnet.nets.pytorch_backend.transformer.embedding.", \
        "espnet_onnx.export.asr.models."
    cmap = work / "espnet_onnx_convert_map.yml"
    cmap.write_text(yaml.safe_dump({
        "asr": [{"from": emb + "RelPositionalEncoding",
                 "to": onnx_models + "layers.embed.OnnxRelPositionalEncoding"},
                {"from": emb + "LegacyRelPositionalEncoding",
                 "to": onnx_models + "layers.embed.OnnxLegacyRelPositionalEncoding"}],
        "asr_optimization": [{"from": "espnet2.asr.encoder.conformer_encoder.ConformerEncoder",
                              "to": onnx_models + "encoders.conformer.ConformerEncoder"}]}))
    export = torch.onnx.export  # torch 2.12 defaults to the dynamo exporter (needs onnxscript)
    torch.onnx.export = lambda *a, **k: export(*a, **{"dynamo": False, **k})
    try:
        s2t = Speech2Text(asr_train_config=directory / "config.yaml",
                          asr_model_file=directory / "model.pth", ctc_weight=0.3, beam_size=1)
        exporter = ASRModelExport(cache_dir=work / "espnet_onnx", convert_map=str(cmap))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exporter.export(s2t, "full", quantize=True)
    except Exception as e:  # noqa: BLE001 - report any failure of the peer as a reason
        return f"espnet_onnx export failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    finally:
        torch.onnx.export = export
    runners = {}
    for quantised in (False, True):
        peer = OnnxS2T(tag_name="full", cache_dir=work / "espnet_onnx",
                       use_quantized=quantised, providers=["CPUExecutionProvider"])
        enc = peer.encoder
        path = enc.config.quantized_model_path if quantised else enc.config.model_path
        for threads in threads_list:
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as ours
            session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

            def run(enc=enc, session=session):
                enc.encoder = session
                enc(SPEECH[None], np.array([SPEECH.shape[0]]))
            runners[quantised, threads] = (run, Path(path).stat().st_size)
    log(f"  espnet_onnx: exported {directory.name} (float and quantised)")
    return runners


SPEECH = np.zeros(0, dtype=np.float32)

MEMORY_SCRIPT = """
import json, sys, time
import numpy as np
from espnet_allinone.deploy.runtime import OnnxSpeech2Text
directory, variant, threads, batch, samples = sys.argv[1], sys.argv[2], int(sys.argv[3]), \\
    int(sys.argv[4]), int(sys.argv[5])
asr = OnnxSpeech2Text(directory, variant, threads)
rng = np.random.default_rng(0)
wavs = [(rng.standard_normal(samples) * 0.1).astype(np.float32) for _ in range(batch)]
asr.transcribe_batch(wavs)
best = float("inf")
for _ in range(3):
    start = time.perf_counter(); asr.transcribe_batch(wavs); best = min(best, time.perf_counter() - start)
heavy = [m for m in ("torch", "espnet2") if m in sys.modules]
# VmHWM: this process's own peak (ru_maxrss would carry the parent's over fork + exec)
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"seconds": best, "peak_kb": peak, "heavy": heavy}))
"""


def _memory(directory: Path, variant: str, threads: int, batch: int, samples: int) -> dict:
    res = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(directory), variant,
                          str(threads), str(batch), str(samples)], check=True,
                         capture_output=True, text=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    global SPEECH
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--blocks", type=int, default=12)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--units", type=int, default=1024)
    p.add_argument("--seconds", type=float, default=10.0, help="audio length")
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    p.add_argument("--batch", type=int, default=16, help="batch size of the memory table")
    p.add_argument("--kernels", default="auto", choices=("auto", "nbits", "float"))
    p.add_argument("--no_espnet_onnx", action="store_true")
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args()
    threads_list = [int(t) for t in args.threads.split(",")]

    from espnet2.tasks.asr import ASRTask

    from espnet_allinone.deploy.build import ensure_exported, export_dir_for
    from espnet_allinone.deploy.runtime import OnnxSpeech2Text
    from espnet_allinone.export import fast
    from espnet_allinone.export.extract import Extractor
    from espnet_allinone.testing.toy_experiment import (
        DEFAULT_ENCODER_CONF,
        write_toy_experiment,
    )

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_inference-"))
    half = args.blocks // 2
    conf = dict(
        DEFAULT_ENCODER_CONF, output_size=args.dim, linear_units=args.units,
        num_blocks=args.blocks, cnn_module_kernel=15, depths=[half, args.blocks],
        widths=[0.5, 1], precisions=["int2", "int4", "int8", "fp"], elastic_conv=False,
        quant_conf={"granularity": "group", "group_size": 32},
    )
    # a small attention decoder: espnet_onnx's exporter needs one (ours decodes CTC only)
    paths = write_toy_experiment(work / "allinone", encoder_conf=conf, n_mels=80,
                                 decoder="transformer")
    extractor = Extractor(paths["config"], paths["model"])
    full = f"d{args.blocks}-w1-fp"
    smallest = f"d{half}-w0.5-int2"
    subs = [full, f"d{args.blocks}-w1-int8", f"d{args.blocks}-w1-int4",
            f"d{args.blocks}-w1-int2", smallest]
    samples = int(args.seconds * 16000)
    SPEECH = (np.random.default_rng(0).standard_normal(samples) * 0.1).astype(np.float32)
    speech_t = torch.from_numpy(SPEECH)[None]
    runners: dict[tuple[int, str, str], object] = {}
    sizes: dict[tuple[str, str], int] = {}
    dirs, kernel_notes = {}, {}
    for sub in subs:
        result = extractor.extract(sub, work / "extracted", verify=False, overwrite=True)
        dirs[sub] = result.directory
        sizes[sub, "model.pth"] = result.disk_bytes
        model, _ = ASRTask.build_model_from_file(
            result.directory / "config.yaml", result.directory / "model.pth", "cpu")
        model.eval()
        out = ensure_exported(result.directory, variants=("exact", "int8"),
                              kernels=args.kernels, log=lambda _m: None)
        meta = json.loads((out / "deploy.json").read_text())
        kernel_notes[sub] = [*meta["kernel_decisions"],
                             "int8 variant: " + meta["variants"]["int8"]["kernels"]]
        q8 = fast.int8_dynamic(model) if sub in (full, smallest) else None
        for threads in threads_list:
            if sub in (full, smallest):
                runners[threads, sub, "torch float"] = _torch_runner(model, speech_t)
                runners[threads, sub, "torch int8"] = _torch_runner(q8, speech_t)
            if sub == smallest:
                runners[threads, sub, "torch front only"] = _front_runner(model, speech_t)
            for variant in ("exact", "int8"):
                asr = OnnxSpeech2Text(out, variant, threads)
                runners[threads, sub, f"ours {variant}"] = lambda a=asr: a(SPEECH)
                sizes[sub, f"ours {variant}"] = meta["variants"][variant]["bytes"]
        log(f"  prepared {sub}")
    peer = "skipped (--no_espnet_onnx)" if args.no_espnet_onnx else \
        _espnet_onnx(dirs[full], work, threads_list, log)
    if isinstance(peer, dict):
        for (quantised, threads), (run, nbytes) in peer.items():
            name = "espnet_onnx quant" if quantised else "espnet_onnx float"
            runners[threads, full, name] = run
            sizes[full, name] = nbytes

    rows = []
    for threads in threads_list:
        torch.set_num_threads(threads)
        timed = _time_round_robin({k: v for k, v in runners.items() if k[0] == threads},
                                  args.repeats)
        base = timed[threads, full, "torch float"][0]
        for (t, sub, name), (best, median) in timed.items():
            rows.append((t, sub, name, sizes.get((sub, name), sizes[sub, "model.pth"]),
                         best / args.seconds, median / args.seconds, base / best))

    print(f"\n{args.blocks} blocks d={args.dim} FFN {args.units}, 80 mels, {args.seconds:.0f} s "
          f"of audio, {args.repeats} interleaved rounds; RTF of the fastest round (median); "
          f"speed-up vs {full} torch float at the same thread count; MB = the file that runs "
          f"(model.pth for torch, .onnx for onnxruntime)")
    print(f"{'threads':>7} {'subsystem':<14} {'runtime':<18} {'MB':>7} {'RTF':>8} "
          f"{'(median)':>9} {'speed-up':>9}")
    for t, sub, name, nbytes, rtf, med, speedup in rows:
        print(f"{t:>7} {sub:<14} {name:<18} {nbytes / 1e6:>7.2f} {rtf:>8.4f} {med:>9.4f} "
              f"{speedup:>8.2f}x")
    if not isinstance(peer, dict):
        print(f"espnet_onnx: {peer}; its published figure instead: {ESPNET_ONNX_PUBLISHED}")
    print("\nkernel choices (ours exact, kernels=" + args.kernels + "):")
    for sub in subs:
        for line in kernel_notes[sub]:
            print(f"  {sub}: {line}")

    print("\ntargets (ratios to torch float, full model, same threads):")
    for t in threads_list:
        got = {(sub, name): s for tt, sub, name, _, _, _, s in rows if tt == t}
        checks = [
            ("full-size int8 >= 2x", max(got.get((f"d{args.blocks}-w1-int8", "ours exact"), 0),
                                         got.get((f"d{args.blocks}-w1-int8", "ours int8"), 0),
                                         got.get((full, "ours int8"), 0)), 2.0),
            ("4-bit >= 2x", max(got.get((f"d{args.blocks}-w1-int4", v), 0)
                                for v in ("ours exact", "ours int8")), 2.0),
            ("smallest subsystem >= 6x", max(got.get((smallest, v), 0)
                                             for v in ("ours exact", "ours int8")), 6.0),
        ]
        for name, value, target in checks:
            print(f"  {t} thread(s): {name}: {value:.2f}x ({'met' if value >= target else 'NOT met'})")
        if isinstance(peer, dict):
            theirs = got[full, "espnet_onnx quant"]
            ours = max(got[full, "ours exact"], got[full, "ours int8"])
            print(f"  {t} thread(s): ours faster than espnet_onnx quantised on {full}: "
                  f"{ours:.2f}x vs {theirs:.2f}x ({'met' if ours > theirs else 'NOT met'})")

    print(f"\nour onnxruntime path in a fresh process (numpy + onnxruntime only), "
          f"{args.seconds:.0f} s utterances, exact variant, {threads_list[-1]} thread(s): "
          "RTF = compute / audio seconds of the whole batch; peak RSS of the process")
    print(f"{'subsystem':<14} {'.onnx MB':>8} {'RTF x1':>8} {'peak MB x1':>10} "
          f"{'RTF x' + str(args.batch):>9} {'peak MB x' + str(args.batch):>12}")
    for sub in subs:
        one = _memory(export_dir_for(dirs[sub]), "exact", threads_list[-1], 1, samples)
        many = _memory(export_dir_for(dirs[sub]), "exact", threads_list[-1], args.batch, samples)
        assert not one["heavy"] and not many["heavy"], (one, many)
        print(f"{sub:<14} {sizes[sub, 'ours exact'] / 1e6:>8.2f} "
              f"{one['seconds'] / args.seconds:>8.4f} {one['peak_kb'] / 1024:>10.1f} "
              f"{many['seconds'] / (args.batch * args.seconds):>9.4f} "
              f"{many['peak_kb'] / 1024:>12.1f}")


if __name__ == "__main__":
    main()
