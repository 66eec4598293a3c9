"""Compact Conformer encoder for extracted subsystems (``encoder: packed_conformer``).

An extracted subsystem is usually smaller than ESPnet's own ``conformer``
can express: per-block numbers of attention heads (of the original head
size), FFN units and conv-module channels, blocks shared by several logical
positions, and low-bit weights. This encoder is a stock
:class:`ConformerEncoder` (built by ESPnet itself) whose blocks are narrowed
in place to the shapes of its architecture record: ``block_archs`` (one entry
per stored block: ``heads``, ``ffn_units`` (one per feed-forward module),
``conv_channels``, ``bits``), ``block_schedule`` (the stored block each
logical block runs; default each once, in order; with ``position_stats`` a
shared block's conv BatchNorm keeps statistics per position),
``front_bits`` and ``front_channels`` (a front narrowed to its first channels,
``elastic_front``; default all). Its
``state_dict`` stores the low-bit weights bit-packed (uint8 codes, fp16
scales, integer zero points, the grid when not the integer one, see
:mod:`espnet_allinone.quant.packed_format`) and loading dequantizes them to
exactly the fake-quantized weights the all-in-one model used, so the forward
pass is the stock Conformer one. ``quant_symmetric`` and ``quant_grid``
(None: as the file says) are what the config promises of the file.

Directories extracted before architecture records existed spell a uniform
architecture as ``attention_heads_kept``, ``conv_channels``, ``weight_bits``,
``quant_symmetric`` and ``quantized_modules``; those keys still load: the
constructor turns them into ``block_archs`` and ``front_bits`` first, so the
encoder is built from records alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from espnet2.asr.encoder.conformer_encoder import ConformerEncoder
from torch import nn

from espnet_allinone.elastic.family import is_removed, narrow_block
from espnet_allinone.elastic.front import narrow_front
from espnet_allinone.elastic.norm import ElasticBatchNorm1d
from espnet_allinone.encoders.conformer_family import (
    CONFORMER,
    ScheduledMultiSequential,
)
from espnet_allinone.encoders.options import (
    RejectUnknownOptions,
    publish_signature,
    stock_defaults,
)
from espnet_allinone.precision import FLOAT_BITS, PrecisionError, parse_precision
from espnet_allinone.quant import packed_format


class PackedConformerEncoder(RejectUnknownOptions, ConformerEncoder):
    """A Conformer of per-block shapes whose low-bit weights are stored bit-packed."""

    family = CONFORMER

    def __init__(
        self,
        input_size: int,
        *,
        block_archs: list[dict] | None = None,
        block_schedule: list[int] | None = None,
        position_stats: bool = False,
        front_bits: int = FLOAT_BITS,
        front_channels: int | None = None,
        attention_heads_kept: int | None = None,
        conv_channels: int | None = None,
        weight_bits: int = FLOAT_BITS,
        quant_symmetric: bool | None = None,
        quantized_modules: list[str] | None = None,
        quant_grid: str | None = None,
        **stock_options: Any,
    ):
        conf = {**stock_defaults(ConformerEncoder), **stock_options}
        n_ffn = 2 if conf["macaron_style"] else 1
        if block_archs is None:  # the uniform spelling of earlier extractions
            block_archs, front_bits = _records_from_legacy(
                conf, n_ffn, attention_heads_kept, conv_channels, weight_bits,
                quantized_modules, front_bits)
        elif any(v is not None for v in (attention_heads_kept, conv_channels, quantized_modules)):
            raise ValueError("give block_archs or the uniform keys attention_heads_kept/"
                             "conv_channels/quantized_modules, not both")
        shapes = [_block_shape(i, b, conf, n_ffn) for i, b in enumerate(block_archs)]
        if int(conf["num_blocks"]) != len(shapes):
            raise ValueError(f"num_blocks {conf['num_blocks']} but {len(shapes)} block_archs")
        super().__init__(input_size=input_size, **stock_options)
        if front_channels is not None:
            narrow_front(self.embed, int(front_channels))
        for block, shape in zip(self.encoders, shapes):
            narrow_block(block, self.family, shape["heads"], shape["ffn_units"],
                         shape.get("conv_channels"))
        if block_schedule is not None:
            if position_stats:
                _per_position_norms(self, block_schedule)
            ScheduledMultiSequential.convert(self.encoders)
            self.encoders.set_schedule(block_schedule)
        elif position_stats:
            raise ValueError("position_stats needs a block_schedule (shared blocks)")
        self.quant_symmetric = quant_symmetric
        self.quant_grid = packed_format.check_grid(quant_grid, quant_symmetric)
        self.weight_bits = self._quantized_weights(shapes, front_bits)
        if quantized_modules is not None:
            self.weight_bits = _in_listed_order(self, quantized_modules, len(shapes))
        packed_format.store_packed(self)

    def _quantized_weights(self, shapes: list[dict], front_bits: int) -> dict[str, int]:
        """Parameter name -> bits of every weight stored bit-packed."""
        out: dict[str, int] = {}
        spec = self.family
        for i, (block, shape) in enumerate(zip(self.encoders._modules.values(), shapes)):
            if shape["bits"] != FLOAT_BITS:
                for path in spec.weight_layer_paths(block):
                    out[f"{spec.blocks}.{i}.{path}.weight"] = shape["bits"]
        if front_bits != FLOAT_BITS:
            for name in spec.front_weight_layers(self):
                out[f"{name}.weight"] = parse_precision(front_bits)
        return out

    @contextlib.contextmanager
    def float_state_dict(self) -> Iterator[None]:
        """``state_dict`` shows the dequantized float weights (tracing, ONNX export)."""
        previous, self.state_dict_packed = self.state_dict_packed, False
        try:
            yield
        finally:
            self.state_dict_packed = previous


def _per_position_norms(encoder: PackedConformerEncoder, schedule: list[int]) -> None:
    """A shared block's conv BatchNorm with one statistics bank per position it runs at."""
    blocks = list(encoder.encoders._modules.values())
    bad = [i for i in schedule if not 0 <= i < len(blocks)]
    if bad:
        raise ValueError(f"block_schedule names block {bad[0]}; stored blocks: "
                         f"0..{len(blocks) - 1}")
    for i, block in enumerate(blocks):
        conv = encoder.family.conv_of(block)
        count = schedule.count(i)
        if conv is not None and not is_removed(conv) and count > 1:
            norm = conv.get_submodule(encoder.family.conv.norm)
            if type(norm) is nn.BatchNorm1d:
                ElasticBatchNorm1d.convert(norm, repeats=count)


