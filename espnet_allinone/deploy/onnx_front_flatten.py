"""The conv2d front's output flattened channel-last, so its GEMM output needs no transposes.

Why: with the front's last Conv2d written as a GEMM over patches
(``onnx_front``), its output is [B, Ho, Wo, N] (channel-last) and is
transposed to the Conv's [B, N, Ho, Wo]; ESPnet's subsampling then
transposes it again to [B, Ho, N, Wo] and flattens it to [B, Ho, N x Wo]
for its Linear. On the smallest subsystem of the 12-block d=256 benchmark
model those two transposes of a 10 s utterance's front map take about 3 ms
of its 47 ms (onnxruntime's profiler).

Flattening the channel-last map directly, [B, Ho, Wo x N], and permuting the
Linear weight's rows to match (row ``f x N + c`` of the new weight is row
``c x Wo + f`` of the old) computes the same products, summed in another
order; under dynamic int8 the quantized input holds the same values (same
scale and zero point) and the integer sums are exact, so the int8 variant's
output is unchanged bit for bit. The ReLU between them is element-wise and
moves onto the channel-last map. Apply it to a float graph whose Linear
weight is an initialiser: the int8 variant's source, before quantization (a
packed low-bit graph matches its weights to the checkpoint by name, so the
exact and fast variants keep the stock layout).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from espnet_allinone.deploy.onnx_graph import node_attributes, set_nodes

TO_NCHW = [0, 3, 1, 2]    # the GEMM rewrite's channel-last -> the Conv's layout
TO_BTCF = [0, 2, 1, 3]    # ESPnet's Conv2dSubsampling: [B, C, T, F] -> [B, T, C, F]


def _single_consumer(consumers: dict, value: str, op_type: str):
    """The one node reading ``value`` whose type is ``op_type``, if exactly one does
    among the readers that are not ``Shape`` (ESPnet reads the map's shape for its
    reshape; those readers go with the reshape)."""
    readers = [n for n in consumers.get(value, []) if n.op_type != "Shape"]
    return readers[0] if len(readers) == 1 and readers[0].op_type == op_type else None


def flatten_front_channels_last(src: Path, dst: Path) -> list[str]:
    """Write ``src`` to ``dst`` with each channel-last front GEMM flattened directly into
    its Linear (see the module docstring); returns the Linear MatMuls rewritten (none
    when the front's last Conv2d was kept as a Conv)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    weights = {i.name: i for i in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    replace: dict[str, list] = {}  # by the name of a node rewritten
    added, rewritten = [], []
    for t0 in graph.node:
        if t0.op_type != "Transpose" or node_attributes(t0).get("perm") != TO_NCHW:
            continue
        relu = _single_consumer(consumers, t0.output[0], "Relu")
        t1 = relu and _single_consumer(consumers, relu.output[0], "Transpose")
        if t1 is None or node_attributes(t1).get("perm") != TO_BTCF:
            continue
        reshape = _single_consumer(consumers, t1.output[0], "Reshape")
        matmul = reshape and _single_consumer(consumers, reshape.output[0], "MatMul")
        if matmul is None or matmul.input[0] != reshape.output[0] \
                or matmul.input[1] not in weights:
            continue
        channels = _gemm_channels(graph, t0.input[0], weights)
        w = numpy_helper.to_array(weights[matmul.input[1]]).astype(np.float32)
        if channels is None or w.ndim != 2 or w.shape[0] % channels:
            continue
        freq = w.shape[0] // channels
        permuted = w.reshape(channels, freq, -1).transpose(1, 0, 2).reshape(w.shape)
        name = matmul.name or matmul.output[0]
        w_name, flat = f"{name}/channels_last_weight", f"{name}/channels_last_input"
        shape = f"{name}/channels_last_shape"
        added += [numpy_helper.from_array(np.ascontiguousarray(permuted), w_name),
                  numpy_helper.from_array(np.array([0, 0, -1], dtype=np.int64), shape)]
        relu_nhwc = f"{name}/channels_last_relu"
        replace[relu.name or relu.output[0]] = [
            helper.make_node("Relu", [t0.input[0]], [relu_nhwc], name=relu_nhwc),
            helper.make_node("Reshape", [relu_nhwc, shape], [flat], name=flat)]
        replace[name] = [helper.make_node("MatMul", [flat, w_name], list(matmul.output),
                                          name=name)]
        rewritten.append(name)
    if rewritten:
        nodes = []
        for node in graph.node:
            nodes.extend(replace.get(node.name or node.output[0], [node]))
        set_nodes(graph, nodes, added)  # drops the bypassed transposes and shape arithmetic
    onnx.save(model, str(dst))
    return rewritten


def _gemm_channels(graph, value: str, weights: dict) -> int | None:
    """N of the GEMM producing ``value`` [B, Ho, Wo, N]: the column count of the first
    2-D initialiser met walking up through its element-wise tail (bias, scales, cast)."""
    producers = {o: n for n in graph.node for o in n.output}
    for _ in range(6):
        node = producers.get(value)
        if node is None:
            return None
        for name in node.input[1:] if node.op_type.startswith("MatMul") else ():
            if name in weights and len(weights[name].dims) == 2:
                return int(weights[name].dims[1])
        if node.op_type not in ("Add", "Mul", "Cast", "MatMul", "MatMulInteger"):
            return None
        value = node.input[0]
    return None
