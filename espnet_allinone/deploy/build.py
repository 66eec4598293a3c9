"""Export an extracted model (directory or model-zoo zip) for onnxruntime, once.

The exported files go next to the model: ``<extracted>/<subsystem>.onnx/``
beside ``<extracted>/<subsystem>/`` or, for ``x.zip``, ``x.onnx/`` beside it
(a sibling, so packing and re-extraction of the model directory are
unaffected). ``deploy.json`` records the source file's
hash and the export options; a later call with the same model and options
reuses the directory, anything else rebuilds it. The directory is written
under a temporary name and renamed, so a failed export leaves nothing.

Files: ``model.onnx`` (variant ``exact``: encoder + CTC, float activations,
each quantized Linear as ``MatMulNBits`` with the subsystem's own codes where
that is fast here, every other packed weight stored bit-packed and expanded
once when the session is built, so the file is about the packed model's
size; see :mod:`espnet_allinone.deploy.onnx_lowbit`), ``model.fast.onnx``
(variant ``fast``, on request: the same with ``MatMulNBits`` at
``accuracy_level`` 4, int8 compute inside the kernel, not exact),
``model.int8.onnx`` (variant ``int8``, on request: onnxruntime's dynamic
int8 of the float layers, the Conv2d front included, the conv module's
pointwise convolutions as MatMuls so they are int8 GEMMs too (see
:mod:`espnet_allinone.deploy.onnx_pointwise`); made from the dequantized
model, so its low-bit layers take 8 bits),
in both of which the Conv2d front's layers are int8 GEMMs over patches
where measured faster than the float Conv here (``front``, see
:mod:`espnet_allinone.deploy.onnx_front`; the exact file keeps the float Conv),
``frontend.npz``, ``deploy.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from espnet_allinone.deploy.cpu import lacks_int8_compute
from espnet_allinone.deploy.frontend import FILE_NAME as FRONTEND_FILE
from espnet_allinone.deploy.frontend import LogMelFrontend
from espnet_allinone.deploy.onnx_front import check_front_mode
from espnet_allinone.deploy.runtime import (
    FORMAT_VERSION,
    META_FILE,
    DeployError,
    OnnxSpeech2Text,
    read_meta,
    variant_file,
)
from espnet_allinone.export.model_io import LoadError, load_checkpoint

VARIANTS = ("exact", "int8", "fast")
VARIANT_FILES = {"exact": "model.onnx", "int8": "model.int8.onnx", "fast": "model.fast.onnx"}
WEIGHT_STORAGE = "packed"  # deploy.json: how the .onnx files hold low-bit weights
INT8_POINTWISE = "int8-gemm"  # deploy.json: the int8 variant's pointwise convs and Linears
FAST_ACCURACY_LEVEL = 4    # MatMulNBits accuracy_level of the fast variant: int8 compute
MODEL_FILES = ("config.yaml", "model.pth")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def source_digest(model: Path) -> str:
    """What the export depends on: a zip itself, or a directory's config, weights,
    feature statistics and BPE model (anything else in it, e.g. a README, is ignored)."""
    model = Path(model)
    if not model.is_dir():
        return _sha256(model)
    names = sorted(p.name for p in model.iterdir() if p.is_file() and (
        p.name in MODEL_FILES or p.suffix in (".npz", ".model")))
    return hashlib.sha256("".join(f"{n}:{_sha256(model / n)};" for n in names)
                          .encode()).hexdigest()


def export_dir_for(model: Path) -> Path:
    """Where the exported files of ``model`` (a directory or a zip) live."""
    model = Path(model)
    model = Path(model).absolute()
    return model.parent / (model.name + ".onnx") if model.is_dir() else model.with_suffix(".onnx")


def check_model(model: Path) -> Path:
    """``model`` itself if it is an extracted model directory or a zip; else a clear error."""
    model = Path(model)
    if not model.exists():
        raise DeployError(f"model not found: {model}")
    if model.is_dir():
        missing = [f for f in MODEL_FILES if not (model / f).is_file()]
        if missing:
            raise DeployError(
                f"{model} is not an extracted model directory: missing {', '.join(missing)} "
                "(expected <extracted>/<subsystem>/ with config.yaml and model.pth, written "
                "by python -m espnet_allinone.bin.extract, or a packed .zip)")
        return model
    if model.suffix != ".zip":
        raise DeployError(f"{model} is neither an extracted model directory nor a "
                          "model-zoo .zip (python -m espnet_allinone.bin.pack)")
    return model


def is_current(model: Path, variants: Sequence[str], kernels: str, convs: str = "auto",
               front: str = "auto", log: Callable[[str], None] = print) -> bool:
    """True when the export directory holds ``variants`` made from this very model, each
    file whole (a damaged one is named through ``log`` and the model exported again)."""
    out = export_dir_for(model)
    try:
        meta = read_meta(out)
    except (DeployError, ValueError):
        return False
    if not (meta.get("source_sha256") == source_digest(model) and meta.get("kernels") == kernels
            and meta.get("weight_storage") == WEIGHT_STORAGE
            and ("int8" not in variants or (meta.get("int8_convs") == convs
                                            and meta.get("int8_pointwise") == INT8_POINTWISE))
            and (not {"fast", "int8"} & set(variants) or meta.get("front") == front)
            and all(v in meta["variants"] for v in variants)):
        return False
    try:
        for v in variants:
            variant_file(out, meta, v)
    except DeployError as e:
        log(f"{e}: re-exporting")
        return False
    return True


def ensure_exported(model: str | Path, variants: Sequence[str] = ("exact",),
                    kernels: str = "auto", threads: int = 1,
                    log: Callable[[str], None] = print, force: bool = False,
                    convs: str = "auto", front: str = "auto") -> Path:
    """The export directory of ``model``, exporting it first unless it is up to date.

    ``kernels``: low-bit layers as MatMulNBits ("auto": where measured fast here,
    "nbits": always, "float": never). ``convs``: in the int8 variant, int8
    convolutions ("auto": where measured fast here, "int8", "float"). ``front``: the
    Conv2d front of the fast and int8 variants (``FRONT_MODES``: "auto", int8 GEMMs
    where measured faster than the float Conv here; "int8", "gemm", "conv").
    """
    model = check_model(Path(model)).absolute()
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise DeployError(f"variant {bad[0]!r} unknown; valid: {', '.join(VARIANTS)}")
    check_front_mode(front)
    out = export_dir_for(model)
    if not force and is_current(model, variants, kernels, convs, front, log):
        return out
    with contextlib.suppress(DeployError, ValueError, KeyError):  # keep what was exported
        variants = [v for v in VARIANTS if v in variants or v in read_meta(out)["variants"]]
    log(f"exporting {model} for onnxruntime -> {out}")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        # ESPnet prints import noise on stdout, where transcripts go
        with contextlib.redirect_stdout(sys.stderr):
            meta = _export_source(model, tmp, variants, kernels, convs, threads, log, front)
        meta["source"] = str(model)
        meta["source_sha256"] = source_digest(model)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        tmp.chmod(0o755)  # mkdtemp makes it private
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _export_source(model: Path, tmp: Path, variants: Sequence[str], kernels: str, convs: str,
                   threads: int, log: Callable[[str], None], front: str = "auto") -> dict:
    """Export a model directory, or a zip unpacked by ESPnet's own unpacker, into ``tmp``."""
    if model.is_dir():
        meta = _export(model / "config.yaml", model / "model.pth", tmp, variants, kernels,
                       convs, threads, log, front)
        return meta
    from espnet2.main_funcs.pack_funcs import unpack

    _check_member_names(model)
    try:
        files = unpack(model, tmp / "unpacked", use_cache=False)
    except (RuntimeError, OSError, KeyError) as e:
        raise DeployError(f"{model}: not a model-zoo zip with meta.yaml ({e})") from None
    if "asr_train_config" not in files or "asr_model_file" not in files:
        raise DeployError(f"{model}: the zip holds no ASR model (meta.yaml lists "
                          f"{', '.join(files)})")
    meta = _export(Path(files["asr_train_config"]), Path(files["asr_model_file"]), tmp,
                   variants, kernels, convs, threads, log, front)
    shutil.rmtree(tmp / "unpacked")
    return meta


