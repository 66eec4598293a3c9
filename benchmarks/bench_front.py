"""The conv2d subsampling front on onnxruntime: float Conv, ConvInteger, im2col + MatMulInteger.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_front.py [--threads 1 --rounds 7]

Why: the float conv2d front alone takes a large share of a small subsystem's
time, and onnxruntime's ``ConvInteger`` is slower than float on the CPUs
measured, so the front capped the speed-up of small subsystems. This times,
side by side in one run, interleaved, on the same 10 s of audio:

    front alone      the Conv2d + ReLU x 2 + Linear of the subsampling (80 mels
                     in, d out) as: float Conv (as exported), ConvInteger
                     (onnxruntime's dynamic int8 of the two Convs), im2col +
                     float MatMul, im2col + DynamicQuantizeLinear + MatMulInteger
                     (both layers), and what ``front auto`` picks per layer
                     (:mod:`espnet_allinone.deploy.onnx_front`); ratio = time /
                     float Conv front time (< 1: faster)
    whole subsystem  the smallest subsystem (d6-w0.5-int2 of a 12-block d=256
                     all-in-one model, front weights 8-bit) on the deploy path
                     (numpy front end, onnxruntime encoder + CTC, greedy) with
                     each of those fronts; RTF and speed-up against PyTorch
                     float of the full model (d12-w1-fp), same thread count

Random weights (speed does not depend on them). Times are the fastest of
``--rounds`` interleaved rounds (median in brackets); on a shared machine
they are noisy, the fastest round the credible one.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as bench_inference: no spinning BLAS

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
FRONTS = ("float Conv", "ConvInteger", "im2col float", "im2col int8", "auto")


class FrontOnly(torch.nn.Module):
    """The subsampling's Conv2d + ReLU stack and its Linear, without the positions."""

    def __init__(self, embed: torch.nn.Module):
        super().__init__()
        self.conv, self.linear = embed.conv, embed.out[0]

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = self.conv(feats.unsqueeze(1))
        b, c, t, f = x.size()
        return self.linear(x.transpose(1, 2).contiguous().view(b, t, c * f))


def _front_convs(path: Path) -> list[str]:
    import onnx

    model = onnx.load(str(path))
    inits = {i.name: len(i.dims) for i in model.graph.initializer}
    return [n.name for n in model.graph.node
            if n.op_type == "Conv" and inits.get(n.input[1]) == 4]


