"""Loading a checkpoint never runs code from it (pickles that call eval, os.system...).

Crafted checkpoints, in the zip and in the legacy format (payload in the main
pickle or in a header pickle), call a global that would write a marker file;
loading refuses each with a one-line error naming the file and the global, and
the marker never appears. Real fairseq checkpoints (omegaconf ``cfg`` or
``argparse.Namespace`` ``args``, pretrained and fine-tuned) still load, with
the same weights and outputs.
"""

from __future__ import annotations

import argparse
import copy
import io
import os
import pickle
import struct
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import pytest
import torch
from helpers.foundation_checkpoints import (
    fairseq_dictionary_class,
    reference_model,
    write_fairseq,
)
from torchaudio.models import wav2vec2_model

from espnet_allinone.foundation import conf as conf_cli
from espnet_allinone.foundation.loader import FoundationError, load_foundation
from espnet_allinone.foundation.pickle_stubs import (
    Stub,
    UnsafePickleError,
    load_pickled,
)

REPO = Path(__file__).resolve().parents[1]
WAVE = torch.randn(2, 1600, generator=torch.Generator().manual_seed(3))


# --- crafting pickles by hand (protocol 2, the opcodes torch.save writes) ----------------------
def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _str(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _call(func: bytes, *args: bytes) -> bytes:
    """``func(*args)`` (MARK args TUPLE REDUCE)."""
    return func + b"(" + b"".join(args) + b"tR"


def _checkpoint_pickle(payload: bytes) -> bytes:
    """``{"model": <payload>, "cfg": {}}``: a fairseq-looking checkpoint."""
    return b"\x80\x02}" + _str("model") + payload + b"s" + _str("cfg") + b"}s."


def _payloads(marker: Path) -> dict[str, tuple[str, bytes]]:
    """name -> (the refused global, a pickled call that would create ``marker``)."""
    m = str(marker)
    write = f"open({m!r}, 'w').write('pwned')"
    popen_args = b"](" + _str("touch") + _str(m) + b"e\x85"  # (["touch", m],)
    popen = _global("subprocess", "Popen") + popen_args + b"R"
    path = _call(_global("pathlib", "PosixPath"), _str(m))
    write_text = _call(_call(_global("builtins", "getattr"), path, _str("write_text")),
                       _str("pwned"))
    return {
        "eval": ("builtins.eval", _call(_global("builtins", "eval"), _str(write))),
        "exec": ("builtins.exec", _call(_global("__builtin__", "exec"), _str(write))),
        "os.system": ("os.system", _call(_global("os", "system"), _str(f"touch {m}"))),
        "subprocess.Popen": ("subprocess.Popen", popen),
        "torch.hub.load": ("torch.hub.load", _call(_global("torch.hub", "load"),
                                                   _str("pytorch/vision"), _str("resnet18"))),
        "getattr-write_text": ("builtins.getattr", write_text),
        "fairseq-reduce": (f"{os.system.__module__}.system", _fairseq_reduce(m)),
    }


def _fairseq_reduce(marker: str) -> bytes:
    """A fairseq-named class whose ``__reduce__`` runs a shell command, as pickle writes it."""
    cls = type("Dictionary", (), {"__module__": "fairseq.data.dictionary",
                                  "__reduce__": lambda self: (os.system, (f"touch {marker}",))})
    return pickle.dumps(cls(), protocol=2)[2:-1]  # without PROTO and STOP, to embed


def _zip_with(data_pkl: bytes, path: Path) -> Path:
    """A zip-format ``.pt`` (torch.save's) whose ``archive/data.pkl`` is ``data_pkl``."""
    base = io.BytesIO()
    torch.save({"x": 1}, base)
    with zipfile.ZipFile(base) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, data_pkl if info.filename.endswith("/data.pkl")
                          else zin.read(info))
    return path


def _legacy_with(main: bytes, path: Path, header: bytes | None = None) -> Path:
    """A legacy-format ``.pt``: magic, protocol and sys-info pickles, ``main``, storage keys;
    ``header`` replaces the magic-number pickle."""
    sys_info = {"protocol_version": 1001, "little_endian": True,
                "type_sizes": {"short": 2, "int": 4, "long": 4}}
    magic = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
    parts = [header or magic, pickle.dumps(1001, protocol=2), pickle.dumps(sys_info, protocol=2),
             main, pickle.dumps([], protocol=2)]
    path.write_bytes(b"".join(parts))
    return path


