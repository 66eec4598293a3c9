"""Fast CPU inference for extracted models: dynamic int8 and ONNX Runtime.

* ``int8_dynamic(model)``: every ``nn.Linear`` -> dynamic int8
  (``torch.ao.quantization.quantize_dynamic``), as ESPnet's own
  ``Speech2Text(..., quantize_asr_model=True)`` does.
* ``export_onnx``: the encoder + CTC head (features in, CTC log-posteriors
  out, dynamic batch and time) for onnxruntime; the STFT/mel frontend and the
  normalisation stay in PyTorch (``features``).
* ``quantize_onnx_int8``: onnxruntime's dynamic int8 quantisation of that graph.
* ``onnx_matmul_nbits``: a 4-bit extracted model's quantised Linear layers as
  onnxruntime ``MatMulNBits`` nodes holding the model's own codes and scales,
  so the 4-bit weights run exactly (no re-quantisation). Layers whose group
  size onnxruntime cannot take (a power of two >= 16) stay float.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from espnet_allinone.export import packed_format
from espnet_allinone.quant.packing import pack_codes


def int8_dynamic(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` with dynamic int8 Linear layers (weights int8, per tensor)."""
    from torch.ao.quantization import quantize_dynamic

    return quantize_dynamic(copy.deepcopy(model).eval(), {torch.nn.Linear}, dtype=torch.qint8)


@torch.no_grad()
def features(model: torch.nn.Module, speech: torch.Tensor, lengths: torch.Tensor):
    """What the encoder sees: frontend + normalisation of ``model`` (PyTorch)."""
    feats, feats_lengths = model._extract_feats(speech, lengths)
    if model.normalize is not None:
        feats, feats_lengths = model.normalize(feats, feats_lengths)
    return feats, feats_lengths


class EncoderCTC(torch.nn.Module):
    """Encoder and CTC head of an ESPnet ASR model as one exportable module."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.encoder = model.encoder
        self.ctc = model.ctc

    def forward(self, feats: torch.Tensor, feats_lengths: torch.Tensor):
        out, out_lengths, _ = self.encoder(feats, feats_lengths)
        return out, out_lengths, self.ctc.log_softmax(out)


ONNX_INPUTS = ("feats", "feats_lengths")
ONNX_OUTPUTS = ("encoder_out", "encoder_out_lens", "ctc_log_probs")


def export_onnx(model: torch.nn.Module, path: Path, input_size: int, opset: int = 17) -> Path:
    """Export encoder + CTC of ``model`` (eval mode) to ``path``; dynamic batch and time."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = EncoderCTC(model).eval()
    feats = torch.randn(1, 200, input_size)
    lengths = torch.tensor([200])
    encoder = model.encoder
    unpacked = getattr(encoder, "float_state_dict", None)
    # The traced shape checks (short-utterance guard, positional-table size) are
    # constant in the graph: inputs must be longer than the subsampling needs and
    # shorter than max_pos_emb_len frames after subsampling, as in PyTorch.
    with torch.no_grad(), (unpacked() if unpacked else contextlib.nullcontext()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            wrapper, (feats, lengths), str(path),
            input_names=list(ONNX_INPUTS), output_names=list(ONNX_OUTPUTS),
            dynamic_axes={
                "feats": {0: "batch", 1: "frames"}, "feats_lengths": {0: "batch"},
                "encoder_out": {0: "batch", 1: "out_frames"}, "encoder_out_lens": {0: "batch"},
                "ctc_log_probs": {0: "batch", 1: "out_frames"},
            },
            opset_version=opset, dynamo=False,
        )
    model.eval()  # the exporter restores the wrapper's mode recursively
    return path


