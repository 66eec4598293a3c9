"""CTC prefix search on given log-posteriors, with ESPnet's or our scorer, for tests and
``benchmarks/bench_ctc_prefix.py``: the beam search ``Speech2Text`` runs for a CTC-only
model (``BatchBeamSearch``, ctc weight 1, no decoder, no pre-beam), minus the model."""

from __future__ import annotations

import torch

BLANK = 0


def peaky_log_posteriors(frames: int, vocab: int, gen: torch.Generator,
                         blank_share: float = 0.7) -> torch.Tensor:
    """(frames, vocab) float32 log-posteriors shaped like real CTC output: the blank wins
    about ``blank_share`` of the frames, a random label the rest, with noise everywhere.
    The last id is <sos/eos>, as in ESPnet's token lists."""
    logits = 2.0 * torch.randn(frames, vocab, generator=gen)
    blank = torch.rand(frames, generator=gen) < blank_share
    labels = torch.randint(1, vocab - 1, (frames,), generator=gen)
    logits[blank, BLANK] += 6.0
    logits[~blank, labels[~blank]] += 6.0
    return torch.log_softmax(logits, -1)


class _Posteriors(torch.nn.Module):
    """Stands in for ESPnet's CTC module: the 'encoder output' is already log-posteriors."""

    def log_softmax(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(x, -1)


def ctc_prefix_search(log_probs: torch.Tensor, impl: str, beam: int = 1, nbest: int = 1
                      ) -> list[tuple[list[int], float]]:
    """The n-best (token ids without sos/eos, score) of ESPnet's batch beam search on
    ``log_probs`` (T, V) with the CTC prefix scorer ``impl`` (``fast`` or ``espnet``)."""
    from espnet.nets.batch_beam_search import BatchBeamSearch
    from espnet.nets.scorers.ctc import CTCPrefixScorer

    from espnet_allinone.decoding.ctc_prefix import FastCTCPrefixScorer

    vocab = log_probs.shape[-1]
    eos = vocab - 1
    scorer = (FastCTCPrefixScorer if impl == "fast" else CTCPrefixScorer)(_Posteriors(), eos)
    search = BatchBeamSearch(scorers={"ctc": scorer}, weights={"ctc": 1.0}, beam_size=beam,
                             vocab_size=vocab, sos=eos, eos=eos, token_list=None,
                             pre_beam_score_key=None)
    with torch.no_grad():
        hyps = search(x=log_probs, maxlenratio=0.0, minlenratio=0.0)
    return [(h.yseq[1:-1].tolist(), float(h.score)) for h in hyps[:nbest]]
