"""Scoring a record on held-out data: greedy CTC character error rate.

The search compares many records of one model, so each is scored the cheap
way that still ranks them: best-path CTC decoding (``deploy/ctc.greedy``, the
package's one greedy decoder) of a fixed draw of dev utterances, character
error rate with spaces left out (as ESPnet's ``cer_ctc``). The front end
(frontend and normalisation, outside every record) runs once for all
records; each record runs with BatchNorm statistics re-estimated for it
(``export/calibration.py``, the same draw extraction then uses), inside
``kept_statistics`` so the next record starts from the trained model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import editdistance
import numpy as np
import torch

from espnet_allinone.arch import SubnetArch
from espnet_allinone.corpus.datadir import read_table
from espnet_allinone.deploy.ctc import greedy
from espnet_allinone.errors import AllInOneError
from espnet_allinone.export.calibration import (
    CalibrationData,
    calibrate,
    kept_statistics,
)

DEFAULT_DEV_UTTS = 200
"""Dev utterances a record is scored on unless told otherwise (drawn with a fixed seed)."""


class DevDataError(AllInOneError, ValueError):
    """Held-out data that cannot be used (no wav.scp or text, keys without text)."""


@dataclass(frozen=True)
class DevSet:
    """A fixed draw of a Kaldi-style data dir's utterances with their transcripts."""

    data: CalibrationData  # the same reader and fixed-seed draw as calibration
    texts: tuple[str, ...]

    @classmethod
    def from_data_dir(cls, data_dir: str | Path, count: int = DEFAULT_DEV_UTTS) -> DevSet:
        data_dir = Path(data_dir)
        for name in ("wav.scp", "text"):
            if not (data_dir / name).is_file():
                raise DevDataError(f"held-out data {data_dir} has no {name} (expected a "
                                   "Kaldi-style data dir with wav.scp and text, e.g. "
                                   "dump/raw/dev)")
        try:
            data = CalibrationData.from_data_dir(data_dir, count, log=lambda _: None)
        except ValueError as e:
            raise DevDataError(str(e).replace("calibration", "held-out")) from None
        text = read_table(data_dir / "text")
        missing = [k for k in data.utterances if k not in text]
        if missing:
            raise DevDataError(f"{data_dir / 'text'} has no transcript for {missing[0]} "
                               f"(+{len(missing) - 1} more)")
        return cls(data, tuple(text[k] for k in data.utterances))

    def describe(self) -> dict:
        return {"data": str(self.data.data_dir), "utterances": len(self.texts)}


def char_errors(ref: str, hyp: str) -> tuple[int, int]:
    """(edit distance, reference length) over characters, spaces left out."""
    ref, hyp = ref.replace(" ", ""), hyp.replace(" ", "")
    return editdistance.eval(ref, hyp), len(ref)


class Scorer:
    """Dev CER (%) of architecture records of one loaded model, each scored once.

    ``batch_size`` 1 (the default) decodes as the recipe does, one utterance at a
    time: in a padded batch the conv modules mix padding into the last frames of
    the shorter utterances, which measured here nearly doubled the CER of a 2-bit
    subsystem.
    """

    def __init__(self, model: torch.nn.Module, dev: DevSet, detokenize: Callable[[list[int]], str],
                 calibration: CalibrationData | None = None, batch_size: int = 1) -> None:
        self.model = model.eval()
        self.encoder = model.encoder
        self.dev = dev
        self.detokenize = detokenize
        self.calibration = calibration
        self.batch_size = batch_size
        self.blank = getattr(model, "blank_id", 0)
        self._batches = list(self._features())
        self._cache: dict[SubnetArch, float] = {}
        self.evaluations = 0

    @torch.no_grad()
    def _features(self) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
        """The front end's output once, in batches of similar length (index, feats, lens)."""
        waves = list(self.dev.data.speech())
        order = sorted(range(len(waves)), key=lambda i: len(waves[i]))
        model = self.model
        for start in range(0, len(order), self.batch_size):
            index = order[start:start + self.batch_size]
            lengths = torch.tensor([len(waves[i]) for i in index])
            speech = torch.zeros(len(index), int(lengths.max()), *waves[index[0]].shape[1:])
            for row, i in enumerate(index):
                speech[row, : len(waves[i])] = torch.as_tensor(np.asarray(waves[i]))
            feats, feats_lens = model._extract_feats(speech, lengths)
            if model.normalize is not None:
                feats, feats_lens = model.normalize(feats, feats_lens)
            if model.preencoder is not None:
                feats, feats_lens = model.preencoder(feats, feats_lens)
            yield index, feats, feats_lens

    def error(self, arch: SubnetArch) -> float:
        """CER % of ``arch`` on the dev draw (with its own BatchNorm statistics)."""
        if arch not in self._cache:
            self._cache[arch] = self._score(arch)
            self.evaluations += 1
        return self._cache[arch]

    @torch.no_grad()
    def _score(self, arch: SubnetArch) -> float:
        model, hyps = self.model, [""] * len(self.dev.texts)
        with kept_statistics(self.encoder), self.encoder.use_arch(arch):
            if self.calibration is not None:
                calibrate(model, self.calibration)
            for index, feats, lens in self._batches:
                out, out_lens, _ = self.encoder(feats, lens)
                if model.postencoder is not None:
                    out, out_lens = model.postencoder(out, out_lens)
                logp = model.ctc.log_softmax(out)
                for row, i in enumerate(index):
                    ids = greedy(logp[row, : int(out_lens[row])].numpy(), blank=self.blank)
                    hyps[i] = self.detokenize(ids)
        errors = [char_errors(ref, hyp) for ref, hyp in zip(self.dev.texts, hyps)]
        return 100.0 * sum(e for e, _ in errors) / max(sum(n for _, n in errors), 1)


def detokenizer(config: dict) -> Callable[[list[int]], str]:
    """Token ids -> text with the experiment's own token list and tokenizer."""
    from espnet2.text.build_tokenizer import build_tokenizer
    from espnet2.text.token_id_converter import TokenIDConverter

    tokens = config["token_list"]
    converter = TokenIDConverter(token_list=tokens)
    tokenizer = build_tokenizer(token_type=config.get("token_type", "char"),
                                bpemodel=config.get("bpemodel"))
    drop = {i for i, t in enumerate(tokens) if t in ("<blank>", "<sos/eos>")}

    def detokenize(ids: list[int]) -> str:
        return tokenizer.tokens2text(converter.ids2tokens([i for i in ids if i not in drop]))

    return detokenize
