"""An experiment's search: its files, the search itself, what it writes.

Everything the search needs is found and read before anything is written
(:func:`locate`): the config, the checkpoint the recipe would extract from
(:func:`pick_checkpoint`, as ``allinone.sh``'s ``pick_model``), the held-out
data and the calibration data (by default the config's own valid and train
data). Outputs go to ``<exp>/searched/``: one extracted model per budget's
pick (an ordinary extracted directory, named ``searched-<bytes>-<hash>``, its
record in ``extract_info.yaml``) and ``search.json``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from espnet_allinone.arch import SubnetArch
from espnet_allinone.errors import AllInOneError
from espnet_allinone.export.model_io import load_config
from espnet_allinone.search.greedy import GreedySearch
from espnet_allinone.search.records import build_arch, physical_blocks, records_of

CHECKPOINTS = ("valid.loss.ave.pth", "valid.acc.ave.pth", "valid.loss.best.pth",
               "valid.acc.best.pth")
"""The checkpoints the recipe extracts from, first found first (``allinone.sh``'s
``pick_model`` with ``--inference_asr_model auto``)."""

SEARCHED_DIR = "searched"
SEARCH_FILE = "search.json"
NAME_PREFIX = "searched-"


class ExperimentError(AllInOneError, ValueError):
    """An experiment that cannot be searched; the message names what is missing."""


def pick_checkpoint(exp: Path, given: Path | None = None) -> Path:
    """``given`` (which must exist), else the first of :data:`CHECKPOINTS` in ``exp``."""
    if given is not None:
        if not Path(given).is_file():
            raise ExperimentError(f"--asr_model_file {given}: no such file")
        return Path(given)
    for name in CHECKPOINTS:
        if (exp / name).is_file():
            return exp / name
    raise ExperimentError(f"no trained model in {exp} (looked for {', '.join(CHECKPOINTS)}: "
                          "made by training, recipe stage 11); pass --asr_model_file")


def config_data_dir(config: Mapping[str, Any], key: str, exp: Path) -> Path | None:
    """The data dir of the ``speech`` entry of ``config[key]`` (e.g.
    ``valid_data_path_and_name_and_type``): relative to the working directory, or to
    the recipe directory two levels above ``exp`` (``exp/<tag>``)."""
    for entry in config.get(key) or ():
        if len(entry) >= 2 and entry[1] == "speech":
            path = Path(entry[0])
            for base in (Path.cwd(), exp.absolute().parent.parent):
                candidate = path if path.is_absolute() else base / path
                if candidate.exists():
                    return candidate.parent
            return path.parent
    return None


@dataclass(frozen=True)
class Inputs:
    exp: Path
    config: Path
    checkpoint: Path
    dev_data: Path
    calibration_data: Path | None


def locate(exp: Path, asr_model_file: Path | None, dev_data: Path | None,
           calibration_data: Path | None, calibration_utts: int) -> Inputs:
    """Every input of a search, checked; ExperimentError names the first one missing."""
    exp = Path(exp)
    config_path = exp / "config.yaml"
    if not config_path.is_file():
        raise ExperimentError(f"{config_path} not found: {exp} is not a trained experiment "
                              "(made by training, recipe stage 11)")
    checkpoint = pick_checkpoint(exp, asr_model_file)
    config = load_config(config_path)
    if dev_data is None:
        dev_data = config_data_dir(config, "valid_data_path_and_name_and_type", exp)
        if dev_data is None:
            raise ExperimentError(f"no held-out data: {config_path} names no speech entry in "
                                  "valid_data_path_and_name_and_type; pass --dev_data DIR")
    for name in ("wav.scp", "text"):
        if not (dev_data / name).is_file():
            raise ExperimentError(f"no held-out data: {dev_data / name} not found (pass "
                                  "--dev_data, a Kaldi data dir with wav.scp and text)")
    if calibration_utts > 0 and calibration_data is None:
        calibration_data = config_data_dir(config, "train_data_path_and_name_and_type", exp)
    if calibration_utts > 0 and (calibration_data is None
                                 or not (calibration_data / "wav.scp").is_file()):
        raise ExperimentError(f"no calibration data: {calibration_data or 'the config'} has "
                              "no wav.scp (pass --calibration_data DIR, or "
                              "--calibration_utts 0 to keep training's statistics)")
    return Inputs(exp, config_path, checkpoint, Path(dev_data),
                  calibration_data if calibration_utts > 0 else None)


def searched_name(nbytes: int, arch_record: Mapping[str, Any]) -> str:
    """``searched-<bytes>-<8 hex>``: the size, and a hash of the architecture record."""
    digest = hashlib.sha256(json.dumps(arch_record, sort_keys=True).encode()).hexdigest()
    return f"{NAME_PREFIX}{nbytes}-{digest[:8]}"


def run_search(inputs: Inputs, budgets: Sequence[tuple[str, int]], *, dev_utts: int,
               calibration_utts: int, per_module: bool = False, uniform: bool = True,
               batch_size: int = 1, overwrite: bool = False, extract: bool = True,
               log: Callable[[str], None] = print) -> dict:
    """Search, extract each budget's pick into ``<exp>/searched/``, write ``search.json``;
    returns what it wrote there."""
    # deferred: torch; select and plot read search.json without it
    from espnet_allinone.export.calibration import CalibrationData
    from espnet_allinone.export.extract import Extractor
    from espnet_allinone.search.evaluate import DevSet, Scorer, detokenizer

    start = time.perf_counter()
    dev = DevSet.from_data_dir(inputs.dev_data, dev_utts)
    calibration = (CalibrationData.from_data_dir(inputs.calibration_data, calibration_utts,
                                                 log=log)
                   if inputs.calibration_data is not None else None)
    extractor = Extractor(inputs.config, inputs.checkpoint, calibration)
    encoder = extractor.encoder  # the Extractor refuses one without records (ExtractableEncoder)
    scorer = Scorer(extractor.model, dev, detokenizer(extractor.config), calibration,
                    batch_size)
    loaded = time.perf_counter()
    archs: dict = {}

    def arch(record):
        if record not in archs:
            archs[record] = build_arch(encoder, record)
        return archs[record]

    sizes: dict = {}

    def size(record) -> int:
        a = arch(record)
        if a not in sizes:
            sizes[a] = extractor.exact_bytes(a)
        return sizes[a]

    blocks = physical_blocks(encoder)
    search = GreedySearch(encoder.space, blocks, lambda r: set(arch(r).schedule), size,
                          lambda r: scorer.error(arch(r)), per_module, log)
    search.check_budgets([b for _, b in budgets])  # before the first (slow) evaluation
    uniform_subs = [s for s in encoder.space.members() if s.prune is None] if uniform else []
    extra = list(zip(records_of(encoder.space, uniform_subs, blocks), map(str, uniform_subs)))
    log(f"search: {len(dev.texts)} dev utterances from {inputs.dev_data}, calibration "
        f"{'off' if calibration is None else f'{len(calibration.utterances)} utterances'}")
    result = search.run([b for _, b in budgets], extra)
    seconds = time.perf_counter() - start
    out = inputs.exp / SEARCHED_DIR
    chosen: dict[str, dict] = {}
    picked = {}  # name -> architecture record
    for text, budget in budgets:
        cand = result.chosen[budget]
        record = arch(cand.record).to_dict()
        name = searched_name(cand.bytes, record)
        picked[name] = arch(cand.record)
        entry = chosen.setdefault(name, {
            "name": name, "searched": True, "record": str(cand.record),
            "uniform": cand.uniform, "bytes": cand.bytes, "exact_bytes": cand.bytes,
            "dev_error": cand.error, "budgets": [], "architecture": record})
        entry["budgets"].append(text)
    if extract:
        for name, entry in chosen.items():
            res = extractor.extract(picked[name], out, name=name, overwrite=overwrite)
            entry.update(directory=str(res.directory), disk_bytes=res.disk_bytes,
                         params=res.params)
            if res.exact_bytes != entry["exact_bytes"]:  # one accounting: never differs
                raise ExperimentError(f"{name}: extraction counted {res.exact_bytes} bytes, "
                                      f"the search {entry['exact_bytes']}")
    summary = {
        "experiment": str(inputs.exp), "config": str(inputs.config),
        "checkpoint": str(inputs.checkpoint), "dev": dev.describe(),
        "calibration": None if calibration is None else calibration.describe(),
        "metric": "dev CER % (greedy CTC, spaces left out)",
        "bytes": "exact bytes of the extracted model (low-bit weights packed)",
        "budgets": [{"budget": t, "max_bytes": b, "chosen": next(
            n for n, e in chosen.items() if t in e["budgets"])} for t, b in budgets],
        "chosen": list(chosen.values()),
        "front": [c.to_dict() for c in result.front],
        "path": [c.to_dict() for c in result.path],
        "candidates": [c.to_dict() for c in sorted(result.candidates,
                                                   key=lambda c: (c.bytes, c.error))],
        "evaluations": scorer.evaluations, "seconds": round(seconds, 2),
        "load_seconds": round(loaded - start, 2),
    }
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{SEARCH_FILE}.tmp"
    tmp.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    tmp.replace(out / SEARCH_FILE)
    return summary


def extract_searched(exp: Path, name: str, asr_model_file: Path | None = None) -> Path:
    """Extract a pick of ``search.json`` again (its record, its calibration) into
    ``<exp>/searched/<name>/``, e.g. after the directory was removed."""
    # deferred: torch; select and plot read search.json without it
    from espnet_allinone.export.calibration import CalibrationData
    from espnet_allinone.export.extract import Extractor

    path = Path(exp) / SEARCHED_DIR / SEARCH_FILE
    summary = json.loads(path.read_text(encoding="utf-8"))
    entry = next((c for c in summary.get("chosen", []) if c.get("name") == name), None)
    if entry is None or "architecture" not in entry:
        raise ExperimentError(f"{path} records no architecture for {name}")
    calib = summary.get("calibration")
    calibration = None if not calib else CalibrationData.from_data_dir(
        calib["data"], int(calib["utterances"]))
    config = Path(summary.get("config") or Path(exp) / "config.yaml")
    checkpoint = pick_checkpoint(Path(exp), asr_model_file or (
        Path(summary["checkpoint"]) if summary.get("checkpoint") else None))
    extractor = Extractor(config, checkpoint, calibration)
    return extractor.extract(SubnetArch.from_dict(entry["architecture"]), Path(exp) / SEARCHED_DIR,
                             name=name).directory


def format_front(summary: Mapping[str, Any]) -> str:
    """The Pareto front of exact bytes against dev error, picks marked with their budgets."""
    picks = {c["record"]: c for c in summary["chosen"]}
    lines = [f"{'bytes':>12} {'dev CER%':>8}  {'how':<11} record"]
    for c in summary["front"]:
        mark = ""
        if c["record"] in picks:
            mark = f"  <- {picks[c['record']]['name']} ({', '.join(picks[c['record']]['budgets'])})"
        name = f"{c['record']}" + (f" = {c['uniform']}" if c["uniform"] else "")
        lines.append(f"{c['bytes']:>12,} {c['dev_error']:>8.2f}  {c['how']:<11} {name}{mark}")
    return "\n".join(lines)
