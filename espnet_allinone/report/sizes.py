"""Parameters and bytes on disk of an extracted subsystem directory."""

from __future__ import annotations

from pathlib import Path

import yaml

from espnet_allinone.export.extract import INFO_NAME


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


def subsystem_size(sub_dir: Path) -> tuple[int, int]:
    """``(parameters, bytes on disk of the model file)``.

    The parameter count is the exact one extraction computed from the
    subsystem (``extract_info.yaml``); it is not re-derived from packed tensors.
    """
    _, model = model_files(sub_dir)
    info_path = sub_dir / INFO_NAME
    info = yaml.safe_load(info_path.read_text()) if info_path.is_file() else None
    if not isinstance(info, dict) or "params" not in info:
        raise FileNotFoundError(
            f"{info_path} with a 'params' entry is missing: made by the extraction stage (12)"
        )
    return int(info["params"]), model.stat().st_size
