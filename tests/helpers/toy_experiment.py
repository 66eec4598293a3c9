"""A freshly initialised all-in-one experiment (config.yaml + model.pth) for tests
and benchmarks: no data and no training needed to exercise extraction.

The config is ESPnet's own ``asr_train`` argument defaults with the given
model, so it is shaped exactly like the ``config.yaml`` training writes
(``espnet2/tasks/abs_task.py`` dumps ``vars(args)``). Quantizer scales are
initialised by one forward pass per subsystem, as training would.
"""

from __future__ import annotations

import atexit
import copy
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

DEFAULT_ENCODER_CONF: dict[str, Any] = {
    "output_size": 64,
    "attention_heads": 4,
    "linear_units": 128,
    "num_blocks": 4,
    "cnn_module_kernel": 7,
    "input_layer": "conv2d",
    "macaron_style": True,
    "rel_pos_type": "latest",
    "pos_enc_layer_type": "rel_pos",
    "selfattention_layer_type": "rel_selfattn",
    "activation_type": "swish",
    "use_cnn_module": True,
    "depths": [2, 4],
    "widths": [0.5, 1],
    "precisions": ["int2", "int4", "int8", "fp"],
    "elastic_conv": True,
    "quant_conf": {"granularity": "group", "group_size": 16, "symmetric": True},
}


def token_list(n_letters: int = 26) -> list[str]:
    return ["<blank>", "<unk>", *[chr(ord("a") + i) for i in range(n_letters)], "<space>",
            "<sos/eos>"]


def write_toy_experiment(
    outdir: Path,
    *,
    encoder_conf: dict[str, Any] | None = None,
    model: str = "espnet",
    model_conf: dict[str, Any] | None = None,
    decoder: str | None = None,
    n_mels: int = 20,
    global_mvn: bool = True,
    seed: int = 0,
) -> dict[str, Path]:
    """Write ``outdir/config.yaml`` and ``outdir/model.pth``; return their paths."""
    from espnet2.tasks.asr import ASRTask
    from espnet2.utils.yaml_no_alias_safe_dump import yaml_no_alias_safe_dump

    from espnet_allinone.encoders.switching import model_probe_input
    from espnet_allinone.export.model_io import build_asr_model
    from espnet_allinone.registry import register

    register()
    outdir = Path(outdir).absolute()
    outdir.mkdir(parents=True, exist_ok=True)
    args = ASRTask.get_parser().parse_args(["--output_dir", str(outdir)])
    config = vars(args)
    config.update(
        token_list=token_list(),
        token_type="char",
        frontend="default",
        frontend_conf={"n_fft": 256, "hop_length": 160, "n_mels": n_mels, "fs": 16000},
        specaug=None,
        encoder="elastic_conformer",
        encoder_conf=copy.deepcopy(encoder_conf or DEFAULT_ENCODER_CONF),
        model=model,
        model_conf={"ctc_weight": 1.0 if decoder is None else 0.3, **(model_conf or {})},
        decoder=decoder,
        decoder_conf={"num_blocks": 1, "linear_units": 64, "attention_heads": 2}
        if decoder
        else {},
    )
    if global_mvn:
        stats = outdir / "feats_stats.npz"
        rng = np.random.default_rng(seed)
        count = 1000
        mean = rng.normal(size=n_mels)
        np.savez(stats, count=np.array(count), sum=mean * count,
                 sum_square=(mean**2 + rng.uniform(0.5, 2.0, n_mels)) * count)
        config.update(normalize="global_mvn", normalize_conf={"stats_file": str(stats)})
    else:
        config.update(normalize=None, normalize_conf={})
    torch.manual_seed(seed)
    net = build_asr_model(config)
    _perturb_norms(net, seed)
    speech, lengths = model_probe_input(net)
    with torch.no_grad():
        for sub in net.encoder.space.ordered():
            with net.encoder.use_subsystem(sub):
                net.encode(speech, lengths)
    with (outdir / "config.yaml").open("w", encoding="utf-8") as f:
        yaml_no_alias_safe_dump(config, f, indent=4, sort_keys=False)
    torch.save(net.state_dict(), outdir / "model.pth")
    return {"config": outdir / "config.yaml", "model": outdir / "model.pth"}


_SHARED: dict[str, dict[str, Path]] = {}


def shared_toy_experiment(**kwargs: Any) -> dict[str, Path]:
    """``write_toy_experiment`` once per process and argument set (tests share it).

    Written under a temporary directory removed at exit; callers must not
    modify the files.
    """
    key = repr(sorted(kwargs.items()))
    paths = _SHARED.get(key)
    if paths is None or not all(p.exists() for p in paths.values()):
        root = Path(tempfile.mkdtemp(prefix="allinone-toy-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        paths = _SHARED[key] = write_toy_experiment(root / "allinone", **kwargs)
    return paths


@torch.no_grad()
def _perturb_norms(net: torch.nn.Module, seed: int) -> None:
    """Non-trivial norm affine parameters and BatchNorm statistics, as after training."""
    gen = torch.Generator().manual_seed(seed + 1)
    for module in net.modules():
        if isinstance(module, (torch.nn.LayerNorm, torch.nn.BatchNorm1d)) and (
            module.weight is not None
        ):
                module.weight.add_(0.1 * torch.randn(module.weight.shape, generator=gen))
                module.bias.add_(0.1 * torch.randn(module.bias.shape, generator=gen))
        for name, buf in module.named_buffers(recurse=False):
            if name.startswith("running_mean"):
                buf.copy_(0.1 * torch.randn(buf.shape, generator=gen))
            elif name.startswith("running_var"):
                buf.copy_(torch.rand(buf.shape, generator=gen) + 0.5)