FORMATS = ("zip", "legacy", "legacy-header")
CASES = [(name, fmt) for name in _payloads(Path("m")) for fmt in FORMATS]


def _crafted(tmp_path: Path, name: str, fmt: str) -> tuple[Path, str, Path]:
    marker = tmp_path / "marker"
    refused, payload = _payloads(marker)[name]
    data = _checkpoint_pickle(payload)
    path = tmp_path / f"crafted-{fmt}.pt"
    if fmt == "zip":
        _zip_with(data, path)
    elif fmt == "legacy":
        _legacy_with(data, path)
    else:
        _legacy_with(pickle.dumps({}, protocol=2), path, header=data)
    return path, refused, marker


def _assert_refused(message: str, path: Path, refused: str) -> None:
    assert "\n" not in message.strip()
    assert str(path) in message and f"refused to load {refused}:" in message, message


# --- crafted checkpoints are refused ---------------------------------------------------------
def test_the_crafted_payloads_are_live(tmp_path):
    """Unrestricted pickle would run them: the refusals below are not vacuous."""
    for name in ("eval", "getattr-write_text", "fairseq-reduce"):
        marker = tmp_path / "marker"
        pickle.loads(_checkpoint_pickle(_payloads(marker)[name][1]))
        assert marker.exists(), name
        marker.unlink()


def test_a_well_formed_crafted_container_loads_when_benign(tmp_path):
    benign = _checkpoint_pickle(_str("weights"))
    for path in (_zip_with(benign, tmp_path / "ok.pt"),
                 _legacy_with(benign, tmp_path / "ok-legacy.pt")):
        assert load_pickled(path) == {"model": "weights", "cfg": {}}


@pytest.mark.parametrize(("name", "fmt"), CASES, ids=[f"{n}-{f}" for n, f in CASES])
def test_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path, name, fmt):
    path, refused, marker = _crafted(tmp_path, name, fmt)
    with pytest.raises(FoundationError) as info:
        load_foundation(path)
    _assert_refused(str(info.value), path, refused)
    with pytest.raises(UnsafePickleError, match=f"refused to load {refused}"):
        load_pickled(path)
    assert not marker.exists()


