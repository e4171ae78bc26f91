"""Writes setup.py's REPOSITORY_URL into the colab/ notebooks' install cells and the README's Colab links.

The repository's address lives in one place, `REPOSITORY_URL` in setup.py. A notebook opened in
Colab has no checkout to read it from, so its install cell holds the address as a literal; this
script writes that literal, and the README's "Open in Colab" list, from setup.py. Change the
constant, run the script, and everything follows; tests/test_colab_install.py fails while anything
disagrees.

    python tools/sync_notebooks.py          # rewrite the files that disagree with setup.py
    python tools/sync_notebooks.py --check  # name them and change nothing (exit 1 if any)

A notebook's install block is its first code cell from the line starting with `INSTALL_COMMENT` to
the end of the cell (colab/devices.ipynb sets XLA flags above it).
"""

from __future__ import annotations

import argparse
import ast
import pathlib
import re
import sys

import nbformat

ROOT = pathlib.Path(__file__).resolve().parent.parent
INSTALL_COMMENT = "# Install trax_sl if this runtime lacks it"
README_START = "<!-- notebooks: tools/sync_notebooks.py writes this list from setup.py's REPOSITORY_URL -->"
README_END = "<!-- /notebooks -->"
COLAB_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
# The branch Colab opens the notebooks from.
BRANCH = "main"
# The README lists these first, in this order; any other notebook follows, alphabetically.
READING_ORDER = ("intro", "streaming", "training", "devices", "sequence_layers_intro")

_GITHUB_URL = re.compile(r"https://github\.com/(?P<owner>[A-Za-z0-9-]+)/(?P<repo>[A-Za-z0-9._-]+)")


def repository_url(root: pathlib.Path = ROOT) -> str:
    """The string assigned to `REPOSITORY_URL` at the top level of `root`/setup.py."""
    tree = ast.parse((root / "setup.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and [getattr(t, "id", None) for t in node.targets] == ["REPOSITORY_URL"]
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            return node.value.value
    raise ValueError(f"{root / 'setup.py'}: expected a top-level REPOSITORY_URL = '<address>', found none")


def github_owner_and_repo(url: str) -> tuple[str, str]:
    """`('owner', 'repo')` of `https://github.com/owner/repo`: Colab opens notebooks from GitHub only."""
    match = _GITHUB_URL.fullmatch(url)
    if match is None or match["repo"].endswith(".git"):
        raise ValueError(
            f"REPOSITORY_URL: expected https://github.com/<owner>/<repo> (no .git, no trailing /), got {url!r}"
        )
    return match["owner"], match["repo"]


def colab_url(url: str, notebook: str) -> str:
    """The address that opens colab/`notebook`.ipynb of the repository at `url` in Colab."""
    owner, repo = github_owner_and_repo(url)
    return f"https://colab.research.google.com/github/{owner}/{repo}/blob/{BRANCH}/colab/{notebook}.ipynb"


def pip_requirement(url: str) -> str:
    """What Colab's install cell passes to pip: trax_sl from the repository at `url`."""
    github_owner_and_repo(url)
    return f"trax_sl @ git+{url}"


def install_block(url: str) -> str:
    """The install cell's code: nothing if trax_sl imports, else the checkout it runs in, else `url`."""
    return f'''{INSTALL_COMMENT}: from the checkout this notebook is opened in, else
# (a fresh Colab runtime) from the repository. tools/sync_notebooks.py writes the address from setup.py.
try:
    import trax_sl
except ImportError:
    import importlib
    import pathlib
    import sys

    here = pathlib.Path.cwd()
    checkout = next(
        (d for d in [here, *here.parents] if (d / "setup.py").is_file() and (d / "trax_sl").is_dir()),
        None,
    )
    if checkout is None:
        %pip install -q "{pip_requirement(url)}"
    else:
        %pip install -q -e "{{checkout}}"
        # A running kernel reads the .pth of an editable install only when it restarts.
        sys.path.insert(0, str(checkout))
    importlib.invalidate_caches()
    import trax_sl'''


def install_block_of(source: str, name: str = "the notebook") -> str:
    """The install block in the source of a notebook's first code cell."""
    lines = source.split("\n")
    starts = [i for i, line in enumerate(lines) if line.startswith(INSTALL_COMMENT)]
    if not starts:
        raise ValueError(
            f"{name}: its first code cell has no line starting with {INSTALL_COMMENT!r}; "
            "end that cell with an install block (copy one from colab/intro.ipynb)"
        )
    return "\n".join(lines[starts[0] :])


def _first_code_cell(notebook):
    return next(cell for cell in notebook.cells if cell.cell_type == "code")


def notebooks(root: pathlib.Path = ROOT) -> list[pathlib.Path]:
    """colab/*.ipynb in the README's order."""
    paths = sorted((root / "colab").glob("*.ipynb"))
    rank = {name: i for i, name in enumerate(READING_ORDER)}
    return sorted(paths, key=lambda p: (rank.get(p.stem, len(rank)), p.stem))


def _title(notebook) -> str:
    for cell in notebook.cells:
        if cell.cell_type == "markdown" and cell.source.startswith("# "):
            return cell.source.split("\n", 1)[0][2:].strip()
    raise ValueError("expected a markdown cell opening with a '# Title' line")


def readme_block(url: str, root: pathlib.Path = ROOT) -> str:
    """The README's notebook list, markers included: one line per notebook, its title and Colab link."""
    lines = [README_START]
    for path in notebooks(root):
        title = _title(nbformat.read(path, as_version=4))
        lines.append(
            f"- [![Open in Colab]({COLAB_BADGE})]({colab_url(url, path.stem)}) "
            f"[`{path.name}`](colab/{path.name}): {title}"
        )
    lines.append(README_END)
    return "\n".join(lines)


def _synced_notebook(path: pathlib.Path, url: str) -> str:
    notebook = nbformat.read(path, as_version=4)
    cell = _first_code_cell(notebook)
    block = install_block_of(cell.source, path.name)
    cell.source = cell.source[: len(cell.source) - len(block)] + install_block(url)
    return nbformat.writes(notebook) + "\n"


def _synced_readme(path: pathlib.Path, url: str, root: pathlib.Path) -> str:
    text = path.read_text(encoding="utf-8")
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"{path}: expected the lines {README_START!r} and {README_END!r}, in that order")
    return text[:start] + readme_block(url, root) + text[end + len(README_END) :]


def sync(root: pathlib.Path = ROOT, write: bool = True) -> list[pathlib.Path]:
    """The notebooks and README under `root` that disagree with its setup.py; rewritten if `write`."""
    url = repository_url(root)
    readme = root / "README.md"
    wanted = {path: _synced_notebook(path, url) for path in notebooks(root)}
    wanted[readme] = _synced_readme(readme, url, root)
    stale = [path for path, text in wanted.items() if path.read_text(encoding="utf-8") != text]
    if write:
        for path in stale:
            path.write_text(wanted[path], encoding="utf-8")
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file disagrees")
    args = parser.parse_args(argv)
    stale = sync(write=not args.check)
    for path in stale:
        print(f"{'disagrees with' if args.check else 'rewritten from'} setup.py: {path.relative_to(ROOT)}")
    return int(args.check and bool(stale))


if __name__ == "__main__":
    sys.exit(main())
