"""Training-step cost of ElasticConformerEncoder, side by side with ESPnet's.

One training step = forward + backward of the encoder on a random batch.
Variants, timed interleaved (one step of each per repetition, in a rotating
order, so machine load hits all alike), median over repetitions:

* stock:        ESPnet's ConformerEncoder
* elastic-fp:   ElasticConformerEncoder (space with int2/int4/fp) at its
                largest float subsystem -> target <= 1.05x stock
* elastic-int4: the same model at full size, 4-bit fake quant -> target <= 1.2x elastic-fp
* elastic-int2: 2-bit -> target <= 1.2x elastic-fp

Usage: python benchmarks/bench_encoder.py [--reps 20] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from espnet2.asr.encoder.conformer_encoder import ConformerEncoder

from espnet_allinone.encoders.elastic_conformer import ElasticConformerEncoder


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="encoder training-step benchmark")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=400)
    p.add_argument("--input_size", type=int, default=80)
    p.add_argument("--output_size", type=int, default=256)
    p.add_argument("--attention_heads", type=int, default=4)
    p.add_argument("--linear_units", type=int, default=1024)
    p.add_argument("--num_blocks", type=int, default=6)
    p.add_argument("--cnn_module_kernel", type=int, default=15)
    p.add_argument("--granularity", default="channel", help="quantizer scales: tensor|channel|group")
    p.add_argument("--group_size", type=int, default=32)
    p.add_argument(
        "--variants", default="stock,elastic-fp,elastic-int4,elastic-int2",
        help="comma-separated subset to time",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--threads", type=int, default=1,
        help="torch threads (0: torch default); 1 keeps figures stable on a shared machine",
    )
    return p


def main(cmd=None) -> None:
    args = get_parser().parse_args(cmd)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    conf = {
        "output_size": args.output_size,
        "attention_heads": args.attention_heads,
        "linear_units": args.linear_units,
        "num_blocks": args.num_blocks,
        "cnn_module_kernel": args.cnn_module_kernel,
        "rel_pos_type": "latest",
        "macaron_style": True,
        "input_layer": "conv2d",
    }
    torch.manual_seed(0)
    stock = ConformerEncoder(args.input_size, **conf).to(device).train()
    torch.manual_seed(0)
    elastic = ElasticConformerEncoder(
        args.input_size, **conf,
        depths=[args.num_blocks // 2, args.num_blocks], widths=[0.5, 1],
        precisions=["int2", "int4", "fp"],
        quant_conf={"granularity": args.granularity, "group_size": args.group_size},
    ).to(device).train()
    top = elastic.space.largest
    variants = {
        "stock": (stock, None),
        "elastic-fp": (elastic, f"d{top.depth}-w1-fp"),
        "elastic-int4": (elastic, f"d{top.depth}-w1-int4"),
        "elastic-int2": (elastic, f"d{top.depth}-w1-int2"),
    }
    wanted = args.variants.split(",")
    unknown = [v for v in wanted if v not in variants]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; valid: {', '.join(variants)}")
    variants = {name: variants[name] for name in wanted}
    torch.manual_seed(1)
    xs = torch.randn(args.batch, args.frames, args.input_size, device=device)
    lens = torch.full((args.batch,), args.frames, dtype=torch.long, device=device)

    def step(model, sub) -> float:
        if sub is not None:
            model.set_subsystem(sub)
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = model(xs, lens)[0]
        out.float().pow(2).mean().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for rep in range(args.warmup + args.reps):
        shift = rep % len(names)  # rotate the order so no variant always runs first
        for name in names[shift:] + names[:shift]:
            model, sub = variants[name]
            dt = step(model, sub)
            if rep >= args.warmup:
                times[name].append(dt)
    med = {name: statistics.median(ts) for name, ts in times.items()}

    print(f"encoder training step (forward+backward), device {device}, threads "
          f"{torch.get_num_threads()}, batch {args.batch} x {args.frames} frames, "
          f"d_model {args.output_size}, {args.num_blocks} blocks, FFN {args.linear_units}, "
          f"quant {args.granularity}; median of {args.reps} interleaved reps")
    rows = [
        ("elastic-fp vs stock", "elastic-fp", "stock", 1.05),
        ("elastic-int4 vs elastic-fp", "elastic-int4", "elastic-fp", 1.2),
        ("elastic-int2 vs elastic-fp", "elastic-int2", "elastic-fp", 1.2),
    ]
    print(f"{'variant':<14}{'median ms':>11}")
    for name, value in med.items():
        print(f"{name:<14}{value * 1e3:>11.1f}")
    print(f"{'comparison':<28}{'ratio':>8}{'target':>9}  ok")
    for label, a, b, target in rows:
        if a not in med or b not in med:
            continue
        ratio = med[a] / med[b]
        print(f"{label:<28}{ratio:>8.3f}{'<= ' + str(target):>9}  {'yes' if ratio <= target else 'NO'}")


if __name__ == "__main__":
    main()
