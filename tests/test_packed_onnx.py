"""The deployed .onnx holds the subsystem's own N-bit weights, and still decodes exactly.

Two toy experiments: groups of 36 (not a power of two, as the default recipe's
144 / 4 heads: MatMulNBits only with each group padded to a block of 64, which
kernels "auto" measures per shape against the float MatMul; kernels "nbits"
forces it) and groups of 32 (MatMulNBits for the Linear layers, the conv
module's weights bit-packed). For fp, int8, int4 and int2 subsystems: the
file is about the packed ``model.pth``'s size and far below the float export,
no float initialiser equals a packed weight, the expansion is folded away at
session start, and greedy output equals ESPnet's CTC argmax token for token.
The padded weights dequantize to the unpadded ones exactly, with zeros in the
padding. The fast variant (MatMulNBits with int8 compute) is compared with the
exact one and its token agreement reported.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile
import torch
from helpers.toy_experiment import (
    DEFAULT_ENCODER_CONF,
    shared_toy_experiment,
)

from espnet_allinone.corpus.datadir import read_table
from espnet_allinone.deploy import onnx_lowbit
from espnet_allinone.deploy.build import ensure_exported, export_dir_for
from espnet_allinone.deploy.runtime import OnnxSpeech2Text
from espnet_allinone.export.extract import Extractor
from espnet_allinone.quant import QuantConfig, WeightFakeQuantizer
from espnet_allinone.quant import packed_format as pf
from tests.test_transcribe import _espnet_greedy

SUBS = ("d4-w1-fp", "d4-w1-int8", "d4-w1-int4", "d4-w1-int2")
GROUPS = {  # group size -> (model width, FFN units, kernel policy)
    36: (72, 144, "auto"),    # MatMulNBits only padded to 64: "auto" measures it, per shape
    32: (64, 128, "nbits"),
}
PARTS = {36: {"front": "int8", "output": "int8"}}  # as the default recipe: 4-D conv2d front
RATIO, SLACK = 1.2, 32_000  # .onnx <= 1.2 x model.pth + the tiny model's graph overhead


def _toy(group: int):
    width, units, _ = GROUPS[group]
    conf = dict(DEFAULT_ENCODER_CONF, output_size=width, linear_units=units,
                quant_conf={"granularity": "group", "group_size": group})
    if group in PARTS:  # quantized front and CTC output layer: the training model attaches them
        conf["part_precisions"] = PARTS[group]
        return shared_toy_experiment(encoder_conf=conf, model="allinone")
    return shared_toy_experiment(encoder_conf=conf)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_corpus):
    root = tmp_path_factory.mktemp("packed_onnx")
    dirs = {}
    for group, (_, _, kernels) in GROUPS.items():
        paths = _toy(group)
        extractor = Extractor(paths["config"], paths["model"])
        for sub in SUBS:
            directory = extractor.extract(sub, root / f"g{group}", verify=False).directory
            ensure_exported(directory, variants=("exact", "fast"), kernels=kernels,
                            log=lambda _m: None)
            dirs[group, sub] = directory
    wavs = list(read_table(tiny_corpus / "test" / "wav.scp").values())
    audio = [soundfile.read(w, dtype="float32")[0] for w in wavs]
    return dirs, audio


def _packed_weights(directory) -> list[onnx_lowbit.QuantizedLinear]:
    return onnx_lowbit.packed_linears(torch.load(directory / "model.pth", weights_only=True))


def test_onnx_file_is_the_packed_models_size(exported):
    import onnx

    dirs, _ = exported
    report = []
    for group in GROUPS:
        sizes = {}
        for sub in SUBS:
            directory = dirs[group, sub]
            out = export_dir_for(directory)
            meta = json.loads((out / "deploy.json").read_text())
            onnx_bytes = (out / "model.onnx").stat().st_size
            pth_bytes = (directory / "model.pth").stat().st_size
            sizes[sub] = onnx_bytes
            report.append(f"groups of {group} {sub}: model.onnx {onnx_bytes:,} B, "
                          f"model.pth {pth_bytes:,} B ({onnx_bytes / pth_bytes:.2f}x)")
            assert onnx_bytes <= RATIO * pth_bytes + SLACK, report[-1]
            assert meta["weight_storage"] == "packed" and meta["stored_float"] == []
            graph = onnx.load(str(out / "model.onnx")).graph
            nbits = [n for n in graph.node if n.op_type == "MatMulNBits"]
            packed = _packed_weights(directory)
            if sub.endswith("fp"):
                assert not packed and not nbits and meta["stored_packed"] == 0
                continue
            bits = int(sub.rsplit("int", 1)[1])
            assert bits in {q.bits for q in packed} <= {bits, 8}  # 8: the quantized parts
            if group in PARTS:  # the conv2d front (4-D weights) and the CTC output, packed
                names = {q.name for q in packed}
                assert {"encoder.embed.conv.0.weight", "encoder.embed.conv.2.weight",
                        "ctc.ctc_lo.weight"} <= names, sorted(names)
            # no packed weight is in the file as float, in either orientation
            floats = {onnx.numpy_helper.to_array(i).tobytes() for i in graph.initializer
                      if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) >= 2}
            for q in packed:
                assert q.weight_t.tobytes() not in floats, q.name
                assert np.ascontiguousarray(q.weight_t.T).tobytes() not in floats, q.name
            # every packed weight is either a MatMulNBits or stored bit-packed
            assert len(nbits) + meta["stored_packed"] >= len(packed)
            if group == 36:  # "auto": the padded kernel timed against float, per shape
                assert meta["kernel_decisions"] and all(
                    "groups of 36" in d and "groups padded to blocks of 64" in d
                    and "ms, float MatMul" in d for d in meta["kernel_decisions"])
                assert all(_attr(n, "block_size") == 64 for n in nbits)
            else:  # kernels "nbits": each Linear (4 blocks x 9) a MatMulNBits of its bits
                assert len(nbits) == 4 * 9 and all(
                    next(a.i for a in n.attribute if a.name == "bits") == bits for n in nbits)
        fp = sizes["d4-w1-fp"]
        assert sizes["d4-w1-int2"] < sizes["d4-w1-int4"] < sizes["d4-w1-int8"] < 0.55 * fp
        assert sizes["d4-w1-int4"] < 0.45 * fp and sizes["d4-w1-int2"] < 0.4 * fp
    print("\n" + "\n".join(report))


def _attr(node, name: str) -> int:
    return next(a.i for a in node.attribute if a.name == name)


@pytest.fixture(scope="module")
def padded_nbits(exported, tmp_path_factory):
    """The groups-of-36 subsystems again, exported with kernels "nbits": every Linear a
    MatMulNBits of blocks of 64, each group of 36 padded."""
    dirs, audio = exported
    root = tmp_path_factory.mktemp("padded_nbits")
    out = {}
    for sub in SUBS[1:]:
        directory = root / sub
        shutil.copytree(dirs[36, sub], directory)
        ensure_exported(directory, kernels="nbits", log=lambda _m: None)
        out[sub] = directory
    return out, audio


def test_padded_groups_run_as_matmulnbits_and_equal_espnet(padded_nbits):
    """Every Linear of the 8-, 4- and 2-bit subsystems is a MatMulNBits (blocks of 64 fed
    by the padded activations); greedy output equals ESPnet's CTC argmax."""
    import onnx
    from espnet2.bin.asr_inference import Speech2Text

    dirs, audio = padded_nbits
    for sub, directory in dirs.items():
        bits = int(sub.rsplit("int", 1)[1])
        out = export_dir_for(directory)
        meta = json.loads((out / "deploy.json").read_text())
        graph = onnx.load(str(out / "model.onnx")).graph
        nbits = [n for n in graph.node if n.op_type == "MatMulNBits"]
        linears = [q for q in _packed_weights(directory) if q.name.startswith("encoder.encoders")
                   and "conv_module" not in q.name]
        assert len(linears) == 4 * 9
        # the 4 x 9 block Linears, the CTC output layer and the front's Linear (8-bit parts)
        assert len(nbits) == 4 * 9 + 2, [n.name for n in nbits]
        assert sorted(_attr(n, "bits") for n in nbits) == sorted([bits] * 36 + [8, 8])
        assert all(_attr(n, "block_size") == 64 and _attr(n, "K") % 64 == 0 for n in nbits)
        # each activation padded once, however many layers read it (query, key, value)
        pads = sum(n.op_type == "Pad" for n in graph.node)
        assert pads == len({n.input[0] for n in nbits}) < len(nbits)
        assert all("(kernel policy 'nbits')" in d and "groups padded to blocks of 64" in d
                   for d in meta["kernel_decisions"])
        assert meta["stored_float"] == []
        pth = (directory / "model.pth").stat().st_size
        assert (out / "model.onnx").stat().st_size <= RATIO * pth + SLACK, sub  # stored unpadded
        s2t = Speech2Text(asr_train_config=directory / "config.yaml",
                          asr_model_file=directory / "model.pth", ctc_weight=1.0)
        asr = OnnxSpeech2Text(out)
        n_tokens = 0
        for speech in audio:
            ref_ids, ref_logp = _espnet_greedy(s2t, speech)
            logp = asr.log_probs([speech])[0]
            assert logp.shape == ref_logp.shape and np.abs(logp - ref_logp).max() < 1e-4, sub
            assert asr(speech)[0].token_ids == ref_ids, sub
            n_tokens += len(ref_ids)
        assert n_tokens > 0, sub  # not a comparison of empty outputs


