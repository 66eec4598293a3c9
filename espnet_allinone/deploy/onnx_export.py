"""ONNX export of extracted models (encoder + CTC head), and dynamic int8 in PyTorch.

* ``int8_dynamic(model)``: every ``nn.Linear`` -> dynamic int8
  (``torch.ao.quantization.quantize_dynamic``), as ESPnet's own
  ``Speech2Text(..., quantize_asr_model=True)`` does.
* ``export_onnx``: the encoder + CTC head (features in, CTC log-posteriors
  out, dynamic batch and time) for onnxruntime; the STFT/mel frontend and the
  normalisation stay in PyTorch (``features``). While tracing, ESPnet's
  attention takes forms with fewer copies in the graph and the same values
  (``export_attention``: the relative shift as one gather, the key mask as an
  added bias), and padding masks are built in linear size (``linear_pad_masks``).
* ``quantize_onnx_int8``: onnxruntime's dynamic int8 quantization of that graph.
* ``onnx_matmul_nbits``: a low-bit (2/4/8) extracted model's quantized Linear
  layers as onnxruntime ``MatMulNBits`` nodes holding the model's own codes
  and scales, so the low-bit weights run exactly (no re-quantization), and
  its other packed weights stored bit-packed in the file (expanded once at
  session start); see :mod:`espnet_allinone.deploy.onnx_lowbit`.
* ``OnnxEncoder``: such a file on onnxruntime, called with and returning torch
  tensors like ``EncoderCTC``; the session is :func:`espnet_allinone.deploy.runtime.onnx_session`'s.

The whole pipeline (numpy front end, CTC search, reuse of the exported files)
is :mod:`espnet_allinone.deploy.build` and :mod:`espnet_allinone.deploy.runtime`.
"""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from espnet_allinone.deploy import onnx_lowbit
from espnet_allinone.deploy.runtime import onnx_session
from espnet_allinone.encoders.protocol import PackedEncoder, protocol_violations


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


class ComputedRelPositions(torch.nn.Module):
    """ESPnet's ``RelPositionalEncoding`` ("latest") computing its table from the length.

    The stock module slices a precomputed (2 * max_len - 1, d) table, which
    tracing stores in the ONNX file as a constant (10 MB at d=256, more than a
    4-bit 12-block encoder); here the same sines and cosines of the same
    float32 angles are computed for the positions T-1 ... -(T-1) of the input.
    """

    def __init__(self, stock: torch.nn.Module):
        super().__init__()
        self.xscale, self.dropout = stock.xscale, stock.dropout
        d_model = stock.d_model
        self.register_buffer("div_term", torch.exp(
            torch.arange(0, d_model, 2, dtype=torch.float32) * -(math.log(10000.0) / d_model)))

    def forward(self, x: torch.Tensor):
        length = x.size(1)
        position = torch.arange(length - 1, -length, -1, dtype=torch.float32).unsqueeze(1)
        angle = position * self.div_term
        pe = torch.stack([torch.sin(angle), torch.cos(angle)], dim=-1).flatten(1).unsqueeze(0)
        return self.dropout(x * self.xscale), self.dropout(pe.to(x.dtype))


@contextlib.contextmanager
def computed_positions(module: torch.nn.Module):
    """Swap every stock ``RelPositionalEncoding`` in ``module`` for ``ComputedRelPositions``."""
    swapped = []
    for name, child in list(module.named_modules()):
        if type(child).__name__ == "RelPositionalEncoding" and hasattr(child, "d_model"):
            parent_name, _, attr = name.rpartition(".")
            parent = module.get_submodule(parent_name) if parent_name else module
            swapped.append((parent, attr, child))
            setattr(parent, attr, ComputedRelPositions(child))
    try:
        yield
    finally:
        for parent, attr, child in swapped:
            setattr(parent, attr, child)


def gathered_rel_shift(self, x: torch.Tensor) -> torch.Tensor:
    """ESPnet's ``rel_shift`` as one gather: out[..., i, j] = x[..., i, T - 1 - i + j].

    The stock shift pads with a zero column, reshapes and slices twice, which
    the exported graph runs as a Concat and two Slice copies of [B, H, T, 2T - 1];
    the gather reads each kept score once. Same values, bit for bit.
    """
    t = x.size(2)
    rows = torch.arange(t, device=x.device)
    index = (t - 1) - rows.unsqueeze(1) + rows.unsqueeze(0)
    return torch.gather(x, 3, index.expand(x.size(0), x.size(1), t, t))


def additive_mask_attention(self, value: torch.Tensor, scores: torch.Tensor,
                            mask: torch.Tensor | None) -> torch.Tensor:
    """ESPnet's ``forward_attention`` (eval) with the key mask added to the scores.

    The stock one fills masked scores with the float minimum before the softmax
    and zeros them after it: two ``Where`` over [B, H, T, T]. Adding the minimum
    instead (a broadcast [B, 1, 1, T] bias) gives the same scores bit for bit
    (|score| is far below the minimum's spacing), and after the softmax the
    masked weights are already exactly zero in every row with an unmasked key.
    """
    n_batch = value.size(0)
    if mask is not None:
        bias = mask.unsqueeze(1).eq(0).to(scores.dtype) * torch.finfo(scores.dtype).min
        scores = scores + bias
    attn = torch.softmax(scores, dim=-1)
    x = torch.matmul(attn, value).transpose(1, 2).contiguous()
    return self.linear_out(x.view(n_batch, -1, self.h * self.d_k))


