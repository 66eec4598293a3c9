"""ElasticBatchNorm1d: BatchNorm over the first k channels, statistics per width.

Running statistics of a channel depend on which other channels were active
upstream, so each active width keeps its own running mean/variance. The full
width uses the stock buffer names (``running_mean``, ``running_var``,
``num_batches_tracked``) so a model without elastic channels has the stock
state_dict keys; a narrower width k adds ``running_mean_c{k}``,
``running_var_c{k}`` and ``num_batches_tracked_c{k}``. The affine weight and
bias are shared (first k entries). Training at one width never touches
another width's statistics.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

FLOAT_BITS = 32


class ElasticBatchNorm1d(nn.BatchNorm1d):
    """``nn.BatchNorm1d`` with an active channel prefix and per-width statistics."""

    @classmethod
    def convert(cls, module: nn.BatchNorm1d, widths: Iterable[int] = ()) -> ElasticBatchNorm1d:
        """Turn a built ``nn.BatchNorm1d`` into this class in place, adding ``widths``."""
        if type(module) is not nn.BatchNorm1d:
            raise TypeError(f"expected torch.nn.BatchNorm1d, got {type(module).__name__}")
        module.__class__ = cls
        module.active_channels = module.num_features
        module.widths = tuple(sorted({int(w) for w in widths} | {module.num_features}))
        for width in module.widths:
            if not 1 <= width <= module.num_features:
                raise ValueError(f"BatchNorm width {width} outside 1..{module.num_features}")
            if width < module.num_features and module.track_running_stats:
                dev = module.running_mean.device
                module.register_buffer(f"running_mean_c{width}", torch.zeros(width, device=dev))
                module.register_buffer(f"running_var_c{width}", torch.ones(width, device=dev))
                module.register_buffer(
                    f"num_batches_tracked_c{width}", torch.tensor(0, dtype=torch.long, device=dev)
                )
        return module

    def set_active(self, channels: int) -> None:
        if channels not in self.widths:
            raise ValueError(
                f"BatchNorm width {channels} not prepared; valid: "
                + ", ".join(map(str, self.widths))
            )
        self.active_channels = int(channels)

    def stats(self, channels: int) -> tuple:
        """(running_mean, running_var, num_batches_tracked) kept for ``channels``."""
        if channels == self.num_features:
            return self.running_mean, self.running_var, self.num_batches_tracked
        return (
            getattr(self, f"running_mean_c{channels}"),
            getattr(self, f"running_var_c{channels}"),
            getattr(self, f"num_batches_tracked_c{channels}"),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.active_channels
        if k == self.num_features:
            return super().forward(x)
        mean, var, count = self.stats(k) if self.track_running_stats else (None, None, None)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            count.add_(1)
            factor = 1.0 / float(count) if self.momentum is None else self.momentum
        use_batch_stats = self.training or mean is None
        return F.batch_norm(
            x,
            mean,
            var,
            None if self.weight is None else self.weight[:k],
            None if self.bias is None else self.bias[:k],
            use_batch_stats,
            factor,
            self.eps,
        )

    def active_own_sizes(self) -> list[tuple[int, int]]:
        """(parameters, storage bits): affine weight/bias plus the width's statistics."""
        k = self.active_channels
        sizes = []
        if self.affine:
            sizes += [(k, FLOAT_BITS * k), (k, FLOAT_BITS * k)]
        if self.track_running_stats:
            sizes += [(0, FLOAT_BITS * k), (0, FLOAT_BITS * k)]
        return sizes

    @torch.no_grad()
    def permute(self, perm: torch.Tensor) -> None:
        """Reorder channels; narrower widths' statistics no longer apply and are reset."""
        perm = perm.to(self.weight.device if self.affine else self.running_mean.device)
        if self.affine:
            self.weight.copy_(self.weight[perm])
            self.bias.copy_(self.bias[perm])
        if self.track_running_stats:
            self.running_mean.copy_(self.running_mean[perm])
            self.running_var.copy_(self.running_var[perm])
            for width in self.widths:
                if width < self.num_features:
                    mean, var, count = self.stats(width)
                    mean.zero_()
                    var.fill_(1.0)
                    count.zero_()