def _check_member_names(model: Path) -> None:
    """ESPnet's unpacker writes a zip's YAML members at their own path: refuse escaping ones."""
    import zipfile

    try:
        with zipfile.ZipFile(model) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        raise DeployError(f"{model}: not a model-zoo zip ({e})") from None
    for name in names:
        if name.startswith(("/", "\\")) or ".." in Path(name.replace("\\", "/")).parts:
            raise DeployError(f"{model}: unsafe member name {name!r}")


def _check_weights(model_file: Path) -> None:
    """ESPnet's build_model_from_file unpickles with weights_only=False: a weights-only read
    first, so a pickle that would run code is refused before it gets there."""
    try:
        load_checkpoint(model_file)
    except LoadError as e:
        raise DeployError(str(e)) from None


def frontend_of(model) -> LogMelFrontend:
    """The numpy twin of an ESPnet model's DefaultFrontend + GlobalMVN (or no MVN)."""
    import torch

    front, norm = model.frontend, model.normalize
    if front is None or type(front).__name__ != "DefaultFrontend" or front.stft is None:
        raise DeployError(f"front end {type(front).__name__}: only ESPnet's default "
                          "(STFT + log-mel) front end can be exported")
    enhancer = getattr(front, "frontend", None)  # identity unless WPE / beamforming is on
    if enhancer is not None and (getattr(enhancer, "use_wpe", False)
                                 or getattr(enhancer, "use_beamformer", False)):
        raise DeployError("front ends with a speech-enhancement stage cannot be exported")
    stft = front.stft
    n_fft, win = stft.n_fft, stft.win_length or stft.n_fft
    if stft.window is None:
        window = torch.ones(win)
    else:
        window = getattr(torch, f"{stft.window}_window")(win, dtype=torch.float32)
    left = (n_fft - win) // 2
    window = torch.nn.functional.pad(window, (left, n_fft - win - left))
    if stft.normalized or not stft.onesided:
        raise DeployError("normalized or two-sided STFTs cannot be exported")
    log_base = front.logmel.log_base
    mean = std = None
    if norm is not None:
        if type(norm).__name__ != "GlobalMVN":
            raise DeployError(f"normalisation {type(norm).__name__}: only global_mvn (or none) "
                              "can be exported")
        mean = norm.mean.float() if norm.norm_means else torch.zeros_like(norm.mean.float())
        std = norm.std.float() if norm.norm_vars else torch.ones_like(norm.std.float())
        mean, std = mean.numpy(), std.numpy()
    return LogMelFrontend(int(n_fft), int(stft.hop_length), bool(stft.center),
                          window.numpy(), front.logmel.melmat.float().numpy(),
                          None if log_base is None else float(log_base), mean, std)


