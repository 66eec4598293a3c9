"""Load checkpoints and configs with one-line errors; build + strictly load a model.

Every entry point that reads a ``.pth`` or a YAML goes through
:func:`load_checkpoint` / :func:`load_config`, so a wrong file is reported the
same way everywhere: one line naming the file and what is wrong with it
(:class:`LoadError`), never torch's or PyYAML's traceback.

ESPnet's own ``build_model_from_file`` loads with ``strict=False``, so a
config and a checkpoint that do not belong together give a half-initialised
model without a word. Extraction must never start from one: every key must
match, or the error names the missing and unexpected ones.
"""

from __future__ import annotations

import argparse
import copy
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from espnet_allinone.errors import AllInOneError
from espnet_allinone.registry import register

if TYPE_CHECKING:  # torch is imported where it is used: recipe helpers load configs only
    import torch

PathLike = str | Path

_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's (zip) format starts like every zip file


class LoadError(AllInOneError, ValueError):
    """A checkpoint or config file that cannot be used; ``str()`` is one line naming it."""

    def __init__(self, path: PathLike, message: str) -> None:
        self.path = Path(path)
        super().__init__(message)


class CheckpointError(LoadError):
    """A file that is not a readable PyTorch state_dict."""


class ConfigError(LoadError):
    """A file that is not a readable YAML config, or lacks a key the reader needs."""


ASR_CONFIG_KEYS = ("token_list", "encoder", "model")
"""Keys of an ESPnet ASR ``config.yaml`` a model cannot be built without."""
ASR_CONFIG_HINT = "give the config.yaml that training wrote in its output dir"


class CheckpointMismatchError(AllInOneError, RuntimeError):
    """A checkpoint whose keys or shapes do not match the model its config builds."""


