"""Low-bit weights of an extracted subsystem as onnxruntime kernels.

Each quantised Linear layer of an exported graph (a float ``MatMul`` whose
weight equals the dequantised packed weight) becomes a ``MatMulNBits`` node
holding the subsystem's own codes, scales and zero points, so it computes
exactly what the PyTorch model computes while its weights take 2, 4 or 8 bits
in the file. Whether that is also the fastest exact form depends on the CPU
and onnxruntime version: ``policy="auto"`` times ``MatMulNBits`` against the
float ``MatMul`` for each layer shape and keeps float where the low-bit kernel
is slower, saying so in the report (``policy="nbits"`` always maps, for the
smallest file; ``"float"`` never does).

Weights on the balanced grid (code q means (q + 1/2) x scale) keep their
codes: the offset is the zero point, 2^(bits-1) - 1/2 as a float
(MatMulNBits computes (u - zp) x scale of the unsigned level u = q +
2^(bits-1), the same number). Where this onnxruntime's kernel takes no float
zero points (CPU: not at 8 bits), such a layer stays a float MatMul of the
dequantised weight, with the reason in the report.

``quantize_int8`` is onnxruntime's dynamic int8 quantisation of the rest
(float MatMuls -> ``MatMulInteger``, and the Conv2d subsampling front and the
conv module -> ``ConvInteger``): faster, not exact.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

POLICIES = ("auto", "nbits", "float")
NBITS_BITS = (2, 4, 8)
TIMING_FRAMES = 250          # encoder frames of 10 s of audio after 4x subsampling
SLOWER_TOLERANCE = 1.10      # keep MatMulNBits unless it is >10% slower than float


@dataclass
class QuantizedLinear:
    """One packed weight, as the integer arrays MatMulNBits takes."""

    name: str
    bits: int
    codes: np.ndarray          # [N, K] unsigned levels (symmetric codes shifted by 2^(bits-1))
    scale: np.ndarray          # [N, K // block] float32
    zero_point: np.ndarray | None  # [N, K // block] uint8, float32 (balanced grid: the
    #                                codes' 2^(bits-1) - 1/2) or None (default 2^(bits-1))
    block: int
    weight_t: np.ndarray       # [K, N] float32: the dequantised weight as the MatMul holds it

    @property
    def float_zero_point(self) -> bool:
        return self.zero_point is not None and self.zero_point.dtype == np.float32

    @property
    def zero_point_kind(self) -> str:
        if self.zero_point is None:
            return "default"
        return "float" if self.float_zero_point else "uint8"


@dataclass
class LowBitReport:
    path: Path
    replaced: int = 0
    kept_float: list[str] = field(default_factory=list)
    decisions: list[str] = field(default_factory=list)


def _quantized_weight(state_dict: dict[str, torch.Tensor], name: str):
    """The QuantizedWeight stored under ``name`` (the one use of the packed format)."""
    try:
        from espnet_allinone.quant.packed_format import from_state
    except ImportError:  # before the move of packed_format to quant/
        from espnet_allinone.export.packed_format import to_quantized

        return to_quantized({k[len(name):]: v for k, v in state_dict.items()
                             if k.startswith(name + "_")})
    return from_state(state_dict, name)


def packed_linears(state_dict: dict[str, torch.Tensor]) -> list[QuantizedLinear]:
    """Every packed 2-D weight of an extracted model's ``state_dict`` (Conv1d ones too)."""
    out = []
    for key in sorted(k for k in state_dict if k.endswith("_codes")):
        name = key[: -len("_codes")]
        qw = _quantized_weight(state_dict, name)
        n_out, k_in = qw.shape
        blocks = k_in // qw.group_size
        symmetric = qw.zero_point is None
        codes = qw.codes.to(torch.int32) + (2 ** (qw.bits - 1) if symmetric else 0)
        scale = qw.scale.float().expand(n_out, blocks).contiguous()
        offset = _grid_offset(qw)
        if not symmetric:
            zp = qw.zero_point.to(torch.uint8).expand(n_out, blocks).contiguous().numpy()
        elif offset:  # (u - (2^(b-1) - offset)) * s == (q + offset) * s, exactly
            zp = np.full((n_out, blocks), 2 ** (qw.bits - 1) - offset, dtype=np.float32)
        else:
            zp = None
        out.append(QuantizedLinear(
            name, qw.bits, codes.numpy().astype(np.uint8), scale.numpy(), zp, qw.group_size,
            qw.dequantize().t().contiguous().numpy().astype(np.float32)))
    return out


