"""Forward and backward signal statistics of an MLP, layer by layer.

Works on fflab's MLP format: ``params`` is a list of ``{"W": (n_in, n_out), "b": (n_out,)}`` layers and
the network computes ``z_l = h_{l-1} W_l + b_l`` (pre-activations, ``l = 1..L``, ``h_0 = x``) and
``h_l = f(z_l)`` for the hidden layers ``l = 1..L-1``; ``z_L`` are the logits (no non-linearity).

Statistics are pooled over a batch: for an array ``a`` of shape ``(batch, units)``,
``mean = mean(a)``, ``var = mean over units of the variance across the batch`` (the quantity Glorot &
Bengio 2010 track; it leaves out the spread of the unit means) and ``second_moment = mean(a^2)`` (the
length ``q^l`` of Poole et al. 2016, which for relu is what an initialisation scheme preserves).

References:
    Glorot & Bengio (2010), Understanding the difficulty of training deep feedforward neural networks.
    He, Zhang, Ren & Sun (2015), Delving deep into rectifiers.
    Saxe, McClelland & Ganguli (2014), Exact solutions to the nonlinear dynamics of learning in deep
    linear neural networks.
    Poole, Lahiri, Raghu, Sohl-Dickstein & Ganguli (2016), Exponential expressivity in deep neural
    networks through transient chaos.
    Lu, Shin, Su & Karniadakis (2020), Dying ReLU and initialization: theory and numerical examples.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fflab import losses, mlp

__all__ = [
    "ActivationStats",
    "GradientStats",
    "SecondMoments",
    "activation_frequency",
    "activation_stats",
    "cotangent_loss",
    "dead_units",
    "gradient_stats",
    "second_moments",
]


def _check(params, x) -> None:
    if isinstance(params, dict) or not isinstance(params, Sequence) or len(params) == 0:
        raise ValueError(f"params must be a non-empty list of {{'W', 'b'}} layers, got {type(params)}")
    if jnp.ndim(x) != 2:
        raise ValueError(f"x must have shape (batch, n_in), got shape {jnp.shape(x)}")
    width = jnp.shape(x)[1]
    for i, layer in enumerate(params):
        if not isinstance(layer, dict) or set(layer) != {"W", "b"}:
            raise ValueError(f"layer {i} must be a dict with keys 'W' and 'b', got {layer!r:.80}")
        W, b = layer["W"], layer["b"]
        if jnp.ndim(W) != 2 or jnp.shape(W)[0] != width or jnp.shape(b) != (jnp.shape(W)[1],):
            raise ValueError(
                f"layer {i}: expected W of shape ({width}, n_out) and b of shape (n_out,), "
                f"got W {jnp.shape(W)} and b {jnp.shape(b)}"
            )
        width = jnp.shape(W)[1]


def _mean(arrays):
    return jnp.stack([jnp.mean(a) for a in arrays]) if arrays else jnp.zeros((0,))


def _unit_var(arrays):
    return jnp.stack([jnp.mean(jnp.var(a, axis=0)) for a in arrays]) if arrays else jnp.zeros((0,))


def _second_moment(arrays):
    return jnp.stack([jnp.mean(jnp.square(a)) for a in arrays]) if arrays else jnp.zeros((0,))


class ActivationStats(NamedTuple):
    """Per-layer forward statistics: ``pre_*`` of shape ``(L,)``, ``post_*`` of shape ``(L-1,)``."""

    pre_mean: jax.Array
    pre_var: jax.Array
    pre_second_moment: jax.Array
    post_mean: jax.Array
    post_var: jax.Array
    post_second_moment: jax.Array


def activation_stats(params, x, *, activation: str | Callable = "relu") -> ActivationStats:
    """Mean, variance and second moment of the pre-activations and activations of every layer.

    Args:
        params: MLP layers ``[{"W": (n_in, n_out), "b": (n_out,)}, ...]``, ``L`` of them.
        x: inputs of shape ``(batch, n_in)``.
        activation: hidden non-linearity, a name from :data:`fflab.mlp.ACTIVATIONS` or a callable.

    Returns:
        :class:`ActivationStats`; ``pre_*`` have shape ``(L,)`` (``z_1 .. z_L``, the last being the
        logits) and ``post_*`` shape ``(L-1,)`` (``h_1 .. h_{L-1}``). Definitions in the module docstring.
    """
    _check(params, x)
    pre, post = mlp.forward(params, x, activation=activation)
    return ActivationStats(
        _mean(pre), _unit_var(pre), _second_moment(pre), _mean(post), _unit_var(post), _second_moment(post)
    )


class GradientStats(NamedTuple):
    """Per-layer backward statistics, each of shape ``(L,)``."""

    delta_mean: jax.Array
    delta_var: jax.Array
    delta_second_moment: jax.Array
    weight_grad_var: jax.Array
    weight_grad_second_moment: jax.Array


def cotangent_loss(logits: jax.Array, cotangent: jax.Array) -> jax.Array:
    """``sum(logits * cotangent)``, whose gradient with respect to the logits is exactly ``cotangent``.

    Pass it as ``loss`` to :func:`gradient_stats` with a (e.g. random ``N(0, 1)``) cotangent of shape
    ``(batch, n_out)`` as ``y`` to back-propagate a given output signal instead of a real loss.
    """
    if logits.shape != cotangent.shape:
        raise ValueError(f"cotangent must have the logits' shape {logits.shape}, got {cotangent.shape}")
    return jnp.sum(logits * cotangent)


def gradient_stats(
    params,
    x,
    y,
    *,
    activation: str | Callable = "relu",
    loss: Callable = losses.cross_entropy,
) -> GradientStats:
    """Statistics of the back-propagated signals ``delta_l = dC/dz_l`` and weight gradients ``dC/dW_l``.

    ``C = loss(logits, y)``. Both gradients come from one reverse pass (``jax.grad``, i.e. a VJP): a zero
    shift ``s_l`` is added to each pre-activation and ``dC/ds_l`` at ``s = 0`` is ``delta_l``. Note that
    with a batch-mean loss (fflab's losses) each row of ``delta_l`` carries a factor ``1 / batch``; use
    :func:`cotangent_loss` to propagate a chosen output cotangent unscaled.

    Args:
        params: MLP layers ``[{"W": (n_in, n_out), "b": (n_out,)}, ...]``, ``L`` of them.
        x: inputs of shape ``(batch, n_in)``.
        y: targets passed to ``loss`` (labels, one-hot rows, or a cotangent for :func:`cotangent_loss`).
        activation: hidden non-linearity, a name from :data:`fflab.mlp.ACTIVATIONS` or a callable.
        loss: ``loss(logits, y) -> scalar``; default :func:`fflab.losses.cross_entropy`.

    Returns:
        :class:`GradientStats`, each field of shape ``(L,)``: ``delta_mean``, ``delta_var`` (mean over
        units of the variance across the batch) and ``delta_second_moment`` of ``delta_l``, and
        ``weight_grad_var`` (variance over the entries of ``dC/dW_l``, as in Glorot & Bengio 2010) and
        ``weight_grad_second_moment``.
    """
    _check(params, x)
    shifts = [jnp.zeros((x.shape[0], layer["W"].shape[1]), x.dtype) for layer in params]

    def cost(params, shifts):
        pre, _ = mlp.forward(params, x, activation=activation, shifts=shifts)
        return loss(pre[-1], y)

    g_params, deltas = jax.grad(cost, argnums=(0, 1))(params, shifts)
    g_W = [layer["W"] for layer in g_params]
    return GradientStats(
        _mean(deltas),
        _unit_var(deltas),
        _second_moment(deltas),
        jnp.stack([jnp.var(g) for g in g_W]),
        _second_moment(g_W),
    )


class SecondMoments(NamedTuple):
    """Per-layer lengths of the forward and backward signal, each of shape ``(L,)``."""

    forward: jax.Array
    backward: jax.Array


def second_moments(params, x, cotangent, *, activation: str | Callable = "relu") -> SecondMoments:
    """The second moments ``E[z_l^2]`` of the pre-activations and ``E[delta_l^2]`` of the back-propagated signal.

    The lecture's "exponential growth/decay forward and backward" in two numbers per layer: ``delta_l = dC/dz_l``
    for ``C = sum(z_L * cotangent)``, so the given output signal (e.g. ``N(0, 1)``) is propagated back unscaled,
    whatever the logits are. One forward and one reverse pass (``jax.vjp`` at zero shifts of the ``z_l``, as
    in :func:`gradient_stats`); the same numbers as ``activation_stats(...).pre_second_moment`` and
    ``gradient_stats(..., cotangent, loss=cotangent_loss).delta_second_moment``. This second moment is the
    length ``q^l`` that an initialisation scheme keeps or loses (He et al. 2015; Poole et al. 2016).

    Args:
        params: MLP layers ``[{"W": (n_in, n_out), "b": (n_out,)}, ...]``, ``L`` of them.
        x: inputs of shape ``(batch, n_in)``.
        cotangent: ``dC/dz_L`` of shape ``(batch, n_out)``.
        activation: hidden non-linearity, a name from :data:`fflab.mlp.ACTIVATIONS` or a callable.

    Returns:
        :class:`SecondMoments` ``(forward, backward)``: ``forward[l - 1] = mean(z_l^2)`` and
        ``backward[l - 1] = mean(delta_l^2)`` for ``l = 1 .. L`` (``backward[-1] = mean(cotangent^2)``).
    """
    _check(params, x)
    shapes = [(x.shape[0], layer["W"].shape[1]) for layer in params]
    if jnp.shape(cotangent) != shapes[-1]:
        raise ValueError(f"cotangent must have the logits' shape {shapes[-1]}, got {jnp.shape(cotangent)}")
    shifts = [jnp.zeros(shape, x.dtype) for shape in shapes]
    pre, vjp = jax.vjp(lambda s: mlp.forward(params, x, activation=activation, shifts=s)[0], shifts)
    (deltas,) = vjp([jnp.zeros_like(z) for z in pre[:-1]] + [jnp.asarray(cotangent, pre[-1].dtype)])
    return SecondMoments(_second_moment(pre), _second_moment(deltas))


def activation_frequency(
    params, x, *, activation: str | Callable = "relu", threshold: float = 0.0
) -> list[jax.Array]:
    """Per hidden unit, the fraction of inputs for which its activation ``h_i`` exceeds ``threshold``.

    For relu this is how often the unit is on; a unit that is never on passes no gradient and is dead
    (Lu et al. 2020). For ``tanh`` with ``threshold = 0`` it is how often ``z_i > 0``; for sigmoid,
    which is always positive, pass ``threshold = 0.5`` for the same meaning.

    Args:
        params: MLP layers ``[{"W": (n_in, n_out), "b": (n_out,)}, ...]``, ``L`` of them.
        x: inputs of shape ``(batch, n_in)``, the data set to count over.
        activation: hidden non-linearity, a name from :data:`fflab.mlp.ACTIVATIONS` or a callable.
        threshold: the activation level that counts as "on".

    Returns:
        A list of ``L - 1`` arrays, one per hidden layer, of shape ``(n_l,)`` with values in ``[0, 1]``.
    """
    _check(params, x)
    return _frequencies(params, x, activation, threshold)


@functools.partial(jax.jit, static_argnums=2)
def _frequencies(params, x, activation, threshold):
    # One compiled program per activation and shapes; run op by op, every primitive compiled on its own.
    _, post = mlp.forward(params, x, activation=activation)
    return [jnp.mean((h > threshold).astype(h.dtype), axis=0) for h in post]


def dead_units(params, x, *, activation: str | Callable = "relu", threshold: float = 0.0) -> np.ndarray:
    """Number of hidden units per layer that are never on over ``x`` (frequency exactly 0).

    Args:
        params, x, activation, threshold: as in :func:`activation_frequency`.

    Returns:
        Integer counts of shape ``(L - 1,)``.
    """
    freqs = activation_frequency(params, x, activation=activation, threshold=threshold)
    return np.array([int(np.sum(np.asarray(fr) == 0)) for fr in freqs], dtype=np.int64)
