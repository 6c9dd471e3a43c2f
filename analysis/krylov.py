"""Krylov methods for symmetric operators: fully re-orthogonalised Lanczos, thick-restart eigensolver.

Operators are callables ``matvec(v) -> A v`` on flat ``(dim,)`` vectors with ``A`` symmetric, such as the
``matvec`` of :func:`analysis.hessian_operator`. The Lanczos loop is one jit-compiled ``lax.fori_loop``,
so compile time does not grow with the number of steps and nothing goes back to the host inside it.
``matvec`` is passed into that program as an argument: a :class:`jax.tree_util.Partial` (what
:func:`analysis.hessian_operator` returns) makes its arrays arguments of the compiled program, while
arrays a plain closure captures become compile-time constants (``Partial(f, A)`` for ``v -> f(A, v)``
avoids that).

References:
    Lanczos (1950), An iteration method for the solution of the eigenvalue problem of linear differential
    and integral operators. J. Res. Nat. Bur. Standards 45.
    Parlett (1998), The Symmetric Eigenvalue Problem, SIAM (full re-orthogonalisation; "twice is enough").
    Wu & Simon (2000), Thick-restart Lanczos method for large symmetric eigenvalue problems.
    SIAM J. Matrix Anal. Appl. 22(2).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from analysis._linalg import as_operator, check_count, hoisted, iterate, require_finite, start_basis
from analysis.curvature import unravel

__all__ = ["WHICH", "EigshResult", "LanczosResult", "eigsh", "lanczos"]

WHICH = ("LA", "SA", "BE", "LM")


class LanczosResult(NamedTuple):
    """``m`` Lanczos steps: ``A Q^T = Q^T T + r e_m^T`` with ``T = tridiag(betas, alphas, betas)``.

    Attributes:
        alphas: ``(m,)`` diagonal of ``T``.
        betas: ``(m - 1,)`` off-diagonal of ``T`` (zero where the Krylov space broke down).
        basis: ``(m, dim)`` orthonormal Lanczos vectors ``Q`` as rows.
        residual: ``(dim,)`` the vector ``r``, orthogonal to ``Q``; its norm is the next beta.
    """

    alphas: jax.Array
    betas: jax.Array
    basis: jax.Array
    residual: jax.Array


class EigshResult(NamedTuple):
    """Extreme eigenpairs of a symmetric operator.

    Attributes:
        eigenvalues: ``(k,)`` from the wanted end: descending for ``"LA"``, ascending for ``"SA"``
            and ``"BE"``.
        eigenvectors: ``(dim, k)`` orthonormal columns, flat (in the ravel order of the operator's params).
        residuals: ``(k,)`` true residual norms ``||A v - lambda v||``.
    """

    eigenvalues: jax.Array
    eigenvectors: jax.Array
    residuals: jax.Array

    def unravel(self, like) -> tuple:
        """The eigenvectors shaped like the params, one pytree per eigenvalue (PyHessian's per-parameter
        tensors): ``like`` is the params pytree of the operator (``wrt(params)`` for a restricted one).

        Returns:
            A tuple of ``k`` pytrees like ``like``, in the order of :attr:`eigenvalues`; each has unit norm over
            all its leaves. See :func:`analysis.unravel`.
        """
        return unravel(self.eigenvectors, like)


def _run_lanczos(matvec, v0, key, num_steps):
    dim = v0.shape[0]
    matvec = hoisted(matvec, dim, v0.dtype, (num_steps + 1) * dim * v0.dtype.itemsize)
    basis, proj, norms = iterate(matvec, *start_basis(v0, num_steps), key, 0, num_steps, three_term=True)
    return LanczosResult(
        alphas=jnp.diagonal(proj),
        betas=norms[:-1],
        basis=basis[:-1],
        residual=norms[-1] * basis[-1],
    )


_lanczos_jit = jax.jit(_run_lanczos, static_argnums=3)


def _initial_vector(key, dim, dtype, v0):
    if v0 is None:
        return jax.random.normal(key, (dim,), dtype)
    v0 = jnp.asarray(v0)
    if v0.shape != (dim,):
        raise ValueError(f"v0 must have shape ({dim},), got {v0.shape}")
    v0 = v0.astype(dtype)
    norm = float(jnp.linalg.norm(v0))
    if not np.isfinite(norm) or norm == 0:
        raise ValueError(f"v0 must be finite and non-zero, got norm {norm}")
    return v0


# --------------------------------------------------------------------------------------------------
# public


def lanczos(
    matvec: Callable, dim: int, num_steps: int, *, key: jax.Array, v0: jax.Array | None = None
) -> LanczosResult:
    """Lanczos tridiagonalisation with full re-orthogonalisation [Lanczos 1950; Parlett 1998].

    One jit-compiled ``lax.fori_loop``: compile time is independent of ``num_steps``. Every new vector is
    orthogonalised against all previous ones by classical Gram-Schmidt, twice, so ``Q`` stays
    orthonormal to rounding and no ghost eigenvalues appear. A breakdown (invariant Krylov space) sets
    that beta to zero and continues with a random orthogonal direction.

    Args:
        matvec: symmetric operator ``(dim,) -> (dim,)``.
        dim: size of the operator.
        num_steps: number of Lanczos vectors ``m``, ``1 <= m <= dim``.
        key: PRNG key for the start vector (when ``v0`` is ``None``) and for breakdown directions.
        v0: optional ``(dim,)`` start vector (normalised internally).

    Returns:
        :class:`LanczosResult` with alphas ``(m,)``, betas ``(m - 1,)``, basis ``(m, dim)`` and
        residual ``(dim,)``.
    """
    op, dtype = as_operator(matvec, dim)
    num_steps = check_count("num_steps", num_steps, 1, int(dim))
    v0 = _initial_vector(key, int(dim), dtype, v0)
    result = _lanczos_jit(op, v0, key, num_steps)
    require_finite("lanczos", result.alphas, result.betas)
    return result


def _wanted_order(which: str, m: int, k: int, keep: int) -> np.ndarray:
    """Indices into ascending Ritz values: the ``k`` wanted first (in output order), then extras to keep.

    ``"LM"`` depends on the values, so :func:`_cycle` orders by magnitude itself; this returns a placeholder.
    """
    if which in ("LA", "LM"):
        return np.arange(m - 1, m - 1 - keep, -1)
    if which == "SA":
        return np.arange(keep)
    k_lo, k_hi = k // 2, k - k // 2
    extra = keep - k
    e_lo, e_hi = extra // 2, extra - extra // 2
    wanted = [*range(k_lo), *range(m - k_hi, m)]
    extras = [*range(k_lo, k_lo + e_lo), *range(m - k_hi - e_hi, m - k_hi)]
    return np.asarray(wanted + extras)


@functools.partial(jax.jit, static_argnums=5)
def _cycle(matvec, basis, proj, norms, key, k, order, start, by_magnitude):
    """Expand to ``m`` Lanczos vectors, then thick-restart on the ``keep`` Ritz pairs at the wanted end."""
    m = proj.shape[0]
    matvec = hoisted(matvec, basis.shape[1], basis.dtype, basis.size * basis.dtype.itemsize)
    basis, proj, norms = iterate(matvec, basis, proj, norms, key, start, m)
    theta, vectors = jnp.linalg.eigh(proj)
    # `order` (an argument, so that every `which` shares one compiled program) picks the wanted
    # pairs first, then the extra ones kept for the restart.
    keep = order.shape[0]
    order = jnp.where(by_magnitude, jnp.argsort(-jnp.abs(theta), stable=True)[:keep], order)
    theta, vectors = theta[order], vectors[:, order]
    beta = norms[m - 1]
    # Ritz residual ||A Q^T y - theta Q^T y|| = |beta_m y_m| for each kept pair.
    estimates = jnp.abs(beta * vectors[m - 1, :k])
    scale = jnp.max(jnp.abs(theta))
    new_basis = jnp.zeros_like(basis).at[:keep].set(vectors.T @ basis[:m]).at[keep].set(basis[m])
    new_proj = jnp.zeros_like(proj).at[:keep, :keep].set(jnp.diag(theta))
    return new_basis, new_proj, jnp.zeros_like(norms), theta[:k], estimates, scale


@jax.jit
def _residual_norms(matvec, vectors, values):
    av = jax.vmap(matvec)(vectors).astype(vectors.dtype)
    return jnp.linalg.norm(av - values[:, None] * vectors, axis=1)


def _default_steps(k: int, dim: int) -> int:
    return min(dim, max(2 * k + 10, 20))


def eigsh(
    matvec: Callable,
    dim: int,
    k: int,
    *,
    which: str = "LA",
    num_steps: int | None = None,
    tol: float = 1e-6,
    max_restarts: int = 200,
    key: jax.Array,
    v0: jax.Array | None = None,
) -> EigshResult:
    """``k`` extreme eigenpairs of a symmetric operator by thick-restart Lanczos [Wu & Simon 2000].

    Each cycle expands the basis to ``num_steps`` vectors (one compiled Lanczos loop with full
    re-orthogonalisation), takes the Ritz pairs of the projected matrix, and restarts from the
    ``keep = k + (num_steps - k) // 2`` pairs nearest the wanted end plus the residual direction. It
    stops when every wanted Ritz residual ``|beta_m y_m| <= tol * max|theta|`` (``max|theta|``
    estimates the spectral norm), or after ``max_restarts`` restarts with a warning. The restart loop
    runs on the host (one small transfer per cycle); the returned residuals are recomputed exactly.

    Args:
        matvec: symmetric operator ``(dim,) -> (dim,)``.
        dim: size of the operator.
        k: number of eigenpairs, ``1 <= k < dim``.
        which: ``"LA"`` largest algebraic, ``"SA"`` smallest algebraic, ``"BE"`` both ends
            (``k // 2`` smallest and ``k - k // 2`` largest), ``"LM"`` largest magnitude (in order of
            decreasing ``|lambda|``; the pairs to deflate, as in :func:`analysis.spectral_density`).
        num_steps: Krylov dimension per cycle, ``k < num_steps <= dim``
            (default ``min(dim, max(2k + 10, 20))``).
        tol: relative residual tolerance.
        max_restarts: most restarts after the first cycle.
        key: PRNG key for the start vector and breakdown directions.
        v0: optional ``(dim,)`` start vector instead of a random one, e.g. an eigenvector of a nearby
            operator (normalised internally). For one eigenvalue tracked along training,
            :func:`analysis.sharpness.top_eigenpair` stops as soon as it converges, which a warm start needs.

    Returns:
        :class:`EigshResult` with eigenvalues ``(k,)``, eigenvectors ``(dim, k)`` and residuals ``(k,)``;
        ``result.unravel(params)`` gives the eigenvectors as pytrees.

    Example::

        matvec, dim = analysis.hessian_operator(loss_fn, params, x, y)
        top = analysis.eigsh(matvec, dim, 3, key=jax.random.key(0))
        v1 = top.unravel(params)[0]  # the top eigenvector, shaped like params
    """
    op, dtype = as_operator(matvec, dim)
    dim = int(dim)
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k < dim:
        raise ValueError(
            f"k must be an integer with 1 <= k < dim = {dim}, got {k!r} (use numpy.linalg.eigh for all)"
        )
    k = int(k)
    if which not in WHICH:
        raise ValueError(f"unknown which {which!r}; valid names: {', '.join(WHICH)}")
    m = _default_steps(k, dim) if num_steps is None else check_count("num_steps", num_steps, k + 1, dim)
    if not tol > 0:
        raise ValueError(f"tol must be positive, got {tol!r}")
    max_restarts = check_count("max_restarts", max_restarts, 0, 10**9)
    keep = k + (m - k) // 2
    order = jnp.asarray(_wanted_order(which, m, k, keep))
    by_magnitude = jnp.asarray(which == "LM")

    key, sub = jax.random.split(key)
    basis, proj, norms = start_basis(_initial_vector(sub, dim, dtype, v0), m)
    start = 0
    for _ in range(max_restarts + 1):
        key, sub = jax.random.split(key)
        basis, proj, norms, values, estimates, scale = _cycle(
            op, basis, proj, norms, sub, k, order, start, by_magnitude
        )
        estimates, scale = np.asarray(estimates), float(scale)
        require_finite("eigsh", estimates, scale)
        if np.all(estimates <= tol * scale):
            break
        start = keep
    else:
        warnings.warn(
            f"eigsh: {int(np.sum(estimates > tol * scale))} of {k} Ritz pairs not converged after "
            f"{max_restarts} restarts (largest relative residual {float(estimates.max()) / scale:.2e}, "
            f"tol {tol:.1e}); raise max_restarts or num_steps",
            RuntimeWarning,
            stacklevel=2,
        )
    vectors = basis[:k]
    residuals = _residual_norms(op, vectors, values)
    return EigshResult(eigenvalues=values, eigenvectors=vectors.T, residuals=residuals)
