"""Finding the external programs the corpus needs, with the install command if absent."""

from __future__ import annotations

import shutil
import sys

from espnet_allinone.errors import AllInOneError

FESTIVAL_PACKAGES = "festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts"

INSTALL_HINT = {
    "espeak-ng": "sudo apt-get install espeak-ng   (macOS: brew install espeak-ng)",
    "sox": "sudo apt-get install sox   (macOS: brew install sox)",
    "text2wave": f"sudo apt-get install {FESTIVAL_PACKAGES}   (festival and its English voices)",
}

CORPUS_TOOLS = ("espeak-ng", "sox")
"""What every synthetic corpus needs."""

FESTIVAL_TOOLS = ("text2wave",)
"""What a corpus with a festival share needs besides espeak-ng and sox."""


class ToolMissingError(AllInOneError, RuntimeError):
    """A program the synthetic corpus needs is not on PATH."""


def require_tools(names: tuple[str, ...] = CORPUS_TOOLS) -> dict[str, str]:
    """Return ``{name: path}``; raise naming every missing program and how to install it."""
    found = {name: shutil.which(name) for name in names}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        lines = [f"  {name}: {INSTALL_HINT.get(name, 'install it')}" for name in missing]
        raise ToolMissingError(
            "the synthetic corpus needs " + ", ".join(missing) + " on PATH "
            f"(PATH searched by {sys.executable}); install with:\n" + "\n".join(lines)
            + "\n  or all at once: sudo apt-get install espeak-ng sox " + FESTIVAL_PACKAGES
        )
    return {name: str(path) for name, path in found.items()}
