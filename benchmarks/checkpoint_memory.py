"""Peak memory of a training step with and without `tl.CheckpointGradient` around each block.

Two deep stacks: a transformer (n pre-LN blocks, causal attention and a
ReLU feed-forward) and a residual MLP (n x Residual(LayerNorm, Dense(4d),
Relu, Dense(d))). The step is `value_and_grad` of a sum of squares of the
output, jitted. Each stack is built plain, with every block wrapped in
`tl.CheckpointGradient` (rematerialised: only the blocks' inputs are kept
for the backward pass), and as `tl.Repeat(block, n)` with and without
`remat=True`; a
hand-written JAX version of the same math, plain and with `jax.checkpoint`
around each block, shows what rematerialisation saves when written directly.

Memory is read from the compiled executable (`.compile().memory_analysis()`):
temp bytes (activations and scratch, what rematerialisation reduces), and
argument and output bytes; on a GPU the device's peak (`memory_stats()`)
after one step is given too. On CPU, XLA schedules the recomputation of an
unrolled stack early (nothing ties it to the backward pass), so its temp
bytes do not drop with `jax.checkpoint` even in hand-written JAX (the
printed order of the matrix products shows the recomputed ones among the
forward ones, before any backward one); inside a scan (Repeat) they do. The best step time (of `--rounds` interleaved
rounds of `--calls` steps) shows what the recomputation costs.

    python benchmarks/checkpoint_memory.py [--blocks 8] [--d-model 128] [--batch 8] [--length 128]

Writes benchmarks/results/checkpoint_memory.json.
"""

from __future__ import annotations

import argparse
import re

import jax
import jax.numpy as jnp
import numpy as np
from harness import (
    device_memory_stats,
    interleaved_medians,
    machine_info,
    print_header,
    print_table,
    write_results,
)

import trax_sl.layers as tl
from trax_sl import shapes

# --- trax_sl stacks ------------------------------------------------------------------------------


def transformer_block(d: int, n_heads: int) -> tl.Layer:
    return tl.Serial(
        tl.Residual(tl.LayerNorm(), tl.CausalAttention(d, n_heads=n_heads)),
        tl.Residual(tl.LayerNorm(), tl.Dense(4 * d), tl.Relu(), tl.Dense(d)),
    )


def mlp_block(d: int, n_heads: int) -> tl.Layer:
    del n_heads
    return tl.Residual(tl.LayerNorm(), tl.Dense(4 * d), tl.Relu(), tl.Dense(d))


def trax_sl_stack(block_fn, variant: str, n: int, d: int, n_heads: int) -> tl.Layer:
    if variant.startswith("Repeat"):
        return tl.Repeat(block_fn(d, n_heads), n, remat=variant == "Repeat(remat=True)")
    wrap = tl.CheckpointGradient if variant == "CheckpointGradient" else (lambda layer: layer)
    return tl.Serial([wrap(block_fn(d, n_heads)) for _ in range(n)])


# --- The same math in hand-written JAX ----------------------------------------------------------


def _layer_norm(x, scale, bias):
    mean = jnp.mean(x, -1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), -1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + 1e-6) * scale + bias


