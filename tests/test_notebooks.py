"""The colab/ notebooks: stored without outputs, and run top to bottom drawing their figures.

Each notebook is executed headless by nbclient in a fresh kernel of this
interpreter (so of this venv, importing this checkout's trax_sl: the install
cell is skipped and nothing touches the network; tests/test_colab_install.py
checks what it would install), in a temporary directory,
with matplotlib's inline backend. A cell that raises fails the test; so does
a cell that draws with matplotlib but leaves no image/png output. The run
time of each notebook is printed (`pytest -s` shows it).
"""

import json
import os
import pathlib
import sys
import time

import jax
import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).parent.parent
NOTEBOOKS = sorted((ROOT / "colab").glob("*.ipynb"))
CELL_TIMEOUT_S = 300
KERNEL_NAME = "trax_sl_tests"
# Figures each notebook must draw at least (so the image check cannot pass vacuously).
# sequence_layers_intro is SequenceLayers' introduction translated cell by cell: it draws nothing.
MIN_FIGURES = {"intro": 1, "streaming": 4, "training": 1, "devices": 1, "sequence_layers_intro": 0}


def _ids(paths):
    return [p.stem for p in paths]


def _code_cells(notebook):
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def _draws(cell) -> bool:
    return "plt." in cell.source


def test_every_notebook_is_here():
    assert {p.stem for p in NOTEBOOKS} == set(MIN_FIGURES)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_is_stored_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for i, cell in enumerate(_code_cells(notebook)):
        assert cell.outputs == [], f"{path.name}: code cell {i} has stored outputs; strip them"
        assert cell.execution_count is None, f"{path.name}: code cell {i} has an execution count"


@pytest.fixture(scope="module")
def kernel_spec_manager(tmp_path_factory):
    """A kernel spec for this interpreter, so the kernel runs in this venv whatever is installed elsewhere."""
    kernels = tmp_path_factory.mktemp("kernels")
    spec_dir = kernels / KERNEL_NAME
    spec_dir.mkdir()
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "trax_sl tests",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return KernelSpecManager(kernel_dirs=[str(kernels)])


def _kernel_env() -> dict:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    # This checkout's trax_sl, installed or not.
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT), env.get("PYTHONPATH", "")] if p)
    env["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    return env


def _run(path, cwd, kernel_spec_manager):
    notebook = nbformat.read(path, as_version=4)
    # IPC sockets in the run's directory: no TCP ports to find free, nothing reachable from outside.
    kernel = KernelManager(
        kernel_name=KERNEL_NAME,
        kernel_spec_manager=kernel_spec_manager,
        transport="ipc",
        ip=str(cwd / "kernel"),
    )
    client = NotebookClient(
        notebook, km=kernel, timeout=CELL_TIMEOUT_S, resources={"metadata": {"path": str(cwd)}}
    )
    start = time.perf_counter()
    try:
        client.execute(env=_kernel_env())  # Raises CellExecutionError at the first failing cell.
    finally:
        if kernel.has_kernel:
            kernel.shutdown_kernel(now=True)
    return notebook, time.perf_counter() - start


def _text(cell) -> str:
    return "".join(
        output.get("text", "") + output.get("data", {}).get("text/plain", "") for output in cell.outputs
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs_and_draws(path, tmp_path, kernel_spec_manager):
    notebook, seconds = _run(path, tmp_path, kernel_spec_manager)
    print(f"{path.name} ran in {seconds:.1f} s")
    cells = _code_cells(notebook)
    for i, cell in enumerate(cells):
        errors = [output for output in cell.outputs if output.output_type == "error"]
        assert not errors, f"{path.name}: code cell {i} raised {errors[0].ename}: {errors[0].evalue}"
    figure_cells = [(i, cell) for i, cell in enumerate(cells) if _draws(cell)]
    for i, cell in figure_cells:
        assert any("image/png" in output.get("data", {}) for output in cell.outputs), (
            f"{path.name}: code cell {i} draws with matplotlib but shows no image"
        )
    assert len(figure_cells) >= MIN_FIGURES[path.stem], f"{path.name}: expected more figures"
    if path.stem == "devices" and jax.default_backend() == "cpu":
        # Without an accelerator the notebook runs on 8 CPU devices of its own.
        assert "8 devices" in "".join(_text(cell) for cell in cells)
