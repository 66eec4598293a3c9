"""The conv2d front as GEMMs over patches (``deploy/onnx_front.py``).

The unfold + float MatMul equals torch's Conv2d front (atol 1e-5) at odd and
even lengths and in a batch; the int8 version (``DynamicQuantizeLinear`` +
``MatMulInteger``) is close to the exact export, its frame-level CTC argmax
agreement on a fixed input reported and held to a sane threshold; ``auto``
decides each layer by measurement; the deploy path puts the int8 front in the
fast variant only; a bad mode is named with the valid ones.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers.toy_experiment import DEFAULT_ENCODER_CONF, shared_toy_experiment

from espnet_allinone.deploy import onnx_export, onnx_front
from espnet_allinone.deploy.build import ensure_exported, export_dir_for
from espnet_allinone.deploy.onnx_front_flatten import flatten_front_channels_last
from espnet_allinone.errors import AllInOneError
from espnet_allinone.export.extract import Extractor

N_MELS = 20
AGREEMENT = 0.9  # frame-level CTC argmax agreement of the int8 front with the exact graph


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """d4-w1-fp and d4-w1-int4 of a toy whose front is 8-bit (as the default recipe's)."""
    from espnet2.tasks.asr import ASRTask

    conf = dict(DEFAULT_ENCODER_CONF, part_precisions={"front": "int8", "output": "int8"})
    paths = shared_toy_experiment(encoder_conf=conf, model="allinone")
    root = tmp_path_factory.mktemp("front_gemm")
    extractor = Extractor(paths["config"], paths["model"])
    dirs = {sub: extractor.extract(sub, root / "extracted", verify=False).directory
            for sub in ("d4-w1-fp", "d4-w1-int4")}
    model, _ = ASRTask.build_model_from_file(dirs["d4-w1-fp"] / "config.yaml",
                                             dirs["d4-w1-fp"] / "model.pth", "cpu")
    model.eval()
    fp32 = onnx_export.export_onnx(model, root / "fp32.onnx", N_MELS)
    return {"root": root, "dirs": dirs, "model": model, "fp32": fp32}


class _Front(torch.nn.Module):
    """The subsampling's Conv2d + ReLU stack alone: features [B, T, F] -> [B, C, T', F']."""

    def __init__(self, conv: torch.nn.Module):
        super().__init__()
        self.conv = conv

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.conv(feats.unsqueeze(1))


def _session(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _feats(frames: int, batch: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, frames, N_MELS),
                                                       dtype=np.float32)


def test_float_gemm_front_equals_torch_conv(toy):
    conv = toy["model"].encoder.embed.conv
    path = toy["root"] / "front.onnx"
    with torch.no_grad():
        torch.onnx.export(_Front(conv).eval(), (torch.randn(1, 100, N_MELS),), str(path),
                          input_names=["feats"], output_names=["y"], opset_version=17,
                          dynamic_axes={"feats": {0: "b", 1: "t"}, "y": {0: "b", 2: "t"}},
                          dynamo=False)
    report = onnx_front.rewrite_front(path, toy["root"] / "front.gemm.onnx", "gemm")
    assert list(report.rewritten.values()) == ["gemm", "gemm"]
    session = _session(report.path)
    assert not [n for n in report_nodes(report.path) if n.op_type == "Conv"]
    for frames, batch in ((101, 1), (100, 1), (57, 3)):
        feats = _feats(frames, batch)
        with torch.no_grad():
            want = conv(torch.from_numpy(feats).unsqueeze(1)).numpy()
        got = session.run(None, {"feats": feats})[0]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def report_nodes(path):
    import onnx

    return list(onnx.load(str(path)).graph.node)


def test_float_gemm_whole_encoder_matches_the_conv_export(toy):
    report = onnx_front.rewrite_front(toy["fp32"], toy["root"] / "gemm.onnx", "gemm")
    feats = {"feats": _feats(300), "feats_lengths": np.array([300])}
    want = _session(toy["fp32"]).run(None, feats)
    got = _session(report.path).run(None, feats)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[0], want[0], rtol=0, atol=1e-4)


def test_int8_front_agrees_with_the_exact_export(toy, capsys):
    report = onnx_front.rewrite_front(toy["fp32"], toy["root"] / "int8.onnx", "int8")
    assert list(report.rewritten.values()) == ["int8", "int8"]
    ops = [n.op_type for n in report_nodes(report.path)]
    assert ops.count("MatMulInteger") == 2 and ops.count("DynamicQuantizeLinear") == 2
    feats = {"feats": _feats(400, seed=1), "feats_lengths": np.array([400])}
    want = _session(toy["fp32"]).run(None, feats)[2][0]
    got = _session(report.path).run(None, feats)[2][0]
    assert got.shape == want.shape
    agreement = float(np.mean(got.argmax(-1) == want.argmax(-1)))
    with capsys.disabled():
        print(f"\nint8 GEMM front vs exact, d4-w1-fp toy, 400 frames: CTC argmax agreement "
              f"{agreement:.1%}; max |posterior diff| "
              f"{np.abs(np.exp(got) - np.exp(want)).max():.4f}")
    assert agreement >= AGREEMENT
    assert np.abs(np.exp(got) - np.exp(want)).max() < 0.5


