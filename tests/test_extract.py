"""Extraction of subsystems into standalone ESPnet models.

A freshly initialised all-in-one model (random weights, quantizer scales set
by one forward pass per subsystem) is enough: extraction must reproduce the
all-in-one model in each subsystem exactly, whatever the weights.
"""

from __future__ import annotations

import hashlib

import pytest
import torch
import yaml
from helpers.toy_experiment import (
    DEFAULT_ENCODER_CONF,
    shared_toy_experiment,
    write_toy_experiment,
)

from espnet_allinone.arch import BlockArch, SubnetArch
from espnet_allinone.encoders.switching import model_probe_input
from espnet_allinone.export import extract as extract_mod
from espnet_allinone.export.extract import ExtractionError, Extractor
from espnet_allinone.export.model_io import CheckpointMismatchError
from espnet_allinone.subsystem import Subsystem, SubsystemError

SUBSYSTEMS = ["d2-w0.5-int2", "d4-w1-int4", "d2-w1-fp", "d4-w0.5-int8", "d4-w1-fp", "d4-w0.5-fp"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("extract")
    paths = shared_toy_experiment()
    extractor = Extractor(paths["config"], paths["model"])
    results = {s: extractor.extract(s, root / "out") for s in SUBSYSTEMS}
    return root, paths, extractor, results


def _greedy(logp: torch.Tensor, length: int) -> list[int]:
    ids = logp[:length].argmax(-1).tolist()
    out, prev = [], None
    for i in ids:
        if i != prev and i != 0:
            out.append(i)
        prev = i
    return out


def assert_equals_allinone(model, allinone, sub, speech, lengths, label) -> None:
    """``model`` (an extracted one, as Speech2Text loaded it) gives the all-in-one model's
    encoder output and CTC posteriors within 1e-5 and its greedy tokens, for ``sub``."""
    with allinone.encoder.use_subsystem(sub):
        ref, ref_lens = allinone.encode(speech, lengths)
        ref_logp = allinone.ctc.log_softmax(ref)
    out, out_lens = model.encode(speech, lengths)
    logp = model.ctc.log_softmax(out)
    assert torch.equal(out_lens, ref_lens)
    assert (out - ref).abs().max() <= 1e-5, label
    assert (logp - ref_logp).abs().max() <= 1e-5, label
    for b in range(len(lengths)):
        n = int(out_lens[b])
        assert _greedy(logp[b], n) == _greedy(ref_logp[b], n), label


@torch.no_grad()
def test_extracted_models_equal_the_allinone_model(toy):
    """Encoder output and CTC posteriors within 1e-5 and identical greedy tokens, with
    each model loaded and decoded by ESPnet's own Speech2Text (non-strict loader)."""
    from espnet2.bin.asr_inference import Speech2Text

    _, _, extractor, results = toy
    allinone = extractor.model
    speech, lengths = model_probe_input(allinone, seed=3)
    for sub, result in results.items():
        s2t = Speech2Text(asr_train_config=result.directory / "config.yaml",
                          asr_model_file=result.directory / "model.pth",
                          ctc_weight=1.0, beam_size=2)
        model = s2t.asr_model
        assert_equals_allinone(model, allinone, sub, speech, lengths, sub)
        text, tokens, token_ids, _ = s2t(speech[0].numpy())[0]
        assert all(0 < i < len(s2t.asr_model.token_list) for i in token_ids)
        assert isinstance(text, str) and len(tokens) == len(token_ids)
        # physically cut: exactly the subsystem's parameters, no more
        n_params = sum(p.numel() for p in model.encoder.parameters())
        assert n_params == allinone.encoder.num_params(sub), sub
        # the recorded parameter count (read by the report) is the model's
        total = sum(p.numel() for p in model.parameters())
        info = yaml.safe_load((result.directory / extract_mod.INFO_NAME).read_text())
        assert result.params == info["params"] == total, sub


def test_encoder_choice_and_files(toy):
    _, _, _, results = toy
    assert results["d4-w1-fp"].encoder == "conformer"  # stock ESPnet, no plugin
    assert results["d2-w1-fp"].encoder == "conformer"
    assert results["d4-w0.5-fp"].encoder == "packed_conformer"  # fewer heads than stock allows
    assert results["d2-w0.5-int2"].encoder == "packed_conformer"
    for result in results.values():
        names = sorted(p.name for p in result.directory.iterdir())
        assert names == ["config.yaml", "extract_info.yaml", "feats_stats.npz", "model.pth"]
        import yaml

        config = yaml.safe_load((result.directory / "config.yaml").read_text())
        assert config["model"] == "espnet"
        assert isinstance(config["token_list"], list)
        assert config["normalize_conf"]["stats_file"] == str(result.directory / "feats_stats.npz")
        assert config["encoder_conf"]["num_blocks"] == Subsystem.parse(result.subsystem).depth


def test_low_bit_weights_are_bit_packed(toy):
    _, _, _, results = toy
    state = torch.load(results["d2-w0.5-int2"].directory / "model.pth", weights_only=True)
    key = "encoder.encoders.0.feed_forward.w_1.weight"
    assert key not in state
    codes = state[key + "_codes"]
    rows, cols = state[key + "_shape"].tolist()
    assert (rows, cols) == (64, 64)  # half of 128 FFN units x d_model 64
    assert codes.dtype == torch.uint8 and codes.numel() == rows * cols // 4  # four a byte
    assert state[key + "_scale"].dtype == torch.float16
    assert state[key + "_scale"].shape == (rows, cols // 16)  # groups of 16
    int4 = torch.load(results["d4-w1-int4"].directory / "model.pth", weights_only=True)
    assert int4[key + "_codes"].numel() == 128 * 64 // 2  # two a byte
    assert "encoder.encoders.3.self_attn.linear_q.weight_codes" in int4
    assert "encoder.encoders.2.self_attn.linear_q.weight_codes" not in state  # depth 2


def test_sizes_reported_against_exact_and_full_float(toy):
    _, _, extractor, results = toy
    for result in results.values():
        assert result.disk_bytes == (result.directory / "model.pth").stat().st_size
        assert result.full_float_bytes == extractor.full_float_bytes
    # lower precision, smaller file; int2 at half width and depth is > 3x smaller
    assert results["d2-w0.5-int2"].disk_bytes < results["d4-w0.5-int8"].disk_bytes
    assert results["d2-w0.5-int2"].compression > 3


def test_disk_bytes_agree_with_exact_figure_for_a_realistic_layer_size(tmp_path):
    """At d=256 the container overhead is small: within 3% of the exact figure."""
    conf = dict(DEFAULT_ENCODER_CONF, output_size=256, linear_units=1024, num_blocks=2,
                cnn_module_kernel=15, depths=[1, 2], widths=[0.5, 1],
                precisions=["int2", "int4", "fp"],
                quant_conf={"granularity": "group", "group_size": 32})
    paths = write_toy_experiment(tmp_path / "big", encoder_conf=conf, global_mvn=False)
    extractor = Extractor(paths["config"], paths["model"])
    for sub in ("d2-w1-fp", "d2-w1-int4", "d2-w0.5-int2", "d1-w0.5-int4"):
        result = extractor.extract(sub, tmp_path / "out", verify=False)
        assert abs(result.size_agreement - 1) < 0.03, (sub, result.size_agreement)


def test_extraction_is_deterministic_and_refuses_a_different_model(toy, tmp_path):
    root, _, extractor, results = toy
    directory = results["d2-w0.5-int2"].directory
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir()}
    extractor.extract("d2-w0.5-int2", root / "out")  # same source: rewritten, identical
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir()}
    assert before == after
    # a different option -> a different model: refused unless --overwrite
    with pytest.raises(ExtractionError, match="holds a different model.*--overwrite"):
        extractor.extract("d4-w1-int4", root / "out", plugin_free=True)
    # a directory not written by extract is never replaced silently
    foreign = tmp_path / "d2-w1-fp"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ExtractionError, match="not written by extract"):
        extractor.extract("d2-w1-fp", tmp_path)
    extractor.extract("d2-w1-fp", tmp_path, overwrite=True, verify=False)
    assert not (foreign / "notes.txt").exists() and (foreign / "model.pth").is_file()


