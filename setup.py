"""Install espnet-allinone: one-pass compression of ESPnet speech recognisers."""

from setuptools import find_packages, setup

setup(
    name="espnet-allinone",
    version="0.1.0",
    description=(
        "One training run, many ESPnet ASR models: elastic depth, width and "
        "weight precision in one Conformer, extracted to standalone models."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
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
    ],
    extras_require={"test": ["pytest", "pytest-timeout", "ruff"]},
)
