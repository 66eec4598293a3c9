"""CPU real-time factor of an extracted model, measured with ESPnet's Speech2Text.

One process loads each model in turn (ESPnet's import costs ~19 s, paid
once), decodes the same utterances on one CPU thread and divides the decoding
time by the audio duration. The first utterance warms up and is not timed.
"""

from __future__ import annotations

import inspect
import time
from pathlib import Path

import yaml

from espnet_allinone.registry import register


def speech2text_kwargs(inference_config: Path | None) -> dict:
    """The inference YAML's keys that Speech2Text takes (others are CLI-only)."""
    if inference_config is None:
        return {}
    conf = yaml.safe_load(Path(inference_config).read_text()) or {}
    from espnet2.bin.asr_inference import Speech2Text

    accepted = set(inspect.signature(Speech2Text.__init__).parameters) - {"self"}
    return {k: v for k, v in conf.items() if k in accepted and k != "batch_size"}


def measure_rtf(
    config: Path,
    model_file: Path,
    wavs: list[Path],
    inference_kwargs: dict,
    threads: int = 1,
) -> float:
    """Decoding seconds / audio seconds over ``wavs`` (after one warm-up utterance)."""
    import soundfile
    import torch

    register()  # our encoders must be in ESPnet's tables before the model is built
    from espnet2.bin.asr_inference import Speech2Text

    from espnet_allinone.decoding.prefix_impl import (
        DEFAULT_CTC_PREFIX_IMPL,
        use_ctc_prefix_impl,
    )

    torch.set_num_threads(threads)
    s2t = Speech2Text(asr_train_config=str(config), asr_model_file=str(model_file),
                      device="cpu", **inference_kwargs)
    use_ctc_prefix_impl(s2t, DEFAULT_CTC_PREFIX_IMPL)  # time the search the recipe decodes with
    audio = [soundfile.read(str(w), dtype="float32")[0] for w in wavs]
    if not audio:
        raise ValueError("measure_rtf needs at least one utterance")
    with torch.no_grad():
        s2t(audio[0])  # warm-up
        timed = audio[1:] or audio
        start = time.perf_counter()
        for a in timed:
            s2t(a)
        elapsed = time.perf_counter() - start
    fs = soundfile.info(str(wavs[0])).samplerate
    return elapsed / (sum(len(a) for a in timed) / fs)
