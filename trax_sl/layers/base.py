"""The Layer: a stateless description of a computation on a data stack.

A layer holds hyperparameters only. Weights, state and rng go in and come out
of `pure_fn`; `init` derives weights and state from an input signature. The
interactive cache behind `layer(x)` (and the `weights`/`state` properties) is
the one piece of mutable data on a layer, and `pure_fn` never reads it.
"""

from __future__ import annotations

import contextlib
import copy
import fractions
import functools
import inspect
import threading

import jax
import numpy as np

from trax_sl import checks, partitioning, shapes
from trax_sl import sequence as seq
from trax_sl.layers import cache_views, errors, serialization, streaming, trax_checkpoint
from trax_sl.layers import rng as rng_lib
from trax_sl.layers.errors import LayerError
from trax_sl.layers.serialization import (  # noqa: F401  (Trax's base API)
    flatten_weights_and_state,
    np_from_file,
    np_to_file,
    to_list,
    unflatten_weights_and_state,
)
from trax_sl.layers.sharding import shard, unshard, unshard_in_pmap  # noqa: F401  (Trax's base API)

EMPTY_WEIGHTS = ()
EMPTY_STATE = ()
MODES = checks.MODES


class _SharedWeights(dict):
    """Stands where a shared layer's weights would be, at its second use on.

    A pytree with no leaves, so optimizers and checkpoints skip it; the weights
    live at the layer's first occurrence (in depth-first order). It is Trax's
    marker too, the dict `{'__marker_for_cached_weights_': ()}`, so code that
    walks weights as nested lists, tuples and dicts (Trax's `nested_map`, its
    tests' own walkers) passes through it; the plain dict such a walk makes of
    it still marks shared weights (`is_shared`).
    """

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
            dict.__init__(cls._instance, {_TRAX_MARKER_KEY: ()})
        return cls._instance

    def __init__(self):
        pass  # The one instance's content is set once, in __new__.

    __hash__ = object.__hash__  # The marker is one object: hashable by identity, unlike a dict.

    def __repr__(self):
        return "SHARED"

    def short_form(self) -> str:
        return "SHARED"


_TRAX_MARKER_KEY = "__marker_for_cached_weights_"
SHARED = _SharedWeights()
jax.tree_util.register_pytree_node(_SharedWeights, lambda _: ((), None), lambda _a, _c: SHARED)


def is_shared(weights) -> bool:
    """Whether `weights` marks a shared layer's weights: SHARED, or Trax's marker dict equal to it."""
    return weights is SHARED or (type(weights) is dict and weights == SHARED)


GET_WEIGHTS_FROM_CACHE = SHARED  # Trax's name for the marker.


class _Scope(threading.local):
    """Per-thread bookkeeping of one top-level init or pure_fn trace."""

    init_seen: set | None = None
    shared_weights: dict | None = None
    # Set while tl.summary traces an init: recorder(layer, init_fn) returns the init_fn to run.
    init_recorder = None
    # The layer whose init was asked for weights and state only (`init`, `weights_and_state_signature`).
    output_unneeded_for = None
    # Set by precision.WithPolicy while its layer inits: maps each layer's output signature to the
    # compute dtype, so that state made from activations (KV caches) has the dtype they will have.
    init_output_cast = None


_scope = _Scope()


class _Binding:
    """While active, a layer's `weights`/`state`/`rng` are a call's (restored after, even on error)."""

    def __init__(self, layer, values: dict):
        self._layer, self._values, self._previous = layer, values, None

    def __enter__(self) -> dict:
        self._previous = self._layer.__dict__.get("_bound")
        self._layer._bound = self._values
        return self._values

    def __exit__(self, *exc) -> None:
        self._layer._bound = self._previous


def _zero_cotangents(tree):
    """Zero cotangents for `tree` (float0 for integer and bool arrays, as JAX wants for them)."""

    def zero(x):
        x = jax.numpy.asarray(x)
        if jax.numpy.issubdtype(x.dtype, jax.numpy.inexact):
            return jax.numpy.zeros_like(x)
        return np.zeros(x.shape, dtype=jax.dtypes.float0)

    return jax.tree.map(zero, tree)


@functools.cache
def _trax_style(cls: type, method: str) -> bool:
    """Whether `cls` overrides `method` with Trax's signature: one parameter besides self.

    Trax's subclasses write `forward(self, x)` and `init_weights_and_state(self,
    input_signature)`, reading and assigning `self.weights`/`self.state`;
    trax_sl's take and return them: `forward(self, x, weights, state, rng)`.
    """
    function = getattr(cls, method)
    own = function is not getattr(Layer, method)
    parameters = [p for p in inspect.signature(function).parameters.values() if p.kind != p.VAR_KEYWORD]
    required = [p for p in parameters[1:] if p.default is p.empty and p.kind != p.VAR_POSITIONAL]
    return own and len(parameters) == 2 and len(required) == 1


