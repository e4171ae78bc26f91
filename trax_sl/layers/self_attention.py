"""SequenceLayers' self-attention: DotProductSelfAttention, LocalDotProductSelfAttention.

Constructor keywords are SequenceLayers' config field names
(`sl.DotProductSelfAttention.Config(num_heads=2, ...)` becomes
`tl.DotProductSelfAttention(num_heads=2, ...)`), and the output is SL's
`[batch, time, num_heads, units_per_head]`. Both stream with a KV cache (see
`attention_core`); global attention (`max_past_horizon=-1`), which
SequenceLayers cannot step, streams with a cache of `cache_size` steps.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from trax_sl import checks, partitioning, shapes
from trax_sl import sequence as seq
from trax_sl.layers import attention_core, base, combinators, streaming
from trax_sl.layers import initializers as init


def _sequence_signature(signature) -> seq.Sequence:
    if isinstance(signature, seq.Sequence):
        return signature
    return seq.Sequence(signature, shapes.ShapeDtype(tuple(signature.shape[:2]), jnp.bool_))


class _QKVProjection(base.Layer):
    """Projects `[..., d]` to queries `[..., num_heads, units]` and keys, values `[..., num_kv_heads, units]`.

    n_in=1, n_out=3. Weights `(w_q, w_k, w_v)` with `w_q [d, num_heads, units]`
    and `w_k, w_v [d, num_kv_heads, units]` (SequenceLayers'
    SeparateQueryKeyValueProjection), each `(w, b)` when use_bias.
    Predict mode: stateless.
    """

    def __init__(self, num_heads: int, num_kv_heads: int, units_per_head: int, use_bias: bool):
        super().__init__(n_in=1, n_out=3, name="QKVProjection")
        self._heads = (num_heads, num_kv_heads, num_kv_heads)
        self._units = units_per_head
        self._use_bias = use_bias

    def weight_axes(self, weights):
        axes = []
        for heads in ("heads", "kv_heads", "kv_heads"):
            w, b = partitioning.Axes("embed", heads, "head_dim"), partitioning.Axes(heads, "head_dim")
            axes.append((w, b) if self._use_bias else w)
        return tuple(axes)

    def init_weights_and_state(self, input_signature, rng):
        d = input_signature.shape[-1]
        weights = []
        for heads, key in zip(self._heads, jax.random.split(rng, 3)):
            w = init.LeCunNormalInitializer()((d, heads * self._units), key).reshape((d, heads, self._units))
            weights.append((w, jnp.zeros((heads, self._units), jnp.float32)) if self._use_bias else w)
        return tuple(weights), ()

    def forward(self, x, weights, state, rng):
        # One einsum for all three: fewer dots to compile and to run.
        kernels = [w[0] if self._use_bias else w for w in weights]
        y = jnp.einsum("...d,dnh->...nh", x, jnp.concatenate(kernels, axis=1))
        if self._use_bias:
            b = jnp.concatenate([w[1] for w in weights], axis=0)
            y = y + b.reshape((1,) * (y.ndim - 2) + tuple(b.shape))
        n, n_kv = self._heads[0], self._heads[1]
        return (y[..., :n, :], y[..., n : n + n_kv, :], y[..., n + n_kv :, :]), state


class DotProductSelfAttention(base.Layer):
    """Multi-headed dot-product self-attention within horizons (SequenceLayers).

    n_in=1, n_out=1. `[batch, time, d]` -> `[batch, time, num_heads,
    units_per_head]` (a Sequence gives a Sequence with the input's mask).
    Query step t attends to the valid steps s with `t - max_past_horizon <= s
    <= t + max_future_horizon` (-1: unlimited). Weights: `(projection,
    query_network, key_network, value_network)` weights, the projection being
    `(w_q [d, num_heads, units], w_k, w_v [d, num_kv_heads, units])` (each
    `(w, b)` with use_bias); absent networks are no-ops with no weights.

    Streams with block_size 1 when both horizons are >= 0, or with
    `max_past_horizon=-1` and a `cache_size`; input_latency =
    output_latency = max_future_horizon. Not streamable with
    `max_future_horizon=-1`.

    Predict mode: the state holds the KV cache (the last max_past_horizon +
    max_future_horizon steps; or, for max_past_horizon=-1, `cache_size` slots
    of each row's valid steps), the max_future_horizon queries awaiting their
    future, and the networks' states. With max_past_horizon=-1 a row's output
    at step t is invalid (mask False) once the row has more than cache_size
    valid steps up to step t + max_future_horizon: the cache never truncates
    silently, and memory never grows with the stream.
    """

    handles_sequences = True
    _local_block_size = None

    def __init__(
        self,
        num_heads: int,
        units_per_head: int,
        max_past_horizon: int,
        max_future_horizon: int = 0,
        num_kv_heads: int | None = None,
        use_bias: bool = False,
        query_network: base.Layer | None = None,
        key_network: base.Layer | None = None,
        value_network: base.Layer | None = None,
        attention_probabilities_dropout_rate: float = 0.0,
        broadcast_dropout_across_queries: bool = False,
        attention_logits_soft_cap: float | None = None,
        query_scale: float | None = None,
        zero_fully_masked: bool = False,
        cache_size: int | None = None,
        mode: str = "train",
        name: str | None = None,
    ):
        """Returns a self-attention layer.

        Args:
          num_heads: query heads; a multiple of num_kv_heads.
          units_per_head: size of each head.
          max_past_horizon: past steps each step sees; -1 for all.
          max_future_horizon: future steps each step sees; -1 for all (not streamable).
          num_kv_heads: key/value heads (grouped-query attention); None: num_heads.
          use_bias: learn biases in the query/key/value projections.
          query_network: a layer applied to the `[batch, time, heads, units]`
            queries (e.g. ApplyRotaryPositionalEncoding); block_size 1,
            output_ratio 1, no latency.
          key_network: the same for the keys.
          value_network: the same for the values.
          attention_probabilities_dropout_rate: dropout on the attention
            probabilities in 'train' mode.
          broadcast_dropout_across_queries: share the dropout mask across queries (T5).
          attention_logits_soft_cap: if set, logits become `cap * tanh(logits / cap)`.
          query_scale: query scale; None: `1 / sqrt(units_per_head)`.
          zero_fully_masked: queries that see no valid key output zeros.
          cache_size: with max_past_horizon=-1, the KV cache length (in valid
            steps per row) for predict mode; required there.
          mode: 'train', 'eval' or 'predict'.
          name: the layer's name.
        """
        layer_name = type(self).__name__
        checks.check_positive(layer_name, num_heads=num_heads, units_per_head=units_per_head)
        if num_kv_heads is not None:
            checks.check_positive(layer_name, num_kv_heads=num_kv_heads)
            if num_heads % num_kv_heads:
                raise ValueError(
                    f"{layer_name}: num_heads must be a multiple of num_kv_heads, got "
                    f"num_heads={num_heads}, num_kv_heads={num_kv_heads}"
                )
        for key, value in (
            ("max_past_horizon", max_past_horizon),
            ("max_future_horizon", max_future_horizon),
        ):
            if not isinstance(value, (int, np.integer)) or value < -1:
                raise ValueError(
                    f"{layer_name}: {key} must be an integer >= -1 (-1: unlimited), got {key}={value!r}"
                )
        if max_past_horizon == 0 and max_future_horizon == 0:
            raise ValueError(
                f"{layer_name}: max_past_horizon and max_future_horizon are both 0, so each "
                f"step would see only itself; allow at least one past or future step"
            )
        if cache_size is not None:
            if max_past_horizon != -1:
                raise ValueError(
                    f"{layer_name}: cache_size is for max_past_horizon=-1 (a finite horizon "
                    f"sizes its own cache), got cache_size={cache_size} with "
                    f"max_past_horizon={max_past_horizon}"
                )
            checks.check_positive(layer_name, cache_size=cache_size)
        checks.check_rate(
            layer_name, attention_probabilities_dropout_rate=attention_probabilities_dropout_rate
        )
        if attention_logits_soft_cap is not None and attention_logits_soft_cap <= 0.0:
            raise ValueError(
                f"{layer_name}: attention_logits_soft_cap must be None or > 0, got "
                f"{attention_logits_soft_cap!r}"
            )
        networks = []
        for key, network in (
            ("query_network", query_network),
            ("key_network", key_network),
            ("value_network", value_network),
        ):
            networks.append(
                combinators.Serial() if network is None else _check_network(layer_name, key, network)
            )
        # As SequenceLayers makes the networks in the attention's own context: in predict mode a
        # RoPE network must count positions across blocks, in eval mode dropout must be off.
        # One twin of all three keeps a network shared between them shared.
        networks = combinators.Serial(*networks).with_mode(mode).sublayers
        super().__init__(name=name or layer_name)
        self._num_heads = num_heads
        self._num_kv_heads = num_kv_heads or num_heads
        self._units = units_per_head
        self._past = int(max_past_horizon)
        self._future = int(max_future_horizon)
        self._dropout_rate = attention_probabilities_dropout_rate
        self._broadcast_dropout = broadcast_dropout_across_queries
        self._soft_cap = attention_logits_soft_cap
        self._query_scale = query_scale
        self._zero_fully_masked = zero_fully_masked
        self._cache_size = cache_size
        self._mode = mode
        projection = _QKVProjection(num_heads, self._num_kv_heads, units_per_head, use_bias)
        self._sublayers = (projection, *networks)

    # --- Streaming properties ---

    @property
    def streaming_spec(self) -> streaming.StreamingSpec:
        spec = streaming.StreamingSpec(
            input_latency=max(self._future, 0),
            output_latency=max(self._future, 0),
            receptive_field=(
                attention_core.horizon_field(self._past),
                attention_core.horizon_field(self._future),
            ),
        )
        if self._past < 0 and self._cache_size is not None:
            spec = dataclasses.replace(
                spec, capacity=self._cache_size, capacity_source=f"{self.name} cache_size={self._cache_size}"
            )
        spec = streaming.spec.bounded_by(spec, (streaming.spec.of(sub) for sub in self.sublayers))
        if self._future < 0 or (self._past < 0 and self._cache_size is None):
            return spec.not_streaming(
                "global attention (max_past_horizon=-1) needs cache_size to stream"
                if self._future >= 0
                else "max_future_horizon=-1 attends to the whole sequence"
            )
        return spec if all(sub.supports_step for sub in self.sublayers) else spec.not_streaming()

    # --- Weights, state and the computation ---

    def init_weights_and_state(self, input_signature, rng):
        signature = _sequence_signature(input_signature)
        if len(signature.values.shape) != 3:
            raise ValueError(
                f"{self.name}: expected input [batch, time, depth], got {shapes.short_form(signature)}"
            )
        rngs = jax.random.split(rng, 4)
        w_p, s_p, (q_sig, k_sig, v_sig) = base.init_sublayer(0, self.sublayers[0], signature, rngs[0])
        weights, states = [w_p], [s_p]
        for i, sig in enumerate((q_sig, k_sig, v_sig)):
            w, s, out = base.init_sublayer(
                i + 1, self.sublayers[i + 1], _sequence_signature(sig), rngs[i + 1]
            )
            weights.append(w)
            states.append(s)
            if i == 0:
                q_sig = out
            elif i == 1:
                k_sig = out
        cache = ()
        if self._mode == "predict" and self._future >= 0:  # Unlimited lookahead does not stream.
            if self._past == -1 and self._cache_size is None:
                raise ValueError(
                    f"{self.name}: max_past_horizon=-1 streams with a KV cache of cache_size "
                    f"steps; pass cache_size= (e.g. the longest stream you will run)"
                )
            cache = attention_core.init_stream_cache(
                _sequence_signature(q_sig).values,
                _sequence_signature(k_sig).values,
                self._past,
                self._future,
                self._cache_size,
            )
        return tuple(weights), (cache, tuple(states))

    def _attend_fn(self, rng):
        kwargs = attention_core.attend_options(
            self.name,
            self._mode,
            rng,
            dropout_rate=self._dropout_rate,
            soft_cap=self._soft_cap,
            broadcast_dropout_across_queries=self._broadcast_dropout,
            zero_fully_masked=self._zero_fully_masked,
            query_scale=self._query_scale,
        )
        return lambda q, k, v, visible: attention_core.multihead_attention(q, k, v, visible, **kwargs)

    def forward(self, x, weights, state, rng):
        x, was_sequence = seq.as_sequence(x)
        x = x.mask_invalid()
        cache, sub_states = state
        rngs = base.split_rng(rng, 5)
        (q, k, v), s_p = base.call_sublayer(0, self.sublayers[0], x, weights[0], sub_states[0], rngs[0])
        new_states = [s_p]
        qkv = []
        for i, item in enumerate((q, k, v)):
            y, s = base.call_sublayer(
                i + 1, self.sublayers[i + 1], item, weights[i + 1], sub_states[i + 1], rngs[i + 1]
            )
            qkv.append(y if isinstance(y, seq.Sequence) else seq.Sequence(y, x.mask))
            new_states.append(s)
        attend_fn = self._attend_fn(rngs[4])
        if self._mode == "predict":
            y, cache = attention_core.self_attention_step(*qkv, cache, self._past, self._future, attend_fn)
        else:
            y = attention_core.self_attention_layer(
                *qkv, self._past, self._future, attend_fn, self._local_block_size
            )
        return seq.like_input(y, was_sequence), (cache, tuple(new_states))


class LocalDotProductSelfAttention(DotProductSelfAttention):
    """Self-attention within finite horizons, computed block by block (SequenceLayers).

    n_in=1, n_out=1. The same function as DotProductSelfAttention with the
    same horizons (and the same weights), but layer-wise the queries are
    taken `block_size` at a time against the `max_past_horizon + block_size
    + max_future_horizon` keys around them, so memory grows linearly with
    time. `block_size` is a layer-wise detail, not a streaming block size:
    the layer streams with block_size 1 (as in SequenceLayers);
    input_latency = output_latency = max_future_horizon.

    Predict mode: the state holds the keys and values of the last
    max_past_horizon + max_future_horizon steps, the max_future_horizon
    queries awaiting their future, and the networks' states.
    """

    def __init__(
        self,
        num_heads: int,
        units_per_head: int,
        block_size: int,
        max_past_horizon: int,
        max_future_horizon: int = 0,
        **kwargs,
    ):
        """Returns a local self-attention layer; `block_size` >= 1, `max_past_horizon` >= 1,
        `max_future_horizon` >= 0, other arguments as DotProductSelfAttention's."""
        checks.check_positive(
            "LocalDotProductSelfAttention", block_size=block_size, max_past_horizon=max_past_horizon
        )
        checks.check_non_negative("LocalDotProductSelfAttention", max_future_horizon=max_future_horizon)
        if kwargs.get("cache_size") is not None:
            raise ValueError(
                "LocalDotProductSelfAttention: cache_size is for DotProductSelfAttention with "
                "max_past_horizon=-1; a local attention's horizons size its cache"
            )
        super().__init__(num_heads, units_per_head, max_past_horizon, max_future_horizon, **kwargs)
        self._local_block_size = block_size


def _check_network(layer_name: str, key: str, network) -> base.Layer:
    if not isinstance(network, base.Layer):
        raise TypeError(f"{layer_name}: {key} must be a Layer, got {type(network).__name__}")
    if (network.n_in, network.n_out) != (1, 1):
        raise ValueError(
            f"{layer_name}: {key} must take and return one item, got n_in={network.n_in}, "
            f"n_out={network.n_out}"
        )
    streaming = (network.block_size, network.output_ratio, network.input_latency, network.output_latency)
    if streaming != (1, 1, 0, 0):
        raise ValueError(
            f"{layer_name}: {key} must have block_size 1, output_ratio 1 and no latency, got "
            f"{network.name} with block_size={streaming[0]}, output_ratio={streaming[1]}, "
            f"input_latency={streaming[2]}, output_latency={streaming[3]}"
        )
    return network