def _jax_mlp_block(x, p):
    y = _layer_norm(x, p["ln"][0], p["ln"][1])
    y = jax.nn.relu(y @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
    return x + y


def _jax_transformer_block(x, p, n_heads):
    batch, time, d = x.shape
    y = _layer_norm(x, p["ln1"][0], p["ln1"][1])

    def heads(z):
        return z.reshape(batch, time, n_heads, d // n_heads)

    q, k, v = (heads(y @ p[f"w{c}"] + p[f"b{c}"]) for c in "qkv")
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(d // n_heads)
    causal = np.tril(np.ones((time, time), bool))
    logits = jnp.where(causal, logits, -1e9)
    attended = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, -1), v).reshape(batch, time, d)
    x = x + attended @ p["wo"] + p["bo"]
    return _jax_mlp_block(x, {"ln": p["ln2"], "w1": p["w1"], "b1": p["b1"], "w2": p["w2"], "b2": p["b2"]})


def jax_params(kind: str, n: int, d: int, rng) -> list[dict]:
    def dense(key, d_in, d_out):
        return jax.random.normal(key, (d_in, d_out), jnp.float32) / np.sqrt(d_in), jnp.zeros((d_out,))

    params = []
    for key in jax.random.split(rng, n):
        keys = jax.random.split(key, 6)
        p = {"ln2" if kind == "transformer" else "ln": (jnp.ones((d,)), jnp.zeros((d,)))}
        p["w1"], p["b1"] = dense(keys[0], d, 4 * d)
        p["w2"], p["b2"] = dense(keys[1], 4 * d, d)
        if kind == "transformer":
            p["ln1"] = (jnp.ones((d,)), jnp.zeros((d,)))
            for c, k in zip("qkvo", keys[2:]):
                p[f"w{c}"], p[f"b{c}"] = dense(k, d, d)
        params.append(p)
    return params


def jax_forward(kind: str, n_heads: int, remat: bool):
    def block(x, p):
        return _jax_transformer_block(x, p, n_heads) if kind == "transformer" else _jax_mlp_block(x, p)

    if remat:
        block = jax.checkpoint(block)

    def forward(params, x):
        for p in params:
            x = block(x, p)
        return x

    return forward


# --- Measuring -------------------------------------------------------------------------------------


def _step(forward):
    def loss(w, x):
        y = forward(w, x)
        return jnp.sum(y * y)

    return jax.jit(jax.value_and_grad(loss))


def dot_schedule(hlo_text: str) -> str:
    """The order of the matrix products in a compiled step: F forward, R recomputed, B backward.

    Read from the scheduled entry computation of optimized HLO (a fusion
    counts with the products inside it), by each product's `op_name`. With
    rematerialisation that saves memory, each R sits among the B's.
    """
    products: dict[str, list[str]] = {}
    current = None
    for line in hlo_text.splitlines():
        header = re.match(r"^%?(\S+) .*\{$", line) if not line.startswith(" ") else None
        if header:
            current = header.group(1)
            products[current] = []
        elif current and " dot(" in line:
            products[current].append(_op_name(line))
    order = []
    for line in hlo_text[hlo_text.index("ENTRY") :].splitlines():
        called = re.search(r"calls=%?([\w.\-]+)", line)
        names = products.get(called.group(1), []) if called else []
        if " dot(" in line:
            names = [_op_name(line)]
        order += ["R" if "rematted" in n else "B" if "transpose(" in n else "F" for n in names]
    return "".join(order)


def _op_name(line: str) -> str:
    found = re.search(r'op_name="([^"]*)"', line)
    return found.group(1) if found else ""


def candidates(kind: str, args, x) -> dict[str, tuple]:
    """name -> (jitted step, weights) for one stack kind."""
    block_fn = transformer_block if kind == "transformer" else mlp_block
    made = {}
    for variant in ("plain", "CheckpointGradient", "Repeat", "Repeat(remat=True)"):
        model = trax_sl_stack(block_fn, variant, args.blocks, args.d_model, args.n_heads)
        weights, state = model.init(shapes.signature(x))

        def forward(w, x, model=model, state=state):
            return model.pure_fn(x, w, state, None)[0]

        made[f"trax_sl {variant}"] = (_step(forward), weights)
    params = jax_params(kind, args.blocks, args.d_model, jax.random.PRNGKey(1))
    for remat in (False, True):
        name = "JAX jax.checkpoint" if remat else "JAX plain"
        made[name] = (_step(jax_forward(kind, args.n_heads, remat)), params)
    return made


def measure(kind: str, args) -> list[dict]:
    x = jax.random.normal(jax.random.PRNGKey(0), (args.batch, args.length, args.d_model), jnp.float32)
    made = candidates(kind, args, x)
    rows = []
    for name, (step, weights) in made.items():
        compiled = step.lower(weights, x).compile()
        analysis = compiled.memory_analysis()
        before = device_memory_stats()
        jax.block_until_ready(step(weights, x))
        after = device_memory_stats()
        rows.append(
            {
                "stack": kind,
                "variant": name,
                "temp_bytes": analysis.temp_size_in_bytes,
                "argument_bytes": analysis.argument_size_in_bytes,
                "output_bytes": analysis.output_size_in_bytes,
                "device_peak_bytes": None if after is None else after.get("peak_bytes_in_use"),
                "device_bytes_before": None if before is None else before.get("bytes_in_use"),
                "dot_schedule": dot_schedule(compiled.as_text()),
            }
        )
    medians = interleaved_medians(
        {name: (lambda s=step, w=weights: s(w, x)) for name, (step, weights) in made.items()},
        rounds=args.rounds,
        calls=args.calls,
        warmup=2,
    )
    plain = next(r for r in rows if r["variant"] == "trax_sl plain")
    for r in rows:
        r["best_step_ms"] = min(medians[r["variant"]]) * 1e3
        r["temp_vs_trax_sl_plain"] = r["temp_bytes"] / plain["temp_bytes"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--n-heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--stacks", nargs="+", choices=("transformer", "mlp"), default=["transformer", "mlp"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=3)
    args = parser.parse_args()
    info = machine_info()  # Before the run, so the load average is the others'.

    results = [row for kind in args.stacks for row in measure(kind, args)]

    print_header(
        info,
        f"train step (value_and_grad) of {args.blocks} blocks, d={args.d_model}, on "
        f"f32[{args.batch},{args.length},{args.d_model}]; memory from the compiled executable",
    )
    mib = 2.0**20
    gpu = results[0]["device_peak_bytes"] is not None
    rows = [
        (
            f"{r['stack']}: {r['variant']}",
            f"{r['temp_bytes'] / mib:.2f}",
            f"{r['temp_vs_trax_sl_plain']:.2f}x",
            f"{r['argument_bytes'] / mib:.2f}",
            f"{r['output_bytes'] / mib:.2f}",
            *((f"{r['device_peak_bytes'] / mib:.1f}",) if gpu else ()),
            f"{r['best_step_ms']:.1f}",
        )
        for r in results
    ]
    columns = ("stack: variant", "temp MiB", "vs plain", "args MiB", "outputs MiB")
    print_table(columns + (("device peak MiB",) if gpu else ()) + ("step ms",), rows)
    print("\norder of the matrix products in the compiled step (F forward, R recomputed, B backward):")
    for r in results:
        if "R" in r["dot_schedule"]:
            print(f"  {r['stack']}: {r['variant']}: {r['dot_schedule']}")
    write_results("checkpoint_memory", info, vars(args), results)


if __name__ == "__main__":
    main()
