"""`train.precision='bfloat16'`: float32 weights and optimizer state, bfloat16 compute, a loss curve that tracks float32."""

import json

import gin
import jax
import jax.numpy as jnp
import numpy as np

from tests.supervised.test_trainer_lib import TRAX_STYLE_BINDINGS, clean_gin  # noqa: F401 (fixture)
from tests.supervised.test_training import make_loop
from trax_sl.supervised import trainer_lib


def _losses(precision):
    loop = make_loop(None, eval_at=lambda step: step % 5 == 0, precision=precision, log_every=0)
    loop.run(30)
    return loop, np.array([loss for _, loss in loop.history.get("train", "metrics/loss")])


def test_a_bfloat16_run_keeps_float32_weights_and_tracks_the_float32_loss_curve():
    float32_loop, float32 = _losses(None)
    bfloat16_loop, bfloat16 = _losses("bfloat16")
    leaves = jax.tree.leaves((bfloat16_loop.model.weights, bfloat16_loop._trainers[0].opt_state))
    assert {a.dtype for a in leaves if jnp.issubdtype(a.dtype, jnp.floating)} == {jnp.dtype(jnp.float32)}
    # The loss falls 1.4 -> ~1e-3 in 30 steps; at every logged step bfloat16 is within 10% of float32.
    assert float32[-1] < float32[0] / 100
    np.testing.assert_allclose(bfloat16, float32, rtol=0.1)
    assert not np.array_equal(bfloat16, float32)  # It did train in bfloat16.
    trees = (float32_loop.model.weights, bfloat16_loop.model.weights)
    assert jax.tree.structure(trees[0]) == jax.tree.structure(trees[1])  # Checkpoints load either way.


def test_train_precision_from_gin(tmp_path, clean_gin):  # noqa: F811
    gin.parse_config(TRAX_STYLE_BINDINGS + "\ntrain.precision = 'bfloat16'\ntrain.steps = 10")
    loop = trainer_lib.train(output_dir=str(tmp_path))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 10 and rows[-1]["eval/loss"] < rows[0]["eval/loss"]
    assert {a.dtype for a in jax.tree.leaves(loop.model.weights)} == {jnp.dtype(jnp.float32)}
    assert "train.precision = 'bfloat16'" in (tmp_path / "config.gin").read_text()