class _Eval:
    """Pickles as ``eval(code)``."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):
        return (eval, (self.code,))


def test_protocol_4_stack_global_is_refused_by_name(tmp_path):
    marker = tmp_path / "marker"
    data = pickle.dumps({"model": _Eval(f"open({str(marker)!r}, 'w')"), "cfg": {}}, protocol=4)
    path = _zip_with(data, tmp_path / "p4.pt")
    with pytest.raises(FoundationError) as info:
        load_foundation(path)
    _assert_refused(str(info.value), path, "builtins.eval")
    assert not marker.exists()


def _base_config(tmp_path: Path) -> Path:
    base = tmp_path / "base.yaml"
    base.write_text("encoder: elastic_wav2vec2\nencoder_conf: {}\n")
    return base


@pytest.mark.parametrize(("name", "fmt"), CASES, ids=[f"{n}-{f}" for n, f in CASES])
def test_conf_cli_refuses_crafted_checkpoint(tmp_path, capsys, name, fmt):
    path, refused, marker = _crafted(tmp_path, name, fmt)
    out = tmp_path / "train.yaml"
    code = conf_cli.main(["--pretrained", str(path), "--config", str(_base_config(tmp_path)),
                          "--output", str(out)])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err
    _assert_refused(err, path, refused)
    assert not out.exists() and not marker.exists()


@pytest.mark.parametrize(("name", "fmt"), [("eval", "zip"), ("os.system", "legacy-header")])
def test_conf_cli_process_refuses_crafted_checkpoint(tmp_path, name, fmt):
    path, refused, marker = _crafted(tmp_path, name, fmt)
    out = tmp_path / "train.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "espnet_allinone.foundation.conf", "--pretrained", str(path),
         "--config", str(_base_config(tmp_path)), "--output", str(out)],
        check=False, capture_output=True, text=True, cwd=REPO, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    _assert_refused(proc.stderr.strip().splitlines()[-1], path, refused)
    assert not out.exists() and not marker.exists()


def test_a_fairseq_stub_called_with_a_payload_stays_inert(tmp_path):
    """``fairseq.x.Y(<code>)`` and a BUILD state naming dunders only store data."""
    marker = tmp_path / "marker"
    code = _str(f"open({str(marker)!r}, 'w')")
    obj = (_call(_global("fairseq.tasks", "run"), code)
           + b"}(" + _str("__reduce__") + code + _str("__setstate__") + code + b"ub")
    path = _zip_with(b"\x80\x02" + obj + b".", tmp_path / "stub.pt")
    loaded = load_pickled(path)
    assert isinstance(loaded, Stub) and loaded._stub_args == (f"open({str(marker)!r}, 'w')",)
    assert repr(loaded) == "<stub fairseq.tasks.run>" and not marker.exists()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_archive_is_refused_not_run(tmp_path):
    """torch.load(weights_only=False) hands a TorchScript zip to torch.jit.load."""
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(FoundationError, match=f"^{path}: refused to load __torch__") as info:
        load_foundation(path)
    assert "\n" not in str(info.value)


# --- bad input: one line naming the file, nothing written ----------------------------------------
def _bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = tmp_path / "good.pt"
    torch.save({"model": {"w": torch.zeros(3)}, "cfg": {}}, good)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.zeros(100)}, legacy, _use_new_zipfile_serialization=False)
    truncated_legacy = tmp_path / "truncated-legacy.pt"
    truncated_legacy.write_bytes(legacy.read_bytes()[:300])
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    other_zip = tmp_path / "other.pt"
    with zipfile.ZipFile(other_zip, "w") as z:
        z.writestr("readme.txt", "not a checkpoint")
    plain = tmp_path / "plain.pt"
    torch.save({"lr": 0.1, "epochs": 3}, plain)
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps({"lr": 0.1, "epochs": 3}, protocol=2))
    return {"truncated": (truncated, "cannot unpickle it"),
            "truncated-legacy": (truncated_legacy, "cannot unpickle it"),
            "empty": (empty, "cannot unpickle it"),
            "zip-of-something-else": (other_zip, "cannot unpickle it"),
            "plain-dict-no-model": (plain, "no key ending in"),
            "raw-pickle-no-model": (raw, "cannot unpickle it")}


BAD = ("truncated", "truncated-legacy", "empty", "zip-of-something-else", "plain-dict-no-model",
       "raw-pickle-no-model")


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_naming_the_file(tmp_path, capsys, case):
    path, reason = _bad_inputs(tmp_path)[case]
    with pytest.raises(FoundationError) as info:
        load_foundation(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and reason in message and "\n" not in message
    out = tmp_path / "train.yaml"
    code = conf_cli.main(["--pretrained", str(path), "--config", str(_base_config(tmp_path)),
                          "--output", str(out)])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err and str(path) in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_a_fairseq_checkpoint_with_a_crafted_config_is_one_line(tmp_path):
    path = tmp_path / "odd.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "cfg": {"model": {"encoder_layers": "many"}}},
               path)
    with pytest.raises(FoundationError, match=f"^{path}: unreadable fairseq checkpoint "
                                              r"\(ValueError: "):
        load_foundation(path)
    torch.save({"model": "not weights", "cfg": {}}, path)
    with pytest.raises(FoundationError, match="model is not a state dict"):
        load_foundation(path)


# --- real fairseq checkpoints still load ---------------------------------------------------------
def _fake_fairseq() -> list[str]:
    names = ("fairseq", "fairseq.data", "fairseq.data.dictionary")
    for name in names:
        sys.modules[name] = types.ModuleType(name)
    sys.modules[names[-1]].Dictionary = fairseq_dictionary_class()
    return list(names)


def _namespace(cfg: dict) -> argparse.Namespace:
    """fairseq's pre-hydra ``args``: one flat namespace (w2v_args nested likewise)."""
    flat = {**cfg.get("task", {}), **cfg["model"]}
    if isinstance(flat.get("w2v_args"), dict):
        flat["w2v_args"] = _namespace(flat["w2v_args"])
    return argparse.Namespace(**flat)


def _resave(src: Path, dst: Path, style: str, legacy: bool) -> Path:
    """The writer's checkpoint with ``cfg`` as omegaconf, or as ``args`` (Namespace), saved
    in either torch format, plus the extras real ones hold (numpy scalars, history)."""
    import numpy as np
    from omegaconf import OmegaConf

    names = _fake_fairseq()
    try:
        ckpt = torch.load(src, weights_only=False)  # the test's own file: trusted
        cfg = ckpt.pop("cfg")
        if style == "omegaconf":
            ckpt["cfg"] = OmegaConf.create(cfg, flags={"allow_objects": True})
        else:
            ckpt["args"] = _namespace(copy.deepcopy(cfg))
        ckpt["extra_state"] = {"val_loss": np.float64(1.25), "epoch": np.int64(3),
                               "lengths": np.arange(4), "train_iterator": {"epoch": 3}}
        torch.save(ckpt, dst, _use_new_zipfile_serialization=not legacy)
    finally:
        for name in names:
            del sys.modules[name]
    return dst