def _grid_offset(qw) -> float:
    from espnet_allinone.quant.fake_quant import grid_offset

    return grid_offset(getattr(qw, "grid", "integer"))


def pack_rows(values: np.ndarray, bits: int) -> np.ndarray:
    """[N, M] unsigned levels -> [N, ceil(M * bits / 8)] uint8, first value in the low bits."""
    per = 8 // bits
    n, m = values.shape
    padded = np.zeros((n, -(-m // per) * per), dtype=np.uint8)
    padded[:, :m] = values
    grouped = padded.reshape(n, -1, per)
    out = np.zeros(grouped.shape[:2], dtype=np.uint8)
    for j in range(per):
        out |= (grouped[:, :, j] << (j * bits)).astype(np.uint8)
    return out


def nbits_supported(bits: int, block: int, float_zero_point: bool = False) -> str | None:
    """None if MatMulNBits takes this layout, else why not (``float_zero_point``: the
    balanced grid's zero point 2^(bits-1) - 1/2, tried once on this onnxruntime)."""
    if bits not in NBITS_BITS:
        return f"{bits}-bit weights: MatMulNBits takes {list(NBITS_BITS)} bits"
    if block < 16 or block & (block - 1):
        return f"group size {block}: MatMulNBits needs a power of two >= 16"
    if float_zero_point and not _float_zero_points_work(bits):
        return (f"balanced grid at {bits} bits: this onnxruntime's MatMulNBits takes no float "
                "zero point (the grid's 1/2 offset) there")
    return None


_FLOAT_ZP: dict[int, bool] = {}


def _float_zero_points_work(bits: int) -> bool:
    """Whether MatMulNBits here runs ``bits``-bit codes with float zero points correctly."""
    if bits not in _FLOAT_ZP:
        from onnx import helper
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

        refused = (ort_errors.Fail, ort_errors.InvalidArgument, ort_errors.NotImplemented,
                   ort_errors.InvalidGraph, ort_errors.RuntimeException)
        k_in, n_out, block = 32, 4, 16
        rng = np.random.default_rng(0)
        codes = rng.integers(0, 2**bits, (n_out, k_in)).astype(np.uint8)
        scale = np.full((n_out, k_in // block), 0.25, dtype=np.float32)
        zp = np.full_like(scale, 2 ** (bits - 1) - 0.5)
        weight = (codes.astype(np.float32) - 2 ** (bits - 1) + 0.5) * 0.25
        q = QuantizedLinear("probe", bits, codes, scale, zp, block,
                            np.ascontiguousarray(weight.T))
        inits, names = nbits_node_inputs(q, "w")
        x = rng.standard_normal((1, 3, k_in)).astype(np.float32)
        try:
            session = _single_op_session(
                helper.make_node("MatMulNBits", ["x", *names], ["y"], domain="com.microsoft",
                                 K=k_in, N=n_out, bits=bits, block_size=block),
                inits, k_in, n_out, 1, quiet=True)
            got = session.run(None, {"x": x})[0]
            _FLOAT_ZP[bits] = bool(np.allclose(got, x @ q.weight_t, rtol=1e-5, atol=1e-5))
        except refused:  # the kernel refuses the layout
            _FLOAT_ZP[bits] = False
    return _FLOAT_ZP[bits]


def nbits_node_inputs(q: QuantizedLinear, prefix: str) -> tuple[list, list[str]]:
    """Initializers and input names (after the activation) of q's MatMulNBits node."""
    from onnx import numpy_helper

    n_out, k_in = q.codes.shape
    blocks = k_in // q.block
    packed = pack_rows(q.codes, q.bits).reshape(n_out, blocks, q.block * q.bits // 8)
    inits = [numpy_helper.from_array(packed, prefix + "_B"),
             numpy_helper.from_array(q.scale.reshape(-1), prefix + "_scales")]
    names = [prefix + "_B", prefix + "_scales"]
    if q.float_zero_point:  # one float per block, not packed
        inits.append(numpy_helper.from_array(q.zero_point.reshape(-1), prefix + "_zp"))
        names.append(prefix + "_zp")
    elif q.zero_point is not None:
        inits.append(numpy_helper.from_array(pack_rows(q.zero_point, q.bits).reshape(-1),
                                             prefix + "_zp"))
        names.append(prefix + "_zp")
    return inits, names


def _single_op_session(node, inits, k_in: int, n_out: int, threads: int,
                       quiet: bool = False):
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [node], "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, None, k_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, None, n_out])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if quiet:  # a probe: a refusal is an answer, not an error to log
        options.log_severity_level = 4
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


_TIMINGS: dict[tuple, tuple[float, float]] = {}


def time_nbits_vs_float(q: QuantizedLinear, threads: int = 1, rounds: int = 15) -> tuple[float, float]:
    """(MatMulNBits ms, float MatMul ms) for q's shape on this CPU, fastest of interleaved rounds."""
    from onnx import helper, numpy_helper

    n_out, k_in = q.codes.shape
    key = (q.bits, k_in, n_out, q.block, q.zero_point_kind, threads)
    if key in _TIMINGS:
        return _TIMINGS[key]
    inits, names = nbits_node_inputs(q, "w")
    nbits = _single_op_session(
        helper.make_node("MatMulNBits", ["x", *names], ["y"], domain="com.microsoft",
                         K=k_in, N=n_out, bits=q.bits, block_size=q.block),
        inits, k_in, n_out, threads)
    dense = _single_op_session(helper.make_node("MatMul", ["x", "W"], ["y"]),
                               [numpy_helper.from_array(q.weight_t, "W")], k_in, n_out, threads)
    x = {"x": np.random.default_rng(0).standard_normal((1, TIMING_FRAMES, k_in),
                                                       dtype=np.float32)}
    best = [float("inf"), float("inf")]
    for _ in range(rounds):
        for i, sess in enumerate((nbits, dense)):
            start = time.perf_counter()
            sess.run(None, x)
            best[i] = min(best[i], time.perf_counter() - start)
    _TIMINGS[key] = (best[0] * 1e3, best[1] * 1e3)
    return _TIMINGS[key]


def map_low_bit(state_dict: dict[str, torch.Tensor], src: Path, dst: Path,
                policy: str = "auto", threads: int = 1) -> LowBitReport:
    """Rewrite ``src``'s quantised Linear MatMuls as MatMulNBits (per ``policy``) into ``dst``."""
    import onnx
    from onnx import helper, numpy_helper

    if policy not in POLICIES:
        raise ValueError(f"kernel policy {policy!r} unknown; valid: {', '.join(POLICIES)}")
    quantized = packed_linears(state_dict)
    report = LowBitReport(Path(dst))
    by_value = {q.weight_t.tobytes(): q for q in quantized if q.codes.ndim == 2}
    graph_model = onnx.load(str(src))
    graph = graph_model.graph
    inits = {init.name: init for init in graph.initializer}
    new_nodes, used, matched = [], set(), set()
    decided: dict[tuple, str | None] = {}
    for node in graph.node:
        b = node.input[1] if node.op_type == "MatMul" and len(node.input) == 2 else None
        q = None
        if b in inits:
            array = numpy_helper.to_array(inits[b])
            if array.ndim == 2 and array.dtype == np.float32:
                q = by_value.get(array.tobytes())
        if q is None:
            new_nodes.append(node)
            continue
        matched.add(q.name)
        n_out, k_in = q.codes.shape
        shape_key = (q.bits, k_in, n_out, q.block, q.zero_point_kind)
        if shape_key not in decided:
            decided[shape_key] = _decide(q, policy, threads, report)
        if decided[shape_key] is not None:
            report.kept_float.append(f"{q.name}: {decided[shape_key]}")
            new_nodes.append(node)
            continue
        prefix = f"{b}_q{q.bits}"
        extra, names = nbits_node_inputs(q, prefix)
        graph.initializer.extend(extra)
        new_nodes.append(helper.make_node(
            "MatMulNBits", [node.input[0], *names], list(node.output),
            name=(node.name or b) + f"_q{q.bits}", domain="com.microsoft",
            K=k_in, N=n_out, bits=q.bits, block_size=q.block))
        used.add(b)
        report.replaced += 1
    for q in quantized:
        if q.name not in matched:
            report.kept_float.append(f"{q.name}: not a MatMul in the graph (a convolution)")
    del graph.node[:]
    graph.node.extend(new_nodes)
    still_used = {i for n in graph.node for i in n.input}
    keep = [i for i in graph.initializer if i.name not in used or i.name in still_used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    if not any(op.domain == "com.microsoft" for op in graph_model.opset_import):
        graph_model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(graph_model, str(dst))
    return report


def _decide(q: QuantizedLinear, policy: str, threads: int, report: LowBitReport) -> str | None:
    """None: use MatMulNBits; otherwise the reason to keep the float MatMul."""
    n_out, k_in = q.codes.shape
    shape = f"[{TIMING_FRAMES}x{k_in}]x[{k_in}x{n_out}] {q.bits}-bit, groups of {q.block}"
    why_not = nbits_supported(q.bits, q.block, q.float_zero_point)
    if why_not is not None:
        report.decisions.append(f"{shape}: float MatMul ({why_not})")
        return why_not
    if policy == "float":
        report.decisions.append(f"{shape}: float MatMul (kernel policy 'float')")
        return "kernel policy 'float'"
    if policy == "nbits":
        report.decisions.append(f"{shape}: MatMulNBits (kernel policy 'nbits')")
        return None
    t_nbits, t_float = time_nbits_vs_float(q, threads)
    measured = f"MatMulNBits {t_nbits:.3f} ms, float MatMul {t_float:.3f} ms on this CPU"
    if t_nbits > SLOWER_TOLERANCE * t_float:
        report.decisions.append(f"{shape}: float MatMul, dequantised ({measured})")
        return f"MatMulNBits slower here ({measured})"
    report.decisions.append(f"{shape}: MatMulNBits ({measured})")
    return None


CONV_POLICIES = ("auto", "int8", "float")


def quantize_int8(src: Path, dst: Path, convs: bool = True) -> Path:
    """onnxruntime dynamic int8 of the float MatMuls (and Convs); MatMulNBits stay."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    ops = ["MatMul", "Conv"] if convs else ["MatMul"]
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=ops)
    return Path(dst)


def _time_graph(path: Path, n_mels: int, threads: int, rounds: int = 3) -> float:
    """Fastest run (ms) of an encoder graph on 10 s of random features."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {"feats": np.random.default_rng(0).standard_normal((1, 1000, n_mels),
                                                                 dtype=np.float32),
             "feats_lengths": np.array([1000], dtype=np.int64)}
    session.run(None, feeds)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        session.run(None, feeds)
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def quantize_int8_best(src: Path, dst: Path, n_mels: int, convs: str = "auto",
                       threads: int = 1) -> str:
    """Dynamic int8 MatMuls, plus int8 Convs (``ConvInteger``, the conv2d front
    included) when ``convs`` is "int8", or when "auto" and that is measured
    faster here. Returns the decision with its reason."""
    if convs not in CONV_POLICIES:
        raise ValueError(f"conv policy {convs!r} unknown; valid: {', '.join(CONV_POLICIES)}")
    if convs != "auto":
        quantize_int8(src, dst, convs=convs == "int8")
        return f"int8 MatMuls; convolutions {'int8 (ConvInteger)' if convs == 'int8' else 'float'}"\
            f" (conv policy '{convs}')"
    dst = Path(dst)
    with_convs = dst.with_name(dst.stem + ".conv-candidate.onnx")
    try:
        quantize_int8(src, dst, convs=False)
        quantize_int8(src, with_convs, convs=True)
        t_float = _time_graph(dst, n_mels, threads)
        t_int8 = _time_graph(with_convs, n_mels, threads)
        measured = (f"10 s of audio: {t_int8:.1f} ms with ConvInteger, {t_float:.1f} ms with "
                    "float convolutions on this CPU")
        if t_int8 < t_float:
            with_convs.replace(dst)
            return f"int8 MatMuls; convolutions int8 (ConvInteger) ({measured})"
        return f"int8 MatMuls; convolutions kept float, ConvInteger is slower here ({measured})"
    finally:
        with_convs.unlink(missing_ok=True)
