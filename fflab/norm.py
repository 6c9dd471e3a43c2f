"""Normalising transformations for MLPs, with explicit NamedTuple state.

Two ways of making plain gradient descent behave more like Newton's method, both as pure functions:

- ``batchnorm`` [Ioffe & Szegedy 2015]: each hidden pre-activation is standardised with the mini-batch mean
  and variance in training and with running averages in evaluation, then scaled and shifted by learned
  ``gamma`` and ``beta``. Twice differentiable, so the Hessian of a BN network can be computed.
- ``transform`` [Raiko, Valpola & LeCun 2012; Vatanen, Raiko, Valpola & LeCun 2013]: each hidden unit's
  output is ``gamma (f(z) - alpha z - beta)``, with ``alpha`` and ``beta`` chosen so that its output and its
  slope average zero over the data [Raiko et al.], and optionally ``gamma`` so that the product of the mean
  squares of its output and of its slope is one [Vatanen et al.'s third transformation]; the inputs are
  centred, ``x - mean``; shortcut connections from every layer's input to every layer above carry the
  linear part. :func:`transform_update` re-estimates these statistics during training and changes the
  shortcuts, biases and outgoing weights so that the network computes exactly the same function: the
  transformations change the optimisation, not the model.

Layouts. ``batchnorm`` hidden layers are ``{"W", "gamma", "beta"}`` (no bias: ``beta`` plays its part, and a
redundant bias would add an exact zero direction to the Hessian); the output layer is ``{"W", "b"}``; the
state is a tuple of :class:`BatchNormState`, one per hidden layer. ``transform`` layer ``k`` is
``{"W", "b", "C"}`` where ``C[j]`` is the shortcut from source ``j`` (``x`` for ``j = 0``, the ``j``-th
transformed hidden layer otherwise) for every ``j < k``; the state is one :class:`TransformState` holding
the transformations and the ``shift`` that :func:`transform_update` adds to ``W``, ``b`` and ``C`` to keep the
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
        alpha, beta, gamma: one ``(n_k,)`` array per hidden layer: hidden unit ``i`` outputs
            ``gamma_i (f(z_i) - alpha_i z_i - beta_i)``.
        mean: ``(n_in,)``, the centre subtracted from the inputs.
        shift: one ``{"W", "b", "C"}`` dict per layer, shaped like that layer's parameters: what
            :func:`transform_update` added to keep the function; the network computes with ``params + shift``.
    """

    alpha: tuple
    beta: tuple
    gamma: tuple
    mean: jax.Array
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
    # The plain network; transform_update moves the transformations to the data's statistics.
    zeros = tuple(jnp.zeros((n,), dtype) for n in hidden)
    ones = tuple(jnp.ones((n,), dtype) for n in hidden)
    shift = tuple(jax.tree_util.tree_map(jnp.zeros_like, layer) for layer in params)
    return params, TransformState(zeros, zeros, ones, jnp.zeros((sizes[0],), dtype), shift)


def _derivative(f, z):
    """Element-wise derivative ``f'(z)`` of an element-wise function."""
    return jax.jvp(f, (z,), (jnp.ones_like(z),))[1]


def _shifted(params, state: TransformState) -> list[dict]:
    """The parameters the transformed network computes with: ``params`` plus the state's shift."""
    return jax.tree_util.tree_map(jnp.add, list(params), list(state.shift))