default_rng = rng_lib.default_rng
split_rng = rng_lib.split_rng


def as_items(x, n: int) -> tuple:
    """Layer-packaged stack items (one bare item, several a tuple, none `()`) as a tuple."""
    return (x,) if n == 1 else tuple(x)


def from_items(items, n: int):
    """A tuple of n stack items packaged as layers take and give them: one bare, several a tuple."""
    return items[0] if n == 1 else tuple(items)


def _to_structs(signature):
    return jax.tree.map(lambda s: s.as_struct() if isinstance(s, shapes.ShapeDtype) else s, signature)


def as_signature(inputs):
    """Accepts a signature or example inputs; returns a signature."""
    if isinstance(inputs, (tuple, list)) and inputs and all(isinstance(d, int) for d in inputs):
        raise TypeError(
            f"expected a ShapeDtype or example inputs, got the tuple of ints {tuple(inputs)}; "
            f"pass tl.ShapeDtype({tuple(inputs)}) (float32) or an example array such as "
            f"jnp.zeros({tuple(inputs)})"
        )
    return shapes.signature(inputs)


class Layer:
    """Base class of layers: a function from stack items to stack items.

    Inputs and outputs are packaged as in Trax: with `n_in == 1` one item, not
    wrapped in a tuple; with several, a tuple; with none, `()`. A stack item
    is a JAX array or a `trax_sl.Sequence`. Layers whose math is pointwise in
    time receive the values of Sequence inputs and give Sequence outputs
    back automatically; layers that mix time steps set
    `handles_sequences = True` and see Sequences themselves.

    Subclasses override `init_weights_and_state` and `forward`, and a layer
    that does not stream pointwise in time describes how in `streaming_spec`.
    """

    handles_sequences = False
    _mode = "train"
    # Interactive streaming (predict mode): whether the cached state must first become a
    # stream's (after with_mode of a trained model), and the array steps streamed so far.
    _stream_pending = False
    _stream_steps = 0
    # The weights, state and rng of the Trax-style call running now (see `_trax_call`); None outside one.
    _bound = None
    _init_rng = None  # A key assigned to `layer.rng` (Trax's way to seed the next init).
    # Set on combinators the library builds inside others (Branch's Parallel),
    # so error paths show the layers users wrote.
    hidden_in_paths = False
    # Whether weights and state are one entry per sublayer, so sublayers' caches are live
    # views into this layer's (see `cache_views`); False where they are laid out otherwise.
    cache_follows_sublayers = True
    # A wrapper whose weights are its one sublayer's tree itself, not nested (WrapsOneLayerInPlace).
    weights_are_sublayers = False
    # Layers whose weights and state are their one sublayer's, stacked on a leading axis of this
    # many copies run in series (Repeat); 0 elsewhere. Trax's files list each copy's arrays in turn.
    stacked_copies = 0
    # Whether such a layer's state is instead a tuple of the copies' own (Repeat in predict mode).
    state_per_copy = False
    # Whether predict mode takes the stream already shifted (Trax's ShiftRight is then a no-op),
    # so `verify_contract` compares against the eval-mode model with this layer a no-op too.
    fed_shifted_in_predict_mode = False
    # Where this layer's interactive caches live when they are part of another layer's:
    # (owner, path) per cache, None for a cache of its own.
    _weights_home = None
    _state_home = None
    _own_initialized = False

    def __init__(self, n_in: int = 1, n_out: int = 1, name: str | None = None, sublayers_to_print=None):
        if n_in < 0 or n_out < 0:
            raise ValueError(
                f"{name or type(self).__name__}: n_in and n_out must be >= 0, got n_in={n_in}, n_out={n_out}"
            )
        self._n_in = n_in
        self._n_out = n_out
        self._name = name or type(self).__name__
        self._sublayers: tuple[Layer, ...] = ()
        self._sublayers_to_print = sublayers_to_print
        self._caller = errors.user_frame(self)
        self._weights = EMPTY_WEIGHTS
        self._state = EMPTY_STATE
        self._jitted_pure_fn = None

    # --- Description --------------------------------------------------------

    @property
    def n_in(self) -> int:
        return self._n_in

    @property
    def n_out(self) -> int:
        return self._n_out

    @property
    def name(self) -> str:
        return self._name

    @property
    def sublayers(self) -> tuple[Layer, ...]:
        return self._sublayers

    @property
    def caller(self) -> str:
        """Where (file:line of user code) this layer was created."""
        return self._caller

    @property
    def mode(self) -> str:
        return self._mode

    def __repr__(self) -> str:
        """Trax's form: the name, `_in<n>`/`_out<n>` where not 1, then the sublayers indented in brackets."""
        to_print = self._sublayers_to_print
        subs = self.sublayers if to_print is None else to_print
        head = (
            self.name
            + (f"_in{self.n_in}" if self.n_in != 1 else "")
            + (f"_out{self.n_out}" if self.n_out != 1 else "")
        )
        if not subs:
            return head
        body = "\n".join("  " + line for sub in subs for line in repr(sub).split("\n"))
        return f"{head}[\n{body}\n]"

    # --- Streaming properties (see DESIGN §5) -----------------------------------

    @property
    def streaming_spec(self) -> streaming.StreamingSpec:
        """How this layer streams: the one property a streaming layer overrides.

        The default is a layer pointwise in time that steps when every
        sublayer does. Combinators compose their sublayers' specs
        (`streaming.serial`, `streaming.parallel`); wrappers inherit theirs.
        """
        spec = streaming.POINTWISE
        if not all(sub.supports_step for sub in self.sublayers):
            spec = streaming.NOT_STREAMING
        return streaming.spec.bounded_by(spec, (streaming.spec.of(sub) for sub in self.sublayers))

    def _spec(self) -> streaming.StreamingSpec:
        # Memoised: a spec is a function of the constructor arguments, and
        # composing specs reads every property of every sublayer (uncached,
        # nested combinators would recompute their subtrees once per property).
        spec = self.__dict__.get("_streaming_spec_memo")
        if spec is None:
            spec = self._streaming_spec_memo = self.streaming_spec
        return spec

    def _has_predict_mode_sublayer(self) -> bool:
        # Memoised like the spec: modes and sublayers are fixed once built (with_mode makes twins).
        found = self.__dict__.get("_predict_inside_memo")
        if found is None:
            found = self._predict_inside_memo = any(
                sub.mode == "predict" or sub._has_predict_mode_sublayer() for sub in self.sublayers
            )
        return found

    @property
    def block_size(self) -> int:
        """Time steps of input per predict-mode step (blocks are multiples)."""
        return self._spec().block_size

    @property
    def output_ratio(self) -> fractions.Fraction:
        """Output steps per input step."""
        return self._spec().output_ratio

    @property
    def input_latency(self) -> int:
        """Invalid input steps to feed after the end to flush the outputs."""
        return self._spec().input_latency

    @property
    def output_latency(self) -> int:
        """Leading step-wise outputs to drop to line up with layer-wise ones."""
        return self._spec().output_latency

    @property
    def receptive_field(self) -> tuple[float, float]:
        """(past, future): input steps before and after that an output sees (math.inf: unbounded)."""
        return self._spec().receptive_field

    @property
    def supports_step(self) -> bool:
        """Whether predict mode keeps the streaming contract for this layer."""
        try:
            return self._spec().supports_step
        except ValueError:  # No spec at all: e.g. branches whose output ratios disagree.
            return False

    @property
    def stream_capacity(self) -> int | None:
        """The most valid input steps a predict-mode stream takes (None: unbounded).

        Set by the model's KV caches and position tables (e.g. `max_len`).
        Past it a stream's outputs are invalid: masked with zero values for
        Sequences, zero values for arrays. An interactive call (`model(x)`)
        on arrays that would pass it raises ValueError instead.
        """
        return self._spec().capacity

    @property
    def latency_period(self) -> int:
        """Step-wise input latencies must be multiples of it (a stride-k window's k); Serial sees to it."""
        return self._spec().latency_period

    # --- The two override points --------------------------------------------

    def init_weights_and_state(self, input_signature, rng=None):
        """Returns (weights, state) for inputs of `input_signature`."""
        del input_signature, rng
        return EMPTY_WEIGHTS, EMPTY_STATE

    def forward(self, inputs, weights=None, state=None, rng=None):
        """Returns (outputs, new_state). (Trax calls the base one as `forward(x)`: it raises the same.)"""
        raise NotImplementedError(f"{self.name} must define forward")

    def weight_axes(self, weights):
        """The logical axes of this layer's `weights`: a tree like them with a `partitioning.Axes` per array.

        They say how the weights may be split over a device mesh (see
        `trax_sl.partitioning`). Layers with weights of their own override
        this; the default gives each sublayer's axes where the weights are one
        entry per sublayer, and `partitioning.UNDECLARED` (replicated, with a
        one-time log line) for any other array.

        Args:
            weights: This layer's weights, or their ShapeDtypes.
        """
        subs = self.sublayers
        if subs and isinstance(weights, tuple) and len(weights) == len(subs):
            return tuple(sublayer_weight_axes(sub, w) for sub, w in zip(subs, weights))
        if jax.tree.leaves(weights):
            partitioning.note_undeclared(type(self).__name__)
        return jax.tree.map(lambda _: partitioning.UNDECLARED, weights)

    # --- Pure functions -------------------------------------------------------

    def pure_fn(self, x, weights, state, rng):
        """Applies the layer as a pure function: returns (outputs, new_state).

        jit-, grad- and vmap-able; never reads the interactive cache.
        """
        top_level = _scope.shared_weights is None
        if top_level:
            _scope.shared_weights = collect_weights_by_layer(self, weights)
        try:
            if is_shared(weights):
                weights = _scope.shared_weights[id(self)]
            if isinstance(x, list) and self._n_in > 1:
                x = tuple(x)  # As in Trax, a list of stack items is the tuple of them.
            self._check_arity(x)
            if self._mode == "predict":
                streaming.check_predict_mode(self, x)
            elif top_level and self._has_predict_mode_sublayer():
                # The outermost layer that receives the block names the block size the
                # whole model needs (an inner layer would name its own, smaller one).
                streaming.check_block(self, x)
            outputs, new_state = self._apply(x, weights, state, rng)
            self._check_outputs(outputs)
            return outputs, new_state
        except LayerError as e:
            e.enter(self)
            raise
        except Exception as e:
            raise LayerError(self, "pure_fn", x, e) from e
        finally:
            if top_level:
                _scope.shared_weights = None

    def _apply(self, x, weights, state, rng):
        forward = self._trax_style_forward if _trax_style(type(self), "forward") else self.forward
        if self.handles_sequences:
            return forward(x, weights, state, rng)
        return seq.apply_to_values(lambda v: forward(v, weights, state, rng), x, self._n_in)

    def _trax_style_forward(self, x, weights, state, rng):
        """Runs a Trax-style `forward(self, x)` with `self.weights`/`state`/`rng` bound to this call's.

        A layer with `has_backward` True gives its own gradient: Trax's
        `backward(inputs, output, grad, weights, state, new_state, rng)`
        returning `(grad_inputs, grad_weights)`.
        """

        def run(x, weights, state, rng):
            with self._trax_call(weights, state, rng) as bound:
                outputs = self.forward(x)
            return outputs, bound["state"]

        if not getattr(self, "has_backward", False):
            return run(x, weights, state, rng)

        @jax.custom_vjp
        def with_backward(x, weights, state, rng):
            return run(x, weights, state, rng)

        def forward_pass(x, weights, state, rng):
            outputs, new_state = run(x, weights, state, rng)
            return (outputs, new_state), (x, weights, state, rng, outputs, new_state)

        def backward_pass(saved, cotangents):
            x, weights, state, rng, outputs, new_state = saved
            grad_x, grad_weights = self.backward(x, outputs, cotangents[0], weights, state, new_state, rng)
            return grad_x, grad_weights, _zero_cotangents(state), _zero_cotangents(rng)

        with_backward.defvjp(forward_pass, backward_pass)
        return with_backward(x, weights, state, rng)

    def _trax_call(self, weights, state, rng):
        """Binds `self.weights`, `self.state` and `self.rng` to a call's values while it runs (pure_fn stays pure)."""
        return _Binding(self, {"weights": weights, "state": state, "rng": rng})

    def _check_arity(self, x) -> None:
        if self._n_in == 1:
            return
        if not isinstance(x, (tuple, list)):
            raise ValueError(  # noqa: TRY004 (an arity error, like the one below)
                f"{self.name} takes {self._n_in} inputs from the stack, got one "
                f"({errors.safe_short_form(x)}){self._arity_reason(1)}; pass a tuple of {self._n_in} items"
            )
        if len(x) != self._n_in:
            raise ValueError(
                f"{self.name} takes {self._n_in} inputs from the stack, got {len(x)} "
                f"({errors.safe_short_form(x)}){self._arity_reason(len(x))}"
            )

    def _arity_reason(self, n_given: int) -> str:
        """Why n_in is what it is; Serial says which sublayer would run short."""
        del n_given
        return ""

    def _check_outputs(self, outputs) -> None:
        if self._n_out == 1:
            return
        if not isinstance(outputs, tuple) or len(outputs) != self._n_out:
            got = len(outputs) if isinstance(outputs, tuple) else 1
            raise ValueError(
                f"{self.name} declares n_out={self._n_out} but its forward returned "
                f"{got} item(s): {errors.safe_short_form(outputs)}"
            )

    # --- Initialization -------------------------------------------------------

    def init(self, input_signature, rng=None):
        """Initializes weights and state recursively; returns (weights, state).

        `input_signature` is a ShapeDtype (a tuple of them for n_in > 1, a
        Sequence of them for Sequence inputs), or example inputs. Deterministic
        for a given rng. Also fills the interactive cache used by `layer(x)`.
        As in Trax, None does for a layer without sublayers whose weights do
        not depend on its inputs (`Embedding`, `Dropout`, ...).
        """
        rng = self.rng if rng is None else rng
        if input_signature is None:
            weights, state = self._init_without_signature(rng)
        else:
            try:
                signature = as_signature(input_signature)
            except TypeError as e:
                raise LayerError(self, "init", input_signature, e) from e
            weights, state = self._weights_and_state_only(signature, rng)
        self.weights, self.state = weights, state
        return weights, state

    def _weights_and_state_only(self, signature, rng):
        """`init_tree` without the output signature where it is not needed (see init_with_output_signature)."""
        outer = _scope.output_unneeded_for
        _scope.output_unneeded_for = self
        try:
            weights, state, _ = self.init_tree(signature, rng)
        finally:
            _scope.output_unneeded_for = outer
        return weights, state

    def _init_without_signature(self, rng):
        """(weights, state) from `init_weights_and_state(None, rng)`, for `init(None)`."""
        if self.sublayers:
            raise LayerError(
                self,
                "init",
                None,
                ValueError("init(None) needs a layer without sublayers; give the input signature"),
            )
        try:
            return self.init_weights_and_state(None, rng)
        except Exception as e:
            raise LayerError(
                self, "init", None, ValueError(f"its weights depend on the input signature: give it ({e})")
            ) from e

    def init_tree(self, input_signature, rng):
        """Internal: (weights, state, output_signature) in one pass over the tree.

        Combinators call this on their sublayers and thread signatures through,
        so no abstract evaluation is repeated at every nesting level. A layer
        met a second time in one init gets SHARED for its weights.
        """
        top_level = _scope.init_seen is None
        if top_level:
            _scope.init_seen = set()
        try:
            first = id(self) not in _scope.init_seen
            _scope.init_seen.add(id(self))
            self._check_arity(input_signature)
            init = self.init_with_output_signature
            if _scope.init_recorder is not None:
                init = _scope.init_recorder(self, init)
            weights, state, out = init(input_signature, rng)
            if _scope.init_output_cast is not None:
                out = _scope.init_output_cast(out)
            return (weights if first else SHARED), state, out
        except LayerError as e:
            e.enter(self)
            raise
        except Exception as e:
            raise LayerError(self, "init", input_signature, e) from e
        finally:
            if top_level:
                _scope.init_seen = None

    def init_with_output_signature(self, input_signature, rng):
        """(weights, state, output_signature); combinators override this."""
        if _trax_style(type(self), "init_weights_and_state"):
            # Trax's way: it assigns self.weights / self.state (bound to this init) and may read self.rng.
            with self._trax_call(EMPTY_WEIGHTS, EMPTY_STATE, rng) as bound:
                self.init_weights_and_state(input_signature)
            weights, state = bound["weights"], bound["state"]
            if _scope.output_unneeded_for is self:
                # Trax's init never runs forward: its weights may be set before forward could run.
                return weights, state, None
        else:
            weights, state = self.init_weights_and_state(input_signature, rng)
        if type(self).forward is Layer.forward:
            return weights, state, None  # Trax's no-op base Layer: it inits, and a call says what is missing.
        out = jax.eval_shape(
            lambda x, w, s, r: self._apply(x, w, s, r)[0],
            _to_structs(input_signature),
            weights,
            state,
            rng,
        )
        return weights, state, shapes.from_abstract(out)

    def output_signature(self, input_signature):
        """The signature of the outputs for inputs of `input_signature` (no FLOPs)."""
        return self._abstract_init(input_signature)[2]

    def weights_and_state_signature(self, input_signature):
        """(weights signature, state signature) for inputs of `input_signature`."""
        signature = as_signature(input_signature)
        return shapes.from_abstract(
            jax.eval_shape(lambda rng: self._weights_and_state_only(signature, rng), default_rng())
        )

    def _abstract_init(self, input_signature):
        signature = as_signature(input_signature)
        captured = []

        def init_fn(rng):
            weights, state, out = self.init_tree(signature, rng)
            captured.append(out)
            return weights, state

        weights, state = shapes.from_abstract(jax.eval_shape(init_fn, default_rng()))
        return weights, state, captured[0]

    # --- Interactive use ------------------------------------------------------

    def __setattr__(self, name: str, value) -> None:
        if name == "weighs":  # As Trax's: the typo would otherwise set weights that nothing reads.
            raise ValueError(f"{self.name}: you tried to set `weighs`; did you mean `weights`?")
        super().__setattr__(name, value)

    @property
    def weights(self):
        """The interactive cache's weights (set by `init` or assignment).

        As in Trax, a sublayer's are its part of the initialized model's, and
        assigning them changes the model's (`cache_views`); a combinator not
        initialized itself gives its sublayers' weights. Inside a Trax-style
        `forward(self, x)` or `init_weights_and_state(self, input_signature)`,
        the weights of the call being run (see `Layer`).
        """
        bound = self._bound
        if bound is not None:
            return bound["weights"]
        if not self._initialized and self.cache_follows_sublayers and self.sublayers:
            return tuple(sub.weights for sub in self.sublayers)
        return self._cached("weights")

    @weights.setter
    def weights(self, weights):
        if self._bound is not None:
            self._bound["weights"] = weights
            return
        self._set_cached("weights", weights)
        if self._weights_home is None:
            self._own_initialized = True
        cache_views.bind_sublayers(self, "weights", SHARED)

    @property
    def state(self):
        """The interactive cache's state (set by `init`, `layer(x)` or assignment); a Trax-style call's inside it."""
        bound = self._bound
        if bound is not None:
            return bound["state"]
        if not self._initialized and self.cache_follows_sublayers and self.sublayers:
            return tuple(sub.state for sub in self.sublayers)
        return self._cached("state")

    @state.setter
    def state(self, state):
        """Sets the cached state; in predict mode this (re)starts the interactive stream."""
        if self._bound is not None:
            self._bound["state"] = state
            return
        self._set_cached("state", state)
        cache_views.bind_sublayers(self, "state", SHARED)
        self._stream_pending, self._stream_steps = False, 0

    @property
    def _initialized(self) -> bool:
        """Whether the interactive cache holds weights (this layer's, or its part of its owner's)."""
        home = self._weights_home
        return self._own_initialized if home is None else home[0]._initialized

    def _cache_home(self, kind: str):
        return self._weights_home if kind == "weights" else self._state_home

    def _set_cache_home(self, kind: str, home) -> None:
        """Makes this layer's `kind` cache its part of `home = (owner, path)`'s (its own copy is dropped)."""
        if kind == "weights":
            self._weights_home, self._weights = home, EMPTY_WEIGHTS
        else:
            self._state_home, self._state = home, EMPTY_STATE

    def _cached(self, kind: str):
        """The `kind` ("weights" or "state") cache: its own, or its part of its owner's."""
        home = self._cache_home(kind)
        if home is not None:
            part = cache_views.follow(home[0]._cached(kind), home[1])
            if part is not None:
                return part
            self._set_cache_home(kind, None)  # The owner's tree was replaced by one without this part.
        return self._weights if kind == "weights" else self._state

    def _set_cached(self, kind: str, value) -> None:
        home = self._cache_home(kind)
        if home is not None and cache_views.follow(home[0]._cached(kind), home[1]) is not None:
            owner, path = home
            owner._set_cached(kind, cache_views.replace_at(owner._cached(kind), path, value))
            return
        self._set_cache_home(kind, None)
        if kind == "weights":
            self._weights = value
        else:
            self._state = value

    @property
    def rng(self):
        """The random key of the Trax-style call being run (Trax's `self.rng`); outside one, the key `init` uses.

        As in Trax, assigning it outside a call sets the key the next `init`
        without `rng=` uses.
        """
        bound = self._bound
        if bound is not None:
            return bound["rng"]
        return default_rng() if self._init_rng is None else self._init_rng

    @rng.setter
    def rng(self, rng):
        if self._bound is not None:
            self._bound["rng"] = rng
        else:
            self._init_rng = rng

    def __call__(self, x, weights=None, state=None, rng=None):
        """Runs the layer interactively, compiled and cached per input signature.

        Falls back on the cached weights and state; a layer without weights
        needs no `init`. The new state goes to the cache. In predict mode the
        cache holds a stream, as in Trax: each call takes the next block and
        advances it (after `with_mode('predict')` of an initialised model the
        first call starts the stream from the model's weights and state).
        """
        if weights is None and not self._initialized:
            self._init_for_call(x)
        elif state is None and not self._initialized:  # Weights given, no state yet: a fresh one.
            self.state = self.init_tree(shapes.signature(x), default_rng())[1]
        weights = self._cached("weights") if weights is None else weights
        if state is None and self._stream_pending:
            self.state = streaming.start_stream(self, shapes.signature(x), weights, self._cached("state"))[1]
        steps = self._stream_steps
        if state is None and (self._mode == "predict" or self._has_predict_mode_sublayer()):
            steps = streaming.steps_after_block(self, self._stream_steps, x)
        state = self._cached("state") if state is None else state
        if self._jitted_pure_fn is None:
            self._jitted_pure_fn = jax.jit(self.pure_fn)
        try:
            outputs, new_state = self._jitted_pure_fn(
                x, weights, state, default_rng() if rng is None else rng
            )
        except LayerError:
            raise
        except TypeError as e:  # jit refuses non-array arguments before tracing.
            try:
                checks.check_array_leaves(self.name, x)
            except TypeError as bad_input:
                raise LayerError(self, "__call__", x, bad_input) from bad_input
            raise LayerError(self, "__call__", x, e) from e
        self._set_cached("state", new_state)
        self._stream_steps = steps
        return outputs

    def _init_for_call(self, x) -> None:
        """Fills the cache for a first call without weights: a weightless layer's, or its sublayers' (as Trax)."""
        try:
            checks.check_array_leaves(self.name, x)
        except TypeError as e:
            raise LayerError(self, "__call__", x, e) from e
        weights, state, _ = self.init_tree(shapes.signature(x), self.rng)
        weights, state, missing = cache_views.with_sublayer_caches(self, weights, state, SHARED)
        if missing:
            raise LayerError(
                self,
                "__call__",
                x,
                RuntimeError(
                    f"{self.name} has weights, so it needs them before it runs: call "
                    f"layer.init(input_signature) first (or pass weights=)"
                ),
            )
        self.weights, self.state = weights, state

    # --- Modes ----------------------------------------------------------------

    def with_mode(self, mode: str) -> Layer:
        """A twin of this layer (and its whole graph) running in `mode`.

        The weights tree is the same in every mode, so weights (and the
        interactive cache) carry over as they are; shared instances stay shared.
        """
        if mode not in MODES:
            raise ValueError(f"with_mode: mode must be one of {MODES}, got {mode!r}")
        memo: dict[int, Layer] = {}

        def twin(layer: Layer) -> Layer:
            if id(layer) not in memo:
                new = copy.copy(layer)
                new._mode = mode
                new._jitted_pure_fn = None
                new._streaming_spec_memo = None
                new._predict_inside_memo = None
                new._stream_pending, new._stream_steps = mode == "predict", 0
                memo[id(layer)] = new
                for kind in cache_views.CACHES:  # A view into the twinned owner looks into the owner's twin.
                    home = layer._cache_home(kind)
                    if home is not None and id(home[0]) in memo:
                        new._set_cache_home(kind, (memo[id(home[0])], home[1]))
                new._sublayers = tuple(twin(sub) for sub in layer._sublayers)
                if new._sublayers_to_print is not None:
                    new._sublayers_to_print = [
                        twin(sub) if isinstance(sub, Layer) else sub for sub in new._sublayers_to_print
                    ]
            return memo[id(layer)]

        new = twin(self)
        if self._initialized and self._weights_home is not None:  # Part of a model outside the twin: a copy.
            new._weights_home = new._state_home = None
            new._own_initialized = False
            new.weights, new.state = self.weights, self.state
            new._stream_pending = mode == "predict"
        return new

    # --- Files ----------------------------------------------------------------

    def save_to_file(self, file_name, weights_only: bool = False, input_signature=None):
        """Saves the cached weights (and state) to `file_name`, atomically.

        The format is a zip of `.npy` arrays named by their path in the weights
        tree plus a JSON header: no pickle, so loading runs no code.
        """
        serialization.save_layer(
            file_name, self.weights, None if weights_only else self.state, input_signature
        )

    def init_from_file(self, file_name, weights_only: bool = False, input_signature=None):
        """Initializes from a file written by `save_to_file`, or by Trax; returns (weights, state).

        Arrays are matched to the weights tree by path name and checked
        against the shapes this layer expects. A Trax weights file (a
        gzipped pickle, `.pkl.gz`) is read through an allowlist that runs no
        code (`trax_checkpoint`) and its arrays are matched by order and shape.
        """
        if trax_checkpoint.is_trax_file(file_name):
            return self._init_from_trax_file(file_name, weights_only, input_signature)
        header = serialization.read_header(file_name)
        signature = input_signature
        if signature is None:
            signature = serialization.signature_from_json(header["input_signature"])
        if signature is None:
            raise ValueError(f"init_from_file: {file_name} stores no input signature; pass input_signature=")
        weights_sig, state_sig = self.weights_and_state_signature(signature)
        weights, state = serialization.load_layer(file_name, weights_sig, None if weights_only else state_sig)
        if weights_only:
            _, state = self.init(signature)
        self.weights, self.state = weights, state
        return weights, state

    def _init_from_trax_file(self, file_name, weights_only: bool, input_signature):
        content = trax_checkpoint.read(file_name)
        signature = input_signature
        if signature is None:
            # Trax saves the signature of a whole batch; the model takes its first n_in items.
            signature = trax_checkpoint.input_signature(content, self.n_in)
        if signature is None:
            raise ValueError(f"init_from_file: {file_name} stores no input signature; pass input_signature=")
        weights_sig, state_sig = self.weights_and_state_signature(signature)
        where = f"{self.name}.init_from_file({file_name})"
        weights = trax_checkpoint.assign(content["flat_weights"], self, weights_sig, "weight", where)
        state = None if weights_only else trax_checkpoint.state_or_none(content, self, state_sig, where)
        if state is None:
            _, state = self.init(signature)
        self.weights, self.state = weights, state
        return weights, state


