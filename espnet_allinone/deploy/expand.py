"""Expand an exported model's bit-packed weights with numpy, once, before onnxruntime sees them.

An exported ``.onnx`` holds low-bit weights as uint8 codes and float16 scales
plus a few constant ops (``BitShift``, ``Mod``, ``Cast``, ``Sub``, ``Mul``,
``Reshape``, ``Slice``, ``Transpose``, ``Expand``, ``Concat``) that compute the
float weights, or the padded codes of groups that ``MatMulNBits`` takes padded
(:mod:`espnet_allinone.deploy.onnx_lowbit`). onnxruntime alone
constant-folds them at session start, but keeps every intermediate until its
folding pass ends: about six times the float weights at start-up. Here the
constant part of the graph is evaluated in numpy one node at a time (each
intermediate freed once read), the results are handed to onnxruntime as
in-memory initialisers (``SessionOptions.add_external_initializers``, which
copies them while loading; they are freed when the session is built), and
the graph it parses no longer has those nodes; every other stored initialiser of
``DETACH_BYTES`` or more is handed the same way (a view of the file's bytes), so
the model bytes that onnxruntime's Python session keeps for its lifetime hold
the graph only. Memory: once built, as from a float file (the heap's free memory
handed back, :mod:`espnet_allinone.deploy.heap`); while building, the expanded
float weights once more, and onnxruntime's prepacked copy of them. The arithmetic is
the same float32 element-wise arithmetic, so the weights are bit-identical.

numpy only (no ``onnx`` package): a minimal reader and writer of the protobuf
wire format, for the fields of ModelProto, GraphProto, NodeProto,
AttributeProto and TensorProto used here; everything else is copied through
byte for byte.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from espnet_allinone.deploy import heap

# --- protobuf wire format -------------------------------------------------------------
VARINT, I64, LEN, I32 = 0, 1, 2, 5


def _varint(buf, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _put_varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64: ten bytes of two's complement
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def fields(buf) -> list[tuple[int, int, object, int, int]]:
    """A message's fields: (number, wire type, value, start, end) with ``buf[start:end]``
    the whole field (key included); value: an int (varint), or a memoryview (LEN, I32, I64)."""
    view = memoryview(buf)
    out, pos, end = [], 0, len(view)
    while pos < end:
        start = pos
        key, pos = _varint(view, pos)
        number, wire = key >> 3, key & 7
        if wire == VARINT:
            value, pos = _varint(view, pos)
        elif wire == LEN:
            size, pos = _varint(view, pos)
            value, pos = view[pos:pos + size], pos + size
        elif wire == I32:
            value, pos = view[pos:pos + 4], pos + 4
        elif wire == I64:
            value, pos = view[pos:pos + 8], pos + 8
        else:
            raise ValueError(f"protobuf wire type {wire} (groups) is not used by ONNX")
        out.append((number, wire, value, start, pos))
    return out


def _field(number: int, wire: int, payload: bytes | int) -> bytes:
    key = _put_varint(number << 3 | wire)
    if wire == VARINT:
        return key + _put_varint(payload)
    return key + _put_varint(len(payload)) + bytes(payload)


def _ints(wire: int, value) -> list[int]:
    """A repeated int64 field's values (packed or not)."""
    if wire == VARINT:
        return [_signed(value)]
    out, pos = [], 0
    while pos < len(value):
        v, pos = _varint(value, pos)
        out.append(_signed(v))
    return out


# --- the messages used ----------------------------------------------------------------
# TensorProto.DataType -> numpy
DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32,
          7: np.int64, 9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32,
          13: np.uint64}
CODES = {np.dtype(v): k for k, v in DTYPES.items()}


@dataclass
class Node:
    inputs: list[str]
    outputs: list[str]
    op_type: str
    domain: str
    attributes: dict[str, object]
    span: tuple[int, int]  # the field in the GraphProto's bytes


def _node(payload, span) -> Node:
    inputs, outputs, op_type, domain, attrs = [], [], "", "", {}
    for number, wire, value, _, _ in fields(payload):
        if number == 1:
            inputs.append(bytes(value).decode())
        elif number == 2:
            outputs.append(bytes(value).decode())
        elif number == 4:
            op_type = bytes(value).decode()
        elif number == 7:
            domain = bytes(value).decode()
        elif number == 5:
            name, got = "", None
            for n, w, v, _, _ in fields(value):
                if n == 1:
                    name = bytes(v).decode()
                elif n == 3:  # i
                    got = _signed(v)
                elif n == 4:  # s
                    got = bytes(v).decode()
                elif n == 2:  # f
                    got = float(np.frombuffer(v, dtype="<f4")[0])
                elif n == 8:  # ints
                    got = (got or []) + _ints(w, v)
            attrs[name] = got
    return Node(inputs, outputs, op_type, domain, attrs, span)


