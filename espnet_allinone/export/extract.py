"""Extract subsystems of an all-in-one model into standalone ESPnet models.

One directory per subsystem, named by its canonical string::

    <outdir>/d6-w0.5-int4/config.yaml        ordinary ESPnet ASR config
    <outdir>/d6-w0.5-int4/model.pth          weights (low-bit ones bit-packed)
    <outdir>/d6-w0.5-int4/feats_stats.npz    when the config normalises (global_mvn)
    <outdir>/d6-w0.5-int4/bpe.model          when the config uses a BPE model
    <outdir>/d6-w0.5-int4/extract_info.yaml  subsystem, sizes, source hashes

Each subsystem is resolved to its architecture record (``encoder.resolve``)
and cut out (``slicing.slice_encoder``); low-bit output layers and decoder
blocks (``part_precisions``) are stored packed (``model: packed``), and the
extracted model's CTC and attention-decoder log-posteriors are checked against
the all-in-one model's. The encoder's family names the
extracted encoder (``extracted_encoder``): a float record its stock ESPnet
encoder can hold (Conformer: every block once, one shape, all heads and conv
channels) becomes that stock encoder (``stock_encoder``: ``conformer``,
``torchaudiohubert``; no plugin needed), the others the family's packed
encoder built from the record. With ``plugin_free`` a low-bit subsystem is
written dequantized onto its grid as the stock encoder (float-sized on disk,
no plugin needed). ``Extractor.extract`` also takes an explicit record (a
non-uniform architecture) with a directory name. Everything family-specific
is asked of the encoder through ``ExtractableEncoder``.

With calibration data each subsystem's BatchNorm statistics are re-estimated
for it before it is cut out (``calibration.py``); the all-in-one model it is
verified against runs with those same statistics, so extraction stays exact.
Without calibration an encoder with statistics banks (``stats_banks: true``)
hands over the subsystem's own bank under the stock buffer names (a record
outside the grid: the shared statistics); ``extract_info.yaml`` names it
(``statistics_bank``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from espnet_allinone.arch import ArchError, SubnetArch
from espnet_allinone.elastic.unfolding import tie_shared_blocks
from espnet_allinone.encoders.protocol import (
    ExtractableEncoder,
    elastic_encoder_names,
    encoder_violations,
)
from espnet_allinone.errors import AllInOneError
from espnet_allinone.export import model_io
from espnet_allinone.export.calibration import (
    CalibrationData,
    calibrate,
    kept_statistics,
)
from espnet_allinone.export.extracted_dir import CONFIG_NAME, INFO_NAME, MODEL_NAME
from espnet_allinone.export.files import atomic_directory, sha256_file, tensors_digest
from espnet_allinone.export.slicing import SlicedEncoder, slice_encoder
from espnet_allinone.export.standalone_config import standalone_config
from espnet_allinone.precision import FLOAT_BITS
from espnet_allinone.quant import packed_format
from espnet_allinone.quant.fake_quant import MIN_SCALE
from espnet_allinone.subsystem import Subsystem


class ExtractionError(AllInOneError, RuntimeError):
    """Extraction refused (existing different model, unsupported option)."""


@dataclass
class ExtractResult:
    subsystem: str
    directory: Path
    encoder: str
    params: int
    disk_bytes: int
    exact_bytes: int
    full_float_bytes: int
    max_abs_diff: float | None
    floor_scale_groups: tuple[int, int] = (0, 0)  # (at the floor, all) of the encoder's groups

    @property
    def compression(self) -> float:
        return self.full_float_bytes / self.disk_bytes

    @property
    def size_agreement(self) -> float:
        """Bytes on disk / exact bytes computed from the subsystem."""
        return self.disk_bytes / self.exact_bytes


class Extractor:
    """Holds the loaded all-in-one model; extracts one subsystem at a time."""

    def __init__(self, asr_train_config: str | Path, asr_model_file: str | Path,
                 calibration: CalibrationData | None = None):
        self.config_path = Path(asr_train_config)
        self.calibration = calibration
        self.model_path = Path(asr_model_file)
        self.model, self.config = model_io.load_asr_model(self.config_path, self.model_path)
        self.encoder: ExtractableEncoder = self.model.encoder
        missing = encoder_violations(self.encoder, ExtractableEncoder)
        if missing:
            raise ExtractionError(
                f"{self.config_path}: encoder {self.config.get('encoder')!r} is not an elastic "
                f"encoder ({'; '.join(missing)}); extraction needs an all-in-one encoder "
                f"(encoder: one of {', '.join(elastic_encoder_names())})"
            )
        self.space = self.encoder.space
        self.source = {
            "config_sha256": sha256_file(self.config_path),
            "model_sha256": sha256_file(self.model_path),
        }
        enc_params = {id(p) for p in self.encoder.parameters()}
        kept = [(n, p) for n, p in self.model.named_parameters() if not _training_only(n)]
        self.rest_params = sum(p.numel() for _, p in kept if id(p) not in enc_params)
        self.rest_bytes = 4 * self.rest_params
        self.full_float_bytes = 4 * sum(p.numel() for _, p in kept)

    # ------------------------------------------------------------------
    def resolve(self, subsystems: str | Iterable[str]) -> list[Subsystem]:
        return self.space.resolve(subsystems)

    def fingerprint(self, name: str, arch: SubnetArch | None, plugin_free: bool) -> dict:
        out = {
            "subsystem": name,
            "source": dict(self.source),
            "options": {"plugin_free": bool(plugin_free)},
        }
        if self.calibration is not None:
            out["calibration"] = self.calibration.describe()
        if arch is not None:
            out["architecture"] = arch.to_dict()
        return out

    def extract(
        self,
        sub: str | Subsystem | SubnetArch,
        outdir: str | Path,
        *,
        name: str | None = None,
        plugin_free: bool = False,
        overwrite: bool = False,
        verify: bool = True,
    ) -> ExtractResult:
        """Write ``outdir/<sub>/``; refuse a directory holding a different model.

        ``sub`` is a subsystem of the space, or an architecture record (checked
        against the model before anything is written) saved as ``outdir/<name>``.
        """
        if isinstance(sub, SubnetArch):
            if not name:
                raise ExtractionError("an explicit architecture record needs a directory name")
            arch, explicit = sub, sub
            try:
                self.encoder.check_arch(arch)
            except ArchError as e:
                raise ExtractionError(f"architecture {name}: {e}") from None
        else:
            sub = self.space.validate(sub)
            arch, explicit, name = self.encoder.resolve(sub), None, str(sub)
        final = Path(outdir).absolute() / name
        fingerprint = self.fingerprint(name, explicit, plugin_free)
        if self.calibration is None and self.encoder.stats_banks:  # which bank is written
            fingerprint["statistics_bank"] = self.encoder.stats_bank(arch) or "shared"
        _check_existing(final, fingerprint, overwrite)
        with kept_statistics(self.encoder):
            if self.calibration is not None:
                with self.encoder.use_arch(arch):
                    calibrate(self.model, self.calibration)
            return self._write(arch, name, final, fingerprint, plugin_free, verify)

    def _write(self, arch: SubnetArch, name: str, final: Path,
               fingerprint: dict, plugin_free: bool, verify: bool) -> ExtractResult:
        """Cut ``arch`` out with the model's current statistics, check it, write ``final``."""
        sliced = slice_encoder(self.encoder, arch)
        try:  # the family's own choice: a stock encoder where shapes allow, else packed
            encoder_name, conf, stock, unroll = self.encoder.extracted_encoder(
                arch, plugin_free, self.config.get("encoder_conf") or {})
        except ValueError as e:
            raise ExtractionError(f"{name}: {e}") from None
        output = {} if plugin_free else self._output_conf(arch, name)
        with atomic_directory(final) as tmp:
            config = standalone_config(self.config, encoder_name, conf, tmp, final, output)
            build_config = standalone_config(self.config, encoder_name, conf, tmp, tmp, output)
            target = model_io.build_asr_model(build_config)
            self._load_target(target, sliced, stock, name, unroll, packed_output=bool(output))
            diff = self._verify(target, arch, name) if verify else None
            _write_yaml(tmp / CONFIG_NAME, config)
            torch.save(target.state_dict(), tmp / MODEL_NAME)
            disk = (tmp / MODEL_NAME).stat().st_size
            dequantized = stock and not arch.is_float
            exact_encoder = (
                _float_bytes(target.encoder) if dequantized else self.encoder.storage_bytes(arch)
            )
            packed_out = 0  # low-bit output layers are stored packed, not 4 bytes a value
            if output:
                out = self.encoder.output_layers_size(arch)
                packed_out = out.bytes - 4 * out.params
            result = ExtractResult(
                subsystem=name,
                directory=final,
                encoder=encoder_name,
                params=self.encoder.num_params(arch) + self.rest_params,
                disk_bytes=disk,
                exact_bytes=exact_encoder + self.rest_bytes + packed_out,
                full_float_bytes=self.full_float_bytes,
                max_abs_diff=diff,
                floor_scale_groups=packed_format.floor_scale_groups(sliced.state),
            )
            info = {
                **fingerprint,
                "encoder": encoder_name,
                "params": result.params,
                "bytes": {
                    "model_file": disk,
                    "exact": result.exact_bytes,
                    "full_float": self.full_float_bytes,
                },
                "compression_vs_full_float": round(result.compression, 4),
                "weight_groups_at_floor_scale": list(result.floor_scale_groups),
                "weights_sha256": tensors_digest(torch.load(tmp / MODEL_NAME, weights_only=True)),
            }
            _write_yaml(tmp / INFO_NAME, info)
        return result

    def exact_bytes(self, arch: SubnetArch) -> int:
        """The exact bytes of ``arch``'s extracted model (low-bit weights packed, the
        rest 4 bytes a value), as ``extract`` records them, without extracting it."""
        out = self.encoder.output_layers_size(arch)
        return self.encoder.storage_bytes(arch) + self.rest_bytes + out.bytes - 4 * out.params

    # ------------------------------------------------------------------
    def _output_conf(self, arch: SubnetArch, name: str) -> dict:
        """``model_conf`` of a model with low-bit output layers or decoder blocks
        (``model: packed``)."""
        conf = {}
        for key, bits, layers in self._packed_parts(arch):
            if not layers:
                raise ExtractionError(f"{name}: {key} {bits}, but the model attached no such "
                                      "layers to its encoder")
            conf[key] = bits
        return conf | {"quant_symmetric": self.encoder.quant_config.symmetric} if conf else {}

    def _packed_parts(self, arch: SubnetArch) -> list[tuple[str, int, dict]]:
        """``(model_conf key, bits, layers)`` of each low-bit part outside the encoder."""
        parts = (("output_bits", arch.output_bits, self.encoder.output_layers),
                 ("decoder_bits", arch.decoder_bits, self.encoder.decoder_layers))
        return [p for p in parts if p[1] != FLOAT_BITS]

    def _output_state(self, arch: SubnetArch, packed: bool) -> dict[str, torch.Tensor]:
        """The low-bit output layers' and decoder blocks' weights (keyed in the model):
        packed entries, or dequantized onto their grid (``packed`` false: plugin-free)."""
        layers = {n: m for _, _, part in self._packed_parts(arch) for n, m in part.items()}
        if not layers:
            return {}
        state = {}
        with self.encoder.use_arch(arch):
            for name, layer in layers.items():
                twin = layer.static_twin()
                if packed:
                    state.update(packed_format.to_state(twin.weight, f"{name}.weight"))
                else:
                    state[f"{name}.weight"] = twin.dequantized_weight()
        return state

    def _load_target(self, target: torch.nn.Module, sliced: SlicedEncoder, stock: bool,
                     name: str, unroll: bool = False, packed_output: bool = False) -> None:
        # the encoder keys the tensors for its extracted encoder
        sliced = SlicedEncoder(sliced.arch, self.encoder.extracted_state(
            sliced.state, sliced.arch, stock, target.encoder))
        if unroll:
            sliced = sliced.unrolled(self.encoder.family.blocks)
        if stock:
            shapes = {n: p.shape for n, p in target.encoder.named_parameters()}
            enc_state = sliced.dequantized_state(shapes)
        else:
            enc_state = sliced.state
        state = {f"encoder.{k}": v for k, v in enc_state.items()}
        source_state = self.model.state_dict()
        output_state = self._output_state(sliced.arch, packed_output)
        for key in _non_encoder_keys(target):
            if key in output_state or f"{key}_codes" in output_state:
                continue
            if key not in source_state:
                raise ExtractionError(f"{key} of the extracted model has no source tensor")
            state[key] = source_state[key]
        state.update(output_state)
        try:
            target.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ExtractionError(
                f"{name}: the cut encoder does not fit the "
                f"{type(target.encoder).__name__} built from its config: {e}"
            ) from e
        if unroll:
            tie_shared_blocks(target.encoder.get_submodule(self.encoder.family.blocks),
                              sliced.arch.stored_schedule())

    @torch.no_grad()
    def _verify(self, target: torch.nn.Module, arch: SubnetArch, name: str,
                tol: float = 1e-4) -> float:
        """Max abs difference of CTC (and attention-decoder) log-posteriors, all-in-one
        vs extracted."""
        try:  # the encoder's choice: e.g. raw audio long enough for a wav2vec2 front
            speech, lengths = self.encoder.probe_input(self.model, self.config.get("input_size"))
        except ValueError as e:
            raise ExtractionError(f"{name}: {e}") from None
        with self.encoder.use_arch(arch):
            ref_enc, ref_lens = self.model.encode(speech, lengths)
            ref = self.model.ctc.log_softmax(ref_enc)
            ref_dec = _decoder_log_probs(self.model, ref_enc, ref_lens)
        out_enc, out_lens = target.encode(speech, lengths)
        out = target.ctc.log_softmax(out_enc)
        if out.shape != ref.shape or not torch.equal(out_lens, ref_lens):
            raise ExtractionError(f"{name}: extracted model output shape differs")
        diffs = {"CTC": float((out - ref).abs().max())}
        if ref_dec is not None:
            out_dec = _decoder_log_probs(target, out_enc, out_lens)
            diffs["attention-decoder"] = float((out_dec - ref_dec).abs().max())
        for what, diff in diffs.items():
            if not diff <= tol:
                raise ExtractionError(
                    f"{name}: extracted model differs from the all-in-one model "
                    f"(max abs diff of {what} log-posteriors {diff:.3g} > {tol})"
                )
        return max(diffs.values())


