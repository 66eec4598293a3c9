"""Write a training config for a user's checkpoint: its architecture into encoder_conf.

``python -m espnet_allinone.foundation.conf --pretrained PATH --config BASE.yaml
--output TRAIN.yaml`` reads the checkpoint (any of the three formats), copies
its architecture and waveform normalisation into ``encoder_conf`` (so the
written config alone rebuilds the model), sets ``pretrained_path`` to it, and
checks the search space (depths, widths, unfolding) against the checkpoint's
sizes. Keys the loader only guessed (a bare torchaudio state dict: heads,
strides, layer-norm order) keep the base config's value when it has one. On
any problem it prints one line naming the file and writes nothing.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from espnet_allinone.elastic.unfolding import check_seed
from espnet_allinone.errors import AllInOneError
from espnet_allinone.foundation.architecture import SEED_TERMS, search_space
from espnet_allinone.foundation.loader import FoundationError, load_foundation

PROG = "python -m espnet_allinone.foundation.conf"


class ConfError(AllInOneError, ValueError):
    """A base config or checkpoint that cannot make a training config."""


def stamp(base: dict[str, Any], pretrained: str | Path, base_name: str = "config"
          ) -> dict[str, Any]:
    """``base`` with the checkpoint's architecture and path in its ``encoder_conf``."""
    if base.get("encoder") != "elastic_wav2vec2":
        raise ConfError(f"{base_name}: encoder is {base.get('encoder')!r}; this tool writes "
                        "configs for encoder: elastic_wav2vec2")
    ckpt = load_foundation(pretrained)
    out = copy.deepcopy(base)
    conf = out.setdefault("encoder_conf", {}) or {}
    for key, value in ckpt.encoder_conf().items():
        if key in ckpt.guessed and key in conf:
            continue
        conf[key] = value
    conf["pretrained_path"] = str(Path(pretrained).absolute())
    out["encoder_conf"] = conf
    try:
        space = search_space(conf)  # what elastic_wav2vec2 builds from it
        check_seed(space, conf.get("seed_blocks"), conf.get("unfold", "repeat"), **SEED_TERMS)
    except ValueError as err:
        raise ConfError(f"{base_name}: its search space does not fit the checkpoint "
                        f"{pretrained} ({err})") from None
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--pretrained", required=True, help="HF folder, fairseq .pt or "
                        "torchaudio state dict")
    parser.add_argument("--config", required=True, help="base training YAML")
    parser.add_argument("--output", required=True, help="training YAML to write")
    args = parser.parse_args(argv)
    try:
        try:
            with open(args.config, encoding="utf-8") as f:
                base = yaml.safe_load(f) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfError(f"{args.config}: cannot read it ({type(err).__name__})") from None
        out = stamp(base, args.pretrained, args.config)
    except (ConfError, FoundationError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    target = Path(args.output)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        yaml.safe_dump(out, f, sort_keys=False)
    os.replace(tmp, target)
    enc = out["encoder_conf"]
    print(f"{target}: {enc['encoder_num_layers']} layers, {enc['encoder_num_heads']} heads, "
          f"dim {enc['encoder_embed_dim']}, from {enc['pretrained_path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
