"""Trains Trax's own gin configs for 3 steps under trax_sl, with `trax.` renamed and data offline.

The measure of "Trax configs run as written": each `trax/supervised/configs/*.gin` of a Trax git
snapshot (and the configs it includes, inlined in place) is rewritten mechanically:
  * `trax.` is renamed `trax_sl.` (`import trax.models`, `@trax.layers.Relu`, ...);
  * the bindings that need a download (`batcher.*`, `data_streams.*`, `tf_inputs.*`, TFDS
    pipelines, t2t problems, `make_inputs.*`, the data preprocessors, `train.inputs`) are
    commented out, and an offline input of the matching kind is bound instead, decided from the
    config: a token language model gets `random_inputs` of shape (2, L) over its vocab_size; an
    encoder-decoder gets `sequence_copy_inputs` (3-tuples, the targets copied into the loss) over
    its input vocab; a token classifier (TransformerEncoder) gets random tokens and labels; an
    image classifier gets `random_inputs` of the data set's image shape and its classes; an
    image or video language model gets random bytes of its full flattened length. L is the
    config's length capped at 64, raised to a multiple of the config's chunk lengths and shorten
    factors; batches hold 2 examples. Configs already on an offline generator
    (`sequence_copy_inputs`, `addition_inputs`, ...) keep it, with batch_size 2;
  * `--config` bindings make the run exactly 3 training steps with one 1-batch evaluation and a
    checkpoint at step 3; with `--shrink` the model's d_model, d_ff, n_layers, n_heads (and the
    like, where its trax_sl signature has them) are overridden by tiny values.
Each config then runs as `python -m trax_sl.trainer --config_file=<rewritten> --config=... ` in its
own subprocess (JAX on the CPU) with a timeout, and is classified: 'ran 3 steps' (metrics.jsonl
records step 3), 'needs t5/TF/gym/...' (decided from the config's imports or the error's text),
'too big for this CPU: <what>' (timeout or killed), or 'fails: <the first line of the error>'.

    python tools/trax_configs.py --out_dir /tmp/trax_configs --shrink
    python tools/trax_configs.py --out_dir /tmp/trax_configs 'transformer_lm1b*' --timeout 300

Outputs under `--out_dir/<shrink|full>`: `src/` (the extracted original configs), `gin/` (the
rewritten ones, each a single file), `runs/<config>/` (output_dir and `log.txt`), `results.json`
and `results.md` (the table; `--out_dir/results.md` joins both columns when both were run).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time

DEFAULT_TRAX_REPO = "/work/.mirror/google+trax/repo"
CONFIG_DIR = "trax/supervised/configs"
STEPS = 3
MAX_LENGTH = 64
BATCH_SIZE = 2

# Configurables (their last name) of Trax's data pipelines: bindings to them need a download, or
# only feed one, and are commented out.
DATA_CONFIGURABLES = frozenset(
    """
    batcher data_streams make_inputs make_additional_stream make_parallel_stream TFDS
    Tokenize Detokenize SentencePieceTokenize PadToLength Batch TruncateToLength Shuffle
    FilterEmptyExamples FilterByLength AddLossWeights AppendValue ConvertToUnicode
    ConcatenateToLMInput BucketByLength CountAndSkip Serial Log lm1b_preprocess wmt_preprocess
    wmt_concat_preprocess c4_preprocess c4_bare_preprocess_fn squeeze_targets_preprocess
    downsampled_imagenet_flatten_bare_preprocess bair_robot_pushing_preprocess cifar10_augmentation_preprocess
    cifar10_augmentation_flatten_preprocess cifar10_no_augmentation_preprocess
    lm_token_preprocessing generic_text_dataset_preprocess_fn filter_dataset_on_len
    truncate_dataset_on_len pad_dataset_to_length add_eos_to_output_features
    generate_sequential_chunks mask_random_tokens CreateBertInputs BertGlueTrainStream
    BertGlueEvalStream BertNextSentencePredictionInputs CorpusToRandomChunks MLM PrefixLM
    unsupervised select_random_chunk split_tokens denoise random_spans_helper
    reduce_concat_tokens random_spans_tokens_length random_spans_noise_mask
    noise_span_to_unique_sentinel nonnoise_span_to_unique_sentinel rekey squad bair_robot_pushing_hparams get_t5_preprocessor_by_name
    """.split()  # noqa: SIM905
)
# Module prefixes (before the configurable's name) of data configurables.
DATA_MODULES = ("data", "trax.data", "trax_sl.data", "tf_inputs", "inputs", "preprocessors", "t5")
# Trax's offline generators: a config on one of these keeps it.
OFFLINE_INPUTS = (
    "sequence_copy_inputs",
    "simple_sequence_copy_inputs",
    "addition_inputs",
    "random_inputs",
    "sine_inputs",
)
# Data set name -> (image shape, classes) of the image data sets Trax's configs use.
IMAGES = {
    "mnist": ((28, 28, 1), 10),
    "cifar10": ((32, 32, 3), 10),
    "downsampled_imagenet/32x32": ((32, 32, 3), 1000),
    "downsampled_imagenet/64x64": ((64, 64, 3), 1000),
    "imagenet": ((224, 224, 3), 1000),
    "t2t_video_bair_robot_pushing": ((64, 64, 3), 256),
}
# --shrink: tiny values for the model's size parameters (only those its signature has).
SHRINK = {
    "d_model": 16,
    "d_ff": 32,
    "n_layers": 1,
    "n_heads": 2,
    "n_encoder_layers": 1,
    "n_decoder_layers": 1,
    "d_attention_key": 8,
    "d_attention_value": 8,
    "d_hidden": 8,
    "widen_factor": 1,
    "n_blocks": 1,
    "layer_widths": (16,),
    "vanilla_layers": (1, 1),
    "n_attention_heads": 2,
    "d_embed": 16,
}


# --- Reading gin text ------------------------------------------------------------------------------


def strip_comment(line: str) -> str:
    """The line without its `#` comment (a `#` inside a string literal stays)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#":
            return line[:i]
    return line


