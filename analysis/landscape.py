"""Low-dimensional views of a loss surface: 1-D interpolations, random or Hessian directions, 2-D slices.

References:
    Goodfellow, Vinyals & Saxe (2015), Qualitatively characterizing neural network optimization problems
    (linear interpolation between two parameter vectors).
    Li, Xu, Taylor, Studer & Goldstein (2018), Visualizing the loss landscape of neural nets (filter
    normalisation).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.flatten_util import ravel_pytree

__all__ = ["eigen_directions", "interpolate", "random_directions", "slice_2d"]


def _check_same_tree(a, b, what_a: str, what_b: str) -> None:
    sa, sb = jax.tree_util.tree_structure(a), jax.tree_util.tree_structure(b)
    if sa != sb:
        raise ValueError(f"{what_b} must have the tree structure of {what_a}: expected {sa}, got {sb}")
    for (path, x), y in zip(
        jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves(b), strict=True
    ):
        if jnp.shape(x) != jnp.shape(y):
            raise ValueError(
                f"{what_b}{jax.tree_util.keystr(path)} has shape {jnp.shape(y)}, {what_a} has {jnp.shape(x)}"
            )


def _check_batch_size(batch_size):
    if batch_size is not None and int(batch_size) < 1:
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size}")
    return None if batch_size is None else int(batch_size)


def _compiled(factory, loss_fn, batch_size):
    try:
        return factory(loss_fn, batch_size)
    except TypeError:  # an unhashable loss_fn: compile without the cache
        return factory.__wrapped__(loss_fn, batch_size)


@functools.lru_cache(maxsize=8)
def _cached_line(loss_fn, batch_size):
    def line(pa, pb, alphas, args):
        def at(alpha):
            p = jax.tree_util.tree_map(lambda a, b: (1 - alpha) * a + alpha * b, pa, pb)
            return loss_fn(p, *args)

        return lax.map(at, alphas, batch_size=batch_size)

    # Cached per (loss_fn, batch_size) so repeated calls reuse one compilation.
    return jax.jit(line)


def interpolate(
    loss_fn: Callable,
    params_a,
    params_b,
    *args,
    num: int = 51,
    extend: float | tuple[float, float] = 0.0,
    batch_size: int | None = None,
):
    """Loss along the straight line ``(1 - alpha) params_a + alpha params_b`` (Goodfellow et al. 2015).

    Args:
        loss_fn: ``loss_fn(params, *args) -> scalar``.
        params_a, params_b: pytrees with the same structure and shapes (``alpha = 0`` and ``alpha = 1``).
        *args: data passed to ``loss_fn``.
        num: number of ``alpha`` values, at least 2.
        extend: how far to go past the end points: ``alpha`` runs over ``[-e0, 1 + e1]`` with
            ``(e0, e1) = extend`` (a single float is used for both). With ``extend = 0`` the first and last
            ``alpha`` are exactly 0 and 1.
        batch_size: how many ``alpha`` to evaluate at once (``lax.map``'s ``batch_size``); ``None``
            evaluates one at a time, which keeps memory at one forward pass.

    Returns:
        ``(alphas, losses)``, both of shape ``(num,)``.
    """
    _check_same_tree(params_a, params_b, "params_a", "params_b")
    if int(num) < 2:
        raise ValueError(f"num must be at least 2, got {num}")
    e0, e1 = (extend, extend) if np.ndim(extend) == 0 else tuple(extend)
    if e0 < 0 or e1 < 0:
        raise ValueError(f"extend must be non-negative, got {extend}")
    batch_size = _check_batch_size(batch_size)
    dtype = ravel_pytree(params_a)[0].dtype
    # numpy's linspace hits 0 and 1 exactly when they are grid points.
    alphas = jnp.asarray(np.linspace(-e0, 1 + e1, int(num)), dtype=dtype)
    losses = _compiled(_cached_line, loss_fn, batch_size)(params_a, params_b, alphas, args)
    return alphas, losses


_NORMALIZE = ("filter", "layer", None)
_BIASES = ("zero", "normalize")


def _normalize_leaf(d, p, normalize, biases):
    if d.ndim <= 1:
        if biases == "zero":
            return jnp.zeros_like(d)
        return d * (jnp.linalg.norm(p) / jnp.linalg.norm(d))
    if normalize == "layer":
        return d * (jnp.linalg.norm(p) / jnp.linalg.norm(d))
    # A filter is everything feeding one output unit: the entries sharing an index on the last axis
    # (a column of a dense (n_in, n_out) W, or one output channel of an HWIO conv kernel).
    axes = tuple(range(d.ndim - 1))
    return d * (jnp.linalg.norm(p, axis=axes) / jnp.linalg.norm(d, axis=axes))


def random_directions(
    key: jax.Array,
    params,
    num: int = 2,
    *,
    normalize: str | None = "filter",
    biases: str = "zero",
) -> tuple:
    """Gaussian directions in parameter space, optionally rescaled to the parameters' own scale.

    Each direction has the structure of ``params`` with i.i.d. ``N(0, 1)`` entries, then per leaf:

    - ``normalize="filter"`` (Li et al. 2018): for a leaf with two or more axes, every filter is scaled to
      the norm of the same filter of ``params``; a filter is the set of entries that share an index on the
      last axis, i.e. for a dense ``W`` of shape ``(n_in, n_out)`` the column ``W[:, j]`` of output unit
      ``j``. This removes the scale invariance that makes unnormalised plots of different networks
      incomparable.
    - ``normalize="layer"``: each leaf with two or more axes is scaled to the norm of that leaf of
      ``params``.
    - ``normalize=None``: the raw Gaussian draw, every leaf included.

    With ``normalize`` set, leaves with at most one axis (biases, norm gains) follow ``biases``:
    ``"zero"`` sets them to 0, as Li et al. do; ``"normalize"`` scales the whole vector to the norm of
    the corresponding leaf of ``params``. Zero filters of ``params`` give zero filters in the direction.

    Args:
        key: PRNG key.
        params: a pytree of float arrays.
        num: number of directions.
        normalize: ``"filter"``, ``"layer"`` or ``None``.
        biases: ``"zero"`` or ``"normalize"``, for 0-d and 1-d leaves when ``normalize`` is set.

    Returns:
        A tuple of ``num`` pytrees, each with the structure and shapes of ``params``.
    """
    if normalize not in _NORMALIZE:
        raise ValueError(f"unknown normalize {normalize!r}; valid values: 'filter', 'layer', None")
    if biases not in _BIASES:
        raise ValueError(f"unknown biases {biases!r}; valid names: {', '.join(_BIASES)}")
    if int(num) < 1:
        raise ValueError(f"num must be at least 1, got {num}")
    flat, unravel = ravel_pytree(params)
    if flat.size == 0 or not jnp.issubdtype(flat.dtype, jnp.floating):
        raise ValueError(f"params must hold floating-point arrays, got {flat.size} entries of {flat.dtype}")
    out = []
    for k in jax.random.split(key, int(num)):
        d = unravel(jax.random.normal(k, flat.shape, flat.dtype))
        if normalize is not None:
            d = jax.tree_util.tree_map(
                lambda di, pi: _normalize_leaf(di, jnp.asarray(pi), normalize, biases), d, params
            )
        out.append(d)
    return tuple(out)


_EIGEN_METHODS = ("dense", "lanczos")


def eigen_directions(
    loss_fn: Callable,
    params,
    *args,
    k: int = 2,
    method: str = "dense",
    key: jax.Array | None = None,
):
    """The top-``k`` Hessian eigenvectors (largest algebraic eigenvalues) as parameter-space directions.

    Args:
        loss_fn: ``loss_fn(params, *args) -> scalar``.
        params: the point, a pytree of float arrays.
        *args: data passed to ``loss_fn``.
        k: number of directions (``k < P`` for ``"lanczos"``).
        method: ``"dense"`` builds the Hessian with :func:`analysis.curvature.hessian` and uses ``eigh``
            (small models); ``"lanczos"`` uses :func:`analysis.krylov.eigsh` on Hessian-vector products
            from :func:`analysis.curvature.hessian_operator` and needs ``key``.
        key: PRNG key for the Lanczos start vector.

    Returns:
        ``(eigenvalues, directions)``: eigenvalues of shape ``(k,)`` in descending order, and a tuple of
        ``k`` unit-norm (over all leaves) pytrees with the structure of ``params``.
    """
    if method not in _EIGEN_METHODS:
        raise ValueError(f"unknown method {method!r}; valid names: {', '.join(_EIGEN_METHODS)}")
    flat, unravel = ravel_pytree(params)
    if not 1 <= int(k) <= flat.size:
        raise ValueError(f"k must be between 1 and the number of parameters {flat.size}, got {k}")
    k = int(k)
    from analysis import curvature

    if method == "dense":
        H = curvature.hessian(loss_fn, params, *args)
        lam, U = jnp.linalg.eigh(0.5 * (H + H.T))
        lam, U = lam[::-1][:k], U[:, ::-1][:, :k]
    else:
        if key is None:
            raise ValueError("method='lanczos' needs a PRNG key")
        from analysis import krylov

        matvec, dim = curvature.hessian_operator(loss_fn, params, *args)
        if k >= dim:
            raise ValueError(f"method='lanczos' needs k < {dim} (the number of parameters), got {k}")
        result = krylov.eigsh(matvec, dim, k, which="LA", key=key)
        lam, U = result.eigenvalues, result.eigenvectors
        order = jnp.argsort(-lam)
        lam, U = lam[order], U[:, order]
    return lam, tuple(unravel(U[:, i]) for i in range(k))


@functools.lru_cache(maxsize=8)
def _cached_grid(loss_fn, batch_size):
    def grid(params, d1, d2, coeffs, args):
        def at(ab):
            p = jax.tree_util.tree_map(lambda x, u, v: x + ab[0] * u + ab[1] * v, params, d1, d2)
            return loss_fn(p, *args)

        return lax.map(at, coeffs, batch_size=batch_size)

    return jax.jit(grid)


def _axis(span, num, dtype, name):
    lo, hi = span
    if not hi > lo:
        raise ValueError(f"{name} span must be (lo, hi) with hi > lo, got {span}")
    if int(num) < 2:
        raise ValueError(f"{name} num must be at least 2, got {num}")
    # numpy's linspace puts an exact 0 on the grid (the centre, params itself) when the span allows.
    return jnp.asarray(np.linspace(lo, hi, int(num)), dtype=dtype)


def slice_2d(
    loss_fn: Callable,
    params,
    d1,
    d2,
    *args,
    span: Sequence[float] | Sequence[Sequence[float]] = (-1.0, 1.0),
    num: int | Sequence[int] = 21,
    batch_size: int | None = None,
):
    """Loss on the plane ``params + a d1 + b d2`` over a grid, ready for ``plt.contour(X, Y, Z)``.

    All grid points are evaluated in one compiled call (``lax.map`` over the flattened grid), so the cost
    is one compilation, not one per point.

    Args:
        loss_fn: ``loss_fn(params, *args) -> scalar``.
        params: the centre, a pytree of float arrays.
        d1, d2: directions with the structure and shapes of ``params`` (e.g. :func:`random_directions`).
        *args: data passed to ``loss_fn``.
        span: ``(lo, hi)`` for both axes, or ``((lo1, hi1), (lo2, hi2))`` for ``a`` and ``b`` separately.
        num: points per axis, an int or ``(num1, num2)``.
        batch_size: grid points evaluated at once (``lax.map``'s ``batch_size``); ``None`` evaluates one at
            a time, which keeps memory at one forward pass.

    Returns:
        ``(X, Y, Z)`` each of shape ``(num2, num1)`` (``meshgrid`` "xy" indexing):
        ``Z[i, j] = loss_fn(params + X[i, j] d1 + Y[i, j] d2, *args)`` with ``X[i, j] = a_j`` and
        ``Y[i, j] = b_i``.
    """
    _check_same_tree(params, d1, "params", "d1")
    _check_same_tree(params, d2, "params", "d2")
    batch_size = _check_batch_size(batch_size)
    spans = (span, span) if np.ndim(span[0]) == 0 else tuple(span)
    nums = (num, num) if np.ndim(num) == 0 else tuple(num)
    if len(spans) != 2 or len(nums) != 2:
        raise ValueError(f"span and num must describe two axes, got span={span}, num={num}")
    dtype = ravel_pytree(params)[0].dtype
    a = _axis(spans[0], nums[0], dtype, "first")
    b = _axis(spans[1], nums[1], dtype, "second")
    X, Y = jnp.meshgrid(a, b, indexing="xy")
    coeffs = jnp.stack([X.ravel(), Y.ravel()], axis=1)
    Z = _compiled(_cached_grid, loss_fn, batch_size)(params, d1, d2, coeffs, args)
    return X, Y, Z.reshape(X.shape)
