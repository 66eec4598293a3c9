"""elastic_wav2vec2 measured side by side with torchaudio's model.

``step``: one fine-tuning step (forward + backward, conv front frozen in both) of
the elastic encoder at full size, float, against torchaudio's ``Wav2Vec2Model``
holding the same weights; the ratio is the elastic machinery's overhead
(target <= 1.05x). Interleaved repeats, median of each.

``sizes``: exact bytes of every subsystem of a wav2vec2-base all-in-one encoder
(the LibriSpeech-100h config's space) against the float encoder: what an
extracted subsystem's encoder stores (packed codes + fp16 scales, float front).

    OMP_NUM_THREADS=1 python benchmarks/bench_wav2vec2.py step --threads 1
    python benchmarks/bench_wav2vec2.py sizes
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import yaml
from torchaudio.models import wav2vec2_model

from espnet_allinone.encoders.elastic_wav2vec2 import ElasticWav2Vec2Encoder
from espnet_allinone.encoders.wav2vec2_family import ARCH_DEFAULTS

ROOT = Path(__file__).resolve().parents[1]
SMALL = {**ARCH_DEFAULTS, "encoder_embed_dim": 384, "encoder_num_heads": 6,
         "encoder_ff_interm_features": 1536, "encoder_num_layers": 4,
         "extractor_conv_layer_config": [[256, 10, 5]] + [[256, 3, 2]] * 4 + [[256, 2, 2]] * 2,
         "encoder_projection_dropout": 0.0, "encoder_attention_dropout": 0.0,
         "encoder_ff_interm_dropout": 0.0, "encoder_dropout": 0.0}


def _time(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def bench_step(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    conf = dict(SMALL)
    enc = ElasticWav2Vec2Encoder(1, **conf, depths=[2, 4], widths=[0.5, 1],
                                 precisions=["int4", "fp"]).train()
    ref = wav2vec2_model(**conf, aux_num_out=None).train()
    own = {k[len("model."):]: v for k, v in enc.state_dict().items()
           if k.startswith("model.") and "quantizer" not in k}
    ref.load_state_dict(own)
    for p in ref.feature_extractor.parameters():
        p.requires_grad_(False)
    wave = torch.randn(args.batch, args.samples) * 0.1
    lens = torch.full((args.batch,), args.samples)

    def elastic_step():  # a new batch each step (no reuse of the frozen front's output)
        out, _, _ = enc(wave.clone(), lens)
        out.pow(2).mean().backward()
        enc.zero_grad(set_to_none=True)

    def ref_step():
        with torch.no_grad():
            feats, flens = ref.feature_extractor(wave.clone(), lens)
        out = ref.encoder(feats, flens)
        out.pow(2).mean().backward()
        ref.zero_grad(set_to_none=True)

    for fn in (elastic_step, ref_step):  # warm-up
        fn()
    e, r = [], []
    for _ in range(args.rounds):
        e += _time(elastic_step, args.repeats)
        r += _time(ref_step, args.repeats)
    me, mr = statistics.median(e), statistics.median(r)
    print(f"threads {torch.get_num_threads()}, batch {args.batch} x {args.samples} samples, "
          f"{conf['encoder_num_layers']} layers d={conf['encoder_embed_dim']}")
    print(f"{'model':<34} {'median step s':>13}")
    print(f"{'torchaudio Wav2Vec2Model':<34} {mr:>13.4f}")
    print(f"{'elastic_wav2vec2 d4-w1-fp':<34} {me:>13.4f}")
    print(f"ratio elastic / torchaudio: {me / mr:.3f}x")


def bench_sizes(args: argparse.Namespace) -> None:
    cfg = yaml.safe_load((ROOT / "conf" / "foundation" / args.config).read_text())
    conf = {k: v for k, v in cfg["encoder_conf"].items() if k != "pretrained_path"}
    enc = ElasticWav2Vec2Encoder(1, **conf)
    full = enc.storage_bytes(enc.space.largest)
    print(f"{args.config}: float encoder {full:,} bytes ({enc.num_params(enc.space.largest):,}"
          " parameters)")
    print(f"{'subsystem':<16} {'params':>12} {'bytes':>13} {'compression':>11}")
    for sub in enc.ordered_subsystems():
        b = enc.storage_bytes(sub)
        print(f"{sub!s:<16} {enc.num_params(sub):>12,} {b:>13,} {full / b:>10.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    step = sub.add_parser("step")
    step.add_argument("--threads", type=int, default=1)
    step.add_argument("--batch", type=int, default=4)
    step.add_argument("--samples", type=int, default=32000)
    step.add_argument("--repeats", type=int, default=3)
    step.add_argument("--rounds", type=int, default=3)
    sizes = sub.add_parser("sizes")
    sizes.add_argument("--config", default="train_allinone_wav2vec2_librispeech100.yaml")
    args = parser.parse_args()
    if args.what == "step":
        torch.set_num_threads(args.threads)
        bench_step(args)
    else:
        bench_sizes(args)


if __name__ == "__main__":
    main()
