"""MatMulNBits with padded groups against the float MatMul, per Linear shape of the default recipe.

    .venv/bin/python benchmarks/bench_padded_nbits.py [--groups 36,16 --frames 250 --threads 1]
    .venv/bin/python benchmarks/bench_padded_nbits.py --dim 128 --units 512 --groups 32,16

The default recipe (d=144, 4 heads, FFN 576) quantizes in groups of 36, which
onnxruntime's MatMulNBits takes only padded to blocks of 64
(:mod:`espnet_allinone.deploy.onnx_lowbit`): 64/36 = 1.78x the kernel's work
plus the activation padding. For each Linear shape of a Conformer block
(attention projections [T x 144] x [144 x 144], FFN [144 x 576] and
[576 x 144]) at 2, 4 and 8 bits, it times, interleaved in one run:

    float       the float MatMul of the dequantized weight: THE BASELINE (what the
                export writes where the kernel is not chosen)
    g<G>        MatMulNBits of groups of G for each size in ``--groups`` (default
                36 and 16), at accuracy_level 0 (float compute, exact) and 4 (int8
                compute); a group that is not a power of two >= 16 is padded
                ("g36->64"), its activation padding (Reshape, Pad, Reshape)
                included as in the exported graph; g16 is the kernel without the
                padding, for scale

``--dim``/``--units`` time another block's shapes (e.g. d=128 with heads and
groups of 32).

Each timing: the mean of ``--runs`` consecutive runs (default one: a run of
a tenth of a millisecond seldom straddles a preemption on a busy shared CPU,
so the median of many single runs is stable where means of batches are not);
the median of ``--repeats`` interleaved repeats. Printed as ratios to the
float MatMul's time (< 1: faster than float); ``policy="auto"`` keeps the
padded kernel of a layer where its time is at most 1.10x the float one
(fastest of 15 rounds at export).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

BITS = (2, 4, 8)
LEVELS = (0, 4)


def _layer(k_in: int, n_out: int, bits: int, group: int, seed: int):
    """A symmetric integer-grid packed weight (the default recipe's) as onnx_lowbit reads it."""
    from espnet_allinone.deploy import onnx_lowbit
    from espnet_allinone.quant import QuantConfig, WeightFakeQuantizer
    from espnet_allinone.quant import packed_format as pf

    weight = torch.randn(n_out, k_in, generator=torch.Generator().manual_seed(seed)) * 0.05
    conf = QuantConfig(granularity="group", group_size=group, symmetric=True)
    qw = WeightFakeQuantizer(n_out, k_in, (bits,), conf).quantize(weight, bits)
    (q,) = onnx_lowbit.packed_linears(pf.to_state(qw, "w"))
    return q


def _median_times(sessions: dict, feeds: dict, runs: int, repeats: int) -> dict:
    """Median over interleaved repeats of the mean time (ms) of ``runs`` consecutive runs."""
    for key, session in sessions.items():
        session.run(None, feeds[key[0]])
    times = {key: [] for key in sessions}
    for _ in range(repeats):
        for key, session in sessions.items():
            start = time.perf_counter()
            for _ in range(runs):
                session.run(None, feeds[key[0]])
            times[key].append((time.perf_counter() - start) / runs * 1e3)
    return {key: statistics.median(t) for key, t in times.items()}


def block_shapes(dim: int, units: int) -> tuple[tuple[str, int, int], ...]:
    """The Linear shapes (name, K, N) of a Conformer block of width ``dim`` and FFN ``units``."""
    return (("attention", dim, dim), ("FFN in", dim, units), ("FFN out", units, dim))


def _label(group: int) -> str:
    from espnet_allinone.deploy import onnx_lowbit

    block = onnx_lowbit.nbits_block(group)
    return f"g{group}" if block == group else f"g{group}->{block}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--groups", default="36,16",
                   help="comma-separated group sizes, each a column (padded where no power "
                        "of two >= 16); the first decides the 'auto' column")
    p.add_argument("--dim", type=int, default=144, help="attention width (default recipe's)")
    p.add_argument("--units", type=int, default=576, help="FFN units (default recipe's)")
    p.add_argument("--frames", type=int, default=250, help="rows of the activation (10 s)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=1, help="consecutive runs per timing")
    p.add_argument("--repeats", type=int, default=301, help="interleaved repeats (median)")
    args = p.parse_args()
    groups = [int(g) for g in args.groups.split(",")]
    shapes = block_shapes(args.dim, args.units)
    for group in groups:
        bad = [k for _, k, _ in shapes if k % group]
        if bad:
            raise SystemExit(f"--groups: {group} does not divide the input width {bad[0]} "
                             f"(--dim {args.dim}, --units {args.units}); choose divisors")

    import onnxruntime

    from espnet_allinone.deploy import onnx_lowbit
    from espnet_allinone.deploy.cpu import cpu_features

    sessions, feeds = {}, {}
    for s, (_, k_in, n_out) in enumerate(shapes):
        feeds[k_in, n_out] = {"x": np.random.default_rng(s).standard_normal(
            (1, args.frames, k_in), dtype=np.float32)}
        for bits in BITS:
            for group in groups:
                layer = _layer(k_in, n_out, bits, group, seed=s)
                assert layer.nbits_block == onnx_lowbit.nbits_block(group)
                if bits == BITS[0] and group == groups[0]:
                    sessions[(k_in, n_out), "float"] = onnx_lowbit.float_session(
                        layer, args.threads)
                for level in LEVELS:
                    sessions[(k_in, n_out), group, bits, level] = onnx_lowbit.nbits_session(
                        layer, args.threads, level)
    med = _median_times(sessions, feeds, args.runs, args.repeats)

    print(f"CPU: {cpu_features()}")
    print(f"onnxruntime {onnxruntime.__version__}; {args.frames} frames; d={args.dim}, FFN "
          f"{args.units}; groups {', '.join(_label(g) for g in groups)}; {args.threads} "
          f"thread(s); median of {args.repeats} interleaved repeats of {args.runs} runs")
    print("time / float MatMul time of the same shape (< 1: faster than float); "
          f"auto: what policy 'auto' keeps for {_label(groups[0])} at accuracy_level 0 / 4 "
          f"(<= {onnx_lowbit.SLOWER_TOLERANCE:.2f}x)")
    columns = [f"{_label(g)} acc{level}" for g in groups for level in LEVELS]
    print(f"{'layer':<10} {'K x N':>9} {'bits':>4} {'float ms':>8} "
          + " ".join(f"{c:>11}" for c in columns) + f"  {'auto':<13}")
    for name, k_in, n_out in shapes:
        shape = (k_in, n_out)
        base = med[shape, "float"]
        for bits in BITS:
            ratios = [med[shape, g, bits, level] / base for g in groups for level in LEVELS]
            auto = " / ".join("nbits" if r <= onnx_lowbit.SLOWER_TOLERANCE else "float"
                              for r in ratios[:len(LEVELS)])
            print(f"{name:<10} {f'{k_in} x {n_out}':>9} {bits:>4} {base:>8.3f} "
                  + " ".join(f"{r:>10.2f}x" for r in ratios) + f"  {auto:<13}")


if __name__ == "__main__":
    main()
