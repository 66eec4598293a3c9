"""CTC prefix scoring without the per-frame Python loop: ESPnet's scores, computed in one pass.

ESPnet's ``CTCPrefixScoreTH.__call__`` advances the forward variables of
every (hypothesis, candidate token) pair one frame at a time in Python, so a
decode costs O(T x L) interpreter steps (T frames, L output labels) and
dominates CTC-only prefix search. Both recursions are first-order linear in
probability space,

    r^n_t = (r^n_{t-1} + phi_{t-1}) x_t        r^b_t = (r^n_{t-1} + r^b_{t-1}) b_t,

so with C_t the cumulative log-probability of the label (of the blank for
r^b) from the first computed frame, log r^n_t = C_t + logcumsumexp_s(h_s) with
h_s = log phi_s - C_s (the initial value folded into the first term), and
likewise r^b from r^n (:func:`linear_recurrence`). All frames and pairs go at
once; it runs in float64, since C_t grows to thousands and the sums cancel,
and is returned in the posteriors' dtype. The prefix scores (``log_psi``) do
not depend on the new forward variables and are computed with ESPnet's own
operations in that dtype, so from the same state they are bit-identical; the
forward variables agree to float32 rounding (ESPnet's loop accumulates it).

Two ways to use it:

* :class:`FastCTCPrefixScoreTH` is a drop-in ``CTCPrefixScoreTH``: same
  constructor, state layout and return values (the forward variables of every
  pair, as ESPnet returns them).
* :class:`FastCTCPrefixScorer` (ESPnet's ``CTCPrefixScorer`` with it) also
  defers the forward variables: the beam search keeps only ``beam`` of the
  (hypothesis, token) pairs a step scores, so each kept state is a
  :class:`PendingForward` that the next step computes for all kept pairs at
  once. The hypotheses and scores are those of computing them all.

Where ESPnet's code still runs: the windowed variant (``margin > 0`` with
attention weights; ``CTCPrefixScorer`` never passes attention weights, so the
beam search does not use it) falls back to ESPnet's loop, and
``extend_prob``/``extend_state`` (streaming), ``index_select_state`` and the
non-batch ``CTCPrefixScore`` are ESPnet's, inherited unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from espnet.nets.ctc_prefix_score import CTCPrefixScoreTH
from espnet.nets.scorers.ctc import CTCPrefixScorer

__all__ = ["FastCTCPrefixScoreTH", "FastCTCPrefixScorer", "PendingForward", "linear_recurrence"]


def linear_recurrence(init: torch.Tensor, phi: torch.Tensor, logx: torch.Tensor) -> torch.Tensor:
    """All of r_k = log((exp r_{k-1} + exp phi_{k-1}) * exp logx_k), k = 1..K-1, from r_0 = init.

    ``init``: (...), ``phi``: (K-1, ...), ``logx``: (K, ...) (``logx[0]`` unused);
    returns (K, ...) with ``r[0] = init``, in ``phi``'s dtype (pass float64).
    Closed form: r_k = C_k + logcumsumexp_{j<k}(h_j), C the cumulative sum of
    ``logx[1:]`` (C_0 = 0), h_0 = log(e^init + e^phi_0), h_j = phi_j - C_j.
    """
    cum = torch.cumsum(logx[1:], 0)
    h = phi - torch.cat((torch.zeros_like(cum[:1]), cum[:-1]))
    h[0] = torch.logaddexp(phi[0], init)
    return torch.cat((init.unsqueeze(0), cum + torch.logcumsumexp(h, 0)))


@dataclass(eq=False)
class _Step:
    """What one scoring call leaves to compute the forward variables of any of its pairs."""

    impl: FastCTCPrefixScoreTH
    log_phi: torch.Tensor  # (T, BW, S): phi of each pair
    scoring_ids: torch.Tensor | None  # (BW, S) label of each column, None: column = label
    n_hyps: int
    output_length: int
    start: int
    end: int

    def forward(self, hyp: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
        """r (T, 2, n) of the pairs (``hyp[j]``, ``col[j]``), as ESPnet's loop fills them."""
        impl, start, end = self.impl, self.start, self.end
        hyp, col = hyp.to(impl.device), col.to(impl.device)
        label = col if self.scoring_ids is None else self.scoring_ids[hyp, col]
        utt = torch.div(hyp, self.n_hyps, rounding_mode="floor")
        # as long as at the call (streaming's extend_state extends it from there)
        r = torch.full((self.log_phi.size(0), 2, len(hyp)), impl.logzero, dtype=impl.dtype,
                       device=impl.device)
        if self.output_length == 0:
            r[0, 0] = impl.x[0, 0, utt, label]
        if start < end:  # frames start-1 .. end-1; r[start-1] is the initial value
            x = impl.x[0, start - 1:end]  # (K, B, O)
            init = r[start - 1].double()
            rn = linear_recurrence(init[0], self.log_phi[start - 1:end - 1, hyp, col].double(),
                                   x[:, utt, label].double())
            rb = linear_recurrence(init[1], rn[:-1], x[:, utt, impl.blank].double())
            r[start - 1:end] = torch.stack((rn, rb), 1).to(impl.dtype)
        return r


