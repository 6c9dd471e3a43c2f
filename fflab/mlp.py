"""Multi-layer perceptrons as pure functions over a list of ``{"W", "b"}`` layers.

``params = init(key, [784, 225, 144, 10])`` gives three layers with ``W`` of shape ``(n_in, n_out)``;
``apply(params, x)`` computes ``h_l = f(h_{l-1} W_l + b_l)`` for the hidden layers and returns the output
layer's logits (softmax lives in the loss, see :mod:`fflab.losses`).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from fflab import init as _init
from fflab import options

__all__ = ["ACTIVATIONS", "activation_fn", "apply", "forward", "init", "num_params"]


def _identity(z):
    return z


ACTIVATIONS = dict(zip(options.ACTIVATIONS, (jax.nn.relu, jnp.tanh, jax.nn.sigmoid, _identity), strict=True))


def activation_fn(name):
    """The element-wise non-linearity called ``name`` (one of :data:`ACTIVATIONS`); a callable passes through."""
    if callable(name):
        return name
    options.check("activation", name, ACTIVATIONS)
    return ACTIVATIONS[name]


def init(
    key: jax.Array, sizes: Sequence[int], *, init: str = "glorot_relu", scale: float = 1.0, dtype=None
) -> list[dict[str, jax.Array]]:
    """Initialise an MLP with layer widths ``sizes = [n_in, h_1, ..., n_out]``.

    Args:
        key: PRNG key.
        sizes: at least two positive widths.
        init: a scheme name from :data:`fflab.init.SCHEMES`.
        scale: multiplies every weight matrix (biases are zero).

    Returns:
        A list of ``len(sizes) - 1`` dicts with ``W: (n_in, n_out)`` and ``b: (n_out,)``.
    """
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"sizes must hold at least two positive widths, got {sizes}")
    dtype = dtype or jnp.zeros(()).dtype
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        {
            "W": _init.weights(k, n_in, n_out, init, scale=scale, dtype=dtype),
            "b": jnp.zeros((n_out,), dtype),
        }
        for k, n_in, n_out in zip(keys, sizes[:-1], sizes[1:], strict=True)
    ]


def forward(
    params: Sequence[dict[str, jax.Array]],
    x: jax.Array,
    *,
    activation: str = "relu",
    shifts: Sequence[jax.Array] | None = None,
) -> tuple[list[jax.Array], list[jax.Array]]:
    """Every layer's signals: pre-activations ``z_l = h_{l-1} W_l + b_l (+ shifts[l])`` and ``h_l = f(z_l)``.

    Args:
        params: layers from :func:`init`, ``L`` of them.
        x: inputs of shape ``(batch, n_in)`` or ``(n_in,)``.
        activation: hidden non-linearity (a name from :data:`ACTIVATIONS`).
        shifts: optional arrays added to each ``z_l``; differentiating at zero shifts gives the
            back-propagated signals ``dC/dz_l`` (see :func:`fflab.signals.gradient_stats`).

    Returns:
        ``(pre, hidden)``: ``[z_1, ..., z_L]`` (``z_L`` are the logits) and ``[h_1, ..., h_{L-1}]``.
    """
    f = activation_fn(activation)
    n_in = params[0]["W"].shape[0]
    if x.shape[-1] != n_in:
        raise ValueError(f"input has {x.shape[-1]} features, the first layer expects {n_in}")
    pre, hidden = [], []
    h = x
    for i, layer in enumerate(params):
        z = h @ layer["W"] + layer["b"]
        if shifts is not None:
            z = z + shifts[i]
        pre.append(z)
        if i < len(params) - 1:
            h = f(z)
            hidden.append(h)
    return pre, hidden


def apply(
    params: Sequence[dict[str, jax.Array]],
    x: jax.Array,
    *,
    activation: str = "relu",
    return_hidden: bool = False,
):
    """Forward pass.

    Args:
        params: layers from :func:`init`.
        x: inputs of shape ``(batch, n_in)`` or ``(n_in,)``.
        activation: hidden non-linearity (``relu``, ``tanh``, ``sigmoid``, ``identity``).
        return_hidden: also return the hidden activations ``[h_1, ..., h_{L-1}]``.

    Returns:
        Logits of shape ``(batch, n_out)``, or ``(logits, hidden)`` with ``return_hidden=True``.
    """
    pre, hidden = forward(params, x, activation=activation)
    return (pre[-1], hidden) if return_hidden else pre[-1]


def num_params(params) -> int:
    """Total number of scalars in a parameter pytree."""
    return sum(int(leaf.size) for leaf in jax.tree_util.tree_leaves(params))
