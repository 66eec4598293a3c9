"""Switchable BatchNorm statistics: one bank per (width, precision) of the search space.

``stats_banks: true`` in an elastic encoder's ``encoder_conf`` (slimmable
networks' switchable BN, AdaBits, any-precision nets). Without it every
training path updates the conv BatchNorm's one set of running statistics
(per conv width and unfolded position), so validation scores every
subsystem with a mixture and extraction has to calibrate. With it:

* every BatchNorm of the blocks keeps, besides those *shared* statistics, one
  bank per width x precision of the space, named like the subsystem string
  (tag ``w0p5_int4``: buffers ``running_mean_w0p5_int4`` etc., ``_r<k>`` per
  unfolded position as before). Depth has no bank of its own where every
  depth's block schedule is a prefix of the deepest one's (stacked, and
  unfolding ``repeat``): a block then sees the same input at every depth that
  runs it. Where it is not (unfolding ``blockwise``: a seed block's positions
  move with the depth) the depth is in the tag too (``d4_w0p5_int4``);
* applying a record (``SubsystemSwitching.apply_arch``) selects the bank of
  the grid subsystem the record *is* (equal blocks, front and output bits);
  training still normalises with batch statistics (weights train exactly as
  without banks) and updates the selected bank and the shared statistics,
  no other bank; eval normalises with the selected bank, so validation
  scores each subsystem with its own statistics and extraction writes that
  bank under the stock names (calibration, when asked for, still overrides);
* fallback: a record that is no grid subsystem (a mixed record of
  ``search/``, a pruned architecture, a pruned training path) uses the shared
  statistics, which every path keeps updating exactly as without banks (the
  mixture); extracting such a record keeps calibrating.

A checkpoint written without banks loads into an encoder with banks (each
bank starts from the shared statistics); with the option off nothing of this
exists and state_dicts are as before.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from torch import nn

from espnet_allinone.arch import SubnetArch
from espnet_allinone.elastic.norm import ElasticBatchNorm1d
from espnet_allinone.elastic.unfolding import unfold_schedule
from espnet_allinone.errors import AllInOneError
from espnet_allinone.subsystem import SearchSpace, Subsystem


class StatsBankError(AllInOneError, ValueError):
    """A ``stats_banks`` setting that is not a boolean."""


def check_option(value: Any) -> bool:
    """``stats_banks`` as given in YAML: true or false, nothing else."""
    if not isinstance(value, bool):
        raise StatsBankError(f"stats_banks must be true or false, got {value!r}")
    return value


def depth_free(space: SearchSpace, seed_blocks: int | None, unfold: str) -> bool:
    """Every depth's block schedule is a prefix of the deepest one's: a block (at a
    position) sees the same input at every depth that runs it."""
    deepest = unfold_schedule(space.depths[-1], seed_blocks, unfold)
    return all(unfold_schedule(d, seed_blocks, unfold) == deepest[:d] for d in space.depths)


def bank_tag(sub: Subsystem, with_depth: bool) -> str:
    """The bank of ``sub`` named like its string: ``w0p5_int4`` (``d4_w0p5_int4``)."""
    parts = str(sub).replace(".", "p").split("-")
    return "_".join(parts if with_depth else parts[1:])


def conv_norms(encoder: nn.Module) -> list[ElasticBatchNorm1d]:
    """The elastic BatchNorms of the encoder's blocks."""
    return [m for block in encoder.blocks for m in block.modules()
            if isinstance(m, ElasticBatchNorm1d)]


def add_banks(encoder: nn.Module) -> dict[Subsystem, str]:
    """Give every block BatchNorm one bank per grid subsystem's tag; returns the tag of
    each unpruned member of the space."""
    space = encoder.space
    with_depth = not depth_free(space, encoder.seed_blocks, encoder.unfold)
    tags = {sub: bank_tag(sub, with_depth) for sub in space.members() if sub.prune is None}
    widths = {tag: space.conv_channels(sub) for sub, tag in tags.items()}
    norms = conv_norms(encoder)
    if not norms:
        raise StatsBankError(f"stats_banks: true, but this {encoder.family.name} encoder has "
                             "no BatchNorm in its blocks (Conformer: use_cnn_module: true)")
    for norm in norms:
        norm.add_banks(widths)
    return tags


def _encoder_part(arch: SubnetArch) -> tuple:
    """What decides a block BatchNorm's input: the blocks, the front's and the output
    layers' bits (intermediate CTC conditioning)."""
    return arch.blocks, arch.front_bits, arch.output_bits


def bank_of(encoder: nn.Module, tags: dict[Subsystem, str], arch: SubnetArch) -> str | None:
    """The tag of the grid subsystem ``arch`` is (None: no grid subsystem, the shared
    statistics)."""
    for sub, cached in encoder._archs.items():  # a resolved subsystem: the same object
        if cached is arch:
            return tags.get(sub)
    part = _encoder_part(arch)
    for sub, tag in tags.items():
        if sub.depth == arch.depth and _encoder_part(encoder.resolve(sub)) == part:
            return tag
    return None


def select(norms: Sequence[ElasticBatchNorm1d], tag: str | None) -> None:
    for norm in norms:
        norm.set_bank(tag)


@contextlib.contextmanager
def shared_statistics(norms: Sequence[ElasticBatchNorm1d]) -> Iterator[None]:
    """Within the block the BatchNorms use (and update) their shared statistics only
    (a pruned training path); the selected banks come back after."""
    selected = [norm.bank for norm in norms]
    select(norms, None)
    try:
        yield
    finally:
        for norm, tag in zip(norms, selected):
            norm.set_bank(tag)
