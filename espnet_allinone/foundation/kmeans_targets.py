"""First-iteration HuBERT targets: k-means clusters of MFCC frames (Hsu et al. 2021).

``python -m espnet_allinone.foundation.kmeans_targets --fit data/train --apply
data/train data/dev --k 50 --outdir dump/km`` computes 13 MFCCs + deltas + delta-
deltas (Kaldi-compatible, 25 ms windows every 10 ms) for every utterance, fits
k-means (k-means++ start, Lloyd iterations, torch) on the ``--fit`` set and
writes ``<outdir>/<set>/text`` (one cluster id a 10 ms frame, as words) plus
``<outdir>/tokens.txt`` (ids 0..k-1, then ``<unk>``: ``num_classes: k + 1``), the inputs of ESPnet's ``hubert_train`` (``--token_type
word``; use ``collate_fn_conf: {label_downsampling: 2}`` for a 20 ms model).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import soundfile
import torch
import torchaudio


def mfcc_features(wave: torch.Tensor, sample_rate: int = 16000) -> torch.Tensor:
    """(frames, 39): MFCC + deltas + delta-deltas, mean-normalised per utterance."""
    mfcc = torchaudio.compliance.kaldi.mfcc(wave[None] * 32768, sample_frequency=sample_rate,
                                            num_ceps=13, use_energy=False)
    d1 = torchaudio.functional.compute_deltas(mfcc.T)
    d2 = torchaudio.functional.compute_deltas(d1)
    feats = torch.cat([mfcc.T, d1, d2]).T
    return feats - feats.mean(0, keepdim=True)


def fit_kmeans(x: torch.Tensor, k: int, iters: int = 30, seed: int = 0) -> torch.Tensor:
    """Centroids (k, dim) by k-means++ seeding then Lloyd iterations."""
    gen = torch.Generator().manual_seed(seed)
    centroids = x[torch.randint(len(x), (1,), generator=gen)]
    for _ in range(1, k):
        d = torch.cdist(x, centroids).min(1).values ** 2
        centroids = torch.cat([centroids, x[torch.multinomial(d / d.sum(), 1, generator=gen)]])
    for _ in range(iters):
        assign = torch.cdist(x, centroids).argmin(1)
        for j in range(k):
            members = x[assign == j]
            if len(members):
                centroids[j] = members.mean(0)
    return centroids


def _read_scp(data_dir: Path) -> list[tuple[str, str]]:
    lines = (data_dir / "wav.scp").read_text().splitlines()
    return [tuple(line.split(maxsplit=1)) for line in lines if line.strip()]


def _features(data_dir: Path) -> dict[str, torch.Tensor]:
    out = {}
    for utt, path in _read_scp(data_dir):
        wave, sr = soundfile.read(path, dtype="float32")
        out[utt] = mfcc_features(torch.from_numpy(wave), sr)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fit", required=True, type=Path, help="data dir to fit k-means on")
    parser.add_argument("--apply", nargs="+", required=True, type=Path, help="data dirs")
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--max_frames", type=int, default=100000)
    parser.add_argument("--outdir", required=True, type=Path)
    args = parser.parse_args(argv)
    fit = torch.cat(list(_features(args.fit).values()))
    if len(fit) > args.max_frames:
        fit = fit[torch.randperm(len(fit), generator=torch.Generator().manual_seed(0))
                  [: args.max_frames]]
    scale = fit.std(0, keepdim=True)
    centroids = fit_kmeans(fit / scale, args.k)
    args.outdir.mkdir(parents=True, exist_ok=True)
    # ESPnet's token converter needs an <unk> entry (id k, never produced)
    (args.outdir / "tokens.txt").write_text("".join(f"{j}\n" for j in range(args.k)) + "<unk>\n")
    for data_dir in args.apply:
        out = args.outdir / data_dir.name
        out.mkdir(parents=True, exist_ok=True)
        with (out / "text").open("w") as f:
            for utt, feats in _features(data_dir).items():
                labels = torch.cdist(feats / scale, centroids).argmin(1).tolist()
                f.write(f"{utt} {' '.join(map(str, labels))}\n")
        print(f"{out / 'text'}: labels of {data_dir}")


if __name__ == "__main__":
    main()
