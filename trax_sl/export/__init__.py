"""Exporting a trained streaming model: StableHLO, weights and a JSON header in one file.

    trax_sl.export.save(model, "model.export", block_signature=tokens[:, :1],
                        weights=model.weights, state=model.state)
    exported = trax_sl.export.load("model.export")  # loader.load: JAX and NumPy only
    state = exported.init_state(batch_size=4)
    outputs, state = exported.step(block, state)

`save` (in `saving.py`) exports the model's predict-mode step, its stream
start and its layer-wise function with `jax.export`, the batch size symbolic;
`loader.py` reads the file with `jax`, `numpy` and the standard library
alone, so it can be copied next to a deployment. `python -m trax_sl.export`
exports a trained run's checkpoint.
"""

from trax_sl.export.loader import FORMAT, ExportedModel, load
from trax_sl.export.saving import DEFAULT_PLATFORMS, save

__all__ = ["DEFAULT_PLATFORMS", "FORMAT", "ExportedModel", "load", "save"]
