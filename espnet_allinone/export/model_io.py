"""Build an ESPnet ASR model from a config and load a checkpoint into it, strictly.

ESPnet's own ``build_model_from_file`` loads with ``strict=False``, so a
config and a checkpoint that do not belong together give a half-initialised
model without a word. Extraction must never start from one: every key must
match, or the error names the missing and unexpected ones.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

PathLike = str | Path


class CheckpointMismatchError(RuntimeError):
    """A checkpoint whose keys or shapes do not match the model its config builds."""


def read_config(path: PathLike) -> dict[str, Any]:
    """An ESPnet ``config.yaml`` as a dict (clear error if missing or not a mapping)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    with path.open(encoding="utf-8") as f:
        config = yaml.safe_load(f)
    if not isinstance(config, dict):
        raise TypeError(f"{path} is not an ESPnet config (expected a YAML mapping)")
    return config


def build_asr_model(config: Mapping[str, Any]) -> torch.nn.Module:
    """``ASRTask.build_model`` on a copy of ``config`` (this package registered first)."""
    from espnet2.tasks.asr import ASRTask

    from espnet_allinone.registry import register

    register()
    args = argparse.Namespace(**copy.deepcopy(dict(config)))
    model = ASRTask.build_model(args)
    model.eval()
    return model


def load_state_dict_file(path: PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "module" in state and not isinstance(state["module"], torch.Tensor):
        state = state["module"]  # DeepSpeed checkpoints, as ESPnet accepts them
    if not isinstance(state, dict):
        raise TypeError(f"{path} does not hold a state_dict")
    return state


def load_strict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """``load_state_dict(strict=True)`` with an error that says what does not match."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or shapes:
        raise CheckpointMismatchError(
            f"{what}: the model file does not match the model its config builds "
            f"({len(missing)} missing, {len(unexpected)} unexpected, {len(shapes)} shape "
            "mismatches); check that --asr_train_config and --asr_model_file belong together."
            + _listing("missing", missing)
            + _listing("unexpected", unexpected)
            + _listing("shape mismatch", shapes)
        )
    model.load_state_dict(dict(state), strict=True)


def load_asr_model(config_path: PathLike, model_path: PathLike) -> tuple[torch.nn.Module, dict]:
    """Build the model ``config_path`` describes and load ``model_path`` strictly."""
    config = read_config(config_path)
    model = build_asr_model(config)
    load_strict(model, load_state_dict_file(model_path), f"{model_path}")
    return model, config


def _listing(title: str, keys: list, limit: int = 5) -> str:
    if not keys:
        return ""
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return f"\n  {title}: " + ", ".join(keys[:limit]) + more
