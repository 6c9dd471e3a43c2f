"""Shared small models for the analysis tests: a 64-30-20-10 tanh MLP on 1,000 digits, and planted spectra."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from sklearn.datasets import load_digits

from fflab import losses, mlp

SIZES = (64, 30, 20, 10)


def loss_fn(params, x, y):
    """Mean softmax cross-entropy of a tanh MLP (smooth, so every Hessian oracle is well defined)."""
    return losses.cross_entropy(mlp.apply(params, x, activation="tanh"), y)


def output_fn(params, x):
    return mlp.apply(params, x, activation="tanh")


@functools.cache
def _digits():
    x, y = load_digits(return_X_y=True)
    return x / 16.0, y


def digits_mlp(num_samples: int = 1000, *, seed: int = 0, dtype=jnp.float64, sizes=SIZES):
    """``(params, x, y)``: a randomly initialised MLP with biases and the first ``num_samples`` digits."""
    x, y = _digits()
    key_w, key_b = jax.random.split(jax.random.PRNGKey(seed))
    params = mlp.init(key_w, list(sizes), init="glorot_relu", dtype=dtype)
    # Non-zero biases so that every block of the Hessian is generic.
    params = [
        dict(layer, b=0.1 * jax.random.normal(k, layer["b"].shape, dtype))
        for layer, k in zip(params, jax.random.split(key_b, len(params)), strict=True)
    ]
    return params, jnp.asarray(x[:num_samples], dtype), jnp.asarray(y[:num_samples])


def dense_jax_hessian(loss, params, *args):
    """``jax.hessian`` flattened to ``(P, P)`` in ravel order: the oracle for dense Hessians."""
    blocks = jax.jit(jax.hessian(loss))(params, *args)
    leaves = jax.tree_util.tree_leaves(params)
    flat = jax.tree_util.tree_leaves(blocks)
    n = len(leaves)
    return jnp.block(
        [[flat[i * n + j].reshape(leaves[i].size, leaves[j].size) for j in range(n)] for i in range(n)]
    )


@functools.cache
def small_mlp(dtype=jnp.float64):
    """A 64-9-7-10 tanh MLP (745 parameters) on 120 digits: quick to compile, for oracle checks."""
    return digits_mlp(120, sizes=(64, 9, 7, 10), dtype=dtype)


@functools.cache
def small_jax_hessian(dtype=jnp.float64):
    """``jax.hessian`` of :func:`small_mlp`, flattened."""
    return np.asarray(dense_jax_hessian(loss_fn, *small_mlp(dtype)))


@functools.cache
def digits_jax_hessian():
    """``jax.hessian`` of the 2,780-parameter model, flattened (about half a minute on two busy cores)."""
    return np.asarray(dense_jax_hessian(loss_fn, *digits_mlp()))


@functools.cache
def digits_hessian():
    """The 2,780-parameter model's Hessian from :func:`analysis.hessian` (itself checked against
    ``jax.hessian``), symmetrised, as a numpy array."""
    from analysis import curvature

    h = np.asarray(curvature.hessian(loss_fn, *digits_mlp()))
    return 0.5 * (h + h.T)


@functools.cache
def digits_spectrum():
    """Eigenvalues of :func:`digits_hessian` from ``numpy.linalg.eigvalsh``, ascending."""
    return np.linalg.eigvalsh(digits_hessian())


@functools.cache
def digits_eigh():
    """``numpy.linalg.eigh`` of :func:`digits_hessian`: ascending eigenvalues and eigenvectors."""
    return np.linalg.eigh(digits_hessian())


@functools.cache
def trained_digits_mlp(steps: int = 200):
    """:func:`digits_mlp` after ``steps`` full-batch Adam steps (learning rate 0.01; training loss ~0.01):
    the Hessian of a trained network, nearly positive semi-definite and led by a few outliers."""
    from benchmarks.hessian_bench import adam_steps

    params, x, y = digits_mlp()
    return adam_steps(loss_fn, params, x, y, steps=steps), x, y


@functools.cache
def trained_digits_hessian():
    """The dense Hessian of :func:`trained_digits_mlp`, symmetrised, and its eigenpairs (numpy eigh)."""
    from analysis import curvature

    h = np.asarray(curvature.hessian(loss_fn, *trained_digits_mlp()))
    h = 0.5 * (h + h.T)
    return (h, *np.linalg.eigh(h))


def planted(eigenvalues, seed: int = 0) -> np.ndarray:
    """Symmetric ``U diag(lam) U^T`` with ``U`` from the QR of a Gaussian matrix (a known spectrum)."""
    lam = np.asarray(eigenvalues, np.float64)
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((lam.size, lam.size)))
    return (q * lam) @ q.T


def flat(tree):
    return ravel_pytree(tree)[0]


def layer1_operator():
    """Layer 1 of :func:`small_mlp`: ``(params, x, y, matvec, dim, block)``, its restricted operator (``wrt=``)
    and, as the oracle, its dense block from ``analysis.hessian_blocks`` (symmetrised)."""
    import analysis

    params, x, y = small_mlp()
    blocks = analysis.hessian_blocks(loss_fn, params, x, y)
    names = ["[1]['W']", "[1]['b']"]
    block = np.block([[np.asarray(blocks.block(a, b)) for b in names] for a in names])
    matvec, dim = analysis.hessian_operator(loss_fn, params, x, y, wrt=lambda p: p[1])
    return params, x, y, matvec, dim, 0.5 * (block + block.T)
