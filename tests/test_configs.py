"""Every gin config in configs/ trains for a few steps and logs finite losses."""

import json
import math
import pathlib

import gin
import pytest

from trax_sl.supervised import trainer_lib

CONFIGS = sorted((pathlib.Path(__file__).parent.parent / "configs").glob("*.gin"))
SMALL = [
    "train.steps = 2",
    "train.eval_frequency = 2",
    "train.eval_steps = 1",
    "train.checkpoints_at = [2]",
]


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def test_the_configs_are_found():
    assert {c.name for c in CONFIGS} >= {
        "transformer_lm_python_chars.gin",
        "copy_transformer.gin",
        "copy_rnn.gin",
        "addition_transformer.gin",
    }


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_config_trains_a_few_steps(config, tmp_path):
    bindings = list(SMALL)
    if config.stem == "transformer_lm_python_chars":
        bindings += [
            f"trax_sl.data.python_chars_inputs.data_dir = '{tmp_path / 'data'}'",
            "trax_sl.data.python_chars_inputs.batch_size = 8",
            "trax_sl.supervised.callbacks.TextSamples.every = 2",
            "trax_sl.supervised.callbacks.TextSamples.length = 8",
        ]
    gin.parse_config_files_and_bindings([str(config)], bindings)
    trainer_lib.train(output_dir=str(tmp_path / "run"))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 2
    losses = [value for row in rows for name, value in row.items() if name.endswith("loss")]
    assert losses and all(math.isfinite(v) for v in losses)
    assert (tmp_path / "run" / "config.gin").exists()
    if config.stem == "transformer_lm_python_chars":
        assert "sample 1" in (tmp_path / "run" / "samples.txt").read_text()
