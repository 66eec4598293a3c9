"""Fast CPU inference of extracted models: dynamic int8, ONNX float/int8, MatMulNBits.

Speed is measured in benchmarks/bench_inference.py; here only agreement.
"""

from __future__ import annotations

import pytest
import torch
from helpers.toy_experiment import shared_toy_experiment

from espnet_allinone.deploy import onnx_export
from espnet_allinone.export.extract import Extractor

SUBS = ["d4-w1-int4", "d2-w0.5-int2", "d4-w1-fp"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from espnet2.tasks.asr import ASRTask

    root = tmp_path_factory.mktemp("fast")
    paths = shared_toy_experiment()  # groups of 16 symmetric: MatMulNBits-compatible
    extractor = Extractor(paths["config"], paths["model"])
    out = {}
    for sub in SUBS:
        result = extractor.extract(sub, root / "out")
        model, _ = ASRTask.build_model_from_file(
            result.directory / "config.yaml", result.directory / "model.pth", "cpu"
        )
        out[sub] = (model.eval(), result.directory)
    gen = torch.Generator().manual_seed(0)
    speech = torch.randn(2, 24000, generator=gen) * 0.1
    lengths = torch.tensor([24000, 17000])
    return root, out, speech, lengths


def _op_types(path) -> list[str]:
    import onnx

    return [node.op_type for node in onnx.load(str(path)).graph.node]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@torch.no_grad()
def test_torch_dynamic_int8_agrees_and_really_uses_int8(models):
    _, out, speech, lengths = models
    for sub, (model, _) in out.items():
        feats, flens = onnx_export.features(model, speech, lengths)
        ref = onnx_export.EncoderCTC(model)(feats, flens)
        q_model = onnx_export.int8_dynamic(model)
        kinds = {type(m).__name__ for m in q_model.encoder.modules()}
        assert "Linear" in kinds and not any(
            type(m) is torch.nn.Linear for m in q_model.encoder.modules()
        ), kinds  # every Linear became a dynamic quantized one
        q = onnx_export.EncoderCTC(q_model)(feats, flens)
        assert torch.equal(q[1], ref[1])
        assert _rel(q[0], ref[0]) < 0.05, sub
        assert (q[2] - ref[2]).abs().max() < 0.5, sub
        assert (model.encoder.encoders[0].feed_forward.w_1.weight.dtype == torch.float32)


@torch.no_grad()
def test_onnx_float_int8_and_4bit_matmulnbits(models):
    root, out, speech, lengths = models
    for sub, (model, _) in out.items():
        feats, flens = onnx_export.features(model, speech, lengths)
        ref = onnx_export.EncoderCTC(model)(feats, flens)
        path = onnx_export.export_onnx(model, root / "onnx" / f"{sub}.onnx", feats.shape[-1])
        got = onnx_export.OnnxEncoder(path)(feats, flens)
        assert torch.equal(got[1], ref[1])
        assert (got[0] - ref[0]).abs().max() <= 1e-4, sub
        assert (got[2] - ref[2]).abs().max() <= 1e-4, sub
        int8 = onnx_export.OnnxEncoder(onnx_export.quantize_onnx_int8(path, root / "onnx" / f"{sub}.i8.onnx"))
        got8 = int8(feats, flens)
        assert _rel(got8[0], ref[0]) < 0.05, sub
        assert "MatMulInteger" in _op_types(root / "onnx" / f"{sub}.i8.onnx")
        if sub == "d4-w1-int4":
            report = onnx_export.onnx_matmul_nbits(model, path, root / "onnx" / f"{sub}.q4.onnx")
            # q, k, v, out, pos + two FFNs x 2 Linear each, in 4 blocks
            assert report.replaced == 4 * 9
            # the conv module's 3 quantized Conv1d per block stay Conv nodes, named
            assert len(report.skipped) == 4 * 3
            assert all("a convolution" in k for k in report.skipped)
            got4 = onnx_export.OnnxEncoder(report.path)(feats, flens)
            assert (got4[0] - ref[0]).abs().max() <= 1e-4
            assert (got4[2] - ref[2]).abs().max() <= 1e-4
            assert _op_types(report.path).count("MatMulNBits") == 36
        elif sub == "d2-w0.5-int2":  # 2-bit: MatMulNBits bits=2, exact as well
            report = onnx_export.onnx_matmul_nbits(model, path, root / "onnx" / f"{sub}.q2.onnx")
            assert report.replaced == 2 * 9
            got2 = onnx_export.OnnxEncoder(report.path)(feats, flens)
            assert (got2[2] - ref[2]).abs().max() <= 1e-4
        else:
            with pytest.raises(ValueError, match="needs a low-bit packed_conformer model"):
                onnx_export.onnx_matmul_nbits(model, path, root / "onnx" / "x.onnx")


@torch.no_grad()
def test_kernel_policies_and_computed_positions(models):
    """'float' keeps every layer float with the reason; 'auto' measures and says so; the
    positional table is computed in the graph, not stored (file far below the table size)."""
    import onnx

    from espnet_allinone.deploy import onnx_lowbit

    root, out, speech, lengths = models
    model, _ = out["d4-w1-int4"]
    feats, _ = onnx_export.features(model, speech, lengths)
    path = onnx_export.export_onnx(model, root / "onnx" / "policy.onnx", feats.shape[-1])
    state = model.state_dict()
    kept = onnx_lowbit.map_low_bit(state, path, root / "onnx" / "f.onnx", "float")
    assert kept.replaced == 0 and all("kernel policy 'float'" in k for k in kept.kept_float
                                      if "convolution" not in k)
    auto = onnx_lowbit.map_low_bit(state, path, root / "onnx" / "a.onnx", "auto")
    assert len(auto.decisions) == 3  # one timing per distinct layer shape
    assert all("ms, float MatMul" in d for d in auto.decisions)
    slower = [k for k in auto.kept_float if "MatMulNBits slower here" in k]
    assert auto.replaced + len(slower) == 36  # each Linear either mapped or kept with the reason
    with pytest.raises(ValueError, match="kernel policy 'fast' unknown; valid: auto, nbits, float"):
        onnx_lowbit.map_low_bit(state, path, root / "onnx" / "x.onnx", "fast")
    graph = onnx.load(str(path)).graph
    assert "Sin" in {n.op_type for n in graph.node}
    d_model = model.encoder.output_size()
    table_bytes = 4 * d_model * (2 * 5000 - 1)
    assert path.stat().st_size < table_bytes
    # longer than anything traced: the computed positions follow the input
    long_speech = torch.randn(1, 16000 * 4, generator=torch.Generator().manual_seed(1)) * 0.1
    f2, l2 = onnx_export.features(model, long_speech, torch.tensor([16000 * 4]))
    ref = onnx_export.EncoderCTC(model)(f2, l2)
    got = onnx_export.OnnxEncoder(path)(f2, l2)
    assert (got[2] - ref[2]).abs().max() <= 1e-4


def test_stock_speech2text_int8_option_and_export_cli(models, capsys):
    """ESPnet's own quantize_asr_model option runs an extracted model; the CLI exports."""
    from espnet2.bin.asr_inference import Speech2Text

    from espnet_allinone.bin.export_onnx import main

    root, out, speech, _ = models
    _model, directory = out["d4-w1-int4"]
    kwargs = {"asr_train_config": directory / "config.yaml",
                  "asr_model_file": directory / "model.pth", "ctc_weight": 1.0, "beam_size": 2}
    float_hyp = Speech2Text(**kwargs)(speech[0].numpy())
    s2t = Speech2Text(**kwargs, quantize_asr_model=True)
    assert any("Quantized" in type(m).__module__ or "quantized" in type(m).__module__
               for m in s2t.asr_model.encoder.modules())
    int8_hyp = s2t(speech[0].numpy())
    assert len(int8_hyp) == len(float_hyp) == 1
    assert main(["--asr_train_config", str(directory / "config.yaml"), "--asr_model_file",
                 str(directory / "model.pth"), "--outdir", str(root / "cli"), "--nbits"]) == 0
    assert "36 MatMulNBits layers" in capsys.readouterr().out
    assert (root / "cli" / "encoder.q4.onnx").is_file()
