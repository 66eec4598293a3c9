"""The balanced (mid-rise) grid: levels, exact integer form, extraction, old files.

``quant_conf.grid: balanced`` keeps the signed b-bit codes but makes code q mean
(q + 1/2) x scale, so a 2-bit weight uses {-1.5, -0.5, 0.5, 1.5} x s instead of
the integer grid's lopsided {-2, -1, 0, 1} x s.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import yaml
from helpers.toy_experiment import (
    DEFAULT_ENCODER_CONF,
    write_toy_experiment,
)

from espnet_allinone.encoders.switching import model_probe_input
from espnet_allinone.export.extract import Extractor
from espnet_allinone.quant import (
    QuantConfig,
    QuantConfigError,
    WeightFakeQuantizer,
    qrange,
)
from espnet_allinone.quant import packed_format as pf
from espnet_allinone.quant.fake_quant import QuantizedWeight
from tests.test_extract import _greedy, assert_equals_allinone

OUT, IN, GS = 16, 64, 16
BALANCED = [
    QuantConfig(granularity=g, group_size=GS, clip=c, learn_scale=learn, grid="balanced")
    for g, c, learn in itertools.product(("tensor", "channel", "group"), ("none", "mse"),
                                         (True, False))
]


def _id(cfg: QuantConfig) -> str:
    return f"{cfg.granularity}-{cfg.clip}-{'lsq' if cfg.learn_scale else 'stat'}"


def gaussian(out: int = OUT, inp: int = IN, seed: int = 0) -> torch.Tensor:
    return torch.randn(out, inp, generator=torch.Generator().manual_seed(seed)) * 0.05


def level_multiples(qw: QuantizedWeight) -> torch.Tensor:
    """Each dequantized value divided by its own scale (exact for these small multiples)."""
    rows, cols = qw.shape
    s = qw.scale.float().unsqueeze(-1).expand(rows, cols // qw.group_size, qw.group_size)
    return qw.dequantize() / s.reshape(rows, cols)


# --- the levels -------------------------------------------------------------------------
def test_two_bit_balanced_levels_are_the_four_half_integers_all_used():
    q = WeightFakeQuantizer(8, 1024, (2,), QuantConfig(grid="balanced"))
    w = gaussian(8, 1024)
    qw = q.quantize(w, 2)
    levels = level_multiples(qw)
    assert sorted(torch.unique(levels).tolist()) == [-1.5, -0.5, 0.5, 1.5]
    for row in levels:  # every level in use, per scale (one per row here)
        assert len(torch.unique(row)) == 4
    # codes are stored exactly as on the integer grid
    assert qw.codes.dtype == torch.int8
    assert set(torch.unique(qw.codes).tolist()) == set(range(*qrange(2, True))) | {1}
    # initialised so that +-max|w| are the outer levels (up to the fp16 scale)
    outer = 1.5 * qw.scale.float().squeeze(1)
    torch.testing.assert_close(outer, w.abs().amax(1), rtol=1e-3, atol=0)
    assert not (q(w, 2) == 0).any()  # mid-rise: no exact zero


def test_the_default_grid_keeps_its_integer_levels():
    """The default config (integer grid) is unchanged: 2-bit levels {-2, -1, 0, 1} x s."""
    cfg = QuantConfig()
    assert cfg.grid == "integer"
    q = WeightFakeQuantizer(OUT, IN, (2, 4), cfg)
    w = gaussian(seed=1)
    qw = q.quantize(w, 2)
    levels = torch.unique(level_multiples(qw)).tolist()
    assert len(levels) == 4 and sorted(levels) == [-2.0, -1.0, 0.0, 1.0]
    assert qw.grid == "integer"
    assert torch.equal(q(w, 4), q.quantize(w, 4).codes.float() * q.quantize(w, 4).scale.float())


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_balanced_rounds_to_the_nearest_level(bits):
    q = WeightFakeQuantizer(1, 64, (bits,), QuantConfig(granularity="tensor", grid="balanced"))
    q.initialize(torch.ones(1, 64), bits)
    with torch.no_grad():
        q.get_parameter(f"scale_int{bits}").fill_(0.25)
    lo, hi = qrange(bits, True)
    w = torch.linspace(lo * 0.25 - 0.3, (hi + 1) * 0.25 + 0.3, 64).reshape(1, 64)
    levels = (torch.arange(lo, hi + 1, dtype=torch.float32) + 0.5) * 0.25
    nearest = levels[(w.reshape(-1, 1) - levels).abs().argmin(1)].reshape(1, 64)
    assert torch.equal(q(w, bits).detach(), nearest)


# --- prepare == convert -----------------------------------------------------------------
@pytest.mark.parametrize("cfg", BALANCED, ids=_id)
def test_fake_quantized_equals_dequantized_packed_codes(cfg):
    q = WeightFakeQuantizer(OUT, IN, (2, 4, 8, 32), cfg)
    w = gaussian(seed=2)
    for bits in (2, 4, 8):
        for rows, cols in ((None, None), (torch.tensor([3, 0, 9]), 32)):
            fake = q(w, bits, rows=rows, cols=cols).detach()
            qw = q.quantize(w, bits, rows=rows, cols=cols)
            assert qw.grid == "balanced"
            assert torch.equal(fake, qw.dequantize())
            state = pf.to_state(qw, "layer.weight")
            assert int(state["layer.weight_grid"]) == 1
            back = pf.from_state(state, "layer.weight")
            assert back.grid == "balanced"
            assert torch.equal(back.dequantize(), fake)
            assert torch.equal(pf.dequantize_to(back, bits, fake.shape, True, grid="balanced"),
                               fake)
            # the grid is the same number of bits: only the meaning changes
            assert back.storage_bits() == q.storage_bits(*fake.shape, bits)


def test_integer_files_have_no_grid_record_and_old_records_mean_integer():
    w = gaussian(seed=3)
    integer = WeightFakeQuantizer(OUT, IN, (4,), QuantConfig()).quantize(w, 4)
    state = pf.to_state(integer, "x")
    assert sorted(state) == ["x_bits", "x_codes", "x_scale", "x_shape"]  # as before grids
    assert pf.from_state(state, "x").grid == "integer"
    balanced = WeightFakeQuantizer(OUT, IN, (4,), QuantConfig(grid="balanced")).quantize(w, 4)
    state = pf.to_state(balanced, "x")
    del state["x_grid"]  # a file without the record: integer codes
    old = pf.from_state(state, "x")
    assert old.grid == "integer"
    assert torch.equal(old.dequantize(), balanced.codes.float() * balanced.scale.float())
    with pytest.raises(pf.PackedFormatError, match="the config says quant_grid: balanced"):
        pf.dequantize_to(old, 4, (OUT, IN), True, "x", grid="balanced")


def test_bad_grid_values_name_the_valid_ones():
    with pytest.raises(QuantConfigError, match=r"grid 'midrise'; valid: integer, balanced"):
        QuantConfig.from_dict({"grid": "midrise"})
    with pytest.raises(QuantConfigError, match="balanced needs symmetric: true"):
        QuantConfig.from_dict({"grid": "balanced", "symmetric": False})
    with pytest.raises(ValueError, match=r"valid: integer, balanced"):
        pf.check_grid("half")
    with pytest.raises(ValueError, match="symmetric only"):
        pf.check_grid("balanced", symmetric=False)
    qw = WeightFakeQuantizer(4, 16, (2,), QuantConfig(grid="balanced")).quantize(
        gaussian(4, 16), 2)
    state = pf.to_state(qw, "x")
    state["x_grid"] = torch.tensor(7)
    with pytest.raises(pf.PackedFormatError, match=r"valid: 0 \(integer\), 1 \(balanced\)"):
        pf.from_state(state, "x")
    state["x_grid"] = torch.tensor(1)
    state["x_zero_point"] = torch.zeros_like(qw.scale, dtype=torch.uint8)
    with pytest.raises(pf.PackedFormatError, match="symmetric only"):
        pf.from_state(state, "x")
    with pytest.raises(ValueError, match=r"unknown quantization grid 'x'; valid"):
        QuantizedWeight(qw.codes, qw.scale, None, 2, 16, (4, 16), grid="x")


# --- a whole experiment on the balanced grid ---------------------------------------------
SUBS = ("d2-w0.5-int2", "d4-w1-int4")
INT8 = "d4-w0.5-int8"


@pytest.fixture(scope="module")
def balanced(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid")
    conf = dict(DEFAULT_ENCODER_CONF,
                quant_conf={**DEFAULT_ENCODER_CONF["quant_conf"], "grid": "balanced"})
    paths = write_toy_experiment(root / "allinone", encoder_conf=conf)
    extractor = Extractor(paths["config"], paths["model"])
    results = {s: extractor.extract(s, root / "out") for s in (*SUBS, INT8)}
    results["stock-int4"] = extractor.extract("d4-w1-int4", root / "stock", plugin_free=True)
    return root, extractor, results


@torch.no_grad()
def test_balanced_subsystems_load_in_speech2text_and_equal_the_allinone_model(balanced):
    from espnet2.bin.asr_inference import Speech2Text

    _, extractor, results = balanced
    allinone = extractor.model
    speech, lengths = model_probe_input(allinone, seed=3)
    for name, result in results.items():
        sub = "d4-w1-int4" if name == "stock-int4" else name
        config = yaml.safe_load((result.directory / "config.yaml").read_text())
        state = torch.load(result.directory / "model.pth", weights_only=True)
        grids = [k for k in state if k.endswith("_grid")]
        if name == "stock-int4":  # ESPnet's conformer, weights dequantized onto the grid
            assert config["encoder"] == "conformer" and not grids
        else:
            assert config["encoder"] == "packed_conformer"
            assert config["encoder_conf"]["quant_grid"] == "balanced"
            codes = [k for k in state if k.endswith("_codes")]
            assert codes and len(grids) == len(codes)
            assert all(int(state[k]) == 1 for k in grids)
        s2t = Speech2Text(asr_train_config=result.directory / "config.yaml",
                          asr_model_file=result.directory / "model.pth",
                          ctc_weight=1.0, beam_size=2)
        model = s2t.asr_model
        assert_equals_allinone(model, allinone, sub, speech, lengths, name)
        with allinone.encoder.use_subsystem(sub):
            w_ref = allinone.encoder.encoders[0].feed_forward.w_1.active_weight_2d()
        w = model.encoder.encoders[0].feed_forward.w_1.weight
        assert torch.equal(w, w_ref), name  # the trained grid, bit for bit
        bits = int(sub.rsplit("int", 1)[1])
        for group in w[0].reshape(-1, 16):  # groups of 16 columns share a scale
            assert len(torch.unique(group)) <= 2**bits
        assert not (w == 0).any()  # mid-rise: no level at zero


@torch.no_grad()
def test_an_old_file_without_grid_records_loads_as_integer(balanced, tmp_path):
    """Strip the grid records (and the config's quant_grid): what is left is a file as
    written before grids existed, whose codes mean q x s; with quant_grid: balanced
    still in the config the file is refused instead."""
    from espnet2.tasks.asr import ASRTask

    _, _, results = balanced
    src = results["d4-w1-int4"].directory
    state = torch.load(src / "model.pth", weights_only=True)
    old = {k: v for k, v in state.items() if not k.endswith("_grid")}
    torch.save(old, tmp_path / "model.pth")
    config = yaml.safe_load((src / "config.yaml").read_text())
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    with pytest.raises(pf.PackedFormatError, match="the config says quant_grid: balanced"):
        ASRTask.build_model_from_file(tmp_path / "config.yaml", tmp_path / "model.pth", "cpu")
    del config["encoder_conf"]["quant_grid"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    model, _ = ASRTask.build_model_from_file(tmp_path / "config.yaml", tmp_path / "model.pth",
                                             "cpu")
    key = "encoder.encoders.0.feed_forward.w_1.weight"
    codes = pf.unpack_codes(old[key + "_codes"], 4, 128 * 64, signed=True).reshape(128, 64)
    scale = old[key + "_scale"].float().repeat_interleave(16, dim=1)
    assert torch.equal(model.encoder.encoders[0].feed_forward.w_1.weight, codes * scale)
    # saving writes the entries it loaded: still no grid record
    assert not any(k.endswith("_grid") for k in model.state_dict())


@torch.no_grad()
def test_balanced_front_and_output_layers_round_trip(tmp_path):
    """part_precisions: the 8-bit front and CTC output layer (``model: packed``, whose
    config names no grid: the file's records say it) stay on the balanced grid."""
    from espnet2.bin.asr_inference import Speech2Text

    conf = dict(DEFAULT_ENCODER_CONF, part_precisions={"front": "int8", "output": "int8"},
                quant_conf={**DEFAULT_ENCODER_CONF["quant_conf"], "grid": "balanced"})
    paths = write_toy_experiment(tmp_path / "allinone", encoder_conf=conf, model="allinone")
    extractor = Extractor(paths["config"], paths["model"])
    result = extractor.extract("d2-w0.5-int2", tmp_path / "out")
    config = yaml.safe_load((result.directory / "config.yaml").read_text())
    assert config["model"] == "packed"
    state = torch.load(result.directory / "model.pth", weights_only=True)
    for name in ("ctc.ctc_lo.weight", "encoder.embed.conv.0.weight"):
        assert int(state[f"{name}_grid"]) == 1 and int(state[f"{name}_bits"]) == 8
    s2t = Speech2Text(asr_train_config=result.directory / "config.yaml",
                      asr_model_file=result.directory / "model.pth", ctc_weight=1.0)
    speech, lengths = model_probe_input(extractor.model, seed=5)
    enc = extractor.encoder
    with enc.use_subsystem("d2-w0.5-int2"):
        ref, _ = extractor.model.encode(speech, lengths)
        ref_ctc = extractor.model.ctc.log_softmax(ref)
        want = enc.output_layers["ctc.ctc_lo"].active_weight_2d()
    out, _ = s2t.asr_model.encode(speech, lengths)
    assert (out - ref).abs().max() <= 1e-5
    assert (s2t.asr_model.ctc.log_softmax(out) - ref_ctc).abs().max() <= 1e-5
    assert torch.equal(s2t.asr_model.ctc.ctc_lo.weight, want)
    assert not (want == 0).any()


@torch.no_grad()
def test_onnx_low_bit_kernels_keep_the_balanced_grid(balanced):
    """MatMulNBits takes the balanced codes with the float zero point 2^(b-1) - 1/2;
    outputs and greedy tokens equal the PyTorch model's."""
    import onnx
    from espnet2.tasks.asr import ASRTask

    from espnet_allinone.deploy import onnx_export, onnx_lowbit

    root, _, results = balanced
    speech = torch.randn(2, 24000, generator=torch.Generator().manual_seed(0)) * 0.1
    lengths = torch.tensor([24000, 17000])
    for sub in SUBS:
        directory = results[sub].directory
        model, _ = ASRTask.build_model_from_file(directory / "config.yaml",
                                                 directory / "model.pth", "cpu")
        model.eval()
        feats, flens = onnx_export.features(model, speech, lengths)
        ref = onnx_export.EncoderCTC(model)(feats, flens)
        path = onnx_export.export_onnx(model, root / "onnx" / f"{sub}.onnx", feats.shape[-1])
        dst = root / "onnx" / f"{sub}.nbits.onnx"
        report = onnx_lowbit.map_low_bit(model.state_dict(), path, dst, "nbits")
        depth = int(sub[1])
        assert report.replaced == depth * 9, report.kept_float
        graph = onnx.load(str(dst)).graph
        inits = {i.name: i for i in graph.initializer}
        nodes = [n for n in graph.node if n.op_type == "MatMulNBits"]
        assert len(nodes) == depth * 9
        # the file holds the zero point once; an Expand folded at session start repeats it
        expand = next(n for n in graph.node if nodes[0].input[3] in n.output)
        assert expand.op_type == "Expand"
        zp = onnx.numpy_helper.to_array(inits[expand.input[0]])
        bits = 2 if "int2" in sub else 4
        assert zp.dtype.name == "float32" and set(zp.reshape(-1).tolist()) == {
            2 ** (bits - 1) - 0.5}
        got = onnx_export.OnnxEncoder(dst)(feats, flens)
        assert torch.equal(got[1], ref[1])
        assert (got[0] - ref[0]).abs().max() <= 1e-4, sub
        assert (got[2] - ref[2]).abs().max() <= 1e-4, sub
        for b in range(len(lengths)):
            n = int(ref[1][b])
            assert _greedy(got[2][b], n) == _greedy(ref[2][b], n), sub


def test_eight_bit_balanced_keeps_a_float_matmul_where_the_kernel_cannot(balanced):
    """8-bit codes with a float zero point: refused by onnxruntime's CPU kernel here, so
    the layer is dequantized to a float initialiser, with the reason."""
    from espnet_allinone.deploy import onnx_lowbit

    qw = WeightFakeQuantizer(32, 64, (8,), QuantConfig(granularity="group", group_size=16,
                                                       grid="balanced")).quantize(
        gaussian(32, 64), 8)
    (q,) = onnx_lowbit.packed_linears(pf.to_state(qw, "w"))
    assert q.float_zero_point and q.zero_point_kind == "float"
    assert torch.equal(torch.from_numpy(q.weight_t).t(), qw.dequantize())
    why = onnx_lowbit.nbits_supported(8, 16, float_zero_point=True)
    if why is not None:  # this onnxruntime's CPU kernel (1.2x) refuses 8-bit float zero points
        assert "balanced grid at 8 bits" in why
    assert onnx_lowbit.nbits_supported(8, 16) is None


@torch.no_grad()
def test_balanced_wav2vec2_subsystem_loads_in_speech2text(tmp_path):
    """A foundation model on the balanced grid (``packed_wav2vec2`` with ``quant_grid``,
    its quantized front and weight-normalised positional conv included)."""
    from espnet2.bin.asr_inference import Speech2Text
    from test_wav2vec2_extract import SPACE, write_experiment

    space = {**SPACE, "part_precisions": {"front": "int8"},
             "quant_conf": {**SPACE["quant_conf"], "grid": "balanced"}}
    paths = write_experiment(tmp_path / "exp", **space)
    extractor = Extractor(paths["config"], paths["model"])
    result = extractor.extract("d2-w0.5-int4", tmp_path / "out")
    config = yaml.safe_load((result.directory / "config.yaml").read_text())
    assert config["encoder"] == "packed_wav2vec2"
    assert config["encoder_conf"]["quant_grid"] == "balanced"
    state = torch.load(result.directory / "model.pth", weights_only=True)
    codes = [k for k in state if k.endswith("_codes")]
    assert codes and all(int(state[k[: -len("codes")] + "grid"]) == 1 for k in codes)
    s2t = Speech2Text(asr_train_config=result.directory / "config.yaml",
                      asr_model_file=result.directory / "model.pth", ctc_weight=1.0)
    wave = torch.randn(2, 16000, generator=torch.Generator().manual_seed(2)) * 0.1
    lens = torch.tensor([16000, 12000])
    with extractor.encoder.use_subsystem("d2-w0.5-int4"):
        ref, ref_lens = extractor.model.encode(wave, lens)
    out, out_lens = s2t.asr_model.encode(wave, lens)
    assert torch.equal(out_lens, ref_lens)
    assert (out - ref).abs().max() <= 1e-5


@torch.no_grad()
def test_deployed_onnx_greedy_equals_espnet(balanced):
    """The deploy path (``model.onnx``, kernels "nbits"): 2- and 4-bit balanced layers as
    MatMulNBits with the float zero point, 8-bit ones dequantized to float MatMuls with
    the reason recorded; greedy tokens equal ESPnet's CTC argmax."""
    import json

    import numpy as np
    import onnx
    from espnet2.bin.asr_inference import Speech2Text

    from espnet_allinone.deploy.build import ensure_exported, export_dir_for
    from espnet_allinone.deploy.runtime import OnnxSpeech2Text

    _, _, results = balanced
    gen = torch.Generator().manual_seed(7)
    audio = [(torch.randn(n, generator=gen) * 0.1).numpy() for n in (16000, 23000)]
    for sub in ("d2-w0.5-int2", INT8):
        directory = results[sub].directory
        ensure_exported(directory, kernels="nbits", log=lambda _m: None)
        out = export_dir_for(directory)
        meta = json.loads((out / "deploy.json").read_text())
        nbits = [n for n in onnx.load(str(out / "model.onnx")).graph.node
                 if n.op_type == "MatMulNBits"]
        if sub == INT8:
            assert not nbits
            assert any("balanced grid at 8 bits" in k for k in meta["kept_float"])
        else:
            assert len(nbits) == 2 * 9
        s2t = Speech2Text(asr_train_config=directory / "config.yaml",
                          asr_model_file=directory / "model.pth", ctc_weight=1.0)
        model = s2t.asr_model
        greedy = OnnxSpeech2Text(out)
        n_tokens = 0
        for speech in audio:
            x = torch.from_numpy(speech)[None]
            enc, _ = model.encode(x, torch.tensor([x.shape[1]]))
            ref_logp = model.ctc.log_softmax(enc)[0].numpy()
            logp = greedy.log_probs([speech])[0]
            assert logp.shape == ref_logp.shape and np.abs(logp - ref_logp).max() < 1e-4, sub
            ref_ids = _greedy(torch.from_numpy(ref_logp), len(ref_logp))
            ref_ids = [i for i in ref_ids if i != model.eos]
            assert greedy(speech)[0].token_ids == ref_ids, sub
            n_tokens += len(ref_ids)
        assert n_tokens > 0, sub  # not a comparison of empty outputs
