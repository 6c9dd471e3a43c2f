"""Normalising transformations for MLPs, with explicit NamedTuple state.

Two ways of making plain gradient descent behave more like Newton's method, both as pure functions:

- ``batchnorm`` [Ioffe & Szegedy 2015]: each hidden pre-activation is standardised with the mini-batch mean
  and variance in training and with running averages in evaluation, then scaled and shifted by learned
  ``gamma`` and ``beta``. Twice differentiable, so the Hessian of a BN network can be computed.
- ``transform`` [Raiko, Valpola & LeCun 2012; Vatanen, Raiko, Valpola & LeCun 2013]: each hidden unit's
  non-linearity is shifted and sloped, ``g(z) = f(z) - alpha z - beta``, so that its output and its slope
  average zero over the data; shortcut connections from every layer's input to every layer above carry the
  linear part. :func:`transform_update` re-estimates ``alpha`` and ``beta`` during training and shifts the
  shortcut weights and biases so that the network computes exactly the same function: the transformation
  changes the optimisation, not the model.

Layouts. ``batchnorm`` hidden layers are ``{"W", "gamma", "beta"}`` (no bias: ``beta`` plays its part, and a
redundant bias would add an exact zero direction to the Hessian); the output layer is ``{"W", "b"}``; the
state is a tuple of :class:`BatchNormState`, one per hidden layer. ``transform`` layer ``k`` is
``{"W", "b", "C"}`` where ``C[j]`` is the shortcut from source ``j`` (``x`` for ``j = 0``, the ``j``-th
transformed hidden layer otherwise) for every ``j < k``; the state is one :class:`TransformState` holding
``alpha`` and ``beta`` and the ``shift`` that :func:`transform_update` adds to ``b`` and ``C`` to keep the
function. The network computes with ``params + shift``: the parameters belong to the optimiser, the state
to the re-estimation, so training takes the stateful loss form of :func:`fflab.train.fit`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from fflab import mlp, options

__all__ = [
    "NORMS",
    "BatchNormState",
    "TransformState",
    "apply",
    "batchnorm",
    "batchnorm_init",
    "init",
    "transform_update",
]

NORMS = options.NORMS


class BatchNormState(NamedTuple):
    """Running mean and (unbiased) variance of one layer's pre-activations, used in evaluation."""

    mean: jax.Array
    var: jax.Array


class TransformState(NamedTuple):
    """The transformations of a ``transform`` network.

    Attributes:
        alpha, beta: one ``(n_k,)`` array per hidden layer: the slope and offset removed from its
            non-linearity.
        shift: one ``{"b", "C"}`` dict per layer, shaped like that layer's ``b`` and ``C``: what
            :func:`transform_update` added to keep the function; the network computes with ``params + shift``.
    """

    alpha: tuple
    beta: tuple
    shift: tuple


def _check_norm(norm: str) -> None:
    options.check("norm", norm, NORMS)


def batchnorm_init(num_features: int, dtype=None) -> tuple[dict, BatchNormState]:
    """``gamma = 1``, ``beta = 0``, running mean 0 and variance 1."""
    dtype = dtype or jnp.zeros(()).dtype
    params = {"gamma": jnp.ones((num_features,), dtype), "beta": jnp.zeros((num_features,), dtype)}
    return params, BatchNormState(jnp.zeros((num_features,), dtype), jnp.ones((num_features,), dtype))


