"""Training step of `trax_sl.models.TransformerLM` against a hand-written JAX transformer LM.

TransformerLM(vocab_size=256, d_model=256, d_ff=1024, n_layers=4, n_heads=4,
max_len=128, dropout=0.0) on int32 tokens [8, 128], with optax Adam, jitted
(weights and optimizer state donated). The reference (`jax_transformer.py`)
is the same math written directly in JAX, with the same parameter count
(asserted) and, for the check, the same numbers: it starts from the model's
weights, and the first three steps' losses agree (asserted). Rows:

- `trax_sl + tl.CategoryCrossEntropy`: `Serial(model, loss layer)`, what a
  training loop runs (the blocks scanned: one `Repeat`, the default);
- `trax_sl scan_layers=False + ...`: the same with the blocks unrolled
  (Trax's layout), holding the same weights;
- `trax_sl + JAX loss`: `model.pure_fn` with the reference's loss, which
  isolates the model;
- `JAX`: the reference.

Timing: warm-up excluded, `--rounds` interleaved rounds of `--calls` steps
each ended by `block_until_ready`; a round's figure is its median step, and
the ratio compares best rounds. The optimized HLO of each step is
summarised (instructions by kind) so that a gap can be traced to the code
XLA was given. MFU: the step's model FLOPs (`efficiency.training_flops`: three
times the forward pass's matmuls) per second over the device's peak (on a CPU,
a large float32 matmul measured in the same process).

Target: trax_sl / JAX <= 1.05x (aim 1.02x).

    python benchmarks/train_step.py [--rounds 5] [--calls 5] [--batch 8] [--length 128]

Writes benchmarks/results/train_step.json.
"""

from __future__ import annotations

import argparse
import collections
import re
import time

import jax
import jax_transformer as ref
import numpy as np
import optax
from harness import (
    add_lm_size_arguments,
    lm_size,
    machine_info,
    print_header,
    print_table,
    time_candidates,
    write_results,
)

import trax_sl.layers as tl
from trax_sl import models, shapes
from trax_sl.layers import trax_checkpoint
from trax_sl.supervised import efficiency

_TARGET = 1.05
_REFERENCE = "JAX"


def make_step(loss_fn, tx):
    """The jitted `(params, opt_state, tokens) -> (params, opt_state, loss)`; params and state donated."""

    def step(params, opt_state, tokens):
        loss, grads = jax.value_and_grad(loss_fn)(params, tokens)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1))


class Stepper:
    """Runs one candidate's steps, carrying its (donated) parameters and optimizer state.

    The step is traced, lowered and compiled here, before any call, and that time kept (`compile_s`).
    """

    def __init__(self, step, params, tx, tokens):
        self.params = jax.tree.map(np.array, params)  # A private copy: steps donate their inputs.
        self.opt_state = tx.init(self.params)
        self.tokens = tokens
        start = time.perf_counter()
        self.step = step.lower(self.params, self.opt_state, tokens).compile()
        self.compile_s = time.perf_counter() - start

    def __call__(self):
        self.params, self.opt_state, loss = self.step(self.params, self.opt_state, self.tokens)
        return loss

    def hlo(self) -> str:
        return self.step.as_text()


def hlo_summary(text: str) -> dict[str, int]:
    """Instruction counts by opcode in the entry and fused computations of optimized HLO text."""
    counts: collections.Counter = collections.Counter()
    for line in text.splitlines():
        line = line.strip()
        if "=" not in line or line.startswith(("HloModule", "ROOT %tuple")):
            continue
        match = re.search(r"=\s*\S+\s+([a-z][a-z0-9\-]*)\(", line)
        if match:
            counts[match.group(1)] += 1
    return dict(counts)


def transformer_lm(args, scan_layers=True):
    return models.TransformerLM(**lm_size(args), max_len=args.length, dropout=0.0, scan_layers=scan_layers)


