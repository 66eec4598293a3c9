"""``depth_norms: true``: the encoder's final norm keeps its own weights per depth.

A depth's subsystem runs (and trains) its own final-norm weights; extraction
writes them as the model's one ``after_norm``, so ESPnet's own Speech2Text
loads a stock model whose output equals the all-in-one model's, and sizes
count only the active depth's pair.
"""

from __future__ import annotations

import pytest
import torch
from helpers.toy_experiment import (
    DEFAULT_ENCODER_CONF,
    write_toy_experiment,
)

from espnet_allinone.elastic.depth_norm import DepthLayerNorm
from espnet_allinone.encoders.elastic_conformer import ElasticConformerEncoder
from espnet_allinone.encoders.switching import model_probe_input
from espnet_allinone.export.extract import Extractor

CONF = dict(DEFAULT_ENCODER_CONF, precisions=["int4", "fp"], depth_norms=True)


def _encoder(**kw) -> ElasticConformerEncoder:
    torch.manual_seed(0)
    return ElasticConformerEncoder(20, **{**CONF, **kw})


def test_each_depth_runs_its_own_final_norm_weights():
    enc = _encoder()
    assert isinstance(enc.after_norm, DepthLayerNorm) and enc.depth_norm is enc.after_norm
    keys = [k for k in enc.state_dict() if k.startswith("after_norm.")]
    assert keys == ["after_norm.weight", "after_norm.bias", "after_norm.weight_d2",
                    "after_norm.bias_d2"]
    with torch.no_grad():
        enc.after_norm.weight_d2.mul_(3.0)
    x, lengths = torch.randn(2, 60, 20), torch.tensor([60, 44])
    enc.eval()
    for sub, weight in (("d2-w1-fp", enc.after_norm.weight_d2),
                        ("d4-w0.5-int4", enc.after_norm.weight)):
        enc.set_subsystem(sub)
        assert enc.after_norm.depth == int(sub[1])
        out = enc(x, lengths)[0]
        out.sum().backward()
        assert weight.grad is not None and weight.grad.abs().sum() > 0
        other = enc.after_norm.weight if weight is not enc.after_norm.weight \
            else enc.after_norm.weight_d2
        assert other.grad is None or other.grad.abs().sum() == 0
        enc.zero_grad(set_to_none=True)


def test_sizes_count_only_the_active_depths_norm():
    with_norms, without = _encoder(), _encoder(depth_norms=False)
    for sub in ("d2-w0.5-int4", "d4-w1-fp"):
        assert with_norms.num_params(with_norms.resolve(sub)) == \
            without.num_params(without.resolve(sub))
        assert with_norms.storage_bytes(with_norms.resolve(sub)) == \
            without.storage_bytes(without.resolve(sub))


def test_a_post_norm_conformer_is_refused_by_name():
    with pytest.raises(ValueError, match="depth_norms: true needs a final norm after the "
                                         "blocks; this conformer encoder has none"):
        _encoder(normalize_before=False)


@pytest.mark.parametrize("sub", ["d2-w1-fp", "d2-w0.5-int4", "d4-w1-int4"])
@torch.no_grad()
def test_extracted_subsystem_holds_its_depths_norm_and_equals_the_allinone_model(
        tmp_path, sub):
    from espnet2.bin.asr_inference import Speech2Text

    paths = write_toy_experiment(tmp_path / "aio", encoder_conf=CONF)
    extractor = Extractor(paths["config"], paths["model"])
    norm = extractor.encoder.after_norm
    norm.weight_d2.add_(0.5)  # make the depths' weights differ
    result = extractor.extract(sub, tmp_path / "out")
    state = torch.load(result.directory / "model.pth", weights_only=True)
    assert not [k for k in state if "_d2" in k]
    expected = norm.weight_d2 if sub.startswith("d2") else norm.weight
    assert torch.equal(state["encoder.after_norm.weight"], expected)
    s2t = Speech2Text(asr_train_config=result.directory / "config.yaml",
                      asr_model_file=result.directory / "model.pth", ctc_weight=1.0)
    speech, lengths = model_probe_input(extractor.model, seed=4)
    with extractor.encoder.use_subsystem(sub):
        ref, _ = extractor.model.encode(speech, lengths)
    out, _ = s2t.asr_model.encode(speech, lengths)
    assert (out - ref).abs().max() <= 1e-5
