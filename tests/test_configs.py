"""Every training YAML in conf/ passes ESPnet's ``--dry_run``; bad model_conf fails early.

``import espnet2.tasks.asr`` costs ~19 s a process, so all configs are dry-run
in ONE subprocess (``ASRTask.main(cmd=...)`` in a loop), next to one run of the
stock CLI (``python -m espnet2.bin.asr_train``, registration by the .pth hook).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# Tiny models on a shared CPU: one thread per process avoids OpenMP oversubscription.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}
CONFS = sorted((ROOT / "conf").glob("train_allinone_*.yaml"))

BAD = {
    # --model_conf override (YAML, merged into the tiny config's) -> expected message
    "{sampling: sandwhich}": "unknown sampling strategy 'sandwhich'; valid: sandwich, all, random, explicit",
    "{sampling: explicit, subsystems: [d3-w1-fp]}": "subsystem d3-w1-fp is not in this model's search space: depth 3 (valid: 1, 2)",
    "{sampling: random, num_random: 2, distill_weight: 1.0}": "needs a teacher path: the largest subsystem d2-w1-fp",
    "{path_weights: [1.0, 0.5]}": "path_weights has 2 entries but sampling 'sandwich' runs 3 paths per step",
}

LOOP = r"""
import json, sys, traceback
from espnet2.tasks.asr import ASRTask
for name, cmd in json.loads(sys.argv[1]):
    try:
        ASRTask.main(cmd=cmd)
        print("RESULT " + json.dumps([name, "ok", ""]), flush=True)
    except Exception as e:
        print("RESULT " + json.dumps([name, type(e).__name__, str(e)]), flush=True)
"""


def _common(tmp: Path, conf: Path, out: str) -> list[str]:
    cfg = yaml.safe_load(conf.read_text())
    n_mels = cfg.get("frontend_conf", {}).get("n_mels", 80)
    stats = tmp / f"feats_stats_{n_mels}.npz"
    np.savez(stats, count=np.array(100), sum=np.zeros(n_mels), sum_square=np.full(n_mels, 100.0))
    cmd = [
        "--config", str(conf), "--dry_run", "true", "--ngpu", "0",
        "--token_list", str(tmp / "tokens.txt"), "--output_dir", str(tmp / out),
    ]
    if cfg.get("normalize") == "global_mvn":  # the recipe passes the stats file
        cmd += ["--normalize_conf", f"stats_file={stats}"]
    return cmd


def test_conf_dir_has_the_canonical_configs() -> None:
    names = {c.name for c in CONFS}
    assert {"train_allinone_tiny.yaml", "train_allinone_default.yaml",
            "train_allinone_conformer_librispeech100.yaml",
            "train_allinone_conformer_swbd.yaml", "train_allinone_unfold_default.yaml",
            "train_allinone_unfold_conformer_librispeech100.yaml",
            "train_allinone_prune_default.yaml",
            "train_allinone_prune_conformer_librispeech100.yaml"} <= names
    for conf in CONFS:
        cfg = yaml.safe_load(conf.read_text())
        assert cfg["model"] == "allinone", conf.name
        assert cfg["encoder"] == "elastic_conformer", conf.name
        assert cfg["unused_parameters"] is True, conf.name  # DDP: unsampled scales


def test_every_conf_dry_runs(tmp_path: Path) -> None:
    (tmp_path / "tokens.txt").write_text(
        "\n".join(["<blank>", "<unk>", "<space>", *"abcdefghijklmnopqrstuvwxyz", "<sos/eos>"])
    )
    jobs = [(c.name, _common(tmp_path, c, c.stem)) for c in CONFS]
    tiny = ROOT / "conf" / "train_allinone_tiny.yaml"
    for i, (override, _) in enumerate(BAD.items()):
        jobs.append((override, [*_common(tmp_path, tiny, f"bad{i}"), "--model_conf", override]))
    env_py = sys.executable
    stock = subprocess.Popen(
        [env_py, "-m", "espnet2.bin.asr_train", *_common(tmp_path, tiny, "stock_cli")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ONE_THREAD,
    )
    loop = subprocess.run(
        [env_py, "-c", LOOP, json.dumps(jobs)], check=False, cwd=ROOT, capture_output=True,
        text=True, timeout=600, env=ONE_THREAD,
    )
    stock_out, _ = stock.communicate(timeout=600)
    results = {
        r[0]: r[1:] for r in
        (json.loads(line[7:]) for line in loop.stdout.splitlines() if line.startswith("RESULT "))
    }
    assert len(results) == len(jobs), loop.stdout[-3000:] + loop.stderr[-3000:]
    for conf in CONFS:
        assert results[conf.name] == ["ok", ""], (conf.name, results[conf.name])
        dumped = yaml.safe_load((tmp_path / conf.stem / "config.yaml").read_text())
        assert dumped["model"] == "allinone"
        given = yaml.safe_load(conf.read_text())
        assert dumped["model_conf"]["sampling"] == given["model_conf"]["sampling"]
        assert dumped["encoder_conf"] == {**dumped["encoder_conf"], **given["encoder_conf"]}
    for override, message in BAD.items():
        kind, text = results[override]
        assert kind in ("ValueError", "SubsystemError"), (override, kind, text)
        assert message in text, (override, text)
    assert stock.returncode == 0, stock_out[-3000:]
    assert "ESPnetAllInOneASRModel" in stock_out
    assert (tmp_path / "stock_cli" / "config.yaml").exists()


@pytest.mark.parametrize("conf", CONFS, ids=lambda c: c.name)
def test_valid_subsystems_and_criteria_name_space_members(conf: Path) -> None:
    """best_model_criterion keys and valid_subsystems are spelled as space members."""
    from espnet_allinone.encoders.elastic_conformer import ElasticConformerEncoder

    cfg = yaml.safe_load(conf.read_text())
    enc = cfg["encoder_conf"]
    space = ElasticConformerEncoder.search_space(enc)
    valid = space.resolve(cfg["model_conf"]["valid_subsystems"])
    assert valid[0] == space.largest
    for _, key, _ in cfg["best_model_criterion"]:
        if "_d" in key:
            sub = key.split("_", 1)[1]
            assert space.validate(sub) in valid, (key, valid)
