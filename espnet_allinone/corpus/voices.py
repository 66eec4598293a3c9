"""Synthetic speakers: an espeak-ng voice + variant, or a festival voice, with its own rate and pitch.

Training voices use most of espeak-ng's variants (every English accent x 82
variants, 656 speakers) and, when asked, Debian's festival voices; a disjoint
set of espeak-ng variants, spoken at rates no training speaker uses, is held
out for the unseen-voice test set, so a model is also measured on voices it
never heard (of neither engine's training share).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# English voices that ship with espeak-ng-data itself (no MBROLA needed).
VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp",
          "en-gb-x-gbcwmd", "en-029", "en-us-nyc")

# espeak-ng 1.51's variants (``espeak-ng --voices=variant``), without the two whisper
# voices (unvoiced: not speech a recogniser of this corpus is meant for).
UNSEEN_VARIANTS = ("Alicia", "Andy", "Denis", "Gene2", "Hugo", "Jacky", "Mr", "RicishayMax2",
                   "anika", "belinda", "croak", "edward2", "f4", "iven3", "klatt5", "m6",
                   "robosoft4")
"""Held out of training: the unseen-voice test set speaks only these."""

TRAIN_VARIANTS = (
    "adam", "Alex", "Andrea", "Annie", "antonio", "aunty", "benjamin", "boris", "caleb",
    "david", "Demonic", "Diogo", "ed", "edward", "Gene", "gustave", "announcer", "Henrique",
    "iven", "iven2", "iven4", "john", "kaukovalta", "Lee", "linda", "marcelo", "Marco",
    "Mario", "max", "Michael", "michel", "miguel", "Mike", "Nguyen", "pablo", "paul", "pedro",
    "quincy", "RicishayMax", "RicishayMax3", "rob", "robert", "robosoft", "robosoft2",
    "robosoft3", "robosoft5", "robosoft6", "robosoft7", "robosoft8", "steph", "steph2",
    "steph3", "Storm", "Tweaky", "UniRobot", "zac", "anikaRobot", "AnxiousAndy", "fast", "f2",
    "f3", "f5", "grandpa", "klatt", "klatt2", "klatt3", "klatt4", "klatt6", "m2", "m3", "m4",
    "m5", "m7", "norbert", "sandro", "shelby", "travis", "victor", "m8", "f1", "m1", "grandma",
)

TRAIN_RATES = (130, 190)
"""Base rate range (wpm) of training speakers; each utterance varies it by +-15."""

UNSEEN_RATES = ((95, 112), (208, 225))
"""Rates of unseen-voice utterances: slower or faster than any training utterance."""

PITCHES = (15, 85)
"""Base pitch range (espeak-ng 0-99); each utterance varies it by +-8."""


ENGINES = ("espeak-ng", "festival")
"""The synthesisers a speaker can use."""

FESTIVAL_VOICES = {"kal": "kal_diphone", "ked": "ked_diphone", "slt": "cmu_us_slt_arctic_hts"}
"""Festival's English voices in Debian (festvox-kallpc16k, -kdlpc16k, -us-slt-hts), by short name."""

FESTIVAL_SPEAKERS_PER_VOICE = 12
"""Speakers made from each festival voice, each with its own base rate and pitch."""


@dataclass(frozen=True)
class Speaker:
    """One voice with a base rate (wpm) and pitch (0-99).

    ``engine`` "espeak-ng": ``-v voice+variant``; "festival": ``voice`` is a
    festival voice (``voice_<voice>``) and ``variant`` tells its speakers apart.
    """

    spk_id: str
    voice: str
    variant: str
    rate: int
    pitch: int
    engine: str = "espeak-ng"

    @property
    def engine_voice(self) -> str:
        """The voice argument of the engine: espeak-ng's ``voice+variant``, festival's voice name."""
        return f"{self.voice}+{self.variant}" if self.engine == "espeak-ng" else self.voice


def _speakers(rng: random.Random, variants: tuple[str, ...], rates) -> list[Speaker]:
    speakers = []
    for voice in VOICES:
        for variant in variants:
            rate, pitch = rates(rng), rng.randint(*PITCHES)  # drawn for every pair
            spk_id = voice.replace("-", "") + variant.lower()
            speakers.append(Speaker(spk_id, voice, variant, rate, pitch))
    return speakers


def make_speakers(rng: random.Random, num_speakers: int = 0) -> list[Speaker]:
    """Training voices: every voice x training variant (or a seeded subset of
    ``num_speakers``), sorted by id."""
    speakers = _speakers(rng, TRAIN_VARIANTS, lambda r: r.randint(*TRAIN_RATES))
    if num_speakers < 0 or num_speakers > len(speakers):
        raise ValueError(f"num_speakers must be in 0..{len(speakers)} (0 = all), "
                         f"got {num_speakers}")
    if num_speakers:
        speakers = rng.sample(speakers, num_speakers)
    return sorted(speakers, key=lambda s: s.spk_id)


def make_unseen_speakers(rng: random.Random) -> list[Speaker]:
    """Voices no training utterance uses: held-out variants at out-of-range rates."""
    return _speakers(rng, UNSEEN_VARIANTS, lambda r: r.randint(*r.choice(UNSEEN_RATES)))


def make_festival_speakers(rng: random.Random) -> list[Speaker]:
    """Festival training speakers: each voice at several base rates and pitches
    drawn from the training ranges (so no rate of the unseen set leaks in)."""
    speakers = []
    for short, voice in FESTIVAL_VOICES.items():
        for k in range(FESTIVAL_SPEAKERS_PER_VOICE):
            rate, pitch = rng.randint(*TRAIN_RATES), rng.randint(*PITCHES)
            spk_id = f"fest{short}{k:02d}"
            speakers.append(Speaker(spk_id, voice, f"{k:02d}", rate, pitch, engine="festival"))
    return speakers
