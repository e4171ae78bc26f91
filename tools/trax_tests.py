"""Runs Trax's own unit tests against trax_sl, with only the imports renamed.

The measure of "Trax code runs as written": each chosen `trax/**/*_test.py` file is read from a
Trax git snapshot, its `trax` imports are rewritten mechanically to `trax_sl`, and the file runs
under pytest in its own subprocess (JAX on the CPU, JAX's default rank promotion, as Trax's tests
run). The tool prints a Markdown table (file, passed, failed, errored, skipped, unfair, total) and
writes one line per failing test, the exception's type and first message line, to
`<out_dir>/failures.md`.

    python tools/trax_tests.py --out_dir /tmp/trax_tests                  # the issue's modules
    python tools/trax_tests.py --out_dir /tmp/tt 'trax/layers/core_test.py' 'trax/models/*_test.py'

Fairness. What differs only because the tests run outside Trax is fixed here, not counted:
  * a module that moved (`trax.models.reformer.reformer` is `trax_sl.models.reformer` if that is
    where trax_sl keeps it) resolves to its trax_sl home: same top package, same module name;
  * the test's `testdata/` folder and Trax's gin configs (with `trax.` names renamed) are
    extracted next to it, at the same relative paths;
  * Trax's test-only helper `trax.test_utils` (absl flag parsing under pytest) and, where
    TensorFlow is absent, `tf.test.TestCase` used only as a base class (`from tensorflow import
    test`) are replaced by small stand-ins (`--no_tf_test_shim` turns the latter off);
  * Trax's test-only packages the venv lacks (e.g. `parameterized`) may be installed into
    `<out_dir>/harness/site` (`pip install --target ...`), which is on the tests' path;
  * tests Trax's own CI deselects (oss_scripts/oss_tests.sh) are deselected.
A test that fails because it needs something outside trax_sl (TensorFlow, t5, gym, a TFDS
download, the network, a TPU) counts as 'unfair: needs X', decided from the failure's text, never
guessed from the file. Everything else, a missing trax_sl module or name included, is a failure.

Rerunning a subset into the same out_dir replaces those files' results; `--summarize_only`
rebuilds the table and failures.md from all recorded results without running anything.
"""

from __future__ import annotations

import argparse
import ast
import collections
import fnmatch
import importlib.util
import io
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
import tokenize

DEFAULT_TRAX_REPO = "/work/.mirror/google+trax/repo"

# The modules the issue names (globs over the snapshot's file list).
DEFAULT_TESTS = [
    "trax/layers/*_test.py",
    "trax/layers/research/*_test.py",
    "trax/models/transformer_test.py",
    "trax/models/rnn_test.py",
    "trax/models/mlp_test.py",
    "trax/models/reformer/reformer_test.py",
    "trax/models/research/terraformer_test.py",
    "trax/models/research/configurable_transformer_test.py",
    "trax/models/research/rezero_test.py",
    "trax/models/research/layerdrop_transformer_test.py",
    "trax/models/resnet_test.py",
    "trax/models/atari_cnn_test.py",
    "trax/models/neural_gpu_test.py",
    "trax/models/rl_test.py",
    "trax/supervised/*_test.py",
    "trax/optimizers/*_test.py",
    "trax/data/inputs_test.py",
    "trax/data/tf_inputs_test.py",
]

# Tests Trax's own CI (oss_scripts/oss_tests.sh) deselects.
TRAX_CI_DESELECTED = {
    "trax/layers/acceleration_test.py": [
        "AccelerationTest::test_chunk_grad_memory",
        "AccelerationTest::test_chunk_memory",
    ],
}

# Trax modules that are test scaffolding, not library: they map to the harness's stand-ins.
HARNESS_MODULES = {"trax.test_utils": "trax_tests_harness.trax_test_utils"}
TF_TEST_IMPORTS = {"tensorflow", "tensorflow.compat.v1", "tensorflow.compat.v2"}

