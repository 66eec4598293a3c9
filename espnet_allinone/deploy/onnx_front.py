"""The Conv2d subsampling front as GEMMs over patches (im2col): float, or int8 ``MatMulInteger``.

Why: the Conformer's conv2d front (two 3x3 stride-2 ``Conv`` + ReLU, then a
Linear) stays a float ``Conv`` in every exported subsystem, and onnxruntime's
int8 convolution (``ConvInteger``) is slower than float here, so the front
caps how fast a small subsystem can run. Its int8 matrix product
(``MatMulInteger``, VNNI/AMX where the CPU has them) is fast, so each Conv2d
can be written as one over patches:

* the input [B, C, H, W] is transposed to [B, H, W, C] (onnxruntime folds
  that into the reordering of the preceding Conv's output) and quantized
  once, per tensor (``DynamicQuantizeLinear``: uint8 codes, scale, zero
  point; before the unfold, so the patches are moved as bytes, not floats),
* unfolded by kh x kw strided ``Slice`` s
  (offset (i, j), step = stride, ends counted from the end so any H, W work)
  concatenated on the last axis: [B, Ho, Wo, kh x kw x C] (im2col, no gather),
* multiplied by the weight quantized per output channel (int8, symmetric),
  ``[kh x kw x C, N]``: ``MatMulInteger`` -> int32, ``Cast``, times input
  scale x channel scale, plus the bias (onnxruntime fuses these into its
  ``MatMulIntegerToFloat``), and transposed back to [B, N, Ho, Wo].

Modes (``FRONT_MODES``): ``conv`` keeps the exported float Conv (exact; the
``exact`` variant never gets anything else); ``gemm`` is the same unfold with
a float ``MatMul`` (the Conv's arithmetic up to the order of summation: the
check that the unfold is right); ``int8`` rewrites every front Conv2d as
above (activation quantization: not exact, a fast mode like
``accuracy_level`` 4); ``auto`` does so per layer only where measured faster
than the float Conv on this CPU, with 10 s of audio at the layer's input
(decisions in the report, as :func:`onnx_lowbit._decide` does for
``MatMulNBits``). Conv2d with a group, dilation or ``auto_pad`` are kept;
explicit pads become a ``Pad`` with zeros before the quantization.

The rewrite reads float Conv weights from initialisers: apply it to the
exporter's float graph, before :func:`onnx_lowbit.map_low_bit` bit-packs
what is left. The int8 weights are the front's own 8-bit weights only where
the packed format has one scale per output channel; group-wise scales (the
default recipe's groups of 36) are re-quantized per channel from the float
weight, another rounding of the fast mode.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from espnet_allinone.deploy.onnx_graph import node_attributes, set_nodes
from espnet_allinone.errors import AllInOneError

FRONT_MODES = ("auto", "conv", "gemm", "int8")
TIMING_FRAMES = 1000   # feature frames of 10 s of audio (10 ms hop): the front's input
INT64_MAX = np.iinfo(np.int64).max


class FrontModeError(AllInOneError, ValueError):
    """A front mode that is not one of ``FRONT_MODES``."""


def check_front_mode(mode: str) -> str:
    """``mode`` itself if it is a valid front mode, else an error naming it and the valid ones."""
    if mode not in FRONT_MODES:
        raise FrontModeError(f"front mode {mode!r} unknown; valid: {', '.join(FRONT_MODES)}")
    return mode


@dataclass
class FrontLayer:
    """One Conv2d of the graph with its float weight [N, C, kh, kw] and geometry."""

    node: object                  # onnx NodeProto
    weight: np.ndarray            # float32 [N, C, kh, kw]
    bias: np.ndarray | None       # float32 [N]
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]   # top, left, bottom, right
    input_shape: tuple[int, ...] | None = None  # [1, C, H, W] at TIMING_FRAMES, if known

    @property
    def name(self) -> str:
        return self.node.name or self.node.output[0]

    def describe(self) -> str:
        n_out, c_in, kh, kw = self.weight.shape
        x = "x".join(map(str, self.input_shape)) if self.input_shape else "?"
        return f"{self.name}: [{x}] * {n_out}x{c_in}x{kh}x{kw} stride {self.strides[0]}"


@dataclass
class FrontReport:
    """``rewritten``: layer -> "gemm" or "int8"; ``decisions``: one line a Conv2d, with why."""

    path: Path
    mode: str
    rewritten: dict[str, str] = field(default_factory=dict)
    weights: list[str] = field(default_factory=list)   # initialisers the rewrite replaced
    decisions: list[str] = field(default_factory=list)


def front_convs(graph) -> tuple[list[FrontLayer], list[str]]:
    """The graph's Conv2d nodes with initialiser weights that the rewrite takes, and a
    reason for each one it does not (group, dilation, auto_pad, computed weight)."""
    from onnx import numpy_helper

    inits = {i.name: i for i in graph.initializer}
    layers, skipped = [], []
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        w = inits.get(node.input[1])
        if w is None:
            if len(node.input) > 1 and node.input[1]:
                skipped.append(f"{node.name}: weight {node.input[1]} is computed, not an "
                               "initialiser (rewrite the float graph before bit-packing)")
            continue
        if len(w.dims) != 4:  # Conv1d (the conv module): not the front
            continue
        attrs = node_attributes(node)
        why = ("grouped" if attrs.get("group", 1) != 1 else
               "dilated" if any(d != 1 for d in attrs.get("dilations", [1, 1])) else
               "auto_pad" if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")
               else None)
        if why:
            skipped.append(f"{node.name}: {why} Conv2d, kept")
            continue
        bias = (numpy_helper.to_array(inits[node.input[2]]).astype(np.float32)
                if len(node.input) > 2 and node.input[2] in inits else None)
        if len(node.input) > 2 and node.input[2] and bias is None:
            skipped.append(f"{node.name}: bias {node.input[2]} is computed, kept")
            continue
        layers.append(FrontLayer(node, numpy_helper.to_array(w).astype(np.float32), bias,
                                 tuple(attrs.get("strides", [1, 1])),
                                 tuple(attrs.get("pads", [0, 0, 0, 0]))))
    return layers, skipped


def quantize_per_channel(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[K, N] float -> (int8 codes [K, N], float32 scales [N]): symmetric, one scale a
    column (output channel), max |w| -> 127."""
    peak = np.abs(weight).max(axis=0)
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    codes = np.clip(np.rint(weight / scale), -127, 127).astype(np.int8)
    return codes, scale


