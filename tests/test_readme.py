"""The README's self-contained Python examples run as written, each in a fresh interpreter.

A self-contained block begins with `import`; fragments (which continue a
run the text describes, e.g. loading its checkpoints) begin otherwise.
"""

import os
import subprocess
import sys

import pytest

import trax_sl
from tests import markdown

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(trax_sl.__file__)))
README = os.path.join(ROOT, "README.md")


def readme_examples() -> list[str]:
    with open(README, encoding="utf-8") as f:
        return [block for block in markdown.python_blocks(f.read()) if block.startswith("import ")]


BLOCKS = readme_examples()


def test_the_readme_has_its_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_a_readme_example_runs(index, tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", BLOCKS[index]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert result.returncode == 0, f"README block {index} failed:\n{BLOCKS[index]}\n{result.stderr[-3000:]}"