# ---------------------------------------------------------------------------------------------
# Import rewriting (pure string transformations).


def resolve_module(name, sl_modules):
    """trax_sl's module for Trax module `name` ('trax.a.b.c'), by layout; the direct rename if none.

    The direct rename `trax_sl.a.b.c` wins; otherwise a trax_sl module under the same top package
    with the same last name (`trax_sl.a.c`, `trax_sl.a.x.c`), the shallowest if several.
    """
    if name in HARNESS_MODULES:
        return HARNESS_MODULES[name]
    parts = name.split(".")
    direct = ".".join(["trax_sl", *parts[1:]])
    if direct in sl_modules or len(parts) < 3:
        return direct
    head, leaf = parts[1], parts[-1]
    moved = sorted(
        (m for m in sl_modules if m.startswith(f"trax_sl.{head}.") and m.rsplit(".", 1)[-1] == leaf),
        key=lambda m: (m.count("."), m),
    )
    return moved[0] if moved else direct


def _split_module(dotted):
    parent, _, leaf = dotted.rpartition(".")
    return parent, leaf


def _import_module_as(module, alias):
    """`from parent import leaf [as alias]` (or `import module as alias` at the top level)."""
    parent, leaf = _split_module(module)
    if not parent:
        return f"import {module}" + ("" if alias == module else f" as {alias}")
    return f"from {parent} import {leaf}" + ("" if alias == leaf else f" as {alias}")


def _rewrite_import_node(node, trax_modules, sl_modules, tf_test_shim):
    """The replacement text for one Import/ImportFrom node, or None to leave it."""
    if isinstance(node, ast.Import):
        out, changed = [], False
        for a in node.names:
            if a.name == "trax" or a.name.startswith("trax."):
                changed = True
                resolved = resolve_module(a.name, sl_modules)
                if a.name == "trax":
                    out.append("import trax_sl" + (f" as {a.asname}" if a.asname else " as trax"))
                elif a.asname:
                    out.append(_import_module_as(resolved, a.asname))
                else:  # `import trax.x.y` binds `trax`; the submodule must be loaded.
                    out.append(f"import {resolved}")
                    out.append("import trax_sl as trax")
            else:
                out.append(f"import {a.name}" + (f" as {a.asname}" if a.asname else ""))
        return "; ".join(out) if changed else None
    if node.level or node.module is None:
        return None
    module = node.module
    if tf_test_shim and module in TF_TEST_IMPORTS and [a.name for a in node.names] == ["test"]:
        alias = node.names[0].asname or "test"
        return f"from trax_tests_harness import tf_test as {alias}"
    if not (module == "trax" or module.startswith("trax.")):
        return None
    out, attrs = [], []
    for a in node.names:
        alias = a.asname or a.name
        full = f"{module}.{a.name}"
        if full in trax_modules or full in HARNESS_MODULES:
            out.append(_import_module_as(resolve_module(full, sl_modules), alias))
        else:
            attrs.append(a.name + (f" as {a.asname}" if a.asname else ""))
    if attrs:
        out.insert(0, f"from {resolve_module(module, sl_modules)} import {', '.join(attrs)}")
    return "; ".join(out)


def rewrite_gin(text, trax_modules, sl_modules):
    """A gin config's `import trax.x` lines resolved, and its `trax.` references renamed."""

    def one_line(line):
        m = re.match(r"(\s*import\s+)(trax(?:\.\w+)*)(.*)\Z", line, re.DOTALL)
        if m:
            return m.group(1) + resolve_module(m.group(2), sl_modules) + m.group(3)
        return re.sub(r"(?<![\w.])trax\.", "trax_sl.", line)

    return "".join(one_line(line) for line in text.splitlines(keepends=True))


