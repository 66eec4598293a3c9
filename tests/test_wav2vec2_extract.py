"""All-in-one wav2vec2/HuBERT models in ESPnet: build, switch, extract, Speech2Text.

An all-in-one ESPnet model (``model: allinone``, ``encoder: elastic_wav2vec2``,
raw waveform input, CTC) is built by ESPnet from a config whose encoder reads a
tiny torchaudio checkpoint; each extracted subsystem is loaded by ESPnet's own
``Speech2Text`` and must compute what the all-in-one model computes in that
subsystem. Full-width float stacked subsystems become ESPnet's stock
``torchaudiohubert``; narrowed, low-bit or unfolded ones ``packed_wav2vec2``.
"""

from __future__ import annotations

import copy

import pytest
import torch
import yaml
from helpers.foundation_checkpoints import (
    reference_model,
    write_torchaudio,
)
from helpers.toy_experiment import token_list

from espnet_allinone.encoders.wav2vec2_family import POS_CONV
from espnet_allinone.export.extract import ExtractionError, Extractor
from espnet_allinone.foundation.loader import load_foundation

SPACE = {"depths": [2, 4], "widths": [0.5, 1], "precisions": ["int4", "int8", "fp"],
         "quant_conf": {"granularity": "group", "group_size": 16, "symmetric": True}}


def write_experiment(root, normalize: bool = False, **space) -> dict:
    """config.yaml + model.pth of a freshly built all-in-one wav2vec2 model."""
    from espnet2.tasks.asr import ASRTask
    from espnet2.utils.yaml_no_alias_safe_dump import yaml_no_alias_safe_dump

    from espnet_allinone.export.model_io import build_asr_model
    from espnet_allinone.registry import register

    register()
    root.mkdir(parents=True, exist_ok=True)
    ref, kw, _ = reference_model(seed=1)
    if normalize:
        kw = {**kw, "normalize_waveform": True}  # the checkpoint expects normalised audio
    ckpt = write_torchaudio(ref, kw, root / "pretrained.pth", with_config=True)
    config = vars(ASRTask.get_parser().parse_args(["--output_dir", str(root)]))
    config.update(
        token_list=token_list(), token_type="char", input_size=1, frontend=None,
        frontend_conf={}, specaug=None, normalize=None, normalize_conf={},
        encoder="elastic_wav2vec2",
        encoder_conf={**load_foundation(ckpt).encoder_conf(), "pretrained_path": str(ckpt),
                      **copy.deepcopy(space)},
        model="allinone", model_conf={"ctc_weight": 1.0}, decoder=None, decoder_conf={},
    )
    torch.manual_seed(0)
    net = build_asr_model(config)
    wave = torch.randn(2, 16000) * 0.1
    lens = torch.tensor([16000, 12000])
    with torch.no_grad():  # quantizer scales are set by a first forward, as in training
        for sub in net.encoder.space.members():
            with net.encoder.use_subsystem(sub):
                net.encode(wave, lens)
    with (root / "config.yaml").open("w") as f:
        yaml_no_alias_safe_dump(config, f, indent=4, sort_keys=False)
    torch.save(net.state_dict(), root / "model.pth")
    return {"config": root / "config.yaml", "model": root / "model.pth", "ref": ref,
            "ckpt": ckpt}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("w2v")
    paths = write_experiment(root / "exp", **SPACE)
    ex = Extractor(paths["config"], paths["model"])
    subs = ["d4-w1-fp", "d2-w1-fp", "d4-w0.5-int4", "d2-w1-int8", "d4-w0.5-fp"]
    results = {s: ex.extract(s, root / "out") for s in subs}
    results["d4-w1-int4+pf"] = ex.extract("d4-w1-int4", root / "pf", plugin_free=True)
    paths["ckpt"].unlink()  # extracted models must not need the user's checkpoint
    return paths, ex, results


def test_allinone_model_starts_from_the_checkpoint(tmp_path):
    """ESPnet's build (initialize + reload_pretrained_parameters) keeps the user's weights:
    at full size, float, the ESPnet model's encoder output equals torchaudio's."""
    paths = write_experiment(tmp_path / "exp", **SPACE)
    from espnet_allinone.export.model_io import load_asr_model

    model, _ = load_asr_model(paths["config"], paths["model"])
    wave, lens = torch.randn(2, 8000), torch.tensor([8000, 6000])
    with torch.no_grad(), model.encoder.use_subsystem("d4-w1-fp"):
        out, out_lens = model.encode(wave, lens)
        want, want_lens = paths["ref"](wave, lens)
    assert torch.equal(out_lens, want_lens)
    assert (out - want).abs().max().item() <= 1e-5


