"""ElasticBatchNorm1d: BatchNorm over the active channels, statistics per width.

Running statistics of a channel depend on which other channels were active
upstream, so each active width keeps its own running mean/variance. The full
width uses the stock buffer names (``running_mean``, ``running_var``,
``num_batches_tracked``) so a model without elastic channels has the stock
state_dict keys; a narrower width k adds ``running_mean_c{k}``,
``running_var_c{k}`` and ``num_batches_tracked_c{k}``. The affine weight and
bias are shared (first k entries). Training at one width never touches
another width's statistics. A channel set that is not a prepared prefix (a
pruned conv module) uses the full width's statistics at its channels.

Statistics banks (switchable BatchNorm, ``add_banks``): besides those shared
statistics, one bank per tag (the encoder's tags name a subsystem's width and
precision, e.g. ``w0p5_int4``), each of its width's channels and kept per
position like the shared ones (``running_mean_w0p5_int4_r1``). ``set_bank``
selects one: in training the batch statistics still normalise (weights train
exactly as without banks) and the shared statistics are updated as before,
and so is the selected bank, no other; in eval the selected bank normalises.
A bank whose width is not the active channel set (a pruned record) is not
used: the shared statistics are the fallback.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from espnet_allinone.elastic.unfolding import POSITION_STATS, position_suffix
from espnet_allinone.precision import FLOAT_BITS

_BANK_TAG = re.compile(r"[a-z][a-z0-9_]*")


class ElasticBatchNorm1d(nn.BatchNorm1d):
    """``nn.BatchNorm1d`` with an active channel prefix and per-width statistics."""

    @classmethod
    def convert(cls, module: nn.BatchNorm1d, widths: Iterable[int] = (),
                repeats: int = 1) -> ElasticBatchNorm1d:
        """Turn a built ``nn.BatchNorm1d`` into this class in place, adding ``widths``
        and, for a block run at ``repeats`` logical positions, statistics per position."""
        if type(module) is not nn.BatchNorm1d:
            raise TypeError(f"expected torch.nn.BatchNorm1d, got {type(module).__name__}")
        if repeats < 1:
            raise ValueError(f"BatchNorm repeats must be >= 1, got {repeats}")
        module.__class__ = cls
        module.active_channels = module.num_features
        module.active_index = tuple(range(module.num_features))
        module._index_tensor = None
        module.widths = tuple(sorted({int(w) for w in widths} | {module.num_features}))
        module.repeats, module.repeat, module.active_repeats = int(repeats), 0, 1
        module.banks, module.bank = {}, None
        for width in module.widths:
            if not 1 <= width <= module.num_features:
                raise ValueError(f"BatchNorm width {width} outside 1..{module.num_features}")
            for repeat in range(module.repeats):
                suffix = module._suffix(width, repeat)
                if suffix and module.track_running_stats:
                    dev = module.running_mean.device
                    module.register_buffer(f"running_mean{suffix}", torch.zeros(width, device=dev))
                    module.register_buffer(f"running_var{suffix}", torch.ones(width, device=dev))
                    module.register_buffer(f"num_batches_tracked{suffix}",
                                           torch.tensor(0, dtype=torch.long, device=dev))
        return module

    def _suffix(self, width: int, repeat: int) -> str:
        """Buffer-name suffix of a statistics bank: the stock names for the full width
        at the first position, ``_c<width>`` and ``_r<position>`` otherwise."""
        return (f"_c{width}" if width < self.num_features else "") + position_suffix(repeat)

    def _bank_suffix(self, tag: str, repeat: int) -> str:
        """Buffer-name suffix of bank ``tag`` at ``repeat``: ``_<tag>[_r<position>]``."""
        return f"_{tag}{position_suffix(repeat)}"

    @torch.no_grad()
    def add_banks(self, banks: Mapping[str, int]) -> None:
        """One statistics bank per tag (value: its channel count, a prepared width) at
        every position, starting from the shared statistics of that width."""
        if not self.track_running_stats:
            raise ValueError("statistics banks need a BatchNorm that tracks running statistics")
        for tag, width in banks.items():
            if not _BANK_TAG.fullmatch(tag) or tag in self.banks:
                raise ValueError(f"statistics bank tag {tag!r} invalid or repeated; valid: "
                                 "new lower-case names of letters, digits and _")
            if width not in self.widths:
                raise ValueError(f"statistics bank {tag} has width {width}, not prepared; "
                                 f"valid: {', '.join(map(str, self.widths))}")
            for repeat in range(self.repeats):
                suffix = self._bank_suffix(tag, repeat)
                self.repeat = repeat
                for name, value in zip(POSITION_STATS, self.stats(width)):
                    self.register_buffer(f"{name}{suffix}", value.clone())
            self.repeat = 0
            self.banks[tag] = int(width)

    def set_bank(self, tag: str | None) -> None:
        """Select the statistics bank ``tag`` (None: the shared statistics)."""
        if tag is not None and tag not in self.banks:
            valid = ", ".join(self.banks) or "none (this BatchNorm keeps no banks)"
            raise ValueError(f"BatchNorm statistics bank {tag!r} unknown; valid: {valid}")
        self.bank = tag

    def bank_stats(self) -> tuple | None:
        """(mean, var, count) of the selected bank at the current position; None when no
        bank is selected or its width is not the active channel prefix (fallback: the
        shared statistics)."""
        tag = self.bank
        if tag is None or self._index_tensor is not None \
                or self.banks[tag] != self.active_channels:
            return None
        suffix = self._bank_suffix(tag, self.repeat)
        return tuple(getattr(self, f"{name}{suffix}") for name in POSITION_STATS)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                              missing_keys, unexpected_keys, error_msgs) -> None:
        """A checkpoint without banks (trained without them) loads: each missing bank
        starts from the shared statistics of its width and position."""
        for tag, width in self.banks.items():
            for repeat in range(self.repeats):
                for name in POSITION_STATS:
                    key = f"{prefix}{name}{self._bank_suffix(tag, repeat)}"
                    shared = f"{prefix}{name}{self._suffix(width, repeat)}"
                    if key not in state_dict and shared in state_dict:
                        state_dict[key] = state_dict[shared]
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)

    def set_repeat(self, repeat: int) -> None:
        """The logical position (0, 1, ...) of the shared block about to run."""
        if not 0 <= repeat < self.active_repeats:
            raise ValueError(f"BatchNorm position {repeat} outside 0..{self.active_repeats - 1}")
        self.repeat = repeat

    def set_active_repeats(self, n: int) -> None:
        """How many logical positions run this block (statistics kept for each)."""
        if not 1 <= n <= self.repeats:
            raise ValueError(f"BatchNorm runs at {n} positions; prepared: 1..{self.repeats}")
        self.active_repeats, self.repeat = int(n), 0

    def set_active(self, channels: int | Sequence[int]) -> None:
        """The first ``channels`` (a prepared width) or an index set of channels."""
        if isinstance(channels, int) and not isinstance(channels, bool):
            if channels not in self.widths:
                raise ValueError(
                    f"BatchNorm width {channels} not prepared; valid: "
                    + ", ".join(map(str, self.widths))
                )
            index = tuple(range(channels))
        else:
            index = tuple(int(c) for c in channels)
            bad = [c for c in index if not 0 <= c < self.num_features]
            if not index or bad or len(set(index)) != len(index):
                raise ValueError(
                    f"BatchNorm channel set {list(index)} invalid; valid: distinct indices "
                    f"in 0..{self.num_features - 1}"
                )
        self.active_index = index
        self.active_channels = len(index)
        self._index_tensor = None if index == tuple(range(len(index))) else torch.tensor(index)

    def stats(self, channels: int) -> tuple:
        """(running_mean, running_var, num_batches_tracked) kept for ``channels`` at the
        current position."""
        suffix = self._suffix(channels, self.repeat)
        return (
            getattr(self, f"running_mean{suffix}"),
            getattr(self, f"running_var{suffix}"),
            getattr(self, f"num_batches_tracked{suffix}"),
        )

    def active_stats(self) -> tuple:
        """(mean, var, count) of the active channels: the selected bank's if it applies
        (``bank_stats``), else the shared ones (``shared_stats``)."""
        bank = self.bank_stats()
        return self.shared_stats() if bank is None else bank

    def shared_stats(self) -> tuple:
        """(mean, var, count) of the active channels shared by every path: the width's
        own statistics for a prepared prefix, else the full width's at the active channels."""
        k = self.active_channels
        if self._index_tensor is None and k in self.widths:
            return self.stats(k)
        mean, var, count = self.stats(self.num_features)
        if self._index_tensor is None:
            return mean[:k], var[:k], count
        index = self._index_tensor.to(mean.device)
        return mean.index_select(0, index), var.index_select(0, index), count

    @torch.no_grad()
    def assign_active_stats(self, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
        """Set the active channels' statistics at the current position (calibration): the
        selected bank if it applies, else the width's own shared statistics for a
        prepared prefix, else the full width's at the channels."""
        k = self.active_channels
        selected = self.bank_stats()
        if selected is not None:
            bank_mean, bank_var, bank_count = selected
            index = None
        elif self._index_tensor is None and k in self.widths:
            bank_mean, bank_var, bank_count = self.stats(k)
            index = None
        else:
            bank_mean, bank_var, bank_count = self.stats(self.num_features)
            index = (torch.arange(k) if self._index_tensor is None
                     else self._index_tensor).to(bank_mean.device)
        for bank, value in ((bank_mean, mean), (bank_var, var)):
            value = value.to(bank)
            if index is None:
                bank.copy_(value)
            else:
                bank.index_copy_(0, index, value)
        bank_count.fill_(count)

    def _affine(self) -> tuple:
        if self.weight is None:
            return None, None
        if self._index_tensor is None:
            k = self.active_channels
            return self.weight[:k], self.bias[:k]
        index = self._index_tensor.to(self.weight.device)
        return self.weight.index_select(0, index), self.bias.index_select(0, index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bank = self.bank_stats() if self.track_running_stats else None
        if bank is not None and not self.training:
            weight, bias = self._affine()
            return F.batch_norm(x, bank[0], bank[1], weight, bias, False, 0.0, self.eps)
        out = self._shared_forward(x)
        if bank is not None:
            self._update_bank(x, *bank)
        return out

    @torch.no_grad()
    def _update_bank(self, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor,
                     count: torch.Tensor) -> None:
        """The running update torch makes, into a bank: momentum (or cumulative average)
        towards the batch mean and unbiased variance."""
        dims = [0, *range(2, x.dim())]
        batch_var, batch_mean = torch.var_mean(x.detach().float(), dim=dims, correction=1)
        count.add_(1)
        factor = 1.0 / float(count) if self.momentum is None else self.momentum
        mean.mul_(1 - factor).add_(batch_mean.to(mean.dtype), alpha=factor)
        var.mul_(1 - factor).add_(batch_var.to(var.dtype), alpha=factor)

    def _shared_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise with (in eval) or update (in training) the shared statistics."""
        if self.active_channels == self.num_features and self._index_tensor is None \
                and self.repeat == 0:
            return super().forward(x)
        mean, var, count = self.shared_stats() if self.track_running_stats else (None,) * 3
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            count.add_(1)
            factor = 1.0 / float(count) if self.momentum is None else self.momentum
        use_batch_stats = self.training or mean is None
        weight, bias = self._affine()
        out = F.batch_norm(x, mean, var, weight, bias, use_batch_stats, factor, self.eps)
        if self.training and mean is not None and self._index_tensor is not None:
            with torch.no_grad():  # index_select copied the statistics: write them back
                index = self._index_tensor.to(mean.device)
                self.running_mean.index_copy_(0, index, mean)
                self.running_var.index_copy_(0, index, var)
        return out

    @torch.no_grad()
    def static_twin(self) -> nn.BatchNorm1d:
        """A plain ``nn.BatchNorm1d`` of the active channels with their statistics (one
        bank per logical position when the block is shared: then this class again)."""
        twin = nn.BatchNorm1d(self.active_channels, eps=self.eps, momentum=self.momentum,
                              affine=self.affine, track_running_stats=self.track_running_stats)
        if self.affine:
            weight, bias = self._affine()
            twin.weight.copy_(weight)
            twin.bias.copy_(bias)
        if self.active_repeats > 1:
            type(self).convert(twin, repeats=self.active_repeats)
            twin.set_active_repeats(self.active_repeats)
        if self.track_running_stats:
            current = self.repeat
            for repeat in range(self.active_repeats):
                self.repeat = repeat
                if self.active_repeats > 1:
                    twin.repeat = repeat
                    banks = twin.stats(twin.num_features)
                else:
                    banks = (twin.running_mean, twin.running_var, twin.num_batches_tracked)
                for mine, theirs in zip(self.active_stats(), banks):
                    theirs.copy_(mine)
            self.repeat = current
            if self.active_repeats > 1:
                twin.repeat = 0
        return twin

    def active_own_sizes(self) -> list[tuple[int, int]]:
        """(parameters, storage bits): affine weight/bias plus the width's statistics."""
        k = self.active_channels
        sizes = []
        if self.affine:
            sizes += [(k, FLOAT_BITS * k), (k, FLOAT_BITS * k)]
        if self.track_running_stats:
            sizes += [(0, FLOAT_BITS * k), (0, FLOAT_BITS * k)] * self.active_repeats
        return sizes

    @torch.no_grad()
    def permute(self, perm: torch.Tensor) -> None:
        """Reorder channels; narrower widths' statistics no longer apply and are reset."""
        perm = perm.to(self.weight.device if self.affine else self.running_mean.device)
        if self.affine:
            self.weight.copy_(self.weight[perm])
            self.bias.copy_(self.bias[perm])
        if self.track_running_stats:
            current = self.repeat
            for repeat in range(self.repeats):
                self.repeat = repeat
                banks = [(width, self.stats(width)) for width in self.widths]
                banks += [(width, [getattr(self, f"{name}{self._bank_suffix(tag, repeat)}")
                                   for name in POSITION_STATS])
                          for tag, width in self.banks.items()]
                for width, (mean, var, count) in banks:
                    if width == self.num_features:
                        mean.copy_(mean[perm])
                        var.copy_(var[perm])
                    else:
                        mean.zero_()
                        var.fill_(1.0)
                        count.zero_()
            self.repeat = current