def _rewrite_dotted(dotted, trax_modules, sl_modules):
    """'trax.a.b.attr' with its longest Trax-module prefix resolved in trax_sl."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix == "trax" or prefix in trax_modules:
            return ".".join([resolve_module(prefix, sl_modules), *parts[n:]])
    return dotted


def _offsets(source):
    starts, pos = [0], 0
    for line in source.splitlines(keepends=True):
        pos += len(line)
        starts.append(pos)
    return starts


def rewrite_imports(source, trax_modules, sl_modules, tf_test_shim=False):
    """Trax test source with `trax` imports and references renamed to trax_sl.

    `trax_modules`: Trax's dotted module names (to tell `from trax.models import transformer`, a
    module, from `from trax.shapes import ShapeDtype`, a name); `sl_modules`: trax_sl's (for
    modules that moved). Line numbers are kept. Handles `import trax[.x] [as y]`, `from trax[.x]
    import y [as z], ...`, code references `trax.x.y` where `trax` is bound, dotted strings such
    as mock.patch targets ('trax.data.tf_inputs.f'), and gin text inside strings.
    """
    tree = ast.parse(source)
    starts = _offsets(source)
    lines = source.splitlines(keepends=True)

    def offset(row, col_bytes):  # ast columns are UTF-8 byte offsets
        line = lines[row - 1] if row - 1 < len(lines) else ""
        return starts[row - 1] + len(line.encode()[:col_bytes].decode(errors="ignore"))

    edits, import_spans = [], []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        begin, end = offset(node.lineno, node.col_offset), offset(node.end_lineno, node.end_col_offset)
        import_spans.append((begin, end))
        text = _rewrite_import_node(node, trax_modules, sl_modules, tf_test_shim)
        if text is not None:
            edits.append((begin, end, text + "\n" * (node.end_lineno - node.lineno)))

    def in_import(pos):
        return any(b <= pos < e for b, e in import_spans)

    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        begin = starts[tok.start[0] - 1] + tok.start[1]
        end = starts[tok.end[0] - 1] + tok.end[1]
        if in_import(begin):
            i += 1
            continue
        if tok.type == tokenize.STRING:
            try:
                value = ast.literal_eval(tok.string)
            except (ValueError, SyntaxError):
                value = None
            if isinstance(value, str) and re.fullmatch(r"trax(\.\w+)+", value):
                new = _rewrite_dotted(value, trax_modules, sl_modules)
                edits.append((begin, end, tok.string.replace(value, new)))
            elif isinstance(value, str) and re.search(r"@trax\.|^\s*import trax", value, re.MULTILINE):
                edits.append((begin, end, rewrite_gin(tok.string, trax_modules, sl_modules)))
        elif (
            tok.type == tokenize.NAME
            and tok.string == "trax"
            and (i == 0 or tokens[i - 1].string != ".")
            and i + 2 < len(tokens)
            and tokens[i + 1].string == "."
        ):
            j, names = i + 1, ["trax"]
            while j + 1 < len(tokens) and tokens[j].string == "." and tokens[j + 1].type == tokenize.NAME:
                names.append(tokens[j + 1].string)
                j += 2
            new = _rewrite_dotted(".".join(names), trax_modules, sl_modules)
            if new.startswith("trax_sl."):  # `trax` is bound to trax_sl by the rewritten import.
                new = "trax." + new[len("trax_sl.") :]
            last = tokens[j - 1]
            edits.append((begin, starts[last.end[0] - 1] + last.end[1], new))
            i = j
            continue
        i += 1

    out = source
    for begin, end, text in sorted(edits, reverse=True):
        out = out[:begin] + text + out[end:]
    ast.parse(out)  # A rewrite that breaks the syntax is a harness bug: fail loudly here.
    return out


# ---------------------------------------------------------------------------------------------
# The snapshot and trax_sl's layout.


def git_files(repo):
    out = subprocess.run(
        ["git", "-C", repo, "ls-tree", "-r", "--name-only", "HEAD", "trax"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.split()


def git_show(repo, path):
    """The file's bytes at HEAD, or None where the snapshot lacks the blob (its largest files)."""
    done = subprocess.run(["git", "-C", repo, "show", f"HEAD:{path}"], capture_output=True, check=False)
    if done.returncode and b"bad object" in done.stderr:
        return None
    done.check_returncode()
    return done.stdout


