"""Low-bit weights of an extracted subsystem in the onnxruntime file: N bits on disk.

Every packed weight of an N-bit subsystem (2, 4 or 8 bits) is stored in the
exported ``.onnx`` with its own N-bit codes and float16 scales, so the file
is about as small as the packed ``model.pth`` (only the float parts, e.g. a
float front end, stay float). How each quantized layer then computes:

* ``MatMulNBits`` (onnxruntime's low-bit kernel, holding the codes as its
  weight) for a Linear layer of 2, 4 or 8 bits where the kernel also takes
  the zero point and, with ``policy="auto"``, is measured no slower than the
  float ``MatMul`` of that shape on this CPU (``"nbits"``: always;
  ``"float"``: never). Its float16 scales become float by a constant
  ``Cast``, evaluated once when the session is built (as below). The kernel
  takes blocks of a power of two >= 16 (16, 32, 64, ...): such a group size
  is its block as it is. Any other group of g input features (the default
  recipe's 36 = 144 / 4 heads) is padded to the block B = the next power of
  two >= max(g, 16) (36 -> 64) with the code that dequantizes to exactly 0
  (the zero point), one scale and zero point per block (the group's), and
  the activations are padded to match in the graph (``Reshape`` [..., K/g,
  g] -> ``Pad`` [..., K/g, B] -> ``Reshape`` [..., K/g x B]): the padding
  adds zero times zero, so the output is the unpadded product up to the
  order of float summation, and the kernel does B/g as much work, which
  ``"auto"`` measures like any other shape. The file stores each group's own
  codes (whole bytes) and one byte of the zero code per block; a constant
  ``Expand`` and ``Concat`` write the padded weight at session start. On the
  balanced grid no code dequantizes to 0, so such groups are not padded
  (float MatMul, the reason in the report).
* Otherwise the layer is a float ``MatMul`` (or ``Conv``: the Conformer
  convolution module's Conv1d weights, the depthwise one with its BatchNorm
  folded in as the exporter did it) of a weight that the file stores
  bit-packed: a ``uint8`` initialiser holding four 2-bit / two 4-bit / one
  8-bit codes a byte plus the float16 scales, expanded to float by a few ONNX
  ops (``BitShift``, ``Mod``, ``Cast``, ``Sub``, ``Mul``, ``Reshape``) whose
  inputs are all constant, so they run ONCE when the session is built: the
  deploy runtime evaluates them in numpy first
  (:mod:`espnet_allinone.deploy.expand`), and plain onnxruntime constant-folds
  them itself (same result, more memory while it does). Inference then runs
  the float weight it would have read from a float file. This is what layers
  get where the kernel measured slower (padded groups included) or cannot
  take the layout (balanced groups that would need padding, 8-bit balanced
  codes, other bit widths). The result is bit-identical:
  the expansion computes the packed format's own ``(q + offset - zero point)
  x scale`` in float32, and the file costs N bits a weight while the running
  session holds float weights for these layers (memory as the float model's
  once built, start-up some ms per MB of float weights).

Weights on the balanced grid (code q means (q + 1/2) x scale) keep their
codes: the offset is the zero point, 2^(bits-1) - 1/2 as a float
(MatMulNBits computes (u - zp) x scale of the unsigned level u = q +
2^(bits-1), the same number). Where this onnxruntime's kernel takes no float
zero points (CPU: not at 8 bits), such a layer is a float MatMul of the
bit-packed weight, with the reason in the report.

``accuracy_level=4`` (the deploy path's ``fast`` variant, ``transcribe
--fast``) lets ``MatMulNBits`` quantize its activations to int8 inside the
kernel (AVX2/AVX-512 VNNI/AMX int8 dot products): faster where the CPU has
them, not exact; the default (0) computes in float and is exact.
``store="float"`` writes the dequantized float weights instead (the
intermediate that onnxruntime's dynamic int8 quantization starts from).

``quantize_int8`` is onnxruntime's dynamic int8 quantization of the rest
(float MatMuls -> ``MatMulInteger``, and the Conv2d subsampling front and the
conv module -> ``ConvInteger``): faster, not exact.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from espnet_allinone.deploy.runtime import onnx_session
from espnet_allinone.quant.fake_quant import QuantizedWeight, grid_offset
from espnet_allinone.quant.packed_format import from_state

POLICIES = ("auto", "nbits", "float")
STORES = ("packed", "float")
ACCURACY_LEVELS = (0, 1, 2, 3, 4)  # MatMulNBits: 0 unset (float compute), 4 int8 compute
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
    weight_t: np.ndarray       # [K, N] float32: the dequantized weight as the MatMul holds it
    scale16: np.ndarray | None = None    # [N or 1, K // block] float16, as the file stores it
    zp_stored: np.ndarray | None = None  # [N or 1, K // block] uint8 (asymmetric), as stored
    offset: float = 0.0                  # the grid's offset (balanced: 1/2)

    @property
    def float_zero_point(self) -> bool:
        return self.zero_point is not None and self.zero_point.dtype == np.float32

    @property
    def zero_point_kind(self) -> str:
        if self.zero_point is None:
            return "default"
        return "float" if self.float_zero_point else "uint8"

    @property
    def nbits_block(self) -> int:
        """MatMulNBits' block_size for these groups (> ``block``: each group padded)."""
        return nbits_block(self.block)

    @property
    def padded(self) -> bool:
        return self.nbits_block != self.block