def batchnorm(
    params: dict, state: BatchNormState, z: jax.Array, *, train: bool, momentum: float = 0.9,
    eps: float = 1e-5,
) -> tuple[jax.Array, BatchNormState]:
    """Batch-normalise ``z`` of shape ``(batch, features)`` [Ioffe & Szegedy 2015, Algorithm 1].

    Args:
        params: ``{"gamma", "beta"}``, each ``(features,)``.
        state: running statistics.
        z: pre-activations ``(batch, features)``.
        train: use the mini-batch statistics (and update the running ones) or the running ones.
        momentum: weight of the old running statistics in the update.
        eps: added to the variance.

    Returns:
        ``(y, new_state)`` with ``y = gamma * (z - mean) / sqrt(var + eps) + beta``.
    """
    if z.ndim != 2 or z.shape[1] != params["gamma"].shape[0]:
        n = params["gamma"].shape[0]
        raise ValueError(f"expected pre-activations of shape (batch, {n}), got {z.shape}")
    if train:
        if z.shape[0] < 2:
            raise ValueError("batch norm in training mode needs a batch of at least 2 samples")
        mean = jnp.mean(z, axis=0)
        var = jnp.var(z, axis=0)
        m = z.shape[0]
        # Ioffe & Szegedy use the unbiased variance for inference.
        new_state = BatchNormState(
            momentum * state.mean + (1 - momentum) * jax.lax.stop_gradient(mean),
            momentum * state.var + (1 - momentum) * jax.lax.stop_gradient(var) * m / (m - 1),
        )
    else:
        mean, var, new_state = state.mean, state.var, state
    y = params["gamma"] * (z - mean) * jax.lax.rsqrt(var + eps) + params["beta"]
    return y, new_state


def init(
    key: jax.Array, sizes: Sequence[int], *, norm: str, init: str = "glorot_relu", scale: float = 1.0,
    dtype=None,
) -> tuple[list[dict], tuple | TransformState]:
    """Initialise an MLP with a normalising transformation.

    Args:
        key: PRNG key.
        sizes: widths ``[n_in, h_1, ..., n_out]`` (at least one hidden layer).
        norm: ``"batchnorm"`` or ``"transform"``.
        init, scale: weight scheme of :func:`fflab.mlp.init` (shortcut weights start at zero).

    Returns:
        ``(params, state)``: a list of layer dicts, and a tuple of :class:`BatchNormState` (one per hidden
        layer) or a :class:`TransformState` (zero slopes, offsets and shift: the plain network).
    """
    _check_norm(norm)
    if len(sizes) < 3:
        raise ValueError(f"a normalised MLP needs at least one hidden layer, got sizes {list(sizes)}")
    params = mlp.init(key, sizes, init=init, scale=scale, dtype=dtype)
    dtype = params[0]["W"].dtype
    hidden = sizes[1:-1]
    if norm == "batchnorm":
        states = []
        for k, n in enumerate(hidden):
            bn_params, bn_state = batchnorm_init(n, dtype)
            params[k] = {"W": params[k]["W"], **bn_params}
            states.append(bn_state)
        return params, tuple(states)
    for k, layer in enumerate(params):
        layer["C"] = [jnp.zeros((sizes[j], sizes[k + 1]), dtype) for j in range(k)]
    # alpha = beta = 0 is the plain network; transform_update moves it to the data's statistics.
    zeros = tuple(jnp.zeros((n,), dtype) for n in hidden)
    shift = tuple({"b": jnp.zeros_like(layer["b"]), "C": [jnp.zeros_like(c) for c in layer["C"]]}
                  for layer in params)
    return params, TransformState(zeros, zeros, shift)


def _derivative(f, z):
    """Element-wise derivative ``f'(z)`` of an element-wise function."""
    return jax.jvp(f, (z,), (jnp.ones_like(z),))[1]


def _shifted(params, state: TransformState) -> list[dict]:
    """The parameters the transformed network computes with: ``params`` plus the state's shift."""
    return [
        {"W": layer["W"], "b": layer["b"] + s["b"], "C": [c + d for c, d in zip(layer["C"], s["C"], strict=True)]}
        for layer, s in zip(params, state.shift, strict=True)
    ]


def _transform_forward(params, state: TransformState, x, f):
    """Forward pass with already-shifted ``params``; returns logits and every hidden pre-activation."""
    sources, pre = [x], []
    for k, layer in enumerate(params):
        z = sources[-1] @ layer["W"] + layer["b"]
        for j, c in enumerate(layer["C"]):
            z = z + sources[j] @ c
        if k == len(params) - 1:
            return z, pre
        pre.append(z)
        sources.append(f(z) - state.alpha[k] * z - state.beta[k])


