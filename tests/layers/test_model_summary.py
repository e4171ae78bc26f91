"""tl.summary and tl.parameter_count: exact counts, the tree's paths, no computation."""

import pathlib
import time

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import trax_sl.layers as tl
from trax_sl import models, shapes
from trax_sl import sequence as seq
from trax_sl.layers import base
from trax_sl.layers.model_summary import parameter_count, summary

MAIN_CONFIG = pathlib.Path(__file__).parent.parent.parent / "configs" / "transformer_lm_python_chars.gin"


def _table(model, signature, **kwargs):
    return summary(model, signature, print_fn=None, **kwargs)


def _rows(table):
    """(depth, path step, output, params cell) of each table row, between the two rules."""
    lines = table.split("\n")
    header = lines[1]
    starts = [header.index(name) for name in ("path", "output", "params")]
    body = lines[3 : lines.index(lines[2], 3)]
    rows = []
    for line in body:
        step, output = line[: starts[1]].rstrip(), line[starts[1] : starts[2]].rstrip()
        params = line[starts[2] :].split("  ")[0].strip()
        rows.append(((len(step) - len(step.lstrip())) // 2, step.strip(), output, params))
    return rows


def _count(cell: str) -> int:
    return 0 if cell == "shared" else int(cell.split(" ")[0].replace(",", ""))


def _total(table, what="parameters") -> int:
    line = next(line for line in table.split("\n") if line.startswith(f"Total {what}: "))
    return _count(line.removeprefix(f"Total {what}: "))


def _init_sizes(tree) -> int:
    return sum(leaf.size for leaf in jax.tree.leaves(tree))


def test_hand_checked_mlp():
    # Dense(3) on 5 features: 5*3 + 3 = 18; Dense(2) on 3: 3*2 + 2 = 8; float32, 4 bytes each.
    model = tl.Serial(tl.Dense(3), tl.Relu(), tl.Dense(2))
    printed = []
    table = summary(model, shapes.ShapeDtype((4, 5)), print_fn=printed.append)
    assert printed == [table]
    assert table.split("\n") == [
        "Summary of Serial on inputs f32[4,5]",
        "path          output    params",
        "----------------------------------",
        "Serial        f32[4,2]  26 (104 B)",
        "  Dense_3[0]  f32[4,3]  18 (72 B)",
        "  Relu[1]     f32[4,3]  0",
        "  Dense_2[2]  f32[4,2]  8 (32 B)",
        "----------------------------------",
        "Total parameters: 26 (104 B)",
    ]


def _mlp():
    return tl.Serial(tl.Dense(16), tl.Relu(), tl.Dense(8), tl.Tanh(), tl.Dense(3)), shapes.ShapeDtype((2, 7))


def _combinators():
    model = tl.Serial(
        tl.Dense(6),
        tl.Branch(tl.Dense(4), tl.Serial(tl.Dense(5), tl.Relu(), tl.Dense(4))),
        tl.Parallel(tl.LayerNorm(), tl.Dense(4)),
        tl.Add(),
        tl.Residual(tl.Dense(4), tl.Relu(), shortcut=tl.Dense(4)),
        tl.Residual(tl.LayerNorm(), tl.Dense(4)),
    )
    return model, shapes.ShapeDtype((3, 5))


def _transformer_lm(scan_layers=True):
    lm = models.TransformerLM(
        vocab_size=32,
        d_model=8,
        d_ff=16,
        n_layers=2,
        n_heads=2,
        max_len=16,
        dropout=0.1,
        scan_layers=scan_layers,
    )
    return lm, shapes.ShapeDtype((2, 6), np.int32)


def _masked_conv():
    values = np.random.default_rng(0).standard_normal((2, 6, 3)).astype(np.float32)
    x = seq.Sequence.from_lengths(jnp.asarray(values), jnp.asarray([6, 4]))
    return tl.Serial(tl.Dense(5), tl.CausalConv(4, kernel_width=3), tl.LayerNorm(), tl.Relu()), x


def _repeat():
    return tl.Serial(tl.Dense(4), tl.Repeat(tl.Serial(tl.Dense(4), tl.Relu()), 3)), shapes.ShapeDtype((2, 3))


def _shared():
    dense = tl.Dense(4)
    block = tl.Serial(tl.Dense(4), tl.Relu())
    return tl.Serial(dense, block, tl.Relu(), dense, block), shapes.ShapeDtype((2, 4))


def _encoder_decoder_predict():
    model = models.Transformer(
        input_vocab_size=16, d_model=8, d_ff=16, n_encoder_layers=1, n_decoder_layers=1, n_heads=2,
        max_len=8, dropout=0.0, mode="predict",
    )  # fmt: skip
    return model, (shapes.ShapeDtype((2, 5), np.int32), shapes.ShapeDtype((2, 1), np.int32))


def _lm_predict():
    lm, _ = _transformer_lm()
    return lm.with_mode("predict"), shapes.ShapeDtype((2, 1), np.int32)


MODELS = {
    "mlp": _mlp,
    "combinators": _combinators,
    "transformer_lm": _transformer_lm,
    "masked_conv": _masked_conv,
    "repeat": _repeat,
    "shared": _shared,
    "encoder_decoder_predict": _encoder_decoder_predict,
    "lm_predict": _lm_predict,
}


@pytest.mark.parametrize("make", MODELS.values(), ids=MODELS.keys())
def test_counts_are_those_of_init(make):
    model, signature = make()
    table = _table(model, signature)
    weights, state = model.init(signature)
    n_weights = _init_sizes(weights)
    assert n_weights > 0
    assert _total(table) == n_weights == parameter_count(weights) == parameter_count(model, signature)
    rows = _rows(table)
    assert _count(rows[0][3]) == n_weights
    # The layers without sublayers (rows with no deeper row below) share out the total.
    leaves = [row for row, below in zip(rows, rows[1:] + [(0,)]) if below[0] <= row[0]]
    assert sum(_count(row[3]) for row in leaves) == n_weights
    if jax.tree.leaves(state):
        assert _total(table, "state") == _init_sizes(state)
    else:
        assert "Total state" not in table and "state" not in table.split("\n")[1]


def test_transformer_lm_rows_in_trax_s_layout():
    model, signature = _transformer_lm(scan_layers=False)
    rows = _rows(_table(model, signature))
    # Embedding 256, PositionalEncoding 128, 2 blocks of 600 (two LayerNorms 16 each, four attention
    # Dense(8) 72 each, the feed-forward 8*16 + 16 and 16*8 + 8), LayerNorm 16, Dense(32) 288.
    assert rows[0] == (0, "TransformerLM", "f32[2,6,32]", "1,888 (7.6 KB)")
    # Embedding 32*8; PositionalEncoding's table 16*8 (weights, as in Trax); the output Dense 8*32 + 32.
    assert rows[2] == (1, "Embedding_32_8[1]", "f32[2,6,8]", "256 (1.0 KB)")
    assert rows[4] == (1, "PositionalEncoding[3]", "f32[2,6,8]", "128 (512 B)")
    assert rows[-1] == (1, "Dense_32[9]", "f32[2,6,32]", "288 (1.2 KB)")
    # A decoder block's attention: four Dense(8) layers, 8*8 + 8 each; heads split into the batch.
    attention = rows.index((3, "CausalAttention[1]", "f32[2,6,8]", "288 (1.2 KB)"))
    assert rows[attention + 1 : attention + 6] == [
        (4, "Branch[0]", "(f32[4,6,4], f32[4,6,4], f32[4,6,4])", "216 (864 B)"),
        (5, "Select[0, 0, 0][0]", "(f32[2,6,8], f32[2,6,8], f32[2,6,8])", "0"),
        (5, "Serial[0]", "f32[4,6,4]", "72 (288 B)"),
        (6, "Dense_8[0]", "f32[2,6,8]", "72 (288 B)"),
        (6, "SplitIntoHeads[1]", "f32[4,6,4]", "0"),
    ]
    assert [row[1] for row in rows if row[0] == 1] == [
        "ShiftRight_1[0]", "Embedding_32_8[1]", "Dropout[2]", "PositionalEncoding[3]", "Residual[4]",
        "Residual[5]", "Residual[6]", "Residual[7]", "LayerNorm[8]", "Dense_32[9]",
    ]  # fmt: skip


def test_transformer_lm_rows_with_its_blocks_scanned():
    model, signature = _transformer_lm()
    rows = _rows(_table(model, signature))
    assert rows[0] == (0, "TransformerLM", "f32[2,6,32]", "1,888 (7.6 KB)")
    # The Repeat's rows count both blocks' weights (stacked): 2 * 600.
    assert [row for row in rows if row[0] == 1][4:] == [
        (1, "Repeat_2[4]", "f32[2,6,8]", "1,200 (4.8 KB)"),
        (1, "LayerNorm[5]", "f32[2,6,8]", "16 (64 B)"),
        (1, "Dense_32[6]", "f32[2,6,32]", "288 (1.2 KB)"),
    ]
    assert (3, "Residual[0]", "f32[2,6,8]", "608 (2.4 KB)") in rows
    assert (5, "CausalAttention[1]", "f32[2,6,8]", "576 (2.3 KB)") in rows


def test_main_config_model():
    gin.clear_config()
    try:
        gin.parse_config_file(str(MAIN_CONFIG))
        model = models.TransformerLM()
    finally:
        gin.clear_config()
    signature = shapes.ShapeDtype((32, 128), np.int32)
    table = _table(model, signature)
    # vocab 256, d_model 128, d_ff 512, 2 blocks, max_len 512: Embedding 256*128, PositionalEncoding
    # 512*128; per block 2 LayerNorms (2*128 each), 4 attention Dense (128*128 + 128 each), the
    # feed-forward (128*512 + 512) + (512*128 + 128); a LayerNorm and the output Dense 128*256 + 256.
    block = 2 * 256 + 4 * (128 * 128 + 128) + (128 * 512 + 512) + (512 * 128 + 128)
    expected = 256 * 128 + 512 * 128 + 2 * block + 256 + 128 * 256 + 256
    assert expected == 528_128
    assert _total(table) == expected
    assert table.split("\n")[-1] == "Total parameters: 528,128 (2.1 MB)"
    assert parameter_count(model.init(signature)[0]) == expected


def test_sequence_outputs_say_so():
    model, x = _masked_conv()
    rows = _rows(_table(model, x))
    assert [row[2] for row in rows] == ["Sequence(f32[2,6,4])", "Sequence(f32[2,6,5])"] + [
        "Sequence(f32[2,6,4])"
    ] * 3
    assert _table(model, x).split("\n")[0] == "Summary of Serial on inputs Sequence(f32[2,6,3])"


def test_depth_folds_deeper_rows_into_their_parents():
    model, signature = _transformer_lm()
    full = _rows(_table(model, signature))
    assert _rows(_table(model, signature, depth=0)) == full[:1]
    assert _rows(_table(model, signature, depth=1)) == [row for row in full if row[0] <= 1]
    assert _rows(_table(model, signature, depth=3)) == [row for row in full if row[0] <= 3]
    with pytest.raises(ValueError, match="depth must be None or >= 0, got depth=-1"):
        _table(model, signature, depth=-1)


def test_shared_weights_are_counted_once_and_named():
    model, signature = _shared()
    table = _table(model, signature)
    # Dense(4) on 4 features: 20; the block's Dense(4): 20; their second uses share.
    assert [(row[1], row[3]) for row in _rows(table)] == [
        ("Serial", "40 (160 B)"),
        ("Dense_4[0]", "20 (80 B)"),
        ("Serial[1]", "20 (80 B)"),
        ("Dense_4[0]", "20 (80 B)"),
        ("Relu[1]", "0"),
        ("Relu[2]", "0"),
        ("Dense_4[3]", "shared"),
        ("Serial[4]", "shared"),
        ("Dense_4[0]", "shared"),
        ("Relu[1]", "0"),
    ]
    assert table.split("\n")[-2:] == [
        "shared: Serial > Dense_4[3] uses the weights of Serial > Dense_4[0], counted once",
        "shared: Serial > Serial[4] uses the weights of Serial > Serial[1], counted once",
    ]


def test_repeat_rows_count_every_repeat():
    model, signature = _repeat()
    # Dense(4) on 3 features: 16; the repeated Dense(4) on 4: 20, stacked 3 times.
    assert [(row[1], row[3]) for row in _rows(_table(model, signature))] == [
        ("Serial", "76 (304 B)"),
        ("Dense_4[0]", "16 (64 B)"),
        ("Repeat_3[1]", "60 (240 B)"),
        ("Serial[0]", "60 (240 B)"),
        ("Dense_4[0]", "60 (240 B)"),
        ("Relu[1]", "0"),
    ]


def test_state_column_in_predict_mode():
    model, signature = _lm_predict()
    table = _table(model, signature, depth=1)
    assert table.split("\n")[1].split() == ["path", "output", "params", "state"]
    lines = table.split("\n")
    # ShiftRight is Trax's predict-mode no-op (no state); PositionalEncoding keeps a step count per row.
    shift_right = next(line for line in lines if "ShiftRight_1[0]" in line)
    assert shift_right.split() == ["ShiftRight_1[0]", "i32[2,1]", "0", "0"]
    assert _total(table, "state") == _init_sizes(model.init(signature)[1])


def test_paths_are_those_of_layer_errors():
    fail = {"now": False}

    def boom(x):
        if fail["now"]:
            raise ValueError("boom")
        return x

    model = tl.Serial(
        tl.Dense(4), tl.Residual(tl.Dense(4), tl.Branch(tl.Fn("Boom", boom), tl.Relu()), tl.Add())
    )
    signature = shapes.ShapeDtype((2, 3))
    rows = _rows(_table(model, signature))
    path = []
    for row_depth, step, _, _ in rows:
        path = path[:row_depth] + [step]
        if step.startswith("Boom"):
            break
    fail["now"] = True
    with pytest.raises(tl.LayerError) as raised:
        model.init(signature)
    with pytest.raises(tl.LayerError, match="Boom"):
        _table(model, signature)
    assert base._scope.init_recorder is None  # Off again after a failed summary.
    assert raised.value.path == path == ["Serial", "Residual[1]", "Serial[1]", "Branch[1]", "Boom[0]"]


def test_leaves_the_interactive_cache_alone():
    model, signature = _combinators()
    assert _table(model, signature)
    # Not initialized: no weights or state anywhere (as in Trax, a combinator's are its sublayers').
    assert not jax.tree.leaves(model.weights) and not jax.tree.leaves(model.state)
    assert not model._initialized
    weights, state = model.init(signature)
    _table(model, signature)
    assert model.weights is weights and model.state is state


def test_computes_nothing():
    # 10^10 float32 parameters (40 GB): only abstract evaluation can summarise them.
    model = tl.Serial(tl.Dense(100_000), tl.Relu(), tl.Dense(100_000))
    start = time.perf_counter()
    table = _table(model, shapes.ShapeDtype((1, 50_000)))
    assert time.perf_counter() - start < 30
    assert table.split("\n")[-1] == "Total parameters: 15,000,200,000 (60.0 GB)"


def test_print_fn_none_prints_nothing(capsys):
    model, signature = _mlp()
    table = summary(model, signature, print_fn=None)
    assert capsys.readouterr().out == ""
    summary(model, signature)
    assert capsys.readouterr().out == table + "\n"


def test_bad_input_signature_is_a_layer_error():
    with pytest.raises(tl.LayerError, match="Serial failed in summary"):
        summary(tl.Serial(tl.Dense(3)), "not a signature", print_fn=None)


def test_exported_from_tl():
    assert tl.summary is summary and tl.parameter_count is parameter_count


def test_parameter_count():
    assert parameter_count(((np.zeros((5, 3)), np.zeros(3)), (), tl.SHARED)) == 18
    assert parameter_count(tl.Dense(3), shapes.ShapeDtype((4, 5))) == 18
    with pytest.raises(TypeError, match="pass input_signature="):
        parameter_count(tl.Dense(3))
