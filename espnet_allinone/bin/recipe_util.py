"""Small helpers the allinone.sh stage script calls (no Kaldi utils/ in the wheel).

    python -m espnet_allinone.bin.recipe_util subsystems --config C --subsystems all
    python -m espnet_allinone.bin.recipe_util guard --asr_exp E --config C [--option k=v ...]
    python -m espnet_allinone.bin.recipe_util baseline_config --config C --subsystem S --out Y
    python -m espnet_allinone.bin.recipe_util spm_train --input F --vocab_size N --model_prefix P
    python -m espnet_allinone.bin.recipe_util baselines_summary --baselines_dir D \
        --inference_tag decode --test_set test --out baselines.json --subsystems S [S ...]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from espnet_allinone.errors import AllInOneError, cli_errors
from espnet_allinone.export.model_io import load_config, load_yaml
from espnet_allinone.registry import ENTRIES
from espnet_allinone.subsystem import SearchSpace, Subsystem, SubsystemError

if TYPE_CHECKING:
    from espnet_allinone.encoders.protocol import RecipeEncoder

FINGERPRINT = "recipe_config.json"


class RecipeError(AllInOneError, RuntimeError):
    """A recipe input that is wrong; the message says what to do."""


def read_config(path: Path) -> dict:
    """A recipe YAML as a mapping; a bad file raises LoadError naming it (one line)."""
    return load_config(path)


def _registered_encoders() -> dict[str, str]:
    """``encoder:`` name -> "module:Class" of every encoder this package registers."""
    return {key: target for table, key, target in ENTRIES if table == "encoder_choices"}


def _import_class(target: str) -> type:
    module, _, name = target.partition(":")
    # ESPnet prints a flash-attention notice on stdout when imported; the stage
    # script reads this command's stdout, so keep it clean.
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as e:
            raise RecipeError(f"cannot import {target} ({type(e).__name__}: {e})") from None


def _is_elastic(cls: type) -> bool:
    # deferred: the protocol module imports torch, which guard and baselines_summary
    # (called by every stage script run) do not need
    from espnet_allinone.encoders.protocol import RecipeEncoder, protocol_violations

    return not protocol_violations(cls, RecipeEncoder)


def elastic_encoder_names() -> list[str]:
    """The registered ``encoder:`` names whose class is elastic (keeps RecipeEncoder)."""
    return [name for name, target in _registered_encoders().items()
            if _is_elastic(_import_class(target))]


def encoder_class(config: dict) -> type[RecipeEncoder]:
    """The elastic encoder class registered under the config's ``encoder:`` name.

    The names are registry.ENTRIES' (what ``register()`` adds to ESPnet's
    ``encoder_choices``), read without importing ``espnet2.tasks.asr`` (~19 s);
    an elastic class keeps the RecipeEncoder protocol (``search_space``,
    ``alone_conf``). Anything else is a RecipeError naming the valid names.
    """
    name = config.get("encoder")
    target = _registered_encoders().get(name) if isinstance(name, str) else None
    cls = _import_class(target) if target else None
    if cls is None or not _is_elastic(cls):
        what = ("the config names no encoder" if name is None
                else f"encoder: {name} is not an elastic encoder of this package" if cls is None
                else f"encoder: {name} is not an elastic encoder (no search space: an "
                     "extracted model's encoder)")
        raise RecipeError(f"{what}; an all-in-one training config names one of "
                          f"{', '.join(elastic_encoder_names())}")
    return cls


def space_of(config: dict) -> SearchSpace:
    """The search space an (all-in-one) training config's encoder_conf defines, as the
    encoder class its ``encoder:`` names builds it."""
    return encoder_class(config).search_space(config.get("encoder_conf") or {})


def resolve_subsystems(config_path: Path, subsystems: str) -> list[str]:
    """Canonical strings of ``subsystems`` ("all" or a list) in the config's space."""
    config = read_config(config_path)
    try:
        space = space_of(config)
    except (RecipeError, SubsystemError) as e:
        raise RecipeError(f"{config_path}: {e}") from None
    try:
        return [str(s) for s in space.resolve(subsystems)]
    except SubsystemError as e:
        valid = " ".join(str(s) for s in space.ordered())
        raise RecipeError(f"{e} (config {config_path}; its subsystems: {valid})") from e


