"""CTC decoding in numpy: best-path greedy and ESPnet's CTC prefix beam search.

The beam search is the label-synchronous search ESPnet's ``Speech2Text`` runs
for a CTC-only model (``ctc_weight: 1.0``: every token scored by the CTC prefix
probability, the ``beam`` best (hypothesis, token) pairs kept per output step,
``<eos>`` scored by the full-sequence probability, ESPnet's end detection), so
the same log-probabilities give the same hypotheses without torch or ESPnet.
"""

from __future__ import annotations

import numpy as np

LOGZERO = -1e10


def greedy(logp: np.ndarray, blank: int = 0, drop: tuple[int, ...] = ()) -> list[int]:
    """Best path: argmax per frame, repeats merged, blanks (and ``drop`` ids) removed."""
    ids = np.asarray(logp).argmax(-1)
    if ids.size == 0:
        return []
    keep = np.ones(ids.shape, dtype=bool)
    keep[1:] = ids[1:] != ids[:-1]
    return [int(i) for i in ids[keep] if i != blank and i not in drop]


def _end_detect(ended: list[tuple[float, int]], i: int, m: int = 3,
                d_end: float = -10.0) -> bool:
    """ESPnet's rule: stop when the last ``m`` lengths' best ended hypotheses are far behind."""
    if not ended:
        return False
    best = max(score for score, _ in ended)
    count = 0
    for k in range(m):
        same = [score for score, length in ended if length == i - k]
        if same and max(same) - best < d_end:
            count += 1
    return count == m


def prefix_beam_search(logp: np.ndarray, beam: int, eos: int, blank: int = 0) -> list[int]:
    """Best hypothesis (token ids, no sos/eos) of a CTC prefix beam search over ``logp`` (T, V)."""
    x = np.asarray(logp, dtype=np.float32)
    n_frames, vocab = x.shape
    if n_frames == 0:
        return []
    xb = x[:, blank]
    # a running hypothesis: (token ids, score, its prefix log-prob psi,
    # r (T, 2) = log-probs of the prefix ending at t in a non-blank / a blank)
    r0 = np.full((n_frames, 2), LOGZERO, dtype=np.float32)
    r0[:, 1] = np.cumsum(xb)
    hyps: list[tuple[list[int], np.float32, np.float32, np.ndarray]] = [
        ([], np.float32(0), np.float32(0), r0)]
    ended: list[tuple[float, int, list[int]]] = []
    for i in range(n_frames):
        n_hyp = len(hyps)
        out_len = len(hyps[0][0])
        start = max(out_len, 1)
        r_prev = np.stack([h[3] for h in hyps], axis=1)  # T, H, 2
        r_sum = np.logaddexp(r_prev[..., 0], r_prev[..., 1])  # T, H
        log_phi = np.repeat(r_sum[:, :, None], vocab, axis=2)  # T, H, V
        for h, (seq, _, _, _) in enumerate(hyps):
            if seq:
                log_phi[:, h, seq[-1]] = r_prev[:, h, 1]
        r = np.full((n_frames, 2, n_hyp, vocab), LOGZERO, dtype=np.float32)
        if out_len == 0:
            r[0, 0] = x[0]
        for t in range(start, n_frames):
            r[t, 0] = np.logaddexp(r[t - 1, 0], log_phi[t - 1]) + x[t]
            r[t, 1] = np.logaddexp(r[t - 1, 0], r[t - 1, 1]) + xb[t]
        phi_x = np.concatenate([log_phi[:1], log_phi[:-1]], axis=0) + x[:, None, :]
        stacked = np.concatenate([phi_x[start:], r[start - 1, 0][None]], axis=0)
        log_psi = np.logaddexp.reduce(stacked, axis=0)  # H, V
        log_psi[:, eos] = r_sum[-1]
        log_psi[:, blank] = LOGZERO
        # score + (psi - previous psi), in float32 as ESPnet accumulates it (ctc weight 1)
        prev_score = np.array([h[1] for h in hyps], dtype=np.float32)[:, None]
        prev_psi = np.array([h[2] for h in hyps], dtype=np.float32)[:, None]
        scores = ((log_psi - prev_psi) + prev_score).reshape(-1)
        order = np.argsort(-scores, kind="stable")[:beam]
        new_hyps = []
        for flat in order:
            h, c = divmod(int(flat), vocab)
            seq = hyps[h][0] + [c]
            score = float(scores[flat])
            if c == eos or i == n_frames - 1:
                ended.append((score, len(seq) + 1 + (c != eos), seq if c != eos else seq[:-1]))
            else:
                new_hyps.append((seq, scores[flat], log_psi[h, c], r[:, :, h, c].copy()))
        hyps = new_hyps
        if _end_detect([(s, n) for s, n, _ in ended], i):
            break
        if not hyps:
            break
    if not ended:
        return []
    return max(ended, key=lambda e: e[0])[2]