def gemm_weight(weight: np.ndarray) -> np.ndarray:
    """[N, C, kh, kw] -> [kh x kw x C, N] in the unfold's order (offset (i, j), then channel)."""
    n_out = weight.shape[0]
    return np.ascontiguousarray(weight.transpose(2, 3, 1, 0).reshape(-1, n_out))


def gemm_nodes(layer: FrontLayer, x: str, y: str, kind: str, prefix: str) -> tuple[list, list]:
    """(nodes, initialisers) computing ``y`` [B, N, Ho, Wo] = layer's Conv of ``x``
    [B, C, H, W] as an unfold + GEMM; ``kind`` "gemm" (float) or "int8"."""
    from onnx import TensorProto, helper, numpy_helper

    kh, kw = layer.weight.shape[2:]
    sh, sw = layer.strides
    nodes, inits = [], []

    def const(name: str, value) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), f"{prefix}:{name}"))
        return inits[-1].name

    def node(op: str, inputs: list[str], out: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [f"{prefix}:{out}"], **attrs))
        return nodes[-1].output[0]

    if any(layer.pads):
        top, left, bottom, right = layer.pads
        x = node("Pad", [x, const("pads", np.array([0, 0, top, left, 0, 0, bottom, right],
                                                   dtype=np.int64))], "padded", mode="constant")
    nhwc = node("Transpose", [x], "nhwc", perm=[0, 2, 3, 1])
    if kind == "int8":
        q = f"{prefix}:xq"
        nodes.append(helper.make_node("DynamicQuantizeLinear", [nhwc], [
            q, f"{prefix}:x_scale", f"{prefix}:x_zero"]))
        nhwc = q
    axes, steps = const("axes", np.array([1, 2], dtype=np.int64)), \
        const("steps", np.array([sh, sw], dtype=np.int64))
    patches = []
    for i in range(kh):
        for j in range(kw):
            ends = [i - (kh - 1) if i < kh - 1 else INT64_MAX,
                    j - (kw - 1) if j < kw - 1 else INT64_MAX]
            patches.append(node("Slice", [nhwc, const(f"start{i}{j}", np.array([i, j], np.int64)),
                                          const(f"end{i}{j}", np.array(ends, np.int64)),
                                          axes, steps], f"patch{i}{j}"))
    cols = node("Concat", patches, "cols", axis=3)
    matrix = gemm_weight(layer.weight)
    if kind == "gemm":
        out = node("MatMul", [cols, const("weight", matrix)], "gemm")
    elif kind == "int8":
        codes, scale = quantize_per_channel(matrix)
        acc = node("MatMulInteger", [cols, const("weight_q", codes), f"{prefix}:x_zero"],
                   "acc")
        acc = node("Cast", [acc], "acc_f32", to=TensorProto.FLOAT)
        both = node("Mul", [f"{prefix}:x_scale", const("weight_scale", scale)], "scale")
        out = node("Mul", [acc, both], "gemm")
    else:
        raise FrontModeError(f"front layer kind {kind!r} unknown; valid: gemm, int8")
    if layer.bias is not None:
        out = node("Add", [out, const("bias", layer.bias)], "biased")
    nodes.append(helper.make_node("Transpose", [out], [y], perm=[0, 3, 1, 2]))
    return nodes, inits