def statements(text: str) -> list[tuple[int, int, str]]:
    """Splits gin text into statements: (first line, last line, text without comments).

    A statement goes on while brackets are open or a line ends with a backslash; blank and
    comment-only lines are not statements.
    """
    lines = text.split("\n")
    result = []
    start, depth, parts = None, 0, []
    for i, raw in enumerate(lines):
        code = strip_comment(raw).rstrip()
        if start is None:
            if not code.strip():
                continue
            start, depth, parts = i, 0, []
        parts.append(code.rstrip("\\").strip())
        depth += sum(code.count(c) for c in "([{") - sum(code.count(c) for c in ")]}")
        if depth > 0 or code.endswith("\\"):
            continue
        result.append((start, i, " ".join(p for p in parts if p)))
        start = None
    if start is not None:
        result.append((start, len(lines) - 1, " ".join(p for p in parts if p)))
    return result


def split_binding(statement: str) -> tuple[str, str, str, str] | None:
    """`[scope/]configurable.param = value` -> (scope, configurable, param, value); None otherwise.

    A macro (`name = value`) gives configurable ''. Imports and includes give None.
    """
    m = re.match(r"^([A-Za-z_][\w./]*)\s*=\s*(.*)$", statement, re.DOTALL)
    if not m:
        return None
    key, value = m.group(1), m.group(2).strip()
    scope, _, selector = key.rpartition("/")
    configurable, _, param = selector.rpartition(".")
    return scope, configurable, param, value


def is_data_binding(configurable: str, param: str) -> bool:
    """Whether a binding belongs to a data pipeline that needs a download (or feeds one)."""
    if configurable == "train" and param == "inputs":
        return True
    module, _, name = configurable.rpartition(".")
    if name in DATA_CONFIGURABLES:
        return True
    return bool(module) and module.startswith(DATA_MODULES)


def inline_includes(name: str, read, seen: tuple[str, ...] = ()) -> str:
    """The config `name` with each `include 'x.gin'` replaced by x.gin's (inlined) text."""
    if name in seen:
        raise ValueError(f"include cycle: {' -> '.join((*seen, name))}")
    out = []
    for line in read(name).split("\n"):
        m = re.match(r"""^\s*include\s+['"]([^'"]+)['"]\s*$""", strip_comment(line))
        if m:
            included = os.path.basename(m.group(1))
            out.append(f"# --- include {included!r} (inlined) ---")
            out.append(inline_includes(included, read, (*seen, name)))
            out.append(f"# --- end of {included!r} ---")
        else:
            out.append(line)
    return "\n".join(out)


