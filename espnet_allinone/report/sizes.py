"""Parameters and bytes on disk of an extracted subsystem directory."""

from __future__ import annotations

from pathlib import Path

from espnet_allinone.subsystem import Subsystem

_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
_PACKED = ("_codes", "_scale", "_zero_point")


def model_files(sub_dir: Path) -> tuple[Path, Path]:
    """``(config.yaml, model .pth)`` of an extracted subsystem; the error names stage 12."""
    config = sub_dir / "config.yaml"
    pths = sorted(sub_dir.glob("*.pth"))
    model = sub_dir / "model.pth" if (sub_dir / "model.pth").is_file() else (
        pths[0] if len(pths) == 1 else None)
    if not config.is_file() or model is None:
        raise FileNotFoundError(
            f"{sub_dir} lacks config.yaml or a single model .pth: made by the extraction "
            "stage (12)"
        )
    return config, model


def count_params(state_dict: dict, bits: int) -> int:
    """Weights a model holds: float tensors count their elements, a packed
    ``<name>_codes`` tensor counts its codes (8 / bits a byte); scales, zero
    points and batch-norm statistics are not parameters."""
    total = 0
    for name, t in state_dict.items():
        if name.endswith(_BUFFERS) or name.endswith(("_scale", "_zero_point")) \
                or name.startswith("normalize."):
            continue
        if name.endswith("_codes"):
            total += t.numel() * 8 // bits
        elif t.is_floating_point():
            total += t.numel()
    return total


def subsystem_size(sub_dir: Path, sub: Subsystem) -> tuple[int, int]:
    """``(parameters, bytes on disk of the model file)``."""
    import torch

    _, model = model_files(sub_dir)
    state = torch.load(model, map_location="cpu", weights_only=False)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    return count_params(state, sub.bits), model.stat().st_size
