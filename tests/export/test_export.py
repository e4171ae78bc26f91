"""trax_sl.export: the exported step and layer-wise function against the library, the loader alone, errors."""

import ast
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import trax_sl
import trax_sl.layers as tl
from trax_sl import export, models
from trax_sl import sequence as seq

LOADER = os.path.join(os.path.dirname(trax_sl.__file__), "export", "loader.py")
N_BLOCKS = 200


def tokens(rng, batch, steps):
    x = rng.integers(0, 16, (batch, steps)).astype(np.int32)
    return x, x


def features(rng, batch, steps, depth=3):
    x = rng.normal(size=(batch, steps, depth)).astype(np.float32)
    return x, x


def masked_features(rng, batch, steps, depth=8):
    values = rng.normal(size=(batch, steps, depth)).astype(np.float32)
    mask = rng.random((batch, steps)) < 0.8
    return (values, mask), seq.Sequence(jnp.asarray(values), jnp.asarray(mask))


# name: (model, example input's (caller form, library form) for (rng, batch, steps), layer_time_steps):
# None exports the layer-wise function for a symbolic number of steps (the Conformer's for a fixed
# length too, so that both kinds are tested).
MODELS = {
    "transformer_lm": (
        lambda: models.TransformerLM(
            vocab_size=16, d_model=16, d_ff=32, n_layers=1, n_heads=2, max_len=256, mode="eval"
        ),
        tokens,
        None,
    ),
    "causal_conv": (
        lambda: tl.Serial(tl.CausalConv(8, kernel_width=3), tl.Relu(), tl.Dense(4)),
        features,
        None,
    ),
    "conformer": (
        lambda: models.ConformerEncoder(
            8, num_blocks=2, max_horizon=4, num_heads=2, conv_kernel_size=3, mode="eval"
        ),
        masked_features,
        32,
    ),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (model, path of its export file), each exported for blocks of batch 1."""
    root = tmp_path_factory.mktemp("export")
    out = {}
    for name, (build, inputs, layer_time_steps) in MODELS.items():
        model = build()
        _, example = inputs(np.random.default_rng(0), 2, 16)
        model.init(example, rng=jax.random.PRNGKey(1))
        block = jax.tree.map(lambda a, n=model.block_size: a[:1, :n], example)
        path = root / f"{name}.export"
        export.save(
            model,
            path,
            block_signature=block,
            weights=model.weights,
            state=model.state,
            layer_time_steps=layer_time_steps,
        )
        out[name] = (model, path)
    return out


def max_difference(caller_outputs, library_outputs) -> float:
    """Max |difference| of the values; a Sequence's masks must be equal."""
    if isinstance(library_outputs, seq.Sequence):
        values, mask = caller_outputs
        np.testing.assert_array_equal(mask, library_outputs.mask)
        return float(jnp.max(jnp.abs(values - library_outputs.values)))
    return float(jnp.max(jnp.abs(caller_outputs - library_outputs)))


@pytest.mark.parametrize("name", list(MODELS))
def test_step_matches_the_library_over_200_blocks(exported, name):
    model, path = exported[name]
    inputs = MODELS[name][1]
    streamed = export.load(path)
    batch, steps = 3, model.block_size  # Exported for a batch of 1: the batch is symbolic.
    state = streamed.init_state(batch)
    _, block = inputs(np.random.default_rng(1), batch, steps)
    predict_model, library_state = tl.start_stream(model, block, model.weights, model.state)
    library_step = jax.jit(predict_model.pure_fn)
    rng = np.random.default_rng(2)
    worst = 0.0
    for _ in range(N_BLOCKS):
        caller_block, library_block = inputs(rng, batch, steps)
        outputs, state = streamed.step(caller_block, state)
        expected, library_state = library_step(library_block, model.weights, library_state, None)
        worst = max(worst, max_difference(outputs, expected))
    print(f"\n{name}: max |exported step - library step| over {N_BLOCKS} blocks of batch {batch}: {worst}")
    assert worst <= 1e-6


def test_init_state_takes_any_batch_size(exported):
    model, path = exported["conformer"]
    streamed = export.load(path)
    for batch in (1, 4):
        _, block = masked_features(np.random.default_rng(0), batch, model.block_size)
        _, expected = tl.start_stream(model, block, model.weights, model.state)
        got = streamed.init_state(batch)
        expected = jax.tree.leaves(expected)
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            np.testing.assert_array_equal(g, e)  # Trained statistics (BatchNorm's) included.
    with pytest.raises(ValueError, match=r"init_state: batch_size must be an integer >= 1, got 0"):
        streamed.init_state(0)


@pytest.mark.parametrize("name", list(MODELS))
def test_layer_matches_the_model_in_eval_mode(exported, name):
    model, path = exported[name]
    inputs, layer_time_steps = MODELS[name][1:]
    streamed = export.load(path)
    shapes = [(2, layer_time_steps), (5, layer_time_steps)] if layer_time_steps else [(2, 9), (5, 23)]
    for batch, steps in shapes:
        caller_x, library_x = inputs(np.random.default_rng(steps), batch, steps)
        outputs = streamed.layer(caller_x)
        expected = model(library_x)
        assert max_difference(outputs, expected) <= 1e-6, (batch, steps)


def test_header(exported):
    header = export.load(exported["conformer"][1]).header
    assert header["format"] == "trax_sl.export/1" == export.FORMAT
    assert (header["trax_sl_version"], header["jax_version"]) == (trax_sl.__version__, jax.__version__)
    assert header["platforms"] == ["cpu", "cuda"]
    assert (header["block_size"], header["block_steps"], header["output_ratio"]) == (4, 4, "1/4")
    assert (header["input_latency"], header["output_latency"], header["stream_capacity"]) == (0, 0, None)
    assert header["step"]["input_signature"] == {
        "sequence": {
            "values": {"shape": ["b", 4, 8], "dtype": "float32"},
            "mask": {"shape": ["b", 4], "dtype": "bool"},
        }
    }
    assert header["step"]["output_signature"] == {
        "sequence": {
            "values": {"shape": ["b", 1, 8], "dtype": "float32"},
            "mask": {"shape": ["b", 1], "dtype": "bool"},
        }
    }
    conv = export.load(exported["causal_conv"][1])
    assert conv.header["layer"]["input_signature"] == {"array": {"shape": ["b", "t", 3], "dtype": "float32"}}
    assert conv.output_ratio == 1 and conv.block_steps == 1


def test_symbolic_time_bounded_by_the_stream_capacity(tmp_path):
    # PositionalEncoding refuses inputs longer than its table: the time is exported with t <= max_len.
    model = tl.Serial(tl.Dense(4), tl.PositionalEncoding(max_len=32, mode="eval"))
    x = np.ones((2, 8, 3), np.float32)
    model.init(x)
    header = export.save(model, tmp_path / "m.export", block_signature=x[:1, :1])
    assert header["layer"]["constraints"] == ["t <= 32"]
    streamed = export.load(tmp_path / "m.export")
    np.testing.assert_array_equal(
        streamed.layer(np.ones((3, 32, 3), np.float32)), model(np.ones((3, 32, 3), np.float32))
    )


def test_the_layer_wise_function_that_cannot_take_a_symbolic_time(tmp_path):
    # np.arange needs a known length: the export says which layer and where, and the choices.
    model = tl.Serial(
        tl.Dense(4), tl.Fn("Ramp", lambda x: x + np.arange(x.shape[1], dtype=np.float32)[None, :, None])
    )
    x = np.ones((2, 8, 3), np.float32)
    model.init(x)
    with pytest.raises(ValueError) as caught:
        export.save(model, tmp_path / "m.export", block_signature=x[:1, :1])
    message = str(caught.value)
    assert message.startswith(
        "export.save: the layer-wise function of Serial cannot be exported for a symbolic number of time steps: "
        "Serial > Ramp[1] failed in pure_fn"
    )
    assert message.endswith(
        "Pass layer_time_steps=T to export it for inputs of T steps, or layer_time_steps=False to export the "
        "predict-mode step alone"
    )
    assert not (tmp_path / "m.export").exists()
    export.save(model, tmp_path / "m.export", block_signature=x[:1, :1], layer_time_steps=False)
    streamed = export.load(tmp_path / "m.export")
    with pytest.raises(ValueError, match=r"^layer: this file holds no layer-wise function \(not exported"):
        streamed.layer(x)


def test_loader_imports_only_jax_numpy_and_the_standard_library():
    with open(LOADER, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "loader.py must not use relative imports"
            imported.add(node.module)
    allowed = {"jax", "numpy"} | set(sys.stdlib_module_names)
    assert {name.split(".")[0] for name in imported} <= allowed, imported
    assert sorted(imported) == [
        "__future__",
        "fractions",
        "io",
        "jax",
        "jax.numpy",
        "json",
        "numpy",
        "zipfile",
    ]


def test_loader_copied_alone_runs_without_trax_sl(exported, tmp_path):
    model, path = exported["transformer_lm"]
    shutil.copyfile(LOADER, tmp_path / "loader.py")
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["trax_sl"] = None  # Installed (editable) here: make any import of it fail.
        import numpy as np
        import loader
        model = loader.load({str(path)!r})
        state = model.init_state(2)
        outputs = []
        for t in range(5):
            y, state = model.step(np.full((2, 1), t, np.int32), state)
            outputs.append(np.asarray(y))
        np.save("outputs.npy", np.concatenate(outputs, axis=1))
        print(sorted(m for m in sys.modules if m.split(".")[0] == "trax_sl" and sys.modules[m] is not None))
        """
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(PYTHONPATH=str(tmp_path), JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    predict_model, state = tl.start_stream(model, np.zeros((2, 1), np.int32), model.weights, model.state)
    expected = []
    for t in range(5):
        y, state = predict_model.pure_fn(jnp.full((2, 1), t, jnp.int32), model.weights, state, None)
        expected.append(y)
    np.testing.assert_allclose(
        np.load(tmp_path / "outputs.npy"), jnp.concatenate(expected, axis=1), atol=1e-6
    )


def rewrite_header(path, new_path, **changes):
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(new_path, "w") as target:
        for info in source.infolist():
            data = source.read(info.filename)
            if info.filename == "header.json":
                data = json.dumps(dict(json.loads(data), **changes)).encode()
            target.writestr(info, data)


def test_a_newer_format_is_refused(exported, tmp_path):
    newer = tmp_path / "newer.export"
    rewrite_header(exported["causal_conv"][1], newer, format="trax_sl.export/2")
    with pytest.raises(ValueError) as caught:
        export.load(newer)
    assert str(caught.value) == (
        f"{newer}: written in format trax_sl.export/2 (by trax_sl {trax_sl.__version__}), newer than this "
        f"loader reads (trax_sl.export/1); use the loader.py of that trax_sl version or newer"
    )
    other = tmp_path / "other.export"
    rewrite_header(exported["causal_conv"][1], other, format="trax_sl.layer/2")
    with pytest.raises(
        ValueError, match=r"not a trax_sl export file \(its header's format is 'trax_sl.layer/2'"
    ):
        export.load(other)
    with pytest.raises(ValueError, match=r"not a trax_sl export file"):
        export.load(__file__)


def test_another_platform_is_refused(exported, tmp_path):
    tpu_only = tmp_path / "tpu.export"
    rewrite_header(exported["causal_conv"][1], tpu_only, platforms=["tpu"])
    with pytest.raises(ValueError) as caught:
        export.load(tpu_only)
    assert str(caught.value) == (
        f"{tpu_only}: exported for platforms ['tpu'], but JAX runs on 'cpu' here; export it again with "
        f"trax_sl.export.save(..., platforms=(..., 'cpu')) or run it where JAX uses one of those"
    )


def test_platforms_none_exports_for_this_platform(tmp_path):
    model = tl.Serial(tl.Dense(4))
    x = np.ones((2, 3, 5), np.float32)
    model.init(x)
    header = export.save(model, tmp_path / "m.export", block_signature=x[:1, :1], platforms=None)
    assert header["platforms"] == ["cpu"]
    np.testing.assert_array_equal(export.load(tmp_path / "m.export").layer(x), model(x))


def test_no_pickle_in_the_file(exported):
    model, path = exported["conformer"]
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        header = json.loads(z.read("header.json"))
        arrays = {
            name: np.load(io.BytesIO(z.read(name)), allow_pickle=False)
            for name in names
            if name.endswith(".npy")
        }
    n_weights, n_stream, n_state = (len(header["arrays"][g]) for g in ("weights", "stream_state", "state"))
    assert n_weights == len(jax.tree.leaves(model.weights)) and n_state == len(jax.tree.leaves(model.state))
    assert sorted(names) == sorted(
        ["header.json", "step.jaxexport", "init_state.jaxexport", "layer.jaxexport"]
        + [f"weights/{i:05d}.npy" for i in range(n_weights)]
        + [f"stream_state/{i:05d}.npy" for i in range(n_stream)]
        + [f"state/{i:05d}.npy" for i in range(n_state)]
    )
    assert not any(a.dtype.hasobject for a in arrays.values())
    for name in ("step.jaxexport", "init_state.jaxexport", "layer.jaxexport"):
        with zipfile.ZipFile(path) as z:
            assert jax.export.deserialize(bytearray(z.read(name))).platforms == ("cpu", "cuda")


def test_bfloat16_weights_round_trip(tmp_path):
    model = tl.Serial(tl.Dense(4))
    x = np.ones((2, 3, 5), jnp.bfloat16)
    weights, state = model.init(x)
    weights = jax.tree.map(lambda w: w.astype(jnp.bfloat16), weights)
    export.save(model, tmp_path / "m.export", block_signature=x[:1, :1], weights=weights, state=state)
    streamed = export.load(tmp_path / "m.export")
    y, _ = model.pure_fn(jnp.asarray(x), weights, state, None)
    assert streamed.header["arrays"]["weights"][0]["dtype"] == "bfloat16"
    np.testing.assert_array_equal(np.asarray(streamed.layer(x), np.float32), np.asarray(y, np.float32))


def test_step_checks_what_it_is_given(exported):
    streamed = export.load(exported["conformer"][1])
    state = streamed.init_state(2)
    values = np.zeros((2, 4, 8), np.float32)
    with pytest.raises(
        ValueError,
        match=r"^step: block: expected a \(values, mask\) pair, got an array of shape \[2, 4, 8\]$",
    ):
        streamed.step(values, state)
    with pytest.raises(
        ValueError, match=r"^step: block values: expected shape \[b, 4, 8\], got \[2, 5, 8\]$"
    ):
        streamed.step((np.zeros((2, 5, 8), np.float32), np.ones((2, 5), bool)), state)
    with pytest.raises(ValueError, match=r"^step: block mask: expected dtype bool, got float32$"):
        streamed.step((values, np.ones((2, 4), np.float32)), state)
    with pytest.raises(
        ValueError,
        match=r"^step: state must be the list of \d+ arrays that init_state or step returned, got 1 arrays$",
    ):
        streamed.step((values, np.ones((2, 4), bool)), state[:1])


def test_save_refuses_a_predict_mode_model(tmp_path):
    model = tl.Serial(tl.Dense(4))
    x = np.ones((2, 3, 5), np.float32)
    model.init(x)
    with pytest.raises(ValueError, match=r"^export.save: expected the model in 'eval' mode"):
        export.save(model.with_mode("predict"), tmp_path / "m.export", block_signature=x[:1, :1])


def test_save_refuses_a_model_that_does_not_stream_and_bad_arguments(tmp_path):
    model = tl.Serial(tl.Dense(4), tl.Bidirectional(tl.LSTM(4)))
    x = np.ones((2, 3, 5), np.float32)
    model.init(x)
    with pytest.raises(ValueError) as caught:
        export.save(model, tmp_path / "m.export", block_signature=x[:1, :1])
    assert str(caught.value) == (
        "export.save: Serial has no predict-mode step to export: ReverseTime does not stream (supports_step is "
        "False), so it cannot run in predict mode; run it layer-wise in 'eval' mode"
    )
    with pytest.raises(ValueError, match=r"layer_time_steps must be None .* got layer_time_steps=True$"):
        export.save(tl.Dense(4), tmp_path / "m.export", block_signature=x[:1, :1], layer_time_steps=True)
    assert not (tmp_path / "m.export").exists()


@pytest.mark.parametrize("name", list(MODELS))
def test_reset_rows_restarts_those_streams_and_leaves_the_others(exported, name):
    model, path = exported[name]
    inputs = MODELS[name][1]
    streamed = export.load(path)
    rng = np.random.default_rng(3)
    steps = model.block_size
    old = [inputs(rng, 3, steps)[0] for _ in range(5)]  # Three streams, five blocks each.
    new = [inputs(rng, 1, steps)[0] for _ in range(4)]  # A new stream for slot 1.

    def row(block, r):
        return jax.tree.map(lambda a: a[r : r + 1], block)

    def put_row(block, r, value):
        return jax.tree.map(lambda a, v: np.concatenate([a[:r], v, a[r + 1 :]]), block, value)

    state = streamed.init_state(3)
    for block in old[:3]:
        _, state = streamed.step(block, state)
    state_after = streamed.reset_rows(state, [1])
    for got, want in zip(streamed.reset_rows(state, np.array([False, True, False])), state_after):
        np.testing.assert_array_equal(got, want)  # Indices or a mask: the same state.
    untouched = state
    fresh = streamed.init_state(1)
    for t, block in enumerate(new):
        mixed = put_row(old[3 + t % 2], 1, block)
        outputs, state_after = streamed.step(mixed, state_after)
        alone, fresh = streamed.step(block, fresh)
        kept, untouched = streamed.step(mixed, untouched)
        # The reset slot equals a stream started alone; the other slots never saw the reset.
        for got, want in zip(jax.tree.leaves(row(outputs, 1)), jax.tree.leaves(alone)):
            np.testing.assert_allclose(got, want, atol=1e-6)
        for r in (0, 2):
            for got, want in zip(jax.tree.leaves(row(outputs, r)), jax.tree.leaves(row(kept, r))):
                np.testing.assert_allclose(got, want, atol=1e-6)
