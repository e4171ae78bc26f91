"""Models bigger than one device: the largest TransformerLM a memory budget fits, and step time, per mesh.

On 8 CPU host devices (`jax_num_cpu_devices`, set here), two measures of
trax_sl's training step (`trax_sl.supervised.train_step`: Adam, weights and
optimizer state donated and kept sharded):

1. Capacity. For each mesh (`{'data': 8}`: weights replicated; `{'fsdp':
   8}`: weights and optimizer state split eight ways) the largest model
   whose step compiles within `--budget-mib` per device, found by
   bisection, from the compiled step's memory analysis: arguments + outputs
   not aliased to them + temporaries. Two searches: the widest
   TransformerLM (`--n-layers` unrolled blocks, d_ff = 4 d_model, d_model a
   multiple of 64), and the deepest stack of the same blocks scanned by one
   `Repeat(..., remat=True)` (d_model `--d-model`). Nothing is materialised: weights,
   optimizer state and batch are abstract (`ShapeDtypeStruct`s with their
   shardings). The parameter-count ratio fsdp / data is what FSDP buys. It
   approaches 8 where the sharded weights and optimizer state dominate the
   budget. Without rematerialisation the backward pass keeps every block's
   gathered (whole) weights as residuals, so an FSDP step's temporaries grow
   with the model: in the unrolled TransformerLM (where XLA:CPU schedules a
   per-block `CheckpointGradient`'s recomputation early, see
   checkpoint_memory.py) and in a scan without `remat` alike. Scanned with
   `remat=True`, each block's weights are gathered again in the backward
   pass, one block at a time.
2. Step time. The same global batch and model on 1 device, `{'data': 8}`
   and `{'fsdp': 8}`, timed interleaved (harness.time_candidates). On a CPU
   the 8 "devices" share this machine's cores, so this measures the
   partitioned program's overhead (collectives, smaller matmuls), not a
   speed-up.

    python benchmarks/sharding.py [--budget-mib 64] [--n-layers 4] [--rounds 5]

Writes benchmarks/results/sharding.json.
"""

from __future__ import annotations

import argparse

import jax

jax.config.update("jax_num_cpu_devices", 8)

import numpy as np
import optax
from harness import machine_info, print_header, print_table, time_candidates, write_results

import trax_sl.layers as tl
from trax_sl import mesh, models, shapes
from trax_sl.supervised import train_step

VOCAB = 1024
MESHES = {"data=8": {"data": 8}, "fsdp=8": {"fsdp": 8}}