def test_interrupted_extraction_leaves_nothing_under_the_final_name(toy, tmp_path, monkeypatch):
    _, _, extractor, _ = toy

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(extract_mod.torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        extractor.extract("d2-w1-fp", tmp_path, verify=False)
    assert list(tmp_path.iterdir()) == []


def test_plugin_free_writes_a_stock_conformer_on_the_grid(toy, tmp_path):
    from espnet2.tasks.asr import ASRTask

    _, _, extractor, results = toy
    result = extractor.extract("d4-w1-int4", tmp_path, plugin_free=True)
    assert result.encoder == "conformer"
    assert result.disk_bytes > 1.5 * results["d4-w1-int4"].disk_bytes  # float-sized
    model, _ = ASRTask.build_model_from_file(
        result.directory / "config.yaml", result.directory / "model.pth", "cpu"
    )
    model.eval()
    speech, lengths = model_probe_input(extractor.model, seed=5)
    with torch.no_grad(), extractor.model.encoder.use_subsystem("d4-w1-int4"):
        ref, _ = extractor.model.encode(speech, lengths)
        out, _ = model.encode(speech, lengths)
    assert (out - ref).abs().max() <= 1e-5
    with pytest.raises(ExtractionError, match="2 of 4 attention heads.*without --plugin_free"):
        extractor.extract("d2-w0.5-int4", tmp_path, plugin_free=True)


def test_bad_subsystems_and_mismatched_checkpoints_are_refused(toy, tmp_path, capsys):
    from espnet_allinone.bin.extract import main

    _, paths, extractor, _ = toy
    with pytest.raises(SubsystemError, match=r"depth 3 \(valid: 2, 4\)"):
        extractor.extract("d3-w1-fp", tmp_path)
    with pytest.raises(SubsystemError, match="malformed subsystem 'six-blocks'"):
        extractor.resolve("six-blocks")
    assert main(["--asr_train_config", str(paths["config"]), "--asr_model_file",
                 str(paths["model"]), "--subsystems", "d4-w0.25-int4", "--outdir",
                 str(tmp_path)]) == 2
    assert "width 0.25 (valid: 0.5, 1)" in capsys.readouterr().err
    # a checkpoint of another architecture (fewer blocks, a narrower FFN): refused, keys named
    state = torch.load(paths["model"], weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("encoder.encoders.3.")}
    key = "encoder.encoders.0.feed_forward.w_1.weight"
    state[key] = state[key][:64]
    torch.save(state, tmp_path / "other.pth")
    with pytest.raises(CheckpointMismatchError,
                       match=r"(?s)missing: encoder\.encoders\.3\..*shape mismatch: "
                             r"encoder\.encoders\.0\.feed_forward\.w_1\.weight: file \(64, 64\)"):
        Extractor(paths["config"], tmp_path / "other.pth")
    assert list(tmp_path.glob("d*")) == []


@torch.no_grad()
def test_allinone_model_config_with_asymmetric_per_channel_quantization(tmp_path):
    """``model: allinone`` configs extract to ``model: espnet``; zero points are packed."""
    conf = dict(DEFAULT_ENCODER_CONF, elastic_conv=False,
                quant_conf={"symmetric": False, "granularity": "channel"})
    paths = write_toy_experiment(tmp_path / "aio", encoder_conf=conf, model="allinone",
                                 model_conf={"sampling": "sandwich", "distill_weight": 0.5})
    extractor = Extractor(paths["config"], paths["model"])
    result = extractor.extract("d2-w0.5-int4", tmp_path / "out")
    state = torch.load(result.directory / "model.pth", weights_only=True)
    zp = state["encoder.encoders.1.conv_module.pointwise_conv1.weight_zero_point"]
    assert zp.dtype == torch.uint8 and zp.shape == (128, 1)  # full conv channels, GLU halves
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-5
    import yaml

    config = yaml.safe_load((result.directory / "config.yaml").read_text())
    assert config["model"] == "espnet" and "sampling" not in config["model_conf"]
    assert config["encoder_conf"]["quant_symmetric"] is False


def _pruned_like(extractor: Extractor, bits: int) -> SubnetArch:
    """Per-block heads, FFN units and conv channels (index sets, not prefixes); with
    group scales (16 columns) the FFN units and channels are kept in whole groups."""
    groups = (tuple(range(16, 32)) + tuple(range(96, 112)), tuple(range(112, 128)))
    return SubnetArch((
        BlockArch(0, heads=(3, 1), ffn_units=groups, conv_channels=tuple(range(16, 48)),
                  bits=bits),
        BlockArch(1, heads=(2,), ffn_units=(tuple(range(64)), tuple(range(32, 80))),
                  conv_channels=tuple(range(48, 64)), bits=bits),
        BlockArch(3, heads=(0, 1, 2, 3), ffn_units=groups, conv_channels=tuple(range(64)),
                  bits=bits),
    ))


@pytest.mark.parametrize("bits", [32, 4])
@torch.no_grad()
def test_non_uniform_architecture_round_trips_through_speech2text(toy, tmp_path, bits):
    from espnet2.bin.asr_inference import Speech2Text

    _, _, extractor, _ = toy
    arch = _pruned_like(extractor, bits)
    result = extractor.extract(arch, tmp_path, name="pruned")
    assert result.encoder == "packed_conformer"
    s2t = Speech2Text(asr_train_config=result.directory / "config.yaml",
                      asr_model_file=result.directory / "model.pth", ctc_weight=1.0)
    speech, lengths = model_probe_input(extractor.model, seed=5)
    with extractor.encoder.use_arch(arch):
        ref, _ = extractor.model.encode(speech, lengths)
        n_params = extractor.encoder.num_params()
    out, _ = s2t.asr_model.encode(speech, lengths)
    assert (out - ref).abs().max() <= 1e-5
    assert sum(p.numel() for p in s2t.asr_model.encoder.parameters()) == n_params
    conf = yaml.safe_load((result.directory / "config.yaml").read_text())["encoder_conf"]
    assert [b["heads"] for b in conf["block_archs"]] == [2, 1, 4]
    assert [b["ffn_units"] for b in conf["block_archs"]] == [[32, 16], [64, 48], [32, 16]]
    assert [b["conv_channels"] for b in conf["block_archs"]] == [32, 16, 64]
    if bits != 32:  # the dequantized weights are the fake-quantized ones, bit for bit
        with extractor.encoder.use_arch(arch):
            want = extractor.encoder.encoders[3].feed_forward.w_2.active_weight_2d()
        assert torch.equal(s2t.asr_model.encoder.encoders[2].feed_forward.w_2.weight, want)


def test_architecture_that_does_not_fit_is_refused_before_writing(toy, tmp_path):
    _, _, extractor, _ = toy
    block = extractor.encoder.resolve("d2-w1-fp").blocks[0]
    bad = SubnetArch((block, BlockArch(7, block.heads, block.ffn_units, block.conv_channels)))
    with pytest.raises(ExtractionError, match=r"architecture odd: logical block 1 runs "
                       r"physical block 7; the model has blocks 0\.\.3"):
        extractor.extract(bad, tmp_path, name="odd")
    assert not any(tmp_path.iterdir())
    with pytest.raises(ExtractionError, match="needs a directory name"):
        extractor.extract(bad, tmp_path)


def test_scales_at_the_floor_are_counted_and_named(toy, tmp_path):
    """A learned linear scale that crossed zero quantizes its group to zero: extraction
    counts such groups per subsystem, records them and warns with the remedy."""
    _, paths, _, results = toy
    assert results["d4-w1-int4"].floor_scale_groups[0] == 0
    assert results["d4-w1-fp"].floor_scale_groups == (0, 0)
    extractor = Extractor(paths["config"], paths["model"])  # its own copy of the weights
    scale = next(p for n, p in extractor.model.named_parameters()
                 if n.endswith("encoders.0.feed_forward.w_1.weight_quantizer.scale_int4"))
    with torch.no_grad():
        scale[:3].fill_(-0.01)
    result = extractor.extract("d4-w1-int4", tmp_path)
    floor, total = result.floor_scale_groups
    assert floor == 3 * scale.shape[1] and total == results["d4-w1-int4"].floor_scale_groups[1]
    info = yaml.safe_load((result.directory / "extract_info.yaml").read_text())
    assert info["weight_groups_at_floor_scale"] == [floor, total]
    (line,) = extract_mod.floor_scale_warnings([result, results["d4-w1-fp"]])
    assert line.startswith(f"WARNING: d4-w1-int4: {floor:,} of {total:,} weight groups")
    assert "quant_conf.scale_param: log" in line
