"""Layer-wise distillation from the unpruned model to a pruned path (DPHuBERT).

Each student block's output goes through a learned linear projection
(initialised to the identity) and is pulled towards the teacher's output of
the same block: L1 distance plus ``-log sigmoid(cosine similarity)``, over the
frames that are not padding, averaged over the blocks. The teacher's outputs
are detached: the teacher is either the same weights with the gates open (the
largest path of the step) or a frozen copy of the starting checkpoint.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LayerDistillation(nn.Module):
    """Projections of ``n_layers`` student block outputs of width ``dim``."""

    def __init__(self, n_layers: int, dim: int) -> None:
        super().__init__()
        self.projections = nn.ModuleList(nn.Linear(dim, dim) for _ in range(n_layers))
        with torch.no_grad():
            for proj in self.projections:
                proj.weight.copy_(torch.eye(dim))
                proj.bias.zero_()

    def forward(self, student: list[Tensor], teacher: list[Tensor], lengths: Tensor) -> Tensor:
        if len(student) != len(teacher) or len(student) != len(self.projections):
            raise ValueError(f"{len(student)} student and {len(teacher)} teacher layers for "
                             f"{len(self.projections)} projections")
        frames = torch.arange(student[0].size(1), device=lengths.device)
        keep = (frames[None, :] < lengths[:, None]).to(student[0].dtype)  # (batch, time)
        n = keep.sum().clamp(min=1.0)
        total = student[0].new_zeros(())
        for proj, s, t in zip(self.projections, student, teacher):
            s, t = proj(s), t.detach()
            l1 = ((s - t).abs().mean(-1) * keep).sum() / n
            cos = F.cosine_similarity(s, t, dim=-1)
            total = total + l1 + (-F.logsigmoid(cos) * keep).sum() / n
        return total / len(self.projections)


@contextlib.contextmanager
def block_outputs(blocks: list[nn.Module]) -> Iterator[list[Tensor]]:
    """Collect each block's output tensor, in the order the blocks run."""
    seen: list[Tensor] = []

    def hook(module: nn.Module, args, output) -> None:
        x = output[0]
        seen.append(x[0] if isinstance(x, tuple) else x)

    handles = [b.register_forward_hook(hook) for b in blocks]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()
