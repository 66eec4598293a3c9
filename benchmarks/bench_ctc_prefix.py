"""CTC prefix search: ESPnet's per-frame scorer against ``espnet_allinone.decoding.ctc_prefix``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_ctc_prefix.py [--utts 50 --beams 1 4]

Why: the recipe decodes its CTC-only models with ESPnet's CTC prefix search
(beam 1, ctc weight 1; better WER than best path), whose scorer runs a Python
loop over every frame for every output label. This runs ESPnet's batch beam
search (as ``Speech2Text`` builds it for such a model, minus the encoder) on
the same random peaky CTC log-posteriors (``--utts`` utterances of
``--min_frames``..``--max_frames`` frames, ``--vocab`` tokens, the blank on
about 70% of frames) with each scorer, interleaved per utterance in
alternating order so machine load hits both alike, and prints per beam size
the total times, their ratio (espnet / fast), the median per-utterance ratio
and whether every n-best list (token ids) is identical.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

import torch


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="CTC prefix search benchmark: espnet vs fast")
    p.add_argument("--utts", type=int, default=50)
    p.add_argument("--min_frames", type=int, default=100)
    p.add_argument("--max_frames", type=int, default=400)
    p.add_argument("--vocab", type=int, default=30)
    p.add_argument("--beams", type=int, nargs="+", default=[1])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tests/helpers
    from helpers.ctc_search import ctc_prefix_search, peaky_log_posteriors

    logging.disable(logging.WARNING)  # the beam search logs every hypothesis at INFO
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    inputs = [peaky_log_posteriors(int(torch.randint(args.min_frames, args.max_frames + 1, (),
                                                     generator=gen)), args.vocab, gen)
              for _ in range(args.utts)]
    frames = sum(len(x) for x in inputs)
    print(f"{args.utts} utterances, {frames} frames, vocab {args.vocab}, "
          f"{args.threads} thread(s), torch {torch.__version__}")
    ctc_prefix_search(inputs[0][:50], "espnet")  # warm-up (imports, allocator)
    ctc_prefix_search(inputs[0][:50], "fast")
    for beam in args.beams:
        total = {"espnet": 0.0, "fast": 0.0}
        ratios, same, tokens = [], 0, 0
        for k, x in enumerate(inputs):
            seconds, hyps = {}, {}
            for impl in (("espnet", "fast") if k % 2 == 0 else ("fast", "espnet")):
                t0 = time.perf_counter()
                hyps[impl] = [h for h, _ in ctc_prefix_search(x, impl, beam, nbest=beam)]
                seconds[impl] = time.perf_counter() - t0
                total[impl] += seconds[impl]
            ratios.append(seconds["espnet"] / seconds["fast"])
            same += hyps["espnet"] == hyps["fast"]
            tokens += len(hyps["espnet"][0])
        print(f"beam {beam}: espnet {total['espnet']:.2f} s, fast {total['fast']:.2f} s, "
              f"ratio {total['espnet'] / total['fast']:.1f}x (median per utterance "
              f"{statistics.median(ratios):.1f}x), {tokens} tokens in the 1-best, "
              f"hypotheses identical: {same}/{len(inputs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