def _decoder_log_probs(model: torch.nn.Module, enc: torch.Tensor,
                       enc_lens: torch.Tensor) -> torch.Tensor | None:
    """The attention decoder's log-posteriors on a fixed token prefix (None without a
    decoder): extraction checks the decoder blocks as it checks CTC."""
    decoder = getattr(model, "decoder", None)
    if decoder is None or getattr(model, "use_transducer_decoder", False):
        return None
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, model.vocab_size, (enc.shape[0], 6), generator=gen)
    lens = torch.full((enc.shape[0],), tokens.shape[1], dtype=torch.long)
    logits, _ = decoder(enc, enc_lens, tokens, lens)
    return torch.log_softmax(logits, dim=-1)


TRAINING_ONLY = ("weight_quantizer", "input_quantizer", "pruning", "layer_distill")
"""Module names whose parameters only training uses (quantizer scales are counted
inside the packed weights; gates, multipliers and distillation projections are
not part of any extracted model)."""


def _training_only(name: str) -> bool:
    return any(part in TRAINING_ONLY for part in name.split("."))


def _float_bytes(module: torch.nn.Module) -> int:
    """4 bytes a value: a stock encoder holding a low-bit record written dequantized
    (a tensor shared by several keys is saved, and counted, once)."""
    unique = {t.untyped_storage().data_ptr(): t for t in module.state_dict().values()
              if t.is_floating_point()}
    return 4 * sum(t.numel() for t in unique.values())


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
    calibration: CalibrationData | None = None,
    log: Callable[[str], None] = print,
) -> list[ExtractResult]:
    """Extract every listed subsystem (``"all"``: the whole space) with a progress bar,
    each with statistics calibrated for it when ``calibration`` is given."""
    from tqdm import tqdm

    extractor = Extractor(asr_train_config, asr_model_file, calibration)
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
    for line in floor_scale_warnings(results):
        log(line)
    return results


def floor_scale_warnings(results: list[ExtractResult]) -> list[str]:
    """One line per subsystem with weight groups quantized to zero by a floor scale."""
    lines = []
    for r in results:
        floor, total = r.floor_scale_groups
        if floor:
            lines.append(
                f"WARNING: {r.subsystem}: {floor:,} of {total:,} weight groups "
                f"({100 * floor / total:.1f}%) have the floor scale {MIN_SCALE:g} and quantize "
                "to zero (learned linear scales that crossed zero in training); train with "
                "quant_conf.scale_param: log to keep scales positive"
            )
    return lines


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
