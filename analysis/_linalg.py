"""Lanczos plumbing shared by :mod:`analysis.krylov` and :mod:`analysis.density` (package-internal).

Operators are callables ``matvec(v) -> A v`` on flat ``(dim,)`` vectors; :func:`as_operator` checks one and
wraps it as a pytree callable, :func:`hoisted` moves its ``v``-independent work out of a loop, and
:func:`iterate` runs fully re-orthogonalised Lanczos steps inside one ``lax.fori_loop``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.tree_util import Partial

__all__ = ["as_operator", "check_count", "hoisted", "iterate", "orthogonalise", "require_finite", "start_basis"]


def as_operator(matvec: Callable, dim) -> tuple[Partial, jnp.dtype]:
    """Check ``matvec`` on an abstract ``(dim,)`` vector; return it as a pytree callable and its dtype."""
    if isinstance(dim, bool) or not isinstance(dim, int | np.integer) or dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    if not callable(matvec):
        raise ValueError(f"matvec must be callable, got {type(matvec).__name__}")
    dim = int(dim)
    op = matvec if isinstance(matvec, Partial) else Partial(matvec)
    # Probe with float32: the output dtype is then the operator's own (float64 for a float64 matrix,
    # float32 for a float32 one), which becomes the working dtype.
    probe = jax.ShapeDtypeStruct((dim,), jnp.float32)
    try:
        out = jax.eval_shape(op, probe)
    except (TypeError, ValueError) as err:
        raise ValueError(f"matvec failed on a vector of shape ({dim},): {err}") from err
    shape = getattr(out, "shape", None)
    if shape != (dim,):
        got = shape if shape is not None else jax.tree_util.tree_structure(out)
        raise ValueError(f"matvec must map a ({dim},) vector to a ({dim},) vector, got {got}")
    if out.dtype not in (jnp.float32, jnp.float64):
        raise ValueError(
            f"matvec must return float32 or float64 vectors, got dtype {out.dtype} (the Lanczos routines need "
            "LAPACK's eigh, which has no half precision: cast the parameters to float32)"
        )
    return op, out.dtype


def require_finite(what: str, *arrays) -> None:
    """Raise when a concrete result holds NaN or inf: the operator gave them from finite inputs.

    Skipped under tracing, where values cannot be seen.
    """
    if any(isinstance(a, jax.core.Tracer) for a in arrays):
        return
    if not all(bool(np.all(np.isfinite(np.asarray(a)))) for a in arrays):
        raise ValueError(
            f"{what}: matvec returned NaN or inf from finite vectors; check the operator (a loss that is not "
            "finite at these parameters, or an overflow in float32)"
        )


def hoisted(matvec, dim: int, dtype, budget: int):
    """``matvec`` with its work that does not depend on ``v`` done once, for use inside a loop.

    For a linear operator, ``jax.linearize`` at ``v = 0`` evaluates everything that is independent of
    ``v`` (for a Hessian-vector product: the forward and backward pass at the parameters) once and
    returns a function that runs only the rest (the tangent passes), about a third less work per
    product for an MLP. The stored intermediates cost memory, so the operator is hoisted only when they
    fit in ``budget`` bytes (callers pass the size of the Krylov basis they hold anyway; an operator
    that chunks a large data set keeps its chunked, recomputing form). Called while tracing.
    """
    try:
        lin = jax.linearize(matvec, jnp.zeros((dim,), dtype))[1]
    except Exception:  # any failure to linearise (a callback, say): use the operator as it is
        return matvec
    # If the intermediates are too large, the unused linearisation is dead code (XLA drops it).
    leaves = jax.tree_util.tree_leaves(lin)
    size = sum(math.prod(jnp.shape(leaf)) * jnp.dtype(leaf.dtype).itemsize for leaf in leaves)
    return lin if size <= budget else matvec


def check_count(name: str, value, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    return int(value)


def orthogonalise(w, basis):
    # Classical Gram-Schmidt against all rows of `basis`, twice ("twice is enough", Parlett 1998).
    # Unused rows are zero and contribute nothing.
    h = basis @ w
    w = w - h @ basis
    h2 = basis @ w
    w = w - h2 @ basis
    return w, h + h2


def iterate(matvec, basis, proj, norms, key, start, stop, *, restart=True, three_term=False):
    """Lanczos steps ``j = start, ..., stop - 1`` with full re-orthogonalisation, one ``fori_loop``.

    On entry rows ``0..start`` of ``basis (m + 1, dim)`` are orthonormal (row ``start`` is the vector to
    expand) and the rest are zero; ``proj (m, m)`` holds ``Q A Q^T`` for the rows before ``start``.
    Each step writes column and row ``j`` of ``proj`` from the Gram-Schmidt coefficients, the norm of
    the new residual into ``norms[j]``, and its direction into ``basis[j + 1]``. On breakdown (residual
    at rounding level) the Krylov space is invariant: the step records ``beta = 0`` and, with
    ``restart``, continues with a random vector orthogonal to the basis, which keeps
    ``A Q^T = Q^T T + r e^T`` exact and ``Q`` orthonormal. Without ``restart`` (for quadrature under
    ``vmap``, where ``lax.cond`` would evaluate both branches every step) the remaining vectors are
    zero: ``T`` gets a decoupled zero block whose Ritz values carry zero quadrature weight.

    With ``three_term`` (only for a plain run from ``start = 0``) the first Gram-Schmidt pass is the
    Lanczos three-term recurrence and one full pass follows, which halves the reads of the basis (the
    loop is memory-bound under ``vmap``); otherwise both passes are full, as a thick restart needs.
    """
    dtype = basis.dtype
    dim = basis.shape[1]
    rounding = 10 * jnp.finfo(dtype).eps * np.sqrt(dim)

    def step(j, state):
        basis, proj, norms = state
        aq = matvec(basis[j]).astype(dtype)
        if three_term:
            q, previous = basis[j], jnp.where(j > 0, norms[j - 1], 0)
            alpha = jnp.vdot(q, aq)
            w = aq - alpha * q - previous * basis[jnp.maximum(j - 1, 0)]
            h = basis @ w
            w = w - h @ basis
            h = h.at[j].add(alpha).at[j - 1].add(jnp.where(j > 0, previous, 0))
        else:
            w, h = orthogonalise(aq, basis)
        beta = jnp.linalg.norm(w)
        proj = proj.at[:, j].set(h[:-1]).at[j, :].set(h[:-1])

        def regular(_):
            return w / jnp.where(beta > 0, beta, 1), beta

        def fresh(_):
            z = jax.random.normal(jax.random.fold_in(key, j), (dim,), dtype)
            z, _ = orthogonalise(z, basis)
            nz = jnp.linalg.norm(z)
            return z / jnp.where(nz > 0, nz, 1), jnp.zeros((), dtype)

        breakdown = beta <= rounding * jnp.linalg.norm(aq)
        if restart:
            nxt, beta = lax.cond(breakdown, fresh, regular, None)
        else:
            nxt, beta = regular(None)
            nxt, beta = jnp.where(breakdown, 0, nxt), jnp.where(breakdown, 0, beta)
        return basis.at[j + 1].set(nxt), proj, norms.at[j].set(beta)

    return lax.fori_loop(start, stop, step, (basis, proj, norms))


def start_basis(v0, num_steps):
    dim = v0.shape[0]
    basis = jnp.zeros((num_steps + 1, dim), v0.dtype).at[0].set(v0 / jnp.linalg.norm(v0))
    return basis, jnp.zeros((num_steps, num_steps), v0.dtype), jnp.zeros((num_steps,), v0.dtype)
