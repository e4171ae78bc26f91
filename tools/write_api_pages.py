"""Writes the API reference's pages (docs/api/) from the package tree, one page per documented package.

Each page renders, with mkdocstrings, every public module of its package
(`trax_sl.layers` module by module, its `combinators`, `streaming` and
`research` subpackages on pages of their own). A module added to a package
appears on its page once this script is run; tests/test_docs.py fails while
the pages on disk differ from what it writes.

    python tools/write_api_pages.py          # rewrite the pages that differ
    python tools/write_api_pages.py --check  # name them and change nothing (exit 1 if any)
"""

from __future__ import annotations

import argparse
import pathlib
import pkgutil
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
API_DIR = ROOT / "docs" / "api"

# (package, one line saying what it holds), in the order the site lists them.
PACKAGES = (
    ("trax_sl", "The top-level modules: `Sequence`, shapes, meshes, partitioning rules, the trainer."),
    ("trax_sl.layers", "Trax's layers (`import trax_sl.layers as tl`), one section per module."),
    ("trax_sl.layers.combinators", "Serial, Parallel, Branch, Residual, Scan, Cond and the stack operations."),
    ("trax_sl.layers.streaming", "The streaming contract: specs, predict-mode checks, stream state."),
    ("trax_sl.layers.research", "Trax's research layers."),
    ("trax_sl.sl", "SequenceLayers' names and config fields (`from trax_sl import sl`)."),
    ("trax_sl.models", "Trax's models and the streaming Conformer."),
    ("trax_sl.data", "Input pipelines: Trax's streams, Grain, tokenizers, synthetic data."),
    ("trax_sl.optimizers", "Trax's optimizers and trainers."),
    ("trax_sl.supervised", "Training loops, tasks, checkpoints, decoding."),
    ("trax_sl.export", "Exporting streaming models (`jax.export`)."),
)


def public_modules(package: str) -> list[str]:
    """The package's modules not named with a leading underscore, by name."""
    path = ROOT.joinpath(*package.split("."))
    names = sorted(m.name for m in pkgutil.iter_modules([str(path)]) if not m.ispkg and not m.name.startswith("_"))
    return [f"{package}.{name}" for name in names if name != "__main__"]


def page(package: str, summary: str) -> str:
    sections = [f"## `{module}`\n\n::: {module}\n    options:\n      heading_level: 3\n" for module in public_modules(package)]
    return f"# `{package}`\n\n{summary}\n\n" + "\n".join(sections)


def pages() -> dict[pathlib.Path, str]:
    return {API_DIR / f"{_page_name(package)}.md": page(package, summary) for package, summary in PACKAGES}


def _page_name(package: str) -> str:
    return "core" if package == "trax_sl" else package.removeprefix("trax_sl.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only name the pages that differ")
    args = parser.parse_args()
    wanted = pages()
    stale = [path for path, text in wanted.items() if not path.exists() or path.read_text() != text]
    extra = [path for path in API_DIR.glob("*.md") if path not in wanted]
    if args.check:
        for path in stale + extra:
            print(f"stale: {path.relative_to(ROOT)}")
        return 1 if stale or extra else 0
    API_DIR.mkdir(parents=True, exist_ok=True)
    for path in stale:
        path.write_text(wanted[path])
        print(f"wrote {path.relative_to(ROOT)}")
    for path in extra:
        path.unlink()
        print(f"removed {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
