"""Pointwise (kernel-1) Conv1d layers as MatMuls, so dynamic int8 quantizes them.

Why: the Conformer convolution module's two pointwise convolutions are
matrix products over channels written as ``Conv`` with a kernel of one.
onnxruntime's dynamic int8 quantization makes an int8 GEMM of every float
``MatMul`` (``DynamicQuantizeMatMul``) but its int8 convolution
(``ConvInteger``) is slower than float here, so in the int8 variant these
layers stayed float ``Conv`` s, the largest float compute left in a block.

Each such ``Conv`` (1-D, kernel 1, stride 1, no pads, dilation 1, group 1,
initialiser weight [N, C, 1]) on x [B, C, T] becomes
``Transpose(x) [B, T, C] -> MatMul(W^T [C, N]) -> Add(bias) -> Transpose
[B, N, T]``: the same arithmetic, up to the order of summation. The conv
module already transposes around the pair, and onnxruntime's transpose
optimizer cancels adjacent transposes. Apply it to a float graph (weights as
initialisers) before quantization.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from espnet_allinone.deploy.onnx_graph import node_attributes, set_nodes


def _is_pointwise(node, weights: dict) -> bool:
    if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in weights:
        return False
    w = weights[node.input[1]]
    if len(w.dims) != 3 or w.dims[2] != 1:
        return False
    a = node_attributes(node)
    return (a.get("group", 1) == 1 and all(s == 1 for s in a.get("strides", [1]))
            and all(d == 1 for d in a.get("dilations", [1]))
            and not any(a.get("pads", [0, 0]))
            and a.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET"))


def pointwise_convs_as_matmuls(src: Path, dst: Path) -> list[str]:
    """Write ``src`` to ``dst`` with every pointwise Conv1d as a MatMul (see the module
    docstring); returns the names of the rewritten layers."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    weights = {i.name: i for i in graph.initializer}
    rewritten, nodes, added = [], [], []
    for node in graph.node:
        if not _is_pointwise(node, weights):
            nodes.append(node)
            continue
        name = node.name or node.output[0]
        w = numpy_helper.to_array(weights[node.input[1]]).astype(np.float32)[:, :, 0]
        w_name, x_t, y = f"{name}/pointwise_weight", f"{name}/x_ntc", f"{name}/y_ntc"
        added.append(numpy_helper.from_array(np.ascontiguousarray(w.T), w_name))
        nodes.append(helper.make_node("Transpose", [node.input[0]], [x_t], perm=[0, 2, 1],
                                      name=f"{name}/to_ntc"))
        has_bias = len(node.input) > 2 and node.input[2]
        product = f"{name}/matmul_out" if has_bias else y
        nodes.append(helper.make_node("MatMul", [x_t, w_name], [product],
                                      name=f"{name}/MatMul"))
        if has_bias:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [y],
                                          name=f"{name}/bias"))
        nodes.append(helper.make_node("Transpose", [y], [node.output[0]], perm=[0, 2, 1],
                                      name=f"{name}/to_nct"))
        rewritten.append(name)
    set_nodes(graph, nodes, added)
    onnx.save(model, str(dst))
    return rewritten