def test_extracted_encoders_are_stock_where_shapes_allow(toy):
    _, _, results = toy
    kinds = {s: r.encoder for s, r in results.items()}
    assert kinds == {"d4-w1-fp": "torchaudiohubert", "d2-w1-fp": "torchaudiohubert",
                     "d4-w0.5-int4": "packed_wav2vec2", "d2-w1-int8": "packed_wav2vec2",
                     "d4-w0.5-fp": "packed_wav2vec2", "d4-w1-int4+pf": "torchaudiohubert"}
    for r in results.values():
        conf = yaml.safe_load((r.directory / "config.yaml").read_text())
        assert "pretrained_path" not in conf["encoder_conf"]
        assert conf["model"] == "espnet"
    small = yaml.safe_load((results["d4-w0.5-int4"].directory / "config.yaml").read_text())
    assert small["encoder_conf"]["block_archs"] == [{"heads": 2, "ffn_units": [32],
                                                     "bits": 4}] * 4
    # bit-packed weights really are smaller on disk (at this toy size torch.save's
    # per-tensor overhead is a large share of the file, so compare the savings)
    low, fp = results["d4-w0.5-int4"], results["d4-w0.5-fp"]
    assert fp.disk_bytes - low.disk_bytes > 0.5 * (fp.exact_bytes - low.exact_bytes) > 0
    assert results["d4-w1-int4+pf"].disk_bytes > results["d4-w0.5-int4"].disk_bytes


@torch.no_grad()
def test_speech2text_loads_each_extracted_subsystem_exactly(toy):
    from espnet2.bin.asr_inference import Speech2Text

    _, ex, results = toy
    wave = torch.randn(1, 9000, generator=torch.Generator().manual_seed(2)) * 0.1
    lens = torch.tensor([9000])
    for name, r in results.items():
        sub = name.split("+")[0]
        s2t = Speech2Text(asr_train_config=r.directory / "config.yaml",
                          asr_model_file=r.directory / "model.pth", ctc_weight=1.0,
                          lm_weight=0.0, beam_size=1, device="cpu")
        out, out_lens = s2t.asr_model.encode(wave, lens)
        with ex.encoder.use_subsystem(sub):
            want, want_lens = ex.model.encode(wave, lens)
        assert torch.equal(out_lens, want_lens), name
        assert (out - want).abs().max().item() <= 1e-5, name
        assert r.max_abs_diff is not None and r.max_abs_diff <= 1e-4
        if name == "d4-w0.5-int4":  # ESPnet's own decoding runs end to end (short input:
            hyp = s2t(wave[0, :1000].numpy())  # the toy front keeps 1 frame in 10)
            assert isinstance(hyp[0][0], str)


def test_unfolded_subsystems_extract_to_a_packed_schedule(tmp_path):
    paths = write_experiment(tmp_path / "exp", seed_blocks=2, **SPACE)
    ex = Extractor(paths["config"], paths["model"])
    r = ex.extract("d4-w1-fp", tmp_path / "out")
    conf = yaml.safe_load((r.directory / "config.yaml").read_text())["encoder_conf"]
    assert r.encoder == "packed_wav2vec2"
    assert conf["encoder_num_layers"] == 2 and conf["block_schedule"] == [0, 1, 0, 1]
    assert r.max_abs_diff <= 1e-4
    with pytest.raises(ExtractionError, match="d4-w1-fp: runs shared layers .* cannot "
                                              "express; extract it without --plugin_free"):
        ex.extract("d4-w1-fp", tmp_path / "pf", plugin_free=True)
    assert not (tmp_path / "pf" / "d4-w1-fp").exists()


def test_storage_bytes_order_and_switching():
    from helpers.foundation_checkpoints import TINY

    from espnet_allinone.encoders.elastic_wav2vec2 import ElasticWav2Vec2Encoder

    enc = ElasticWav2Vec2Encoder(1, **TINY, **SPACE)
    order = enc.ordered_subsystems()
    assert str(order[0]) == "d2-w0.5-int4" and str(order[-1]) == "d4-w1-fp"
    full = enc.num_params("d4-w1-fp")
    assert full == sum(p.numel() for n, p in enc.named_parameters()
                       if "quantizer" not in n)
    layer = enc.blocks[0]
    with enc.use_subsystem("d2-w0.5-int4"):
        assert layer.attention.num_heads == 2 and enc.layers.schedule == (0, 1)
    assert layer.attention.num_heads == 4 and enc.layers.schedule == (0, 1, 2, 3)


@torch.no_grad()
def test_waveform_normalising_models_extract_to_the_plugin(tmp_path):
    """torchaudiohubert cannot normalise the waveform: even d4-w1-fp is packed_wav2vec2."""
    from espnet2.bin.asr_inference import Speech2Text

    paths = write_experiment(tmp_path / "exp", normalize=True, **SPACE)
    ex = Extractor(paths["config"], paths["model"])
    r = ex.extract("d4-w1-fp", tmp_path / "out")
    assert r.encoder == "packed_wav2vec2" and r.max_abs_diff <= 1e-4
    s2t = Speech2Text(asr_train_config=r.directory / "config.yaml",
                      asr_model_file=r.directory / "model.pth", ctc_weight=1.0, device="cpu")
    wave, lens = torch.randn(1, 5000) * 3.0 + 1.0, torch.tensor([5000])
    out, _ = s2t.asr_model.encode(wave, lens)
    want, _ = ex.model.encode(wave, lens)
    assert s2t.asr_model.encoder.normalize_waveform
    assert (out - want).abs().max().item() <= 1e-5


