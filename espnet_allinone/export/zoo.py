"""Model-zoo packing of extracted subsystems, and the Hugging Face upload folder.

Each extracted directory is packed by ESPnet's own ``espnet2.bin.pack asr``
into ``<outdir>/<subsystem>.zip``: ``meta.yaml`` plus ``exp/<subsystem>/``
(config, weights, stats, BPE model) and a ``README.md`` model card, laid out
with paths relative to the archive root so that ESPnet's unpacker rewrites
them. ``Speech2Text.from_pretrained("<zip>")`` loads the result; the same
tree, unzipped, is what a Hugging Face model repository of ESPnet holds.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import yaml

from espnet_allinone.encoders.protocol import ExtractableEncoder, registered_encoders
from espnet_allinone.errors import AllInOneError
from espnet_allinone.export.extracted_dir import CONFIG_NAME, INFO_NAME, MODEL_NAME
from espnet_allinone.subsystem import Subsystem


class ZooError(AllInOneError, RuntimeError):
    """Packing or upload refused (missing files, bad results file, no token, offline)."""


def extracted_dirs(extracted: Path, subsystems: str | list[str] = "all") -> list[Path]:
    """The extracted model directories to pack (``all``: every one under ``extracted``)."""
    extracted = Path(extracted)
    if not extracted.is_dir():
        raise ZooError(f"extracted directory not found: {extracted}")
    found = {
        p.name: p for p in sorted(extracted.iterdir()) if (p / INFO_NAME).is_file()
    }
    if not found:
        raise ZooError(
            f"no extracted models under {extracted} (expected <subsystem>/{INFO_NAME}, "
            "written by python -m espnet_allinone.bin.extract)"
        )
    if subsystems == "all" or subsystems == ["all"]:
        return list(found.values())
    names = subsystems.replace(",", " ").split() if isinstance(subsystems, str) else subsystems
    out = []
    for name in names:
        key = str(Subsystem.parse(name))
        if key not in found:
            raise ZooError(
                f"subsystem {name} was not extracted under {extracted}; "
                f"available: {', '.join(found)}"
            )
        out.append(found[key])
    return out


def read_results(path: Path | None) -> dict[str, dict[str, Any]]:
    """WER (etc.) per subsystem from a JSON/YAML file.

    Accepted: ``{"d6-w0.5-int4": {"wer": 7.1, ...}, ...}``, ``{"d6-w0.5-int4": 7.1}``
    (a WER), or a list of rows ``[{"subsystem": ..., "wer": ...}, ...]``.
    """
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise ZooError(f"results file not found: {path}")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))  # JSON is YAML
    rows: dict[str, dict[str, Any]] = {}
    if isinstance(data, dict) and "rows" in data and isinstance(data["rows"], list):
        data = data["rows"]
    if isinstance(data, list):
        for row in data:
            if not isinstance(row, dict) or "subsystem" not in row:
                raise ZooError(f"{path}: each row needs a 'subsystem' key, got {row!r}")
            rows[str(Subsystem.parse(row["subsystem"]))] = row
    elif isinstance(data, dict):
        for key, value in data.items():
            value = value if isinstance(value, dict) else {"wer": value}
            rows[str(Subsystem.parse(key))] = value
    else:
        raise ZooError(
            f"{path}: expected a mapping subsystem -> {{wer: ...}} or a list of rows "
            "with 'subsystem' and 'wer'"
        )
    return rows


def stock_encoders() -> set[str]:
    """Extracted encoders that plain ESPnet knows (no plugin needed): the stock encoder
    each registered elastic family extracts to where it can."""
    return {cls.stock_encoder for cls in registered_encoders(ExtractableEncoder).values()}


def model_card(info: dict[str, Any], result: dict[str, Any] | None, repo_id: str | None) -> str:
    """README.md of a packed subsystem: what it is, its size, WER, how to load it."""
    sub = Subsystem.parse(info["subsystem"])
    sizes = info["bytes"]
    plugin = info["encoder"] not in stock_encoders()
    wer = None if not result else result.get("wer")
    rows = [
        ("subsystem", f"`{sub}`"),
        ("blocks", str(sub.depth)),
        ("width", f"{float(sub.width):g}"),
        ("weights", "float32" if sub.is_float else f"{sub.bits}-bit, bit-packed"),
        ("encoder", f"`{info['encoder']}`"),
        ("model file", f"{sizes['model_file']:,} bytes ({sizes['model_file'] / 2**20:.2f} MiB)"),
        ("exact size", f"{sizes['exact']:,} bytes (from the subsystem)"),
        ("float full model", f"{sizes['full_float']:,} bytes"),
        ("compression", f"{sizes['full_float'] / sizes['model_file']:.2f}x vs the float full model"),
        ("WER", "not measured" if wer is None else f"{float(wer):.2f}%"),
    ]
    for key in ("cer", "test_set", "rtf"):
        if result and result.get(key) is not None:
            rows.append((key.upper() if key != "test_set" else "test set", str(result[key])))
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    tag = repo_id or f"{sub}.zip"
    need = (
        f"This model uses `encoder: {info['encoder']}`; install espnet-allinone "
        "(`pip install espnet-allinone`) so ESPnet knows it."
        if plugin
        else f"This model runs with plain ESPnet (stock `encoder: {info['encoder']}`)."
    )
    return f"""---
