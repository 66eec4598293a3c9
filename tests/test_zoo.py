"""Model-zoo packing and Hugging Face upload of extracted subsystems."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import pytest
import yaml
from helpers.toy_experiment import shared_toy_experiment

from espnet_allinone.export.extract import Extractor

SUBS = ["d2-w0.5-int2", "d4-w1-fp"]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    from espnet_allinone.bin.pack import main as pack_main

    root = tmp_path_factory.mktemp("zoo")
    paths = shared_toy_experiment()
    extractor = Extractor(paths["config"], paths["model"])
    for sub in SUBS:
        extractor.extract(sub, root / "extracted")
    results = root / "results.json"
    results.write_text(json.dumps([{"subsystem": "d2-w0.5-int2", "wer": 12.5, "cer": 4.0}]))
    assert pack_main(["--extracted_dir", str(root / "extracted"), "--outdir",
                      str(root / "packed"), "--results", str(results),
                      "--repo_id_template", "someone/allinone-{subsystem}"]) == 0
    return root


def test_zip_has_the_espnet_zoo_layout_and_a_model_card(zoo):
    packed = zoo / "packed" / "d2-w0.5-int2.zip"
    with zipfile.ZipFile(packed) as z:
        names = sorted(z.namelist())
        meta = yaml.safe_load(z.read("meta.yaml"))
        card = z.read("README.md").decode()
        config = yaml.safe_load(z.read("exp/d2-w0.5-int2/config.yaml"))
    assert names == sorted([
        "meta.yaml", "README.md", "exp/d2-w0.5-int2/config.yaml",
        "exp/d2-w0.5-int2/model.pth", "exp/d2-w0.5-int2/feats_stats.npz",
        "exp/d2-w0.5-int2/extract_info.yaml",
    ])
    assert meta["files"] == {"asr_model_file": "exp/d2-w0.5-int2/model.pth"}
    assert meta["yaml_files"] == {"asr_train_config": "exp/d2-w0.5-int2/config.yaml"}
    assert config["normalize_conf"]["stats_file"] == "exp/d2-w0.5-int2/feats_stats.npz"
    info = yaml.safe_load((zoo / "extracted" / "d2-w0.5-int2" / "extract_info.yaml").read_text())
    ratio = info["bytes"]["full_float"] / info["bytes"]["model_file"]
    assert "`d2-w0.5-int2`" in card and "12.50%" in card
    assert f"{ratio:.2f}x vs the float full model" in card
    assert f"{info['bytes']['model_file']:,} bytes" in card
    assert "someone/allinone-d2-w0.5-int2" in card and "packed_conformer" in card
    fp_card = zipfile.ZipFile(zoo / "packed" / "d4-w1-fp.zip").read("README.md").decode()
    assert "WER | not measured" in fp_card and "plain ESPnet" in fp_card


def test_pack_errors_are_clear(zoo, capsys):
    from espnet_allinone.bin.pack import main as pack_main

    assert pack_main(["--extracted_dir", str(zoo / "extracted"), "--outdir",
                      str(zoo / "p2"), "--subsystems", "d2-w1-int4"]) == 2
    err = capsys.readouterr().err
    assert "d2-w1-int4 was not extracted" in err and "d2-w0.5-int2, d4-w1-fp" in err
    assert pack_main(["--extracted_dir", str(zoo / "nowhere"), "--outdir", str(zoo / "p2")]) == 2
    assert "extracted directory not found" in capsys.readouterr().err


def test_upload_dry_run_writes_the_exact_folder(zoo):
    from espnet_allinone.bin.upload import main as upload_main

    zips = [str(zoo / "packed" / f"{s}.zip") for s in SUBS]
    assert upload_main(["--packed", *zips, "--repo_id", "me/aio-{subsystem}", "--dry_run",
                        "--workdir", str(zoo / "hf")]) == 0
    for sub in SUBS:
        folder = zoo / "hf" / sub
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        with zipfile.ZipFile(zoo / "packed" / f"{sub}.zip") as z:
            assert files == sorted(z.namelist())
            assert (folder / "meta.yaml").read_bytes() == z.read("meta.yaml")


def test_upload_without_token_or_network_fails_clearly(zoo, monkeypatch, capsys):
    import huggingface_hub.constants as hf_constants

    from espnet_allinone.bin.upload import main as upload_main

    packed = zoo / "packed" / "d4-w1-fp.zip"
    size = packed.stat().st_size
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(zoo / "no-token-here"))
    argv = ["--packed", str(packed), "--repo_id", "me/aio", "--workdir", str(zoo / "hfu")]
    assert upload_main(argv) == 1
    err = capsys.readouterr().err
    assert "no Hugging Face token" in err and "HF_TOKEN" in err and "left in place" in err
    # a token but no reachable Hub (a closed local port): a clear failure, not a traceback
    monkeypatch.setattr(hf_constants, "ENDPOINT", "http://127.0.0.1:9")
    assert upload_main([*argv, "--token", "hf_not_a_real_token"]) == 1
    err = capsys.readouterr().err
    assert "upload to https://huggingface.co/me/aio failed" in err
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    assert upload_main([*argv, "--token", "hf_not_a_real_token"]) == 1
    assert "offline mode" in capsys.readouterr().err
    assert packed.stat().st_size == size  # the packed file is left in place
    assert (zoo / "hfu" / "d4-w1-fp" / "meta.yaml").is_file()


_FRESH_PROCESS = r"""
import json, shutil, sys, tempfile
preloaded = any(m.startswith("espnet_allinone") for m in sys.modules)
from pathlib import Path
import numpy as np
import torch
from espnet2.bin.asr_inference import Speech2Text
from espnet_model_zoo.downloader import ModelDownloader, str_to_hash

