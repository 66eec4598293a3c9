"""The conv module's pointwise convolutions as MatMuls (``deploy/onnx_pointwise.py``).

In float the rewrite is the same arithmetic as the Conv (atol 1e-5, a padded
batch included); the int8 variant then holds no pointwise Conv, quantizes
those layers as int8 GEMMs, says so in ``deploy.json``, and stays close to
the exact export (frame-level CTC argmax agreement reported and held to a
sane threshold).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.toy_experiment import shared_toy_experiment

from espnet_allinone.deploy import onnx_export
from espnet_allinone.deploy.build import ensure_exported
from espnet_allinone.deploy.onnx_pointwise import pointwise_convs_as_matmuls
from espnet_allinone.export.extract import Extractor

N_MELS = 20
BLOCKS = 4


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from espnet2.tasks.asr import ASRTask

    paths = shared_toy_experiment()
    root = tmp_path_factory.mktemp("pointwise")
    directory = Extractor(paths["config"], paths["model"]).extract(
        "d4-w1-fp", root / "extracted", verify=False).directory
    model, _ = ASRTask.build_model_from_file(directory / "config.yaml",
                                             directory / "model.pth", "cpu")
    fp32 = onnx_export.export_onnx(model.eval(), root / "fp32.onnx", N_MELS)
    return {"root": root, "directory": directory, "fp32": fp32}


def _nodes(path):
    import onnx

    return list(onnx.load(str(path)).graph.node)


def _pointwise_convs(path) -> list[str]:
    import onnx

    model = onnx.load(str(path))
    dims = {i.name: list(i.dims) for i in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "Conv"
            and len(dims.get(n.input[1], [])) == 3 and dims[n.input[1]][2] == 1]


def _run(path, feats, lengths):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"feats": feats, "feats_lengths": lengths})


def test_float_rewrite_is_the_conv_arithmetic(toy):
    before = _pointwise_convs(toy["fp32"])
    assert len(before) == 2 * BLOCKS  # pointwise_conv1 and pointwise_conv2 of each block
    dst = toy["root"] / "pointwise.onnx"
    rewritten = pointwise_convs_as_matmuls(toy["fp32"], dst)
    assert sorted(rewritten) == sorted(before)
    assert _pointwise_convs(dst) == []
    def convs(path) -> int:
        return sum(n.op_type == "Conv" for n in _nodes(path))

    assert convs(dst) == convs(toy["fp32"]) - 2 * BLOCKS  # depthwise and front kept
    rng = np.random.default_rng(0)
    for feats, lengths in [(rng.standard_normal((1, 300, N_MELS), dtype=np.float32),
                            np.array([300])),
                           (rng.standard_normal((2, 257, N_MELS), dtype=np.float32),
                            np.array([257, 180]))]:
        want, got = _run(toy["fp32"], feats, lengths), _run(dst, feats, lengths)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_allclose(got[0], want[0], rtol=0, atol=1e-5)
        np.testing.assert_allclose(got[2], want[2], rtol=0, atol=1e-5)


def test_int8_variant_quantizes_the_pointwise_layers(toy, capsys):
    out = ensure_exported(toy["directory"], variants=("exact", "int8"), convs="float",
                          log=lambda _m: None)
    meta = json.loads((out / "deploy.json").read_text())
    assert meta["int8_pointwise"] == "int8-gemm"
    assert f"{2 * BLOCKS} pointwise convolutions as int8 MatMuls" in \
        meta["variants"]["int8"]["kernels"]
    assert len(_pointwise_convs(out / "model.onnx")) == 2 * BLOCKS  # exact: unchanged
    int8_nodes = _nodes(out / "model.int8.onnx")
    assert not [n for n in int8_nodes if n.op_type == "Conv" and "pointwise" in n.name]
    quantized = [n.name for n in int8_nodes
                 if n.op_type in ("DynamicQuantizeMatMul", "MatMulInteger")
                 and "pointwise" in n.name]
    assert len(quantized) == 2 * BLOCKS, quantized
    feats = np.random.default_rng(1).standard_normal((1, 400, N_MELS), dtype=np.float32)
    from espnet_allinone.deploy.runtime import OnnxSpeech2Text

    exact = OnnxSpeech2Text(out).session.run(None, {"feats": feats,
                                                    "feats_lengths": np.array([400])})[2][0]
    int8 = OnnxSpeech2Text(out, "int8").session.run(None, {"feats": feats,
                                                           "feats_lengths": np.array([400])})[2][0]
    agreement = float(np.mean(int8.argmax(-1) == exact.argmax(-1)))
    with capsys.disabled():
        print(f"\nint8 variant (pointwise as int8 MatMuls) vs exact, d4-w1-fp toy, 400 frames: "
              f"CTC argmax agreement {agreement:.1%}")
    assert agreement >= 0.9
