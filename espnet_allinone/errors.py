"""The package's one exception base and the one way its command-line tools report errors.

Every exception class the package defines derives from :class:`AllInOneError`
(and keeps its builtin base, so ``except ValueError`` callers still catch it).
A command-line tool then catches all of the package's errors with one type
instead of a list that goes stale whenever an error class is added, and
:func:`cli_errors` turns each into the one ``<prog>: error: <message>`` line
and exit status the tools promise. Anything else (a bug) keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["AllInOneError", "CliOutcome", "cli_errors"]


class AllInOneError(Exception):
    """Base of every error this package raises on purpose: input it refuses, with a
    message that says what to change; one type every command-line tool catches."""


@dataclass
class CliOutcome:
    """What :func:`cli_errors` did: ``status`` is 0 unless it reported an error."""

    status: int = 0


@contextmanager
def cli_errors(prog: str, *also: type[BaseException], status: int = 2, prefix: str = "",
               suffix: str = "") -> Iterator[CliOutcome]:
    """Report an :class:`AllInOneError` (or one of ``also``) raised in the block as one
    stderr line, ``<prog>: error: <prefix><error><suffix>`` (``error: ...`` when
    ``prog`` is empty), and set the yielded outcome's ``status``; any other exception
    propagates with its traceback.

    ``also`` names the builtin errors a tool must report at that point (e.g.
    ``FileNotFoundError`` for a path the user gave); ``prefix`` and ``suffix`` say
    which input failed and what happens next. The caller returns ``outcome.status``
    when it is set::

        with cli_errors("extract", FileNotFoundError) as outcome:
            extract_all(...)
        if outcome.status:
            return outcome.status
    """
    outcome = CliOutcome()
    try:
        yield outcome
    except (AllInOneError, *also) as e:
        head = f"{prog}: error: " if prog else "error: "
        print(f"{head}{prefix}{e}{suffix}", file=sys.stderr)
        outcome.status = status
