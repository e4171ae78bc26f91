"""Input pipelines in Trax's stream style, TFDS inputs without TensorFlow, and offline datasets.

As in Trax, a pipeline is a `Serial` of stream functions (each maps a
generator of examples to a generator)::

    from trax_sl import data

    pipeline = data.Serial(
        data.TFDS('python_stdlib_chars', keys=('text', 'path')),
        data.Tokenize(keys=[0], vocab_type='char'),
        lambda g: ((x[:512], x[:512]) for x, _ in g),  # LM: inputs = targets.
        data.Shuffle(),
        data.BucketByLength(boundaries=[128, 256], batch_sizes=[32, 16, 8]),
        data.AddLossWeights(),
    )
    inputs = data.make_inputs(train_stream=pipeline)   # or Inputs(fn_of_n_devices)

Batch format
------------
An example is a tuple of numpy arrays (a bare array is a one-feature
example). `Batch` and `BucketByLength` stack examples into a batch, a tuple
with one item per feature:

- a feature of rank >= 1 per example (time on axis 0) becomes a
  `trax_sl.Sequence` of numpy arrays: `values [batch, time, ...]`, zero
  padded, and `mask [batch, time]` bool, True on each example's first
  `length` steps (its size on axis 0 before padding);
- a scalar feature (a class label) becomes a plain numpy array `[batch]`.

`AddLossWeights` then makes `(inputs, targets)` or `(inputs, targets,
weights)` into `(inputs, targets, weights)` where `weights` is always a
plain float32 numpy array shaped like the targets' values, 0.0 where the
targets' mask is False (padding) and where targets == `id_to_mask`.

So a training batch is `(inputs, targets, weights)`: inputs and targets are
Sequences or plain arrays (a plain array is an all-valid Sequence), weights a
plain array that already zeroes padding. Moved to devices as a pytree, the
inputs reach the model (layers read the masks), and outputs, targets and
weights reach the loss. The built-in inputs keep this format:
`sequence_copy_inputs`, `simple_sequence_copy_inputs` and `addition_inputs`
yield `(Sequence, Sequence, weights)`; `python_chars_inputs` pads nothing and
yields plain `(int32, int32, float32)` arrays.

Resuming
--------
Streams are deterministic (shuffles are seeded) and `Inputs.train_stream(
n_devices, position=k)` continues after the first k batches: a checkpoint
saves k (batches taken) and a restarted run gets the same data.
"""

from trax_sl.data.batching import (
    AddLossWeights,
    Batch,
    BucketByLength,
    add_loss_weights,
    batch,
    bucket_by_length,
    pad_to_max_dims,
)
from trax_sl.data.inputs import (
    CastTo,
    Dup,
    FilterByLength,
    Inputs,
    Log,
    PadToLength,
    Serial,
    Shuffle,
    TruncateToLength,
    make_inputs,
    shuffle,
)
from trax_sl.data.python_corpus import (
    PythonCorpusConfig,
    PythonStdlibChars,
    prepare_python_corpus,
    python_chars_inputs,
)
from trax_sl.data.synthetic import addition_inputs, sequence_copy_inputs, simple_sequence_copy_inputs
from trax_sl.data.tf_inputs import TFDS
from trax_sl.data.tokenizers import (
    ConvertToUnicode,
    Detokenize,
    Tokenize,
    detokenize,
    tokenize,
    vocab_size,
)
