"""Does pretraining help? A tiny HuBERT pretrained with ESPnet, then all-in-one CTC.

On a synthetic espeak-ng corpus (``espnet_allinone.bin.make_corpus``):

1. first-iteration targets: MFCC k-means (``espnet_allinone.foundation.kmeans_targets``);
2. HuBERT pretraining with ESPnet's own ``espnet2.bin.hubert_train`` (torchaudio HuBERT);
3. all-in-one CTC fine-tuning of ``encoder: elastic_wav2vec2`` from that checkpoint
   (``pretrained_path``), and the same architecture and budget from random init;
4. greedy CTC decoding of the test set in every subsystem, WER per subsystem.

    OMP_NUM_THREADS=1 python benchmarks/foundation_pretrain_finetune.py --work /tmp/w2v \
        --pretrain_epochs 8 --finetune_epochs 10

Sizes are tiny (4 layers, d=128) so it runs on a CPU; the numbers say whether the
pipeline works and whether pretraining moves WER at this budget, not more.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

PY = sys.executable
ARCH = {
    "extractor_mode": "group_norm",
    "extractor_conv_layer_config": [[64, 10, 5]] + [[64, 3, 2]] * 4 + [[64, 2, 2]] * 2,
    "extractor_conv_bias": False,
    "encoder_embed_dim": 128,
    "encoder_projection_dropout": 0.0,
    "encoder_pos_conv_kernel": 16,
    "encoder_pos_conv_groups": 4,
    "encoder_num_layers": 4,
    "encoder_num_heads": 4,
    "encoder_attention_dropout": 0.0,
    "encoder_ff_interm_features": 256,
    "encoder_ff_interm_dropout": 0.0,
    "encoder_dropout": 0.1,
    "encoder_layer_norm_first": False,
    "encoder_layer_drop": 0.0,
}
SPACE = {"depths": [2, 4], "widths": [0.5, 1], "precisions": ["int4", "fp"],
         "quant_conf": {"granularity": "channel", "symmetric": True}}
COMMON = ["--ngpu", "0", "--num_workers", "0", "--use_tensorboard", "false",
          "--use_matplotlib", "false", "--use_wandb", "false"]


def run(cmd: list[str], log: Path) -> None:
    t0 = time.time()
    with log.open("w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=False)
    if proc.returncode:
        raise SystemExit(f"failed ({proc.returncode}): see {log}")
    print(f"  {log.name}: {time.time() - t0:.0f} s", flush=True)


def data_args(train: Path, dev: Path, text_train: Path, text_dev: Path) -> list[str]:
    return ["--train_data_path_and_name_and_type", f"{train}/wav.scp,speech,sound",
            "--train_data_path_and_name_and_type", f"{text_train},text,text",
            "--valid_data_path_and_name_and_type", f"{dev}/wav.scp,speech,sound",
            "--valid_data_path_and_name_and_type", f"{text_dev},text,text"]


def pretrain(work: Path, data: Path, epochs: int) -> Path:
    km = work / "km"
    if not (km / "tokens.txt").exists():
        run([PY, "-m", "espnet_allinone.foundation.kmeans_targets", "--fit", str(data / "train"),
             "--apply", str(data / "train"), str(data / "dev"), "--k", "50", "--outdir", str(km)],
            work / "kmeans.log")
    conf = {
        "input_size": 1, "frontend": None, "normalize": None, "specaug": None,
        "encoder": "torchaudio_hubert", "model": "torchaudio",
        "encoder_conf": {**ARCH, "encoder_layer_drop": 0.0, "mask_prob": 0.65,
                         "mask_length": 5, "final_dim": 64, "feature_grad_mult": 0.1},
        "num_classes": 51, "token_type": "word", "token_list": str(km / "tokens.txt"),
        "use_preprocessor": True, "cleaner": None, "g2p": None,
        "collate_fn_conf": {"label_downsampling": 2, "pad": False, "rand_crop": True},
        "optim": "adam", "optim_conf": {"lr": 0.0005}, "scheduler": "warmuplr",
        "scheduler_conf": {"warmup_steps": 200}, "batch_type": "numel",
        "batch_bins": 800000, "max_epoch": epochs, "grad_clip": 5.0,
        "best_model_criterion": [["valid", "loss", "min"]], "keep_nbest_models": 1,
    }
    cfg = work / "pretrain.yaml"
    cfg.write_text(yaml.safe_dump(conf, sort_keys=False))
    exp, stats = work / "exp_pretrain", work / "stats_pretrain"
    data = data_args(data / "train", data / "dev", km / "train" / "text", km / "dev" / "text")
    if not (stats / "train" / "speech_shape").exists():
        run([PY, "-m", "espnet2.bin.hubert_train", "--config", str(cfg), *COMMON,
             "--collect_stats", "true", "--output_dir", str(stats), *data,
             "--train_shape_file", str(work / "data" / "train" / "wav.scp"),
             "--valid_shape_file", str(work / "data" / "dev" / "wav.scp")],
            work / "pretrain_stats.log")
    if not (exp / "valid.loss.best.pth").exists():
        run([PY, "-m", "espnet2.bin.hubert_train", "--config", str(cfg), *COMMON,
             "--output_dir", str(exp), *data,
             "--train_shape_file", str(stats / "train" / "speech_shape"),
             "--valid_shape_file", str(stats / "valid" / "speech_shape")],
            work / "pretrain.log")
    return exp / "valid.loss.best.pth"


def finetune(work: Path, data: Path, name: str, pretrained: Path | None, epochs: int) -> Path:
    tokens = work / "chars.txt"  # the corpus's own characters (its texts are upper case)
    chars = sorted({c for line in (data / "train" / "text").read_text().splitlines()
                    for c in line.split(maxsplit=1)[1] if c != " "})
    tokens.write_text("\n".join(["<blank>", "<unk>", *chars, "<space>", "<sos/eos>"]) + "\n")
    enc = {**ARCH, **SPACE, "mask_prob": 0.3, "mask_length": 5,
           "freeze_feature_extractor": pretrained is not None}
    if pretrained is not None:
        enc.update(pretrained_path=str(pretrained))
    conf = {
        "input_size": 1, "frontend": None, "normalize": None, "specaug": None,
        "encoder": "elastic_wav2vec2", "encoder_conf": enc, "decoder": None,
        "model": "allinone", "model_conf": {"ctc_weight": 1.0, "sampling": "sandwich",
                                            "num_random": 1,
                                            "valid_subsystems": ["d4-w1-fp", "d2-w0.5-int4"]},
        "token_type": "char", "token_list": str(tokens), "optim": "adam",
        "optim_conf": {"lr": 0.001}, "scheduler": "warmuplr",
        "scheduler_conf": {"warmup_steps": 300}, "batch_type": "numel",
        "batch_bins": 800000, "max_epoch": epochs, "grad_clip": 5.0,
        "best_model_criterion": [["valid", "loss", "min"]], "keep_nbest_models": 1,
        "unused_parameters": True,
    }
    cfg = work / f"finetune_{name}.yaml"
    cfg.write_text(yaml.safe_dump(conf, sort_keys=False))
    exp, stats = work / f"exp_{name}", work / "stats_asr"
    text = [data / "train" / "text", data / "dev" / "text"]
    args = [PY, "-m", "espnet_allinone.bin.asr_train", "--config", str(cfg), *COMMON,
            "--use_preprocessor", "true", "--cleaner", "none", "--g2p", "none",
            *data_args(data / "train", data / "dev", *text)]
    if not (stats / "train" / "speech_shape").exists():
        run([*args, "--collect_stats", "true", "--output_dir", str(stats),
             "--train_shape_file", str(data / "train" / "wav.scp"),
             "--valid_shape_file", str(data / "dev" / "wav.scp")], work / "asr_stats.log")
    if not (exp / "valid.loss.best.pth").exists():
        run([*args, "--output_dir", str(exp),
             "--train_shape_file", str(stats / "train" / "speech_shape"),
             "--valid_shape_file", str(stats / "valid" / "speech_shape")],
            work / f"finetune_{name}.log")
    return exp


def wer_table(exp: Path, test: Path) -> dict[str, float]:
    """WER % of greedy CTC decoding per subsystem (the all-in-one model switched)."""
    import soundfile
    import torch

    from espnet_allinone.export.model_io import load_asr_model

    model, config = load_asr_model(exp / "config.yaml", exp / "valid.loss.best.pth")
    tokens = config["token_list"]
    refs = dict(line.split(maxsplit=1) for line in (test / "text").read_text().splitlines())
    wavs = dict(line.split(maxsplit=1) for line in (test / "wav.scp").read_text().splitlines())
    out = {}
    for sub in model.encoder.space.members():
        errors = words = 0
        with torch.no_grad(), model.encoder.use_subsystem(sub):
            for utt, ref in refs.items():
                wave, _ = soundfile.read(wavs[utt], dtype="float32")
                speech = torch.from_numpy(wave)[None]
                enc, lens = model.encode(speech, torch.tensor([speech.shape[1]]))
                ids = model.ctc.argmax(enc)[0, : lens[0]].tolist()
                chars, prev = [], None
                for i in ids:
                    if i != prev and i != 0:
                        chars.append(tokens[i])
                    prev = i
                hyp = "".join(chars).replace("<space>", " ").split()
                errors += _edit_distance(ref.split(), hyp)
                words += len(ref.split())
        out[str(sub)] = 100.0 * errors / words
    return out


def _edit_distance(a: list[str], b: list[str]) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--num_train", type=int, default=600)
    parser.add_argument("--pretrain_epochs", type=int, default=8)
    parser.add_argument("--finetune_epochs", type=int, default=10)
    parser.add_argument("--which", choices=["both", "pretrained", "random"], default="both")
    args = parser.parse_args()
    work = args.work.absolute()
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    if not (data / "test" / "text").exists():
        run([PY, "-m", "espnet_allinone.bin.make_corpus", "--outdir", str(data), "--num_train",
             str(args.num_train), "--num_dev", "50", "--num_test", "80", "--nj", "1"],
            work / "corpus.log")
    ckpt = pretrain(work, data, args.pretrain_epochs)
    if args.which != "both":  # one fine-tuning run (two can run side by side)
        finetune(work, data, args.which, ckpt if args.which == "pretrained" else None,
                 args.finetune_epochs)
        return
    exps = {"pretrained": finetune(work, data, "pretrained", ckpt, args.finetune_epochs),
            "random": finetune(work, data, "random", None, args.finetune_epochs)}
    table = {name: wer_table(exp, data / "test") for name, exp in exps.items()}
    (work / "results.json").write_text(json.dumps(table, indent=2))
    print(f"{'subsystem':<14} {'WER % pretrained':>17} {'WER % random init':>18}")
    for sub in table["pretrained"]:
        print(f"{sub:<14} {table['pretrained'][sub]:>17.1f} {table['random'][sub]:>18.1f}")


if __name__ == "__main__":
    main()