def _tensor(payload) -> tuple[str, np.ndarray | None]:
    """(name, array) of a TensorProto with raw_data (or no data); array None otherwise."""
    name, dims, dtype, raw, other = "", [], None, None, False
    for number, wire, value, _, _ in fields(payload):
        if number == 8:
            name = bytes(value).decode()
        elif number == 1:
            dims += _ints(wire, value)
        elif number == 2:
            dtype = DTYPES.get(value)
        elif number == 9:
            raw = value
        elif number in (4, 5, 6, 7, 10, 11, 13, 14):  # typed *_data fields, external data
            other = True
    if dtype is None or other:
        return name, None
    if raw is None:
        raw = b""
    return name, np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).reshape(dims)


def _stub(name: str, array: np.ndarray) -> bytes:
    """A TensorProto naming ``array`` as in-memory external data (add_external_initializers)."""
    entry = _field(1, LEN, b"location") + _field(2, LEN, b"in-memory")
    return (b"".join(_field(1, VARINT, d) for d in array.shape)
            + _field(2, VARINT, CODES[array.dtype]) + _field(8, LEN, name.encode())
            + _field(13, LEN, entry) + _field(14, VARINT, 1))


# --- the constant ops -----------------------------------------------------------------
def _reshape(x, shape, allowzero=0):
    shape = [int(s) for s in shape]
    if not allowzero:
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _slice(x, starts, ends, axes=None, steps=None):
    index = [slice(None)] * x.ndim
    axes = range(len(starts)) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    for s, e, a, st in zip(starts, ends, axes, steps):
        index[int(a)] = slice(int(s), int(e), int(st))
    return x[tuple(index)]


def _bitshift(x, s, direction):
    return (x << s).astype(x.dtype) if direction == "LEFT" else x >> s


def _mod(x, y, fmod=0):
    return np.fmod(x, y) if fmod else np.mod(x, y)


OPS: dict[str, Callable] = {
    "BitShift": lambda a, x, s: _bitshift(x, s, a.get("direction")),
    "Mod": lambda a, x, y: _mod(x, y, a.get("fmod") or 0),
    "Cast": lambda a, x: x.astype(DTYPES[a["to"]]),
    "Sub": lambda a, x, y: np.subtract(x, y),
    "Add": lambda a, x, y: np.add(x, y),
    "Mul": lambda a, x, y: np.multiply(x, y),
    "Reshape": lambda a, x, s: _reshape(x, s, a.get("allowzero") or 0),
    "Slice": lambda a, x, *r: _slice(x, *r),
    "Transpose": lambda a, x: np.transpose(x, a.get("perm")),
    "Expand": lambda a, x, s: np.broadcast_to(x, np.broadcast_shapes(
        x.shape, tuple(int(d) for d in s))),
    "Concat": lambda a, *xs: np.concatenate(xs, axis=a["axis"]),
}
"""numpy twins of the ONNX ops the expansion uses (float32 in, float32 out: IEEE, as ORT)."""
INPLACE = {"Sub": np.subtract, "Add": np.add, "Mul": np.multiply}


@dataclass
class Expanded:
    """The model to give onnxruntime: its bytes and the in-memory initialisers."""

    model: bytes
    names: list[str] = field(default_factory=list)
    arrays: list[np.ndarray] = field(default_factory=list)
    nodes_evaluated: int = 0


