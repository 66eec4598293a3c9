"""Whole-model low-bit weights: the front and the output layers at their own precision."""

from __future__ import annotations

import pytest
import torch
import yaml
from helpers.toy_experiment import (
    DEFAULT_ENCODER_CONF,
    shared_toy_experiment,
)

from espnet_allinone.elastic import ElasticConv2d, ElasticLinear
from espnet_allinone.encoders.switching import model_probe_input
from espnet_allinone.export.extract import Extractor
from espnet_allinone.precision import FLOAT_BITS
from espnet_allinone.quant.parts import PartPrecisionError, PartPrecisions

MIXED = {"front": "int8", "output": "int8"}


def test_part_precisions_parse_and_follow_the_blocks() -> None:
    parts = PartPrecisions.from_conf({"front": "int8", "output": "same"})
    assert parts.bits("front", 2) == 8 and parts.bits("output", 2) == 2
    assert parts.bits("front", FLOAT_BITS) == FLOAT_BITS  # a float subsystem is float
    assert parts.quantized_bits("output", (2, 4, 32)) == (2, 4)
    assert parts.quantized_bits("front", (2, 4, 32)) == (8,)
    assert PartPrecisions.from_conf(None).quantized_bits("front", (2, 32)) == ()
    with pytest.raises(PartPrecisionError, match=r"unknown part\(s\) head in part_precisions; "
                       "valid: front, output, decoder"):
        PartPrecisions.from_conf({"head": "int8"})
    with pytest.raises(PartPrecisionError, match=r"part_precisions.front: 'int3' is not a "
                       "precision the quantizers offer; valid: int2, int4, int8, fp, same"):
        PartPrecisions.from_conf({"front": "int3"})


def test_bad_part_precision_stops_the_encoder() -> None:
    from espnet_allinone.encoders.elastic_conformer import ElasticConformerEncoder

    conf = {k: v for k, v in DEFAULT_ENCODER_CONF.items()}
    with pytest.raises(PartPrecisionError, match="int16"):
        ElasticConformerEncoder(20, **{**conf, "part_precisions": {"output": "int16"}})


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    conf = dict(DEFAULT_ENCODER_CONF, part_precisions=MIXED)
    paths = shared_toy_experiment(encoder_conf=conf, model="allinone", decoder="transformer")
    return Extractor(paths["config"], paths["model"])


def test_front_and_output_layers_switch_with_the_subsystem(mixed) -> None:
    enc, model = mixed.encoder, mixed.model
    convs = [m for m in enc.embed.modules() if isinstance(m, ElasticConv2d)]
    assert len(convs) == 2 and any(isinstance(m, ElasticLinear) for m in enc.embed.modules())
    assert set(enc.output_layers) == {"ctc.ctc_lo", "decoder.output_layer"}
    arch = enc.resolve("d2-w0.5-int2")
    assert (arch.front_bits, arch.output_bits, arch.blocks[0].bits) == (8, 8, 2)
    with enc.use_subsystem("d2-w0.5-int2"):
        assert convs[0].bits == 8 and model.ctc.ctc_lo.bits == 8
        w = model.ctc.ctc_lo.active_weight_2d()
        assert len(torch.unique(w[0])) <= 2**8 and not torch.equal(w, model.ctc.ctc_lo.weight)
    with enc.use_subsystem("d4-w1-fp"):
        assert convs[0].bits == FLOAT_BITS and model.ctc.ctc_lo.bits == FLOAT_BITS


def test_training_step_shares_the_front_per_precision(mixed) -> None:
    model = mixed.model
    model.train()
    calls = []
    handle = mixed.encoder.embed.conv.register_forward_hook(lambda *a: calls.append(1))
    speech, lengths = model_probe_input(model, seed=1)
    text = torch.randint(2, 20, (2, 5))
    try:
        loss, _, _ = model(speech, lengths, text, torch.tensor([5, 4]))
    finally:
        handle.remove()
        model.eval()
    paths = model.sampler.draw(int(model.sampler_step) - 1).paths
    fronts = {mixed.encoder.resolve(p).front_bits for p in paths}
    assert torch.isfinite(loss) and len(calls) == len(fronts) == 2  # fp and 8-bit


@pytest.mark.parametrize("sub", ["d2-w0.5-int2", "d4-w1-int4"])
def test_low_bit_front_and_output_round_trip_through_speech2text(mixed, tmp_path, sub) -> None:
    from espnet2.bin.asr_inference import Speech2Text

    result = mixed.extract(sub, tmp_path)
    config = yaml.safe_load((result.directory / "config.yaml").read_text())
    assert config["model"] == "packed" and config["model_conf"]["output_bits"] == 8
    assert config["encoder_conf"]["front_bits"] == 8
    state = torch.load(result.directory / "model.pth")
    for name in ("encoder.embed.conv.0.weight", "encoder.embed.conv.2.weight",
                 "encoder.embed.out.0.weight", "ctc.ctc_lo.weight",
                 "decoder.output_layer.weight"):
        assert f"{name}_codes" in state and name not in state, name
    s2t = Speech2Text(asr_train_config=result.directory / "config.yaml",
                      asr_model_file=result.directory / "model.pth", ctc_weight=0.3)
    speech, lengths = model_probe_input(mixed.model, seed=5)
    enc = mixed.encoder
    with enc.use_subsystem(sub):
        ref, _ = mixed.model.encode(speech, lengths)
        ref_ctc = mixed.model.ctc.log_softmax(ref)
        want = {n: layer.active_weight_2d() for n, layer in enc.output_layers.items()}
        front = enc.embed.conv[0].active_weight_2d().reshape(enc.embed.conv[0].weight.shape)
    out, _ = s2t.asr_model.encode(speech, lengths)
    assert (out - ref).abs().max() <= 1e-5
    assert (s2t.asr_model.ctc.log_softmax(out) - ref_ctc).abs().max() <= 1e-5
    assert torch.equal(s2t.asr_model.ctc.ctc_lo.weight, want["ctc.ctc_lo"])
    assert torch.equal(s2t.asr_model.decoder.output_layer.weight, want["decoder.output_layer"])
    assert torch.equal(s2t.asr_model.encoder.embed.conv[0].weight, front)
    # exact size accounting: 8-bit front and output make the file smaller than float ones
    assert result.exact_bytes < result.full_float_bytes / 3
    assert result.disk_bytes == pytest.approx(result.exact_bytes, rel=0.3)


def test_float_subsystem_of_a_mixed_model_is_a_stock_float_model(mixed, tmp_path) -> None:
    result = mixed.extract("d4-w1-fp", tmp_path)
    config = yaml.safe_load((result.directory / "config.yaml").read_text())
    assert config["model"] == "espnet" and config["encoder"] == "conformer"
    assert "output_bits" not in config["model_conf"]


def test_plugin_free_extraction_writes_the_output_layers_dequantized(mixed, tmp_path) -> None:
    result = mixed.extract("d4-w1-int4", tmp_path, plugin_free=True)
    config = yaml.safe_load((result.directory / "config.yaml").read_text())
    assert config["model"] == "espnet"
    state = torch.load(result.directory / "model.pth")
    with mixed.encoder.use_subsystem("d4-w1-int4"):
        assert torch.equal(state["ctc.ctc_lo.weight"], mixed.model.ctc.ctc_lo.active_weight_2d())
