"""Small ONNX graph edits shared by the export rewrites (front GEMMs, pointwise MatMuls)."""

from __future__ import annotations


def node_attributes(node) -> dict:
    """A node's attributes as plain Python values."""
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def set_nodes(graph, nodes: list, added_initialisers: list) -> None:
    """Make ``nodes`` the graph's nodes, add ``added_initialisers`` and drop every
    initialiser no node reads any more (the weights the rewrite replaced)."""
    del graph.node[:]
    graph.node.extend(nodes)
    still_read = {i for n in graph.node for i in n.input}
    keep = [i for i in graph.initializer if i.name in still_read]
    del graph.initializer[:]
    graph.initializer.extend(keep + list(added_initialisers))