def _variants(src: Path, work: Path, stem: str, threads: int) -> tuple[dict, list[str]]:
    """{front name: .onnx path} made from the float graph ``src``, and auto's decisions."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from espnet_allinone.deploy import onnx_front

    paths = {"float Conv": src}
    paths["ConvInteger"] = work / f"{stem}.convinteger.onnx"
    quantize_dynamic(str(src), str(paths["ConvInteger"]), weight_type=QuantType.QInt8,
                     op_types_to_quantize=["Conv"], nodes_to_quantize=_front_convs(src))
    for name, mode in (("im2col float", "gemm"), ("im2col int8", "int8"), ("auto", "auto")):
        paths[name] = work / f"{stem}.{mode}.onnx"
        report = onnx_front.rewrite_front(src, paths[name], mode, threads)
    return paths, report.decisions


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--blocks", type=int, default=12)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--units", type=int, default=1024)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args()

    import onnxruntime
    from espnet2.tasks.asr import ASRTask

    from espnet_allinone.deploy import onnx_export, onnx_lowbit
    from espnet_allinone.deploy.build import ensure_exported
    from espnet_allinone.deploy.cpu import cpu_features
    from espnet_allinone.deploy.runtime import OnnxSpeech2Text, onnx_session
    from espnet_allinone.export.extract import Extractor

    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(HERE.parent / "tests"))  # tests/helpers
    from bench_inference import _torch_runner, bench_encoder_conf, time_round_robin
    from helpers.toy_experiment import DEFAULT_ENCODER_CONF, write_toy_experiment

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    torch.set_num_threads(args.threads)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_front-"))
    conf = bench_encoder_conf(DEFAULT_ENCODER_CONF, args.dim, args.units, args.blocks)
    conf["part_precisions"] = {"front": "int8", "output": "int8"}  # as the default recipe
    log("building the model ...")
    paths = write_toy_experiment(work / "allinone", encoder_conf=conf, n_mels=80,
                                 model="allinone")
    extractor = Extractor(paths["config"], paths["model"])
    full, smallest = f"d{args.blocks}-w1-fp", f"d{args.blocks // 2}-w0.5-int2"
    dirs = {sub: extractor.extract(sub, work / "extracted", verify=False,
                                   overwrite=True).directory for sub in (full, smallest)}
    models = {}
    for sub, directory in dirs.items():
        models[sub], _ = ASRTask.build_model_from_file(directory / "config.yaml",
                                                       directory / "model.pth", "cpu")
        models[sub].eval()
    samples = int(args.seconds * 16000)
    speech = (np.random.default_rng(0).standard_normal(samples) * 0.1).astype(np.float32)
    model = models[smallest]

    # the front alone, on the features of the audio
    front_onnx = work / "front.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with onnx_export._float_state(model.encoder):  # packed weights read as float
            torch.onnx.export(FrontOnly(model.encoder.embed).eval(), (torch.randn(1, 200, 80),),
                              str(front_onnx), input_names=["feats"], output_names=["y"],
                              dynamic_axes={"feats": {0: "b", 1: "t"}, "y": {0: "b", 1: "t"}},
                              opset_version=17, dynamo=False)
        feats, _ = onnx_export.features(model, torch.from_numpy(speech)[None],
                                        torch.tensor([samples]))
    feats = feats.numpy()
    log("front variants ...")
    front_paths, front_auto = _variants(front_onnx, work, "front", args.threads)
    runners = {}
    for name, path in front_paths.items():
        session = onnx_session(path, args.threads)
        runners["front", name] = lambda s=session: s.run(None, {"feats": feats})

    # the whole smallest subsystem, each front; weights as float initialisers (what the
    # packed file expands to at session start, and what ConvInteger quantizes)
    log("whole-subsystem variants ...")
    out = ensure_exported(dirs[smallest], variants=("exact",), log=lambda _m: None)
    state = torch.load(dirs[smallest] / "model.pth", map_location="cpu", weights_only=True)
    fp32 = onnx_export.export_onnx(model, work / "sub.fp32.onnx", 80)
    sub_float = work / "sub.onnx"
    onnx_lowbit.map_low_bit(state, fp32, sub_float, "auto", args.threads, store="float")
    sub_paths, sub_auto = _variants(sub_float, work, "sub", args.threads)
    for name, path in sub_paths.items():
        asr = OnnxSpeech2Text(out, "exact", args.threads)
        asr.session = onnx_session(path, args.threads)
        runners["sub", name] = lambda a=asr: a(speech)
    runners["torch", full] = _torch_runner(models[full], torch.from_numpy(speech)[None])
    runners["torch", smallest] = _torch_runner(model, torch.from_numpy(speech)[None])

    log(f"timing {len(runners)} runners x {args.rounds} rounds ...")
    timed = time_round_robin(runners, args.rounds)
    base = timed["front", "float Conv"][0]
    torch_full = timed["torch", full][0]
    print(f"\nCPU: {cpu_features()}")
    print(f"onnxruntime {onnxruntime.__version__}; {args.threads} thread(s); {args.seconds:.0f} s "
          f"of audio ({feats.shape[1]} frames x 80 mels); {args.blocks} blocks d={args.dim}; "
          f"fastest of {args.rounds} interleaved rounds (median)")
    print("front ms / float: the front alone against the float Conv front; cap: torch float "
          f"{full} time / front time (no subsystem with this front can be faster than that); "
          f"RTF: the whole {smallest} on the deploy path; speed-up: against torch float {full}")
    print(f"\n{'front':<14} {'front ms':>9} {'(median)':>9} {'/ float':>8} {'cap':>7} "
          f"{'RTF ' + smallest:>20} {'(median)':>9} {'speed-up':>9}")
    for name in FRONTS:
        f_best, f_med = timed["front", name]
        s_best, s_med = timed["sub", name]
        print(f"{name:<14} {f_best * 1e3:>9.1f} {f_med * 1e3:>9.1f} {f_best / base:>7.2f}x "
              f"{torch_full / f_best:>6.1f}x {s_best / args.seconds:>20.4f} "
              f"{s_med / args.seconds:>9.4f} {torch_full / s_best:>8.2f}x")
    for sub in (full, smallest):
        best, med = timed["torch", sub]
        print(f"torch float {sub}: RTF {best / args.seconds:.4f} ({med / args.seconds:.4f})")
    print("\nauto's choices (front alone, then in the subsystem's graph):")
    for line in [*front_auto, *sub_auto]:
        print(f"  {line}")


if __name__ == "__main__":
    main()