def build(args):
    """name -> Stepper, and a check that the candidates compute the same numbers."""
    model = transformer_lm(args)
    tokens = jax.random.randint(jax.random.PRNGKey(0), (args.batch, args.length), 0, args.vocab_size)
    with_loss = tl.Serial(model, tl.CategoryCrossEntropy())
    signature = (shapes.signature(tokens), shapes.signature(tokens))
    weights, state = with_loss.init(signature)
    model_weights, model_state = weights[0], state[0]
    # The same model and weights with its blocks unrolled (Trax's layout): the arrays in Trax's order.
    unrolled = tl.Serial(transformer_lm(args, scan_layers=False), tl.CategoryCrossEntropy())
    unrolled_weights = trax_checkpoint.convert_weights(weights, with_loss, unrolled, signature)
    _, unrolled_state = unrolled.init(signature)

    params = ref.params_from_trax_sl(model, model_weights, args.n_layers)
    fresh = ref.init_params(
        jax.random.PRNGKey(1), args.vocab_size, args.d_model, args.d_ff, args.n_layers, args.length
    )
    n_params = ref.count_params(model_weights)
    if not n_params == ref.count_params(params) == ref.count_params(fresh):
        raise AssertionError(
            f"parameter counts differ: trax_sl {n_params}, reference {ref.count_params(fresh)}"
        )

    def trax_sl_loss(w, tokens):
        return with_loss.pure_fn((tokens, tokens), w, state, None)[0]

    def trax_sl_model_jax_loss(w, tokens):
        return ref.cross_entropy(model.pure_fn(tokens, w, model_state, None)[0], tokens)

    def jax_loss(p, tokens):
        return ref.loss(p, tokens, args.n_heads)

    def unrolled_loss(w, tokens):
        return unrolled.pure_fn((tokens, tokens), w, unrolled_state, None)[0]

    tx = optax.adam(args.learning_rate)
    steppers = {
        "trax_sl + tl.CategoryCrossEntropy": Stepper(make_step(trax_sl_loss, tx), weights, tx, tokens),
        "trax_sl scan_layers=False + tl.CategoryCrossEntropy": Stepper(
            make_step(unrolled_loss, tx), unrolled_weights, tx, tokens
        ),
        "trax_sl + JAX loss": Stepper(make_step(trax_sl_model_jax_loss, tx), model_weights, tx, tokens),
        _REFERENCE: Stepper(make_step(jax_loss, tx), params, tx, tokens),
    }
    # Same numbers: the first three steps' losses agree (the reference holds the model's weights).
    losses = {name: [float(stepper()) for _ in range(3)] for name, stepper in steppers.items()}
    for name, values in losses.items():
        np.testing.assert_allclose(values, losses[_REFERENCE], rtol=2e-5, err_msg=name)
    flops = efficiency.training_flops(trax_sl_loss, weights, tokens)
    return steppers, n_params, losses, flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--calls", type=int, default=3, help="steps per round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128, help="sequence length (and max_len)")
    add_lm_size_arguments(parser)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    args = parser.parse_args()
    info = machine_info()  # Before the run, so the load average is the others'.

    steppers, n_params, losses, flops = build(args)
    # A CPU's peak is measured here (a large float32 matmul), an accelerator's read from the table.
    peak = efficiency.peak_flops_per_device(jax.devices()[0])
    timings = time_candidates(steppers, _REFERENCE, rounds=args.rounds, calls=args.calls, warmup=args.warmup)
    hlo = {name: hlo_summary(stepper.hlo()) for name, stepper in steppers.items()}
    results = [
        {
            "candidate": name,
            **timing,
            "mfu": None if peak is None else flops / (timing["best_ms"] / 1e3) / peak,
            "first_losses": losses[name],
            "compile_s": steppers[name].compile_s,
            "hlo_instructions": hlo[name],
        }
        for name, timing in timings.items()
    ]
    main_ratio = results[0]["ratio"]

    print_header(
        info,
        f"TransformerLM(vocab={args.vocab_size}, d_model={args.d_model}, d_ff={args.d_ff}, "
        f"n_layers={args.n_layers}, n_heads={args.n_heads}) train step with optax Adam on "
        f"int32[{args.batch},{args.length}]; {n_params:,} parameters each; best of {args.rounds} "
        f"rounds of {args.calls} steps; {flops / 1e9:.2f} GFLOP per step (3x the forward's matmuls), "
        f"peak {'unknown' if peak is None else f'{peak / 1e9:.1f} GFLOP/s'} per device",
    )
    print_table(
        ("step", "best ms", "median round ms", "vs JAX", "best CPU ms", "CPU vs JAX", "MFU", "compile s"),
        [
            (
                r["candidate"],
                f"{r['best_ms']:.1f}",
                f"{r['median_round_ms']:.1f}",
                f"{r['ratio']:.3f}x",
                f"{r['best_cpu_ms']:.1f}",
                f"{r['cpu_ratio']:.3f}x",
                "-" if r["mfu"] is None else f"{r['mfu']:.2f}",
                f"{r['compile_s']:.2f}",
            )
            for r in results
        ],
    )
    kinds = sorted({k for counts in hlo.values() for k in counts}, key=lambda k: -hlo[_REFERENCE].get(k, 0))
    shown = [k for k in kinds if any(hlo[name].get(k, 0) for name in hlo)][:12]
    print("\noptimized HLO instructions by kind (entry and fused computations):")
    print_table(
        ("step", "total", *shown),
        [(name, sum(counts.values()), *(counts.get(k, 0) for k in shown)) for name, counts in hlo.items()],
    )
    print(
        f"\ntrax_sl / JAX: {main_ratio:.3f}x (target <= {_TARGET}x): "
        f"{'met' if main_ratio <= _TARGET else 'NOT met'}"
    )
    write_results(
        "train_step",
        info,
        vars(args),
        results,
        n_params=n_params,
        summary={
            "ratio": main_ratio,
            "cpu_ratio": results[0]["cpu_ratio"],
            "mfu": results[0]["mfu"],
            "target": _TARGET,
            "met": main_ratio <= _TARGET,
        },
    )


if __name__ == "__main__":
    main()
