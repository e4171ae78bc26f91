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

import os

import gin
import jax
import numpy as np

from trax_sl.supervised import decoding


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


@gin.configurable(module="trax_sl.supervised.callbacks", denylist=["loop"])
class TextSamples(TrainingStepCallback):
    """Prints text sampled from the model in predict mode every `every` steps.

    For byte- or character-level language models (ids are UTF-8 bytes): the
    current weights drive `decoding.autoregressive_sample`, and each sample
    is printed after its prompt, through the loop's log (above the progress
    bar; `Loop.log_text`), which also puts them in TensorBoard's text
    dashboard (tag `samples` of the `train` run). Samples also go to
    `output_dir/samples.txt`.
    """

    def __init__(
        self,
        loop,
        every: int = 500,
        n_samples: int = 2,
        length: int = 200,
        temperature: float = 0.6,
        prompts: tuple[str, ...] = ("def ", "import "),
        seed: int = 0,
    ):
        super().__init__(loop)
        if every < 1 or n_samples < 1 or length < 1:
            raise ValueError(
                f"TextSamples: every, n_samples and length must be >= 1, got every={every}, "
                f"n_samples={n_samples}, length={length}"
            )
        self._every = every
        self._n_samples = n_samples
        self._length = length
        self._temperature = temperature
        self._prompts = tuple(prompts) or ("",)
        self._seed = seed

    def call_at(self, step: int) -> bool:
        return step % self._every == 0

    def on_step_begin(self, step: int) -> None:
        pass

    def on_step_end(self, step: int) -> None:
        model = self._loop.model
        lines = [f"Samples at step {step} (temperature {self._temperature}):"]
        for i in range(self._n_samples):
            prompt = self._prompts[i % len(self._prompts)].encode("utf-8")
            context = np.frombuffer(prompt, np.uint8).astype(np.int32).reshape((1, -1)) if prompt else None
            tokens = decoding.autoregressive_sample(
                model,
                context=context,
                batch_size=1,
                temperature=self._temperature,
                max_length=self._length,
                eos_id=-1,
                rng=jax.random.PRNGKey(self._seed + 1000 * step + i),
                weights=model.weights,
                state=model.state,
            )
            text = (prompt + bytes(int(t) % 256 for t in tokens[0])).decode("utf-8", errors="replace")
            lines.append(f"--- sample {i} ---\n{text}")
        report = "\n".join(lines)
        self._loop.log_text("samples", report)
        output_dir = getattr(self._loop, "_output_dir", None)
        if output_dir and jax.process_index() == 0:
            with open(os.path.join(output_dir, "samples.txt"), "a", encoding="utf-8") as f:
                f.write(report + "\n")
