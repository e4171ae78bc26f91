"""The API reference site: its pages match the package tree, it builds with warnings as errors, and
every public name of the documented packages has an entry."""

import importlib
import inspect
import os
import pathlib
import subprocess
import sys
import zlib

import pytest

from tests import markdown, scripts

ROOT = scripts.ROOT


write_api_pages = scripts.load("tools/write_api_pages.py")

# The namespaces users import from; each public class or function there must be on the site.
NAMESPACES = (
    "trax_sl.layers",
    "trax_sl.sl",
    "trax_sl.models",
    "trax_sl.data",
    "trax_sl.optimizers",
    "trax_sl.supervised",
    "trax_sl.export",
)


def test_api_pages_match_the_package_tree():
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "write_api_pages.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"run `python tools/write_api_pages.py`:\n{result.stdout}"


def inventory_names(path: pathlib.Path) -> set[str]:
    """The object names in a Sphinx-format objects.inv (4 header lines, then zlib-compressed lines)."""
    data = path.read_bytes()
    body = data.split(b"\n", 4)[4]
    return {line.split(" ", 1)[0] for line in zlib.decompress(body).decode().splitlines() if line}


def public_objects() -> dict[str, str]:
    """Public name -> the dotted path where the class or function is defined, for trax_sl's own.

    The names users import from the namespaces, and every public class or function of a module the
    site documents (tools/write_api_pages.py), so that one without a docstring fails too.
    """
    found = {}
    for namespace in NAMESPACES:
        module = importlib.import_module(namespace)
        for name, obj in vars(module).items():
            home = getattr(obj, "__module__", "") or ""
            if _public_callable(name, obj) and home.startswith("trax_sl."):
                found[f"{namespace}.{name}"] = f"{home}.{obj.__qualname__}"
    for package, _ in write_api_pages.PACKAGES:
        for module_name in write_api_pages.public_modules(package):
            module = importlib.import_module(module_name)
            for name, obj in vars(module).items():
                if _public_callable(name, obj) and getattr(obj, "__module__", None) == module_name:
                    found[f"{module_name}.{name}"] = f"{module_name}.{obj.__qualname__}"
    return found


def _public_callable(name: str, obj) -> bool:
    return not name.startswith("_") and (inspect.isclass(obj) or inspect.isfunction(obj))


def test_site_builds_strict_and_documents_every_public_name(tmp_path):
    site = tmp_path / "site"
    command = [
        sys.executable,
        "-m",
        "mkdocs",
        "build",
        "--strict",
        "-f",
        str(ROOT / "mkdocs.yml"),
        "-d",
        str(site),
    ]
    # The notebooks render as stored: tests/test_notebooks.py executes them already.
    env = dict(os.environ, TRAX_SL_DOCS_EXECUTE="false")
    result = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr[-5000:]
    assert (site / "api" / "layers" / "index.html").exists()
    for notebook in sorted((ROOT / "colab").glob("*.ipynb")):
        assert (site / "notebooks" / notebook.stem / "index.html").exists(), (
            f"{notebook.name} is not on the site"
        )
    documented = inventory_names(site / "objects.inv")
    public = public_objects()
    missing = sorted(name for name, home in public.items() if home not in documented)
    print(f"public names with a reference entry: {len(public) - len(missing)} / {len(public)}")
    assert not missing, f"public names without a reference entry: {missing}"
    assert "trax_sl.layers.combinators.stack.Serial" in documented


GUIDES = sorted((ROOT / "docs" / "guides").glob("*.md"))


@pytest.mark.parametrize("guide", GUIDES, ids=[g.stem for g in GUIDES])
def test_guide_code_runs(guide):
    """A guide's code blocks run in order, in one namespace, as a reader would paste them."""
    blocks = markdown.python_blocks(guide.read_text())
    assert blocks, f"{guide.name} has no python blocks"
    namespace: dict = {"__name__": f"guide_{guide.stem}"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{guide.name} block {i + 1}", "exec"), namespace)  # noqa: S102
