"""SequenceLayers' attention: self-attention (trax_sl's own) and cross attention to a constant.

`DotProductSelfAttention` and `LocalDotProductSelfAttention` are trax_sl's,
which take SequenceLayers' fields. `DotProductAttention` is SequenceLayers'
cross attention: the queries come from the input, the keys and values from
the sequence named `source_name` in the constants.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

import trax_sl.layers as tl
from trax_sl import checks, shapes
from trax_sl import sequence as seq
from trax_sl.layers import attention, attention_core, base, streaming
from trax_sl.layers import initializers as init
from trax_sl.sl import common
from trax_sl.sl.dense import EinsumDense

DotProductSelfAttention = tl.DotProductSelfAttention
LocalDotProductSelfAttention = tl.LocalDotProductSelfAttention


def _projection_init(shape, rng):
    """SequenceLayers' attention projections: LeCun normal with fan-in the input depth (`[d, heads, units]`)."""
    flat = init.LeCunNormalInitializer()((shape[0], math.prod(shape[1:])), rng)
    return flat.reshape(tuple(shape))


def _projection(num_heads: int, units_per_head: int, use_bias: bool, name: str) -> EinsumDense:
    return EinsumDense(
        "...a,abc->...bc",
        (num_heads, units_per_head),
        bias_axes="bc" if use_bias else "",
        kernel_init=_projection_init,
        name=name,
        kernel_axes=("embed", "heads", "head_dim"),
    )


