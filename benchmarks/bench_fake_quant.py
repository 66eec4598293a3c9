"""Training-step cost of weight fake quantization on one Linear, side by side with float.

Times forward + backward of Linear(256 -> 1024) on a batch of 64 x 100 frames
at float and at 2/4/8-bit fake quant (learned scales, per-channel and
group-wise), interleaving the configurations in every repetition so machine
load hits all of them alike, and prints each one's median time and its ratio
to float (the minimum too: on a shared machine it is the less noisy of the
two), plus the quantizer's own forward+backward time without the matmul.
Usage: python benchmarks/bench_fake_quant.py [--reps 15] [--threads N] [--asymmetric]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from espnet_allinone.quant import QuantConfig, WeightFakeQuantizer


def make_step(
    quantizer: WeightFakeQuantizer | None,
    bits: int,
    x: torch.Tensor,
    d_in: int,
    d_out: int,
) -> Callable[[], None]:
    """One forward + backward of a Linear whose weight goes through ``quantizer``."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(d_in, d_out)
    params = list(layer.parameters()) + (
        list(quantizer.parameters()) if quantizer else []
    )

    def step() -> None:
        for p in params:
            p.grad = None
        w = layer.weight if quantizer is None else quantizer(layer.weight, bits)
        F.linear(x, w, layer.bias).square().mean().backward()

    return step


def make_quant_only(quantizer: WeightFakeQuantizer, bits: int, weight: torch.Tensor):
    """Forward + backward of the weight path alone (no matmul)."""
    grad = torch.randn_like(weight)

    def step() -> None:
        weight.grad = None
        quantizer.zero_grad()
        quantizer(weight, bits).backward(grad)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=15, help="interleaved repetitions")
    parser.add_argument("--iters", type=int, default=3, help="steps per timing sample")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads (0: default)"
    )
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--d_in", type=int, default=256)
    parser.add_argument("--d_out", type=int, default=1024)
    parser.add_argument("--group_size", type=int, default=32)
    parser.add_argument("--asymmetric", action="store_true", help="asymmetric grids")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    x = torch.randn(args.batch, args.frames, args.d_in)
    steps: dict[str, Callable[[], None]] = {
        "float": make_step(None, 32, x, args.d_in, args.d_out)
    }
    alone: dict[str, Callable[[], None]] = {}
    weight = torch.randn(args.d_out, args.d_in, requires_grad=True)
    for gran in ("channel", "group"):
        cfg = QuantConfig(
            symmetric=not args.asymmetric,
            granularity=gran,
            group_size=args.group_size,
            learn_scale=True,
        )
        for bits in (2, 4, 8):
            name = f"int{bits} {gran}"
            q = WeightFakeQuantizer(args.d_out, args.d_in, (bits,), cfg)
            steps[name] = make_step(q, bits, x, args.d_in, args.d_out)
            alone[name] = make_quant_only(q, bits, weight)

    times: dict[str, list] = {name: [] for name in steps}
    alone_times: dict[str, list] = {name: [] for name in alone}
    for step in list(steps.values()) + list(alone.values()):  # warm-up, lazy init
        step()
    for _ in range(args.reps):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(args.iters):
                step()
            times[name].append((time.perf_counter() - start) / args.iters)
            if name in alone:
                start = time.perf_counter()
                alone[name]()
                alone_times[name].append(time.perf_counter() - start)

    med0, min0 = statistics.median(times["float"]), min(times["float"])
    print(
        f"Linear({args.d_in}->{args.d_out}), input {args.batch}x{args.frames}, "
        f"forward+backward, {'asymmetric' if args.asymmetric else 'symmetric'}, "
        f"learned scales, {torch.get_num_threads()} threads, "
        f"{args.reps} interleaved reps x {args.iters} steps"
    )
    print(
        f"{'config':<14} {'median ms':>10} {'vs float':>9} {'min ms':>8} {'vs float':>9} "
        f"{'quantizer alone ms':>19}"
    )
    for name, t in times.items():
        med, low = statistics.median(t), min(t)
        own = (
            f"{statistics.median(alone_times[name]) * 1e3:19.2f}"
            if name in alone
            else ""
        )
        print(
            f"{name:<14} {med * 1e3:10.2f} {med / med0:8.3f}x {low * 1e3:8.2f} "
            f"{low / min0:8.3f}x {own}"
        )


if __name__ == "__main__":
    main()
