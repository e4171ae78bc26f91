"""The notebooks' install cells and the README's Colab links, both written from setup.py's REPOSITORY_URL.

An install block is run here as IPython would run it (its `%pip` lines turned into `get_ipython()`
calls by IPython's own transformer), with a stand-in shell that records the pip command instead of
running it: from a checkout it installs that checkout, elsewhere (Colab) the repository's address,
and nothing when trax_sl already imports. `tools/sync_notebooks.py` writes the cells and links.
"""

import ast
import builtins
import shlex
import shutil
import sys
import urllib.parse

import nbformat
import pytest
from IPython.core.inputtransformer2 import TransformerManager
from IPython.utils.text import DollarFormatter
from packaging.requirements import Requirement

import trax_sl
from tests import scripts

ROOT = scripts.ROOT


sync_notebooks = scripts.load("tools/sync_notebooks.py")
NOTEBOOKS = sync_notebooks.notebooks()
URL = sync_notebooks.repository_url()


def _install_block(path) -> str:
    notebook = nbformat.read(path, as_version=4)
    first = next(cell for cell in notebook.cells if cell.cell_type == "code")
    return sync_notebooks.install_block_of(first.source, path.name)


class _Shell:
    """Stands in for IPython: records each line magic, its {expressions} expanded as IPython does."""

    def __init__(self):
        self.magics = []

    def run_line_magic(self, name, line, _stack_depth=1):
        frame = sys._getframe(1)
        namespace = {**frame.f_globals, **frame.f_locals}
        self.magics.append((name, DollarFormatter().vformat(line, args=[], kwargs=namespace)))


def _run(block, monkeypatch, trax_sl_installed):
    """Runs an install block; returns the magics it ran and its namespace."""
    shell = _Shell()

    def import_(name, *args, **kwargs):
        # Until pip has run, a runtime without trax_sl cannot import it.
        if name.split(".")[0] == "trax_sl" and not trax_sl_installed and not shell.magics:
            raise ImportError(f"No module named {name!r}")
        return builtins.__import__(name, *args, **kwargs)

    namespace = {"__builtins__": {**vars(builtins), "__import__": import_}, "get_ipython": lambda: shell}
    monkeypatch.setattr(sys, "path", list(sys.path))
    exec(TransformerManager().transform_cell(block), namespace)  # noqa: S102 (the notebook's own code)
    return shell.magics, namespace


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_on_colab_the_install_cell_pip_installs_the_repository(path, tmp_path, monkeypatch):
    # Like Colab's /content: no trax_sl checkout here or above.
    assert not any((d / "trax_sl").is_dir() for d in [tmp_path, *tmp_path.parents])
    monkeypatch.chdir(tmp_path)
    magics, namespace = _run(_install_block(path), monkeypatch, trax_sl_installed=False)
    assert len(magics) == 1 and magics[0][0] == "pip", magics
    command, quiet, spec = shlex.split(magics[0][1])
    assert (command, quiet) == ("install", "-q")
    requirement = Requirement(spec)
    assert requirement.name == "trax_sl"
    assert requirement.url == f"git+{URL}"
    address = urllib.parse.urlsplit(requirement.url.removeprefix("git+"))
    assert (address.scheme, address.netloc) == ("https", "github.com")
    assert len([part for part in address.path.split("/") if part]) == 2, address.path
    assert namespace["trax_sl"] is trax_sl


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_in_a_checkout_the_install_cell_installs_that_checkout(path, monkeypatch):
    monkeypatch.chdir(ROOT / "colab")  # where Jupyter starts the kernel of a notebook opened here
    magics, namespace = _run(_install_block(path), monkeypatch, trax_sl_installed=False)
    assert len(magics) == 1 and magics[0][0] == "pip", magics
    assert shlex.split(magics[0][1]) == ["install", "-q", "-e", str(ROOT)]
    assert (ROOT / "setup.py").is_file() and (ROOT / "trax_sl" / "__init__.py").is_file()
    # The kernel imports it at once, without the restart an editable install's .pth needs.
    assert sys.path[0] == str(ROOT)
    assert namespace["trax_sl"] is trax_sl


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_the_install_cell_installs_nothing_when_trax_sl_imports(path, monkeypatch):
    monkeypatch.chdir(ROOT / "colab")
    magics, namespace = _run(_install_block(path), monkeypatch, trax_sl_installed=True)
    assert magics == []
    assert namespace["trax_sl"] is trax_sl


def test_notebooks_and_readme_agree_with_setup_py():
    stale = sync_notebooks.sync(write=False)
    assert stale == [], f"{[str(p.relative_to(ROOT)) for p in stale]}: run python tools/sync_notebooks.py"


def test_readme_opens_every_notebook_in_colab_from_the_repository():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    owner, repo = sync_notebooks.github_owner_and_repo(URL)
    for path in NOTEBOOKS:
        link = f"https://colab.research.google.com/github/{owner}/{repo}/blob/main/colab/{path.name}"
        assert readme.count(f"]({link})") == 1, f"README.md: no Open in Colab link {link}"


def test_setup_py_passes_its_repository_url_and_license():
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    (call,) = [
        node.value
        for node in tree.body
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and node.value.func.id == "setup"
    ]
    keywords = {k.arg: k.value for k in call.keywords}
    assert isinstance(keywords["url"], ast.Name) and keywords["url"].id == "REPOSITORY_URL"
    assert ast.literal_eval(keywords["license"]) == "Apache-2.0"
    assert "Apache License\n                           Version 2.0" in (ROOT / "LICENSE").read_text()


def test_changing_the_address_in_setup_py_is_the_one_step(tmp_path):
    for name in ["setup.py", "README.md", "colab"]:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, tmp_path / name)
    new = "https://github.com/someone-else/trax_sl_fork"
    setup_py = tmp_path / "setup.py"
    setup_py.write_text(
        setup_py.read_text().replace(f'REPOSITORY_URL = "{URL}"', f'REPOSITORY_URL = "{new}"')
    )
    assert sync_notebooks.repository_url(tmp_path) == new

    rewritten = sync_notebooks.sync(tmp_path)

    copies = [tmp_path / "colab" / p.name for p in NOTEBOOKS]
    assert sorted(rewritten) == sorted([*copies, tmp_path / "README.md"])
    for path in copies:
        assert f'%pip install -q "trax_sl @ git+{new}"' in _install_block(path)
    readme = (tmp_path / "README.md").read_text()
    for path in copies:
        assert sync_notebooks.colab_url(new, path.stem) in readme
    for path in [*copies, tmp_path / "README.md"]:
        assert URL not in path.read_text(), path.name
    assert sync_notebooks.sync(tmp_path, write=False) == []


@pytest.mark.parametrize(
    "url",
    [
        "https://github.com/<org>/trax_sl",  # the placeholder the notebooks used to carry
        "https://github.com/trax-sl/trax_sl/",
        "https://github.com/trax-sl/trax_sl.git",
        "https://gitlab.com/trax-sl/trax_sl",
        "git@github.com:trax-sl/trax_sl",
    ],
)
def test_an_address_colab_cannot_open_is_refused(url):
    with pytest.raises(ValueError, match="REPOSITORY_URL: expected https://github.com/<owner>/<repo>"):
        sync_notebooks.pip_requirement(url)