def lm(d_model: int, n_layers: int, scanned: bool = False):
    """TransformerLM, or (scanned) the same blocks as one `Repeat` over stacked weights."""
    if scanned:
        return scanned_lm(d_model, n_layers)
    return models.TransformerLM(
        vocab_size=VOCAB,
        d_model=d_model,
        d_ff=4 * d_model,
        n_layers=n_layers,
        n_heads=max(1, d_model // 64),
        max_len=2048,
        dropout=0.0,
        mode="train",
    )


def scanned_lm(d_model: int, n_layers: int):
    block = tl.Serial(
        tl.Residual(tl.LayerNorm(), tl.CausalAttention(d_model, n_heads=max(1, d_model // 64), mode="train")),
        tl.Residual(
            tl.LayerNorm(),
            tl.Dense(4 * d_model),
            tl.Relu(),
            tl.Dense(d_model, kernel_axes=("mlp", "embed")),
        ),
    )
    return tl.Serial(
        tl.ShiftRight(mode="train"),
        tl.Embedding(VOCAB, d_model),
        tl.PositionalEncoding(max_len=2048, mode="train"),
        tl.Repeat(block, n_layers, remat=True),
        tl.LayerNorm(),
        tl.Dense(VOCAB, kernel_axes=("embed", "vocab")),
    )


def batch_signature(batch: int, length: int):
    ids = shapes.ShapeDtype((batch, length), np.int32)
    return ids, ids, shapes.ShapeDtype((batch, length), np.float32)


def step_parts(d_model: int, n_layers: int, scanned: bool, the_mesh, signature):
    """(optimizer, step, weights and state signatures, weight and optimizer state shardings), all abstract."""
    layer = tl.Serial(lm(d_model, n_layers, scanned), tl.WeightedCategoryCrossEntropy())
    tx = optax.adam(1e-3)
    weights, state = layer.weights_and_state_signature(signature)
    shardings = train_step.weight_shardings(layer, weights, the_mesh)
    opt_shardings = train_step.opt_state_shardings(tx, weights, shardings, the_mesh)
    step = train_step.train_step(layer, tx, the_mesh, shardings, opt_shardings)
    return tx, step, weights, state, shardings, opt_shardings


def abstract(tree, shardings):
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(tuple(x.shape), x.dtype, sharding=s), tree, shardings
    )


def per_device_bytes(model: dict, the_mesh, batch: int, length: int) -> tuple[int, int]:
    """(bytes per device of the compiled step, parameter count) of `lm(**model)`."""
    signature = batch_signature(batch, length)
    tx, step, weights, state, shardings, opt_shardings = step_parts(
        **model, the_mesh=the_mesh, signature=signature
    )
    repl = train_step.replicated(the_mesh)
    batch_sharding = jax.sharding.NamedSharding(the_mesh, jax.sharding.PartitionSpec(mesh.BATCH_AXES))
    args = (
        abstract(weights, shardings),
        abstract(state, jax.tree.map(lambda _: repl, state)),
        abstract(jax.eval_shape(tx.init, weights), opt_shardings),
        abstract(signature, (batch_sharding,) * 3),
        jax.ShapeDtypeStruct((2,), np.uint32, sharding=repl),
    )
    analysis = step.lower(*args).compile().memory_analysis()
    used = (
        analysis.argument_size_in_bytes
        + analysis.output_size_in_bytes
        - analysis.alias_size_in_bytes
        + analysis.temp_size_in_bytes
    )
    return used, sum(int(np.prod(w.shape)) for w in jax.tree.leaves(weights))


def largest(model, the_mesh, budget: int, batch: int, length: int) -> dict:
    """The largest `model(k)` (k = 1, 2, ...) whose step fits `budget` bytes per device, by bisection."""
    fits = lambda k: per_device_bytes(model(k), the_mesh, batch, length)[0] <= budget
    low, high = 0, 1  # low fits (or is 0), high does not.
    while fits(high):
        low, high = high, 2 * high
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    if low == 0:
        return {**model(1), "parameters": 0, "bytes_per_device": 0}
    used, parameters = per_device_bytes(model(low), the_mesh, batch, length)
    return {**model(low), "parameters": parameters, "bytes_per_device": used}


def timed_steps(args) -> dict[str, dict]:
    """Step time of one model and global batch on 1 device, data=8 and fsdp=8."""
    meshes = {"1 device": mesh.make_mesh(n_devices=1), **{k: mesh.make_mesh(v) for k, v in MESHES.items()}}
    rng = np.random.default_rng(0)
    ids = rng.integers(1, VOCAB, size=(args.batch, args.length), dtype=np.int32)
    host_batch = (ids, ids, np.ones((args.batch, args.length), np.float32))
    candidates = {}
    for name, the_mesh in meshes.items():
        signature = batch_signature(args.batch, args.length)
        layer = tl.Serial(lm(args.time_d_model, args.n_layers), tl.WeightedCategoryCrossEntropy())
        tx = optax.adam(1e-3)
        weights, state, shardings = train_step.sharded_init(layer, signature, jax.random.key(0), the_mesh)
        opt_state, opt_shardings = train_step.sharded_opt_init(tx, weights, shardings, the_mesh)
        step = train_step.train_step(layer, tx, the_mesh, shardings, opt_shardings)
        carry = [weights, state, opt_state, train_step.put_replicated(jax.random.key(1), the_mesh)]
        batch = train_step.put_batch(host_batch, the_mesh)

        def run(step=step, carry=carry, batch=batch):
            w, s, o, r = carry
            w, s, o, loss, r = step(w, s, o, batch, r)
            carry[:] = [w, s, o, r]
            return loss

        candidates[name] = run
    return time_candidates(candidates, "1 device", rounds=args.rounds, calls=args.calls, warmup=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget-mib", type=float, default=64)
    parser.add_argument(
        "--n-layers", type=int, default=4, help="TransformerLM's (the widest search, the timing)"
    )
    parser.add_argument("--d-model", type=int, default=256, help="the scanned blocks' (the deepest search)")
    parser.add_argument("--batch", type=int, default=16, help="global batch (both parts)")
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--time-d-model", type=int, default=256, help="the timed model's d_model")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=5)
    args = parser.parse_args()
    info = machine_info()

    budget = int(args.budget_mib * 2**20)
    searches = {  # What grows: d_model (multiples of 64) of TransformerLM, or the scanned blocks' count.
        "TransformerLM, widest": lambda k: {"d_model": 64 * k, "n_layers": args.n_layers, "scanned": False},
        "scanned blocks, deepest": lambda k: {"d_model": args.d_model, "n_layers": k, "scanned": True},
    }
    capacity = [
        {
            "search": search,
            "mesh": name,
            **largest(model, mesh.make_mesh(shape), budget, args.batch, args.length),
        }
        for search, model in searches.items()
        for name, shape in MESHES.items()
    ]
    ratios = {
        search: capacity[2 * i + 1]["parameters"] / max(1, capacity[2 * i]["parameters"])
        for i, search in enumerate(searches)
    }
    timings = timed_steps(args)

    print_header(
        info, f"8 CPU host devices; vocab {VOCAB}, d_ff = 4 d_model, Adam, batch {args.batch} x {args.length}"
    )
    print(f"Largest model whose step fits {args.budget_mib:g} MiB per device (compiled memory analysis):\n")
    print_table(
        ("model", "mesh", "d_model", "n_layers", "parameters", "MiB per device"),
        [
            (
                r["search"],
                r["mesh"],
                r["d_model"],
                r["n_layers"],
                f"{r['parameters']:,}",
                f"{r['bytes_per_device'] / 2**20:.1f}",
            )
            for r in capacity
        ],
    )
    for search, ratio in ratios.items():
        print(f"parameters fsdp=8 / data=8, {search}: {ratio:.2f}")
    print(f"\nStep time, TransformerLM d_model {args.time_d_model}, n_layers {args.n_layers}:\n")
    print_table(
        ("mesh", "ms/step", "vs 1 device"),
        [(k, f"{t['best_ms']:.1f}", f"{t['ratio']:.2f}") for k, t in timings.items()],
    )
    write_results("sharding", info, vars(args), capacity, capacity_ratios=ratios, step_times=timings)


if __name__ == "__main__":
    main()