root = Path(sys.argv[1])
out = {"preloaded": preloaded}
speech = np.random.default_rng(0).normal(scale=0.1, size=16000).astype("float32")
cache = ModelDownloader().cachedir
for sub in sys.argv[2:]:
    zip_path = (root / "packed" / f"{sub}.zip").absolute()
    s2t = Speech2Text.from_pretrained(str(zip_path), ctc_weight=1.0, beam_size=2)
    hyp = s2t(speech)[0]
    direct = Speech2Text(asr_train_config=root / "extracted" / sub / "config.yaml",
                         asr_model_file=root / "extracted" / sub / "model.pth",
                         ctc_weight=1.0, beam_size=2)
    x = torch.from_numpy(speech)[None]
    n = torch.tensor([x.shape[1]])
    with torch.no_grad():
        a, _ = s2t.asr_model.encode(x, n)
        b, _ = direct.asr_model.encode(x, n)
    # the Hub layout: the dry-run folder, resolved as espnet_model_zoo does after a download
    hub = Path(tempfile.mkdtemp())
    shutil.copytree(root / "hf" / sub, hub / sub)
    files = ModelDownloader._unpack_cache_dir_for_huggingfase(str(hub / sub))
    hub_s2t = Speech2Text(**files, ctc_weight=1.0, beam_size=2)
    with torch.no_grad():
        c, _ = hub_s2t.asr_model.encode(x, n)
    out[sub] = {
        "encoder": type(s2t.asr_model.encoder).__name__,
        "tokens": hyp[2] if isinstance(hyp[2], list) else list(hyp[2]),
        "direct_tokens": list(direct(speech)[0][2]),
        "zip_vs_dir": float((a - b).abs().max()),
        "hub_vs_dir": float((c - b).abs().max()),
    }
    shutil.rmtree(cache / str_to_hash(zip_path), ignore_errors=True)
    shutil.rmtree(hub, ignore_errors=True)
print("RESULT" + json.dumps(out))
"""


def test_from_pretrained_loads_the_zip_in_a_fresh_process(zoo):
    """What a zoo user does: no espnet_allinone import, only ESPnet (the .pth hook registers)."""
    from espnet_allinone.bin.upload import main as upload_main

    zips = [str(zoo / "packed" / f"{s}.zip") for s in SUBS]
    assert upload_main(["--packed", *zips, "--repo_id", "me/{subsystem}", "--dry_run",
                        "--workdir", str(zoo / "hf")]) == 0
    proc = subprocess.run([sys.executable, "-c", _FRESH_PROCESS, str(zoo), *SUBS],
                          capture_output=True, text=True, timeout=600, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT"):])
    assert out["preloaded"] is False
    assert out["d2-w0.5-int2"]["encoder"] == "PackedConformerEncoder"
    assert out["d4-w1-fp"]["encoder"] == "ConformerEncoder"
    for sub in SUBS:
        assert out[sub]["zip_vs_dir"] == 0.0 and out[sub]["hub_vs_dir"] == 0.0
        assert out[sub]["tokens"] == out[sub]["direct_tokens"]