class WrapsOneLayer(Layer):
    """A layer around one sublayer whose streaming properties are the sublayer's.

    For wrappers that change how the sublayer runs (rematerialised, on
    several devices), not what it computes over time.
    """

    handles_sequences = True

    @property
    def sublayer(self) -> Layer:
        """Returns the unique sublayer managed by this layer."""
        return self._sublayers[0]

    @property
    def streaming_spec(self) -> streaming.StreamingSpec:
        return streaming.spec.of(self.sublayer)

    def init_with_output_signature(self, input_signature, rng):
        weights, state, out = init_sublayer(0, self.sublayer, input_signature, rng)
        return (weights,), (state,), out


class WrapsOneLayerInPlace(WrapsOneLayer):
    """A `WrapsOneLayer` whose weights and state are its sublayer's trees themselves, not nested.

    For wrappers that change how a layer computes but must not change its
    checkpoints (rematerialisation, a precision policy): the model with or
    without the wrapper loads the same weights. Their sublayers keep
    interactive caches of their own.
    """

    cache_follows_sublayers = False
    weights_are_sublayers = True

    def weight_axes(self, weights):
        return sublayer_weight_axes(self.sublayer, weights)

    def init_with_output_signature(self, input_signature, rng):
        return init_sublayer(0, self.sublayer, input_signature, rng)