def rename_trax(text: str) -> str:
    """Renames the `trax` package `trax_sl` (`import trax.x`, `@trax.x`, `trax.x.y = ...`)."""
    return re.sub(r"(?<![\w.])trax\.", "trax_sl.", text)


def bindings(text: str) -> dict[str, str]:
    """The last value bound to each `configurable.param` (scopes dropped) and macro, as text."""
    out = {}
    for _, _, stmt in statements(text):
        b = split_binding(stmt)
        if b:
            _, configurable, param, value = b
            short = configurable.rpartition(".")[2]
            out[f"{short}.{param}" if short else param] = value
    return out


def resolve(value: str | None, bound: dict[str, str], depth: int = 0):
    """A binding's value as a Python literal, following `%macro`s; None if not a literal."""
    if value is None or depth > 10:
        return None
    value = value.strip()
    if value.startswith("%"):
        return resolve(bound.get(value[1:]), bound, depth + 1)
    value = re.sub(r"%(\w+)", lambda m: repr(resolve(bound.get(m.group(1)), bound, depth + 1)), value)
    try:
        import ast

        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return None


# --- Deciding the offline input ----------------------------------------------------------------------


def model_name(bound: dict[str, str]) -> str | None:
    """The configurable `train.model` names (its last name), or None."""
    value = bound.get("train.model", "")
    m = re.match(r"@([\w./]+)", value.strip())
    return m.group(1).rpartition("/")[2].rpartition(".")[2] if m else None


def offline_input(bound: dict[str, str]) -> str | None:
    """The offline generator `train.inputs` already names, if any."""
    m = re.match(r"@([\w./]+)", bound.get("train.inputs", "").strip())
    name = m.group(1).rpartition(".")[2] if m else None
    return name if name in OFFLINE_INPUTS else None


def dataset_name(bound: dict[str, str]) -> str | None:
    for key in ("data_streams.dataset_name", "TFDS.dataset_name", "dataset_name"):
        value = resolve(bound.get(key), bound)
        if isinstance(value, str):
            return value
    return None


def image_of(dataset: str | None):
    """(shape, classes) of an image data set name, or None."""
    if not dataset:
        return None
    for key in sorted(IMAGES, key=len, reverse=True):
        if key in dataset or (key == "imagenet" and "imagenet" in dataset):
            return IMAGES[key]
    return None


def length_multiple(bound: dict[str, str]) -> int:
    """The least common multiple of the config's chunk lengths and hourglass shorten factors."""
    multiple = 1
    for key, value in bound.items():
        if key.endswith(".chunk_len"):
            v = resolve(value, bound)
            if isinstance(v, int) and v > 0:
                multiple = math.lcm(multiple, v)
        if key.endswith(".hierarchy"):
            v = resolve(value, bound)
            if isinstance(v, str):
                product = 1
                for factor in re.findall(r"@(\d+)", v):
                    product *= int(factor)
                multiple = math.lcm(multiple, product)
        if key.endswith(".shorten_factor"):
            v = resolve(value, bound)
            if isinstance(v, int) and v > 0:
                multiple = math.lcm(multiple, v)
    return multiple


def config_length(bound: dict[str, str], model: str | None) -> int | None:
    """The config's (training) sequence length, from the usual places; None if none is set."""
    keys = (
        "lm1b_preprocess.max_target_length",
        "wmt_preprocess.max_length",
        "wmt_concat_preprocess.max_length",
        "c4_preprocess.max_target_length",
        "ConcatenateToLMInput.pad_to_length",
        "max_length",
        "max_len",
        f"{model}.max_len",
        "batcher.max_eval_length",
    )
    for key in keys:
        v = resolve(bound.get(key), bound)
        if isinstance(v, int) and v > 0:
            return v
    return None


