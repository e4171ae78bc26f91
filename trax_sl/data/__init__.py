"""Input pipelines in Trax's stream style, TFDS inputs without TensorFlow, and offline datasets.

As in Trax, a pipeline is a `Serial` of stream functions (each maps a
generator of examples to a generator)::

    from trax_sl import data

    pipeline = data.Serial(
        data.TFDS('python_stdlib_chars', keys=('text', 'path')),
        data.Tokenize(keys=[0], vocab_type='char'),
        lambda g: ((x[:512], x[:512]) for x, _ in g),  # LM: inputs = targets.
        data.Shuffle(),
        data.BucketByLength(boundaries=[128, 256], batch_sizes=[32, 16, 8], sequences=True),
        data.AddLossWeights(),
    )
    inputs = data.make_inputs(train_stream=pipeline)   # or Inputs(fn_of_n_devices)

Batch format
------------
An example is a tuple of numpy arrays (a bare array is a one-feature
example). `Batch` and `BucketByLength` stack examples into a batch, a tuple
with one item per feature, each a zero-padded numpy array as in Trax. With
`sequences=True` (what trax_sl's own inputs do):

- a feature of rank >= 1 per example (time on axis 0) becomes a
  `trax_sl.Sequence` of numpy arrays: `values [batch, time, ...]`, zero
  padded, and `mask [batch, time]` bool, True on each example's first
  `length` steps (its size on axis 0 before padding);
- a scalar feature (a class label) becomes a plain numpy array `[batch]`.

`AddLossWeights` then makes `(inputs, targets)` or `(inputs, targets,
weights)` into `(inputs, targets, weights)` where `weights` is always a
plain float32 numpy array shaped like the targets' values, 0.0 where the
targets' mask is False (padding; padded arrays have no mask: there, as in
Trax, `id_to_mask=0` zeroes the padding) and where targets == `id_to_mask`.

So a training batch is `(inputs, targets, weights)`: inputs and targets are
Sequences or plain arrays (a plain array is an all-valid Sequence), weights a
plain array that already zeroes padding. Moved to devices as a pytree, the
inputs reach the model (layers read the masks), and outputs, targets and
weights reach the loss. The built-in inputs keep this format:
`sequence_copy_inputs`, `simple_sequence_copy_inputs` and `addition_inputs`
yield `(Sequence, Sequence, weights)`; `python_chars_inputs` pads nothing and
yields plain `(int32, int32, float32)` arrays.

Grain, resuming and global batches
----------------------------------
A `Serial` of the steps of this module (each a `steps.Step`: a Trax stream
function that also applies itself to a Grain dataset) is one Grain dataset:
random access up to the batching step, then an iterator whose state is a
few integers. A training run saves that state with each checkpoint and
restores it on resume in O(1); the built-in inputs are random-access
datasets of batches. A pipeline with any other function in it is a plain
stream, which a resumed run replays (streams are deterministic: shuffles are
seeded). `Inputs.train_stream(n_devices, position=k)` still continues after
the first k batches.

`batch_size` is the global batch: every process makes the same batches and
keeps its rows (`per_process=True` for a batch size per process). Batches
are made ahead of use in a thread, or in worker processes (`read_ahead`).
"""

import types

from trax_sl.data import inputs
from trax_sl.data.batcher import batcher, make_additional_stream, make_parallel_stream
from trax_sl.data.batching import (
    AddLossWeights,
    Batch,
    BucketByLength,
    add_loss_weights,
    batch,
    bucket_by_length,
    pad_to_max_dims,
)
from trax_sl.data.grain_streams import read_ahead
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
from trax_sl.data.steps import Step
from trax_sl.data.synthetic import (
    addition_input_stream,
    addition_inputs,
    random_inputs,
    sequence_copy_inputs,
    simple_sequence_copy_inputs,
    sine_inputs,
)
from trax_sl.data.tf_inputs import TFDS, data_streams, no_preprocess
from trax_sl.data.tokenizers import (
    ConvertToUnicode,
    Detokenize,
    Tokenize,
    detokenize,
    tokenize,
    vocab_size,
)
from trax_sl.data.trax_streams import (
    AppendValue,
    ConcatenateToLMInput,
    CountAndSkip,
    FilterEmptyExamples,
    Parallel,
    PrefixLM,
    UnBatch,
    data_counters,
    random_spans_noise_mask,
)

# Trax's `trax.data.inputs` module holds every stream function; here the rest live in sibling
# modules. So that Trax code's `inputs.addition_inputs(...)` runs as written, that module also
# gets the package's names it does not define.
for _name, _value in list(globals().items()):
    if not _name.startswith("_") and not isinstance(_value, types.ModuleType) and not hasattr(inputs, _name):
        setattr(inputs, _name, _value)