@dataclass(eq=False)
class PendingForward:
    """The forward variables r (T, 2) of one kept pair, computed when the next step needs them
    (:meth:`FastCTCPrefixScorer.batch_score_partial`) or :meth:`tensor` is called."""

    step: _Step
    hyp: int
    col: int

    def tensor(self) -> torch.Tensor:
        """r (T, 2) of this pair alone."""
        return self.step.forward(torch.tensor([self.hyp]), torch.tensor([self.col]))[:, :, 0]


class FastCTCPrefixScoreTH(CTCPrefixScoreTH):
    """``CTCPrefixScoreTH`` with the frame loop replaced by :func:`linear_recurrence`.

    Same constructor, state layout and return values; ``pending = True`` (set
    by :class:`FastCTCPrefixScorer`) returns a :class:`_Step` in place of the
    state's forward variables. See the module docstring for the fallbacks.
    """

    pending: bool = False

    def __call__(self, y: Any, state: Any, scoring_ids: torch.Tensor | None = None,
                 att_w: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple]:
        """Scores (BW, O) of every next label and the new state, as ESPnet's ``__call__``."""
        if att_w is not None and self.margin > 0:  # windowing: ESPnet's loop
            return super().__call__(y, state, scoring_ids, att_w)
        output_length = len(y[0]) - 1  # ignore sos
        if isinstance(y, torch.Tensor):
            last_ids = y[:, -1].to(device=self.device, dtype=torch.long)
        else:
            last_ids = torch.as_tensor([int(yi[-1]) for yi in y], device=self.device)
        n_bh = len(last_ids)
        n_hyps = n_bh // self.batch
        self.scoring_num = scoring_ids.size(-1) if scoring_ids is not None else 0
        idx_bh = torch.arange(n_bh, device=self.device)
        if state is None:
            r_prev = torch.full((self.input_length, 2, self.batch, n_hyps), self.logzero,
                                dtype=self.dtype, device=self.device)
            r_prev[:, 1] = torch.cumsum(self.x[0, :, :, self.blank], 0).unsqueeze(2)
            r_prev = r_prev.view(-1, 2, n_bh)
            s_prev = 0.0
        else:
            r_prev, s_prev, _, _ = state

        utt = torch.div(idx_bh, n_hyps, rounding_mode="floor")
        if self.scoring_num > 0:
            snum = self.scoring_num
            scoring_idmap = torch.full((n_bh, self.odim), -1, dtype=torch.long, device=self.device)
            scoring_idmap[idx_bh.unsqueeze(1), scoring_ids] = torch.arange(snum, device=self.device)
            x_label = self.x[0][:, utt.unsqueeze(1), scoring_ids]  # (T, BW, S)
        else:
            scoring_ids = scoring_idmap = None
            snum = self.odim
            x_label = self.x[0].unsqueeze(2).expand(-1, -1, n_hyps, -1).reshape(-1, n_bh, snum)

        # phi: r^n + r^b of the prefix, r^b alone where the candidate repeats its last label
        r_sum = torch.logsumexp(r_prev, 1)  # (T, BW)
        log_phi = r_sum.unsqueeze(2).repeat(1, 1, snum)
        if scoring_idmap is None:
            log_phi[:, idx_bh, last_ids] = r_prev[:, 1]
        else:
            pos = scoring_idmap[idx_bh, last_ids]
            keep = pos >= 0
            log_phi[:, idx_bh[keep], pos[keep]] = r_prev[:, 1, idx_bh[keep]]

        start = max(output_length, 1)
        end = self.input_length
        step = _Step(self, log_phi, scoring_ids, n_hyps, output_length, start, end)
        if output_length == 0:
            r_first = x_label[0]
        else:
            r_first = torch.full_like(x_label[0], self.logzero)

        # log prefix probabilities psi, with ESPnet's operations
        log_psi_ = torch.logsumexp(
            torch.cat((log_phi[start - 1:end - 1] + x_label[start:end], r_first.unsqueeze(0)),
                      dim=0),
            dim=0)
        if scoring_ids is None:
            log_psi = log_psi_
        else:
            log_psi = torch.full((n_bh, self.odim), self.logzero, dtype=self.dtype,
                                 device=self.device)
            log_psi[idx_bh.unsqueeze(1), scoring_ids] = log_psi_
        log_psi[:, self.eos] = r_sum[self.end_frames.to(self.device)[utt], idx_bh]
        if self.eos != self.blank:
            log_psi[:, self.blank] = self.logzero  # exclude blank probs

        if self.pending:
            r: Any = step
        else:
            hyp = idx_bh.repeat_interleave(snum)
            col = torch.arange(snum, device=self.device).repeat(n_bh)
            r = step.forward(hyp, col).view(-1, 2, n_bh, snum)
        return (log_psi - s_prev), (r, log_psi, 0, 0, scoring_idmap)


