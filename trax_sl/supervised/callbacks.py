"""Loop callbacks: code that runs around training steps (Trax's `callbacks`).

A callback class takes the `training.Loop` in its constructor; the loop
makes one instance per class given as `Loop(..., callbacks=[MyCallback])`::

    class PrintStep(callbacks.TrainingStepCallback):
        def call_at(self, step):
            return step % 100 == 0

        def on_step_begin(self, step):
            pass

        def on_step_end(self, step):
            print(step, self._loop.model.weights[0].mean())

Steps are numbered from 1. Between steps `loop.model.weights` and
`loop.model.state` hold the current values (their arrays are donated to the
next step, so copy what you keep).
"""

from __future__ import annotations


class TrainingStepCallback:
    """Callback triggered before and after a training step."""

    def __init__(self, loop):
        """Initializes the callback with a `supervised.training.Loop` instance."""
        self._loop = loop

    def call_at(self, step: int) -> bool:
        """Returns whether the callback should be called at a given step."""
        raise NotImplementedError(f"{type(self).__name__} must define call_at")

    def on_step_begin(self, step: int) -> None:
        """Called by Loop before training steps, when call_at returned True."""
        raise NotImplementedError(f"{type(self).__name__} must define on_step_begin")

    def on_step_end(self, step: int) -> None:
        """Called by Loop after training steps, when call_at returned True."""
        raise NotImplementedError(f"{type(self).__name__} must define on_step_end")