def trax_module_names(files):
    names = set()
    for f in files:
        if f.endswith(".py"):
            mod = f[: -len(".py")].replace("/", ".")
            parts = mod.split(".")
            names.update(".".join(parts[:k]) for k in range(1, len(parts) + 1) if parts[k - 1] != "__init__")
    return names


def trax_sl_module_names():
    spec = importlib.util.find_spec("trax_sl")
    root = pathlib.Path(next(iter(spec.submodule_search_locations)))
    names = set()
    for path in root.rglob("*.py"):
        rel = path.relative_to(root.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.add(".".join(parts))
    return names


def glob_match(path, pattern):
    """Shell-style match per path segment: `*` stays within a folder, `**` spans any number."""
    parts, pats = path.split("/"), pattern.split("/")
    if not pats:
        return not parts
    if pats[0] == "**":
        return any(glob_match("/".join(parts[k:]), "/".join(pats[1:])) for k in range(len(parts) + 1))
    if not parts or not parts[0] or not fnmatch.fnmatchcase(parts[0], pats[0]):
        return False
    return (
        len(pats) == 1
        and len(parts) == 1
        or len(pats) > 1
        and glob_match("/".join(parts[1:]), "/".join(pats[1:]))
    )


def select_tests(files, patterns):
    chosen = []
    for pattern in patterns:
        matched = sorted(f for f in files if glob_match(f, pattern) and f.endswith("_test.py"))
        if not matched:
            print(f"warning: no Trax test file matches {pattern!r}", file=sys.stderr)
        chosen += [f for f in matched if f not in chosen]
    return chosen


# ---------------------------------------------------------------------------------------------
# The harness's stand-ins and pytest plugin, written into out_dir/harness.

_TF_TEST = '''"""Stand-in for `tf.test` where TensorFlow is absent: the TestCase Trax tests use as a base."""
import numpy as np
from absl.testing import absltest

main = absltest.main


class TestCase(absltest.TestCase):
    """absltest.TestCase plus tf.test.TestCase's array assertions (TensorFlow's tolerances)."""

    def assertAllClose(self, a, b, rtol=1e-6, atol=1e-6, msg=None):  # noqa: N802
        if isinstance(a, dict):
            self.assertEqual(sorted(a), sorted(b), msg)
            for k in a:
                self.assertAllClose(a[k], b[k], rtol, atol, msg)
        elif isinstance(a, (list, tuple)) and not np.isscalar(a) and len(a) and not np.isscalar(a[0]):
            self.assertEqual(len(a), len(b), msg)
            for x, y in zip(a, b):
                self.assertAllClose(x, y, rtol, atol, msg)
        else:
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol, err_msg=msg or "")

    def assertAllEqual(self, a, b, msg=None):  # noqa: N802
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=msg or "")

    def assertNear(self, f1, f2, err, msg=None):  # noqa: N802
        self.assertLessEqual(abs(f1 - f2), err, msg)
'''

_TRAX_TEST_UTILS = '''"""Stand-in for Trax's test-only `trax.test_utils` (absl flags under pytest)."""
from absl import flags

FLAGS = flags.FLAGS


def ensure_flag(flag_str):
    if not FLAGS.is_parsed():
        FLAGS(["pytest"])
    assert getattr(FLAGS, flag_str)
'''

_PLUGIN = '''"""pytest plugin: one JSON line per test phase and per collection error, as they happen."""
import json
import os

import pytest

_OUT = os.environ["TRAX_TESTS_RESULTS"]


def _write(record):
    with open(_OUT, "a") as f:
        f.write(json.dumps(record) + "\\n")


def _first_line(exc):
    """'Type: first line', and the last line too where a long message only ends in its point."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()] or [""]
    text = lines[0] if len(lines) == 1 else f"{lines[0][:120]} ... {lines[-1][:160]}"
    return f"{type(exc).__name__}: {text}".rstrip(": ")


def _chain(exc):
    seen, out = set(), []
    while exc is not None and id(exc) not in seen and len(out) < 8:
        seen.add(id(exc))
        out.append(_first_line(exc))
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return out


def pytest_configure(config):
    # absl flags parsed with their defaults, as absltest.main would (pytest never parses them).
    from absl import flags
    from absl.testing import absltest  # noqa: F401  (defines test_tmpdir, test_srcdir)

    if not flags.FLAGS.is_parsed():
        flags.FLAGS(["pytest"])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if call.excinfo is not None and report.failed:
        report.user_properties.append(("chain", _chain(call.excinfo.value)))


def pytest_runtest_logreport(report):
    chain = dict(report.user_properties).get("chain", [])
    _write({
        "nodeid": report.nodeid, "when": report.when, "outcome": report.outcome,
        "xfail": hasattr(report, "wasxfail"), "chain": chain,
        "text": report.longreprtext[-20000:] if report.failed or report.skipped else "",
    })


def pytest_collectreport(report):
    if report.failed:
        _write({"nodeid": report.nodeid, "when": "collect", "outcome": "failed", "chain": [],
                "text": report.longreprtext[-20000:]})
'''


def write_harness(harness_dir):
    pkg = harness_dir / "trax_tests_harness"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text('"""The trax_tests tool\'s stand-ins."""\n')
    (pkg / "tf_test.py").write_text(_TF_TEST)
    (pkg / "trax_test_utils.py").write_text(_TRAX_TEST_UTILS)
    (harness_dir / "trax_tests_plugin.py").write_text(_PLUGIN)
    (harness_dir / "pytest.ini").write_text("[pytest]\naddopts =\n")


def extract(repo, files, test_paths, src_dir, trax_modules, sl_modules, tf_test_shim):
    """Writes the rewritten tests, their testdata and Trax's gin configs under src_dir.

    Returns the paths the snapshot lacks (absent blobs), for `unfair_need`.
    """
    wanted = set(test_paths)
    for t in test_paths:
        testdata = str(pathlib.PurePosixPath(t).parent / "testdata") + "/"
        wanted.update(f for f in files if f.startswith(testdata))
    wanted.update(f for f in files if f.startswith("trax/supervised/configs/") and f.endswith(".gin"))
    absent = []
    for f in sorted(wanted):
        dest = src_dir / f
        dest.parent.mkdir(parents=True, exist_ok=True)
        data = git_show(repo, f)
        if data is None:
            absent.append(f)
            continue
        if f in test_paths:
            data = rewrite_imports(data.decode(), trax_modules, sl_modules, tf_test_shim).encode()
        elif f.endswith(".gin"):
            data = rewrite_gin(data.decode(), trax_modules, sl_modules).encode()
        dest.write_bytes(data)
    return absent


# ---------------------------------------------------------------------------------------------
# Running and classifying.

# (pattern over a failure's text, what it needs). The first match decides.
UNFAIR = [
    (r"No module named '(tensorflow|tensorflow\.\w+)'", "tensorflow"),
    (r"No module named 'trax_sl\.tf_numpy", "tensorflow (trax.tf_numpy)"),
    (r"No module named 'tensorflow_text'", "tensorflow"),
    (r"got backend '(?:tensorflow-numpy|tf)'", "tensorflow (fastmath's tensorflow-numpy backend)"),
    (
        r"tfds' as_dataset needs it|requires? (?:tensorflow|TensorFlow)|TensorFlow is (?:not )?(?:installed|required)",
        "tensorflow",
    ),
    # Any other package that is not trax_sl (t5, gym, parameterized, ...): the environment lacks it.
    (r"No module named '(?!trax_sl\b|trax_tests_harness\b)(\w+)", None),
    # tfds registers most dataset builders only where TensorFlow imports, else must download them.
    (r"Dataset (\w+) not found", "tfds dataset {} (its builder needs TensorFlow, or a download)"),
    (
        r"download_and_prepare|DownloadError|DownloadConfig|dl_manager\.download",
        "tensorflow_datasets download",
    ),
    (
        (
            r"URLError|gaierror|Name or service not known|Temporary failure in name resolution|"
            r"Failed to establish a new connection|ConnectionRefused|Network is unreachable"
        ),
        "network",
    ),
    (r"\bTPU\b|platform 'tpu'|Unknown backend:? '?tpu", "TPU"),
    # Trax's tests compare arrays with lists through `==`, which the JAX trax_sl runs on refuses.
    (r"unsupported operand type\(s\) for ==: 'ArrayImpl' and 'list'", "an older JAX (array == list)"),
]


def unfair_need(text, absent=()):
    for path in absent:  # Testdata the snapshot lacks: the harness cannot supply it.
        if pathlib.PurePosixPath(path).name in text and re.search(r"FileNotFound|No such file", text):
            return f"testdata {path} (absent from the snapshot)"
    for pattern, need in UNFAIR:
        m = re.search(pattern, text)
        if m:
            return need.format(*m.groups()) if need else m.group(1)
    return None


def _last_error_line(text):
    """The exception line of a pytest report ('E   Type: message'), for collection errors."""
    found = [line[1:].strip() for line in text.splitlines() if line.startswith("E ")]
    typed = [line for line in found if re.match(r"[\w.]+(Error|Exception|Exit)\b", line)]
    return (typed or found or [text.strip().splitlines()[-1] if text.strip() else "?"])[-1]


def reason(record):
    chain = record.get("chain") or []
    if not chain:
        return _last_error_line(record.get("text", ""))[:300]
    top, root = chain[0], chain[-1]
    if top == root or root.partition(": ")[2][:60] in top:  # The top message already quotes its cause.
        return top[:300]
    return f"{top}  <-  {root}"[:300]


def static_test_count(source):
    """How many tests a file defines (parameterized cases counted where literal): for files that
    fail before pytest can collect them."""
    tree = ast.parse(source)
    total = 0
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        for fn in (n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test")):
            count = 1
            for dec in fn.decorator_list:
                if not isinstance(dec, ast.Call):
                    continue
                name = ast.unparse(dec.func)
                if name.endswith(("parameters", "named_parameters")):
                    if len(dec.args) > 1:
                        count *= len(dec.args)
                    elif dec.args and isinstance(dec.args[0], (ast.List, ast.Tuple)):
                        count *= len(dec.args[0].elts)
                elif name.endswith("product"):
                    for kw in dec.keywords:
                        if isinstance(kw.value, (ast.List, ast.Tuple)):
                            count *= len(kw.value.elts)
            total += count
    return total


def run_file(test, src_dir, harness_dir, results_dir, timeout):
    """Runs one test file with pytest in a subprocess; returns (records, wall seconds, timed_out)."""
    results = results_dir / (test.replace("/", "__") + ".jsonl")
    results.unlink(missing_ok=True)
    tmp = results_dir / "tmp" / test.replace("/", "__")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    env = dict(os.environ)
    env.pop("JAX_NUMPY_RANK_PROMOTION", None)  # Trax's tests run with JAX's default, 'allow'.
    env.update(
        JAX_PLATFORMS="cpu",
        TRAX_TESTS_RESULTS=str(results),
        TEST_TMPDIR=str(tmp),
        PYTHONPATH=os.pathsep.join(
            [str(harness_dir), str(harness_dir / "site"), env.get("PYTHONPATH", "")]
        ).rstrip(os.pathsep),
        PYTHONDONTWRITEBYTECODE="1",
    )
    cmd = [
        sys.executable, "-m", "pytest", test, "-q", "-p", "trax_tests_plugin", "-p", "no:cacheprovider",
        "-c", str(harness_dir / "pytest.ini"), "--rootdir", str(src_dir), "--import-mode=importlib",
        "--tb=short", "-W", "ignore::DeprecationWarning",
    ]  # fmt: skip
    for case in TRAX_CI_DESELECTED.get(test, []):
        cmd += ["--deselect", f"{test}::{case}"]
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=src_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    timed_out = False
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
    (results_dir / (test.replace("/", "__") + ".log")).write_bytes(output or b"")
    wall = time.monotonic() - start
    meta = results_dir / (test.replace("/", "__") + ".meta.json")
    meta.write_text(json.dumps({"wall_s": wall, "timed_out": timed_out, "timeout_s": timeout}))
    return read_records(test, results_dir)


def read_records(test, results_dir):
    """A file's recorded test phases, wall seconds and whether it timed out (from a run's results/)."""
    name = test.replace("/", "__")
    results, meta = results_dir / (name + ".jsonl"), results_dir / (name + ".meta.json")
    records = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    info = json.loads(meta.read_text()) if meta.exists() else {"wall_s": 0.0, "timed_out": False}
    return records, info["wall_s"], info["timed_out"]


def summarize(test, records, source, timed_out, timeout, absent=()):
    """Per-test outcomes for one file: (row dict, [(nodeid, category, reason)])."""
    per_test = collections.OrderedDict()
    collect_errors = []
    for r in records:
        if r["when"] == "collect":
            collect_errors.append(r)
            continue
        per_test.setdefault(r["nodeid"], []).append(r)
    row = collections.Counter()
    failures = []
    for nodeid, phases in per_test.items():
        bad = [p for p in phases if p["outcome"] == "failed"]
        if any(p["outcome"] == "skipped" for p in phases) and not bad:
            row["skipped"] += 1
            continue
        if not bad:
            row["passed"] += 1
            continue
        p = bad[0]
        need = unfair_need(p.get("text", "") + "\n" + "\n".join(p.get("chain", [])), absent)
        category = f"unfair: needs {need}" if need else ("failed" if p["when"] == "call" else "errored")
        row["unfair" if need else category] += 1
        failures.append((nodeid.split("::", 1)[-1], category, reason(p)))
    notes = []
    if collect_errors:
        r = collect_errors[0]
        n = max(static_test_count(source) - sum(row.values()), 1)
        need = unfair_need(r.get("text", ""), absent)
        row["unfair" if need else "errored"] += n
        category = f"unfair: needs {need}" if need else "errored"
        failures.append((f"<collection, {n} tests>", category, reason(r)))
        notes.append(f"import/collection failed ({n} tests counted from the source)")
    if timed_out:
        missing = max(static_test_count(source) - sum(row.values()), 0)
        row["errored"] += missing
        failures.append(
            (f"<timeout, {missing} tests not run>", "errored", f"file timed out after {timeout}s")
        )
        notes.append(f"timed out after {timeout}s; {missing} tests not run counted as errored")
    elif not records:
        notes.append("no results recorded (see the .log)")
    if test in TRAX_CI_DESELECTED:
        notes.append(f"{len(TRAX_CI_DESELECTED[test])} tests deselected as in Trax's CI")
    row["total"] = sum(row[k] for k in ("passed", "failed", "errored", "skipped", "unfair"))
    return row, failures, notes


COLUMNS = ["passed", "failed", "errored", "skipped", "unfair", "total"]


def markdown_table(rows):
    lines = ["| file | " + " | ".join(COLUMNS) + " | notes |", "|---" * (len(COLUMNS) + 2) + "|"]
    totals = collections.Counter()
    for test, row, notes, wall in rows:
        totals.update({k: row[k] for k in COLUMNS})
        cells = " | ".join(str(row[k]) for k in COLUMNS)
        lines.append(f"| {test} | {cells} | {'; '.join(notes)}{'; ' if notes else ''}{wall:.0f}s |")
    lines.append("| **all** | " + " | ".join(f"**{totals[k]}**" for k in COLUMNS) + " | |")
    return "\n".join(lines)


def failures_markdown(all_failures):
    out = ["# Trax tests against trax_sl: failures", ""]
    counts = collections.Counter((cat, re.sub(r"\d+", "N", why)[:160]) for _, _, cat, why in all_failures)
    out += ["## Most common reasons (digits as N)", "", "| count | category | reason |", "|---|---|---|"]
    out += [f"| {n} | {cat} | `{why}` |" for (cat, why), n in counts.most_common(60)]
    out += ["", "## Per test", ""]
    test_file = None
    for test, case, cat, why in all_failures:
        if test != test_file:
            out += ["", f"### {test}", ""]
            test_file = test
        out.append(f"- `{case}` [{cat}] {why}")
    return "\n".join(out) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("tests", nargs="*", help="Trax test files or globs (default: the issue's modules)")
    parser.add_argument("--trax_repo", default=DEFAULT_TRAX_REPO, help="bare git snapshot of Trax")
    parser.add_argument("--out_dir", required=True, help="scratch directory (chosen files are rewritten)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per test file")
    parser.add_argument(
        "--no_tf_test_shim", action="store_true", help="leave `from tensorflow import test` as written"
    )
    parser.add_argument(
        "--summarize_only",
        action="store_true",
        help="rebuild the table and failures.md from out_dir's last run, running nothing",
    )
    args = parser.parse_args(argv)

    out_dir = pathlib.Path(args.out_dir).resolve()
    src_dir, harness_dir, results_dir = out_dir / "src", out_dir / "harness", out_dir / "results"
    files = git_files(args.trax_repo)
    tests = select_tests(files, args.tests or DEFAULT_TESTS)
    if args.summarize_only:
        absent = [f for f in files if "/testdata/" in f and git_show(args.trax_repo, f) is None]
        tests = [t for t in tests if (src_dir / t).exists()]
    else:
        for d in (src_dir, harness_dir, results_dir):  # Other files' results stay, for --summarize_only.
            d.mkdir(parents=True, exist_ok=True)
        write_harness(harness_dir)
        trax_modules, sl_modules = trax_module_names(files), trax_sl_module_names()
        tf_test_shim = not args.no_tf_test_shim and importlib.util.find_spec("tensorflow") is None
        absent = extract(args.trax_repo, files, tests, src_dir, trax_modules, sl_modules, tf_test_shim)
        for path in absent:
            print(f"note: the snapshot lacks {path}; tests that need it count as unfair", file=sys.stderr)

    rows, all_failures = [], []
    for test in tests:
        if args.summarize_only:
            records, wall, timed_out = read_records(test, results_dir)
        else:
            records, wall, timed_out = run_file(test, src_dir, harness_dir, results_dir, args.timeout)
        source = (src_dir / test).read_text()
        row, failures, notes = summarize(test, records, source, timed_out, args.timeout, absent)
        rows.append((test, row, notes, wall))
        all_failures += [(test, *f) for f in failures]
        print(f"{test}: " + ", ".join(f"{k} {row[k]}" for k in COLUMNS) + f" ({wall:.0f}s)", file=sys.stderr)
        (out_dir / "failures.md").write_text(failures_markdown(all_failures))
    table = markdown_table(rows)
    (out_dir / "results.md").write_text(table + "\n")
    print(table)
    print(f"\nPer-failure reasons: {out_dir / 'failures.md'}; pytest logs: {results_dir}", file=sys.stderr)


if __name__ == "__main__":
    main()
