"""Files written before the architecture-record redesign still load and compute the same.

``tests/data/legacy_v1`` was written by the previous release (commit 8a2de6e): a
tiny all-in-one checkpoint (2 blocks, d=32, asymmetric int4 group scales,
elastic conv), two directories it extracted (``d1-w0.5-int4`` as a
``packed_conformer`` with the uniform keys ``attention_heads_kept``,
``weight_bits``, ``quantized_modules``; ``d2-w1-fp`` as a stock ``conformer``),
and the CTC log-posteriors that release computed on ``model_probe_input``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from espnet_allinone.encoders.switching import model_probe_input
from espnet_allinone.export.model_io import load_asr_model

LEGACY = Path(__file__).parent / "data" / "legacy_v1"


def _with_local_stats(config: Path, stats: Path) -> None:
    data = yaml.safe_load(config.read_text())
    data["normalize_conf"]["stats_file"] = str(stats)
    config.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.fixture(scope="module")
def legacy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("legacy")
    shutil.copytree(LEGACY, root, dirs_exist_ok=True)
    _with_local_stats(root / "allinone_config.yaml", root / "feats_stats.npz")
    for sub in ("d1-w0.5-int4", "d2-w1-fp"):
        _with_local_stats(root / "extracted" / sub / "config.yaml",
                          root / "extracted" / sub / "feats_stats.npz")
    return root


@torch.no_grad()
def test_an_old_allinone_checkpoint_loads_and_computes_the_same(legacy):
    model, _ = load_asr_model(legacy / "allinone_config.yaml", legacy / "allinone_model.pth")
    reference = torch.load(legacy / "reference_ctc.pt", weights_only=True)
    speech, lengths = model_probe_input(model)
    for sub, want in reference.items():
        with model.encoder.use_subsystem(sub):
            enc, _ = model.encode(speech, lengths)
        assert (model.ctc.log_softmax(enc) - want).abs().max() <= 1e-5, sub


@pytest.mark.parametrize("sub", ["d1-w0.5-int4", "d2-w1-fp"])
@torch.no_grad()
def test_old_extracted_directories_load_in_speech2text(legacy, sub):
    from espnet2.bin.asr_inference import Speech2Text

    directory = legacy / "extracted" / sub
    s2t = Speech2Text(asr_train_config=directory / "config.yaml",
                      asr_model_file=directory / "model.pth", ctc_weight=1.0)
    speech, lengths = model_probe_input(s2t.asr_model)
    enc, _ = s2t.asr_model.encode(speech, lengths)
    want = torch.load(legacy / "reference_ctc.pt", weights_only=True)[sub]
    assert (s2t.asr_model.ctc.log_softmax(enc) - want).abs().max() <= 1e-5
