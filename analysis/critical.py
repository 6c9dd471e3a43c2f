"""Critical points: classify them from the Hessian spectrum, find them (saddles included), and the
second-order directions compared around them.

Dense-matrix functions take ``H`` of shape ``(P, P)`` in ``jax.flatten_util.ravel_pytree`` order (from
:func:`analysis.curvature.hessian`) and a gradient ``g`` that is either a flat ``(P,)`` vector or the
gradient pytree itself; directions come back in the same structure as ``g``.

References:
    Dauphin, Pascanu, Gulcehre, Cho, Ganguli & Bengio (2014), Identifying and attacking the saddle point
    problem in high-dimensional non-convex optimization.
    Pascanu, Dauphin, Ganguli & Bengio (2014), On the saddle point problem for non-convex optimization.
    Vatanen, Raiko, Valpola & LeCun (2013), Pushing stochastic gradient towards second-order methods --
    backpropagation learning with transformations in nonlinearities.
    Levenberg (1944), Marquardt (1963); Nocedal & Wright (2006), Numerical Optimization, ch. 10-11.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

from analysis import spectrum

__all__ = [
    "Classification",
    "CriticalPointResult",
    "classify",
    "damped_newton_direction",
    "find_critical_point",
    "gradient_newton_angles",
    "saddle_free_newton_direction",
]


class Classification(NamedTuple):
    """Second-order classification of a point; see :func:`classify`."""

    kind: str
    index: float
    n_negative: int
    n_zero: int
    n_positive: int
    is_critical: bool
    tol: float


def classify(
    eigenvalues,
    *,
    grad_norm: float | None = None,
    rtol: float = spectrum.DEFAULT_RTOL,
    atol: float = 0.0,
    grad_tol: float = 1e-6,
) -> Classification:
    """Classify a point by the signs of its Hessian eigenvalues (the second-derivative test).

    ``kind`` is decided from the eigenvalues alone, with ``|lambda| <= max(atol, rtol * max|lambda|)``
    counted as zero (:func:`analysis.spectrum.inertia`):

    - ``"saddle"``: some negative and some positive eigenvalues (zeros or not);
    - ``"minimum"`` / ``"maximum"``: all eigenvalues positive / all negative;
    - ``"degenerate"``: semidefinite with at least one zero eigenvalue, where the second-order test cannot
      decide (``x^3`` at 0, or any minimum with flat directions such as a network's symmetries).

    The gradient does not change ``kind``: a non-critical point still gets its curvature classified, and
    ``is_critical`` says whether ``grad_norm <= grad_tol`` (``True`` when ``grad_norm`` is not given).

    Args:
        eigenvalues: Hessian eigenvalues of shape ``(P,)``, any order.
        grad_norm: ``||g||_2`` at the point, optional.
        rtol, atol: the zero tolerance, see :func:`analysis.spectrum.zero_tolerance`.
        grad_tol: largest gradient norm that counts as critical.

    Returns:
        :class:`Classification` with ``kind``, ``index = n_negative / P`` (Dauphin et al. 2014), the counts
        ``n_negative``, ``n_zero``, ``n_positive``, ``is_critical`` and the zero tolerance ``tol``.
    """
    n_neg, n_zero, n_pos, tol = spectrum.inertia(eigenvalues, rtol=rtol, atol=atol)
    if n_neg and n_pos:
        kind = "saddle"
    elif n_zero:
        kind = "degenerate"
    elif n_neg:
        kind = "maximum"
    else:
        kind = "minimum"
    if grad_norm is None:
        is_critical = True
    else:
        grad_norm = float(grad_norm)
        if not grad_norm >= 0:
            raise ValueError(f"grad_norm must be a non-negative number, got {grad_norm}")
        is_critical = grad_norm <= grad_tol
    size = n_neg + n_zero + n_pos
    return Classification(kind, n_neg / size, n_neg, n_zero, n_pos, is_critical, tol)


# ---------------------------------------------------------------------------------------------------
# Dense second-order directions


def _flat_system(H, g):
    """Symmetrised ``H`` and flat ``g`` with matching shapes, plus the function that restores ``g``'s tree."""
    g_flat, unravel = ravel_pytree(g)
    H = jnp.asarray(H)
    P = g_flat.shape[0]
    if H.shape != (P, P):
        raise ValueError(f"H must have shape ({P}, {P}) to match g with {P} entries, got {H.shape}")
    dtype = jnp.result_type(H.dtype, g_flat.dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.zeros(()).dtype
    H = H.astype(dtype)
    return 0.5 * (H + H.T), g_flat.astype(dtype), unravel


def damped_newton_direction(H, g, mu: float):
    """The damped Newton direction ``(H + mu I)^{-1} g``; the step is its negative.

    For ``mu`` at or below ``-lambda_min`` the matrix is not positive definite and the direction need not
    be a descent direction; at ``mu = -lambda_i`` it is singular and the result is inf/nan.

    Args:
        H: Hessian of shape ``(P, P)``.
        g: gradient, a ``(P,)`` vector or a pytree with ``P`` entries.
        mu: damping (Levenberg-Marquardt / Tikhonov), a scalar.

    Returns:
        The direction, in the structure of ``g``.
    """
    H, g, unravel = _flat_system(H, g)
    A = H + mu * jnp.eye(H.shape[0], dtype=H.dtype)
    return unravel(jnp.linalg.solve(A, g))


def saddle_free_newton_direction(H, g, *, damping: float | None = None):
    """The saddle-free Newton direction ``|H|^{-1} g`` of Dauphin et al. (2014); the step is its negative.

    ``|H| = U diag(max(|lambda|, damping)) U^T`` from the eigendecomposition ``H = U diag(lambda) U^T``:
    Newton's step with each curvature replaced by its absolute value, so negative-curvature directions are
    descended instead of climbed and ``g . |H|^{-1} g > 0`` whenever ``g != 0``.

    Args:
        H: Hessian of shape ``(P, P)``.
        g: gradient, a ``(P,)`` vector or a pytree with ``P`` entries.
        damping: floor on ``|lambda|`` (absolute). ``None`` uses ``sqrt(eps) * max|lambda|`` so the
            inverse is always finite.

    Returns:
        The direction, in the structure of ``g``.
    """
    H, g, unravel = _flat_system(H, g)
    lam, U = jnp.linalg.eigh(H)
    mag = jnp.abs(lam)
    if damping is None:
        floor = jnp.sqrt(jnp.finfo(H.dtype).eps) * jnp.max(mag)
        floor = jnp.where(floor > 0, floor, jnp.finfo(H.dtype).tiny)
    elif isinstance(damping, jax.core.Tracer):  # traced (under jit or grad): cannot be checked here
        floor = damping
    else:
        if not damping > 0:
            raise ValueError(f"damping must be positive, got {damping}")
        floor = damping
    return unravel(U @ ((U.T @ g) / jnp.maximum(mag, floor)))


_INDEFINITE = ("compute", "nan")


def gradient_newton_angles(H, g, mus, *, indefinite: str = "compute"):
    """Angle in degrees between ``g`` and the damped Newton direction ``(H + mu I)^{-1} g``, per ``mu``.

    Vatanen et al. (2013) use this angle to show how far a first-order step is from a second-order one,
    and how the transformations they propose shrink it. ``mu -> inf`` gives angle 0 (the direction becomes
    ``g / mu``); a positive definite ``H + mu I`` gives an angle below 90 degrees.

    Where ``H + mu I`` is not positive definite (``mu <= -lambda_min``):
    ``indefinite="compute"`` still returns the angle, which can exceed 90 degrees (the "Newton step" then
    climbs); ``indefinite="nan"`` returns ``nan`` there. An exactly singular ``H + mu I`` gives ``nan``
    either way.

    Args:
        H: Hessian of shape ``(P, P)``.
        g: gradient, a ``(P,)`` vector or a pytree with ``P`` entries, not zero.
        mus: damping values, shape ``(M,)`` (or a scalar).
        indefinite: ``"compute"`` or ``"nan"``, see above.

    Returns:
        Angles in degrees, shape ``(M,)`` (or ``()`` for a scalar ``mu``), in ``[0, 180]``.
    """
    if indefinite not in _INDEFINITE:
        raise ValueError(f"unknown indefinite {indefinite!r}; valid names: {', '.join(_INDEFINITE)}")
    H, g, _ = _flat_system(H, g)
    mus = jnp.asarray(mus, dtype=H.dtype)
    if mus.ndim > 1:
        raise ValueError(f"mus must be a scalar or a vector of shape (M,), got shape {mus.shape}")
    lam, U = jnp.linalg.eigh(H)
    gt = U.T @ g  # rotation preserves angles, so work in the eigenbasis
    shifted = lam[None, :] + jnp.atleast_1d(mus)[:, None]
    singular = jnp.any(shifted == 0, axis=1)
    d = gt[None, :] / jnp.where(shifted == 0, 1, shifted)
    u = gt / jnp.linalg.norm(gt)
    v = d / jnp.linalg.norm(d, axis=1, keepdims=True)
    # Kahan's formula: accurate for angles near 0 and 180 where arccos of the cosine loses digits.
    angles = jnp.degrees(
        2 * jnp.arctan2(jnp.linalg.norm(u[None, :] - v, axis=1), jnp.linalg.norm(u[None, :] + v, axis=1))
    )
    bad = singular
    if indefinite == "nan":
        bad = bad | jnp.any(shifted <= 0, axis=1)
    angles = jnp.where(bad, jnp.nan, angles)
    return angles.reshape(mus.shape)


# ---------------------------------------------------------------------------------------------------
# Finding critical points


class CriticalPointResult(NamedTuple):
    """Outcome of :func:`find_critical_point`."""

    params: object
    loss: float
    grad_norm: float
    iterations: int
    converged: bool


_METHODS = ("newton", "gradnorm")


def find_critical_point(
    loss_fn: Callable,
    params0,
    *args,
    method: str = "newton",
    max_iter: int = 100,
    grad_tol: float | None = None,
    rcond: float | None = None,
    mu0: float = 1e-3,
    max_backtracks: int = 40,
) -> CriticalPointResult:
    """Converge to a nearby point with ``grad = 0``, whatever its kind (saddles included).

    Gradient descent runs away from saddles; these methods treat ``g(theta) = 0`` as a root-finding
    problem with the merit function ``phi = 0.5 ||g||^2`` instead (Dauphin et al. 2014 and Pascanu et al.
    2014 locate saddles this way). Each iteration builds the dense Hessian with
    :func:`analysis.curvature.hessian` and eigendecomposes it, so this is for small models.

    - ``"newton"``: Newton's method on the gradient, ``d = -H^+ g`` with the pseudo-inverse (eigenvalues
      with ``|lambda| <= rcond * max|lambda|`` dropped, so singular Hessians are fine), then backtracking
      ``t = 1, 1/2, ...`` until the Armijo condition ``phi(theta + t d) <= phi + 1e-4 t grad(phi).d`` holds
      (``grad(phi) = H g``).
    - ``"gradnorm"``: Levenberg-Marquardt on the residual ``g``, whose Jacobian is ``H``:
      ``d = -(H^2 + mu I)^{-1} H g``, with ``mu = mu_rel * max(lambda^2)``; ``mu_rel`` is multiplied by 10
      until ``phi`` decreases and divided by 3 after each accepted step. It minimises ``phi`` and so can
      also stop at a local minimum of ``||g||`` that is not critical (``converged=False`` then).

    The whole loop is one compiled ``lax.while_loop``; it stops when ``||g|| <= grad_tol``, after
    ``max_iter`` Hessians, or when no trial step decreases ``phi`` (``converged=False``).

    Args:
        loss_fn: ``loss_fn(params, *args) -> scalar``.
        params0: starting parameters, a pytree of float arrays.
        *args: data passed to ``loss_fn``.
        method: ``"newton"`` or ``"gradnorm"``.
        max_iter: most outer iterations (Hessian evaluations).
        grad_tol: absolute tolerance on ``||g||_2``; ``None`` uses ``eps ** (2/3)`` of the params dtype
            (about ``4e-11`` in float64, ``2e-5`` in float32).
        rcond: relative cut-off of the pseudo-inverse for ``"newton"``; ``None`` uses ``sqrt(eps)``.
        mu0: initial relative damping ``mu_rel`` for ``"gradnorm"``.
        max_backtracks: most trial steps per iteration.

    Returns:
        :class:`CriticalPointResult` ``(params, loss, grad_norm, iterations, converged)`` with ``params`` in
        the structure of ``params0`` and host scalars for the rest.
    """
    if method not in _METHODS:
        raise ValueError(f"unknown method {method!r}; valid names: {', '.join(_METHODS)}")
    if max_iter < 0 or max_backtracks < 1:
        raise ValueError(
            f"max_iter must be >= 0 and max_backtracks >= 1, got {max_iter} and {max_backtracks}"
        )
    if mu0 <= 0:
        raise ValueError(f"mu0 must be positive, got {mu0}")
    x0, unravel = ravel_pytree(params0)
    if x0.size == 0 or not jnp.issubdtype(x0.dtype, jnp.floating):
        raise ValueError(f"params0 must hold floating-point arrays, got {x0.size} entries of {x0.dtype}")
    eps = float(jnp.finfo(x0.dtype).eps)
    grad_tol = eps ** (2 / 3) if grad_tol is None else float(grad_tol)
    rcond = eps**0.5 if rcond is None else float(rcond)
    leaves, treedef = jax.tree_util.tree_flatten(params0)
    avals = tuple((jnp.shape(leaf), jnp.result_type(leaf)) for leaf in leaves)
    run = _solver(loss_fn, treedef, avals, method)
    x, loss, gnorm, it = run(
        x0, jnp.asarray(mu0, x0.dtype), grad_tol, rcond, max_iter, max_backtracks, tuple(args)
    )
    gnorm = float(gnorm)
    return CriticalPointResult(
        params=unravel(x),
        loss=float(loss),
        grad_norm=gnorm,
        iterations=int(it),
        converged=bool(gnorm <= grad_tol),
    )


def _unravel(treedef, avals):
    template = jax.tree_util.tree_unflatten(treedef, [jnp.zeros(s, d) for s, d in avals])
    unravel = ravel_pytree(template)[1]
    return lambda x: jax.tree_util.tree_leaves(unravel(x))


@functools.lru_cache(maxsize=16)
def _solver(loss_fn, treedef, avals, method):
    """The compiled search loop, cached so that new starts and tolerances reuse one compilation."""
    from analysis import curvature

    armijo = 1e-4
    leaves_of = _unravel(treedef, avals)

    def unravel(x):
        return jax.tree_util.tree_unflatten(treedef, leaves_of(x))

    def grad(x, args):
        return ravel_pytree(jax.grad(loss_fn)(unravel(x), *args))[0]

    def trial(step, x, max_backtracks, args):
        """First step in the sequence ``step(j)`` (``j = 0, 1, ...``) that its test accepts."""

        def cond(s):
            j, _, _, ok = s
            return (~ok) & (j < max_backtracks)

        def body(s):
            j, _, _, _ = s
            x_new, accept = step(j)
            g_new = grad(x_new, args)
            return j + 1, x_new, g_new, accept(0.5 * g_new @ g_new)

        init = (jnp.asarray(0), x, jnp.zeros_like(x), jnp.asarray(False))
        j, x_new, g_new, ok = lax.while_loop(cond, body, init)
        return j - 1, x_new, g_new, ok

    def iterate(state, rcond, max_backtracks, args):
        x, g, mu, it, _ = state
        H = curvature.hessian(loss_fn, unravel(x), *args)
        lam, U = jnp.linalg.eigh(0.5 * (H + H.T))
        gt = U.T @ g
        phi = 0.5 * g @ g
        if method == "newton":
            keep = jnp.abs(lam) > rcond * jnp.max(jnp.abs(lam))
            d = -U @ jnp.where(keep, gt / jnp.where(keep, lam, 1), 0)
            slope = -jnp.sum(jnp.where(keep, gt**2, 0))  # grad(phi) . d = -g^T H H^+ g

            def step(j):
                t = 0.5**j
                return x + t * d, lambda phi_new: phi_new <= phi + armijo * t * slope

            _, x_new, g_new, ok = trial(step, x, max_backtracks, args)
            mu_new = mu
        else:
            scale = jnp.max(lam**2)

            def step(j):
                m = mu * 10.0**j * scale
                d = -U @ (lam * gt / (lam**2 + m))
                return x + d, lambda phi_new: phi_new < phi

            j, x_new, g_new, ok = trial(step, x, max_backtracks, args)
            mu_new = jnp.maximum(mu * 10.0**j / 3, jnp.finfo(x.dtype).eps)
        x = jnp.where(ok, x_new, x)
        g = jnp.where(ok, g_new, g)
        return x, g, jnp.where(ok, mu_new, mu), it + 1, ~ok

    @jax.jit
    def run(x0, mu0, grad_tol, rcond, max_iter, max_backtracks, args):
        def cond(state):
            _, g, _, it, stalled = state
            return (jnp.linalg.norm(g) > grad_tol) & (it < max_iter) & ~stalled

        state = (x0, grad(x0, args), mu0, jnp.asarray(0), jnp.asarray(False))
        x, g, _, it, _ = lax.while_loop(cond, lambda s: iterate(s, rcond, max_backtracks, args), state)
        return x, loss_fn(unravel(x), *args), jnp.linalg.norm(g), it

    return run
