"""Register into ESPnet the moment ``espnet2.tasks.asr`` is imported.

setup.py inlines this file into ``espnet_allinone_hook.pth`` in site-packages,
so every interpreter runs it at start-up without importing anything: stock
``python -m espnet2.bin.asr_train`` / ``asr_inference``, ``Speech2Text`` and
spawned DDP workers then know ``encoder: elastic_conformer``. It only puts a
finder on ``sys.meta_path`` that wraps the loader of ``espnet2.tasks.asr``;
after that module has run, ``espnet_allinone.registry.register()`` is
called and the finder removes itself. Set ``ESPNET_ALLINONE_NO_HOOK=1`` to
disable it. Self-contained (sys and os only): edits take effect on re-install.
"""

import os
import sys

TARGET = "espnet2.tasks.asr"


class _RegisterAfterImport:
    """A meta-path finder that only wraps the loader of ``TARGET``."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                break
        else:
            return None
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            uninstall()
            register_or_warn()

        spec.loader.exec_module = exec_then_register
        return spec


def register_or_warn() -> None:
    """Register; a failure warns instead of breaking ESPnet's own import."""
    try:
        # deferred: the hook runs at every interpreter start and imports nothing there
        from espnet_allinone.registry import register

        register()
    except ModuleNotFoundError as err:
        if err.name in ("espnet_allinone", "espnet_allinone.registry"):
            return  # the package was uninstalled and left this .pth behind
        _warn(err)
    except Exception as err:  # noqa: BLE001 - never break ESPnet's own import
        _warn(err)


def _warn(err: Exception) -> None:
    import warnings

    warnings.warn(f"espnet-allinone: {err}", RuntimeWarning, stacklevel=3)


def installed() -> bool:
    return any(type(f).__name__ == "_RegisterAfterImport" for f in sys.meta_path)


def install() -> None:
    """Add the finder (once per process); register now if ESPnet's task is loaded."""
    if os.environ.get("ESPNET_ALLINONE_NO_HOOK"):
        return
    if TARGET in sys.modules:
        register_or_warn()
    elif not installed():
        sys.meta_path.insert(0, _RegisterAfterImport())


def uninstall() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != "_RegisterAfterImport"]


if __name__ == "_espnet_allinone_hook":  # executed from the .pth file
    install()
