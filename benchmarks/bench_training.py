"""All-in-one training cost, measured side by side (CPU).

Part 1, step: one K-path all-in-one step (frontend once, K encoder/CTC paths,
one backward) against K single-path steps of the same subsystems: wall time
and the memory the autograd graph holds until backward (bytes of tensors
saved for backward, counted by ``saved_tensors_hooks``), plus process peak
RSS growth measured in a fresh subprocess per variant.

Part 1b, threads: the same K-path step with 1 and 2 intra-op threads (does the
training stage gain from a second core?).

Part 2, run: a real ESPnet training (stats + ``asr_train``) of one all-in-one
model against training each of its subsystems one by one for the same number
of epochs on the synthetic espeak-ng corpus; prints the time ratio and every
subsystem's dev loss under both, and (``--distill``) the all-in-one run again
with self-distillation at each given weight.

    OMP_NUM_THREADS=1 python benchmarks/bench_training.py step
    OMP_NUM_THREADS=1 python benchmarks/bench_training.py run --epochs 8 --batch_size 4 \
        --distill 0.5

On a shared 2-core machine set OMP_NUM_THREADS=1: with the default two
OpenMP threads per process, other processes make tiny ops take milliseconds
(spin-waiting threads) and the timings meaningless.
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]


# --- part 1: one step ----------------------------------------------------------------
def _build_step_model(paths: list[str]):
    """Default-recipe-sized all-in-one model (d=144, 4 blocks) on 40-dim features."""
    from espnet2.asr.ctc import CTC
    from espnet2.layers.utterance_mvn import UtteranceMVN

    from espnet_allinone.encoders.elastic_conformer import ElasticConformerEncoder
    from espnet_allinone.models.allinone import ESPnetAllInOneASRModel

    torch.manual_seed(0)
    enc = ElasticConformerEncoder(
        40, output_size=144, attention_heads=4, linear_units=576, num_blocks=4,
        cnn_module_kernel=15, macaron_style=True, rel_pos_type="latest",
        depths=[2, 4], widths=[0.5, 1.0], precisions=["int2", "int4", "fp"],
        quant_conf={"granularity": "group", "group_size": 36},
        part_precisions={"front": "int8", "output": "int8"},
    )
    tokens = ["<blank>", "<unk>", *"ABCDEFGHIJKLMNOPQRSTUVWXYZ", "<space>", "<sos/eos>"]
    return ESPnetAllInOneASRModel(
        vocab_size=len(tokens), token_list=tokens, frontend=None, specaug=None,
        normalize=UtteranceMVN(), preencoder=None, encoder=enc, postencoder=None,
        decoder=None, ctc=CTC(odim=len(tokens), encoder_output_size=144),
        joint_network=None, ctc_weight=1.0, sampling="explicit", subsystems=paths,
    )


def _batch(n: int = 16, frames: int = 300) -> dict:
    g = torch.Generator().manual_seed(0)
    text = torch.randint(2, 29, (n, 20), generator=g)
    return {"speech": torch.randn(n, frames, 40, generator=g),
            "speech_lengths": torch.full((n,), frames), "text": text,
            "text_lengths": torch.full((n,), 20)}


def _one_step(model, batch) -> tuple[float, int]:
    """(seconds, bytes saved for backward) of forward+backward."""
    seen: dict[tuple, int] = {}

    def pack(t: torch.Tensor):
        if t.device.type == "cpu" and t.numel():
            seen[(t.untyped_storage().data_ptr(), t.dtype)] = t.untyped_storage().nbytes()
        return t

    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _, _ = model(**{k: v.clone() for k, v in batch.items()})
    loss.backward()
    return time.perf_counter() - start, sum(seen.values())


def step_worker(paths: list[str], mode: str, repeat: int) -> dict:
    """Run in a fresh process.

    ``multi`` / ``single``: one K-path step / K single-path steps (same model):
    graph bytes and peak RSS growth. ``time``: both variants interleaved
    ``repeat`` times in this process (so a busy machine slows both alike);
    the minimum of each.
    """
    from espnet_allinone.train.sampling import SubsystemSampler

    batch = _batch()
    model = _build_step_model(paths)
    model.train()
    variants = {
        "multi": [SubsystemSampler(model.space, "explicit", subsystems=paths)],
        "single": [SubsystemSampler(model.space, "explicit", subsystems=[p]) for p in paths],
    }

    def run(samplers) -> tuple[float, int, int]:
        total, graph_max, graph_sum = 0.0, 0, 0
        for sampler in samplers:
            model.sampler = sampler
            t, b = _one_step(model, batch)
            total += t
            graph_max, graph_sum = max(graph_max, b), graph_sum + b
        return total, graph_max, graph_sum

    if mode == "time":
        for samplers in variants.values():
            run(samplers)  # warm-up (lazy quantizer init, allocator)
        times: dict[str, list[float]] = {"multi": [], "single": []}
        for _ in range(repeat):
            for name, samplers in variants.items():
                times[name].append(run(samplers)[0])
        return {name: min(t) for name, t in times.items()}
    run(variants[mode])  # warm-up
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _, graph_max, graph_sum = run(variants[mode])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"graph_bytes": graph_max, "graph_sum_bytes": graph_sum,
            "rss_growth_kb": peak - base_rss, "peak_rss_kb": peak}


def bench_step(args: argparse.Namespace) -> None:
    paths = args.paths.split(",")
    results = {}
    for mode in ("time", "multi", "single"):
        proc = subprocess.run(
            [sys.executable, __file__, "_step_worker", mode, args.paths, str(args.repeat)],
            capture_output=True, text=True, check=True,
        )
        results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    t, m, s = results["time"], results["multi"], results["single"]
    print(f"paths (K={len(paths)}): {', '.join(paths)}; batch 16 x 300 frames x 40 dims")
    print(f"{'':22s}{'time s':>9s}{'graph MB':>10s}{'RSS growth MB':>15s}"
          "   (graph: tensors saved for backward, largest step)")
    for name, label, r in (("multi", "one K-path step", m), ("single", "K single-path steps", s)):
        print(f"{label:22s}{t[name]:9.3f}{r['graph_bytes'] / 2**20:10.1f}"
              f"{r['rss_growth_kb'] / 1024:15.1f}")
    print(f"time: one K-path step / K single steps = {t['multi'] / t['single']:.2f}")
    print(f"graph memory: K-path step / largest single step = "
          f"{m['graph_bytes'] / s['graph_bytes']:.2f}; / sum of the K single steps = "
          f"{m['graph_bytes'] / s['graph_sum_bytes']:.2f} (K = {len(paths)})")


def bench_threads(args: argparse.Namespace) -> None:
    """One K-path training step with 1 and with 2 intra-op threads, interleaved in one
    process (a busy machine slows both alike); the minimum of each."""
    paths = args.paths.split(",")
    batch = _batch()
    model = _build_step_model(paths)
    model.train()
    counts = [int(n) for n in args.threads.split(",")]
    times: dict[int, list[float]] = {n: [] for n in counts}
    for i in range(args.repeat + 1):
        for n in counts:
            torch.set_num_threads(n)
            seconds = _one_step(model, batch)[0]
            if i:  # the first round warms up (lazy quantizer init, allocator)
                times[n].append(seconds)
    print(f"paths (K={len(paths)}): {', '.join(paths)}; batch 16 x 300 frames x 40 dims; "
          f"min of {args.repeat}")
    print(f"{'threads':>8s}{'step s':>9s}{'speed-up':>10s}")
    for n in counts:
        print(f"{n:8d}{min(times[n]):9.3f}{min(times[counts[0]]) / min(times[n]):10.2f}")


# --- part 2: whole runs ---------------------------------------------------------------
def _bench_conf(base: Path, out: Path, **model_conf) -> Path:
    cfg = yaml.safe_load(base.read_text())
    cfg = copy.deepcopy(cfg)
    cfg["model_conf"].update(model_conf)
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


def bench_run(args: argparse.Namespace) -> None:
    from espnet2.tasks.asr import ASRTask

    from espnet_allinone.corpus import CorpusConfig, make_corpus

    sys.path.insert(0, str(ROOT / "tests"))  # tests/helpers
    from helpers import espnet_run as R

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_training_"))
    data = work / "data"
    if not (data / "train" / "wav.scp").exists():
        make_corpus(data, CorpusConfig(num_train=args.num_train, num_dev=args.num_dev,
                                       num_test=1, seed=0), nj=2, log=lambda *_: None)
    tok = R.char_token_list([data / "train" / "text", data / "dev" / "text"], work / "tokens.txt")
    base = Path(args.conf)
    if not (work / "stats" / "train" / "speech_shape").exists():
        ASRTask.main(cmd=R.collect_stats_args(base, data, tok, work / "stats"))
    cfg = yaml.safe_load(base.read_text())
    enc = cfg["encoder_conf"]
    from espnet_allinone.encoders.elastic_conformer import ElasticConformerEncoder

    space = ElasticConformerEncoder.search_space(enc)
    subs = [str(s) for s in reversed(space.ordered())]
    extra = ["--max_epoch", str(args.epochs), "--batch_size", str(args.batch_size),
             "--seed", "0", "--keep_nbest_models", "1", "--num_workers", "0"]

    def train(name: str, **model_conf) -> tuple[float, dict]:
        conf = _bench_conf(base, work / f"{name}.yaml", valid_subsystems=subs, **model_conf)
        exp = work / name
        start = time.perf_counter()
        ASRTask.main(cmd=R.train_args(conf, data, tok, work / "stats", exp, *extra))
        seconds = time.perf_counter() - start
        ckpt = torch.load(exp / "checkpoint.pth", map_location="cpu", weights_only=False)
        torch.save(ckpt["model"], exp / "last.pth")
        losses = R.validation_losses(exp / "config.yaml", exp / "last.pth", data / "dev",
                                     subsystems=subs if not model_conf.get("subsystems")
                                     else model_conf["subsystems"])
        return seconds, losses

    rows = {}
    t_all, loss_all = train("allinone", sampling=args.sampling, num_random=args.num_random,
                            distill_weight=0.0)
    rows["allinone"] = (t_all, loss_all)
    for weight in args.distill:
        rows[f"allinone+kd{weight}"] = train(
            f"allinone_kd{weight}", sampling=args.sampling, num_random=args.num_random,
            distill_weight=weight,
        )
    t_single, loss_single = 0.0, {}
    for sub in ([] if args.no_single else subs):
        t, losses = train(f"single_{sub}", sampling="explicit", subsystems=[sub],
                          distill_weight=0.0)
        t_single += t
        loss_single.update(losses)
    if not args.no_single:
        rows["one by one"] = (t_single, loss_single)

    print(f"\n{len(subs)} subsystems, {args.epochs} epochs, {args.num_train} training utterances,"
          f" sampling {args.sampling} (num_random {args.num_random}); dev loss per subsystem")
    print(f"{'run':22s}{'train s':>9s}" + "".join(f"{s:>15s}" for s in subs))
    for name, (t, losses) in rows.items():
        print(f"{name:22s}{t:9.1f}" + "".join(f"{losses[f'loss_{s}']:15.2f}" for s in subs))
    if not args.no_single:
        print(f"time ratio one-by-one / all-in-one: {t_single / t_all:.2f}")
    (work / "bench_training.json").write_text(json.dumps(
        {k: {"seconds": t, "dev_loss": v} for k, (t, v) in rows.items()}, indent=1))
    print(f"results: {work / 'bench_training.json'}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_step_worker":
        _, _, mode, paths, repeat = sys.argv
        print(json.dumps(step_worker(paths.split(","), mode, int(repeat))))
        return
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("step", help="one K-path step vs K single-path steps")
    p.add_argument("--paths", default="d4-w1-fp,d2-w0.5-int2,d4-w0.5-int4",
                   help="comma-separated subsystems of the default-recipe space")
    p.add_argument("--repeat", type=int, default=5)
    p.set_defaults(func=bench_step)
    t = sub.add_parser("threads", help="one K-path step with 1 vs 2 intra-op threads")
    t.add_argument("--paths", default="d4-w1-fp,d2-w0.5-int2,d4-w0.5-int4")
    t.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    t.add_argument("--repeat", type=int, default=5)
    t.set_defaults(func=bench_threads)
    r = sub.add_parser("run", help="all-in-one training vs one-by-one training")
    r.add_argument("--conf", default=str(ROOT / "benchmarks" / "train_allinone_bench.yaml"))
    r.add_argument("--epochs", type=int, default=3)
    r.add_argument("--num_train", type=int, default=120)
    r.add_argument("--num_dev", type=int, default=20)
    r.add_argument("--batch_size", type=int, default=8)
    r.add_argument("--sampling", default="sandwich")
    r.add_argument("--num_random", type=int, default=1)
    r.add_argument("--distill", type=float, nargs="*", default=[],
                   help="also train the all-in-one model with these distillation weights")
    r.add_argument("--no_single", action="store_true",
                   help="skip training the subsystems one by one (distillation study only)")
    r.add_argument("--workdir", default=None)
    r.set_defaults(func=bench_run)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