tags:
- espnet
- audio
- automatic-speech-recognition
- espnet-allinone
library_name: espnet
---

# ESPnet ASR: all-in-one subsystem `{sub}`

One subsystem ({sub.depth} blocks, width {float(sub.width):g}, {sub.precision} weights)
extracted from an all-in-one model trained once for many depths, widths and
weight precisions (espnet-allinone).

| | |
|---|---|
{table}

{need}

```python
from espnet2.bin.asr_inference import Speech2Text

speech2text = Speech2Text.from_pretrained("{tag}", ctc_weight=1.0)
text, *_ = speech2text(speech)[0]
```

Source checkpoint sha256: `{info['source']['model_sha256']}`.
"""


def pack_extracted(directory: Path, outdir: Path, result: dict[str, Any] | None = None,
                   repo_id: str | None = None) -> Path:
    """``espnet2.bin.pack asr`` on one extracted directory -> ``outdir/<subsystem>.zip``."""
    from espnet2.bin.pack import main as espnet_pack

    directory = Path(directory).absolute()
    info = yaml.safe_load((directory / INFO_NAME).read_text(encoding="utf-8"))
    sub = str(Subsystem.parse(info["subsystem"]))
    outdir = Path(outdir).absolute()
    outdir.mkdir(parents=True, exist_ok=True)
    target = outdir / f"{sub}.zip"
    with tempfile.TemporaryDirectory(prefix=".pack-", dir=outdir) as stage:
        stage = Path(stage)
        rel = Path("exp") / sub
        (stage / rel).mkdir(parents=True)
        options = []
        config = yaml.safe_load((directory / CONFIG_NAME).read_text(encoding="utf-8"))
        for name in sorted(p.name for p in directory.iterdir()):
            if name in (CONFIG_NAME, MODEL_NAME):
                continue
            shutil.copyfile(directory / name, stage / rel / name)
            options.append(str(rel / name))
        config = _repoint(config, directory, rel)
        with (stage / rel / CONFIG_NAME).open("w", encoding="utf-8") as f:
            yaml.safe_dump(config, f, sort_keys=False)
        shutil.copyfile(directory / MODEL_NAME, stage / rel / MODEL_NAME)
        (stage / "README.md").write_text(model_card(info, result, repo_id), encoding="utf-8")
        options.append("README.md")
        partial = stage / f"{sub}.zip"
        argv = ["asr", "--asr_train_config", str(rel / CONFIG_NAME),
                "--asr_model_file", str(rel / MODEL_NAME), "--outpath", str(partial)]
        for opt in options:
            argv += ["--option", opt]
        with contextlib.chdir(stage), contextlib.redirect_stdout(None):
            espnet_pack(argv)
        os.replace(partial, target)
    return target


def _repoint(config: dict[str, Any], directory: Path, rel: Path) -> dict[str, Any]:
    """Paths into the extracted directory -> paths relative to the archive root."""
    def walk(value):
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, str) and value.startswith(str(directory) + os.sep):
            return str(rel / Path(value).name)
        return value

    return walk(config)


def upload_folder_from_zip(packed: Path, folder: Path) -> Path:
    """The exact folder uploaded to the Hub: the archive's tree (``meta.yaml`` at the root)."""
    packed = Path(packed)
    if not zipfile.is_zipfile(packed):
        raise ZooError(f"{packed} is not a packed model zip (python -m espnet_allinone.bin.pack)")
    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    with zipfile.ZipFile(packed) as archive:
        names = archive.namelist()
        if "meta.yaml" not in names:
            raise ZooError(f"{packed} has no meta.yaml: not an ESPnet model-zoo archive")
        for name in names:
            if name.startswith("/") or ".." in Path(name).parts:
                raise ZooError(f"{packed}: unsafe member name {name!r}")
        archive.extractall(folder)
    return folder


def hub_token(token: str | None) -> str | None:
    """The explicit token, else the one huggingface_hub finds (HF_TOKEN, stored login)."""
    if token:
        return token
    from huggingface_hub import get_token

    return get_token()


def upload(folder: Path, repo_id: str, token: str | None, private: bool = False,
           commit_message: str = "Upload espnet-allinone subsystem") -> str:
    """Create (if needed) the model repo and upload ``folder``; clear ZooError on failure."""
    from huggingface_hub import HfApi
    from huggingface_hub import constants as hf_constants

    token = hub_token(token)
    if not token:
        raise ZooError(
            "no Hugging Face token: pass --token, set HF_TOKEN, or log in with "
            "`hf auth login` (huggingface-cli login)"
        )
    if hf_constants.HF_HUB_OFFLINE:
        raise ZooError("Hugging Face Hub offline mode is on (HF_HUB_OFFLINE=1); not uploading")
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                                 commit_message=commit_message)
    except Exception as err:
        raise ZooError(
            f"upload to https://huggingface.co/{repo_id} failed: "
            f"{type(err).__name__}: {_first_line(err)}"
        ) from err
    return str(getattr(info, "commit_url", None) or f"https://huggingface.co/{repo_id}")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else repr(err)