def _unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    """[..., bytes] uint8 -> [..., bytes x 8 / bits] levels, first value in the low bits."""
    shifts = np.arange(8 // bits, dtype=np.uint8) * bits
    return ((packed[..., None] >> shifts) & (2**bits - 1)).reshape(*packed.shape[:-1], -1)


def _dequantized_nbits(node, values: dict) -> np.ndarray:
    """[N, blocks, block_size] float32: a MatMulNBits node's weight as the kernel reads it."""
    bits, n_out = _attr(node, "bits"), _attr(node, "N")
    levels = _unpack(values[node.input[1]], bits).astype(np.float32)
    blocks = levels.shape[1]
    scale = values[node.input[2]].reshape(n_out, blocks, 1)
    if len(node.input) > 3 and node.input[3]:
        zp = values[node.input[3]]
        zp = (zp.reshape(n_out, blocks) if zp.dtype == np.float32
              else _unpack(zp.reshape(n_out, -1), bits)[:, :blocks])
        zp = zp.astype(np.float32)[..., None]
    else:
        zp = np.float32(2 ** (bits - 1))
    return (levels - zp) * scale


def test_padded_weights_dequantize_exactly_to_the_unpadded_ones(padded_nbits):
    """The deployed file's MatMulNBits inputs (the constant expansion evaluated in numpy, as
    the runtime does): each block of 64 holds the group of 36 as the packed model.pth
    dequantizes it, bit for bit, then 28 zeros."""
    import onnx

    from espnet_allinone.deploy import expand

    dirs, _ = padded_nbits
    for sub, directory in dirs.items():
        data = (export_dir_for(directory) / "model.onnx").read_bytes()
        expanded = expand.expand(data)
        values = dict(zip(expanded.names, expanded.arrays))
        graph = onnx.load_from_string(data).graph
        values.update({i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer
                       if i.name not in values})
        by_rows = {np.ascontiguousarray(q.weight_t.T).tobytes(): q
                   for q in _packed_weights(directory)}
        nodes = [n for n in graph.node if n.op_type == "MatMulNBits"]
        matched = set()
        for node in nodes:
            weight = _dequantized_nbits(node, values)
            n_out = weight.shape[0]
            assert weight.shape[2] == 64 and _attr(node, "K") == weight.shape[1] * 64
            assert np.all(weight[:, :, 36:] == 0), (sub, node.name)
            own = np.ascontiguousarray(weight[:, :, :36].reshape(n_out, -1))
            assert own.tobytes() in by_rows, (sub, node.name)  # exactly a packed weight
            matched.add(by_rows[own.tobytes()].name)
        assert nodes and len(matched) == len(nodes), sub  # each packed weight once


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("kind", ["symmetric", "asymmetric"])
def test_padded_layer_equals_the_float_matmul(bits, kind):
    """One layer of groups of 36 as padded MatMulNBits (kernel inputs as deployed: unpadded
    codes and the zero code's byte, expanded at session start): the padding dequantizes
    to 0 (the zero point), the output is x @ W up to summation order; on the balanced
    grid no code is 0, so such groups keep the float MatMul, with the reason."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    rows, cols, group = 20, 144, 36
    conf = {"granularity": "group", "group_size": group, "symmetric": kind == "symmetric"}
    weight = torch.randn(rows, cols, generator=torch.Generator().manual_seed(bits)) * 0.05
    qw = WeightFakeQuantizer(rows, cols, (bits,), QuantConfig(**conf)).quantize(weight, bits)
    (q,) = onnx_lowbit.packed_linears(pf.to_state(qw, "w"))
    assert q.padded and q.nbits_block == 64
    levels = onnx_lowbit.padded_levels(q)
    zero = onnx_lowbit.zero_codes(q)[..., None].astype(np.float32)
    scale = q.scale[..., None]
    padded = (levels.astype(np.float32) - zero) * scale
    assert np.all(padded[:, :, group:] == 0)
    assert padded[:, :, :group].reshape(rows, cols).tobytes() == \
        np.ascontiguousarray(q.weight_t.T).tobytes()
    consts = onnx_lowbit.Constants("c")
    _, names, expansion = onnx_lowbit.compact_nbits_inputs(q, "w", consts)
    nodes = expansion + onnx_lowbit.nbits_nodes(q, "x", names, ["y"], consts)
    graph = helper.make_graph(
        nodes, "padded", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, None, cols])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, None, rows])], consts.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    stored = sum(i.ByteSize() for i in consts.inits)
    assert stored < rows * cols * bits / 8 + 2 * rows * cols / group + 1200  # codes unpadded
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(bits).standard_normal((2, 7, cols), dtype=np.float32)
    got = session.run(None, {"x": x})[0]
    want = x.astype(np.float64) @ q.weight_t.astype(np.float64)
    assert got.shape == (2, 7, rows) and np.abs(got - want).max() < 1e-5
    balanced = WeightFakeQuantizer(rows, cols, (bits,), QuantConfig(
        granularity="group", group_size=group, grid="balanced")).quantize(weight, bits)
    (b,) = onnx_lowbit.packed_linears(pf.to_state(balanced, "w"))
    assert "balanced grid" in onnx_lowbit.nbits_supported(bits, group, b.float_zero_point)
    with pytest.raises(ValueError, match="no code of the balanced grid dequantizes to 0"):
        onnx_lowbit.zero_codes(b)


def test_greedy_output_equals_espnet(exported):
    from espnet2.bin.asr_inference import Speech2Text

    dirs, audio = exported
    for (group, sub), directory in dirs.items():
        s2t = Speech2Text(asr_train_config=directory / "config.yaml",
                          asr_model_file=directory / "model.pth", ctc_weight=1.0)
        asr = OnnxSpeech2Text(export_dir_for(directory))
        n_tokens = 0
        for speech in audio:
            ref_ids, ref_logp = _espnet_greedy(s2t, speech)
            logp = asr.log_probs([speech])[0]
            assert logp.shape == ref_logp.shape, (group, sub)
            assert np.abs(logp - ref_logp).max() < 1e-4, (group, sub)
            assert asr(speech)[0].token_ids == ref_ids, (group, sub)
            n_tokens += len(ref_ids)
        assert n_tokens > 0, (group, sub)  # not a comparison of empty outputs


def test_expansion_is_folded_once_at_session_start(exported, tmp_path):
    """onnxruntime constant-folds the unpacking: the optimised graph keeps none of it."""
    import onnx
    import onnxruntime as ort

    dirs, _ = exported
    for group in GROUPS:
        src = export_dir_for(dirs[group, "d4-w1-int2"]) / "model.onnx"
        ops = {n.op_type for n in onnx.load(str(src)).graph.node}
        assert {"BitShift", "Mod"} <= ops
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(tmp_path / f"g{group}.opt.onnx")
        ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
        folded = {n.op_type for n in onnx.load(str(tmp_path / f"g{group}.opt.onnx")).graph.node}
        assert not folded & {"BitShift", "Mod"}, folded


def _edit_distance(a: list[int], b: list[int]) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def test_fast_variant_token_agreement_with_exact(exported, capsys):
    """accuracy_level 4 where MatMulNBits runs; output close to, not equal to, exact."""
    import onnx

    dirs, audio = exported
    lines = []
    for sub in SUBS[1:]:
        out = export_dir_for(dirs[32, sub])
        meta = json.loads((out / "deploy.json").read_text())
        nodes = [n for n in onnx.load(str(out / "model.fast.onnx")).graph.node
                 if n.op_type == "MatMulNBits"]
        assert len(nodes) == 4 * 9 and all(
            next(a.i for a in n.attribute if a.name == "accuracy_level") == 4 for n in nodes)
        assert "accuracy_level 4" in meta["variants"]["fast"]["kernels"]
        assert (out / "model.fast.onnx").stat().st_size <= 1.05 * (out / "model.onnx").stat().st_size
        exact = OnnxSpeech2Text(out)
        fast = OnnxSpeech2Text(out, variant="fast")
        errors = tokens = 0
        for speech in audio:
            ref, got = exact(speech)[0].token_ids, fast(speech)[0].token_ids
            errors += _edit_distance(ref, got)
            tokens += len(ref)
            p, q = np.exp(exact.log_probs([speech])[0]), np.exp(fast.log_probs([speech])[0])
            assert p.shape == q.shape and np.abs(p - q).max() < 0.5, sub
        assert tokens > 0
        lines.append(f"fast vs exact, {sub} (groups of 32): token agreement "
                     f"{1 - errors / tokens:.1%} ({errors} edits in {tokens} tokens)")
    with capsys.disabled():
        print("\n" + "\n".join(lines))


def test_transcribe_fast_option(exported, tiny_corpus, capsys):
    from espnet_allinone.bin.transcribe import main

    dirs, _ = exported
    wav = next(iter(read_table(tiny_corpus / "test" / "wav.scp").values()))
    directory = dirs[32, "d4-w1-int4"]
    assert main(["--model", str(directory), "--kernels", "nbits", "--fast", wav]) == 0
    captured = capsys.readouterr()
    assert "variant fast" in captured.err and "exporting" not in captured.err
    fast = OnnxSpeech2Text(export_dir_for(directory), variant="fast")
    audio = soundfile.read(wav, dtype="float32")[0]
    assert captured.out == f"{wav}\t{fast(audio)[0].text}\n"
    assert main(["--model", str(directory), "--fast", "--variant", "int8", wav]) == 2
    assert "exclude each other" in capsys.readouterr().err


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("kind", ["symmetric", "asymmetric", "balanced", "per-tensor"])
def test_packed_initialiser_expands_bit_identically(bits, kind):
    """The expansion graph gives the packed format's dequantized weight bit for bit, as a
    MatMul operand, as a Conv weight and with a per-row (BatchNorm) factor folded in."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    rows, cols, group = 10, 72, 36  # 10 rows: not a multiple of 4 (2-bit planes padded)
    conf = {"symmetric": {"granularity": "group", "group_size": group},
            "asymmetric": {"granularity": "group", "group_size": group, "symmetric": False},
            "balanced": {"granularity": "group", "group_size": group, "grid": "balanced"},
            "per-tensor": {"granularity": "tensor"}}[kind]
    weight = torch.randn(rows, cols, generator=torch.Generator().manual_seed(bits)) * 0.05
    qw = WeightFakeQuantizer(rows, cols, (bits,), QuantConfig(**conf)).quantize(weight, bits)
    (q,) = onnx_lowbit.packed_linears(pf.to_state(qw, "w"))
    want = qw.dequantize().numpy()
    factor = (np.random.default_rng(bits).random(rows) + 0.5).astype(np.float32)
    cases = {"t": (None, None, want.T), "conv": ((rows, 8, 9), None, want.reshape(rows, 8, 9)),
             "folded": ((rows, 1, cols), factor,
                        (want * factor[:, None]).reshape(rows, 1, cols))}
    for name, (shape, row_factor, expected) in cases.items():
        inits, nodes = onnx_lowbit.packed_weight_nodes(q, "W", shape, row_factor)
        graph = helper.make_graph(nodes, "expand", [], [helper.make_tensor_value_info(
            "W", TensorProto.FLOAT, list(expected.shape))], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        got = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"]).run(None, {})[0]
        assert got.dtype == np.float32 and got.tobytes() == np.ascontiguousarray(
            expected).tobytes(), (kind, name)
        packed_bytes = sum(len(i.raw_data) for i in inits)
        assert packed_bytes < rows * cols * bits / 8 + 4 * rows * cols / group + 400, name
    assert onnx_lowbit.row_factors(want, want * factor[:, None]) is not None
    assert onnx_lowbit.row_factors(want, want + 1) is None


def test_runtime_expands_in_numpy_bit_identically(exported):
    """deploy.expand evaluates the constant expansion in numpy: the session it builds gives
    the very bits of onnxruntime's own constant folding; its minimal protobuf reader reads
    what the onnx package reads; a file without packed weights is loaded as it is."""
    import onnx
    import onnxruntime as ort

    from espnet_allinone.deploy import expand

    dirs, _ = exported
    rng = np.random.default_rng(0)
    feeds = {"feats": rng.standard_normal((2, 300, 20), dtype=np.float32),
             "feats_lengths": np.array([300, 222], dtype=np.int64)}
    for (group, sub), directory in dirs.items():
        path = export_dir_for(directory) / "model.onnx"
        data = path.read_bytes()
        expanded = expand.expand(data)
        if sub.endswith("fp"):
            assert expanded is None
            continue
        assert expanded.nodes_evaluated > 0 and expanded.names
        model = onnx.load_from_string(expanded.model)
        ops = {n.op_type for n in model.graph.node}
        assert not ops & {"BitShift", "Mod"}, (group, sub, ops)
        assert len(model.graph.node) == len(onnx.load_from_string(data).graph.node) - \
            expanded.nodes_evaluated
        stubs = {i.name for i in model.graph.initializer
                 if i.data_location == onnx.TensorProto.EXTERNAL}
        assert stubs == set(expanded.names)
        ours = expand.session(path, ort.SessionOptions(), ["CPUExecutionProvider"])
        folded = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for a, b in zip(ours.run(None, feeds), folded.run(None, feeds)):
            assert a.tobytes() == b.tobytes(), (group, sub)
        # the reader against the onnx package, node by node
        reference = onnx.load_from_string(data).graph
        graph = next(f[2] for f in expand.fields(data) if f[0] == 7)
        nodes = [expand._node(v, (s, e)) for n, w, v, s, e in expand.fields(graph) if n == 1]
        assert len(nodes) == len(reference.node)
        for got, want in zip(nodes, reference.node):
            assert (got.op_type, got.inputs, got.outputs, got.domain) == (
                want.op_type, list(want.input), list(want.output), want.domain)
            for attr in want.attribute:
                value = onnx.helper.get_attribute_value(attr)
                if attr.type in (onnx.AttributeProto.INT, onnx.AttributeProto.INTS):
                    assert got.attributes[attr.name] == value
        inits = {i.name: i for i in reference.initializer}
        for n, w, v, _, _ in expand.fields(graph):
            if n == 5:
                name, array = expand._tensor(v)
                if array is not None:
                    assert array.tobytes() == onnx.numpy_helper.to_array(inits[name]).tobytes()
