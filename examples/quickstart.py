"""A one-minute tour of trax_sl, on the CPU, with no network and no data set.

    python examples/quickstart.py

1. Build a small model from `tl` layers and look at it.
2. `init` it and call it interactively: `model(x)`.
3. Train it with optax Adam on a generated copy task, through the pure
   function `model.pure_fn`, and watch the loss go down.
4. Run it on a `trax_sl.Sequence` (values plus a validity mask): padding
   never changes the valid outputs.
5. Save the weights to a file, load them into a fresh model, and check that
   the outputs are equal.
"""

from __future__ import annotations

import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import trax_sl
import trax_sl.layers as tl

VOCAB = 16
BATCH, TIME = 32, 12


def copy_model() -> tl.Layer:
    """Token ids [batch, time] -> log-probabilities [batch, time, VOCAB]."""
    return tl.Serial(
        tl.Embedding(VOCAB, 32),
        tl.Dense(64),
        tl.Relu(),
        tl.Residual(tl.Dense(64), tl.Relu()),
        tl.Dense(VOCAB),
        tl.LogSoftmax(),
    )


def copy_batch(rng, batch: int = BATCH, time: int = TIME):
    """The copy task: the target at every step is the input token itself."""
    tokens = jax.random.randint(rng, (batch, time), 0, VOCAB, dtype=jnp.int32)
    return tokens, tokens


def masked_cross_entropy(log_probs, targets, mask):
    """Mean negative log-likelihood of the targets over the valid steps."""
    picked = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    mask = mask.astype(log_probs.dtype)
    return -jnp.sum(picked * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def main() -> None:
    start = time.perf_counter()
    print(f"trax_sl {trax_sl.__version__}, jax {jax.__version__} on {jax.default_backend()}\n")

    # 1. A model is a description: layers hold hyperparameters, nothing else.
    model = copy_model()
    print(f"The model (n_in={model.n_in}, n_out={model.n_out}):\n{model}\n")

    # 2. init from an example input (or a signature), then call it like a function.
    tokens, targets = copy_batch(jax.random.PRNGKey(0))
    weights, state = model.init(tokens, rng=jax.random.PRNGKey(42))
    shapes = [tuple(w.shape) for w in jax.tree.leaves(weights)]
    print(f"init: {len(shapes)} weight arrays {shapes}")
    print(f"output signature for {tuple(tokens.shape)}: {model.output_signature(tokens)}")
    log_probs = model(tokens)  # Uses the weights init left in the interactive cache.
    print(
        f"model(tokens) -> {log_probs.shape}; rows sum to "
        f"{float(jnp.exp(log_probs).sum(-1).mean()):.4f} in probability\n"
    )

    # 3. Train through the pure function: weights in, outputs out; jit-able and grad-able.
    def loss_fn(params, inputs, labels, rng):
        outputs, _ = model.pure_fn(inputs, params, state, rng)
        return masked_cross_entropy(outputs, labels, jnp.ones(labels.shape, bool))

    optimizer = optax.adam(1e-3)

    @jax.jit
    def train_step(params, opt_state, inputs, labels, rng):
        loss, grads = jax.value_and_grad(loss_fn)(params, inputs, labels, rng)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    params, opt_state = weights, optimizer.init(weights)
    rng = jax.random.PRNGKey(1)
    losses = []
    print("Training on the copy task (Adam, lr 1e-3):")
    for step in range(201):
        rng, data_rng, step_rng = jax.random.split(rng, 3)
        inputs, labels = copy_batch(data_rng)
        params, opt_state, loss = train_step(params, opt_state, inputs, labels, step_rng)
        losses.append(float(loss))
        if step % 25 == 0:
            print(f"  step {step:3d}  loss {losses[-1]:.4f}")
    assert losses[-1] < 0.1 * losses[0], f"the loss did not go down: {losses[0]} -> {losses[-1]}"
    model.weights = params  # Hand the trained weights to the interactive cache.
    accuracy = float(jnp.mean(jnp.argmax(model(tokens), -1) == targets))
    print(f"copy accuracy after training: {accuracy:.0%}\n")

    # 4. Sequences: values [batch, time, ...] plus a mask [batch, time] of valid steps.
    lengths = jax.random.randint(jax.random.PRNGKey(2), (BATCH,), 3, TIME + 1)
    x = trax_sl.Sequence.from_lengths(tokens, lengths)
    y = model(x)  # The output kind follows the input kind: a Sequence, with x's mask.
    print(
        f"model(Sequence) -> {type(y).__name__} values {y.values.shape}, mask {y.mask.shape}; "
        f"lengths {np.asarray(y.lengths())[:6].tolist()}..."
    )
    print(f"masked loss over the valid steps: {float(masked_cross_entropy(y.values, targets, y.mask)):.4f}")
    # Garbage in the padding leaves every valid output as it was.
    noise = jax.random.randint(jax.random.PRNGKey(3), tokens.shape, 0, VOCAB, dtype=jnp.int32)
    garbage = trax_sl.Sequence(jnp.where(x.mask, tokens, noise), x.mask)
    y_garbage = model(garbage)
    valid = np.asarray(x.mask)
    same = np.array_equal(np.asarray(y.values)[valid], np.asarray(y_garbage.values)[valid])
    print(f"valid outputs unchanged when the padding holds other tokens: {same}\n")
    assert same

    # 5. Files: a zip of .npy arrays named by their place in the weights tree (never pickle).
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "copy_model.weights")
        model.save_to_file(path, input_signature=trax_sl.shapes.signature(tokens))
        fresh = copy_model()
        fresh.init_from_file(path)  # The file holds the input signature too.
        equal = np.array_equal(np.asarray(model(tokens)), np.asarray(fresh(tokens)))
        print(
            f"saved {os.path.getsize(path)} bytes; a fresh model loaded from the file "
            f"gives equal outputs: {equal}"
        )
        assert equal

    print(f"\ndone in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