@torch.no_grad()
def test_packed_zip_loads_with_from_pretrained(toy, tmp_path):
    """Packed for the zoo like every extracted subsystem; Speech2Text.from_pretrained(zip)."""
    from espnet2.bin.asr_inference import Speech2Text

    from espnet_allinone.export.zoo import pack_extracted

    _, ex, results = toy
    zipped = pack_extracted(results["d4-w0.5-int4"].directory, tmp_path / "packed")
    s2t = Speech2Text.from_pretrained(str(zipped), ctc_weight=1.0, device="cpu")
    wave, lens = torch.randn(1, 4000), torch.tensor([4000])
    out, _ = s2t.asr_model.encode(wave, lens)
    with ex.encoder.use_subsystem("d4-w0.5-int4"):
        want, _ = ex.model.encode(wave, lens)
    assert (out - want).abs().max().item() <= 1e-5


def test_non_uniform_records_extract_and_bad_ones_are_refused(toy, tmp_path):
    from espnet_allinone.arch import BlockArch, SubnetArch

    _, ex, _ = toy
    arch = SubnetArch((BlockArch(0, heads=(2, 3), ffn_units=((*range(32, 64),),), bits=8),
                       BlockArch(1, heads=(0, 1, 2, 3), ffn_units=((*range(64),),), bits=32)))
    r = ex.extract(arch, tmp_path, name="pruned")
    assert r.encoder == "packed_wav2vec2" and r.max_abs_diff <= 1e-4
    bad = SubnetArch((BlockArch(0, heads=(0, 9), ffn_units=((*range(64),),)),))
    with pytest.raises(ExtractionError, match="architecture x: logical block 0: head index 9 "
                                              "outside 0..3"):
        ex.extract(bad, tmp_path, name="x")
    empty = SubnetArch((BlockArch(0, heads=(), ffn_units=((*range(64),),)),))
    with pytest.raises(ExtractionError, match="removing a whole attention"):
        ex.extract(empty, tmp_path, name="y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


@torch.no_grad()
def test_quantized_front_and_output_extract_exactly(tmp_path):
    """``part_precisions``: the conv feature extractor, the feature projection, the
    positional conv and the CTC layer at 8 bits in quantized subsystems, packed on disk,
    exact in Speech2Text."""
    from espnet2.bin.asr_inference import Speech2Text

    exp = write_experiment(tmp_path / "exp", **SPACE,
                           part_precisions={"front": "int8", "output": "int8"})
    ex = Extractor(exp["config"], exp["model"])
    front = ex.encoder._input_layers
    assert len(front) == 2 + 1 + 1  # the toy's two convs, the projection, the positional conv
    result = ex.extract("d4-w0.5-int4", tmp_path / "x")
    state = torch.load(result.directory / "model.pth")
    assert "encoder.model.feature_extractor.conv_layers.0.conv.weight_codes" in state
    assert "encoder.model.encoder.feature_projection.projection.weight_codes" in state
    assert "encoder.model.encoder.transformer.pos_conv_embed.conv.weight_codes" in state
    assert not any("pos_conv_embed.conv.parametrizations" in k for k in state)
    assert "ctc.ctc_lo.weight_codes" in state
    s2t = Speech2Text(asr_train_config=result.directory / "config.yaml",
                      asr_model_file=result.directory / "model.pth", ctc_weight=1.0)
    wave = torch.randn(1, 9000, generator=torch.Generator().manual_seed(2)) * 0.1
    lens = torch.tensor([9000])
    with ex.encoder.use_subsystem("d4-w0.5-int4"):
        want, _ = ex.model.encode(wave, lens)
        assert all(layer.bits == 8 for layer in front)
        first = front[0].active_weight_2d().reshape(front[0].weight.shape)
    out, _ = s2t.asr_model.encode(wave, lens)
    assert (out - want).abs().max() <= 1e-5
    conv = s2t.asr_model.encoder.model.feature_extractor.conv_layers[0].conv
    assert torch.equal(conv.weight, first)
    with ex.encoder.use_subsystem("d4-w0.5-int4"):  # the positional conv, on its 8-bit grid
        pos = ex.encoder.get_submodule(POS_CONV).weight
    assert torch.equal(s2t.asr_model.encoder.get_submodule(POS_CONV).weight, pos)
    assert len(torch.unique(pos[0, 0])) <= 2**8
    payload = sum(t.numel() * t.element_size() for k, t in state.items()
                  if not k.endswith(("_shape", "_bits")))  # what the file stores, no pickle
    assert abs(result.exact_bytes - payload) <= 0.01 * payload  # the size accounting
    with pytest.raises(ExtractionError, match="8-bit front .*without --plugin_free"):
        ex.extract("d4-w1-int4", tmp_path / "pf", plugin_free=True)
    with ex.encoder.use_subsystem("d4-w1-fp"):
        assert all(layer.bits == 32 for layer in front)
    float_result = ex.extract("d4-w1-fp", tmp_path / "x")
    assert float_result.encoder == "torchaudiohubert"