def apply(
    params: list[dict], state: tuple, x: jax.Array, *, norm: str, activation: str = "relu",
    train: bool = False, momentum: float = 0.9, eps: float = 1e-5,
) -> tuple[jax.Array, tuple]:
    """Forward pass of a normalised MLP.

    Args:
        params, state: from :func:`init`.
        x: inputs ``(batch, n_in)``.
        norm: ``"batchnorm"`` or ``"transform"``.
        activation: hidden non-linearity.
        train: batch norm uses mini-batch statistics and updates its running averages; ignored by
            ``transform``, whose state changes only through :func:`transform_update`.

    Returns:
        ``(logits, new_state)``.
    """
    _check_norm(norm)
    f = mlp.activation_fn(activation)
    if x.ndim != 2 or x.shape[1] != params[0]["W"].shape[0]:
        raise ValueError(f"expected inputs of shape (batch, {params[0]['W'].shape[0]}), got {x.shape}")
    if norm == "transform":
        logits, _ = _transform_forward(_shifted(params, state), state, x, f)
        return logits, state
    h, new_state = x, []
    for layer, s in zip(params[:-1], state, strict=True):
        z, s = batchnorm(layer, s, h @ layer["W"], train=train, momentum=momentum, eps=eps)
        h = f(z)
        new_state.append(s)
    return h @ params[-1]["W"] + params[-1]["b"], tuple(new_state)


def transform_update(
    params: list[dict], state: TransformState, x: jax.Array, *, activation: str = "relu",
    momentum: float = 0.0,
) -> TransformState:
    """Re-estimate ``alpha = mean f'(z)``, ``beta = mean(f(z)) - alpha mean(z)`` on ``x``; keep the model.

    Changing ``alpha`` by ``da`` and ``beta`` by ``db`` in layer ``i`` changes that layer's output by
    ``-(da z_i + db)``; since ``z_i`` is affine in the sources below it, every layer above that reads the
    output through a matrix ``M`` is compensated exactly by adding ``R_j diag(da) M`` to its shortcut from
    each source ``j`` (``R_j`` being layer ``i``'s weights from that source) and ``(da b_i + db) M`` to its
    bias [Raiko, Valpola & LeCun 2012, Sec. 2]. Layers are processed bottom-up, each step exact. The
    compensation goes into the state's ``shift``; ``params`` are not changed.

    Args:
        params, state: a ``transform`` network from :func:`init`.
        x: a batch of inputs ``(batch, n_in)`` to estimate the statistics on.
        momentum: weight of the old ``alpha, beta`` (0 replaces them with the batch estimate).

    Returns:
        The new :class:`TransformState`; ``apply(params, new_state, ...)`` computes the same function as
        ``apply(params, state, ...)``, up to float rounding.
    """
    f = mlp.activation_fn(activation)
    eff = _shifted(params, state)
    _, pre = _transform_forward(eff, state, x, f)
    shift = [{"b": s["b"], "C": list(s["C"])} for s in state.shift]
    alphas, betas = [], []
    for i, z in enumerate(pre):
        alpha = jnp.mean(_derivative(f, z), axis=0)
        beta = jnp.mean(f(z), axis=0) - alpha * jnp.mean(z, axis=0)
        alpha = momentum * state.alpha[i] + (1 - momentum) * alpha
        beta = momentum * state.beta[i] + (1 - momentum) * beta
        da, db = alpha - state.alpha[i], beta - state.beta[i]
        source = i + 1  # layer i's output is source i + 1
        # Layer i reads source j (j < i) through C[j] and source i through W.
        reads = [*eff[i]["C"], eff[i]["W"]]
        for k in range(i + 1, len(eff)):
            m = eff[k]["W"] if k == source else eff[k]["C"][source]
            for j, r in enumerate(reads):  # j <= i < k: layer k reads source j through a shortcut
                step = (r * da) @ m
                eff[k]["C"][j] = eff[k]["C"][j] + step
                shift[k]["C"][j] = shift[k]["C"][j] + step
            step = (da * eff[i]["b"] + db) @ m
            eff[k]["b"] = eff[k]["b"] + step
            shift[k]["b"] = shift[k]["b"] + step
        alphas.append(alpha)
        betas.append(beta)
    return TransformState(tuple(alphas), tuple(betas), tuple(shift))