@dataclass
class LowBitReport:
    """``replaced``: MatMulNBits nodes; ``kept_float``: packed weights computed by a float
    MatMul/Conv (why); ``stored_packed``: initialisers stored bit-packed (expanded at
    session start); ``stored_float``: packed weights the file holds as float (why)."""

    path: Path
    replaced: int = 0
    kept_float: list[str] = field(default_factory=list)
    decisions: list[str] = field(default_factory=list)
    stored_packed: list[str] = field(default_factory=list)
    stored_float: list[str] = field(default_factory=list)
    accuracy_level: int = 0


def _quantized_weight(state_dict: dict[str, torch.Tensor], name: str) -> QuantizedWeight:
    """The QuantizedWeight stored under ``name`` (the one use of the packed format)."""
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
            qw.dequantize().t().contiguous().numpy().astype(np.float32),
            qw.scale.to(torch.float16).numpy(),
            None if symmetric else qw.zero_point.to(torch.uint8).numpy(), offset))
    return out


def _grid_offset(qw: QuantizedWeight) -> float:
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


def nbits_block(group: int) -> int:
    """The kernel's block for groups of ``group``: the group itself if a power of two
    >= 16 (what MatMulNBits takes), else the next power of two >= max(group, 16)."""
    if group >= 16 and not group & (group - 1):
        return group
    return 1 << max(group - 1, 15).bit_length()


def nbits_supported(bits: int, block: int, float_zero_point: bool = False) -> str | None:
    """None if MatMulNBits takes this layout (directly or with each group padded to
    ``nbits_block(block)``), else why not (``float_zero_point``: the balanced grid's
    zero point 2^(bits-1) - 1/2, tried once on this onnxruntime)."""
    if bits not in NBITS_BITS:
        return f"{bits}-bit weights: MatMulNBits takes {list(NBITS_BITS)} bits"
    padded = nbits_block(block)
    if padded != block and float_zero_point:
        return (f"group size {block} on the balanced grid: MatMulNBits needs a power of two "
                f">= 16, and padding to {padded} needs a code that dequantizes to 0, which "
                "the balanced grid has not")
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