@pytest.mark.parametrize("mode", ["int8", "gemm"])
def test_channel_last_flatten_drops_two_transposes_and_changes_no_int8_output(toy, mode):
    """The front GEMM's channel-last output feeds the subsampling Linear directly (its
    weight rows permuted): in float the same values up to the order of summation, and
    after dynamic int8 bit for bit the same, padded batch included."""
    front = onnx_front.rewrite_front(toy["fp32"], toy["root"] / f"{mode}.front.onnx", mode).path
    flat = toy["root"] / f"{mode}.flat.onnx"
    assert flatten_front_channels_last(front, flat) == ["/encoder/embed/out/out.0/MatMul"]

    def transposes(path) -> int:
        return sum(n.op_type == "Transpose" for n in report_nodes(path))

    assert transposes(flat) == transposes(front) - 2
    int8 = {p: onnx_export.quantize_onnx_int8(p, p.with_suffix(".q.onnx")) for p in (front, flat)}
    for feats in ({"feats": _feats(300), "feats_lengths": np.array([300])},
                  {"feats": _feats(257, batch=2, seed=3), "feats_lengths": np.array([257, 180])}):
        want, got = _session(front).run(None, feats), _session(flat).run(None, feats)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_allclose(got[0], want[0], rtol=0, atol=1e-4)
        want, got = _session(int8[front]).run(None, feats), _session(int8[flat]).run(None, feats)
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)


def test_channel_last_flatten_leaves_a_conv_front_alone(toy):
    flat = toy["root"] / "conv.flat.onnx"
    assert flatten_front_channels_last(toy["fp32"], flat) == []
    assert [n.op_type for n in report_nodes(flat)] == [n.op_type for n in report_nodes(toy["fp32"])]


def test_auto_decides_each_layer_by_measurement(toy):
    report = onnx_front.rewrite_front(toy["fp32"], toy["root"] / "auto.onnx", "auto")
    assert len(report.decisions) == 2
    for line in report.decisions:
        assert "ms on this CPU" in line and "[1x" in line, line
    int8 = [line for line in report.decisions if "MatMulInteger" in line]
    assert len(int8) == sum(k == "int8" for k in report.rewritten.values())
    ops = [n.op_type for n in report_nodes(report.path)]
    assert ops.count("MatMulInteger") == len(int8)


def test_deploy_puts_the_int8_front_in_the_fast_variant_only(toy):
    directory = toy["dirs"]["d4-w1-int4"]
    out = ensure_exported(directory, variants=("exact", "fast"), kernels="float",
                          front="int8", log=lambda _m: None)
    meta = json.loads((out / "deploy.json").read_text())
    assert meta["front"] == "int8" and len(meta["front_decisions"]) == 2
    assert "2 Conv2d as int8 GEMM" in meta["variants"]["fast"]["kernels"]
    exact_ops = [n.op_type for n in report_nodes(out / "model.onnx")]
    fast_ops = [n.op_type for n in report_nodes(out / "model.fast.onnx")]
    assert "MatMulInteger" not in exact_ops and fast_ops.count("MatMulInteger") == 2
    from espnet_allinone.deploy.build import is_current
    from espnet_allinone.deploy.runtime import OnnxSpeech2Text

    assert is_current(directory, ("exact", "fast"), "float", front="int8")
    assert not is_current(directory, ("exact", "fast"), "float", front="conv")
    assert is_current(directory, ("exact",), "float", front="conv")  # exact: no front choice
    speech = (np.random.default_rng(0).standard_normal(16000) * 0.1).astype(np.float32)
    exact = OnnxSpeech2Text(out).log_probs([speech])[0]
    fast = OnnxSpeech2Text(out, variant="fast").log_probs([speech])[0]
    assert fast.shape == exact.shape
    assert np.abs(np.exp(fast) - np.exp(exact)).max() < 0.5


def test_a_bad_front_mode_is_named(toy, tmp_path):
    with pytest.raises(onnx_front.FrontModeError, match=r"'fp16'.*auto, conv, gemm, int8"):
        onnx_front.rewrite_front(toy["fp32"], tmp_path / "x.onnx", "fp16")
    assert not (tmp_path / "x.onnx").exists()
    directory = toy["dirs"]["d4-w1-fp"]
    with pytest.raises(AllInOneError, match=r"front mode 'int4' unknown"):
        ensure_exported(directory, variants=("exact", "fast"), front="int4",
                        log=lambda _m: None, force=True)
    assert not export_dir_for(directory).exists()
    from espnet_allinone.bin.transcribe import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--model", str(directory), "--front", "int4", "x.wav"])
    assert exit_info.value.code == 2
