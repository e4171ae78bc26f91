"""What tests read off a traced program: every equation of a jaxpr, sub-jaxprs (scan, cond, remat, pjit) included."""

from collections.abc import Iterator

import jax


def equations(fn, *args) -> Iterator:
    """Every equation of `jax.make_jaxpr(fn)(*args)`, the bodies of its sub-jaxprs after their equation."""

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            yield eqn
            for value in eqn.params.values():
                for item in value if isinstance(value, (list, tuple)) else (value,):
                    inner = getattr(item, "jaxpr", item)
                    if hasattr(inner, "eqns"):
                        yield from walk(inner)

    yield from walk(jax.make_jaxpr(fn)(*args).jaxpr)
