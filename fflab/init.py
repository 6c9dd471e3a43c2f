"""Named weight-initialisation schemes for dense layers.

Every scheme maps ``(key, n_in, n_out, *, scale)`` to an ``(n_in, n_out)`` weight matrix; ``scale``
multiplies the result. Biases start at zero (see :func:`fflab.mlp.init`). Most schemes draw ``N(0, std^2)``
with the std of :func:`std`; ``standard_uniform`` and ``glorot_uniform`` are Glorot & Bengio's own uniform
draws (their "standard" and "normalized" initialisations, eqs. 1 and 16).

References:
    Glorot & Bengio (2010), Understanding the difficulty of training deep feedforward neural networks
    (``glorot``, ``glorot_relu``, ``standard_uniform``, ``glorot_uniform``).
    He, Zhang, Ren & Sun (2015), Delving deep into rectifiers.
    LeCun, Bottou, Orr & Mueller (1998), Efficient BackProp.
    Martens (2010), Deep learning via Hessian-free optimization.
    Saxe, McClelland & Ganguli (2014), Exact solutions to the nonlinear dynamics of learning in deep linear
    neural networks.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from fflab import options

__all__ = ["SCHEMES", "flat_draw", "std", "weights"]

SPARSE_CONNECTIONS = 15


def flat_draw(sample: Callable, key: jax.Array, shape: tuple[int, ...], *args) -> jax.Array:
    """``sample(key, shape, *args)`` for a ``jax.random`` sampler, drawn flat and reshaped.

    The same numbers (threefry fills the flattened array either way), but XLA:CPU compiles a draw with a
    short last axis several times slower (1.8 s against 0.5 s for a ``(144, 10)`` output layer), and a
    compile per layer shape adds up in experiments and tests. ``args`` follow the shape as in ``sample``,
    e.g. ``flat_draw(jax.random.uniform, key, (784, 10), jnp.float32, -1.0, 1.0)``.
    """
    return sample(key, (math.prod(shape),), *args).reshape(shape)


def _gaussian(std_fn: Callable[[int, int], float]):
    def scheme(key, n_in, n_out, dtype):
        return std_fn(n_in, n_out) * flat_draw(jax.random.normal, key, (n_in, n_out), dtype)

    return scheme


_STD = {
    # The lecture's default: the balance sqrt(4 / (n_in + n_out)) between forward sqrt(2/n_in) and
    # backward sqrt(2/n_out) for relu units, which are on half the time.
    "glorot_relu": lambda n_in, n_out: math.sqrt(4.0 / (n_in + n_out)),
    "glorot": lambda n_in, n_out: math.sqrt(2.0 / (n_in + n_out)),
    "he_forward": lambda n_in, n_out: math.sqrt(2.0 / n_in),
    "he_backward": lambda n_in, n_out: math.sqrt(2.0 / n_out),
    "lecun": lambda n_in, n_out: math.sqrt(1.0 / n_in),
}


# Glorot & Bengio (2010): the half-width of each uniform draw. U[-a, a] has standard deviation a / sqrt(3).
_UNIFORM = {
    "standard_uniform": lambda n_in, n_out: 1.0 / math.sqrt(n_in),  # the common heuristic, eq. 1
    "glorot_uniform": lambda n_in, n_out: math.sqrt(6.0 / (n_in + n_out)),  # "normalized", eq. 16
}


def _uniform(limit_fn: Callable[[int, int], float]):
    def scheme(key, n_in, n_out, dtype):
        limit = limit_fn(n_in, n_out)
        return flat_draw(jax.random.uniform, key, (n_in, n_out), dtype, -limit, limit)

    return scheme


def _sparse(key, n_in, n_out, dtype):
    """Martens (2010): each unit gets ``min(15, n_in)`` non-zero N(0, 1) incoming weights."""
    k = min(SPARSE_CONNECTIONS, n_in)
    key_idx, key_val = jax.random.split(key)
    # Rank random scores per column to draw k distinct input rows per unit without a Python loop.
    scores = flat_draw(jax.random.uniform, key_idx, (n_in, n_out))
    ranks = jnp.argsort(jnp.argsort(scores, axis=0), axis=0)
    mask = ranks < k
    return jnp.where(mask, flat_draw(jax.random.normal, key_val, (n_in, n_out), dtype), 0.0).astype(dtype)


def _orthogonal(key, n_in, n_out, dtype):
    """Saxe et al. (2014): a (semi-)orthogonal matrix, singular values all 1 (``scale`` is the gain)."""
    return jax.nn.initializers.orthogonal()(key, (n_in, n_out), dtype)


SCHEMES: dict[str, Callable] = {
    **{name: _gaussian(fn) for name, fn in _STD.items()},
    **{name: _uniform(fn) for name, fn in _UNIFORM.items()},
    "sparse": _sparse,
    "orthogonal": _orthogonal,
}


def _check(name: str) -> None:
    options.check("init scheme", name, SCHEMES)


def std(name: str, n_in: int, n_out: int, *, scale: float = 1.0) -> float:
    """The standard deviation a scheme gives each weight of an ``(n_in, n_out)`` layer.

    For ``sparse`` this is the std over all entries, ``sqrt(min(15, n_in) / n_in)``; for ``orthogonal`` it is
    ``sqrt(1 / max(n_in, n_out))``, the std of the entries of a (semi-)orthogonal matrix; for the uniform schemes
    ``U[-a, a]`` it is ``a / sqrt(3)``.
    """
    _check(name)
    if name in _UNIFORM:
        base = _UNIFORM[name](n_in, n_out) / math.sqrt(3.0)
    elif name == "sparse":
        base = math.sqrt(min(SPARSE_CONNECTIONS, n_in) / n_in)
    elif name == "orthogonal":
        base = math.sqrt(1.0 / max(n_in, n_out))
    else:
        base = _STD[name](n_in, n_out)
    return scale * base


def weights(
    key: jax.Array, n_in: int, n_out: int, scheme: str = "glorot_relu", *, scale: float = 1.0,
    dtype=None,
) -> jax.Array:
    """Draw an ``(n_in, n_out)`` weight matrix from the named scheme, multiplied by ``scale``.

    Raises:
        ValueError: for an unknown scheme name (the message lists the valid ones).
    """
    _check(scheme)
    if n_in < 1 or n_out < 1:
        raise ValueError(f"layer sizes must be positive, got n_in={n_in}, n_out={n_out}")
    dtype = dtype or jnp.zeros(()).dtype  # float32 by default, float64 under jax_enable_x64
    return scale * SCHEMES[scheme](key, n_in, n_out, dtype)
