"""Exact parameter costs of an encoder's prunable parts, read from its size accounting.

Nothing is derived by hand: each cost is a difference of ``encoder.num_params``
over architecture records of one block (a module with two units vs one, one
unit vs removed), so the expected size of the gates is exact when they are
hard, whatever the family.
"""

from __future__ import annotations

from dataclasses import replace

from espnet_allinone.arch import BlockArch, SubnetArch
from espnet_allinone.pruning.gates import BlockCosts


def _params(encoder, block: BlockArch) -> int:
    return encoder.num_params(SubnetArch((block,)))


def _with(empty: BlockArch, kind: str, units: tuple[int, ...], k: int = 0) -> BlockArch:
    if kind == "heads":
        return replace(empty, heads=units)
    if kind == "conv":
        return replace(empty, conv_channels=units)
    sets = list(empty.ffn_units)
    sets[k] = units
    return replace(empty, ffn_units=tuple(sets))


def block_costs(encoder, block: BlockArch, outside: int) -> BlockCosts:
    """(module fixed, per unit) of each module of ``block`` (a full-size record), and
    what stays when every module is removed, less ``outside``."""
    empty = BlockArch(block.physical, (), tuple(() for _ in block.ffn_units),
                      None if block.conv_channels is None else (), block.bits)
    base = _params(encoder, empty)

    def module(kind: str, units: tuple[int, ...], k: int = 0) -> tuple[int, int]:
        one = _params(encoder, _with(empty, kind, units[:1], k))
        per = _params(encoder, _with(empty, kind, units[:2], k)) - one
        return one - per - base, per

    return BlockCosts(
        rest=base - outside,
        attention=module("heads", block.heads),
        ffn=tuple(module("ffn", u, k) for k, u in enumerate(block.ffn_units)),
        conv=None if block.conv_channels is None else module("conv", block.conv_channels),
    )


def encoder_costs(encoder, full: SubnetArch) -> tuple[int, list[BlockCosts]]:
    """(parameters outside the blocks, per-block costs) of a stacked full record.

    One block's record counts the outside parts once, so with n blocks the
    outside is (sum of single-block counts - the full count) / (n - 1).
    """
    blocks = full.blocks
    outside = 0
    if len(blocks) > 1:
        singles = sum(_params(encoder, b) for b in blocks)
        outside = (singles - encoder.num_params(full)) // (len(blocks) - 1)
    return outside, [block_costs(encoder, b, outside) for b in blocks]
