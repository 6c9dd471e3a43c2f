"""Spectral densities and traces of symmetric operators from matrix-vector products alone.

:func:`spectral_density` is stochastic Lanczos quadrature [Ghorbani, Krishnan & Xiao 2019; Golub &
Meurant 1994]: for a unit probe ``v``, ``m`` Lanczos steps give a Gauss quadrature
``v^T f(A) v ~ sum_i w_i f(theta_i)`` whose nodes are the Ritz values and whose weights are the squared
first components of the eigenvectors of ``T``. Averaging over probes estimates the spectral measure
``(1/P) sum_j delta(t - lambda_j)``. All probes run as one compiled, vmapped Lanczos loop (the
operator's primal work is shared across probes).

:func:`trace` is Hutchinson's estimator [Hutchinson 1989] with Rademacher probes, or Hutch++
[Meyer, Musco, Musco & Woodruff 2021], which first removes a sketched top subspace exactly.

References:
    Ghorbani, Krishnan & Xiao (2019), An investigation into neural net optimization via Hessian eigenvalue
    density. ICML.
    Golub & Meurant (1994), Matrices, moments and quadrature.
    Hutchinson (1989), A stochastic estimator of the trace of the influence matrix for Laplacian smoothing
    splines. Commun. Stat. Simul. Comput. 18(3).
    Meyer, Musco, Musco & Woodruff (2021), Hutch++: optimal stochastic trace estimation. SOSA.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from analysis._linalg import as_operator, check_count, hoisted, iterate, require_finite, start_basis
from analysis.krylov import eigsh

__all__ = ["PROBES", "TRACE_METHODS", "SpectralDensity", "TraceEstimate", "spectral_density", "trace"]

PROBES = ("rademacher", "gaussian")
TRACE_METHODS = ("hutchinson", "hutch++")


class SpectralDensity(NamedTuple):
    """Gauss quadrature rules of stochastic Lanczos quadrature, one per probe.

    Attributes:
        nodes: ``(num_probes, num_steps)`` Ritz values; with deflation, ``(num_probes, k + num_steps)``
            whose first ``k`` columns are the deflated eigenvalues.
        weights: same shape, squared first eigenvector components (scaled by ``(dim - k) / dim`` with
            deflation, ``1 / dim`` on the deflated eigenvalues); each row sums to 1.
    """

    nodes: jax.Array
    weights: jax.Array

    def density(self, grid: jax.Array, sigma: float) -> jax.Array:
        """Gaussian-smoothed density ``phi(t) = mean_probes sum_i w_i N(t; theta_i, sigma^2)``.

        Args:
            grid: ``(g,)`` points ``t``.
            sigma: kernel width (> 0).

        Returns:
            ``(g,)`` density values; they integrate to 1 over the real line.
        """
        if not sigma > 0:
            raise ValueError(f"sigma must be positive, got {sigma!r}")
        grid = jnp.asarray(grid, self.nodes.dtype)
        if grid.ndim != 1:
            raise ValueError(f"grid must have shape (g,), got {grid.shape}")
        z = (grid[:, None, None] - self.nodes[None]) / sigma
        kernel = jnp.exp(-0.5 * z * z) / (sigma * math.sqrt(2 * math.pi))
        return jnp.sum(kernel * self.weights[None], axis=(1, 2)) / self.nodes.shape[0]

    def moment(self, k: int) -> jax.Array:
        """Estimate of ``tr(A^k) / dim`` (``k = 1``: mean eigenvalue; ``k = 2``: mean squared eigenvalue)."""
        return jnp.mean(jnp.sum(self.weights * self.nodes**k, axis=1))

    def moment_stderr(self, k: int) -> jax.Array:
        """Standard error of :meth:`moment` across probes (``nan`` for one probe)."""
        per_probe = jnp.sum(self.weights * self.nodes**k, axis=1)
        return jnp.std(per_probe, ddof=1) / math.sqrt(per_probe.shape[0])


class TraceEstimate(NamedTuple):
    """A stochastic trace estimate.

    Attributes:
        estimate: scalar estimate of ``tr(A)``.
        stderr: scalar standard error (sample standard deviation of the stochastic part over sqrt(probes)).
    """

    estimate: jax.Array
    stderr: jax.Array


def _probes(key, num, dim, dtype, kind):
    if kind == "rademacher":
        return jax.random.rademacher(key, (num, dim), dtype)
    return jax.random.normal(key, (num, dim), dtype)


@functools.partial(jax.jit, static_argnums=2)
def _slq(matvec, probes, num_steps, deflated):
    # Linearise once, outside the vmap: the probes share the operator's v-independent work.
    num_probes, dim = probes.shape
    matvec = hoisted(matvec, dim, probes.dtype, num_probes * (num_steps + 1) * dim * probes.dtype.itemsize)
    if deflated.shape[0]:
        # Run on (I - V V^T) A (I - V V^T) from projected probes: every Krylov vector stays in the
        # complement of the deflated eigenvectors (rows of `deflated`), up to rounding that the
        # projection of each product removes again.
        def project(v):
            return v - (deflated @ v) @ deflated

        full = matvec

        def matvec(v):
            return project(full(project(v)).astype(v.dtype))

        probes = jax.vmap(project)(probes)

    def quadrature(v):
        # No restart on breakdown (so no key): the zero block it leaves carries zero quadrature weight.
        _, proj, norms = iterate(
            matvec, *start_basis(v, num_steps), None, 0, num_steps, restart=False, three_term=True
        )
        betas = norms[:-1]
        tri = jnp.diag(jnp.diagonal(proj)) + jnp.diag(betas, 1) + jnp.diag(betas, -1)
        theta, vectors = jnp.linalg.eigh(tri)
        return theta, jnp.square(vectors[0])

    return jax.vmap(quadrature)(probes)


def spectral_density(
    matvec: Callable,
    dim: int,
    *,
    num_steps: int = 90,
    num_probes: int = 10,
    key: jax.Array | None = None,
    probe: str = "rademacher",
    probes: jax.Array | None = None,
    num_deflate: int = 0,
    deflate_tol: float = 1e-6,
) -> SpectralDensity:
    """Spectral density by stochastic Lanczos quadrature [Ghorbani, Krishnan & Xiao 2019].

    Per probe (Rademacher, or Gaussian, normalised to unit length), ``num_steps`` Lanczos steps with full
    re-orthogonalisation give ``T``; the quadrature nodes are its eigenvalues and the weights the squared
    first components of its eigenvectors. Probes run vmapped in one compiled program. For each probe
    the rule is exact for polynomials of degree below ``2 * num_steps``, so ``moment(k)`` equals the
    Hutchinson estimate ``mean_i v_i^T A^k v_i`` of the same probes for such ``k``; its statistical
    error is that of those probes (relative standard error ``~ sqrt(2 / num_probes) ||A^k||_F / tr(A^k)``
    for Rademacher probes, large when a few eigenvalues dominate).

    Deflation (``num_deflate = k > 0``) removes that error where it is largest: :func:`eigsh` finds
    the ``k`` eigenpairs of largest magnitude ``(lambda_i, u_i)`` and SLQ runs on the rest,
    ``(I - U U^T) A (I - U U^T)``, from projected probes. Each returned rule then holds the ``k``
    eigenvalues exactly, with weight ``1 / dim`` each, and the stochastic rule of the rest with total
    weight ``(dim - k) / dim``; the statistical error becomes that of the remaining spectrum, far
    smaller for a Hessian led by a few outliers. The eigenpairs cost extra products (``eigsh``'s), not
    probes.

    Args:
        matvec: symmetric operator ``(dim,) -> (dim,)``.
        dim: size of the operator.
        num_steps: Lanczos steps per probe, ``1 <= num_steps <= dim`` (90 as in the paper).
        num_probes: number of probe vectors drawn with ``key``.
        key: PRNG key (needed unless ``probes`` is given).
        probe: ``"rademacher"`` or ``"gaussian"``.
        probes: optional ``(num_probes, dim)`` probe vectors to use instead of drawing them (e.g. the
            same probes at several checkpoints); each is normalised.
        num_deflate: eigenpairs of largest magnitude to take out exactly,
            ``0 <= num_deflate <= dim - num_steps`` (needs ``key``, which then also seeds :func:`eigsh`).
        deflate_tol: :func:`eigsh`'s relative residual tolerance for them.

    Returns:
        :class:`SpectralDensity` with nodes and weights of shape ``(num_probes, num_deflate +
        num_steps)``; the first ``num_deflate`` nodes of every row are the deflated eigenvalues.
    """
    op, dtype = as_operator(matvec, dim)
    dim = int(dim)
    num_steps = check_count("num_steps", num_steps, 1, dim)
    if probes is None:
        if key is None:
            raise ValueError("spectral_density needs a PRNG key (or explicit probes)")
        num_probes = check_count("num_probes", num_probes, 1, 10**9)
        if probe not in PROBES:
            raise ValueError(f"unknown probe {probe!r}; valid names: {', '.join(PROBES)}")
        probes = _probes(key, num_probes, dim, dtype, probe)
    else:
        probes = jnp.asarray(probes)
        if probes.ndim != 2 or probes.shape[1] != dim or probes.shape[0] < 1:
            raise ValueError(f"probes must have shape (num_probes, {dim}), got {probes.shape}")
        probes = probes.astype(dtype)
        norms = np.asarray(jnp.linalg.norm(probes, axis=1))
        if not np.all(np.isfinite(norms)) or np.any(norms == 0):
            raise ValueError("probes must be finite and non-zero")
    k = check_count("num_deflate", num_deflate, 0, dim - num_steps)
    if not k:
        nodes, weights = _slq(op, probes, num_steps, jnp.zeros((0, dim), dtype))
        require_finite("spectral_density", nodes, weights)
        return SpectralDensity(nodes, weights)
    if key is None:
        raise ValueError("spectral_density needs a PRNG key to find the eigenpairs it deflates")
    pairs = eigsh(op, dim, k, which="LM", tol=deflate_tol, key=jax.random.fold_in(key, 1))
    vectors = pairs.eigenvectors.astype(probes.dtype)
    rest = np.asarray(jnp.linalg.norm(probes - (probes @ vectors) @ vectors.T, axis=1))
    if np.any(rest <= 1e-6 * np.asarray(jnp.linalg.norm(probes, axis=1))):
        raise ValueError("a probe lies in the span of the deflated eigenvectors; nothing is left to sample")
    nodes, weights = _slq(op, probes, num_steps, vectors.T)
    require_finite("spectral_density", nodes, weights)
    exact = jnp.broadcast_to(pairs.eigenvalues, (probes.shape[0], k))
    nodes = jnp.concatenate([exact, nodes], axis=1)
    weights = jnp.concatenate([jnp.full_like(exact, 1 / dim), weights * ((dim - k) / dim)], axis=1)
    return SpectralDensity(nodes, weights)


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _trace(matvec, key, dim, dtype, num_probes, method):
    def quadratic_forms(vectors):
        return jnp.sum(vectors * jax.vmap(matvec)(vectors).astype(dtype), axis=1)

    if method == "hutchinson":
        samples = quadratic_forms(_probes(key, num_probes, dim, dtype, "rademacher"))
        exact = jnp.zeros((), dtype)
    else:
        # Hutch++: a third of the matvecs sketch the range (A S), a third take the trace on its
        # orthonormal basis Q exactly, the rest run Hutchinson on (I - Q Q^T) A (I - Q Q^T).
        num_sketch = num_probes // 3
        key_s, key_g = jax.random.split(key)
        sketch = _probes(key_s, num_sketch, dim, dtype, "rademacher")
        q, _ = jnp.linalg.qr(jax.vmap(matvec)(sketch).astype(dtype).T)  # (dim, num_sketch)
        exact = jnp.sum(quadratic_forms(q.T))
        g = _probes(key_g, num_probes - 2 * num_sketch, dim, dtype, "rademacher")
        samples = quadratic_forms(g - (g @ q) @ q.T)
    stderr = jnp.std(samples, ddof=1) / math.sqrt(samples.shape[0])
    return TraceEstimate(exact + jnp.mean(samples), stderr)


def trace(
    matvec: Callable, dim: int, *, num_probes: int, key: jax.Array, method: str = "hutchinson"
) -> TraceEstimate:
    """Stochastic trace estimate with a standard error [Hutchinson 1989; Meyer et al. 2021].

    ``"hutchinson"``: ``mean_i z_i^T A z_i`` over Rademacher ``z_i``, unbiased with variance
    ``2 (||A||_F^2 - sum_i A_ii^2) / num_probes``. ``"hutch++"``: spends ``num_probes // 3`` products on
    a sketch ``A S``, as many on ``tr(Q^T A Q)`` for its orthonormal basis ``Q``, and the rest on
    Hutchinson for the deflated ``(I - Q Q^T) A (I - Q Q^T)``; far smaller error when a few eigenvalues
    dominate, as in neural-network Hessians. All products run as one vmapped, compiled call.

    Args:
        matvec: symmetric operator ``(dim,) -> (dim,)``.
        dim: size of the operator.
        num_probes: total number of matrix-vector products (>= 2; >= 4 for ``"hutch++"``).
        key: PRNG key.
        method: ``"hutchinson"`` or ``"hutch++"``.

    Returns:
        :class:`TraceEstimate` with scalar ``estimate`` and ``stderr``.
    """
    op, dtype = as_operator(matvec, dim)
    if method not in TRACE_METHODS:
        raise ValueError(f"unknown method {method!r}; valid names: {', '.join(TRACE_METHODS)}")
    low = 4 if method == "hutch++" else 2
    num_probes = check_count("num_probes", num_probes, low, 10**9)
    result = _trace(op, key, int(dim), dtype, num_probes, method)
    require_finite("trace", result.estimate)
    return result
