"""Synthetic speakers: an espeak-ng voice + variant with its own rate and pitch."""

from __future__ import annotations

import random
from dataclasses import dataclass

# English voices that ship with espeak-ng-data itself (no MBROLA needed).
VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp",
          "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5",
            "klatt", "klatt2", "klatt3")


@dataclass(frozen=True)
class Speaker:
    """One voice: espeak-ng ``-v voice+variant`` with a base rate (wpm) and pitch (0-99)."""

    spk_id: str
    voice: str
    variant: str
    rate: int
    pitch: int

    @property
    def espeak_voice(self) -> str:
        return f"{self.voice}+{self.variant}"


def make_speakers(rng: random.Random, num_speakers: int = 0) -> list[Speaker]:
    """All voice x variant pairs (or a seeded subset of ``num_speakers``), sorted by id."""
    pairs = [(v, var) for v in VOICES for var in VARIANTS]
    if num_speakers < 0 or num_speakers > len(pairs):
        raise ValueError(f"num_speakers must be in 0..{len(pairs)} (0 = all), got {num_speakers}")
    speakers = []
    for voice, variant in pairs:
        rate, pitch = rng.randint(135, 195), rng.randint(25, 75)  # drawn for every pair
        spk_id = voice.replace("-", "") + variant
        speakers.append(Speaker(spk_id, voice, variant, rate, pitch))
    if num_speakers:
        speakers = rng.sample(speakers, num_speakers)
    return sorted(speakers, key=lambda s: s.spk_id)