def expand(model: bytes, detach_bytes: int | None = None) -> Expanded | None:
    """Evaluate the graph's constant nodes (OPS only, default domain) in numpy; None when
    there are none (a file without bit-packed weights: load it as it is).

    ``detach_bytes``: also hand every stored initialiser of at least that many bytes as an
    in-memory one (a view of ``model``), so that the model bytes onnxruntime parses, and
    its Python session keeps for its lifetime, hold the graph only; then None only when
    there is nothing to evaluate."""
    top = fields(model)
    graph_field = next((f for f in top if f[0] == 7 and f[1] == LEN), None)
    if graph_field is None:
        return None
    graph = graph_field[2]
    parts = fields(graph)
    nodes = [_node(v, (s, e)) for n, w, v, s, e in parts if n == 1 and w == LEN]
    inits: dict[str, tuple[int, int, np.ndarray | None]] = {}
    for n, w, v, s, e in parts:
        if n == 5 and w == LEN:
            name, array = _tensor(v)
            inits[name] = (s, e, array)
    consumers: dict[str, int] = {}
    for node in nodes:
        for i in node.inputs:
            consumers[i] = consumers.get(i, 0) + 1
    read = dict(consumers)
    outputs = {bytes(v2).decode() for n, w, v, _, _ in parts if n == 12 and w == LEN
               for n2, _, v2, _, _ in fields(v) if n2 == 1}
    values = {k: a for k, (_, _, a) in inits.items() if a is not None}
    evaluated, produced, owned = set(), [], set()
    for node in nodes:
        if (node.domain not in ("", "ai.onnx") or node.op_type not in OPS
                or len(node.outputs) != 1 or node.outputs[0] in outputs
                or not all(i in values for i in node.inputs if i)):
            continue
        args = [values[i] if i else None for i in node.inputs]
        while args and args[-1] is None:
            args.pop()
        first = node.inputs[0]
        # our own intermediate, read by this node only: may be reused or viewed freely
        private = [i for i in node.inputs if i in owned and consumers[i] == 1]
        if (node.op_type in INPLACE and first in private and args[0].dtype == args[1].dtype
                and np.broadcast_shapes(args[0].shape, args[1].shape) == args[0].shape):
            result = INPLACE[node.op_type](args[0], args[1], out=args[0])
        else:
            result = np.ascontiguousarray(OPS[node.op_type](node.attributes, *args))
        values[node.outputs[0]] = result
        if not any(np.may_share_memory(result, values[i]) for i in node.inputs
                   if i and i not in private):
            owned.add(node.outputs[0])
        produced.append(node.outputs[0])
        evaluated.add(node.span)
        for i in node.inputs:  # free what no other node reads
            consumers[i] -= 1
            if consumers[i] == 0 and i in values:
                del values[i]
    # initialisers only evaluated nodes read leave the graph
    drop = {(s, e) for k, (s, e, _) in inits.items()
            if read.get(k, 0) > 0 and consumers.get(k, 0) == 0}
    detached = [] if detach_bytes is None else [
        k for k, (s, e, a) in inits.items()
        if a is not None and a.nbytes >= detach_bytes and (s, e) not in drop]
    if not evaluated:
        return None
    for k in detached:
        values[k] = inits[k][2]
    drop |= evaluated | {inits[k][:2] for k in detached}
    # what the rest of the graph reads becomes an in-memory initialiser
    handed = [k for k in produced if consumers.get(k, 0) > 0] + detached
    chunks, pos = [], 0
    for start, end in sorted(drop):
        chunks.append(graph[pos:start])
        pos = end
    chunks.append(graph[pos:])
    chunks += [_field(5, LEN, _stub(k, values[k])) for k in handed]
    new_graph = b"".join(bytes(c) for c in chunks)
    start, end = graph_field[3], graph_field[4]
    new_model = bytes(model[:start]) + _field(7, LEN, new_graph) + bytes(model[end:])
    return Expanded(new_model, handed, [values[k] for k in handed], len(evaluated))


DETACH_BYTES = 4096
"""Stored initialisers of at least this size reach onnxruntime as in-memory ones, not in the
model bytes that its Python session keeps (a 2-bit 12-block d=256 file: 8.2 MB -> 0.7 MB)."""


def session(path: Path | str, options, providers: list[str]):
    """An onnxruntime session of ``path``, its bit-packed weights expanded here first.

    Nothing of the expansion outlives the build: onnxruntime copies the in-memory
    initialisers while it builds the session (the arrays here are dropped on return), the
    model bytes it keeps hold the graph only (``DETACH_BYTES``), and the heap's free memory
    is handed back (:mod:`espnet_allinone.deploy.heap`)."""
    import onnxruntime as ort

    try:
        return _session(Path(path), options, providers, ort)
    finally:
        heap.release_free_memory()


def _session(path: Path, options, providers: list[str], ort):
    expanded = expand(path.read_bytes(), DETACH_BYTES)
    if expanded is None:  # the bytes read are freed: onnxruntime reads the file itself
        return ort.InferenceSession(str(path), options, providers=providers)
    names, arrays, model = expanded.names, expanded.arrays, expanded.model
    del expanded
    if names:  # onnxruntime copies them into its graph while building the session
        options.add_external_initializers(
            names, [ort.OrtValue.ortvalue_from_numpy(a) for a in arrays])
    return ort.InferenceSession(model, options, providers=providers)
