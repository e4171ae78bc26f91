"""Live views of the interactive cache: a sublayer's weights and state are its part of the tree's.

As in Trax, after `model.init(sig)` each sublayer's `weights` is its part of
`model.weights`, and assigning it (`model.sublayers[0].weights = pretrained`)
changes `model.weights`. Here the tree is stored once, on the layer that was
initialized (the owner); each sublayer keeps a home `(owner, path)` per cache
("weights", "state") and reads and writes through it. A combinator's cache
follows its sublayers when it is one entry per sublayer (Serial, Branch,
Parallel, ...); a layer whose weights are laid out otherwise (stacked by
`Repeat`, replicated by `Accelerate`) sets `cache_follows_sublayers = False`
and its sublayers keep caches of their own.
"""

from __future__ import annotations

import jax

CACHES = ("weights", "state")
EMPTY = ()


def follows_sublayers(layer, tree) -> bool:
    """Whether `tree` (a cache of `layer`) holds one entry per sublayer."""
    subs = layer.sublayers
    return bool(subs) and layer.cache_follows_sublayers and isinstance(tree, tuple) and len(tree) == len(subs)


def follow(tree, path: tuple[int, ...]):
    """The part of `tree` at `path`; None where the tree no longer has that part."""
    for i in path:
        if not isinstance(tree, tuple) or i >= len(tree):
            return None
        tree = tree[i]
    return tree


def replace_at(tree, path: tuple[int, ...], value):
    """`tree` with its part at `path` replaced by `value` (tuples rebuilt along the path)."""
    if not path:
        return value
    i = path[0]
    return tree[:i] + (replace_at(tree[i], path[1:], value),) + tree[i + 1 :]


def bind_sublayers(layer, kind: str, shared) -> None:
    """Points the `kind` cache of every sublayer below `layer` into the tree `layer` reads.

    Each sublayer met again (a shared layer) keeps the home of its first use,
    as `init` gives its weights there; `shared` is the marker of later uses.
    """
    home = layer._cache_home(kind)
    owner, top = (layer, ()) if home is None else home
    seen = {id(layer)}

    def walk(node, tree, path) -> None:
        if not follows_sublayers(node, tree):
            return
        for i, (sub, part) in enumerate(zip(node.sublayers, tree)):
            if part is shared or id(sub) in seen:
                continue
            seen.add(id(sub))
            sub._set_cache_home(kind, (owner, path + (i,)))
            walk(sub, part, path + (i,))

    walk(layer, layer._cached(kind), top)


def with_sublayer_caches(layer, weights, state, shared):
    """Fresh `(weights, state)` of `layer` with each initialized sublayer's cache in its place.

    What Trax's `layer(x)` reads for a combinator built around initialized
    layers (`Chunk(initialized_dense, 1)(x)`). Returns `(weights, state,
    missing)`; `missing` says some weights have neither a cache nor a
    sublayer's.
    """
    if layer._initialized:
        return layer.weights, layer.state, False
    if not jax.tree.leaves(weights):
        return weights, state, False
    if not follows_sublayers(layer, weights):
        return weights, state, True
    state_follows = follows_sublayers(layer, state)
    new_weights, new_state, missing = list(weights), list(state) if state_follows else None, False
    for i, sub in enumerate(layer.sublayers):
        if weights[i] is shared:
            continue
        w, s, sub_missing = with_sublayer_caches(
            sub, weights[i], state[i] if state_follows else EMPTY, shared
        )
        new_weights[i], missing = w, missing or sub_missing
        if state_follows:
            new_state[i] = s
    return tuple(new_weights), tuple(new_state) if state_follows else state, missing