def _first_line(text: str, limit: int = 160) -> str:
    """The first sentence of an error message's first line, shortened (one line)."""
    line = next((x.strip() for x in text.splitlines() if x.strip()), "")
    line = line.split(". ", 1)[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _check_file(path: Path, error: type[LoadError]) -> None:
    if not path.exists():
        raise error(path, f"{path} does not exist")
    if not path.is_file():
        raise error(path, f"{path} is not a file")


def _torch_load_reason(exc: BaseException) -> str:
    """What torch.load said, in one line (its weights-only message hides the cause mid-text)."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    if isinstance(exc, EOFError) and not text.strip():
        text = "unexpected end of file"
    return f"torch.load: {_first_line(text) or type(exc).__name__}"


def load_checkpoint(path: PathLike) -> dict[str, torch.Tensor]:
    """A model ``state_dict`` saved with ``torch.save`` (weights only, on the CPU).

    Raises :class:`CheckpointError` naming the file when it is missing, not a
    PyTorch file, damaged (e.g. truncated), or holds something else than a
    mapping of parameter names to tensors.
    """
    import torch

    path = Path(path)
    _check_file(path, CheckpointError)
    try:
        with warnings.catch_warnings():  # torch warns before raising; the error says it all
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- any failure to unpickle is "not a checkpoint"
        with path.open("rb") as f:
            is_zip = f.read(4) == _ZIP_MAGIC
        what = "is a damaged PyTorch checkpoint (truncated? " if is_zip else \
            "is not a PyTorch checkpoint ("
        raise CheckpointError(path, f"{path} {what}{_torch_load_reason(e)})") from None
    if isinstance(state, dict) and "module" in state and not isinstance(state["module"], torch.Tensor):
        state = state["module"]  # DeepSpeed checkpoints, as ESPnet accepts them
    if not isinstance(state, dict):
        raise CheckpointError(path, f"{path} holds a {type(state).__name__}, "
                                    "not a model state_dict")
    others = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if others:
        raise CheckpointError(
            path, f"{path} is not a model state_dict (non-tensor entries: "
            + ", ".join(map(str, others[:4])) + (", ..." if len(others) > 4 else "")
            + "); give a model file such as valid.loss.ave.pth or <N>epoch.pth"
        )
    return state


def load_config(path: PathLike, required: Iterable[str] = (), hint: str = "") -> dict[str, Any]:
    """A YAML mapping (an ESPnet ``config.yaml``, a decoding config ...).

    Raises :class:`ConfigError` naming the file when it is missing, not YAML
    (with the line and column), not a mapping, or lacks one of ``required``
    (then ``hint``, if given, is added in brackets).
    """
    path = Path(path)
    config = load_yaml(path)
    if not isinstance(config, dict):
        kind = "empty" if config is None else f"a {type(config).__name__}"
        raise ConfigError(path, f"{path} is not a YAML mapping (it is {kind})")
    for key in required:
        if key not in config:
            more = f" ({hint})" if hint else ""
            raise ConfigError(path, f"{path}: missing key {key!r}{more}")
    return config


def load_yaml(path: PathLike) -> Any:
    """Any YAML (or JSON) document; :class:`ConfigError` naming the file and line if unreadable."""
    path = Path(path)
    _check_file(path, ConfigError)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(path, f"{path} is not a text (YAML) file") from None
    except yaml.YAMLError as e:
        raise ConfigError(path, f"{path} is not valid YAML: {_yaml_reason(e)}") from None


def _yaml_reason(e: yaml.YAMLError) -> str:
    """``line 3, column 7: mapping values are not allowed here`` (1-based, as editors count)."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or _first_line(str(e))
    if mark is None:
        return problem
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


def build_asr_model(config: Mapping[str, Any]) -> torch.nn.Module:
    """``ASRTask.build_model`` on a copy of ``config`` (this package registered first)."""
    from espnet2.tasks.asr import ASRTask

    register()
    args = argparse.Namespace(**copy.deepcopy(dict(config)))
    model = ASRTask.build_model(args)
    model.eval()
    return model


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
    """Build the model ``config_path`` describes and load ``model_path`` strictly.

    Both files are read before the (slow) build, so a bad checkpoint is
    reported at once; a config ESPnet cannot build a model from is a
    :class:`ConfigError` naming the file.
    """
    config = load_config(config_path, required=ASR_CONFIG_KEYS, hint=ASR_CONFIG_HINT)
    state = load_checkpoint(model_path)
    model = build_config_model(config_path, config)
    load_strict(model, state, f"{model_path}")
    return model, config


def check_model_files(config_path: PathLike, model_path: PathLike) -> dict[str, Any]:
    """Read an ESPnet model's config and weights before a loader that gives no clear error.

    For code that then loads with ESPnet's own (non-strict) ``build_model_from_file``
    or ``Speech2Text``, as extracted models are loaded: a bad file is one line
    naming it, raised before any output is written. Returns the config.
    """
    config = load_config(config_path, required=ASR_CONFIG_KEYS, hint=ASR_CONFIG_HINT)
    load_checkpoint(model_path)
    return config


def build_config_model(config_path: PathLike, config: Mapping[str, Any]) -> torch.nn.Module:
    """:func:`build_asr_model`, with a config ESPnet rejects reported against its file."""
    try:
        return build_asr_model(config)
    except AttributeError as e:  # ASRTask.build_model reads args.<key>
        if getattr(e, "name", None) and isinstance(getattr(e, "obj", None), argparse.Namespace):
            raise ConfigError(config_path, f"{config_path}: missing key {e.name!r}") from None
        raise
    except (KeyError, ValueError, TypeError) as e:
        raise ConfigError(
            config_path, f"{config_path} does not describe an ESPnet ASR model "
            f"({type(e).__name__}: {_first_line(str(e))})"
        ) from None


def _listing(title: str, keys: list, limit: int = 5) -> str:
    if not keys:
        return ""
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return f"\n  {title}: " + ", ".join(keys[:limit]) + more
