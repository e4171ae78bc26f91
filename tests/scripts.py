"""The repository's scripts (tools/, examples/), imported by the tests that check them."""

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def load(relative_path: str, name: str | None = None):
    """The module of the script at `relative_path` under the repository root, executed once here."""
    path = ROOT / relative_path
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
