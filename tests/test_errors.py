"""Every package exception is an AllInOneError; cli_errors reports those and nothing else.

The command-line tools catch ``AllInOneError`` instead of a list of classes, so
an error class with only a builtin base would escape them as a traceback: the
walk below imports every module of the package and fails on such a class.
"""

from __future__ import annotations

import importlib
import pickle
import pkgutil
import warnings

import pytest

import espnet_allinone
from espnet_allinone.errors import AllInOneError, cli_errors


def _package_exceptions() -> tuple[set[type[BaseException]], list[str]]:
    """Exception classes defined in the package's modules, and the modules skipped
    because a dependency outside the package is not installed."""
    found: set[type[BaseException]] = set()
    skipped: list[str] = []
    prefix = espnet_allinone.__name__ + "."
    for info in pkgutil.walk_packages(espnet_allinone.__path__, prefix):
        try:
            module = importlib.import_module(info.name)
        except ImportError as e:
            if (e.name or "").startswith(prefix) or e.name == espnet_allinone.__name__:
                raise  # a broken import inside the package is a failure, not a skip
            skipped.append(f"{info.name} (needs {e.name})")
            continue
        todo = list(vars(module).values())
        while todo:
            obj = todo.pop()
            if not isinstance(obj, type) or obj.__module__ != info.name:
                continue
            todo += [v for v in vars(obj).values() if isinstance(v, type)]  # nested classes
            if issubclass(obj, BaseException):
                found.add(obj)
    return found, skipped


def test_every_package_exception_is_an_allinone_error():
    found, skipped = _package_exceptions()
    if skipped:  # optional heavy dependencies only; their modules go unchecked
        warnings.warn("not checked (import failed): " + ", ".join(skipped), stacklevel=1)
    from espnet_allinone.export.model_io import CheckpointError
    from espnet_allinone.subsystem import SubsystemError

    assert {AllInOneError, SubsystemError, CheckpointError} <= found  # the walk saw them
    stray = sorted(f"{c.__module__}.{c.__qualname__}" for c in found
                   if not issubclass(c, AllInOneError))
    assert not stray, f"derive these from espnet_allinone.errors.AllInOneError: {stray}"


def test_package_exceptions_keep_their_builtin_base():
    from espnet_allinone.export.extract import ExtractionError
    from espnet_allinone.export.model_io import LoadError
    from espnet_allinone.foundation.pickle_stubs import UnsafePickleError
    from espnet_allinone.registry import RegistrationError

    assert issubclass(LoadError, ValueError) and issubclass(ExtractionError, RuntimeError)
    assert issubclass(RegistrationError, ImportError)
    assert issubclass(UnsafePickleError, pickle.UnpicklingError)


class _Refused(AllInOneError, ValueError):
    pass


def test_cli_errors_reports_a_package_error_in_one_line(capsys):
    with cli_errors("prog") as outcome:
        raise _Refused("bad input; do this instead")
    assert outcome.status == 2
    assert capsys.readouterr().err == "prog: error: bad input; do this instead\n"


def test_cli_errors_status_prefix_suffix_and_no_prog(capsys):
    with cli_errors("", status=4, prefix="d2-w1-fp: ", suffix="; left in place") as outcome:
        raise _Refused("no such file")
    assert outcome.status == 4
    assert capsys.readouterr().err == "error: d2-w1-fp: no such file; left in place\n"
    with cli_errors("prog", FileNotFoundError) as outcome:
        raise FileNotFoundError("missing.yaml")
    assert outcome.status == 2 and capsys.readouterr().err == "prog: error: missing.yaml\n"


def test_cli_errors_leaves_status_zero_without_an_error(capsys):
    with cli_errors("prog") as outcome:
        pass
    assert outcome.status == 0 and capsys.readouterr().err == ""


def _bug() -> None:
    raise KeyError("a bug")


def test_cli_errors_lets_other_exceptions_propagate(capsys):
    """A plain builtin error (a bug, or one the tool did not name) keeps its traceback."""
    with pytest.raises(KeyError) as info, cli_errors("prog", FileNotFoundError):
        _bug()
    assert info.traceback[-1].name == "_bug"
    with pytest.raises(ValueError, match="not a package error"), cli_errors("prog"):
        raise ValueError("not a package error")
    assert capsys.readouterr().err == ""