REAL = [(kind, ft, style, legacy) for kind in ("wav2vec2", "hubert") for ft in (False, True)
        for style in ("omegaconf", "namespace") for legacy in (False, True)]


@pytest.mark.parametrize(("kind", "fine_tuned", "style", "legacy"), REAL,
                         ids=[f"{k}-{'ft' if f else 'pt'}-{s}-{'legacy' if g else 'zip'}"
                              for k, f, s, g in REAL])
def test_real_fairseq_checkpoints_still_load(tmp_path, kind, fine_tuned, style, legacy):
    ref, kw, mask = reference_model(seed=7)
    src = write_fairseq(ref, kw, mask, tmp_path / "src.pt", kind=kind, fine_tuned=fine_tuned)
    path = _resave(src, tmp_path / "model.pt", style, legacy)
    ckpt, plain = load_foundation(path), load_foundation(src)
    assert ckpt.format == "fairseq" and ckpt.arch == plain.arch
    assert ckpt.state.keys() == plain.state.keys()
    assert all(torch.equal(ckpt.state[k], plain.state[k]) for k in plain.state)
    assert torch.equal(ckpt.mask_embedding, mask)
    model = wav2vec2_model(**ckpt.arch, aux_num_out=None).eval()
    model.load_state_dict(ckpt.state)
    with torch.no_grad():
        assert (model(WAVE)[0] - ref(WAVE)[0]).abs().max().item() <= 1e-5
    stub = _dictionaries(load_pickled(path), style, fine_tuned)[0]
    assert isinstance(stub, Stub) and stub.symbols[0] == "<s>"  # fairseq's class, inert


def _dictionaries(obj: dict, style: str, fine_tuned: bool) -> list:
    if style == "namespace":
        args = obj["args"].w2v_args if fine_tuned else obj["args"]
        return args.dictionaries
    cfg = obj["cfg"]["model"]["w2v_args"] if fine_tuned else obj["cfg"]
    return cfg["task"]["dictionaries"]


# --- other entry points ------------------------------------------------------------------------
def test_transcribe_export_refuses_a_crafted_model_pth(tmp_path):
    """ESPnet's build_model_from_file unpickles freely: deploy reads weights-only first."""
    from espnet_allinone.deploy.build import ensure_exported
    from espnet_allinone.deploy.runtime import DeployError

    path, _refused, marker = _crafted(tmp_path, "eval", "zip")
    folder = tmp_path / "d4-w1-fp"
    folder.mkdir()
    (folder / "config.yaml").write_text("encoder: conformer\n")
    path.rename(folder / "model.pth")
    with pytest.raises(DeployError, match=f"{folder / 'model.pth'}.*eval"):
        ensure_exported(folder, log=lambda _m: None)
    assert not marker.exists() and not (tmp_path / "d4-w1-fp.onnx").exists()


def test_transcribe_export_refuses_a_zip_member_escaping_the_folder(tmp_path):
    from espnet_allinone.deploy.build import ensure_exported
    from espnet_allinone.deploy.runtime import DeployError

    packed = tmp_path / "sub" / "model.zip"
    packed.parent.mkdir()
    with zipfile.ZipFile(packed, "w") as z:
        z.writestr("meta.yaml", "files: {asr_model_file: model.pth}\n"
                                "yaml_files: {asr_train_config: ../../../evil.yaml}\n")
        z.writestr("../../../evil.yaml", "a: 1\n")
    with pytest.raises(DeployError, match="unsafe member name '../../../evil.yaml'"):
        ensure_exported(packed, log=lambda _m: None)
    assert not list(tmp_path.rglob("evil.yaml"))


def test_init_param_is_read_weights_only_before_espnet(tmp_path):
    from espnet_allinone.bin.asr_train import check_init_params
    from espnet_allinone.export.model_io import CheckpointError

    path, _refused, marker = _crafted(tmp_path, "eval", "zip")
    with pytest.raises(CheckpointError, match=f"{path}.*eval"):
        check_init_params(["--init_param", f"{path}:encoder:encoder"])
    assert not marker.exists()
    good = tmp_path / "good.pth"
    torch.save({"encoder.w": torch.zeros(2)}, good)
    check_init_params(["--init_param", str(good)])