@contextlib.contextmanager
def init_outputs_cast(cast):
    """Inside, every layer's init gives its output signature through `cast` (see `_Scope.init_output_cast`)."""
    outer, _scope.init_output_cast = _scope.init_output_cast, cast
    try:
        yield
    finally:
        _scope.init_output_cast = outer


@contextlib.contextmanager
def shared_weights_mapped(fn):
    """Inside, shared layers inside the pure_fn being traced read `fn` of their weights (e.g. cast)."""
    outer = _scope.shared_weights
    _scope.shared_weights = None if outer is None else {key: fn(w) for key, w in outer.items()}
    try:
        yield
    finally:
        _scope.shared_weights = outer


def sublayer_weight_axes(layer: Layer, weights):
    """`layer.weight_axes(weights)`, or SHARED where a shared layer's weights are SHARED (no arrays)."""
    return SHARED if is_shared(weights) else layer.weight_axes(weights)


def call_sublayer(index: int, layer: Layer, x, weights, state, rng):
    """What combinators use to run sublayer `index`: errors name the index."""
    try:
        return layer.pure_fn(x, weights, state, rng)
    except LayerError as e:
        e.at_index(index)
        raise


def init_sublayer(index: int, layer: Layer, input_signature, rng):
    """Combinators' init of sublayer `index`: (weights, state, output_signature)."""
    try:
        return layer.init_tree(input_signature, rng)
    except LayerError as e:
        e.at_index(index)
        raise


