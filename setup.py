"""Packaging for trax_sl: Trax-style layers on modern JAX that keep the streaming contract."""

import os
import re

from setuptools import find_packages, setup

_HERE = os.path.dirname(os.path.abspath(__file__))

# The repository's one address: the notebooks' Colab install cell and the README's Open in Colab
# links are written from it by `python tools/sync_notebooks.py` (tests/test_colab_install.py checks).
REPOSITORY_URL = "https://github.com/trax-sl/trax_sl"


def _version() -> str:
    with open(os.path.join(_HERE, "trax_sl", "__init__.py"), encoding="utf-8") as f:
        match = re.search(r'^__version__ = "([^"]+)"', f.read(), re.MULTILINE)
    if match is None:
        raise RuntimeError("trax_sl/__init__.py defines no __version__")
    return match.group(1)


def _long_description() -> str:
    with open(os.path.join(_HERE, "README.md"), encoding="utf-8") as f:
        return f.read()


setup(
    name="trax_sl",
    version=_version(),
    description="Trax-style layer combinators on modern JAX with SequenceLayers-style streaming",
    long_description=_long_description(),
    long_description_content_type="text/markdown",
    url=REPOSITORY_URL,
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["trax_sl", "trax_sl.*"]),
    include_package_data=True,
    install_requires=[
        "jax>=0.4.35",
        "numpy>=1.26",
        "gin-config>=0.5",
        "absl-py>=2.0",
        "optax>=0.2.3",
        "tqdm>=4.60",
        "tensorflow-datasets>=4.9.4",
        # Training checkpoints (asynchronous, atomic, sharded across processes).
        "orbax-checkpoint>=0.11.0",
        # Input pipelines: random-access datasets, checkpointable iterators, read-ahead (trax_sl.data).
        "grain>=0.2.12",
        # jax.export's (de)serialization of exported models (trax_sl.export).
        "flatbuffers>=24.3.25",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            # The suite runs on every core (pyproject.toml: -n auto); CI's 2 cores halve its time.
            "pytest-xdist>=3.5",
            # Contract fuzzing over each layer's option space (tests/layers/test_contract_fuzz.py).
            "hypothesis>=6.100",
            "ruff",
            # The test suite executes the colab/ notebooks.
            "nbclient",
            "nbformat",
            "ipykernel",
            "matplotlib",
            # The API reference site (mkdocs.yml), built by tests/test_docs.py.
            "mkdocs>=1.6",
            "mkdocstrings[python]>=1.0",
            "mkdocs-jupyter>=0.25",
        ],
        "docs": ["mkdocs>=1.6", "mkdocstrings[python]>=1.0", "mkdocs-jupyter>=0.25"],
        # Only for the tfds.load path of trax_sl.data; everything else runs without it.
        "tf": ["tensorflow"],
    },
    classifiers=[
        "License :: OSI Approved :: Apache Software License",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