def _records_from_legacy(conf: dict, n_ffn: int, heads: int | None, channels: int | None,
                         weight_bits: int | str, quantized_modules: list[str] | None,
                         front_bits: int) -> tuple[list[dict], int]:
    """``block_archs`` and ``front_bits`` of the uniform keys of earlier extractions.

    Their writer listed in ``quantized_modules`` every weight layer of the blocks
    (``encoders.*.``) when low-bit, which is what a block's ``bits`` quantizes;
    entries outside the blocks become ``front_bits``. ``_in_listed_order`` checks
    that the records quantize exactly the listed layers.
    """
    try:
        bits = parse_precision(weight_bits)
    except PrecisionError as e:
        raise ValueError(f"weight_bits: {e}") from None
    if quantized_modules is not None:
        if bits == FLOAT_BITS and quantized_modules:
            raise ValueError("quantized_modules given but weight_bits is float (32)")
        in_blocks = [m.startswith(f"{CONFORMER.blocks}.") for m in quantized_modules]
        front_bits = bits if not all(in_blocks) else FLOAT_BITS
        bits = bits if any(in_blocks) else FLOAT_BITS
    block = _legacy_block(conf, n_ffn, heads, channels, bits)
    return [block] * int(conf["num_blocks"]), front_bits


def _in_listed_order(encoder: PackedConformerEncoder, patterns: list[str],
                     n_blocks: int) -> dict[str, int]:
    """``encoder.weight_bits`` in the order ``quantized_modules`` lists the layers (the
    order of the packed entries in an earlier file's state_dict), once every listed
    layer is known to be one the records quantize, and no other."""
    modules = dict(encoder.named_modules())
    listed: list[str] = []
    for pattern in patterns:
        expanded = ([pattern.replace("*", str(i), 1) for i in range(n_blocks)]
                    if pattern.startswith(f"{encoder.family.blocks}.*.") else [pattern])
        for name in expanded:
            if name not in modules or not hasattr(modules[name], "weight"):
                raise ValueError(f"quantized_modules entry {pattern!r}: no module "
                                 f"{name} with a weight in this encoder")
            listed.append(f"{name}.weight")
    differ = sorted(set(listed) ^ set(encoder.weight_bits))
    if differ:
        raise ValueError(f"quantized_modules is not every weight layer of the blocks and "
                         f"the front (e.g. {differ[0]}): block_archs/front_bits cannot "
                         "express it; extract the model again")
    return {name: encoder.weight_bits[name] for name in listed}


def _legacy_block(conf: dict, n_ffn: int, heads: int | None, channels: int | None,
                  bits: int) -> dict:
    if heads is not None and not 1 <= heads <= conf["attention_heads"]:
        raise ValueError(f"attention_heads_kept {heads} must be in 1..{conf['attention_heads']}")
    if channels is not None and not 1 <= channels <= conf["output_size"]:
        raise ValueError(f"conv_channels {channels} must be in 1..{conf['output_size']}")
    return {
        "heads": conf["attention_heads"] if heads is None else heads,
        "ffn_units": [conf["linear_units"]] * n_ffn,
        "conv_channels": conf["output_size"] if channels is None else channels,
        "bits": bits,
    }


def _block_shape(i: int, arch: dict, conf: dict, n_ffn: int) -> dict:
    """Validate one ``block_archs`` entry against the model's dimensions."""
    where = f"block_archs[{i}]"
    valid = {"heads", "ffn_units", "conv_channels", "bits"}
    unknown = set(arch) - valid
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; valid: {sorted(valid)}")
    heads = int(arch.get("heads", conf["attention_heads"]))
    if not 0 <= heads <= conf["attention_heads"]:
        raise ValueError(f"{where}: heads {heads} must be in 0..{conf['attention_heads']} "
                         "(0: attention pruned away)")
    units = [int(u) for u in arch.get("ffn_units", [conf["linear_units"]] * n_ffn)]
    if len(units) != n_ffn or min(units) < 0:
        raise ValueError(f"{where}: ffn_units {units} must list {n_ffn} sizes >= 0 "
                         "(0: that feed-forward module pruned away)")
    channels = int(arch.get("conv_channels", conf["output_size"]))
    if conf["use_cnn_module"] and not 0 <= channels <= conf["output_size"]:
        raise ValueError(f"{where}: conv_channels {channels} must be in 0..{conf['output_size']}")
    try:
        bits = parse_precision(arch.get("bits", FLOAT_BITS))
    except PrecisionError as e:
        raise ValueError(f"{where}: {e}") from None
    return {"heads": heads, "ffn_units": units,
            "conv_channels": channels if conf["use_cnn_module"] else None, "bits": bits}


publish_signature(PackedConformerEncoder, ConformerEncoder)
