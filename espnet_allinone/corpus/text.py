"""Transcripts for the synthetic corpus and how espeak-ng should say them.

The language is AN4-like: spelled letter strings, digit strings and short
command sentences over a few hundred words, so that a small model can learn
it in minutes on a CPU while the test set still holds unseen sentences.
Transcripts are upper-case words; a spelled letter is the single letter.
"""

from __future__ import annotations

import random
from collections.abc import Callable

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

# espeak-ng reads a lone "A" as the article; spell every letter with its
# phoneme notation (taken from `espeak-ng -x` on the letter names).
LETTER_PHONEMES = {
    "A": "'eI", "B": "b'i:", "C": "s'i:", "D": "d'i:", "E": "'i:", "F": "'Ef",
    "G": "dZ'i:", "H": "'eItS", "I": "'aI", "J": "dZ'eI", "K": "k'eI", "L": "'El",
    "M": "'Em", "N": "'En", "O": "'oU", "P": "p'i:", "Q": "kj'u:", "R": "'A@",
    "S": "'Es", "T": "t'i:", "U": "j'u:", "V": "v'i:", "W": "d'Vb@Lj,u:",
    "X": "'Eks", "Y": "w'aI", "Z": "z'i:",
}

DIGITS = ["ZERO", "OH", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE"]
TEENS = ["TEN", "ELEVEN", "TWELVE", "THIRTEEN", "FOURTEEN", "FIFTEEN", "SIXTEEN",
         "SEVENTEEN", "EIGHTEEN", "NINETEEN"]
TENS = ["TWENTY", "THIRTY", "FORTY", "FIFTY", "SIXTY", "SEVENTY", "EIGHTY", "NINETY"]
COLORS = ["RED", "GREEN", "BLUE", "YELLOW", "BLACK", "WHITE", "ORANGE", "PURPLE", "BROWN", "GREY"]
OBJECTS = ["BLOCK", "BALL", "BOX", "CUP", "BOOK", "CHAIR", "TABLE", "LAMP", "DOOR",
           "WINDOW", "BOTTLE", "PENCIL", "KEY", "PHONE", "BAG", "HAT", "SHOE", "CARD"]
MOVES = ["MOVE", "PUSH", "PULL", "LIFT", "DROP", "TAKE", "PUT", "PLACE", "BRING", "SHOW"]
DIRECTIONS = ["LEFT", "RIGHT", "UP", "DOWN", "FORWARD", "BACK", "NORTH", "SOUTH", "EAST", "WEST"]
PLACES = ["KITCHEN", "GARDEN", "OFFICE", "BEDROOM", "HALL", "GARAGE", "STUDIO", "LIBRARY"]
DEVICES = ["LIGHT", "HEATER", "RADIO", "FAN", "OVEN", "ALARM", "CAMERA", "SPEAKER", "TIMER"]
UNITS = ["DEGREES", "PERCENT", "MINUTES", "SECONDS", "HOURS", "METERS"]
DAYS = ["MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY", "SATURDAY", "SUNDAY"]
NAMES = ["ALICE", "BOB", "CAROL", "DAVID", "EMMA", "FRANK", "GRACE", "HENRY", "JULIA", "OSCAR"]


def _digits(rng: random.Random, lo: int = 3, hi: int = 7) -> list[str]:
    return [rng.choice(DIGITS) for _ in range(rng.randint(lo, hi))]


def _letters(rng: random.Random, lo: int = 2, hi: int = 6) -> list[str]:
    return [rng.choice(LETTERS) for _ in range(rng.randint(lo, hi))]


def _number(rng: random.Random) -> list[str]:
    kind = rng.random()
    if kind < 0.3:
        return [rng.choice(DIGITS[2:])]
    if kind < 0.5:
        return [rng.choice(TEENS)]
    words = [rng.choice(TENS)]
    if rng.random() < 0.7:
        words.append(rng.choice(DIGITS[2:]))
    return words


TEMPLATES: list[Callable[[random.Random], list[str]]] = [
    lambda r: _digits(r),
    lambda r: _letters(r),
    lambda r: ["SPELL"] + _letters(r),
    lambda r: ["CALL"] + _digits(r, 4, 7),
    lambda r: ["CALL", r.choice(NAMES), "ON", r.choice(DAYS)],
    lambda r: [r.choice(MOVES), "THE", r.choice(COLORS), r.choice(OBJECTS), r.choice(DIRECTIONS)],
    lambda r: [r.choice(MOVES), _number(r)[0], r.choice(OBJECTS) + "S", "TO", "THE",
               r.choice(PLACES)],
    lambda r: ["TURN", r.choice(["ON", "OFF"]), "THE", r.choice(PLACES), r.choice(DEVICES)],
    lambda r: ["SET", "THE", r.choice(DEVICES), "TO"] + _number(r) + [r.choice(UNITS)],
    lambda r: ["GO", _number(r)[0], "STEPS", r.choice(DIRECTIONS)],
    lambda r: ["ROOM"] + _letters(r, 1, 2) + _digits(r, 2, 3),
    lambda r: ["MEET", r.choice(NAMES), "IN", "THE", r.choice(PLACES), "ON", r.choice(DAYS)],
]


def random_transcript(rng: random.Random) -> str:
    """One transcript drawn from the templates (upper case, single spaces)."""
    return " ".join(rng.choice(TEMPLATES)(rng))


def unique_transcripts(rng: random.Random, count: int, max_tries_factor: int = 50) -> list[str]:
    """``count`` distinct transcripts in draw order (so splits are disjoint)."""
    seen: dict[str, None] = {}
    tries = 0
    while len(seen) < count:
        tries += 1
        if tries > max_tries_factor * max(count, 100):
            raise RuntimeError(
                f"could not draw {count} distinct transcripts (got {len(seen)}); "
                "ask for fewer utterances"
            )
        seen.setdefault(random_transcript(rng), None)
    return list(seen)


def vocabulary() -> set[str]:
    """Every word a transcript can contain."""
    words = set(LETTERS) | set(DIGITS) | set(TEENS) | set(TENS) | set(COLORS) | set(OBJECTS)
    words |= {o + "S" for o in OBJECTS} | set(MOVES) | set(DIRECTIONS) | set(PLACES)
    words |= set(DEVICES) | set(UNITS) | set(DAYS) | set(NAMES)
    words |= {"SPELL", "CALL", "ON", "OFF", "THE", "TO", "TURN", "SET", "GO", "STEPS",
              "ROOM", "MEET", "IN"}
    return words


def to_espeak(transcript: str) -> str:
    """The text espeak-ng gets: spelled letters in phoneme notation."""
    out = []
    for word in transcript.split():
        if len(word) == 1 and word in LETTER_PHONEMES:
            out.append(f"[[{LETTER_PHONEMES[word]}]]")
        else:
            out.append(word.lower())
    return " ".join(out)


def to_festival(transcript: str) -> str:
    """The text festival gets: words in lower case, single letters in upper case
    (festival spells an upper-case letter by its name)."""
    return " ".join(w if len(w) == 1 else w.lower() for w in transcript.split())
