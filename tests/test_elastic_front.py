"""``elastic_front: true``: the conv2d subsampling front keeps the first ``width`` of its channels.

A narrow subsystem then runs (and trains) a narrow front; extraction writes it
as a ``packed_conformer`` whose front has that many channels, so ESPnet's own
Speech2Text loads a model whose output equals the all-in-one model's; sizes
count only the kept channels; the onnxruntime export of it transcribes as
ESPnet does. Full-width subsystems keep the stock front.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers.toy_experiment import DEFAULT_ENCODER_CONF, write_toy_experiment
from torch import nn

from espnet_allinone.arch import ArchError, SubnetArch
from espnet_allinone.elastic.layers import ElasticConv2d
from espnet_allinone.encoders.elastic_conformer import ElasticConformerEncoder
from espnet_allinone.encoders.switching import model_probe_input
from espnet_allinone.export.extract import Extractor

MELS = 20   # the toy experiment's features: the front's Linear sees 4 frequency rows
CONF = dict(DEFAULT_ENCODER_CONF, elastic_front=True, part_precisions={"front": "same"})


def _encoder(**kw) -> ElasticConformerEncoder:
    torch.manual_seed(0)
    return ElasticConformerEncoder(MELS, **{**CONF, **kw})


@torch.no_grad()
@pytest.mark.parametrize("bits", [32, 4])
def test_a_narrowed_conv2d_is_the_conv_of_its_first_channels(bits):
    torch.manual_seed(0)
    conv = ElasticConv2d.convert(nn.Conv2d(6, 8, 3, stride=2))
    from espnet_allinone.quant.config import QuantConfig
    conv.enable_quantization([4], QuantConfig.from_dict({"granularity": "channel"}))
    conv.set_active(out=5, in_=3, bits=bits)
    x = torch.randn(2, 3, 11, 9)
    twin = conv.static_twin()
    if bits == 32:
        assert isinstance(twin, nn.Conv2d) and twin.weight.shape == (5, 3, 3, 3)
        assert torch.equal(twin.weight, conv.weight[:5, :3])
        expected = twin(x)
    else:
        weight = twin.weight.dequantize().reshape(5, 3, 3, 3)
        expected = nn.functional.conv2d(x, weight, twin.bias, stride=2)
    assert torch.allclose(conv(x), expected, atol=1e-6)


def test_each_width_keeps_its_share_of_the_front_channels_and_sizes_count_only_those():
    enc, stock_front = _encoder(), _encoder(elastic_front=False)
    assert enc.elastic_front and not stock_front.elastic_front
    assert enc.resolve("d2-w0.5-int2").front_channels == 32
    assert enc.resolve("d4-w1-fp").front_channels is None
    assert list(enc.state_dict()) == list(stock_front.state_dict())
    # 64 -> 32 channels: Conv2d(1, C) 10 a channel, Conv2d(C, C) 9 C^2 + C, Linear 4 x 64 a channel
    saved = 32 * 10 + (64 * 64 - 32 * 32) * 9 + 32 + 32 * 4 * 64
    for sub in ("d2-w0.5-fp", "d4-w0.5-int4"):
        assert stock_front.num_params(sub) - enc.num_params(sub) == saved
    assert enc.num_params("d4-w1-int4") == stock_front.num_params("d4-w1-int4")
    assert enc.storage_bytes("d2-w0.5-int2") < stock_front.storage_bytes("d2-w0.5-int2")


@torch.no_grad()
def test_the_full_width_front_runs_as_the_stock_one():
    enc, stock_front = _encoder(), _encoder(elastic_front=False)
    stock_front.load_state_dict(enc.state_dict())
    enc.eval()
    stock_front.eval()
    x, lengths = torch.randn(2, 60, MELS), torch.tensor([60, 41])
    for sub in ("d4-w1-fp", "d2-w1-int4"):
        enc.set_subsystem(sub)
        stock_front.set_subsystem(sub)
        assert torch.equal(enc(x, lengths)[0], stock_front(x, lengths)[0])


@pytest.mark.parametrize("sub", ["d2-w0.5-fp", "d2-w0.5-int2", "d4-w0.5-int4", "d4-w1-int4"])
@torch.no_grad()
def test_extracted_subsystem_has_a_narrow_front_and_equals_the_allinone_model(tmp_path, sub):
    import yaml
    from espnet2.bin.asr_inference import Speech2Text

    paths = write_toy_experiment(tmp_path / "aio", encoder_conf=CONF)
    extractor = Extractor(paths["config"], paths["model"])
    result = extractor.extract(sub, tmp_path / "out")
    conf = yaml.safe_load((result.directory / "config.yaml").read_text())
    narrow = "-w0.5-" in sub
    assert conf["encoder"] == "packed_conformer"
    assert conf["encoder_conf"].get("front_channels") == (32 if narrow else None)
    s2t = Speech2Text(asr_train_config=result.directory / "config.yaml",
                      asr_model_file=result.directory / "model.pth", ctc_weight=1.0)
    front = s2t.asr_model.encoder.embed
    assert front.conv[2].weight.shape[:2] == ((32, 32) if narrow else (64, 64))
    assert front.out[0].in_features == (32 if narrow else 64) * 4
    speech, lengths = model_probe_input(extractor.model, seed=4)
    extractor.model.eval()
    with extractor.encoder.use_subsystem(sub):
        ref, _ = extractor.model.encode(speech, lengths)
    out, _ = s2t.asr_model.encode(speech, lengths)
    assert (out - ref).abs().max() <= 1e-5


def test_a_float_full_width_subsystem_still_extracts_to_the_stock_conformer(tmp_path):
    paths = write_toy_experiment(tmp_path / "aio", encoder_conf=CONF)
    result = Extractor(paths["config"], paths["model"]).extract("d4-w1-fp", tmp_path / "out")
    assert result.encoder == "conformer"


def test_front_channels_that_do_not_fit_are_refused_by_name():
    enc = _encoder()
    arch = enc.resolve("d2-w0.5-int4")
    with pytest.raises(ArchError, match=r"front channels 65 outside 1\.\.64"):
        enc.apply_arch(dataclasses.replace(arch, front_channels=65))
    with pytest.raises(ArchError, match=r"front channels 30: ElasticConv2d: 30 active inputs "
                                        r"give 270 weight columns, not a multiple of quant "
                                        r"group_size 16"):
        enc.apply_arch(dataclasses.replace(arch, front_channels=30))
    stock_front = _encoder(elastic_front=False)
    with pytest.raises(ArchError, match=r"front channels 32, but this encoder's front keeps "
                                        r"all its channels \(elastic_front: false\)"):
        stock_front.apply_arch(dataclasses.replace(arch, front_channels=32))


def test_elastic_front_needs_a_conv2d_front_and_no_pruning():
    with pytest.raises(ValueError, match="elastic_front needs a conv2d subsampling front "
                                         r"\(input_layer conv2d, .*this encoder's front is "
                                         "Sequential"):
        _encoder(input_layer="linear")
    with pytest.raises(ValueError, match="elastic_front with prune_targets"):
        _encoder(prune_targets=[0.5], widths=[1])


def test_the_record_keeps_its_front_channels_in_files():
    arch = _encoder().resolve("d2-w0.5-int2")
    assert SubnetArch.from_dict(arch.to_dict()) == arch
    assert arch.to_dict()["front_channels"] == 32
    assert arch.to_conf()["front_channels"] == 32
    assert "front_channels" not in _encoder().resolve("d4-w1-int2").to_dict()


@torch.no_grad()
def test_the_onnx_export_of_a_narrow_front_transcribes_as_espnet(tmp_path):
    import numpy as np
    from espnet2.bin.asr_inference import Speech2Text

    from espnet_allinone.deploy.build import ensure_exported
    from espnet_allinone.deploy.runtime import OnnxSpeech2Text

    paths = write_toy_experiment(tmp_path / "aio", encoder_conf=CONF)
    directory = Extractor(paths["config"], paths["model"]).extract(
        "d2-w0.5-int2", tmp_path / "out").directory
    out = ensure_exported(directory, variants=("exact", "int8"), kernels="float",
                          front="int8", log=lambda _m: None)
    s2t = Speech2Text(asr_train_config=directory / "config.yaml",
                      asr_model_file=directory / "model.pth", ctc_weight=1.0)
    speech = (np.random.default_rng(0).standard_normal(24000) * 0.1).astype(np.float32)
    enc, _ = s2t.asr_model.encode(torch.from_numpy(speech)[None], torch.tensor([24000]))
    ref = s2t.asr_model.ctc.log_softmax(enc)[0].numpy()
    exact = OnnxSpeech2Text(out).log_probs([speech])[0]
    assert exact.shape == ref.shape and np.abs(exact - ref).max() < 1e-4
    int8 = OnnxSpeech2Text(out, variant="int8").log_probs([speech])[0]
    assert int8.shape == ref.shape
    assert (int8.argmax(-1) == ref.argmax(-1)).mean() >= 0.9


@torch.no_grad()
def test_reordering_by_importance_keeps_the_full_front_and_moves_strong_channels_first():
    enc = _encoder(part_precisions=None)
    enc.eval()
    convs = [enc.embed.conv[0], enc.embed.conv[2]]
    linear = enc.embed.out[0]
    convs[0].weight[50].mul_(20.0)        # channel 50 of the first map: far the strongest
    convs[1].weight[:, 50].mul_(20.0)
    convs[1].weight[60].mul_(20.0)        # channel 60 of the second map
    linear.weight.view(64, 64, 4)[:, 60].mul_(20.0)
    x, lengths = torch.randn(2, 60, MELS), torch.tensor([60, 41])
    enc.set_subsystem("d4-w1-fp")
    before = enc(x, lengths)[0]
    strong_first, strong_second = convs[0].weight[50].clone(), convs[1].weight[60].clone()
    enc.reorder_by_importance()
    enc.set_subsystem("d4-w1-fp")
    assert torch.allclose(enc(x, lengths)[0], before, atol=1e-4)
    assert torch.equal(convs[0].weight[0], strong_first)
    # the second map's strong channel leads too (its input taps moved with the first map)
    assert torch.allclose(convs[1].weight[0].abs().sum(), strong_second.abs().sum())
    rows = linear.weight.view(64, 64, 4).norm(dim=(0, 2))
    assert int(rows.argmax()) == 0