def _computed(states: list[Any]) -> list[Any]:
    """``states`` with every :class:`PendingForward` replaced by its r (T, 2), computed
    together for the pairs of one step."""
    groups: dict[int, list[int]] = {}
    for k, s in enumerate(states):
        if s is not None and isinstance(s[0], PendingForward):
            groups.setdefault(id(s[0].step), []).append(k)
    out = list(states)
    for ks in groups.values():
        pending = [states[k][0] for k in ks]
        r = pending[0].step.forward(torch.tensor([p.hyp for p in pending]),
                                    torch.tensor([p.col for p in pending]))
        for j, k in enumerate(ks):
            out[k] = (r[:, :, j], *states[k][1:])
    return out


class FastCTCPrefixScorer(CTCPrefixScorer):
    """ESPnet's ``CTCPrefixScorer`` scoring with :class:`FastCTCPrefixScoreTH`, forward
    variables computed for kept pairs only (:class:`PendingForward`).

    The non-batch ``BeamSearch`` path (``init_state``/``score_partial``) stays ESPnet's.
    """

    def batch_init_state(self, x: torch.Tensor) -> None:
        """As ESPnet's: one utterance's CTC log-posteriors, blank id 0."""
        logp = self.ctc.log_softmax(x.unsqueeze(0))  # assuming batch_size = 1
        xlen = torch.tensor([logp.size(1)])
        self.impl = FastCTCPrefixScoreTH(logp, xlen, 0, self.eos)
        self.impl.pending = True

    def select_state(self, state: Any, i: int, new_id: int | None = None) -> Any:
        """As ESPnet's; a batch step's state gives a :class:`PendingForward` for its r."""
        if type(state) is tuple and len(state) == 5 and isinstance(state[0], _Step):
            step, log_psi, f_min, f_max, scoring_idmap = state
            s = log_psi[i, new_id].expand(log_psi.size(1))
            col = int(new_id if scoring_idmap is None else scoring_idmap[i, new_id])
            col %= step.log_phi.size(2)  # an unscored token (-1): ESPnet's r[..., -1]
            return PendingForward(step, int(i), col), s, f_min, f_max
        return super().select_state(state, i, new_id)

    def batch_score_partial(self, y: torch.Tensor, ids: torch.Tensor | None, state: Any,
                            x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """As ESPnet's, after computing the kept pairs' forward variables together."""
        return super().batch_score_partial(y, ids, _computed(state), x)

    def extend_state(self, state: Any) -> Any:
        """As ESPnet's (streaming), on computed forward variables."""
        return super().extend_state(_computed(state))