def _export(config: Path, model_file: Path, out: Path, variants: Sequence[str], kernels: str,
            convs: str, threads: int, log: Callable[[str], None],
            front_mode: str = "auto") -> dict:
    _check_weights(model_file)
    import humanfriendly
    import onnxruntime
    import torch
    import yaml
    from espnet2.tasks.asr import ASRTask

    # deferred: torch and ESPnet; reusing an exported directory needs neither
    from espnet_allinone.deploy import (
        onnx_export,
        onnx_front,
        onnx_front_flatten,
        onnx_lowbit,
        onnx_pointwise,
    )

    conf = yaml.safe_load(config.read_text(encoding="utf-8"))
    model, _ = ASRTask.build_model_from_file(config, model_file, "cpu")
    model.eval()
    if getattr(model, "decoder", None) is not None and float(getattr(model, "ctc_weight", 1)) < 1:
        log("note: the model has an attention decoder; the ONNX path decodes with CTC only")
    front = frontend_of(model)
    front.save(out / FRONTEND_FILE)
    fs = (conf.get("frontend_conf") or {}).get("fs", 16000)
    fs = humanfriendly.parse_size(fs) if isinstance(fs, str) else int(fs)
    fp32 = onnx_export.export_onnx(model, out / "model.fp32.onnx", front.n_mels)
    state = torch.load(model_file, map_location="cpu", weights_only=True)
    report = onnx_lowbit.map_low_bit(state, fp32, out / VARIANT_FILES["exact"], kernels, threads)
    for line in report.decisions:
        log(f"  kernel: {line}")
    for line in report.stored_float:
        log(f"  stored float: {line}")
    meta_variants = {"exact": _variant(out, "exact", _kernels(report))}
    int8_decision = fast_report = front_report = None
    fast_source = fp32  # the fast and int8 variants: the front as int8 GEMMs where chosen
    if {"fast", "int8"} & set(variants) and front_mode != "conv":
        fast_source = out / "model.front.onnx"
        front_report = onnx_front.rewrite_front(fp32, fast_source, front_mode, threads)
        for line in front_report.decisions:
            log(f"  front (fast, int8): {line}")
    front_note = _front(front_report)
    if "int8" in variants:
        # dynamic int8 quantizes float initialisers: the exported graph's dequantized
        # weights, every low-bit Linear an int8 GEMM too (faster here than MatMulNBits)
        unpacked = out / "model.unpacked.onnx"
        pointwise = onnx_pointwise.pointwise_convs_as_matmuls(fast_source, unpacked)
        onnx_front_flatten.flatten_front_channels_last(unpacked, unpacked)
        int8_decision = onnx_lowbit.quantize_int8_best(
            unpacked, out / VARIANT_FILES["int8"], front.n_mels, convs, threads)
        unpacked.unlink()
        meta_variants["int8"] = _variant(out, "int8", f"{int8_decision}; "
                                         f"{len(pointwise)} pointwise convolutions as int8 "
                                         "MatMuls" + front_note)
    if "fast" in variants:
        fast_report = onnx_lowbit.map_low_bit(state, fast_source, out / VARIANT_FILES["fast"],
                                              kernels, threads,
                                              accuracy_level=FAST_ACCURACY_LEVEL)
        for line in fast_report.decisions:
            log(f"  fast kernel: {line}")
        meta_variants["fast"] = _variant(out, "fast", _kernels(fast_report) + front_note)
    (out / "model.fp32.onnx").unlink()
    if fast_source != fp32:
        fast_source.unlink()
    for name, v in meta_variants.items():
        log(f"  {name}: {v['file']} {v['bytes']:,} bytes ({v['kernels']})")
    token_list = [str(t) for t in model.token_list]
    return {
        "format_version": FORMAT_VERSION,
        "name": config.parent.name,
        "variants": meta_variants,
        "kernels": kernels,
        "int8_convs": convs if int8_decision else None,
        "int8_pointwise": INT8_POINTWISE if int8_decision else None,
        "kernel_decisions": report.decisions,
        "kept_float": report.kept_float,
        "weight_storage": WEIGHT_STORAGE,
        "stored_packed": len(report.stored_packed),
        "stored_float": report.stored_float,
        "fast_kernel_decisions": fast_report.decisions if fast_report else None,
        "front": front_mode if {"fast", "int8"} & set(variants) else None,
        "front_decisions": front_report.decisions if front_report else None,
        "token_list": token_list,
        "token_type": conf.get("token_type", "char"),
        "space_symbol": "<space>",
        "blank": int(getattr(model, "blank_id", 0)),
        "eos": int(getattr(model, "eos", len(token_list) - 1)),
        "sample_rate": fs,
        "min_samples": _min_samples(model, front),
        "model_bytes": model_file.stat().st_size,
        "onnxruntime": onnxruntime.__version__,
    }


