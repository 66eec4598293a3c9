"""CPU speed of extracted subsystems: PyTorch, espnet_onnx and our onnxruntime path, side by side.

    .venv/bin/python benchmarks/bench_inference.py [--blocks 12 --dim 256 --threads 1,2]
    .venv/bin/python benchmarks/bench_inference.py --config egs2/espeak_synth/allinone1/conf/train_allinone.yaml

Builds a freshly initialised all-in-one Conformer (random weights are fine for
speed): by default of a realistic size (12 blocks, d=256, 4 heads, FFN 1024,
80 mels, depth {6,12} x width {0.5,1} x {int2,int4,int8,fp}, groups of 32);
with ``--config``, the architecture and search space of a training YAML (the
main job's model: 4 blocks, d=144, groups of 36, 40 mels). It extracts the
full float model, the full model at each precision and the smallest
subsystem, and times, on the same 10 s of audio, in one run, interleaved:

    torch float        the extracted model as ESPnet runs it (front end, encoder,
                       CTC, greedy): THE BASELINE, full model, same thread count
    torch int8         dynamic int8 Linear (ESPnet's quantize_asr_model)
    espnet_onnx float  espnet_onnx 0.2.1 export of the same stock conformer model
    espnet_onnx quant  its quantized (dynamic int8) export; both time front end +
                       encoder only (no CTC), so they do less work than ours
    ours exact         espnet_allinone.deploy: numpy front end, onnxruntime encoder
                       + CTC, greedy; low-bit weights as MatMulNBits where measured
                       fast (else a float MatMul of the weight, which the file stores
                       bit-packed and the session expands once at start; the reason
                       printed)
    ours fast          the same with MatMulNBits at accuracy_level 4 (int8 compute
                       in the kernel; not exact), low-bit subsystems only
    ours int8          dynamic int8 for the float MatMuls, and for the
                       convolutions (conv2d front included, ConvInteger) where that
                       is measured faster at export (the choice is printed)

``--elastic_front`` adds the smallest subsystem of the same model built with
``encoder_conf.elastic_front: true`` (runtimes marked EF): its conv2d front
keeps width x the channels, the lever on small subsystems' speed and memory.

The header names the CPU and the int8 features onnxruntime's kernels can use
(AVX2, AVX-VNNI, AVX-512 VNNI, AMX, from /proc/cpuinfo). RTF = compute
seconds / audio seconds (fastest of the interleaved rounds, median in
brackets). Then, per subsystem, the file sizes, session start-up time and
resident memory of our onnxruntime path in a fresh process (numpy +
onnxruntime only): after the session is built, and the peak with one 10 s
utterance and with a batch of 16, for sizing a server; ``--float_files`` adds
the same for the dequantized float file (the storage before bit-packing).
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

from espnet_allinone.deploy.cpu import cpu_features

ESPNET_ONNX_PUBLISHED = "espnet_onnx docs: 12-block Conformer encoder 48.6 ms torch -> 19.0 ms " \
    "quantized + fused onnxruntime (2.56x)"


def bench_encoder_conf(base: dict, dim: int, units: int, blocks: int) -> dict:
    """The benchmarks' elastic Conformer: ``blocks`` blocks of ``dim`` (groups of 32),
    depths {blocks/2, blocks}, widths {0.5, 1}, every precision."""
    return dict(
        base, output_size=dim, linear_units=units, num_blocks=blocks, cnn_module_kernel=15,
        depths=[blocks // 2, blocks], widths=[0.5, 1], precisions=["int2", "int4", "int8", "fp"],
        elastic_conv=False, quant_conf={"granularity": "group", "group_size": 32},
    )


def config_encoder(path: Path) -> tuple[dict, int]:
    """The ``encoder_conf`` and mel count of a training YAML (safe-loaded: a config
    is data), for benchmarking that model's architecture with random weights."""
    import yaml

    with open(path, encoding="utf-8") as f:
        config = yaml.safe_load(f)
    if not isinstance(config, dict) or config.get("encoder") != "elastic_conformer":
        raise SystemExit(f"--config {path}: needs 'encoder: elastic_conformer' "
                         f"(got {config.get('encoder') if isinstance(config, dict) else config!r})")
    n_mels = int((config.get("frontend_conf") or {}).get("n_mels", 80))
    return dict(config.get("encoder_conf") or {}), n_mels


