"""Install espnet-allinone: one-pass compression of ESPnet speech recognisers."""

import ast
import os
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.develop import develop

# The .pth file that makes `encoder: elastic_conformer` known to ESPnet's own
# entry points (espnet_allinone/_import_hook.py). It must land in
# site-packages itself, for wheel and editable installs alike.
HOOK_PTH = "espnet_allinone_hook.pth"
HERE = os.path.dirname(os.path.abspath(__file__))


def _hook_pth_text():
    """``espnet_allinone/_import_hook.py`` inlined, so start-up imports nothing."""
    with open(os.path.join(HERE, "espnet_allinone", "_import_hook.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):  # docstrings only cost start-up time here
        body = getattr(node, "body", None)
        first = body[0] if isinstance(body, list) and body else None
        if isinstance(first, ast.Expr) and isinstance(getattr(first.value, "value", None), str):
            node.body = body[1:] or [ast.Pass()]
    source = ast.unparse(tree)
    return f"import sys; exec({source!r}, {{'__name__': '_espnet_allinone_hook'}})\n"


def _write_hook(directory):
    """Write the one-line .pth (site runs lines that start with `import`)."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, HOOK_PTH)
    with open(path, "w", encoding="utf-8") as f:
        f.write(_hook_pth_text())
    return path


class BuildPyWithHook(build_py):
    """Wheel / regular install: put the .pth at the root of the built tree."""

    def run(self):
        super().run()
        _write_hook(self.build_lib)

    def get_outputs(self, include_bytecode=True):
        return [*super().get_outputs(include_bytecode), os.path.join(self.build_lib, HOOK_PTH)]


class DevelopWithHook(develop):
    """Legacy editable install (`setup.py develop`, pip without PEP 660)."""

    def run(self):
        super().run()
        if not self.uninstall:
            _write_hook(self.install_dir)


cmdclass = {"build_py": BuildPyWithHook, "develop": DevelopWithHook}
try:  # PEP 660 editable wheels (setuptools >= 64): add the .pth to the wheel
    from setuptools.command.editable_wheel import editable_wheel

    class EditableWheelWithHook(editable_wheel):
        def _select_strategy(self, *args, **kwargs):
            strategy = super()._select_strategy(*args, **kwargs)
            return _WithHookPth(strategy)

    class _WithHookPth:
        def __init__(self, strategy):
            self.strategy = strategy

        def __call__(self, wheel, files, mapping):
            self.strategy(wheel, files, mapping)
            wheel.writestr(HOOK_PTH, _hook_pth_text())

        def __enter__(self):
            self.strategy.__enter__()
            return self

        def __exit__(self, *exc):
            return self.strategy.__exit__(*exc)

    cmdclass["editable_wheel"] = EditableWheelWithHook
except ImportError:
    pass

setup(
    name="espnet-allinone",
    version="0.1.0",
    description=(
        "One training run, many ESPnet ASR models: elastic depth, width and "
        "weight precision in one Conformer, extracted to standalone models."
    ),
    long_description=Path(HERE, "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["espnet_allinone", "espnet_allinone.*"]),
    install_requires=[
        "espnet==202511",
        "torchaudio==2.11.0",
        "espnet_model_zoo",
        "sentencepiece",
        "matplotlib",
        "tqdm",
        "onnx",
        "onnxruntime",
        "huggingface_hub",
        "tensorboard",  # training curves: one per subsystem's loss (use_tensorboard: true)
    ],
    extras_require={"test": ["pytest", "pytest-timeout", "ruff"]},
    cmdclass=cmdclass,
)