@contextlib.contextmanager
def export_attention(module: torch.nn.Module):
    """Give every stock ESPnet attention in ``module`` the export forms above (instance
    attributes, removed afterwards); subclasses that override them keep their own."""
    from espnet.nets.pytorch_backend.transformer.attention import (
        MultiHeadedAttention,
        RelPositionMultiHeadedAttention,
    )

    patched = []
    for child in module.modules():
        if not isinstance(child, MultiHeadedAttention):
            continue
        names = []
        if type(child).forward_attention is MultiHeadedAttention.forward_attention:
            child.forward_attention = additive_mask_attention.__get__(child)
            names.append("forward_attention")
        if (isinstance(child, RelPositionMultiHeadedAttention) and not child.zero_triu
                and type(child).rel_shift is RelPositionMultiHeadedAttention.rel_shift):
            child.rel_shift = gathered_rel_shift.__get__(child)
            names.append("rel_shift")
        patched.append((child, names))
    try:
        yield
    finally:
        for child, names in patched:
            for name in names:
                del child.__dict__[name]


def linear_pad_mask(lengths, xs=None, length_dim=-1, maxlen=None, *, stock=None):
    """ESPnet's ``make_pad_mask`` for a batch of lengths, in linear size when traced.

    ESPnet's traceable form selects rows of a (T+1) x (T+1) triangular matrix: at
    1000 frames (10 s) a million-element ``Expand`` and ``LessOrEqual`` in the graph
    (2.2 of the smallest benchmark subsystem's 47 ms), growing with the square of the
    length. ``positions >= lengths`` is the same mask from T x B elements. Other
    calls (a reference tensor, a fixed ``maxlen``) go to ``stock``."""
    if xs is None and maxlen is None and length_dim == -1 \
            and isinstance(lengths, torch.Tensor) and lengths.dim() == 1:
        positions = torch.arange(lengths.max(), device=lengths.device)
        return positions[None, :] >= lengths[:, None]
    return stock(lengths, xs, length_dim, maxlen)


@contextlib.contextmanager
def linear_pad_masks():
    """While tracing, every loaded ESPnet or espnet-allinone module that calls ESPnet's
    ``make_pad_mask`` calls :func:`linear_pad_mask` instead (restored afterwards)."""
    import functools
    import sys

    from espnet.nets.pytorch_backend import nets_utils

    stock = nets_utils.make_pad_mask
    patched = [m for name, m in list(sys.modules.items())
               if name.split(".")[0] in ("espnet", "espnet2", "espnet_allinone")
               and getattr(m, "make_pad_mask", None) is stock]
    for module in patched:
        module.make_pad_mask = functools.partial(linear_pad_mask, stock=stock)
    try:
        yield
    finally:
        for module in patched:
            module.make_pad_mask = stock


ONNX_INPUTS = ("feats", "feats_lengths")
ONNX_OUTPUTS = ("encoder_out", "encoder_out_lens", "ctc_log_probs")


def export_onnx(model: torch.nn.Module, path: Path, input_size: int, opset: int = 17) -> Path:
    """Export encoder + CTC of ``model`` (eval mode) to ``path``; dynamic batch and time."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = EncoderCTC(model).eval()
    feats = torch.randn(1, 200, input_size)
    lengths = torch.tensor([200])
    # The traced shape checks (short-utterance guard, positional-table size) are
    # constant in the graph: inputs must be longer than the subsampling needs and
    # shorter than max_pos_emb_len frames after subsampling, as in PyTorch.
    with torch.no_grad(), _float_state(model.encoder), computed_positions(wrapper), \
            export_attention(wrapper), linear_pad_masks(), warnings.catch_warnings():
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


def _float_state(encoder: torch.nn.Module) -> contextlib.AbstractContextManager:
    """Tracing reads float weights: a packed encoder shows them dequantized; any other
    holds them as such already."""
    if protocol_violations(type(encoder), PackedEncoder):
        return contextlib.nullcontext()
    return encoder.float_state_dict()


def quantize_onnx_int8(src: Path, dst: Path) -> Path:
    """onnxruntime dynamic int8 quantization (weights int8, activations quantized on the fly)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    return Path(dst)


@dataclass
class NBitsReport:
    path: Path
    replaced: int
    skipped: list[str]


def onnx_matmul_nbits(model: torch.nn.Module, src: Path, dst: Path,
                      policy: str = "nbits") -> NBitsReport:
    """Replace the float MatMuls of quantized Linear layers by MatMulNBits (2/4/8 bits).

    The B input of each MatMul is matched by value against the dequantized
    packed weights of ``model`` (a low-bit ``packed_conformer`` model); codes
    and scales come from the packed model itself, so the result is exact.
    ``policy`` as in :func:`espnet_allinone.deploy.onnx_lowbit.map_low_bit`.
    """
    state = model.state_dict()
    if not any(k.endswith("_codes") for k in state):
        raise ValueError(
            "MatMulNBits export needs a low-bit packed_conformer model, got "
            f"{type(model.encoder).__name__} with float weights"
        )
    report = onnx_lowbit.map_low_bit(state, Path(src), Path(dst), policy)
    return NBitsReport(report.path, report.replaced, report.kept_float)


class OnnxEncoder:
    """An onnxruntime session of an exported encoder; same call as ``EncoderCTC``.

    ``threads``: intra-op threads (None or 0: onnxruntime's default, all cores).
    """

    def __init__(self, path: Path, threads: int | None = None):
        self.session = onnx_session(path, threads or None)

    def __call__(self, feats: torch.Tensor, feats_lengths: torch.Tensor):
        out = self.session.run(None, {"feats": feats.numpy().astype(np.float32),
                                      "feats_lengths": feats_lengths.numpy().astype(np.int64)})
        return tuple(torch.from_numpy(o) for o in out)