def benched_subsystems(space) -> tuple[str, list[str], str]:
    """(full float model, [it and the full model at each lower precision], smallest):
    the rows every speed-up is measured against, taken from the encoder's space."""
    full = space.largest.with_precision("fp")
    low = [str(full.with_precision(b)) for b in reversed(space.bits) if b != full.bits]
    return str(full), [str(full), *low], str(space.smallest)


def time_round_robin(variants: dict, rounds: int) -> dict:
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
    from espnet_allinone.deploy import ctc, onnx_export

    lengths = torch.tensor([speech.shape[1]])

    def run():
        with torch.no_grad():
            f, fl = onnx_export.features(model, speech, lengths)
            out, _, _ = model.encoder(f, fl)
            ctc.greedy(model.ctc.log_softmax(out)[0].numpy())
    return run


def _front_runner(model, speech: torch.Tensor):
    """Front end + conv2d subsampling only: the part no encoder subsystem makes smaller."""
    from espnet_allinone.deploy import onnx_export

    lengths = torch.tensor([speech.shape[1]])

    def run():
        with torch.no_grad():
            f, _ = onnx_export.features(model, speech, lengths)
            model.encoder.embed(f, None)
    return run


def _espnet_onnx(directory: Path, work: Path, threads_list: list[int], log) -> dict | str:
    """{(quantized, threads): runner} for espnet_onnx's export of ``directory``, or why not."""
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
    for quantized in (False, True):
        peer = OnnxS2T(tag_name="full", cache_dir=work / "espnet_onnx",
                       use_quantized=quantized, providers=["CPUExecutionProvider"])
        enc = peer.encoder
        path = enc.config.quantized_model_path if quantized else enc.config.model_path
        for threads in threads_list:
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as ours
            session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

            def run(enc=enc, session=session):
                enc.encoder = session
                enc(SPEECH[None], np.array([SPEECH.shape[0]]))
            runners[quantized, threads] = (run, Path(path).stat().st_size)
    log(f"  espnet_onnx: exported {directory.name} (float and quantized)")
    return runners


SPEECH = np.zeros(0, dtype=np.float32)

MEMORY_SCRIPT = """
import json, sys, time
import numpy as np
from espnet_allinone.deploy.runtime import OnnxSpeech2Text
directory, variant, threads, batch, samples = sys.argv[1], sys.argv[2], int(sys.argv[3]), \\
    int(sys.argv[4]), int(sys.argv[5])
def status(key):  # VmRSS: now; VmHWM: this process's own peak (ru_maxrss would carry the
    # parent's over fork + exec)
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key))
start = time.perf_counter()
asr = OnnxSpeech2Text(directory, variant, threads)
load_s = time.perf_counter() - start
load_rss, load_peak = status("VmRSS"), status("VmHWM")
rng = np.random.default_rng(0)
wavs = [(rng.standard_normal(samples) * 0.1).astype(np.float32) for _ in range(batch)]
asr.transcribe_batch(wavs)
best = float("inf")
for _ in range(3):
    start = time.perf_counter(); asr.transcribe_batch(wavs); best = min(best, time.perf_counter() - start)
heavy = [m for m in ("torch", "espnet2") if m in sys.modules]
print(json.dumps({"seconds": best, "peak_kb": status("VmHWM"), "load_s": load_s,
                  "load_rss_kb": load_rss, "load_peak_kb": load_peak, "heavy": heavy}))
"""


def _memory(directory: Path, variant: str, threads: int, batch: int, samples: int) -> dict:
    res = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(directory), variant,
                          str(threads), str(batch), str(samples)], check=True,
                         capture_output=True, text=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def _float_file_dir(out: Path, state_path: Path, kernels: str) -> Path:
    """A copy of export directory ``out`` whose model.onnx holds dequantized float weights
    (the storage before bit-packing; same kernels), for the memory comparison."""
    import shutil

    from espnet_allinone.deploy import onnx_export, onnx_lowbit
    from espnet_allinone.deploy.frontend import FILE_NAME as FRONTEND_FILE
    from espnet_allinone.deploy.frontend import LogMelFrontend

    twin = out.with_name(out.name + ".float-weights")
    if twin.exists():
        shutil.rmtree(twin)
    shutil.copytree(out, twin)
    meta = json.loads((out / "deploy.json").read_text())
    source = Path(meta["source"])
    from espnet2.tasks.asr import ASRTask

    model, _ = ASRTask.build_model_from_file(source / "config.yaml", source / "model.pth", "cpu")
    n_mels = LogMelFrontend.load(out / FRONTEND_FILE).n_mels
    fp32 = onnx_export.export_onnx(model.eval(), twin / "model.fp32.onnx", n_mels)
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    onnx_lowbit.map_low_bit(state, fp32, twin / "model.onnx", kernels, store="float")
    fp32.unlink()
    meta["variants"]["exact"]["bytes"] = (twin / "model.onnx").stat().st_size
    (twin / "deploy.json").write_text(json.dumps(meta))
    return twin