def decide_inputs(bound: dict[str, str]) -> tuple[list[str], str]:
    """The offline input bindings for a config, and a note on the overrides (or 'skip: why')."""
    model = model_name(bound)
    if model is None:
        return [], "skip: no train.model (a config meant for inclusion)"
    keep = offline_input(bound)
    if keep:
        lines = [f"train.inputs = @trax_sl.data.{keep}", f"{keep}.batch_size = {BATCH_SIZE}"]
        old = resolve(bound.get(f"{keep}.batch_size"), bound)
        return lines, f"kept {keep}; batch_size {old}->{BATCH_SIZE}"
    if model == "BERT" or "BERT" in bound.get("train.model", ""):
        return [], "skip: no offline stand-in for BERT's (tokens, segments, mask) inputs"
    dataset = dataset_name(bound)
    image = image_of(dataset)
    vocab = None
    for key in (f"{model}.vocab_size", f"{model}.input_vocab_size", "vocab_size", "input_vocab_size"):
        vocab = resolve(bound.get(key), bound)
        if isinstance(vocab, int):
            break
    out_vocab = resolve(bound.get(f"{model}.output_vocab_size"), bound)
    is_lm = model.endswith("LM")
    if is_lm and image is not None:  # An image (or video) as a sequence of bytes: its full length.
        length = config_length(bound, model) or math.prod(image[0])
        v = vocab if isinstance(vocab, int) else 256
        note = f"{dataset} as random bytes: batch {BATCH_SIZE}, length {length} (full, not shrunk), vocab {v}"
        return copy_lines(v, length), note
    if image is not None and not isinstance(vocab, int):  # An image classifier.
        shape, classes = image
        for key in (f"{model}.n_output_classes", f"{model}.n_classes", "n_classes"):
            c = resolve(bound.get(key), bound)
            if isinstance(c, int):
                classes = c
                break
        lines = [
            "train.inputs = @trax_sl.data.random_inputs",
            f"random_inputs.input_shape = ({BATCH_SIZE}, {', '.join(map(str, shape))})",
            f"random_inputs.output_shape = ({BATCH_SIZE},)",
            "random_inputs.input_range = (0, 255)",
            f"random_inputs.output_range = (0, {classes - 1})",
            *UNWEIGHTED,
        ]
        return lines, f"{dataset} as random images {shape}, {classes} classes, batch {BATCH_SIZE}"
    if not isinstance(vocab, int):
        return [], f"skip: no vocab_size found for {model} (data set {dataset})"
    configured = config_length(bound, model)
    length = min(MAX_LENGTH, configured) if configured else MAX_LENGTH
    multiple = length_multiple(bound)
    length = -(-length // multiple) * multiple
    note = f"{dataset or 'text'}: batch {BATCH_SIZE}, length {configured}->{length}"
    if model == "TransformerEncoder" or model.endswith("Encoder"):  # Classifies token sequences.
        classes = resolve(bound.get(f"{model}.n_classes"), bound)
        classes = classes if isinstance(classes, int) else 10
        lines = [
            "train.inputs = @trax_sl.data.random_inputs",
            f"random_inputs.input_shape = ({BATCH_SIZE}, {length})",
            f"random_inputs.output_shape = ({BATCH_SIZE},)",
            f"random_inputs.input_range = (1, {vocab - 1})",
            f"random_inputs.output_range = (0, {classes - 1})",
            *UNWEIGHTED,
        ]
        return lines, f"{note}, random tokens (vocab {vocab}) and {classes} classes"
    if is_lm:
        return copy_lines(vocab, length), f"{note}, copy task (vocab {vocab})"
    v = min(vocab, out_vocab) if isinstance(out_vocab, int) else vocab
    return copy_lines(v, length), f"{note}, seq2seq copy task (vocab {v})"


def copy_lines(vocab: int, length: int) -> list[str]:
    """`sequence_copy_inputs` of batches (2, length): `w 0 w` padded, with loss weights on the copy."""
    half = length // 2
    return [
        "train.inputs = @trax_sl.data.sequence_copy_inputs",
        f"sequence_copy_inputs.vocab_size = {vocab}",
        f"sequence_copy_inputs.batch_size = {BATCH_SIZE}",
        f"sequence_copy_inputs.train_length = {half}",
        f"sequence_copy_inputs.eval_min_length = {max(2, half // 2)}",
        f"sequence_copy_inputs.eval_max_length = {half}",
        f"sequence_copy_inputs.pad_to_multiple = {length}",
    ]


# random_inputs gives (inputs, labels) without loss weights: its classifiers take unweighted losses.
UNWEIGHTED = [
    "train.loss_fn = @trax_sl.layers.CategoryCrossEntropy()",
    (
        "train.metrics = {'loss': @trax_sl.layers.CategoryCrossEntropy(), "
        "'accuracy': @trax_sl.layers.CategoryAccuracy()}"
    ),
]


def rewrite(text: str) -> tuple[str, list[str], str, dict[str, str]]:
    """Rewrites an (inlined) Trax config for trax_sl with offline inputs.

    Returns (gin text, extra offline-input lines appended, note, bindings of the original).
    The download bindings are commented out with a `# [offline] ` prefix; `import t5...` lines
    too (the caller reports such configs as needing t5).
    """
    bound = bindings(text)
    lines = text.split("\n")
    for start, end, stmt in statements(text):
        drop = False
        if re.match(r"^import\s+t5\b", stmt):
            drop = True
        b = split_binding(stmt)
        if b and b[1] and is_data_binding(b[1], b[2]):
            drop = True
        if b and not b[1] and re.search(r"@(data|trax\.data|tf_inputs|preprocessors)\.", b[3]):
            drop = True  # A macro holding a data pipeline.
        if drop:
            for i in range(start, end + 1):
                lines[i] = "# [offline] " + lines[i]
    extra, note = decide_inputs(bound)
    out = rename_trax("\n".join(lines))
    if extra:
        out += (
            "\n\n# [offline] inputs that need no download, of the config's kind:\n" + "\n".join(extra) + "\n"
        )
    return out, extra, note, bound


def step_bindings() -> list[str]:
    """`--config` bindings for exactly STEPS training steps, one 1-batch eval, a checkpoint at the end."""
    return [
        f"train.steps = {STEPS}",
        f"train.eval_frequency = {STEPS}",
        "train.eval_steps = 1",
        f"train.checkpoints_at = [{STEPS}]",
        "train.permanent_checkpoints_at = None",
        "train.permanent_checkpoint_frequency = None",
        "train.random_seed = 0",
    ]


def per_layer_list_length(model: str, bound: dict[str, str]) -> int:
    """The length of the model's per-layer lists (attention_type, skip_fraction); 1 if none.

    n_layers must be a multiple of (or equal to) it, so --shrink keeps that many layers.
    """
    length = 1
    for param in ("attention_type", "skip_fraction"):
        value = bound.get(f"{model}.{param}", "").strip()
        for _ in range(10):  # Follow %macros.
            if not value.startswith("%"):
                break
            value = bound.get(value[1:], "").strip()
        if value.startswith(("[", "(")):
            items = [x for x in value.strip("[]() ").split(",") if x.strip()]
            length = max(length, len(items))
    return length


def ff_sparsity_block(model: str, bound: dict[str, str]) -> int:
    """What d_ff must be a multiple of: the sparse feed-forward's block (n_elements_in_block or experts); 1 if dense."""
    sparsity = resolve(bound.get(f"{model}.ff_sparsity"), bound)
    block = sparsity[0] if isinstance(sparsity, (list, tuple)) and sparsity else sparsity
    return block if isinstance(block, int) and block > 0 else 1


def shrink_bindings(model: str, bound: dict[str, str], params) -> list[str]:
    """`--config` bindings that make `model` tiny: SHRINK's values for the parameters it takes."""
    out = []
    for name, value in SHRINK.items():
        if name in params:
            if name == "n_layers":
                value = max(value, per_layer_list_length(model, bound))
            if name == "d_ff":
                value = math.lcm(value, ff_sparsity_block(model, bound))
            out.append(f"{model}.{name} = {value!r}")
    if "pos_d_axial_embs" in params and bound.get(f"{model}.pos_d_axial_embs"):
        out.append(f"{model}.pos_d_axial_embs = (8, 8)")  # Must sum to d_model (16).
    if "hierarchy" in params:
        hierarchy = resolve(bound.get(f"{model}.hierarchy"), bound)
        if isinstance(hierarchy, str):
            tiny = re.sub(r"(\d+)@", "1@", hierarchy)
            out.append(f"{model}.hierarchy = {tiny!r}")
    return out


# --- Running and classifying -------------------------------------------------------------------------


def needs_from_text(text: str) -> str | None:
    """'needs X' when an error is about something outside trax_sl."""
    checks = (
        (r"No module named '?(t5|seqio|mesh_tensorflow)", "needs t5"),
        (r"No module named '?(tensorflow|tf_keras)", "needs TF"),
        (r"No module named '?(gym|ale_py)", "needs gym"),
        (r"No module named '?tensorflow_datasets", "needs TFDS"),
        (r"gs://|Could not resolve|Network is unreachable|urlopen error", "needs the network"),
    )
    for pattern, what in checks:
        if re.search(pattern, text):
            return what
    return None


def first_error_line(log: str) -> str:
    """The first line that states the error (the trainer's one line, or the traceback's last)."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("trax_sl.trainer: error:"):
            return line[len("trax_sl.trainer: error:") :].strip()
    for i in range(len(lines) - 1, -1, -1):
        if re.match(r"^[\w.]+(Error|Exception|Exit|Interrupt)\b.*", lines[i]) or re.match(
            r"^\w+Error:", lines[i]
        ):
            causes = [line for line in lines[i + 1 :] if line.startswith("cause:")]
            return lines[i] + (f" ({causes[0]})" if causes and "LayerError" in lines[i] else "")
    return lines[-1] if lines else "(no output)"


def reached_step(output_dir: str) -> int:
    path = os.path.join(output_dir, "metrics.jsonl")
    step = 0
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    step = max(step, int(json.loads(line).get("step", 0)))
                except (ValueError, AttributeError):
                    pass
    return step


def classify(rc: int | None, log: str, step: int, timeout: float, seconds: float) -> str:
    if step >= STEPS and rc == 0:
        return "ran 3 steps"
    if rc is None:
        return f"too big for this CPU: not done in {timeout:.0f} s (step {step})"
    if rc in (-9, 137) or "MemoryError" in log or "RESOURCE_EXHAUSTED" in log:
        return f"too big for this CPU: killed (out of memory?) after {seconds:.0f} s"
    needs = needs_from_text(log)
    if needs:
        return needs
    error = first_error_line(log).replace("|", "\\|")
    if len(error) > 220:
        error = error[:217] + "..."
    return f"fails: {error}"


def run_one(gin_path: str, configs: list[str], run_dir: str, timeout: float) -> tuple[str, float]:
    if os.path.exists(run_dir):
        shutil.rmtree(run_dir)
    os.makedirs(run_dir)
    output_dir = os.path.join(run_dir, "output")
    cmd = [sys.executable, "-m", "trax_sl.trainer", f"--config_file={gin_path}", f"--output_dir={output_dir}"]
    cmd += [f"--config={c}" for c in configs]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    start = time.time()
    with open(os.path.join(run_dir, "log.txt"), "w") as log_file:
        log_file.write(" ".join(repr(c) if " " in c else c for c in cmd) + "\n\n")
        log_file.flush()
        proc = subprocess.Popen(
            cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
    seconds = time.time() - start
    with open(os.path.join(run_dir, "log.txt")) as f:
        log = f.read()
    return classify(rc, log, reached_step(output_dir), timeout, seconds), seconds


def model_params(model: str) -> set[str]:
    import inspect

    import trax_sl.models

    fn = getattr(trax_sl.models, model, None)
    fn = getattr(fn, "__wrapped__", fn)
    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return set()


def git_show(repo: str, path: str) -> str:
    return subprocess.run(
        ["git", "-C", repo, "show", f"HEAD:{path}"], check=True, capture_output=True, text=True
    ).stdout


def list_configs(repo: str) -> list[str]:
    out = subprocess.run(
        ["git", "-C", repo, "ls-tree", "--name-only", "HEAD", f"{CONFIG_DIR}/"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return sorted(os.path.basename(p) for p in out.split() if p.endswith(".gin"))


def load_json(path: str) -> dict:
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def table(results: dict[str, dict], columns: list[str]) -> str:
    head = "| config | " + " | ".join(columns) + " | offline input / overrides |"
    rows = [head, "|" + "---|" * (len(columns) + 2)]
    for name in sorted(results):
        r = results[name]
        cells = [r.get(c, "") for c in columns]
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {r.get('note', '')} |")
    counts = {c: sum(1 for r in results.values() if r.get(c) == "ran 3 steps") for c in columns}
    rows.append("")
    rows.append(
        "ran 3 steps: "
        + ", ".join(f"{c} {counts[c]}/{sum(1 for r in results.values() if r.get(c))}" for c in columns)
    )
    return "\n".join(rows) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("patterns", nargs="*", help="config name globs (default: all *.gin)")
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--trax_repo", default=DEFAULT_TRAX_REPO)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--shrink", action="store_true", help="override the model's sizes by tiny values")
    parser.add_argument("--dry_run", action="store_true", help="write the rewritten configs, run nothing")
    args = parser.parse_args(argv)

    column = "shrink" if args.shrink else "full"
    base = os.path.join(args.out_dir, column)
    for sub in ("src", "gin", "runs"):
        os.makedirs(os.path.join(base, sub), exist_ok=True)
    names = list_configs(args.trax_repo)
    if args.patterns:
        names = [
            n
            for n in names
            if any(fnmatch.fnmatch(n, p) or fnmatch.fnmatch(n, p + ".gin") for p in args.patterns)
        ]
    results_path = os.path.join(base, "results.json")
    results = load_json(results_path)

    def read(name: str) -> str:
        text = git_show(args.trax_repo, f"{CONFIG_DIR}/{name}")
        with open(os.path.join(base, "src", name), "w") as f:
            f.write(text)
        return text

    for name in names:
        stem = name[: -len(".gin")]
        if name.startswith("t5_"):
            results[stem] = {column: "needs t5", "note": "t5_* config (not run)"}
            continue
        try:
            inlined = inline_includes(name, read)
        except (subprocess.CalledProcessError, ValueError) as e:
            results[stem] = {column: f"fails: include: {e}", "note": ""}
            continue
        text, _, note, bound = rewrite(inlined)
        gin_path = os.path.join(base, "gin", name)
        with open(gin_path, "w") as f:
            f.write(text)
        if re.search(r"^\s*import\s+t5\b", inlined, re.MULTILINE):
            results[stem] = {column: "needs t5", "note": "imports t5.data.preprocessors (not run)"}
            continue
        if note.startswith("skip:"):
            results[stem] = {column: f"not run: {note[len('skip: ') :]}", "note": ""}
            continue
        configs = step_bindings()
        model = model_name(bound)
        if args.shrink and model:
            shrunk = shrink_bindings(model, bound, model_params(model))
            configs += shrunk
            note += "; shrink: " + ", ".join(s.split(".", 1)[1].replace(" ", "") for s in shrunk)
        if args.dry_run:
            results[stem] = {column: "(dry run)", "note": note}
            continue
        print(f"{stem}: ", end="", flush=True)
        result, seconds = run_one(gin_path, configs, os.path.join(base, "runs", stem), args.timeout)
        print(f"{result} ({seconds:.0f} s)", flush=True)
        results[stem] = {column: result, "note": note, "seconds": round(seconds)}
        with open(results_path, "w") as f:
            json.dump(results, f, indent=1, sort_keys=True)
    with open(results_path, "w") as f:
        json.dump(results, f, indent=1, sort_keys=True)
    md = table(results, [column])
    with open(os.path.join(base, "results.md"), "w") as f:
        f.write(md)
    # Both columns side by side, where both were run.
    other = os.path.join(args.out_dir, "full" if args.shrink else "shrink", "results.json")
    if os.path.exists(other):
        joined = {k: dict(v) for k, v in results.items()}
        for k, v in load_json(other).items():
            joined.setdefault(k, {}).update({c: v[c] for c in ("shrink", "full") if c in v})
            joined[k].setdefault("note", v.get("note", ""))
        md = table(joined, ["shrink", "full"])
    with open(os.path.join(args.out_dir, "results.md"), "w") as f:
        f.write(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
