"""Drive stock ESPnet ASR training on a Kaldi-style data dir (tests, benchmarks).

Builds the command lines ``espnet2.bin.asr_train`` needs without ``asr.sh``
(char token list, stats collection, training) and evaluates a model's
per-subsystem validation loss exactly as the trainer's validation does
(eval mode, the model's own ``valid_subsystems``, batch-size-weighted mean).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
import yaml


def char_token_list(text_files: Iterable[Path], out: Path) -> Path:
    """ESPnet char tokens of the transcripts: blank, unk, chars (space as <space>), sos/eos."""
    chars: set[str] = set()
    for path in text_files:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            parts = line.split(maxsplit=1)
            if len(parts) == 2:
                chars.update(parts[1])
    tokens = ["<blank>", "<unk>"]
    tokens += sorted("<space>" if c == " " else c for c in chars)
    tokens.append("<sos/eos>")
    out.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return out


def _data_args(data: Path, train: str, valid: str) -> list[str]:
    return [
        "--train_data_path_and_name_and_type", f"{data / train / 'wav.scp'},speech,sound",
        "--train_data_path_and_name_and_type", f"{data / train / 'text'},text,text",
        "--valid_data_path_and_name_and_type", f"{data / valid / 'wav.scp'},speech,sound",
        "--valid_data_path_and_name_and_type", f"{data / valid / 'text'},text,text",
    ]


def collect_stats_args(conf: Path, data: Path, token_list: Path, stats_dir: Path,
                       train: str = "train", valid: str = "dev") -> list[str]:
    """``asr_train --collect_stats true`` arguments (shape files and feature stats)."""
    return [
        # Stats collection needs no normalisation (global_mvn would need the stats
        # this run makes).
        "--collect_stats", "true", "--config", str(conf), "--ngpu", "0", "--normalize", "none",
        "--use_preprocessor", "true", "--token_type", "char", "--token_list", str(token_list),
        "--output_dir", str(stats_dir), "--batch_type", "unsorted", "--batch_size", "4",
        "--num_workers", "0", *_data_args(data, train, valid),
        "--train_shape_file", str(data / train / "wav.scp"),
        "--valid_shape_file", str(data / valid / "wav.scp"),
    ]


def train_args(conf: Path, data: Path, token_list: Path, stats_dir: Path, exp_dir: Path,
               *extra: str, train: str = "train", valid: str = "dev") -> list[str]:
    """``asr_train`` arguments for training with the collected shapes (and stats if global_mvn)."""
    cfg = yaml.safe_load(Path(conf).read_text())
    args = [
        "--config", str(conf), "--ngpu", "0", "--use_preprocessor", "true",
        "--token_type", "char", "--token_list", str(token_list), "--output_dir", str(exp_dir),
        *_data_args(data, train, valid),
        "--train_shape_file", str(stats_dir / "train" / "speech_shape"),
        "--valid_shape_file", str(stats_dir / "valid" / "speech_shape"),
        "--fold_length", "80000",
    ]
    if cfg.get("normalize") == "global_mvn":
        args += ["--normalize_conf", f"stats_file={stats_dir / 'train' / 'feats_stats.npz'}"]
    return [*args, *extra]


def validation_losses(
    config: Path,
    model_file: Path | None,
    data_dir: Path,
    subsystems: Sequence[str] | None = None,
    seed: int = 0,
    batch_size: int = 8,
) -> dict[str, float]:
    """``{"loss_<sub>": value}`` over ``data_dir`` for a trained (or, with no file, a fresh) model."""
    from espnet2.tasks.asr import ASRTask

    torch.manual_seed(seed)
    cfg = yaml.safe_load(Path(config).read_text())
    args = argparse.Namespace(**cfg)
    model = ASRTask.build_model(args)
    if model_file is not None:
        model.load_state_dict(torch.load(model_file, map_location="cpu"))
    if subsystems is not None:
        model.valid_subsystems = model.space.resolve(list(subsystems))
    loader = ASRTask.build_streaming_iterator(
        data_path_and_name_and_type=[
            (str(data_dir / "wav.scp"), "speech", "sound"),
            (str(data_dir / "text"), "text", "text"),
        ],
        preprocess_fn=ASRTask.build_preprocess_fn(args, False),
        collate_fn=ASRTask.build_collate_fn(args, False),
        batch_size=batch_size,
        dtype="float32",
        num_workers=0,
    )
    model.eval()
    sums: dict[str, float] = {}
    total = 0.0
    with torch.no_grad():
        for _keys, batch in loader:
            _, stats, weight = model(**batch)
            w = float(weight)
            total += w
            for sub in model.valid_subsystems:
                key = f"loss_{sub}"
                sums[key] = sums.get(key, 0.0) + float(stats[key]) * w
    return {k: v / total for k, v in sums.items()}