def main() -> None:
    global SPEECH
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", type=Path, default=None,
                   help="a training YAML whose model to time (overrides --blocks/--dim/--units)")
    p.add_argument("--blocks", type=int, default=12)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--units", type=int, default=1024)
    p.add_argument("--seconds", type=float, default=10.0, help="audio length")
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    p.add_argument("--batch", type=int, default=16, help="batch size of the memory table")
    p.add_argument("--kernels", default="auto", choices=("auto", "nbits", "float"))
    p.add_argument("--no_espnet_onnx", action="store_true")
    p.add_argument("--float_files", action="store_true",
                   help="memory table: also the dequantized float .onnx of each subsystem")
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--elastic_front", action="store_true",
                   help="also time the smallest subsystem of the same model built with "
                        "encoder_conf.elastic_front: true (runtime rows marked EF)")
    args = p.parse_args()
    threads_list = [int(t) for t in args.threads.split(",")]

    from espnet2.tasks.asr import ASRTask

    from espnet_allinone.deploy import onnx_export
    from espnet_allinone.deploy.build import ensure_exported, export_dir_for
    from espnet_allinone.deploy.runtime import OnnxSpeech2Text
    from espnet_allinone.export.extract import Extractor

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tests/helpers
    from helpers.toy_experiment import DEFAULT_ENCODER_CONF, write_toy_experiment

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    log(f"CPU: {cpu_features()}")

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_inference-"))
    if args.config:
        conf, n_mels = config_encoder(args.config)
    else:
        conf, n_mels = bench_encoder_conf(DEFAULT_ENCODER_CONF, args.dim, args.units,
                                          args.blocks), 80
    # a small attention decoder: espnet_onnx's exporter needs one (ours decodes CTC only)
    # model: allinone attaches the low-bit output layers a config's part_precisions names
    paths = write_toy_experiment(work / "allinone", encoder_conf=conf, n_mels=n_mels,
                                 decoder="transformer", model="allinone")
    extractor = Extractor(paths["config"], paths["model"])
    space = extractor.encoder.space
    full, fulls, smallest = benched_subsystems(space)
    subs = [*fulls, smallest]
    shape = (f"{space.num_blocks} blocks d={space.output_size} FFN {space.linear_units}, "
             f"{n_mels} mels, groups of {conf.get('quant_conf', {}).get('group_size', '-')}")
    samples = int(args.seconds * 16000)
    SPEECH = (np.random.default_rng(0).standard_normal(samples) * 0.1).astype(np.float32)
    speech_t = torch.from_numpy(SPEECH)[None]
    runners: dict[tuple[int, str, str], object] = {}
    sizes: dict[tuple[str, str], int] = {}
    dirs, kernel_notes = {}, {}
    # (subsystem, runtime suffix, extractor): EF rows come from the elastic-front model
    jobs = [(sub, "", extractor) for sub in subs]
    if args.elastic_front:
        ef_paths = write_toy_experiment(work / "allinone_ef", encoder_conf={
            **conf, "elastic_front": True}, n_mels=n_mels, decoder="transformer",
            model="allinone")
        jobs.append((smallest, " EF", Extractor(ef_paths["config"], ef_paths["model"])))
    for sub, suffix, source in jobs:
        result = source.extract(sub, work / f"extracted{suffix.strip()}", verify=False,
                                overwrite=True)
        dirs[sub + suffix] = result.directory
        sizes[sub, "model.pth" + suffix] = result.disk_bytes
        model, _ = ASRTask.build_model_from_file(
            result.directory / "config.yaml", result.directory / "model.pth", "cpu")
        model.eval()
        low_bit = not sub.endswith("-fp")
        out = ensure_exported(result.directory, variants=("exact", "int8", "fast") if low_bit
                              else ("exact", "int8"), kernels=args.kernels, log=lambda _m: None)
        meta = json.loads((out / "deploy.json").read_text())
        kernel_notes[sub + suffix] = [
            *meta["kernel_decisions"],
            *(f"fast variant: {d}" for d in meta["fast_kernel_decisions"] or ()),
            "int8 variant: " + meta["variants"]["int8"]["kernels"]]
        q8 = onnx_export.int8_dynamic(model) if sub in (full, smallest) else None
        for threads in threads_list:
            if sub in (full, smallest):
                runners[threads, sub, "torch float" + suffix] = _torch_runner(model, speech_t)
                runners[threads, sub, "torch int8" + suffix] = _torch_runner(q8, speech_t)
                sizes[sub, "torch float" + suffix] = sizes[sub, "torch int8" + suffix] = \
                    result.disk_bytes
            if sub == smallest:
                runners[threads, sub, "torch front only" + suffix] = _front_runner(model,
                                                                                   speech_t)
                sizes[sub, "torch front only" + suffix] = result.disk_bytes
            for variant in ("exact", "fast", "int8") if low_bit else ("exact", "int8"):
                asr = OnnxSpeech2Text(out, variant, threads)
                runners[threads, sub, f"ours {variant}{suffix}"] = lambda a=asr: a(SPEECH)
                sizes[sub, f"ours {variant}{suffix}"] = meta["variants"][variant]["bytes"]
        log(f"  prepared {sub}{suffix}")
    peer = "skipped (--no_espnet_onnx)" if args.no_espnet_onnx else \
        _espnet_onnx(dirs[full], work, threads_list, log)
    if isinstance(peer, dict):
        for (quantized, threads), (run, nbytes) in peer.items():
            name = "espnet_onnx quant" if quantized else "espnet_onnx float"
            runners[threads, full, name] = run
            sizes[full, name] = nbytes

    rows = []
    for threads in threads_list:
        torch.set_num_threads(threads)
        timed = time_round_robin({k: v for k, v in runners.items() if k[0] == threads},
                                  args.repeats)
        base = timed[threads, full, "torch float"][0]
        for (t, sub, name), (best, median) in timed.items():
            rows.append((t, sub, name, sizes.get((sub, name), sizes[sub, "model.pth"]),
                         best / args.seconds, median / args.seconds, base / best))

    print(f"\nCPU: {cpu_features()}")
    print(f"{shape}, {args.seconds:.0f} s "
          f"of audio, {args.repeats} interleaved rounds; RTF of the fastest round (median); "
          f"speed-up vs {full} torch float at the same thread count; MB = the file that runs "
          f"(model.pth for torch, .onnx for onnxruntime)"
          + ("; EF: the same subsystem of the model built with elastic_front: true (its "
             "front keeps width x channels)" if args.elastic_front else ""))
    print(f"{'threads':>7} {'subsystem':<14} {'runtime':<18} {'MB':>7} {'RTF':>8} "
          f"{'(median)':>9} {'speed-up':>9}")
    for t, sub, name, nbytes, rtf, med, speedup in rows:
        print(f"{t:>7} {sub:<14} {name:<18} {nbytes / 1e6:>7.2f} {rtf:>8.4f} {med:>9.4f} "
              f"{speedup:>8.2f}x")
    if not isinstance(peer, dict):
        print(f"espnet_onnx: {peer}; its published figure instead: {ESPNET_ONNX_PUBLISHED}")
    print("\nkernel choices (ours exact, kernels=" + args.kernels + "):")
    for key, lines in kernel_notes.items():
        for line in lines:
            print(f"  {key}: {line}")

    print("\ntargets (issue 19; ratios to torch float, full model, same threads):")
    for t in threads_list:
        got = {(sub, name): s for tt, sub, name, _, _, _, s in rows if tt == t}

        def best(sub: str, variants=("ours exact", "ours fast", "ours int8"), got=got,
                 suffix: str = "") -> float:
            return max(got.get((sub, v + suffix), 0.0) for v in variants)

        int8 = max([best(sub) for sub in fulls if sub.endswith("-int8")]
                   + [got.get((full, "ours int8"), 0.0)])
        checks = [("full-size int8 >= 2.5x", int8, 2.5)]
        checks += [(f"{sub} >= 2.5x", best(sub), 2.5) for sub in fulls if sub.endswith("-int4")]
        checks.append((f"smallest subsystem {smallest} >= 6x", best(smallest), 6.0))
        if args.elastic_front:
            checks.append((f"smallest subsystem {smallest}, elastic front >= 6x",
                           best(smallest, suffix=" EF"), 6.0))
        for name, value, target in checks:
            print(f"  {t} thread(s): {name}: {value:.2f}x ({'met' if value >= target else 'NOT met'})")
        if isinstance(peer, dict):
            theirs = got[full, "espnet_onnx quant"]
            ours = max(best(full, ("ours exact", "ours int8")), int8)
            print(f"  {t} thread(s): ours >= 1.3x espnet_onnx quantized on {full}: "
                  f"{ours / theirs:.2f}x ({ours:.2f}x vs {theirs:.2f}x; "
                  f"{'met' if ours >= 1.3 * theirs else 'NOT met'})")

    print(f"\nour onnxruntime path in a fresh process (numpy + onnxruntime only), "
          f"{args.seconds:.0f} s utterances, exact variant, {threads_list[-1]} thread(s): "
          "file sizes; session start-up (s) and resident memory after it (RSS MB); peak RSS "
          f"of the process with 1 and {args.batch} utterances; RTF = compute / audio seconds "
          "of the whole batch")
    print(f"{'subsystem':<14} {'weights':<9} {'.pth MB':>7} {'.onnx MB':>8} {'start s':>7} "
          f"{'RSS MB':>7} {'RTF x1':>8} {'peak MB x1':>10} {'RTF x' + str(args.batch):>9} "
          f"{'peak MB x' + str(args.batch):>12}")
    peaks: dict[str, float] = {}
    size_checks: list[str] = []
    for sub, suffix, _ in jobs:
        out = export_dir_for(dirs[sub + suffix])
        rows = [(("packed" if not sub.endswith("-fp") else "float") + suffix, out)]
        if args.float_files and not sub.endswith("-fp"):
            rows.append(("float" + suffix, _float_file_dir(
                out, dirs[sub + suffix] / "model.pth", args.kernels)))
        for storage, directory in rows:
            one = _memory(directory, "exact", threads_list[-1], 1, samples)
            many = _memory(directory, "exact", threads_list[-1], args.batch, samples)
            assert not one["heavy"] and not many["heavy"], (one, many)
            onnx_mb = (directory / "model.onnx").stat().st_size / 1e6
            print(f"{sub:<14} {storage:<9} {sizes[sub, 'model.pth' + suffix] / 1e6:>7.2f} "
                  f"{onnx_mb:>8.2f} {one['load_s']:>7.2f} {one['load_rss_kb'] / 1024:>7.1f} "
                  f"{one['seconds'] / args.seconds:>8.4f} {one['peak_kb'] / 1024:>10.1f} "
                  f"{many['seconds'] / (args.batch * args.seconds):>9.4f} "
                  f"{many['peak_kb'] / 1024:>12.1f}")
            if directory == out:
                peaks[sub + suffix] = one["peak_kb"] / 1024
                if not sub.endswith("-fp"):
                    ratio = onnx_mb * 1e6 / sizes[sub, "model.pth" + suffix]
                    size_checks.append(f"  {sub}{suffix}: .onnx / packed .pth = {ratio:.2f}x "
                                       f"({'met' if ratio <= 1.2 else 'NOT met'}: <= 1.2x)")
    for sub, suffix, _ in jobs:
        if sub.endswith("-int2"):
            ratio = peaks[sub + suffix] / peaks[full]
            size_checks.append(f"  {sub}{suffix}: peak memory / {full}'s = {ratio:.2f}x "
                               f"({'met' if ratio <= 0.5 else 'NOT met'}: <= 0.5x)")
    print("\ntargets (issue 19; files and peak memory with one utterance; the .pth also "
          "holds the small attention decoder espnet_onnx's exporter needs, the .onnx is "
          "encoder + CTC):")
    print("\n".join(size_checks))


if __name__ == "__main__":
    main()