def guard(asr_exp: Path, config_path: Path, options: list[str]) -> str:
    """Refuse an experiment dir made with another config; stamp a new or empty one."""
    wanted = {"train_config": read_config(config_path), "options": dict(
        o.split("=", 1) for o in options)}
    stamp = asr_exp / FINGERPRINT
    if stamp.is_file():
        have = json.loads(stamp.read_text())
        if have == wanted:
            return "matches"
        diffs = _diff(have, wanted)
        raise RecipeError(
            f"{asr_exp} was made with a different configuration ({'; '.join(diffs[:6])}); "
            "use another --expdir or --asr_tag, or remove that directory"
        )
    if asr_exp.is_dir() and any(asr_exp.iterdir()):
        raise RecipeError(
            f"{asr_exp} is not empty and has no {FINGERPRINT}: not made by this recipe; "
            "use another --expdir or --asr_tag, or remove that directory"
        )
    asr_exp.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(wanted, indent=1, sort_keys=True) + "\n")
    return "stamped"


def _diff(a: object, b: object, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _diff(a.get(k, "<unset>"), b.get(k, "<unset>"), f"{path}.{k}" if path else k)
        return out
    return [] if a == b else [f"{path}: {a!r} then, {b!r} now"]


def baseline_config(config_path: Path, subsystem: str, out: Path) -> None:
    """The same config training only ``subsystem`` (explicit sampling, one path).

    The encoder class gives the twin's ``encoder_conf`` (``alone_conf``): for an
    unfolded model (``seed_blocks``) the twin trained alone is what the unfolding
    paper compares with, an ordinary stacked model of the subsystem's logical
    depth (its own blocks, not a seed run again).
    """
    config = read_config(config_path)
    sub = resolve_subsystems(config_path, subsystem)
    if len(sub) != 1:
        raise RecipeError(f"baseline_config takes one subsystem, got {subsystem!r}")
    if config.get("model") != "allinone":
        raise RecipeError(f"{config_path} has model: {config.get('model')!r}; the baselines "
                          "stage needs an all-in-one config (model: allinone)")
    config["encoder_conf"] = encoder_class(config).alone_conf(
        config.get("encoder_conf") or {}, Subsystem.parse(sub[0]))
    mc = dict(config.get("model_conf") or {})
    mc.update(sampling="explicit", subsystems=sub, valid_subsystems=sub)
    # One path: nothing is drawn and nothing teaches it (the twin KL would distil the
    # twin from its own float path), so no sampling or distillation setting reaches the
    # twin, nor its recorded config (a new temperature keeps the trained twins current).
    for key in ("draw_weights", "distill_temperature", "distill_start_steps",
                "distill_twin_weight"):
        mc.pop(key, None)
    if "distill_weight" in mc:
        mc["distill_weight"] = 0.0
    config["model_conf"] = mc
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(config, sort_keys=False))


