"""Losses and metrics with checked shapes (no silent broadcasting).

Labels are either integer class indices of shape ``(batch,)`` or one-hot / probability rows of shape
``(batch, classes)``. Every loss is a mean over the batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["cross_entropy", "error_rate", "l2", "mse", "nll"]


def _check_logits_labels(logits: jax.Array, labels: jax.Array) -> None:
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (batch, classes), got {logits.shape}")
    if labels.ndim == 1:
        if labels.shape[0] != logits.shape[0]:
            raise ValueError(
                f"integer labels of shape {labels.shape} do not match logits of shape {logits.shape}"
            )
        if not jnp.issubdtype(labels.dtype, jnp.integer):
            raise ValueError(f"labels of shape (batch,) must be integers, got dtype {labels.dtype}")
    elif labels.shape != logits.shape:
        raise ValueError(
            f"labels must be integers of shape ({logits.shape[0]},) or one-hot of shape "
            f"{logits.shape}, got {labels.shape}"
        )


def _check_label_range(labels: jax.Array, classes: int) -> None:
    """Raise for integer labels outside ``0..classes-1`` when they are concrete (not under ``jit``)."""
    if isinstance(labels, jax.core.Tracer) or labels.size == 0:
        return
    host = np.asarray(labels)  # numpy, so that no JAX op is traced inside a caller's jit
    low, high = int(host.min()), int(host.max())
    if low < 0 or high >= classes:
        raise ValueError(f"labels must lie in 0..{classes - 1} for {classes} classes, got values {low}..{high}")


def nll(log_probs: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean negative log-likelihood ``-mean_n sum_k y_nk log p_nk`` given log-probabilities.

    Integer labels outside ``0..classes-1`` raise ``ValueError`` on concrete arrays and make the loss NaN
    under ``jit`` (never a silent wrap-around such as -1 read as the last class).
    """
    _check_logits_labels(log_probs, labels)
    if labels.ndim == 1:
        classes = log_probs.shape[1]
        _check_label_range(labels, classes)
        picked = jnp.take_along_axis(log_probs, jnp.clip(labels, 0, classes - 1)[:, None], axis=1)[:, 0]
        picked = jnp.where((labels >= 0) & (labels < classes), picked, jnp.nan)
        return -jnp.mean(picked)
    return -jnp.mean(jnp.sum(labels * log_probs, axis=1))


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Softmax cross-entropy from logits via a stable log-softmax, averaged over the batch."""
    _check_logits_labels(logits, labels)
    return nll(jax.nn.log_softmax(logits, axis=1), labels)


def mse(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean over the batch of the squared error summed over outputs: ``mean_n ||y_n - t_n||^2``."""
    if predictions.shape != targets.shape:
        raise ValueError(
            f"predictions of shape {predictions.shape} and targets of shape {targets.shape} differ"
        )
    if predictions.ndim == 0:
        raise ValueError("predictions must have a leading batch axis, got a scalar")
    sq = jnp.square(predictions - targets)
    return jnp.mean(jnp.sum(sq.reshape(sq.shape[0], -1), axis=1))


def l2(params, *, weights_only: bool = True) -> jax.Array:
    """Weight decay term ``0.5 * sum w^2``; by default only the ``W`` leaves, not the biases."""
    leaves = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        last = path[-1] if path else None
        name = getattr(last, "key", None)
        if weights_only and name is not None and name != "W":
            continue
        leaves.append(leaf)
    return 0.5 * sum(jnp.sum(jnp.square(leaf)) for leaf in leaves)


def error_rate(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of rows whose arg-max class differs from the label (0 to 1)."""
    _check_logits_labels(logits, labels)
    if labels.ndim == 1:
        _check_label_range(labels, logits.shape[1])
    target = labels if labels.ndim == 1 else jnp.argmax(labels, axis=1)
    return jnp.mean(jnp.argmax(logits, axis=1) != target)
