"""Extract subsystems of an all-in-one model into standalone ESPnet models.

One directory per subsystem, named by its canonical string::

    <outdir>/d6-w0.5-int4/config.yaml        ordinary ESPnet ASR config
    <outdir>/d6-w0.5-int4/model.pth          weights (low-bit ones bit-packed)
    <outdir>/d6-w0.5-int4/feats_stats.npz    when the config normalises (global_mvn)
    <outdir>/d6-w0.5-int4/bpe.model          when the config uses a BPE model
    <outdir>/d6-w0.5-int4/extract_info.yaml  subsystem, sizes, source hashes

Float subsystems whose heads and conv channels are full width become a stock
``conformer`` (no plugin needed); the others a ``packed_conformer``. With
``plugin_free`` a low-bit subsystem is written dequantised onto its grid as a
stock ``conformer`` (float-sized on disk, no plugin needed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from espnet_allinone.export import model_io
from espnet_allinone.export.files import atomic_directory, sha256_file, tensors_digest
from espnet_allinone.export.slicing import SlicedEncoder, slice_encoder
from espnet_allinone.export.standalone_config import encoder_conf, standalone_config
from espnet_allinone.subsystem import Subsystem

INFO_NAME = "extract_info.yaml"
CONFIG_NAME = "config.yaml"
MODEL_NAME = "model.pth"


class ExtractionError(RuntimeError):
    """Extraction refused (existing different model, unsupported option)."""


@dataclass
class ExtractResult:
    subsystem: Subsystem
    directory: Path
    encoder: str
    params: int
    disk_bytes: int
    exact_bytes: int
    full_float_bytes: int
    max_abs_diff: float | None

    @property
    def compression(self) -> float:
        return self.full_float_bytes / self.disk_bytes

    @property
    def size_agreement(self) -> float:
        """Bytes on disk / exact bytes computed from the subsystem."""
        return self.disk_bytes / self.exact_bytes


class Extractor:
    """Holds the loaded all-in-one model; extracts one subsystem at a time."""

    def __init__(self, asr_train_config: str | Path, asr_model_file: str | Path):
        self.config_path = Path(asr_train_config)
        self.model_path = Path(asr_model_file)
        self.model, self.config = model_io.load_asr_model(self.config_path, self.model_path)
        self.encoder = self.model.encoder
        if not hasattr(self.encoder, "space") or not hasattr(self.encoder, "use_subsystem"):
            raise ExtractionError(
                f"{self.config_path}: encoder {self.config.get('encoder')!r} has no subsystems; "
                "extraction needs an all-in-one encoder (encoder: elastic_conformer)"
            )
        self.space = self.encoder.space
        self.source = {
            "config_sha256": sha256_file(self.config_path),
            "model_sha256": sha256_file(self.model_path),
        }
        enc_params = {id(p) for p in self.encoder.parameters()}
        self.rest_params = sum(
            p.numel() for p in self.model.parameters() if id(p) not in enc_params
        )
        self.rest_bytes = 4 * self.rest_params
        self.full_float_bytes = 4 * sum(
            p.numel() for n, p in self.model.named_parameters() if "weight_quantizer" not in n
        )

    # ------------------------------------------------------------------
    def resolve(self, subsystems: str | Iterable[str]) -> list[Subsystem]:
        return self.space.resolve(subsystems)

    def fingerprint(self, sub: Subsystem, plugin_free: bool) -> dict:
        return {
            "subsystem": str(sub),
            "source": dict(self.source),
            "options": {"plugin_free": bool(plugin_free)},
        }

    def extract(
        self,
        sub: str | Subsystem,
        outdir: str | Path,
        *,
        plugin_free: bool = False,
        overwrite: bool = False,
        verify: bool = True,
    ) -> ExtractResult:
        """Write ``outdir/<sub>/``; refuse a directory holding a different model."""
        sub = self.space.validate(sub)
        final = Path(outdir).absolute() / str(sub)
        fingerprint = self.fingerprint(sub, plugin_free)
        _check_existing(final, fingerprint, overwrite)
        sliced = slice_encoder(self.encoder, sub)
        name, conf, use_packed = self._encoder_choice(sliced, plugin_free)
        with atomic_directory(final) as tmp:
            config = standalone_config(self.config, name, conf, tmp, final)
            build_config = standalone_config(self.config, name, conf, tmp, tmp)
            target = model_io.build_asr_model(build_config)
            self._load_target(target, sliced, use_packed, sub)
            diff = self._verify(target, sub) if verify else None
            _write_yaml(tmp / CONFIG_NAME, config)
            torch.save(target.state_dict(), tmp / MODEL_NAME)
            disk = (tmp / MODEL_NAME).stat().st_size
            result = ExtractResult(
                subsystem=sub,
                directory=final,
                encoder=name,
                params=self.encoder.num_params(sub) + self.rest_params,
                disk_bytes=disk,
                exact_bytes=self.exact_bytes(sub, None if use_packed else target),
                full_float_bytes=self.full_float_bytes,
                max_abs_diff=diff,
            )
            info = {
                **fingerprint,
                "encoder": name,
                "params": result.params,
                "bytes": {
                    "model_file": disk,
                    "exact": result.exact_bytes,
                    "full_float": self.full_float_bytes,
                },
                "compression_vs_full_float": round(result.compression, 4),
                "weights_sha256": tensors_digest(torch.load(tmp / MODEL_NAME, weights_only=True)),
            }
            _write_yaml(tmp / INFO_NAME, info)
        return result

    def exact_bytes(self, sub: Subsystem, target: torch.nn.Module | None = None) -> int:
        """encoder.storage_bytes(sub) plus the float rest (CTC, decoder, ...).

        For a low-bit subsystem written dequantised (``target`` given, a float
        stock conformer) the encoder counts 4 bytes a value instead.
        """
        if target is None or sub.is_float:
            enc = self.encoder.storage_bytes(sub)
        else:
            float_twin = Subsystem(sub.depth, sub.width, 32)
            if float_twin in self.space:
                enc = self.encoder.storage_bytes(float_twin)
            else:
                enc = 4 * sum(
                    t.numel()
                    for k, t in target.encoder.state_dict().items()
                    if t.is_floating_point()
                )
        return int(enc) + self.rest_bytes

    # ------------------------------------------------------------------
    def _encoder_choice(self, sliced: SlicedEncoder, plugin_free: bool):
        src = self.config.get("encoder_conf") or {}
        full_heads = self.space.attention_heads
        fits_stock = (
            sliced.heads == full_heads and sliced.conv_channels == self.space.output_size
        )
        sub = sliced.subsystem
        if plugin_free and not fits_stock:
            raise ExtractionError(
                f"subsystem {sub} keeps {sliced.heads} of {full_heads} attention heads and "
                f"{sliced.conv_channels} of {self.space.output_size} conv channels, which "
                "ESPnet's conformer encoder cannot express; extract it without "
                "--plugin_free (it then uses encoder: packed_conformer)"
            )
        if fits_stock and (sub.is_float or plugin_free):
            conf = encoder_conf(src, depth=sub.depth, ffn_units=sliced.ffn_units)
            return "conformer", conf, False
        conf = encoder_conf(
            src,
            depth=sub.depth,
            ffn_units=sliced.ffn_units,
            heads=sliced.heads,
            conv_channels=sliced.conv_channels,
            weight_bits=sub.bits,
            symmetric=sliced.symmetric,
            quantized_modules=sliced.quantized_modules,
        )
        return "packed_conformer", conf, not sub.is_float

    def _load_target(self, target: torch.nn.Module, sliced: SlicedEncoder, use_packed: bool,
                     sub: Subsystem) -> None:
        if use_packed:
            enc_state = {**sliced.float_state, **sliced.packed_state}
        else:
            shapes = {n: p.shape for n, p in target.encoder.named_parameters()}
            enc_state = sliced.dequantized_state(shapes)
        state = {f"encoder.{k}": v for k, v in enc_state.items()}
        source_state = self.model.state_dict()
        for key in _non_encoder_keys(target):
            if key not in source_state:
                raise ExtractionError(f"{key} of the extracted model has no source tensor")
            state[key] = source_state[key]
        try:
            target.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ExtractionError(
                f"subsystem {sub}: the cut encoder does not fit the "
                f"{type(target.encoder).__name__} built from its config: {e}"
            ) from e

    @torch.no_grad()
    def _verify(self, target: torch.nn.Module, sub: Subsystem, tol: float = 1e-4) -> float:
        """Max abs difference of CTC log-posteriors, all-in-one vs extracted."""
        speech, lengths = probe_input(self.model, self.config.get("input_size"))
        with self.encoder.use_subsystem(sub):
            ref, ref_lens = self.model.encode(speech, lengths)
            ref = self.model.ctc.log_softmax(ref)
        out, out_lens = target.encode(speech, lengths)
        out = target.ctc.log_softmax(out)
        if out.shape != ref.shape or not torch.equal(out_lens, ref_lens):
            raise ExtractionError(f"subsystem {sub}: extracted model output shape differs")
        diff = float((out - ref).abs().max())
        if not diff <= tol:
            raise ExtractionError(
                f"subsystem {sub}: extracted model differs from the all-in-one model "
                f"(max abs diff of CTC log-posteriors {diff:.3g} > {tol})"
            )
        return diff


def probe_input(model: torch.nn.Module, input_size: int | None = None, seed: int = 0):
    """A fixed random input for the model: 1 s of audio, or 100 feature frames."""
    gen = torch.Generator().manual_seed(seed)
    if model.frontend is not None:
        speech = torch.randn(2, 16000, generator=gen) * 0.1
        return speech, torch.tensor([16000, 12000])
    if input_size is None:
        raise ExtractionError("the config has neither a frontend nor an input_size")
    return torch.randn(2, 100, int(input_size), generator=gen), torch.tensor([100, 75])


def _non_encoder_keys(model: torch.nn.Module) -> list[str]:
    """state_dict keys of everything but the encoder (whose packed entries come apart)."""
    keys = [k for k, _ in model.named_parameters(recurse=False)]
    keys += [k for k, _ in model.named_buffers(recurse=False)]
    for name, child in model.named_children():
        if name != "encoder":
            keys += [f"{name}.{k}" for k in child.state_dict()]
    return keys


def _check_existing(final: Path, fingerprint: dict, overwrite: bool) -> None:
    if not final.exists() or overwrite:
        return
    info_path = final / INFO_NAME
    if not info_path.is_file():
        raise ExtractionError(
            f"{final} exists and was not written by extract; refusing to replace it "
            "(pass --overwrite to replace it)"
        )
    with info_path.open(encoding="utf-8") as f:
        info = yaml.safe_load(f) or {}
    have = {k: info.get(k) for k in fingerprint}
    if have != fingerprint:
        raise ExtractionError(
            f"{final} holds a different model ({_difference(have, fingerprint)}); "
            "refusing to replace it (pass --overwrite to replace it)"
        )


def _difference(have: dict, want: dict) -> str:
    parts = []
    for key, value in want.items():
        if have.get(key) != value:
            parts.append(f"{key}: {have.get(key)!r} there, {value!r} now")
    return "; ".join(parts)


def _write_yaml(path: Path, data: dict) -> None:
    from espnet2.utils.yaml_no_alias_safe_dump import yaml_no_alias_safe_dump

    with path.open("w", encoding="utf-8") as f:
        yaml_no_alias_safe_dump(data, f, indent=4, sort_keys=False)


def extract_all(
    asr_train_config: str | Path,
    asr_model_file: str | Path,
    subsystems: str | Iterable[str],
    outdir: str | Path,
    *,
    plugin_free: bool = False,
    overwrite: bool = False,
    verify: bool = True,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> list[ExtractResult]:
    """Extract every listed subsystem (``"all"``: the whole space) with a progress bar."""
    from tqdm import tqdm

    extractor = Extractor(asr_train_config, asr_model_file)
    subs = extractor.resolve(subsystems)
    results = []
    bar = tqdm(subs, desc="extract", unit="subsystem", disable=not progress or len(subs) < 2)
    for sub in bar:
        bar.set_postfix_str(str(sub))
        results.append(
            extractor.extract(
                sub, outdir, plugin_free=plugin_free, overwrite=overwrite, verify=verify
            )
        )
    log(format_table(results))
    return results


def format_table(results: list[ExtractResult]) -> str:
    """Subsystem, encoder, bytes on disk vs exact vs full float, compression."""
    head = (
        f"{'subsystem':<16} {'encoder':<17} {'disk bytes':>12} {'exact bytes':>12} "
        f"{'disk/exact':>10} {'full float':>12} {'compression':>11} {'max diff':>9}"
    )
    lines = [head]
    for r in results:
        diff = "-" if r.max_abs_diff is None else f"{r.max_abs_diff:.1e}"
        lines.append(
            f"{r.subsystem!s:<16} {r.encoder:<17} {r.disk_bytes:>12} {r.exact_bytes:>12} "
            f"{r.size_agreement:>10.3f} {r.full_float_bytes:>12} {r.compression:>10.2f}x "
            f"{diff:>9}"
        )
    return "\n".join(lines)
