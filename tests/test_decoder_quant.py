"""Hybrid CTC/attention models: the attention decoder's blocks at the subsystem's bits.

``part_precisions: {decoder: same}`` fake-quantizes every Linear of the
decoder's blocks at the active subsystem's precision in training (float in a
float subsystem), extraction stores them bit-packed (``model: packed``,
``decoder_bits``), stock ``Speech2Text`` decodes the extracted model exactly as
the all-in-one model with that subsystem, and sizes count them at their bits.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import yaml
from helpers.toy_experiment import DEFAULT_ENCODER_CONF, shared_toy_experiment
from torch import nn

from espnet_allinone.arch import ArchError, SubnetArch
from espnet_allinone.elastic import ElasticLinear
from espnet_allinone.encoders.switching import model_probe_input
from espnet_allinone.export.extract import Extractor
from espnet_allinone.models.packed import DecoderPartError, decoder_layers
from espnet_allinone.precision import FLOAT_BITS
from espnet_allinone.quant.parts import PartPrecisionError, PartPrecisions
from espnet_allinone.search.records import build_arch, uniform_record
from espnet_allinone.subsystem import Subsystem

DECODER_SAME = dict(DEFAULT_ENCODER_CONF, part_precisions={"decoder": "same"})
LOW_BIT = ["d4-w1-int4", "d2-w0.5-int2"]


def _extractor(encoder_conf: dict) -> Extractor:
    paths = shared_toy_experiment(encoder_conf=encoder_conf, model="allinone",
                                  decoder="transformer")
    return Extractor(paths["config"], paths["model"])


@pytest.fixture(scope="module")
def quantized() -> Extractor:
    return _extractor(DECODER_SAME)


@pytest.fixture(scope="module")
def float_decoder() -> Extractor:
    return _extractor(DEFAULT_ENCODER_CONF)


@pytest.fixture(scope="module")
def extracted(quantized, float_decoder, tmp_path_factory):
    root = tmp_path_factory.mktemp("decoder_quant")
    return {(kind, sub): ex.extract(sub, root / kind)
            for kind, ex in (("quantized", quantized), ("float", float_decoder))
            for sub in LOW_BIT}


def test_decoder_part_parses_and_a_bad_value_is_named() -> None:
    parts = PartPrecisions.from_conf({"decoder": "same"})
    assert parts.bits("decoder", 2) == 2 and parts.bits("decoder", FLOAT_BITS) == FLOAT_BITS
    assert PartPrecisions.from_conf({"decoder": "int8"}).bits("decoder", 2) == 8
    assert PartPrecisions.from_conf(None).decoder == FLOAT_BITS  # old configs: float
    with pytest.raises(PartPrecisionError, match=r"part_precisions.decoder: 'int3' is not a "
                       "precision the quantizers offer; valid: int2, int4, int8, fp, same"):
        PartPrecisions.from_conf({"decoder": "int3"})
    from espnet_allinone.encoders.elastic_conformer import ElasticConformerEncoder

    with pytest.raises(PartPrecisionError, match="int3"):
        ElasticConformerEncoder(20, **{**DEFAULT_ENCODER_CONF,
                                       "part_precisions": {"decoder": "int3"}})


def test_decoder_without_transformer_blocks_is_refused_by_name() -> None:
    model = nn.Module()
    model.decoder = nn.LSTM(4, 4)
    with pytest.raises(DecoderPartError, match="decoder LSTM has none"):
        decoder_layers(model)
    assert decoder_layers(nn.Module()) == {}  # CTC-only: nothing to quantize


def test_decoder_linears_are_fake_quantized_at_the_subsystem_bits(quantized) -> None:
    enc, model = quantized.encoder, quantized.model
    layers = decoder_layers(model)
    assert len(layers) == 10 and set(enc.decoder_layers) == set(layers)  # 4 + 4 attn, 2 ffn
    assert all(isinstance(m, ElasticLinear) for m in layers.values())
    assert enc.resolve("d2-w0.5-int2").decoder_bits == 2
    assert enc.resolve("d4-w1-fp").decoder_bits == FLOAT_BITS
    for sub, bits in (("d2-w0.5-int2", 2), ("d4-w1-int4", 4), ("d4-w0.5-int8", 8)):
        with enc.use_subsystem(sub):
            for name, layer in layers.items():
                assert layer.bits == bits, name
                w = layer.active_weight_2d()
                assert w.shape == layer.weight.shape  # full width: only precision is elastic
                qw = layer.weight_quantizer.quantize(layer.weight, bits)
                assert torch.equal(qw.dequantize(), w), name  # on the grid
                q = qw.codes.float()
                assert q.min() >= -(2 ** (bits - 1)) and q.max() <= 2 ** (bits - 1) - 1
                assert not torch.equal(w, layer.weight)
    with enc.use_subsystem("d4-w1-fp"):
        for layer in layers.values():
            assert layer.bits == FLOAT_BITS and torch.equal(layer.active_weight_2d(),
                                                            layer.weight)


def test_decoder_forward_uses_the_quantized_weights(quantized) -> None:
    enc, model = quantized.encoder, quantized.model
    speech, lengths = model_probe_input(model, seed=3)
    tokens = torch.randint(2, 20, (2, 4))
    with torch.no_grad(), enc.use_subsystem("d2-w0.5-int2"):
        hs, hlens = model.encode(speech, lengths)
        out, _ = model.decoder(hs, hlens, tokens, torch.tensor([4, 3]))
        weights = {n: m.active_weight_2d().clone() for n, m in enc.decoder_layers.items()}
    with torch.no_grad(), enc.use_subsystem("d4-w1-fp"):
        saved = {n: m.weight.clone() for n, m in enc.decoder_layers.items()}
        try:
            for n, m in enc.decoder_layers.items():
                m.weight.copy_(weights[n])
            float_out, _ = model.decoder(hs, hlens, tokens, torch.tensor([4, 3]))
        finally:
            for n, m in enc.decoder_layers.items():
                m.weight.copy_(saved[n])
    assert torch.allclose(out, float_out, atol=1e-6)


def test_training_step_learns_the_decoder_scales(quantized) -> None:
    model = copy.deepcopy(quantized.model)  # training mode moves BatchNorm statistics
    model.train()
    speech, lengths = model_probe_input(model, seed=1)
    text = torch.randint(2, 20, (2, 5))
    try:
        loss, _, _ = model(speech, lengths, text, torch.tensor([5, 4]))
        loss.backward()
    finally:
        model.eval()
    grads = [m.weight_quantizer.scale_int2.grad for m in model.encoder.decoder_layers.values()]
    # sandwich sampling runs the smallest (2-bit) path every step
    assert torch.isfinite(loss) and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_mixed_records_follow_the_parts_precision(quantized) -> None:
    enc = quantized.encoder
    arch = build_arch(enc, uniform_record(enc.space, Subsystem.parse("d2-w0.5-int2")))
    assert arch.decoder_bits == 2
    assert SubnetArch.from_dict(arch.to_dict()) == arch
    assert "decoder_bits" not in enc.resolve("d4-w1-fp").to_dict()  # old fingerprints hold


@pytest.mark.parametrize("sub", LOW_BIT)
def test_extracted_decoder_is_bit_packed_and_smaller(quantized, extracted, sub) -> None:
    result, plain = extracted["quantized", sub], extracted["float", sub]
    bits = int(sub.rsplit("int", 1)[1])
    config = yaml.safe_load((result.directory / "config.yaml").read_text())
    assert config["model"] == "packed" and config["model_conf"]["decoder_bits"] == bits
    assert "output_bits" not in config["model_conf"]  # the output layers stay float here
    state = torch.load(result.directory / "model.pth", weights_only=True)
    names = list(quantized.encoder.decoder_layers)
    for name in names:
        assert f"{name}.weight_codes" in state and f"{name}.weight" not in state, name
        assert int(state[f"{name}.weight_bits"]) == bits
    plain_state = torch.load(plain.directory / "model.pth", weights_only=True)
    assert all(f"{n}.weight" in plain_state for n in names)
    # exact sizes: the decoder weights at their packed bits instead of 4 bytes a value
    with quantized.encoder.use_subsystem(sub):
        saved = sum(4 * m.weight.numel() - m.weight_quantizer.storage_bits(
            *m.weight.shape, bits) // 8 for m in quantized.encoder.decoder_layers.values())
    assert plain.exact_bytes - result.exact_bytes == saved
    assert quantized.exact_bytes(quantized.encoder.resolve(sub)) == result.exact_bytes
    assert plain.disk_bytes - result.disk_bytes > 0.8 * saved
    assert result.compression > plain.compression
    info = yaml.safe_load((result.directory / "extract_info.yaml").read_text())
    assert info["bytes"]["exact"] == result.exact_bytes


@pytest.mark.parametrize("sub", LOW_BIT)
def test_speech2text_joint_decoding_equals_the_allinone_model(quantized, extracted,
                                                              sub) -> None:
    from espnet2.bin.asr_inference import Speech2Text

    result = extracted["quantized", sub]
    options = {"ctc_weight": 0.3, "beam_size": 3, "nbest": 2, "maxlenratio": 0.0,
               "device": "cpu"}
    s2t = Speech2Text(asr_train_config=result.directory / "config.yaml",
                      asr_model_file=result.directory / "model.pth", **options)
    ref_s2t = Speech2Text(asr_train_config=quantized.config_path,
                          asr_model_file=quantized.model_path, **options)
    speech, lengths = model_probe_input(quantized.model, seed=5)
    enc = ref_s2t.asr_model.encoder
    for name, layer in enc.decoder_layers.items():  # the loaded packed weights are exact
        with enc.use_subsystem(sub):
            want = layer.active_weight_2d()
        assert torch.equal(s2t.asr_model.get_submodule(name).weight, want), name
    tokens = torch.randint(2, 20, (2, 6))
    with torch.no_grad(), enc.use_subsystem(sub):
        ref_hs, ref_lens = ref_s2t.asr_model.encode(speech, lengths)
        ref_dec, _ = ref_s2t.asr_model.decoder(ref_hs, ref_lens, tokens, torch.tensor([6, 5]))
        refs = [ref_s2t(speech[i, : lengths[i]]) for i in range(2)]
    with torch.no_grad():
        hs, hlens = s2t.asr_model.encode(speech, lengths)
        dec, _ = s2t.asr_model.decoder(hs, hlens, tokens, torch.tensor([6, 5]))
        outs = [s2t(speech[i, : lengths[i]]) for i in range(2)]
    assert (dec - ref_dec).abs().max() <= 1e-5
    for out, ref in zip(outs, refs):
        assert [(text, tok) for text, tok, _, _ in out] == [(t, k) for t, k, _, _ in ref]
        for (*_, hyp), (*_, ref_hyp) in zip(out, ref):
            assert torch.equal(hyp.yseq, ref_hyp.yseq)
            assert abs(float(hyp.score) - float(ref_hyp.score)) <= 1e-4


def test_plugin_free_writes_the_decoder_dequantized_on_its_grid(quantized, tmp_path) -> None:
    result = quantized.extract("d2-w1-int2", tmp_path, plugin_free=True)
    config = yaml.safe_load((result.directory / "config.yaml").read_text())
    assert config["model"] == "espnet" and "decoder_bits" not in config["model_conf"]
    state = torch.load(result.directory / "model.pth", weights_only=True)
    with quantized.encoder.use_subsystem("d2-w1-int2"):
        for name, layer in quantized.encoder.decoder_layers.items():
            assert torch.equal(state[f"{name}.weight"], layer.active_weight_2d()), name


def test_config_without_the_decoder_part_is_unchanged(float_decoder, extracted) -> None:
    enc, model = float_decoder.encoder, float_decoder.model
    assert enc.decoder_layers == {}
    assert all(type(m) is nn.Linear for m in decoder_layers(model).values())
    assert not any("decoder.decoders" in k and "quantizer" in k for k in model.state_dict())
    assert enc.resolve("d2-w0.5-int2").decoder_bits == FLOAT_BITS
    result = extracted["float", "d2-w0.5-int2"]
    config = yaml.safe_load((result.directory / "config.yaml").read_text())
    assert config["model"] == "espnet" and "decoder_bits" not in config["model_conf"]
    old = enc.resolve("d2-w0.5-int2").to_dict()
    assert "decoder_bits" not in old and SubnetArch.from_dict(old).decoder_bits == FLOAT_BITS
    with pytest.raises(ArchError, match="decoder blocks at 2 bits, but this model's decoder "
                       r"blocks run at float \(no quantized decoder blocks attached\)"):
        enc.check_arch(dataclasses.replace(enc.resolve("d2-w0.5-int2"), decoder_bits=2))
