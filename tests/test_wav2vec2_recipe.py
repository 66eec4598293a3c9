"""Foundation-model configs: written from a checkpoint, then ESPnet's --dry_run.

Each LibriSpeech-100h config in ``conf/foundation/`` is stamped with a tiny stand-in
checkpoint (wav2vec2: a Hugging Face folder, HuBERT: a fairseq ``.pt``, unfolded:
a torchaudio state dict; sizes chosen so the configs' quant group size 128 and
widths fit) by ``python -m espnet_allinone.foundation.conf`` and must pass ESPnet's
own ``--dry_run`` (all in ONE subprocess: importing ``espnet2.tasks.asr`` costs
~19 s). Bad input fails with one line naming the file, writing nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from helpers.foundation_checkpoints import (
    reference_model,
    write_fairseq,
    write_huggingface,
    write_torchaudio,
)

from espnet_allinone.foundation import conf as conf_cli

ROOT = Path(__file__).resolve().parents[1]
CONFS = sorted((ROOT / "conf" / "foundation").glob("train_allinone_*.yaml"))
STAND_IN = {"encoder_embed_dim": 256, "encoder_num_heads": 4, "encoder_ff_interm_features": 256,
            "encoder_num_layers": 12, "extractor_conv_layer_config": [[32, 10, 5], [32, 3, 2]]}

LOOP = r"""
import json, sys
from espnet2.tasks.asr import ASRTask
for name, cmd in json.loads(sys.argv[1]):
    try:
        ASRTask.main(cmd=cmd)
        print("RESULT " + json.dumps([name, "ok", ""]), flush=True)
    except BaseException as e:
        print("RESULT " + json.dumps([name, type(e).__name__, str(e)]), flush=True)