def collect_weights_by_layer(layer: Layer, weights) -> dict[int, object]:
    """Maps id(layer) to its weights, walking the layer graph with the tree.

    Used to resolve SHARED markers. Layers whose weights are not one entry per
    sublayer (e.g. stacked weights) are not descended into.
    """
    found: dict[int, object] = {}

    def walk(node: Layer, w) -> None:
        if is_shared(w) or id(node) in found:
            return
        found[id(node)] = w
        subs = node.sublayers
        if node.weights_are_sublayers:
            walk(subs[0], w)
        elif subs and isinstance(w, tuple) and len(w) == len(subs):
            for sub, sub_w in zip(subs, w):
                walk(sub, sub_w)

    walk(layer, weights)
    return found


class PureLayer(Layer):
    """A pure function from inputs to outputs, with no weights or randomness.

    `supports_step=False` declares that the function mixes time steps (e.g. a
    reduction over the time axis), so it does not stream.
    """

    def __init__(
        self,
        forward_fn,
        n_in: int = 1,
        n_out: int = 1,
        name: str = "PureLayer",
        *,
        supports_step: bool = True,
    ):
        super().__init__(n_in=n_in, n_out=n_out, name=name)
        self._forward_fn = forward_fn
        self._supports_step = supports_step

    @property
    def streaming_spec(self) -> streaming.StreamingSpec:
        return streaming.POINTWISE if self._supports_step else streaming.NOT_STREAMING

    def forward(self, inputs, weights=None, state=None, rng=None):
        """`(outputs, state)`; called as Trax calls it, `forward(inputs)`, the outputs alone."""
        del weights, rng
        outputs = self._forward_fn(inputs)
        return outputs if state is None else (outputs, state)