class DotProductAttention(base.Layer):
    """Multi-headed cross attention from the input to the source `constants[source_name]`.

    n_in=2, n_out=1. Stack: `x constants` -> `y`, `x [batch, time, d]` and
    the source `[batch, source_time, d_source]` (a Sequence: its invalid steps
    are never attended) -> `y [batch, time, num_heads, units_per_head]` with
    x's mask. Query step t attends to every valid source step. Weights:
    `(query, key, value projections, query_network, key_network,
    value_network)`, each projection an EinsumDense `[d, num_heads,
    units_per_head]` (with bias `[num_heads, units_per_head]` when use_bias);
    absent networks are no-ops with no weights.

    Streams with block_size 1 and no latency (the query network's, if any).

    Predict mode: the state holds the projected source keys and values and
    their mask, computed on the first block and reused after (the source is
    the same at every step), and the query network's state.
    """

    handles_sequences = True

    def __init__(
        self,
        source_name: str,
        num_heads: int,
        units_per_head: int,
        attention_probabilities_dropout_rate: float = 0.0,
        broadcast_dropout_across_queries: bool = False,
        use_bias: bool = False,
        query_network: base.Layer | None = None,
        key_network: base.Layer | None = None,
        value_network: base.Layer | None = None,
        query_scale: float | None = None,
        attention_logits_soft_cap: float | None = None,
        zero_fully_masked: bool = False,
        name: str | None = None,
        mode: str = "train",
    ):
        layer_name = name or "DotProductAttention"
        if not isinstance(source_name, str) or not source_name:
            raise ValueError(f"{layer_name}: source_name must be a non-empty string, got {source_name!r}")
        checks.check_positive(layer_name, num_heads=num_heads, units_per_head=units_per_head)
        checks.check_rate(
            layer_name, attention_probabilities_dropout_rate=attention_probabilities_dropout_rate
        )
        checks.check_mode(layer_name, mode)
        if attention_logits_soft_cap is not None and attention_logits_soft_cap <= 0.0:
            raise ValueError(
                f"{layer_name}: attention_logits_soft_cap must be None or > 0, got {attention_logits_soft_cap!r}"
            )
        networks = []
        for key, network in (
            ("query_network", query_network),
            ("key_network", key_network),
            ("value_network", value_network),
        ):
            if network is None:
                networks.append(tl.Serial())
                continue
            if not isinstance(network, base.Layer) or (network.n_in, network.n_out) != (1, 1):
                raise ValueError(f"{layer_name}: {key} must be a one-in, one-out layer, got {network!r:.80}")
            networks.append(network)
        query = networks[0]
        if (query.block_size, query.output_ratio, query.output_latency) != (1, 1, 0):
            raise ValueError(
                f"{layer_name}: query_network must have block_size 1, output_ratio 1 and no latency, "
                f"got {query.name}"
            )
        # The networks run in the attention's mode (a RoPE query network counts positions in predict).
        networks = tl.Serial(*networks).with_mode(mode).sublayers
        super().__init__(n_in=2, n_out=1, name=layer_name)
        self.constant_names = (source_name,)
        self._source_name = source_name
        self._num_heads = num_heads
        self._units = units_per_head
        self._dropout_rate = attention_probabilities_dropout_rate
        self._broadcast_dropout = broadcast_dropout_across_queries
        self._query_scale = query_scale
        self._soft_cap = attention_logits_soft_cap
        self._zero_fully_masked = zero_fully_masked
        self._mode = mode
        projections = tuple(
            _projection(num_heads, units_per_head, use_bias, f"{what}_projection")
            for what in ("query", "key", "value")
        )
        self._sublayers = projections + tuple(networks)

    @property
    def streaming_spec(self) -> streaming.StreamingSpec:
        # Only the queries stream: the keys and values are of the whole source, at every step.
        return streaming.spec.of(self.sublayers[3])

    def _source(self, constants) -> seq.Sequence:
        return common.get_constant(self.name, constants, self._source_name, required_rank=3)

    def _keys_and_values(self, source, weights, state, rngs):
        """The projected source's keys and values (Sequences) and the key/value networks' states."""
        outputs, states = [], []
        for i in (1, 2):
            projected, _ = base.call_sublayer(i, self.sublayers[i], source, weights[i], (), rngs[i])
            y, s = base.call_sublayer(
                i + 3, self.sublayers[i + 3], projected, weights[i + 3], state[i + 3], rngs[i + 3]
            )
            outputs.append(y if isinstance(y, seq.Sequence) else seq.Sequence(y, source.mask))
            states.append(s)
        return outputs, states

    def init_weights_and_state(self, input_signature, rng):
        x, constants = input_signature
        if not isinstance(constants, dict) or self._source_name not in constants:
            raise ValueError(
                f"{self.name} reads {self._source_name!r} from the constants under its input, got "
                f"{shapes.short_form(constants)}"
            )
        source = constants[self._source_name]
        if not isinstance(source, seq.Sequence):
            source = seq.Sequence(source, shapes.ShapeDtype(tuple(source.shape[:2]), jnp.bool_))
        if len(seq.values_of(x).shape) != 3 or len(source.values.shape) != 3:
            raise ValueError(
                f"{self.name}: expected x [batch, time, depth] and source [batch, source_time, depth], "
                f"got {shapes.short_form(x)} and {shapes.short_form(source)}"
            )
        rngs = jax.random.split(rng, 6)
        weights, states = [], []
        signatures = [x, source, source]
        for i in range(3):
            w, _, out = base.init_sublayer(i, self.sublayers[i], signatures[i], rngs[i])
            weights.append(w)
            signatures[i] = out
        for i in range(3):
            w, s, _ = base.init_sublayer(i + 3, self.sublayers[i + 3], signatures[i], rngs[i + 3])
            weights.append(w)
            states.append(s)
        cache = ()
        if self._mode == "predict":
            batch, source_time = source.values.shape[:2]
            kv_shape = (batch, source_time, self._num_heads, self._units)
            dtype = jnp.result_type(source.values.dtype, jnp.float32)
            cache = (
                jnp.zeros((batch,), jnp.bool_),  # Whether each row's keys and values are projected.
                jnp.zeros(kv_shape, dtype),
                jnp.zeros(kv_shape, dtype),
                jnp.zeros((batch, source_time), jnp.bool_),
            )
        return tuple(weights), ((), (), (), *states, cache)

    def forward(self, inputs, weights, state, rng):
        x, constants = inputs
        x, was_sequence = seq.as_sequence(x)
        source = self._source(constants).mask_invalid()
        rngs = base.split_rng(rng, 7)
        queries, _ = base.call_sublayer(0, self.sublayers[0], x.mask_invalid(), weights[0], (), rngs[0])
        queries, query_state = base.call_sublayer(
            3, self.sublayers[3], queries, weights[3], state[3], rngs[3]
        )
        queries = seq.values_of(queries)
        new_state = list(state)
        new_state[3] = query_state
        if self._mode == "predict":
            stored, keys, values, key_mask = state[6]

            def project():
                (k, v), kv_states = self._keys_and_values(source, weights, state, rngs)
                return (k.mask_invalid().values, v.mask_invalid().values, k.mask & v.mask), tuple(kv_states)

            (keys, values, key_mask), (new_state[4], new_state[5]), stored = attention.compute_once_per_row(
                stored, (keys, values, key_mask), (state[4], state[5]), project
            )
            new_state[6] = (stored, keys, values, key_mask)
        else:
            (k, v), (new_state[4], new_state[5]) = self._keys_and_values(source, weights, state, rngs)
            keys, values, key_mask = k.mask_invalid().values, v.mask_invalid().values, k.mask & v.mask
        y = attention_core.multihead_attention(
            queries,
            keys.astype(queries.dtype),
            values.astype(queries.dtype),
            key_mask[:, None, None, :],
            **self._attend_kwargs(rngs[6]),
        )
        return seq.like_input(seq.Sequence(y, x.mask), was_sequence), tuple(new_state)

    def _attend_kwargs(self, rng) -> dict:
        return attention_core.attend_options(
            self.name,
            self._mode,
            rng,
            dropout_rate=self._dropout_rate,
            soft_cap=self._soft_cap,
            broadcast_dropout_across_queries=self._broadcast_dropout,
            zero_fully_masked=self._zero_fully_masked,
            query_scale=self._query_scale,
        )
