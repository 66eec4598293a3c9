"""Run an exported model on onnxruntime: waveform -> features -> encoder + CTC -> text.

Imports numpy and onnxruntime only (no torch, no ESPnet), so an exported
directory (``build.ensure_exported``) runs anywhere those two install::

    from espnet_allinone.deploy.runtime import OnnxSpeech2Text
    asr = OnnxSpeech2Text("exp/x/extracted/d4-w1-int4.onnx", num_threads=2)
    text, tokens, token_ids = asr(waveform)[0]      # as ESPnet's Speech2Text

Variants (files of the exported directory): ``exact`` (the default: output as
ESPnet's), ``fast`` (``MatMulNBits`` at accuracy_level 4, int8 compute inside
the low-bit kernel: faster where the CPU has int8 dot products, not exact)
and ``int8`` (dynamic int8 float layers). Low-bit weights are stored
bit-packed in the files, with the constant nodes that expand them; here they
are expanded in numpy once, before the session is built
(:mod:`espnet_allinone.deploy.expand`; plain onnxruntime would constant-fold
the same nodes itself, with a higher peak of memory), so a session starts a
little later than from a float file and runs the same.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from espnet_allinone.deploy import ctc, expand
from espnet_allinone.deploy.frontend import FILE_NAME as FRONTEND_FILE
from espnet_allinone.deploy.frontend import LogMelFrontend
from espnet_allinone.errors import AllInOneError

META_FILE = "deploy.json"
FORMAT_VERSION = 1
SEARCHES = ("greedy", "beam")


class DeployError(AllInOneError, RuntimeError):
    """An exported directory that is missing, incomplete or of another format."""


@dataclass
class Hypothesis:
    text: str
    tokens: list[str]
    token_ids: list[int]

    def __iter__(self):  # unpacks like ESPnet's (text, token, token_int, hyp) minus hyp
        return iter((self.text, self.tokens, self.token_ids))


def read_meta(directory: Path) -> dict:
    """``deploy.json`` of an exported directory, checked for the files it names."""
    directory = Path(directory)
    path = directory / META_FILE
    if not path.is_file():
        raise DeployError(f"{directory} is not an exported model: no {META_FILE} "
                          "(export it with python -m espnet_allinone.bin.transcribe --model "
                          "<extracted dir> or espnet_allinone.deploy.build)")
    meta = json.loads(path.read_text(encoding="utf-8"))
    if meta.get("format_version") != FORMAT_VERSION:
        raise DeployError(f"{path}: format_version {meta.get('format_version')!r}, this "
                          f"version reads {FORMAT_VERSION}; export the model again")
    return meta


def variant_file(directory: Path, meta: dict, variant: str) -> Path:
    """The ``.onnx`` file of ``variant``, checked against the size ``deploy.json`` recorded
    when it was written: a truncated or partly copied file is refused by name, never run."""
    entry = meta["variants"][variant]
    path = Path(directory) / entry["file"]
    if not path.is_file():
        raise DeployError(f"{path} is missing (named by {META_FILE}); export the model again")
    size, expected = path.stat().st_size, int(entry["bytes"])
    if size != expected:
        raise DeployError(f"{path} is damaged: {size:,} bytes, {META_FILE} records "
                          f"{expected:,} (truncated or partly copied?); export the model again "
                          "(transcribe re-exports it)")
    return path


def onnx_session(path: str | Path, num_threads: int | None = 1, spin: bool | None = False):
    """The onnxruntime CPU session of an exported ``.onnx`` file, for every caller here.

    Its bit-packed weights are expanded in numpy first (:mod:`espnet_allinone.deploy.expand`:
    the same bits as onnxruntime's own constant folding, intermediates freed as it goes
    instead of held all at once). ``num_threads``: intra-op threads, one inter-op thread
    (None: onnxruntime's defaults). ``spin``: whether idle worker threads spin (False:
    they would steal cores from other streams and processes; None: onnxruntime's default).
    """
    import onnxruntime as ort  # deferred: the module's names and errors need no onnxruntime

    options = ort.SessionOptions()
    if num_threads is not None:
        options.intra_op_num_threads = int(num_threads)
        options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if spin is not None:
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return expand.session(path, options, providers=["CPUExecutionProvider"])


class OnnxSpeech2Text:
    """An exported model on onnxruntime; ``__call__`` mirrors ESPnet's ``Speech2Text``."""

    def __init__(self, directory: str | Path, variant: str = "exact", num_threads: int = 1,
                 search: str = "greedy", beam_size: int = 10, spin: bool = False):
        self.directory = Path(directory)
        self.meta = read_meta(self.directory)
        variants = self.meta["variants"]
        if variant not in variants:
            raise DeployError(f"variant {variant!r} not exported in {self.directory}; "
                              f"available: {', '.join(variants)}")
        if search not in SEARCHES:
            raise ValueError(f"search {search!r} unknown; valid: {', '.join(SEARCHES)}")
        if beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {beam_size}")
        self.variant, self.search, self.beam_size = variant, search, beam_size
        self.frontend = LogMelFrontend.load(self.directory / FRONTEND_FILE)
        self.token_list: list[str] = self.meta["token_list"]
        self.sample_rate: int = int(self.meta["sample_rate"])
        self.blank = int(self.meta["blank"])
        self.eos = int(self.meta["eos"])
        self.min_samples = int(self.meta.get("min_samples", 1))
        self.session = onnx_session(variant_file(self.directory, self.meta, variant),
                                    int(num_threads), spin)

    # ------------------------------------------------------------------
    def log_probs(self, speeches: list[np.ndarray]) -> list[np.ndarray]:
        """CTC log-posteriors (frames, vocab) of each waveform, run as one padded batch."""
        feats, lengths = self.frontend.batch(speeches)
        _, out_lens, logp = self.session.run(
            ["encoder_out", "encoder_out_lens", "ctc_log_probs"],
            {"feats": feats, "feats_lengths": lengths})
        return [logp[i, : int(out_lens[i])] for i in range(len(speeches))]

    def decode(self, logp: np.ndarray) -> Hypothesis:
        if self.search == "greedy":
            ids = ctc.greedy(logp, self.blank, drop=(self.eos,))
        else:
            ids = ctc.prefix_beam_search(logp, self.beam_size, self.eos, self.blank)
            ids = [i for i in ids if i != self.blank]
        tokens = [self.token_list[i] for i in ids]
        return Hypothesis(self.tokens2text(tokens), tokens, ids)

    def tokens2text(self, tokens: list[str]) -> str:
        """ESPnet's tokenizers' ``tokens2text`` for char, bpe and word token types."""
        kind = self.meta.get("token_type", "char")
        if kind == "char":
            space = self.meta.get("space_symbol", "<space>")
            return "".join(" " if t == space else t for t in tokens)
        if kind == "bpe":
            return "".join(tokens).replace("\u2581", " ").strip()
        return " ".join(tokens)

    def __call__(self, speech: np.ndarray) -> list[Hypothesis]:
        """One waveform at the model's sample rate -> [best hypothesis]."""
        return [self.decode(self.log_probs([np.asarray(speech)])[0])]

    def transcribe_batch(self, speeches: list[np.ndarray]) -> list[Hypothesis]:
        """Several waveforms as one padded batch (more throughput on many cores).

        ESPnet's Conformer convolution module sees the padding, so a shorter
        utterance's last frames can differ from decoding it alone (as in
        ESPnet's own batched inference); ``__call__`` decodes one at a time.
        """
        return [self.decode(lp) for lp in self.log_probs(speeches)]