def zero_codes(q: QuantizedLinear) -> np.ndarray:
    """[N, groups] uint8: the unsigned level of each group that dequantizes to exactly 0
    (its zero point); the balanced grid has none."""
    if q.float_zero_point:
        raise ValueError(f"{q.name}: no code of the balanced grid dequantizes to 0")
    n_out, k_in = q.codes.shape
    if q.zero_point is None:
        return np.full((n_out, k_in // q.block), 2 ** (q.bits - 1), dtype=np.uint8)
    return q.zero_point.astype(np.uint8)


def padded_levels(q: QuantizedLinear) -> np.ndarray:
    """[N, groups, nbits_block] uint8: each group's levels, then its zero code up to the
    kernel's block (no padding where the group is the block)."""
    n_out, k_in = q.codes.shape
    groups = k_in // q.block
    grouped = q.codes.reshape(n_out, groups, q.block)
    if not q.padded:
        return grouped
    out = np.repeat(zero_codes(q)[:, :, None], q.nbits_block, axis=2)
    out[:, :, :q.block] = grouped
    return out


def nbits_node_inputs(q: QuantizedLinear, prefix: str) -> tuple[list, list[str]]:
    """Initializers and input names (after the activation) of q's MatMulNBits node."""
    from onnx import numpy_helper

    n_out, k_in = q.codes.shape
    blocks = k_in // q.block
    packed = pack_rows(padded_levels(q).reshape(n_out, -1), q.bits).reshape(
        n_out, blocks, q.nbits_block * q.bits // 8)
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


def _single_op_session(nodes, inits, k_in: int, n_out: int, threads: int,
                       quiet: bool = False):
    """A session of ``nodes`` (one node or a list) from input ``x`` [1, T, K] to ``y``."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes if isinstance(nodes, list) else [nodes], "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, None, k_in])],
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


def _nbits_node(q: QuantizedLinear, inputs: list[str], outputs: list[str], name: str = "",
                accuracy_level: int = 0):
    from onnx import helper

    n_out, k_in = q.codes.shape
    extra = {"accuracy_level": accuracy_level} if accuracy_level else {}
    return helper.make_node("MatMulNBits", inputs, outputs, name=name or None,
                            domain="com.microsoft", K=k_in // q.block * q.nbits_block,
                            N=n_out, bits=q.bits, block_size=q.nbits_block, **extra)


def pad_activation_nodes(q: QuantizedLinear, x: str, out: str,
                         consts: Constants) -> list:
    """Nodes that write ``x`` [..., K] with each group of g features padded by zeros to
    the kernel's block B as ``out`` [..., K / g x B] (any number of leading axes)."""
    from onnx import helper

    k_in = q.codes.shape[1]
    groups, width = k_in // q.block, k_in // q.block * q.nbits_block
    return [
        helper.make_node("Shape", [x], [f"{out}:lead"], end=-1),
        helper.make_node("Concat", [f"{out}:lead", consts.add(f"{out}:width", _int64(width))],
                         [f"{out}:shape"], axis=0),
        helper.make_node("Reshape", [x, consts.add(f"{out}:groups",
                                                   _int64(-1, groups, q.block))],
                         [f"{out}:grouped"]),
        helper.make_node("Pad", [f"{out}:grouped", consts.add(
            f"{out}:pads", _int64(0, 0, 0, 0, 0, q.nbits_block - q.block))],
                         [f"{out}:padded"], mode="constant"),
        helper.make_node("Reshape", [f"{out}:padded", f"{out}:shape"], [out]),
    ]


def nbits_nodes(q: QuantizedLinear, x: str, names: list[str], outputs: list[str],
                consts: Constants, name: str = "", accuracy_level: int = 0,
                padded_inputs: dict | None = None) -> list:
    """q's MatMulNBits node, after the activation padding where its groups are padded.

    ``padded_inputs``: the graph's padded activations so far, so that layers reading the
    same activation (query, key and value) pad it once."""
    if not q.padded:
        return [_nbits_node(q, [x, *names], outputs, name, accuracy_level)]
    padded_inputs = {} if padded_inputs is None else padded_inputs
    key = (x, q.codes.shape[1], q.block, q.nbits_block)
    nodes = []
    if key not in padded_inputs:
        padded_inputs[key] = f"{consts.prefix}_x{len(padded_inputs)}"
        nodes = pad_activation_nodes(q, x, padded_inputs[key], consts)
    return [*nodes, _nbits_node(q, [padded_inputs[key], *names], outputs, name, accuracy_level)]


def nbits_session(q: QuantizedLinear, threads: int = 1, accuracy_level: int = 0):
    """A session of q's MatMulNBits as exported (x [1, T, K] -> y [1, T, N]), with its
    activation padding where the groups are padded: what ``policy="auto"`` times."""
    n_out, k_in = q.codes.shape
    inits, names = nbits_node_inputs(q, "w")
    consts = Constants("t")
    nodes = nbits_nodes(q, "x", names, ["y"], consts, accuracy_level=accuracy_level)
    return _single_op_session(nodes, inits + consts.inits, k_in, n_out, threads)


def float_session(q: QuantizedLinear, threads: int = 1):
    """A session of the float MatMul of q's dequantized weight (x [1, T, K] -> y)."""
    from onnx import helper, numpy_helper

    n_out, k_in = q.codes.shape
    return _single_op_session(helper.make_node("MatMul", ["x", "W"], ["y"]),
                              [numpy_helper.from_array(q.weight_t, "W")], k_in, n_out, threads)


def time_nbits_vs_float(q: QuantizedLinear, threads: int = 1, rounds: int = 15,
                        accuracy_level: int = 0) -> tuple[float, float]:
    """(MatMulNBits ms, float MatMul ms) for q's shape on this CPU, fastest of interleaved
    rounds; a padded layout is timed with its activation padding."""
    n_out, k_in = q.codes.shape
    key = (q.bits, k_in, n_out, q.block, q.zero_point_kind, threads, accuracy_level)
    if key in _TIMINGS:
        return _TIMINGS[key]
    nbits = nbits_session(q, threads, accuracy_level)
    dense = float_session(q, threads)
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


# --- bit-packed initialisers, expanded once at session initialisation -----------------
class Constants:
    """Initialisers for the expansion subgraphs; small ones (shapes, shifts, zero points)
    are shared by value, so each packed weight adds little beside its codes and scales."""

    SHARED_BYTES = 64

    def __init__(self, prefix: str = "lowbit"):
        self.prefix, self.inits, self._shared = prefix, [], {}

    def add(self, name: str, value) -> str:
        from onnx import numpy_helper

        value = np.asarray(value)
        if value.nbytes <= self.SHARED_BYTES:
            key = (value.dtype.str, value.shape, value.tobytes())
            if key not in self._shared:
                self._shared[key] = f"{self.prefix}_c{len(self._shared)}"
                self.inits.append(numpy_helper.from_array(value, self._shared[key]))
            return self._shared[key]
        self.inits.append(numpy_helper.from_array(value, name))
        return name


def _int64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def compact_nbits_inputs(q: QuantizedLinear, prefix: str,
                         consts: Constants | None = None) -> tuple[list, list[str], list]:
    """As ``nbits_node_inputs``, with the scales stored float16 ([N or 1, groups], as in
    the packed file), a float zero point stored once and padded groups stored unpadded
    (each group's codes in whole bytes, one byte of its zero code per block): (initialisers,
    input names, the constant nodes that expand them to MatMulNBits' inputs at session
    start)."""
    from onnx import TensorProto, helper

    own = consts is None
    consts = Constants(prefix) if own else consts
    start = len(consts.inits)
    n_out, k_in = q.codes.shape
    blocks = k_in // q.block
    levels = padded_levels(q)
    block_bytes = q.nbits_block * q.bits // 8
    kept = -(-q.block * q.bits // 8)  # bytes holding a group's own codes
    nodes = []
    if kept == block_bytes:
        names = [consts.add(prefix + "_B", pack_rows(levels.reshape(n_out, -1), q.bits)
                            .reshape(n_out, blocks, block_bytes))]
    else:  # the group's bytes, then its zero code's byte repeated to the block
        own_codes = levels[:, :, :kept * 8 // q.bits]
        stored = pack_rows(own_codes.reshape(n_out, -1), q.bits).reshape(n_out, blocks, kept)
        zero = zero_codes(q).astype(np.int64)
        pad_byte = sum(zero << (j * q.bits) for j in range(8 // q.bits)).astype(np.uint8)
        if q.zero_point is None:  # one zero code for every block
            pad_byte = pad_byte[:1, :1]
        padding = _int64(n_out, blocks, block_bytes - kept)
        nodes += [helper.make_node("Expand", [consts.add(prefix + "_Bzero", pad_byte[..., None]),
                                              consts.add(prefix + "_Bpad", padding)],
                                   [prefix + "_Bpadding"]),
                  helper.make_node("Concat", [consts.add(prefix + "_Bgroups", stored),
                                              prefix + "_Bpadding"], [prefix + "_B"], axis=2)]
        names = [prefix + "_B"]
    flat = consts.add(prefix + "_flat", _int64(n_out * blocks))
    names.append(prefix + "_scales")
    nodes += [helper.make_node("Cast", [consts.add(prefix + "_scales16", q.scale16)],
                               [prefix + "_scales32"], to=TensorProto.FLOAT),
              helper.make_node("Expand", [prefix + "_scales32",
                                          consts.add(prefix + "_rows", _int64(n_out, blocks))],
                               [prefix + "_scales_rows"]),
              helper.make_node("Reshape", [prefix + "_scales_rows", flat], [prefix + "_scales"])]
    if q.float_zero_point:  # one number (2^(bits-1) - 1/2), expanded to every block
        zp1 = consts.add(prefix + "_zp1", np.array(q.zero_point.flat[0], dtype=np.float32))
        nodes.append(helper.make_node("Expand", [zp1, flat], [prefix + "_zp"]))
        names.append(prefix + "_zp")
    elif q.zero_point is not None:
        names.append(consts.add(prefix + "_zp", pack_rows(q.zero_point, q.bits).reshape(-1)))
    return (consts.inits[start:] if own else []), names, nodes


def packed_weight_nodes(q: QuantizedLinear, out: str, shape: tuple[int, ...] | None = None,
                        row_factor: np.ndarray | None = None,
                        consts: Constants | None = None) -> tuple[list, list]:
    """Initialisers and constant nodes that compute q's float weight as tensor ``out``.

    ``shape`` None: the MatMul operand [K, N] (the transposed weight); else the weight's
    [N, K] rows reshaped to ``shape`` (a Conv weight), each row multiplied by
    ``row_factor`` when given (a BatchNorm the exporter folded into the Conv). The
    unsigned levels are stored in the orientation of the result ([K, N] or [N, K]),
    packed planar along its first axis (byte r of a column holds entries r, r + R,
    r + 2R, ... lowest bits first, R = ceil(rows * bits / 8)) so that one broadcast
    ``BitShift`` and one ``Mod`` unpack them and every reshape is free; then
    ``(float(u) - zero point) x scale`` per group in float32, the packed format's own
    arithmetic (bit-identical), and no float transpose. With ``consts`` the initialisers
    go there (small ones shared) and [] is returned.
    """
    from onnx import TensorProto, helper

    own = consts is None
    consts = Constants(out) if own else consts
    start = len(consts.inits)
    n_out, k_in = q.codes.shape
    groups = k_in // q.block
    per = 8 // q.bits
    nodes = []

    def node(op, inputs, suffix, **attrs):
        nodes.append(helper.make_node(op, inputs, [f"{out}:{suffix}"], **attrs))
        return nodes[-1].output[0]

    if shape is None:  # [K, N]: groups run down the columns: [groups, block, N]
        codes = np.ascontiguousarray(q.codes.T)
        grouped = (groups, q.block, n_out)

        def per_group(values):  # [N or 1, groups] -> [groups, 1, N or 1]
            return np.ascontiguousarray(values.T[:, None, :])
    else:  # [N, K]: groups along the rows: [N, groups, block]
        codes = q.codes
        grouped = (n_out, groups, q.block)

        def per_group(values):  # [N or 1, groups] -> [N or 1, groups, 1]
            return np.ascontiguousarray(values[..., None])
    rows, cols = codes.shape
    if per > 1:
        n_pad = -(-rows // per)
        padded = np.zeros((n_pad * per, cols), dtype=np.uint8)
        padded[:rows] = codes
        planes = padded.reshape(per, n_pad, cols)
        packed = np.zeros((n_pad, cols), dtype=np.uint8)
        for j in range(per):
            packed |= (planes[j] << (j * q.bits)).astype(np.uint8)
        shifts = (np.arange(per, dtype=np.uint8) * q.bits).reshape(per, 1, 1)
        levels = node("BitShift", [consts.add(f"{out}:codes{q.bits}", packed),
                                   consts.add(f"{out}:shifts", shifts)], "shifted",
                      direction="RIGHT")
        levels = node("Mod", [levels, consts.add(f"{out}:levels",
                                                 np.array(2 ** q.bits, dtype=np.uint8))], "u")
        levels = node("Reshape", [levels, consts.add(f"{out}:planes",
                                                     _int64(per * n_pad, cols))], "u_rows")
        if per * n_pad != rows:
            levels = node("Slice", [levels, consts.add(f"{out}:start", _int64(0)),
                                    consts.add(f"{out}:end", _int64(rows)),
                                    consts.add(f"{out}:axis", _int64(0))], "u_kept")
    else:
        levels = consts.add(f"{out}:codes8", codes)
    levels = node("Cast", [levels], "levels", to=TensorProto.FLOAT)
    levels = node("Reshape", [levels, consts.add(f"{out}:grouped", _int64(*grouped))],
                  "grouped")
    if q.zp_stored is not None:  # asymmetric: (u - z) * s
        zero = node("Cast", [consts.add(f"{out}:zp", per_group(q.zp_stored))], "zp_f32",
                    to=TensorProto.FLOAT)
    else:  # symmetric: u - (2^(b-1) - offset) == q + offset, exactly
        zero = consts.add(f"{out}:zp", np.array(2 ** (q.bits - 1) - q.offset, dtype=np.float32))
    centred = node("Sub", [levels, zero], "centred")
    scale = node("Cast", [consts.add(f"{out}:scale16", per_group(q.scale16))], "scale",
                 to=TensorProto.FLOAT)
    weight = node("Mul", [centred, scale], "scaled")
    if shape is None:
        nodes.append(helper.make_node("Reshape", [weight, consts.add(
            f"{out}:shape", _int64(k_in, n_out))], [out]))
        return (consts.inits[start:] if own else []), nodes
    if row_factor is not None:  # [N, groups, block] x [N, 1, 1]
        weight = node("Mul", [weight, consts.add(f"{out}:row_factor", row_factor.astype(
            np.float32).reshape(-1, 1, 1))], "folded")
    nodes.append(helper.make_node("Reshape", [weight, consts.add(
        f"{out}:shape", _int64(*shape))], [out]))
    return (consts.inits[start:] if own else []), nodes


def row_factors(rows: np.ndarray, target: np.ndarray, steps: int = 4) -> np.ndarray | None:
    """float32 f with ``rows[i] * f[i] == target[i]`` bitwise in float32 for every row
    (a BatchNorm folded into a Conv weight by the exporter), or None if there is none."""
    rows, target = rows.astype(np.float32), target.astype(np.float32)
    if rows.shape != target.shape:
        return None
    factors = np.ones(rows.shape[0], dtype=np.float32)
    pick = np.argmax(np.abs(rows), axis=1)
    for i in range(rows.shape[0]):
        row, want = rows[i], target[i]
        if row[pick[i]] == 0:
            if np.any(want != 0):
                return None
            continue
        f = np.float32(want[pick[i]] / row[pick[i]])
        candidates = [f]
        up = down = f
        for _ in range(steps):
            up, down = np.nextafter(up, np.float32(np.inf)), np.nextafter(down, np.float32(-np.inf))
            candidates += [up, down]
        for c in candidates:
            if np.array_equal(row * c, want):
                factors[i] = c
                break
        else:
            return None
    return factors


def map_low_bit(state_dict: dict[str, torch.Tensor], src: Path, dst: Path,
                policy: str = "auto", threads: int = 1, *, store: str = "packed",
                accuracy_level: int = 0) -> LowBitReport:
    """Rewrite ``src``'s quantized Linear MatMuls as MatMulNBits (per ``policy``) into ``dst``.

    ``store="packed"``: every other packed weight found in the graph (float MatMuls,
    Convs) is stored bit-packed and expanded at session start; ``"float"``: as
    dequantized float initialisers. ``accuracy_level``: the MatMulNBits attribute
    (0: float compute, exact; 4: int8 compute, faster, not exact), also used when
    timing the kernel for ``policy="auto"``.
    """
    import onnx
    from onnx import helper, numpy_helper

    if policy not in POLICIES:
        raise ValueError(f"kernel policy {policy!r} unknown; valid: {', '.join(POLICIES)}")
    if store not in STORES:
        raise ValueError(f"weight storage {store!r} unknown; valid: {', '.join(STORES)}")
    if accuracy_level not in ACCURACY_LEVELS:
        raise ValueError(f"accuracy_level {accuracy_level!r} unknown; valid: "
                         f"{', '.join(map(str, ACCURACY_LEVELS))}")
    quantized = packed_linears(state_dict)
    report = LowBitReport(Path(dst), accuracy_level=accuracy_level)
    by_value = {q.weight_t.tobytes(): q for q in quantized if q.codes.ndim == 2}
    graph_model = onnx.load(str(src))
    graph = graph_model.graph
    inits = {init.name: init for init in graph.initializer}
    new_nodes, const_nodes, used, matched, nbits = [], [], set(), set(), set()
    consts = Constants()
    decided: dict[tuple, str | None] = {}
    padded_inputs: dict[tuple, str] = {}
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
            decided[shape_key] = _decide(q, policy, threads, report, store, accuracy_level)
        if decided[shape_key] is not None:
            report.kept_float.append(f"{q.name}: {decided[shape_key]}")
            new_nodes.append(node)
            continue
        prefix = f"{b}_q{q.bits}"
        if store == "packed":
            extra, names, expand = compact_nbits_inputs(q, prefix, consts)
            const_nodes.extend(expand)
        else:
            extra, names = nbits_node_inputs(q, prefix)
        graph.initializer.extend(extra)
        new_nodes.extend(nbits_nodes(q, node.input[0], names, list(node.output), consts,
                                     (node.name or b) + f"_q{q.bits}", accuracy_level,
                                     padded_inputs))
        used.add(b)
        nbits.add(q.name)
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
    if store == "packed":
        const_nodes.extend(_store_packed(graph, quantized, nbits, report, consts))
    graph.initializer.extend(consts.inits)  # also the activation padding's shapes
    if const_nodes:  # computed from initialisers only: before every node that reads them
        rest = list(graph.node)
        del graph.node[:]
        graph.node.extend(const_nodes + rest)
    if not any(op.domain == "com.microsoft" for op in graph_model.opset_import):
        graph_model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(graph_model, str(dst))
    return report


def _store_packed(graph, quantized: list[QuantizedLinear], nbits: set[str],
                  report: LowBitReport, consts: Constants) -> list:
    """Replace each float initialiser that is a packed weight (as a MatMul operand, a Conv
    weight, or a Conv weight with a BatchNorm folded in) by its bit-packed form; returns
    the constant nodes that expand them (each writes the initialiser's own name)."""
    from onnx import TensorProto, numpy_helper

    read = {i for n in graph.node for i in n.input}
    by_t, by_rows, by_shape = {}, {}, {}
    for q in quantized:
        q_rows = np.ascontiguousarray(q.weight_t.T)
        by_t.setdefault(q.weight_t.tobytes(), q)
        by_rows.setdefault(q_rows.tobytes(), q)
        by_shape.setdefault(q_rows.shape, []).append((q, q_rows))
    stored: set[str] = set()
    keep, nodes = [], []
    for init in graph.initializer:
        found = None
        if init.name in read and init.data_type == TensorProto.FLOAT and len(init.dims) >= 2:
            array = numpy_helper.to_array(init)
            rows = array.reshape(array.shape[0], -1)
            if array.ndim == 2 and array.tobytes() in by_t:
                found = (by_t[array.tobytes()], None, None, "float MatMul")
            elif rows.tobytes() in by_rows:
                found = (by_rows[rows.tobytes()], array.shape, None, "weight as it is")
            else:
                candidates = sorted(by_shape.get(rows.shape, ()),
                                    key=lambda c: c[0].name in stored)  # unclaimed first
                for q, q_rows in candidates:
                    factors = row_factors(q_rows, rows)
                    if factors is not None:
                        found = (q, array.shape, factors, "a BatchNorm folded in per row")
                        break
        if found is None:
            keep.append(init)
            continue
        q, shape, factors, how = found
        nodes.extend(packed_weight_nodes(q, init.name, shape, factors, consts)[1])
        stored.add(q.name)
        report.stored_packed.append(f"{init.name}: {q.name}, {q.bits}-bit ({how})")
    del graph.initializer[:]
    graph.initializer.extend(keep)
    computed = {n.output[0] for n in nodes}
    inputs = [i for i in graph.input if i.name not in computed]
    if len(inputs) != len(graph.input):  # initialisers listed as graph inputs (old exporters)
        del graph.input[:]
        graph.input.extend(inputs)
    for q in quantized:
        if q.name not in stored and q.name not in nbits:
            report.stored_float.append(f"{q.name}: its float weight is no initialiser of "
                                       "the graph; stored as the exporter wrote it")
    return nodes


def _decide(q: QuantizedLinear, policy: str, threads: int, report: LowBitReport,
            store: str = "float", accuracy_level: int = 0) -> str | None:
    """None: use MatMulNBits; otherwise the reason to keep the float MatMul."""
    n_out, k_in = q.codes.shape
    shape = f"[{TIMING_FRAMES}x{k_in}]x[{k_in}x{n_out}] {q.bits}-bit, groups of {q.block}"
    kept = (f"float MatMul, weights stored {q.bits}-bit and dequantized once at session start"
            if store == "packed" else "float MatMul, dequantized")
    notes = ([f"groups padded to blocks of {q.nbits_block}"] if q.padded else []) + (
        [f"accuracy_level {accuracy_level}"] if accuracy_level else [])
    kernel = "MatMulNBits" + (f" ({', '.join(notes)})" if notes else "")
    why_not = nbits_supported(q.bits, q.block, q.float_zero_point)
    if why_not is not None:
        report.decisions.append(f"{shape}: {kept} ({why_not})")
        return why_not
    if policy == "float":
        report.decisions.append(f"{shape}: {kept} (kernel policy 'float')")
        return "kernel policy 'float'"
    if policy == "nbits":
        report.decisions.append(f"{shape}: {kernel} (kernel policy 'nbits')")
        return None
    t_nbits, t_float = time_nbits_vs_float(q, threads, accuracy_level=accuracy_level)
    measured = f"{kernel} {t_nbits:.3f} ms, float MatMul {t_float:.3f} ms on this CPU"
    if t_nbits > SLOWER_TOLERANCE * t_float:
        report.decisions.append(f"{shape}: {kept} ({measured})")
        return f"MatMulNBits slower here ({measured})"
    report.decisions.append(f"{shape}: {kernel} ({measured})")
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
    session = onnx_session(path, threads, spin=None)
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
