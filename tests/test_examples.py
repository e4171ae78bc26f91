"""The examples run: the stream server serves every stream it admits."""

import importlib.util
import os

import trax_sl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(trax_sl.__file__)))


def load_example(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "examples", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_stream_server_serves_every_stream_through_its_slots():
    results = load_example("stream_server").serve(n_slots=2, n_streams=5, seed=1)
    assert results["streams served"] == 5 and results["slots"] == 2
    assert 0 < results["p50 step latency (ms)"] <= results["p99 step latency (ms)"]
    assert results["real-time factor"] > 0
