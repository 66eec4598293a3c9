"""Small ONNX graph edits shared by the export rewrites (front GEMMs, pointwise MatMuls, the
front's channel-last flatten)."""

from __future__ import annotations


def node_attributes(node) -> dict:
    """A node's attributes as plain Python values."""
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def set_nodes(graph, nodes: list, added_initialisers: list) -> None:
    """Make ``nodes`` the graph's nodes, less those whose outputs nothing reads any
    more (what a rewrite bypassed), add ``added_initialisers`` and drop every
    initialiser no node reads any more (the weights the rewrite replaced)."""
    del graph.node[:]
    graph.node.extend(_live(nodes, {o.name for o in graph.output}))
    still_read = {i for n in graph.node for i in _reads(n)}
    keep = [i for i in graph.initializer if i.name in still_read]
    del graph.initializer[:]
    graph.initializer.extend(keep + list(added_initialisers))


def _reads(node) -> set[str]:
    """The values ``node`` reads: its inputs and those its subgraphs (If, Loop) read."""
    from onnx import AttributeProto

    names = {i for i in node.input if i}
    for attr in node.attribute:
        graphs = ([attr.g] if attr.type == AttributeProto.GRAPH
                  else list(attr.graphs) if attr.type == AttributeProto.GRAPHS else [])
        for sub in graphs:
            for inner in sub.node:
                names |= _reads(inner)
    return names


def _live(nodes: list, outputs: set[str]) -> list:
    """``nodes`` without those whose outputs neither ``outputs`` nor a kept node reads,
    in their order."""
    needed, keep = set(outputs), []
    for node in reversed(nodes):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed |= _reads(node)
    return keep[::-1]
