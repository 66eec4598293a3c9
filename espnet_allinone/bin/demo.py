"""``python -m espnet_allinone.bin.demo``: one elastic Conformer, many subsystems.

Builds a small ElasticConformerEncoder, switches it through every subsystem
of its search space, runs a forward pass in each (checking the output), and prints the exact
parameters and storage bytes with the compression against the largest float
subsystem. A quick look at what one all-in-one model contains.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

from espnet_allinone.errors import cli_errors
from espnet_allinone.subsystem import FLOAT_BITS


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input_size", type=int, default=40, help="feature dimension (mel bins)")
    p.add_argument("--output_size", type=int, default=144)
    p.add_argument("--attention_heads", type=int, default=4)
    p.add_argument("--linear_units", type=int, default=576)
    p.add_argument("--num_blocks", type=int, default=4)
    p.add_argument("--cnn_module_kernel", type=int, default=15)
    p.add_argument("--depths", default="2,4", help="comma-separated block counts")
    p.add_argument("--widths", default="0.5,1", help="comma-separated width fractions")
    p.add_argument("--precisions", default="int2,int4,int8,fp", help="int2,int4,int8,fp")
    p.add_argument("--elastic_conv", action="store_true", help="width also narrows conv channels")
    p.add_argument("--granularity", default="group", help="quantizer scales: tensor|channel|group")
    p.add_argument("--group_size", type=int, default=8)
    p.add_argument("--subsystems", default="all", help="'all' or a comma-separated list")
    p.add_argument("--frames", type=int, default=200, help="frames of the random test input")
    return p


def _split(text: str) -> list[str]:
    return [t for t in text.split(",") if t]


def main(cmd: Sequence[str] | None = None) -> int:
    """Run the demo; a bad option value is one ``demo: error:`` line and exit code 2."""
    args = get_parser().parse_args(cmd)
    with cli_errors("demo", ValueError) as outcome:  # a space or subsystem the options cannot make
        run(args)
    return outcome.status


def run(args: argparse.Namespace) -> None:
    """Build the encoder the options describe and print one row per subsystem."""
    # deferred: keeps --help free of ESPnet
    from espnet_allinone.encoders.elastic_conformer import ElasticConformerEncoder

    torch.manual_seed(0)
    encoder = ElasticConformerEncoder(
        input_size=args.input_size,
        output_size=args.output_size,
        attention_heads=args.attention_heads,
        linear_units=args.linear_units,
        num_blocks=args.num_blocks,
        cnn_module_kernel=args.cnn_module_kernel,
        rel_pos_type="latest",
        macaron_style=True,
        depths=[int(d) for d in _split(args.depths)],
        widths=_split(args.widths),
        precisions=_split(args.precisions),
        elastic_conv=args.elastic_conv,
        quant_conf={"granularity": args.granularity, "group_size": args.group_size},
    ).eval()
    space = encoder.space
    reference = max((s for s in space if s.bits == FLOAT_BITS), key=lambda s: (s.depth, s.width),
                    default=None)
    ref_bytes = encoder.storage_bytes(reference) if reference else None
    xs = torch.randn(1, args.frames, args.input_size)
    lens = torch.tensor([args.frames])

    print(f"search space: {len(space)} subsystems; depths {list(space.depths)}, widths "
          f"{[f'{float(w):g}' for w in space.widths]}, bits {list(space.bits)}")
    header = f"{'subsystem':<16}{'params':>10}{'bytes':>12}{'compression':>13}"
    print(header)
    print("-" * len(header))
    subs = space.resolve(args.subsystems)
    for sub in sorted(subs, key=encoder.ordered_subsystems().index):  # smallest bytes first
        encoder.set_subsystem(sub)
        with torch.no_grad():
            out, _, _ = encoder(xs, lens)
        if not torch.isfinite(out).all():
            raise RuntimeError(f"subsystem {sub} produced non-finite outputs")
        nbytes = encoder.storage_bytes()
        ratio = f"{ref_bytes / nbytes:.2f}x" if ref_bytes else "-"
        print(f"{sub!s:<16}{encoder.num_params():>10,}{nbytes:>12,}{ratio:>13}")
    if reference:
        print(f"compression is against {reference} (the largest float subsystem)")


if __name__ == "__main__":
    sys.exit(main())