def _min_samples(model, front: LogMelFrontend) -> int:
    """Fewest samples the model takes: the STFT's reflect padding and the subsampling's frames."""
    from espnet.nets.pytorch_backend.transformer.subsampling import check_short_utt

    frames = 1
    while frames < 1000 and check_short_utt(model.encoder.embed, frames)[0]:
        frames += 1
    return max(front.n_fft // 2 + 1, (frames - 1) * front.hop_length)


def load_model(model: str | Path, variant: str = "exact", num_threads: int = 1,
               search: str = "greedy", beam_size: int = 10, kernels: str = "auto",
               log: Callable[[str], None] = print, convs: str = "auto",
               front: str = "auto") -> OnnxSpeech2Text:
    """The Python API: export ``model`` if needed (once) and return its onnxruntime recogniser.

    ``variant``: "exact" (default; greedy output as ESPnet's), "fast" (MatMulNBits with
    int8 compute, not exact) or "int8" (dynamic int8 float layers, not exact); in
    both of these, ``front`` as in :func:`ensure_exported`.
    """
    if variant == "fast":
        lacking = lacks_int8_compute()
        if lacking:
            log(f"--fast: {lacking}, so MatMulNBits would compute in float anyway; "
                "running the exact variant")
            variant = "exact"
    directory = ensure_exported(model, variants=("exact",) if variant == "exact"
                                else ("exact", variant), kernels=kernels, threads=num_threads,
                                log=log, convs=convs, front=front)
    return OnnxSpeech2Text(directory, variant, num_threads, search, beam_size)


def _kernels(report) -> str:
    level = f" (accuracy_level {report.accuracy_level})" if report.accuracy_level else ""
    return (f"{report.replaced} MatMulNBits layers{level}; {len(report.stored_packed)} "
            "weights stored bit-packed, expanded at session start")


def _front(report) -> str:
    """What the fast and int8 variants' front became, for deploy.json's kernels line."""
    if report is None:
        return "; front: float Conv"
    int8 = sum(kind == "int8" for kind in report.rewritten.values())
    gemm = sum(kind == "gemm" for kind in report.rewritten.values())
    parts = ([f"{int8} Conv2d as int8 GEMM (MatMulInteger)"] if int8 else []) + (
        [f"{gemm} Conv2d as float GEMM"] if gemm else [])
    return f"; front ({report.mode}): {', '.join(parts) or 'float Conv'}"


def _variant(out: Path, name: str, kernels: str) -> dict:
    path = out / VARIANT_FILES[name]
    return {"file": path.name, "bytes": path.stat().st_size, "kernels": kernels}
