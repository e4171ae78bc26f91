"""The examples run: the stream server serves every stream it admits."""

from tests import scripts


def load_example(name):
    return scripts.load(f"examples/{name}.py")


def test_the_stream_server_serves_every_stream_through_its_slots():
    results = load_example("stream_server").serve(n_slots=2, n_streams=5, seed=1)
    assert results["streams served"] == 5 and results["slots"] == 2
    assert 0 < results["p50 step latency (ms)"] <= results["p99 step latency (ms)"]
    assert results["real-time factor"] > 0