def _transform_forward(params, state: TransformState, x, f):
    """Forward pass with already-shifted ``params``; returns logits and every hidden pre-activation."""
    sources, pre = [x - state.mean], []
    for k, layer in enumerate(params):
        z = sources[-1] @ layer["W"] + layer["b"]
        for j, c in enumerate(layer["C"]):
            z = z + sources[j] @ c
        if k == len(params) - 1:
            return z, pre
        pre.append(z)
        sources.append(state.gamma[k] * (f(z) - state.alpha[k] * z - state.beta[k]))


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
    momentum: float = 0.0, gamma: bool = False, centre: bool = True, eps: float = 1e-12,
) -> TransformState:
    """Re-estimate the transformations on ``x`` and compensate, so that the network computes the same function.

    Estimates, per hidden unit with pre-activation ``z`` over the batch, ``alpha = mean f'(z)`` and ``beta =
    mean f(z) - alpha mean z`` [Raiko, Valpola & LeCun 2012], so that ``g = f(z) - alpha z - beta`` and its
    slope average zero; with ``gamma``, ``gamma = (mean g^2 mean g'^2 + eps)^(-1/4)``, so that the output
    ``gamma g`` has ``mean (gamma g)^2 mean (gamma g')^2 = 1`` [Vatanen, Raiko, Valpola & LeCun 2013, the third
    transformation]; with ``centre``, the input centre ``mean = mean x``. Each estimate is blended with the
    old value by ``momentum``.

    Compensation, bottom-up, each step exact: moving the input centre by ``dm`` adds ``dm M`` to the bias of
    every layer that reads ``x`` through a matrix ``M``. Changing layer ``i``'s ``(alpha, beta, gamma)`` changes
    its output from ``s = gamma g`` to ``r s - gamma' (da z + db)`` with ``r = gamma' / gamma``; every layer
    above that reads it through ``M`` gets ``M / r`` (row-wise) and, since ``z = sum_j s_j R_j + b_i`` is
    affine in the sources below, ``R_j diag(gamma da) M`` added to its shortcut from each source ``j`` and
    ``(gamma da b_i + gamma db) M`` to its bias [Raiko et al. 2012, Sec. 2]. The compensation goes into the
    state's ``shift``; ``params`` are not changed.

    Args:
        params, state: a ``transform`` network from :func:`init`.
        x: a batch of inputs ``(batch, n_in)`` to estimate the statistics on.
        activation: the hidden non-linearity.
        momentum: weight of the old transformations (0 replaces them with the batch estimate).
        gamma: re-estimate ``gamma`` (else it keeps its value, 1 from :func:`init`).
        centre: re-estimate the input centre (else it keeps its value, 0 from :func:`init`).
        eps: keeps ``gamma`` finite for a unit whose ``g`` vanishes on the batch (a linear unit, say).

    Returns:
        The new :class:`TransformState`; ``apply(params, new_state, ...)`` computes the same function as
        ``apply(params, state, ...)``, up to float rounding.
    """
    f = mlp.activation_fn(activation)
    new = _shifted(params, state)  # the parameters the network computes with, compensated step by step
    _, pre = _transform_forward(new, state, x, f)  # exact compensation keeps every pre-activation

    def blend(old, estimate):
        return momentum * old + (1 - momentum) * estimate

    mean = blend(state.mean, jnp.mean(x, axis=0)) if centre else state.mean
    dm = mean - state.mean
    for k in range(len(new)):  # every layer reads x through W (k = 0) or its shortcut C[0]
        new[k]["b"] = new[k]["b"] + dm @ (new[k]["W"] if k == 0 else new[k]["C"][0])
    alphas, betas, gammas = [], [], []
    for i, z in enumerate(pre):
        a0, b0, g0 = state.alpha[i], state.beta[i], state.gamma[i]
        a_est = jnp.mean(_derivative(f, z), axis=0)
        alpha, beta = blend(a0, a_est), blend(b0, jnp.mean(f(z), axis=0) - a_est * jnp.mean(z, axis=0))
        if gamma:
            g, slope = f(z) - alpha * z - beta, _derivative(f, z) - alpha
            g1 = blend(g0, (jnp.mean(g**2, axis=0) * jnp.mean(slope**2, axis=0) + eps) ** -0.25)
        else:
            g1 = g0
        da, db, r = g0 * (alpha - a0), g0 * (beta - b0), g1 / g0
        source = i + 1  # layer i's output is source i + 1
        reads = [*new[i]["C"], new[i]["W"]]  # layer i reads source j < i through C[j], source i through W
        for k in range(i + 1, len(new)):
            m = new[k]["W"] if k == source else new[k]["C"][source]
            for j, read in enumerate(reads):  # j <= i < k: layer k reads source j through a shortcut
                new[k]["C"][j] = new[k]["C"][j] + (read * da) @ m
            new[k]["b"] = new[k]["b"] + (da * new[i]["b"] + db) @ m
            if k == source:
                new[k]["W"] = m / r[:, None]
            else:
                new[k]["C"][source] = m / r[:, None]
        alphas.append(alpha)
        betas.append(beta)
        gammas.append(g1)
    shift = jax.tree_util.tree_map(lambda n, p: n - p, new, list(params))
    return TransformState(tuple(alphas), tuple(betas), tuple(gammas), mean, tuple(shift))
