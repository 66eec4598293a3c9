"""An extracted subsystem directory: its file names, its model files, its sizes.

Written by extraction (``export.extract``), read by decoding, the report,
packing and selection, so the names and lookups live here once.
"""

from __future__ import annotations

from pathlib import Path

import yaml

CONFIG_NAME = "config.yaml"
MODEL_NAME = "model.pth"
INFO_NAME = "extract_info.yaml"


def model_files(sub_dir: Path) -> tuple[Path, Path]:
    """``(config.yaml, model .pth)`` of an extracted subsystem; the error names stage 12."""
    config = sub_dir / CONFIG_NAME
    pths = sorted(sub_dir.glob("*.pth"))
    model = sub_dir / MODEL_NAME if (sub_dir / MODEL_NAME).is_file() else (
        pths[0] if len(pths) == 1 else None)
    if not config.is_file() or model is None:
        raise FileNotFoundError(
            f"{sub_dir} lacks config.yaml or a single model .pth: made by the extraction "
            "stage (12)"
        )
    return config, model


def read_info(sub_dir: Path) -> dict:
    """``extract_info.yaml``: the exact figures extraction computed from the record."""
    info_path = sub_dir / INFO_NAME
    info = yaml.safe_load(info_path.read_text()) if info_path.is_file() else None
    if not isinstance(info, dict) or "params" not in info:
        raise FileNotFoundError(
            f"{info_path} with a 'params' entry is missing: made by the extraction stage (12)"
        )
    return info


def subsystem_size(sub_dir: Path) -> tuple[int, int]:
    """``(parameters, bytes on disk of the model file)``.

    The parameter count is the exact one extraction computed from the
    subsystem (``extract_info.yaml``); it is not re-derived from packed tensors.
    """
    _, model = model_files(sub_dir)
    return int(read_info(sub_dir)["params"]), model.stat().st_size


def exact_bytes(sub_dir: Path) -> int:
    """The exact bytes extraction computed from the architecture record (the size
    order of subsystems); the file's size when an older extraction did not record it."""
    info = read_info(sub_dir)
    exact = (info.get("bytes") or {}).get("exact")
    return int(exact) if exact else model_files(sub_dir)[1].stat().st_size