def Fn(name: str, f, n_out: int = 1, *, supports_step: bool = True) -> Layer:  # noqa: N802 (Trax's name)
    """A weightless layer applying `f`; n_in is f's number of positional args.

    `f` takes each input as a positional argument and returns one array
    (n_out = 1) or a tuple of n_out arrays. Pass `supports_step=False` when f
    mixes time steps (it then refuses predict mode).
    """
    parameters = inspect.signature(f).parameters.values()
    not_positional = {
        inspect.Parameter.VAR_POSITIONAL: "variable args",
        inspect.Parameter.VAR_KEYWORD: "keyword args",
        inspect.Parameter.KEYWORD_ONLY: "keyword args",
    }
    for p in parameters:
        what = "default args" if p.default is not p.empty else not_positional.get(p.kind)
        if what is not None:  # Trax's words: 'default arg', 'keyword arg', 'variable arg'.
            raise ValueError(
                f"Fn {name}: f must take positional arguments only, without defaults; it has {what} "
                f"(parameter {p})"
            )
    n_in = len(list(parameters))
    if n_in == 1:
        return PureLayer(f, n_in=1, n_out=n_out, name=name, supports_step=supports_step)
    return PureLayer(lambda xs: f(*xs), n_in=n_in, n_out=n_out, name=name, supports_step=supports_step)
