"""Input pipelines on Grain: resume time at batch 10 against batch 10,000, and training time spent on input.

Resume. Three pipelines, each resumed at every `--positions` (10 and 10,000 by
default):

- `main`: the main job's inputs, `python_chars_inputs(batch_size=32,
  sequence_length=128)` (a Grain `MapDataset` of batches);
- `text`: a text pipeline of `trax_sl.data` steps only, which runs on Grain:
  `Serial(TFDS('python_stdlib_chars'), Tokenize, TruncateToLength({0: 256}),
  Dup, FilterByLength(16..256), Shuffle(256), BucketByLength([64, 128],
  [32, 16, 8]), AddLossWeights)` through `make_inputs`;
- `text+fn`: the same with one plain Python function (`lambda g: g`) after
  `Tokenize`, which makes it a plain generator pipeline that a resume replays
  (how trax_sl resumed every pipeline before Grain: the "before" figure).

For the Grain pipelines one iterator takes the batches up to each position
(untimed; the "reach" column) and its `get_state()` is read there; the resume
timed is a fresh `inputs.train_stream(1)` + `set_state(state)` + `next()`,
and its batch must equal the one the continuing iterator gives next (asserted).
For `text+fn` the resume timed is `inputs.train_stream(1, position=k)` +
`next()` (a replay), checked against a continuing iterator at positions up to
`--check-replay-up-to` (replaying the largest position once more only to check
it would double the run; the replay is the same code at every position). A
cell's figure is the best of `--rounds` rounds, except a replay whose first
round takes over `--slow-replay-s`: it is timed once.

Every training file of the stdlib corpus that the filter keeps is longer than
128 bytes, so the text batches are all 8 x 256 (the last bucket), the buckets
are empty at every batch boundary, and a restore reads no waiting examples
again (the saved state is one index). Its 10,000 batches are reached in about
35 s and replayed in 50-60 s on 2 CPU cores, so the batch sizes are kept.

Input wait. `trainer_lib.train` runs `--steps` steps of
`configs/transformer_lm_python_chars.gin` in this process (a temporary
output_dir; no evaluation, no text samples, no checkpoints but the one a run
ends with), with `trax_sl.data.read_ahead.buffer_size = 0` (batches made in
the training thread, right after each step is dispatched) and with the
default (2: a thread makes them ahead), on the main inputs and on the `text`
inputs (8 x 256 bytes a batch, where the main job's are 32 x 128). Metrics
are logged at step 1 and every `--steps // 4` steps. "input wait" is
`train/input_wait_fraction` (the share of the time the training thread spent
making batches and putting them on the device) and steps/s
`train/steps_per_second`, both weighted by time over the rows after step 1
(step 1's row holds the compilation).

    python benchmarks/input_pipeline.py [--positions 10 10000] [--rounds 3] [--steps 200]

Writes benchmarks/results/input_pipeline.json.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import os
import tempfile
import time

import gin
import numpy as np
from harness import machine_info, print_header, print_table, write_results

# Imported for their gin configurables, as trax_sl.trainer imports them.
from trax_sl import data, layers, models, optimizers  # noqa: F401
from trax_sl.sequence import Sequence
from trax_sl.supervised import callbacks, lr_schedules, trainer_lib  # noqa: F401

_CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "transformer_lm_python_chars.gin"
)


def main_inputs() -> data.Inputs:
    return data.python_chars_inputs(batch_size=32, sequence_length=128)


def text_inputs(plain_fn: bool = False) -> data.Inputs:
    """The text pipeline; with `plain_fn`, a plain function after Tokenize makes it a generator pipeline."""
    steps = [data.TFDS("python_stdlib_chars", keys=("text",)), data.Tokenize(keys=[0], vocab_type="char")]
    if plain_fn:
        steps.append(lambda g: g)
    steps += [
        data.TruncateToLength({0: 256}),
        data.Dup(),
        data.FilterByLength(max_length=256, min_length=16),
        data.Shuffle(256),
        data.BucketByLength(boundaries=[64, 128], batch_sizes=[32, 16, 8], sequences=True),
        data.AddLossWeights(),
    ]
    return data.make_inputs(train_stream=data.Serial(*steps))


def _same_batch(a, b) -> bool:
    def arrays(batch):
        for x in batch:
            yield from (x.values, x.mask) if isinstance(x, Sequence) else (np.asarray(x),)

    pairs = list(zip(arrays(a), arrays(b), strict=True))
    return all(x.shape == y.shape and np.array_equal(x, y) for x, y in pairs)


def _close(iterator) -> None:
    close = getattr(iterator, "close", None)
    if close is not None:
        close()


def restored_resumes(name: str, inputs: data.Inputs, positions: list[int], rounds: int) -> list[dict]:
    """Per position: seconds to resume a Grain iterator from its state, checked against the continuing one."""
    iterator = inputs.train_stream(1)
    taken, start, results = 0, time.perf_counter(), []
    for position in positions:
        for _ in range(position - taken):
            next(iterator)
        reach_s = time.perf_counter() - start
        state = iterator.get_state()
        expected = next(iterator)
        taken = position + 1
        times = []
        for _ in range(rounds):
            begin = time.perf_counter()
            fresh = inputs.train_stream(1)
            fresh.set_state(state)
            batch = next(fresh)
            times.append(time.perf_counter() - begin)
            _close(fresh)
            assert _same_batch(batch, expected), f"{name}: the batch after a restore at {position} differs"
        results.append(
            {
                "pipeline": name,
                "resume": "set_state",
                "position": position,
                "seconds": min(times),
                "round_seconds": times,
                "reach_seconds": reach_s,
                "checked": True,
                "state": repr(state),
            }
        )
        start = time.perf_counter() - reach_s  # Reach time counts batches taken, not the timed resumes.
    _close(iterator)
    return results


def replayed_resumes(
    name: str, inputs: data.Inputs, positions: list[int], rounds: int, check_up_to: int, slow_s: float
) -> list[dict]:
    """Per position: seconds of `train_stream(1, position=k)` + `next()`, which replays the first k batches."""
    checked = [p for p in positions if p <= check_up_to]
    expected = {}
    if checked:
        iterator = inputs.train_stream(1)
        for index in range(max(checked) + 1):
            batch = next(iterator)
            if index in checked:
                expected[index] = batch
    results = []
    for position in positions:
        times = []
        for _ in range(rounds):
            begin = time.perf_counter()
            iterator = inputs.train_stream(1, position=position)
            batch = next(iterator)
            times.append(time.perf_counter() - begin)
            if position in expected:
                assert _same_batch(batch, expected[position]), (
                    f"{name}: the batch after a replay to {position} differs"
                )
            if times[0] > slow_s:
                break
        results.append(
            {
                "pipeline": name,
                "resume": "replay",
                "position": position,
                "seconds": min(times),
                "round_seconds": times,
                "reach_seconds": None,
                "checked": position in expected,
            }
        )
    return results


def train_run(name: str, buffer_size: int | None, steps: int, inputs: data.Inputs | None) -> dict:
    """Trains `steps` steps of the main config (on `inputs` if given); the metrics rows after step 1, summarised."""
    bindings = [
        f"train.steps = {steps}",
        f"train.eval_frequency = {max(1, steps // 4)}",
        "train.eval_steps = 0",
        "train.checkpoints_at = []",
        "train.callbacks = []",
        "train.random_seed = 0",
        "train.progress_bar = False",
        "train.log_every = 0",
    ]
    if buffer_size is not None:
        bindings.append(f"trax_sl.data.read_ahead.buffer_size = {buffer_size}")
    gin.clear_config()
    gin.parse_config_files_and_bindings([_CONFIG], bindings)
    kwargs = {} if inputs is None else {"inputs": inputs}
    begin = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as output_dir, contextlib.redirect_stdout(io.StringIO()):
            trainer_lib.train(output_dir=output_dir, **kwargs)
            with open(os.path.join(output_dir, "metrics.jsonl"), encoding="utf-8") as f:
                rows = [json.loads(line) for line in f if line.strip()]
    finally:
        gin.clear_config()
    seconds = time.perf_counter() - begin
    later = [row for row in rows if row["step"] > 1]
    return {
        "inputs": name,
        "buffer_size": 2 if buffer_size is None else buffer_size,
        "steps": steps,
        "input_wait_fraction": _time_weighted(rows, later, "train/input_wait_fraction"),
        "steps_per_second": _time_weighted(rows, later, None),
        "run_seconds": seconds,
        "rows": [
            {key: row[key] for key in ("step", "train/input_wait_fraction", "train/steps_per_second")}
            for row in rows
        ],
    }


def _time_weighted(rows: list[dict], chosen: list[dict], key: str | None) -> float:
    """Over the `chosen` rows, each for the time since the row before: the mean of `key` (steps/s if None)."""
    steps, seconds, weighted = 0, 0.0, 0.0
    for before, row in itertools.pairwise(rows):
        if row in chosen:
            n = row["step"] - before["step"]
            duration = n / row["train/steps_per_second"]
            steps, seconds = steps + n, seconds + duration
            weighted += duration * (row[key] if key else 0.0)
    return weighted / seconds if key else steps / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--positions", type=int, nargs="+", default=[10, 10_000])
    parser.add_argument("--rounds", type=int, default=3, help="timed resumes per cell (best counts)")
    parser.add_argument("--steps", type=int, default=200, help="training steps per input-wait run (0: none)")
    parser.add_argument(
        "--check-replay-up-to", type=int, default=1000, help="check replays at positions up to this"
    )
    parser.add_argument(
        "--slow-replay-s", type=float, default=10.0, help="time a replay once if its first round takes longer"
    )
    args = parser.parse_args()
    positions = sorted(set(args.positions))
    if positions[0] < 0:
        parser.error(f"--positions must be >= 0, got {positions}")
    info = machine_info()  # Before the run, so the load average is the others'.
    started = time.perf_counter()

    main = main_inputs()
    text = text_inputs()
    resumes = restored_resumes("main", main, positions, args.rounds)
    resumes += restored_resumes("text", text, positions, args.rounds)
    resumes += replayed_resumes(
        "text+fn",
        text_inputs(plain_fn=True),
        positions,
        args.rounds,
        args.check_replay_up_to,
        args.slow_replay_s,
    )

    runs = []
    if args.steps:
        for name, inputs in (("main", None), ("text", text)):
            for buffer_size in (0, None):
                runs.append(train_run(name, buffer_size, args.steps, inputs))
    total_s = time.perf_counter() - started

    print_header(
        info,
        f"resume: best of {args.rounds} rounds (a replay over {args.slow_replay_s:g} s: once); "
        f"input wait: {args.steps} training steps of {os.path.basename(_CONFIG)}",
    )
    first, last = positions[0], positions[-1]
    by_cell = {(r["pipeline"], r["position"]): r for r in resumes}
    pipelines = list(dict.fromkeys(r["pipeline"] for r in resumes))
    ratios = {p: by_cell[p, last]["seconds"] / by_cell[p, first]["seconds"] for p in pipelines}
    print_table(
        ("pipeline", "resume", *(f"at {p} s" for p in positions), f"{last} / {first}", f"reach {last} s"),
        [
            (
                p,
                by_cell[p, first]["resume"],
                *(f"{by_cell[p, q]['seconds']:.4f}" for q in positions),
                f"{ratios[p]:.2f}",
                ""
                if by_cell[p, last]["reach_seconds"] is None
                else f"{by_cell[p, last]['reach_seconds']:.1f}",
            )
            for p in pipelines
        ],
    )
    if runs:
        print()
        print_table(
            ("inputs", "read_ahead.buffer_size", "input wait", "steps/s", "run s"),
            [
                (
                    r["inputs"],
                    r["buffer_size"],
                    f"{r['input_wait_fraction']:.3f}",
                    f"{r['steps_per_second']:.2f}",
                    f"{r['run_seconds']:.0f}",
                )
                for r in runs
            ],
        )
    print(f"\ntotal {total_s:.0f} s")
    write_results(
        "input_pipeline",
        info,
        vars(args),
        resumes,
        training=runs,
        summary={"resume_ratio_last_over_first": ratios, "total_seconds": total_s},
    )


if __name__ == "__main__":
    main()