def _input_shapes(model, frames: int) -> dict[str, tuple[int, ...]]:
    """Static shapes of the graph's values with one utterance of ``frames`` feature frames
    (ONNX shape inference; values it cannot infer are absent)."""
    import copy

    import onnx

    fixed = copy.deepcopy(model)
    for value in fixed.graph.input:
        dims = value.type.tensor_type.shape.dim
        for k, dim in enumerate(dims):
            if dim.dim_param:
                dim.dim_value = 1 if k == 0 else frames
    fixed = onnx.shape_inference.infer_shapes(fixed)
    shapes = {}
    for value in [*fixed.graph.value_info, *fixed.graph.input]:
        dims = value.type.tensor_type.shape.dim
        if dims and all(d.dim_value > 0 for d in dims):
            shapes[value.name] = tuple(d.dim_value for d in dims)
    return shapes


def layer_session(layer: FrontLayer, kind: str, threads: int = 1):
    """A session of one front layer: x [1, C, H, W] -> y, as the float Conv ("conv") or
    rewritten ("gemm", "int8"); what ``auto`` times, with the runtime's options."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    n_out = layer.weight.shape[0]
    inits = [numpy_helper.from_array(layer.weight, "w")]
    if kind == "conv":
        if layer.bias is not None:
            inits.append(numpy_helper.from_array(layer.bias, "b"))
        nodes = [helper.make_node("Conv", ["x", "w", *(["b"] if layer.bias is not None else [])],
                                  ["y"], strides=list(layer.strides), pads=list(layer.pads))]
    else:
        nodes, inits = gemm_nodes(layer, "x", "y", kind, "probe")
    channels = layer.weight.shape[1]
    graph = helper.make_graph(
        nodes, "front_layer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, None, None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n_out, None, None])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def time_layer(layer: FrontLayer, kinds: tuple[str, ...] = ("conv", "int8"), threads: int = 1,
               rounds: int = 7) -> dict[str, float]:
    """Fastest of interleaved ``rounds`` (ms) of the layer in each kind, on its input at
    ``TIMING_FRAMES`` frames (random; speed does not depend on the values)."""
    shape = layer.input_shape or (1, layer.weight.shape[1], TIMING_FRAMES, 80)
    x = {"x": np.random.default_rng(0).standard_normal(shape, dtype=np.float32)}
    sessions = {k: layer_session(layer, k, threads) for k in kinds}
    for s in sessions.values():
        s.run(None, x)
    best = dict.fromkeys(kinds, float("inf"))
    for _ in range(rounds):
        for k, s in sessions.items():
            start = time.perf_counter()
            s.run(None, x)
            best[k] = min(best[k], time.perf_counter() - start)
    return {k: v * 1e3 for k, v in best.items()}


def _decide(layer: FrontLayer, mode: str, threads: int) -> tuple[str, str]:
    """(kind, why): "conv", "gemm" or "int8" for this layer under ``mode``."""
    if mode in ("conv", "gemm", "int8"):
        return mode, f"front mode '{mode}'"
    t = time_layer(layer, ("conv", "int8"), threads)
    measured = f"int8 GEMM {t['int8']:.2f} ms, float Conv {t['conv']:.2f} ms on this CPU"
    return ("int8", measured) if t["int8"] < t["conv"] else ("conv", measured)


KIND_NAMES = {"conv": "float Conv", "gemm": "im2col + float MatMul",
              "int8": "im2col + DynamicQuantizeLinear + MatMulInteger"}


def rewrite_front(src: Path, dst: Path, mode: str = "auto", threads: int = 1,
                  frames: int = TIMING_FRAMES) -> FrontReport:
    """Write ``src`` (an exported float graph) to ``dst`` with its Conv2d layers per ``mode``
    (see the module docstring); the report says what each layer became and why."""
    import onnx

    check_front_mode(mode)
    model = onnx.load(str(src))
    graph = model.graph
    report = FrontReport(Path(dst), mode)
    layers, skipped = front_convs(graph)
    report.decisions.extend(skipped)
    shapes = _input_shapes(model, frames) if mode == "auto" and layers else {}
    replace: dict[str, tuple[list, list]] = {}  # by the Conv's output
    for index, layer in enumerate(layers):
        layer.input_shape = shapes.get(layer.node.input[0])
        kind, why = _decide(layer, mode, threads)
        report.decisions.append(f"{layer.describe()}: {KIND_NAMES[kind]} ({why})")
        if kind == "conv":
            continue
        replace[layer.node.output[0]] = gemm_nodes(
            layer, layer.node.input[0], layer.node.output[0], kind, f"front{index}")
        report.rewritten[layer.name] = kind
        report.weights.extend(i for i in layer.node.input[1:] if i)
    if replace:
        new_nodes, added = [], []
        for node in graph.node:
            key = node.output[0] if node.output else ""
            nodes, inits = replace.get(key, ([node], []))
            new_nodes.extend(nodes)
            added.extend(inits)
        set_nodes(graph, new_nodes, added)
    onnx.save(model, str(dst))
    return report