"""


def _stand_in(conf: Path, root: Path) -> Path:
    ref, kw, mask = reference_model(**STAND_IN)
    if "hubert" in conf.name:
        return write_fairseq(ref, kw, mask, root / "hubert_base_ls960.pt", kind="hubert")
    if "unfold" in conf.name:
        return write_torchaudio(ref, kw, root / "wav2vec2.pth", with_config=True)
    return write_huggingface(ref, kw, mask, root / "wav2vec2-base")


def test_conf_dir_has_the_foundation_configs():
    assert {c.name for c in CONFS} == {
        "train_allinone_wav2vec2_librispeech100.yaml",
        "train_allinone_hubert_librispeech100.yaml",
        "train_allinone_unfold_wav2vec2_librispeech100.yaml"}
    from espnet_allinone.encoders.elastic_wav2vec2 import ElasticWav2Vec2Encoder

    for conf in CONFS:
        cfg = yaml.safe_load(conf.read_text())
        assert cfg["encoder"] == "elastic_wav2vec2" and cfg["model"] == "allinone"
        assert cfg["encoder_conf"]["pretrained_path"] is None
        space = ElasticWav2Vec2Encoder.search_space(cfg["encoder_conf"])
        valid = space.resolve(cfg["model_conf"]["valid_subsystems"])
        assert valid[0] == space.largest
        for _, key, _ in cfg["best_model_criterion"]:
            if "_d" in key:
                assert space.validate(key.split("_", 1)[1]) in valid
    stacked = yaml.safe_load((ROOT / "conf" / "foundation" /
                             "train_allinone_wav2vec2_librispeech100.yaml").read_text())["encoder_conf"]
    assert (stacked["depths"], stacked["widths"], stacked["precisions"]) == (
        [6, 9, 12], [0.5, 1.0], ["int2", "int4", "int8", "fp"])


def test_every_foundation_conf_dry_runs_with_a_stand_in_checkpoint(tmp_path):
    (tmp_path / "tokens.txt").write_text("<blank>\n<unk>\na\nb\n<sos/eos>")
    jobs = []
    for conf in CONFS:
        out = tmp_path / conf.stem
        out.mkdir()
        ckpt = _stand_in(conf, out)
        stamped = out / "train.yaml"
        assert conf_cli.main(["--pretrained", str(ckpt), "--config", str(conf),
                              "--output", str(stamped)]) == 0
        enc = yaml.safe_load(stamped.read_text())["encoder_conf"]
        assert enc["pretrained_path"] == str(ckpt.absolute())
        assert (enc["encoder_embed_dim"], enc["encoder_num_layers"]) == (256, 12)
        jobs.append((conf.name, ["--config", str(stamped), "--dry_run", "true", "--ngpu", "0",
                                 "--token_list", str(tmp_path / "tokens.txt"),
                                 "--output_dir", str(out / "exp")]))
    run = subprocess.run([sys.executable, "-c", LOOP, json.dumps(jobs)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False)
    results = {r[0]: r[1:] for r in (json.loads(line[7:]) for line in run.stdout.splitlines()
                                     if line.startswith("RESULT "))}
    assert len(results) == len(jobs), run.stdout[-3000:] + run.stderr[-3000:]
    for conf in CONFS:
        assert results[conf.name] == ["ok", ""], (conf.name, results[conf.name])
        dumped = yaml.safe_load((tmp_path / conf.stem / "exp" / "config.yaml").read_text())
        assert dumped["encoder"] == "elastic_wav2vec2"
        assert dumped["encoder_conf"]["encoder_embed_dim"] == 256  # config alone rebuilds it


def test_conf_tool_refuses_bad_input_and_writes_nothing(tmp_path, capsys):
    base = ROOT / "conf" / "foundation" / "train_allinone_wav2vec2_librispeech100.yaml"
    out = tmp_path / "train.yaml"
    assert conf_cli.main(["--pretrained", str(tmp_path / "nope"), "--config", str(base),
                          "--output", str(out)]) == 2
    assert f"{tmp_path / 'nope'}: no such file or directory" in capsys.readouterr().err
    ref, kw, mask = reference_model(**{**STAND_IN, "encoder_num_heads": 2})
    ckpt = write_huggingface(ref, kw, mask, tmp_path / "hf")  # 2 heads: w0.5 fits
    assert conf_cli.main(["--pretrained", str(ckpt), "--config", str(base),
                          "--output", str(out)]) == 0
    ref, kw, mask = reference_model(**{**STAND_IN, "encoder_num_heads": 1,
                                       "encoder_num_layers": 9})
    bad = write_huggingface(ref, kw, mask, tmp_path / "hf1")
    out2 = tmp_path / "train2.yaml"
    assert conf_cli.main(["--pretrained", str(bad), "--config", str(base),
                          "--output", str(out2)]) == 2
    err = capsys.readouterr().err
    assert f"{base}: its search space does not fit the checkpoint {bad}" in err
    assert "depth 12 outside the model's 1..9 blocks" in err
    assert not out2.exists()


def test_recipe_refuses_a_missing_pretrained_path(tmp_path):
    run = subprocess.run(["bash", "run.sh", "--pretrained", str(tmp_path / "missing.pt"),
                          "--stage", "11"], cwd=ROOT / "egs2" / "librispeech_100" / "allinone1",
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 2
    assert f"--pretrained {tmp_path / 'missing.pt'} does not exist" in run.stderr


def test_kmeans_targets_find_separated_clusters_and_mfcc_frames():
    import torch

    from espnet_allinone.foundation.kmeans_targets import fit_kmeans, mfcc_features

    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.cat([c + 0.1 * torch.randn(50, 2, generator=gen) for c in centres])
    found = fit_kmeans(x, 3)
    assert torch.cdist(centres, found).min(1).values.max() < 0.2
    feats = mfcc_features(torch.randn(16000, generator=gen) * 0.1)
    assert feats.shape == (98, 39)  # 25 ms windows every 10 ms; 13 MFCC + deltas
