"""Self-distillation: KL from the largest path (teacher) to every other path.

The teacher's posteriors are detached and computed once per step (they come
from the teacher's own training path, so no extra forward). Losses are summed
over valid frames/tokens and divided by the batch size, the same
normalisation as ESPnet's CTC and attention losses (``normalize_length:
false``): the KL is then a per-utterance quantity on the scale of the ASR
loss, and a batch split over DDP ranks gives the same gradient as the whole
batch in one process.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_kl(
    teacher_logits: torch.Tensor,
    student_logits: torch.Tensor,
    mask: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))`` summed over ``mask`` / batch size.

    teacher_logits, student_logits: ``[B, L, V]``; mask: ``[B, L]`` bool (True = valid).
    The teacher is detached here, so callers cannot leak gradient into it.
    """
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"teacher and student logits differ in shape: {tuple(teacher_logits.shape)} "
            f"vs {tuple(student_logits.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"distill_temperature must be > 0, got {temperature}")
    t = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    kl = (t.exp() * (t - s)).sum(-1)  # [B, L]
    kl = kl.masked_fill(~mask, 0.0)
    return kl.sum() / teacher_logits.size(0) * (temperature**2)


def length_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """``[B]`` lengths -> ``[B, max_len]`` bool mask of valid positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]