def quantize_onnx_int8(src: Path, dst: Path) -> Path:
    """onnxruntime dynamic int8 quantisation (weights int8, activations quantised on the fly)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    return Path(dst)


@dataclass
class NBitsReport:
    path: Path
    replaced: int
    skipped: list[str]


def onnx_matmul_nbits(model: torch.nn.Module, src: Path, dst: Path) -> NBitsReport:
    """Replace the float MatMuls of 4-bit quantised Linear layers by MatMulNBits.

    The B input of each MatMul is matched by value against the dequantised
    weight of every packed Linear layer of ``model.encoder``; codes and scales
    come from the packed model itself, so the result is the 4-bit model's.
    """
    import onnx
    from onnx import helper, numpy_helper

    encoder = model.encoder
    if getattr(encoder, "weight_bits", 32) != 4:
        raise ValueError(
            "MatMulNBits export needs a 4-bit packed_conformer model, got "
            f"{type(encoder).__name__} with {getattr(encoder, 'weight_bits', 32)}-bit weights"
        )
    modules = dict(encoder.named_modules())
    by_value: dict[bytes, tuple[str, object]] = {}
    skipped = []
    for name in encoder.quantized_weights:
        module = modules[name.rsplit(".", 1)[0]]
        if not isinstance(module, torch.nn.Linear):
            continue  # convolutions stay Conv nodes
        entries = {k[len(name):]: v for k, v in encoder._packed.items() if k.startswith(name + "_")}
        qw = packed_format.to_quantized(entries)
        if qw.group_size < 16 or qw.group_size & (qw.group_size - 1):
            skipped.append(f"{name} (group size {qw.group_size})")
            continue
        key = module.weight.detach().t().contiguous().numpy().astype(np.float32).tobytes()
        by_value[key] = (name, qw)
    graph_model = onnx.load(str(src))
    graph = graph_model.graph
    inits = {init.name: init for init in graph.initializer}
    replaced = 0
    new_nodes = []
    used = []
    for node in graph.node:
        b = node.input[1] if node.op_type == "MatMul" and len(node.input) == 2 else None
        if b in inits:
            array = numpy_helper.to_array(inits[b])
            match = by_value.get(array.astype(np.float32).tobytes()) if array.ndim == 2 else None
            if match is not None:
                name, qw = match
                n_out, k_in = qw.shape
                blocks = k_in // qw.group_size
                prefix = f"{b}_q4"
                codes = qw.codes.to(torch.int16) + (0 if qw.zero_point is not None else 8)
                packed = pack_codes(codes, 4).reshape(n_out, blocks, qw.group_size // 2)
                scales = qw.scale.float().expand(n_out, blocks).contiguous()
                inputs = [node.input[0], prefix + "_B", prefix + "_scales"]
                graph.initializer.extend([
                    numpy_helper.from_array(packed.numpy(), prefix + "_B"),
                    numpy_helper.from_array(scales.numpy(), prefix + "_scales"),
                ])
                if qw.zero_point is not None:
                    zp = qw.zero_point.to(torch.int16).expand(n_out, blocks)
                    if blocks % 2:
                        zp = torch.cat([zp, torch.zeros(n_out, 1, dtype=torch.int16)], dim=1)
                    graph.initializer.append(numpy_helper.from_array(
                        pack_codes(zp, 4).numpy(), prefix + "_zp"))
                    inputs.append(prefix + "_zp")
                new_nodes.append(helper.make_node(
                    "MatMulNBits", inputs, list(node.output), name=(node.name or b) + "_q4",
                    domain="com.microsoft", K=k_in, N=n_out, bits=4, block_size=qw.group_size,
                ))
                used.append(b)
                replaced += 1
                continue
        new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    still_used = {i for node in graph.node for i in node.input}
    keep = [init for init in graph.initializer if init.name not in used or init.name in still_used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    if not any(op.domain == "com.microsoft" for op in graph_model.opset_import):
        graph_model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(graph_model, str(dst))
    return NBitsReport(Path(dst), replaced, skipped)


class OnnxEncoder:
    """An onnxruntime session of an exported encoder; same call as ``EncoderCTC``."""

    def __init__(self, path: Path, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, feats: torch.Tensor, feats_lengths: torch.Tensor):
        out = self.session.run(None, {"feats": feats.numpy().astype(np.float32),
                                      "feats_lengths": feats_lengths.numpy().astype(np.int64)})
        return tuple(torch.from_numpy(o) for o in out)