def baselines_summary(baselines_dir: Path, inference_tag: str, test_set: str,
                      subsystems: Sequence[str]) -> dict[str, dict]:
    """WER, CER, training seconds and scored hypotheses of each subsystem trained alone
    (stage 15's output), and under ``"missing"`` why a subsystem has none.

    Reads ``<baselines_dir>/<sub>/<inference_tag>/<sub>/<test_set>/scores.json`` and
    ``<baselines_dir>/<sub>/train_seconds``. A baseline that failed or never ran is
    named with the file it lacks (the report then shows no baseline for it), never
    filled in.
    """
    out: dict[str, dict] = {}
    missing: dict[str, str] = {}
    for sub in subsystems:
        scored = baselines_dir / sub / inference_tag / sub / test_set
        scores_path, seconds_path = scored / "scores.json", baselines_dir / sub / "train_seconds"
        absent = [p for p in (seconds_path, scores_path) if not p.is_file()]
        if absent:
            missing[sub] = (f"no {absent[0]} (training or scoring did not finish; see "
                            f"{baselines_dir / sub / 'train.log'})")
            continue
        scores = load_yaml(scores_path)  # JSON is YAML; a bad file is named
        try:
            out[sub] = {"wer": float(scores["wer"]["error_rate"]),
                        "cer": float(scores["cer"]["error_rate"]),
                        "train_seconds": float(seconds_path.read_text()),
                        "hyp_trn": str((scored / "score_wer" / "hyp.trn").absolute())}
        except (KeyError, TypeError, ValueError) as e:
            raise RecipeError(f"{scores_path} or {seconds_path} is not as the scoring and "
                              f"training steps write them ({type(e).__name__}: {e})") from None
    if missing:
        out["missing"] = missing
    return out


def spm_train(input_file: Path, vocab_size: int, model_type: str, model_prefix: Path,
              character_coverage: float = 1.0) -> None:
    """Train a sentencepiece model (what asr.sh's token-list stage does for bpe)."""
    import sentencepiece as spm

    model_prefix.parent.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        input=str(input_file), vocab_size=vocab_size, model_type=model_type,
        model_prefix=str(model_prefix), character_coverage=character_coverage,
        input_sentence_size=100000000, bos_id=-1, eos_id=-1, unk_id=0,
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("subsystems", help="print the canonical subsystems, one a line")
    s.add_argument("--config", type=Path, required=True)
    s.add_argument("--subsystems", default="all")
    g = sub.add_parser("guard", help="refuse an experiment dir from another config")
    g.add_argument("--asr_exp", type=Path, required=True)
    g.add_argument("--config", type=Path, required=True)
    g.add_argument("--option", action="append", default=[], help="key=value, repeatable")
    b = sub.add_parser("baseline_config", help="config that trains one subsystem alone")
    b.add_argument("--config", type=Path, required=True)
    b.add_argument("--subsystem", required=True)
    b.add_argument("--out", type=Path, required=True)
    t = sub.add_parser("spm_train", help="train a sentencepiece model")
    t.add_argument("--input", type=Path, required=True)
    t.add_argument("--vocab_size", type=int, required=True)
    t.add_argument("--model_type", default="unigram")
    t.add_argument("--model_prefix", type=Path, required=True)
    t.add_argument("--character_coverage", type=float, default=1.0)
    m = sub.add_parser("baselines_summary", help="baselines.json from the baselines stage")
    m.add_argument("--baselines_dir", type=Path, required=True)
    m.add_argument("--inference_tag", default="decode")
    m.add_argument("--test_set", required=True)
    m.add_argument("--subsystems", nargs="+", required=True)
    m.add_argument("--out", type=Path, required=True, help="where the JSON goes")
    args = p.parse_args(argv)
    with cli_errors("") as outcome:  # a bare "error: ..." line under allinone.sh's stage
        if args.command == "subsystems":
            print("\n".join(resolve_subsystems(args.config, args.subsystems)))
        elif args.command == "guard":
            guard(args.asr_exp, args.config, args.option)
        elif args.command == "baseline_config":
            baseline_config(args.config, args.subsystem, args.out)
        elif args.command == "baselines_summary":
            summary = baselines_summary(args.baselines_dir, args.inference_tag, args.test_set,
                                        args.subsystems)
            text = json.dumps(summary, indent=1) + "\n"
            args.out.write_text(text)
            print(text, end="")
        else:
            spm_train(args.input, args.vocab_size, args.model_type, args.model_prefix,
                      args.character_coverage)
    return outcome.status


if __name__ == "__main__":
    sys.exit(main())
