"""Sharpness during training: the largest Hessian eigenvalue every ``k`` steps, warm-started, inside the epoch.

Gradient descent with step size ``eta`` on a quadratic is stable only while the largest Hessian eigenvalue
``lambda_max`` (the *sharpness*) stays below ``2 / eta``. Cohen, Kaur, Li, Kolter & Talwalkar (2021) found that
full-batch gradient descent on neural networks drives the sharpness up ("progressive sharpening") until it
reaches ``2 / eta``, and then hovers there while the loss keeps falling, non-monotonically ("the edge of
stability"). For adaptive methods the quantity that meets the limit is the *preconditioned* sharpness, the
largest eigenvalue of ``P^(-1/2) H P^(-1/2)`` with the optimiser's own diagonal preconditioner ``P`` (Adam's
``sqrt(nu_hat) + eps``); it hovers at ``2 (1 + beta1) / ((1 - beta1) eta)``, ``38 / eta`` for Adam's
``beta1 = 0.9`` (Cohen et al. 2022).

:func:`tracker` builds an :class:`fflab.train.Monitor` (fflab defines the protocol; this module does not import
fflab): pass it to ``fflab.train.fit(..., monitor=...)`` or ``make_train_epoch(..., monitor=...)`` and every
``every`` steps, inside the compiled epoch, it measures on a fixed data subset (Cohen et al. measure on a
subset of the training set too):

- ``sharpness``: ``lambda_max`` of the Hessian of ``loss_fn`` at the step's parameters, by
  :func:`top_eigenpair` started from a block of two vectors, the previous record's top two eigenvectors
  (:attr:`TopEigenpair.next_start`, the top one moved on by its last change), which stops as soon as the
  eigenvalue's estimated error meets the tolerance: after the first (cold) record usually the block's two
  Hessian-vector products, not a cold Lanczos run; ``sharpness_error`` (the relative error estimate) and
  ``sharpness_matvecs`` (products spent on the record);
- optionally ``sharpness_min`` (the smallest eigenvalue, warm-started the same way), ``sharpness_trace``
  (Hutchinson's estimate of the trace) and ``preconditioned_sharpness``.

References:
    Cohen, Kaur, Li, Kolter & Talwalkar (2021), Gradient descent on neural networks typically occurs at the edge
    of stability. ICLR. https://arxiv.org/abs/2103.00065
    Cohen, Ghorbani, Krishnan, Agarwal, Medapati, Badura, Suo, Cardoze, Nado, Dahl & Gilmer (2022), Adaptive
    gradient methods at the edge of stability. https://arxiv.org/abs/2207.14484
    Wu & Simon (2000), Thick-restart Lanczos method for large symmetric eigenvalue problems. SIAM J. Matrix
    Anal. Appl. 22(2).
    Hutchinson (1989), A stochastic estimator of the trace of the influence matrix for Laplacian smoothing
    splines. Commun. Stat. Simul. Comput. 18(3).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree
from jax.tree_util import Partial

from analysis import curvature
from analysis._linalg import as_operator, check_count, hoisted, orthogonalise

__all__ = ["PRECONDITIONERS", "TopEigenpair", "Tracker", "adam_preconditioner", "top_eigenpair", "tracker"]

PRECONDITIONERS = ("adam",)


class TopEigenpair(NamedTuple):
    """The largest eigenpair of a symmetric operator, as :func:`top_eigenpair` found it.

    Attributes:
        value: scalar, the largest Ritz value (a lower bound of ``lambda_max``, equal to it at convergence).
        vector: ``(dim,)`` its unit Ritz vector.
        error: scalar, the estimated relative error of ``value``, ``min(r, r^2 / gap) / scale`` (see
            :func:`top_eigenpair`); at most ``tol`` when it converged.
        residual: scalar, the relative residual ``r / scale = ||A v - value v|| / scale``.
        matvecs: int32 scalar, the matrix-vector products spent.
        next_start: ``(2, dim)`` the start block for the next call at nearby parameters (the sharpness
            :func:`tracker` passes it on): the top two Ritz vectors after one step of subspace iteration with
            the products already spent (``A - sigma`` applied to each, ``sigma = min(0, smallest Ritz value) -
            scale``, unit rows). Started from both, the next call has the second eigenvalue in its first
            gap estimate, not a Rayleigh quotient of the bulk, and it follows the top eigenvector through a
            crossing of the top two eigenvalues. With a single product spent the second row is the residual's
            direction.
    """

    value: jax.Array
    vector: jax.Array
    error: jax.Array
    residual: jax.Array
    matvecs: jax.Array
    next_start: jax.Array


def _top(matvec, v0, tol, scale, num_steps: int, max_matvecs) -> TopEigenpair:
    """:func:`top_eigenpair`'s loops, traceable (the tracker calls it inside the training epoch).

    Rayleigh-Ritz on a growing basis with the operator's images kept beside it (Davidson's method with no
    preconditioner, which from a single start vector spans the Krylov space as Lanczos does): each step applies
    the operator to one new basis row, updates the projected matrix by one column, takes its Ritz pairs, and
    computes the top Ritz pair's residual explicitly from the images. The first rows are the start block; each
    later row is the top residual's direction. A full basis restarts on its top ``keep`` Ritz pairs, whose
    images are combinations of the stored ones. No per-step ``lax.cond`` carries the basis.
    """
    m, (b, dim), dtype = num_steps, v0.shape, v0.dtype
    max_matvecs = jnp.maximum(max_matvecs, b)  # the whole start block is applied
    keep = 1 + (m - 1) // 2  # Ritz pairs kept at a restart, as analysis.eigsh does for k = 1
    tiny = jnp.finfo(dtype).tiny
    rows = jnp.arange(m)
    # The start block, orthonormalised row by row; a row that vanishes (zero, or in the span of the rows before
    # it) is left out, and the residual direction takes its place. A zero first row becomes a constant vector.
    basis = jnp.zeros((m, dim), dtype)
    usable = jnp.ones((m,), bool)
    for i in range(b):
        w, _ = orthogonalise(v0[i], basis)
        norm, size = jnp.linalg.norm(w), jnp.linalg.norm(v0[i])
        ok = norm > 1e-3 * size
        if i == 0:
            w = jnp.where(ok, w, 1 / math.sqrt(dim))
            norm, ok = jnp.where(ok, norm, 1), jnp.asarray(True)
        basis = basis.at[i].set(jnp.where(ok, w / jnp.where(ok, norm, 1), 0))
        usable = usable.at[i].set(ok)

    def step(state):
        j, count, basis, images, proj, pending, _, _, _, _, _ = state
        basis = basis.at[j].set(pending)
        images = images.at[j].set(matvec(pending).astype(dtype))
        h = basis @ images[j]  # column j of the projected matrix (rows past j are zero)
        proj = proj.at[:, j].set(h).at[j, :].set(h)
        # Ritz pairs of the leading (j + 1) block. The unused rows get a diagonal strictly below that block's
        # spectrum (-2 ||T||_F), so the top two eigenvalues of the padded matrix are the block's, exactly.
        live = rows <= j
        t = jnp.where(live[:, None] & live[None, :], proj, 0)
        t = t + jnp.diag(jnp.where(live, 0, -(2 * jnp.linalg.norm(t) + tiny)))
        theta, vectors = jnp.linalg.eigh(t)
        y = vectors[:, -1]
        r = y @ images - theta[-1] * (y @ basis)  # the residual A u - theta u, explicitly
        norm_r = jnp.linalg.norm(r)
        # The a-posteriori estimate of the Ritz value's error: the residual, or residual^2 / gap once there is
        # a second Ritz pair [Parlett 1998, ch. 11], with the gap to the second pair's value plus its residual
        # (an eigenvalue lies within it of theta_2; as theta_2 is a lower bound of lambda_2, the gap to theta_2
        # alone would overstate the gap and understate the error) [Kato 1949; Temple 1928].
        second = vectors[:, -2]
        shift = jnp.linalg.norm(second @ images - theta[-2] * (second @ basis))
        gap = jnp.maximum(theta[-1] - theta[-2] - shift, tiny)
        error = jnp.where(j > 0, jnp.minimum(norm_r, norm_r**2 / gap), norm_r)
        size = jnp.maximum(jnp.maximum(jnp.abs(theta[-1]), jnp.abs(theta[m - 1 - j])), scale)  # max |Ritz value|
        size = jnp.where(size > 0, size, 1)
        done = (error <= tol * size) & (j >= b - 1)  # the whole start block first: it may hold the top
        q, _ = orthogonalise(r, basis)
        q = q / jnp.maximum(jnp.linalg.norm(q), tiny)
        after = jnp.minimum(j + 1, m - 1)
        pending = jnp.where((j + 1 < b) & usable[after], basis[after], q)
        return j + 1, count + 1, basis, images, proj, pending, theta, vectors, error / size, norm_r / size, done

    def restart(state):  # on the top `keep` Ritz pairs [Wu & Simon 2000]; their images are exact combinations
        j, count, basis, images, proj, pending, theta, vectors, error, residual, done = state
        top = vectors[:, ::-1][:, :keep].T
        basis = basis.at[keep:].set(0).at[:keep].set(top @ basis)
        images = images.at[keep:].set(0).at[:keep].set(top @ images)
        proj = jnp.zeros_like(proj).at[:keep, :keep].set(jnp.diag(theta[::-1][:keep]))
        vectors = jnp.eye(m, dtype=dtype)[:, ::-1]  # the kept pairs in the new basis, in eigh's ascending order
        pending, _ = orthogonalise(pending, basis)  # the residual direction (a full basis holds the whole block)
        pending = pending / jnp.maximum(jnp.linalg.norm(pending), tiny)
        return jnp.asarray(keep, j.dtype), count, basis, images, proj, pending, theta, vectors, error, residual, done

    def cycle(state):
        more = lambda s: ~s[10] & (s[0] < m) & (s[1] < max_matvecs)  # noqa: E731
        state = lax.while_loop(more, step, state)
        return lax.cond(state[0] >= m, restart, lambda s: s, state)

    state = (
        jnp.zeros((), jnp.int32),
        jnp.zeros((), jnp.int32),
        basis,
        jnp.zeros((m, dim), dtype),
        jnp.zeros((m, m), dtype),
        basis[0],
        jnp.zeros((m,), dtype),
        jnp.eye(m, dtype=dtype),
        jnp.asarray(jnp.inf, dtype),
        jnp.asarray(jnp.inf, dtype),
        jnp.asarray(False),
    )
    state = lax.while_loop(lambda s: ~s[10] & (s[1] < max_matvecs), cycle, state)
    # pending: the next vector to apply, past the start block the top residual's direction.
    j, count, basis, images, _, pending, theta, vectors, error, residual, _ = state
    top, second = vectors[:, -1], vectors[:, -2]
    u = top @ basis
    # The next start: both Ritz vectors times (A - sigma), from the images already computed: the bulk's share
    # shrinks against the top pair's. sigma lies below every Ritz value; where scale bounds the spectral norm
    # (the lambda_min solve of -A passes |lambda_max|) it lies below the whole spectrum, so no part of the
    # spectrum grows faster than the top. With one row there is no second Ritz pair: u and the residual.
    sigma = jnp.minimum(theta[m - j], 0) - scale
    two = j >= 2
    ahead = jnp.stack(
        [
            jnp.where(two, top @ images - sigma * u, u),
            jnp.where(two, second @ images - sigma * (second @ basis), pending),
        ]
    )
    ahead = ahead / jnp.maximum(jnp.linalg.norm(ahead, axis=1, keepdims=True), tiny)
    return TopEigenpair(theta[-1], u, error, residual, count, ahead)


def _hoisted(matvec, dim: int, dtype, num_steps: int):
    """``matvec`` hoisted (:func:`analysis._linalg.hoisted`) within the memory of the basis and its images."""
    return hoisted(matvec, dim, dtype, 2 * num_steps * dim * jnp.dtype(dtype).itemsize)


@functools.partial(jax.jit, static_argnums=4)  # the budget is an argument: every budget shares the program
def _top_jit(matvec, v0, tol, scale, num_steps, max_matvecs):
    op = _hoisted(matvec, v0.shape[1], v0.dtype, num_steps)
    return _top(op, v0, tol, scale, num_steps, max_matvecs)


def top_eigenpair(
    matvec: Callable,
    v0: jax.Array,
    *,
    tol: float = 1e-4,
    num_steps: int = 10,
    max_matvecs: int = 200,
    scale: float = 0.0,
) -> TopEigenpair:
    """The largest (algebraic) eigenpair of a symmetric operator from a start vector or block, stopping at convergence.

    Rayleigh-Ritz on a basis that starts with ``v0`` (one vector, or a block such as the previous call's
    :attr:`TopEigenpair.next_start`) and grows by the top Ritz pair's residual, one product at a time; from a
    single vector this spans the Krylov space, as Lanczos with full re-orthogonalisation does. After every
    product the loop stops once the whole start block has been applied and the top Ritz value's estimated error
    ``min(r, r^2 / gap)`` is at most ``tol * scale``, where ``r = ||A u - theta u||`` is the Ritz residual
    (computed from the stored images, not from a recurrence), ``gap`` the distance to the next Ritz value (the
    standard a-posteriori estimate, Parlett 1998, ch. 11: ``r`` bounds the distance to the nearest
    eigenvalue, ``r^2 / gap`` estimates it once the gap is resolved) and ``scale = max(max |Ritz value|,
    scale)``. A basis of ``num_steps`` vectors that has not converged restarts thick on its top half of Ritz
    pairs [Wu & Simon 2000]. Started from the previous top two eigenvectors (along training) it stops after two
    or three products, where :func:`analysis.eigsh` always expands a whole basis first, and the second start
    vector puts the second eigenvalue into the first gap estimate. One compiled loop with nothing sent to the
    host; traceable, so it runs inside a caller's jit (the sharpness :func:`tracker` runs it inside the
    training epoch). For the smallest eigenvalue pass ``-A``.

    Args:
        matvec: symmetric operator ``(dim,) -> (dim,)``, e.g. from :func:`analysis.hessian_operator`.
        v0: ``(dim,)`` start vector, or ``(k, dim)`` start block with ``k < num_steps`` (orthonormalised here;
            a zero first vector is replaced by a constant one, a later row that is zero or in the span of the
            rows before it by the residual direction).
        tol: relative accuracy of the eigenvalue (of its error estimate).
        num_steps: basis size before a restart, ``>= 2`` and more than the rows of ``v0``.
        max_matvecs: most products; when they run out the current Ritz pair is returned with its estimates
            (at least the rows of ``v0`` are applied).
        scale: a lower bound for the spectral norm used in the tolerance (e.g. ``|lambda_max|`` when
            computing ``lambda_min`` of ``-A``), so a small eigenvalue is judged against the whole spectrum.

    Returns:
        :class:`TopEigenpair` ``(value, vector, error, residual, matvecs, next_start)``.

    Example::

        matvec, dim = analysis.hessian_operator(loss_fn, params, x, y)
        first = analysis.sharpness.top_eigenpair(matvec, jax.random.normal(key, (dim,)))
        later = analysis.sharpness.top_eigenpair(matvec_later, first.next_start)  # a warm start
    """
    v0 = jnp.asarray(v0)
    if v0.ndim not in (1, 2) or v0.shape[-1] == 0 or v0.ndim == 2 and v0.shape[0] == 0:
        raise ValueError(f"v0 must be a vector (dim,) or a block (k, dim), got shape {v0.shape}")
    block = v0.reshape(-1, v0.shape[-1])
    op, dtype = as_operator(matvec, block.shape[1])
    num_steps = check_count("num_steps", num_steps, 2, 10**6)
    if block.shape[0] >= num_steps:
        raise ValueError(f"v0 has {block.shape[0]} rows; num_steps must be larger, got {num_steps}")
    max_matvecs = check_count("max_matvecs", max_matvecs, 1, 10**9)
    if not tol > 0:
        raise ValueError(f"tol must be positive, got {tol!r}")
    tol, scale, budget = jnp.asarray(tol, dtype), jnp.asarray(scale, dtype), jnp.asarray(max_matvecs, jnp.int32)
    return _top_jit(op, block.astype(dtype), tol, scale, num_steps, budget)


# --------------------------------------------------------------------------------------------------
# preconditioners


def adam_preconditioner(opt_state: Any) -> Any:
    """Adam's diagonal preconditioner ``P = sqrt(nu_hat + eps_root) + eps`` from an optax state [Cohen et al. 2022].

    Adam's update is ``-eta P^(-1) mu_hat``, so ``P`` is the state's second-moment estimate, bias corrected,
    ``nu_hat = nu / (1 - b2^count)``. Read from the state after the update (the preconditioner the update
    used). ``b2``, ``eps`` and ``eps_root`` come from the state where ``optax.inject_hyperparams`` put them (as
    ``fflab.train.make_optimizer`` does), else optax's defaults (0.999, 1e-8, 0).

    Args:
        opt_state: an optax state holding exactly one ``optax.ScaleByAdamState`` (adam, adamw, nadam...).

    Returns:
        ``P`` as a pytree like the parameters.
    """
    import optax

    found = [
        s
        for s in jax.tree_util.tree_leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
        if isinstance(s, optax.ScaleByAdamState)
    ]
    if len(found) != 1:
        raise ValueError(
            f"preconditioner='adam' needs an optimiser state with one optax.ScaleByAdamState, found {len(found)}"
        )
    state = found[0]

    def hyper(name, default):
        try:
            value = optax.tree_utils.tree_get(opt_state, name, default, filtering=lambda _, v: not isinstance(v, tuple))
        except KeyError:  # several, e.g. two injected optimisers
            value = default
        return jnp.asarray(value)

    b2, eps, eps_root = hyper("b2", 0.999), hyper("eps", 1e-8), hyper("eps_root", 0.0)
    correction = 1 - b2 ** jnp.maximum(state.count, 1)
    return jax.tree_util.tree_map(
        lambda nu: (jnp.sqrt(nu / correction.astype(nu.dtype) + eps_root.astype(nu.dtype)) + eps).astype(nu.dtype),
        state.nu,
    )


# --------------------------------------------------------------------------------------------------
# the tracker


def _ahead(start, previous):
    """The next record's start block and memory, ``(3, dim)``: the top start vector extrapolated in time.

    ``start`` is :attr:`TopEigenpair.next_start` (two unit rows), ``previous`` the last record's first row of
    it. Along training the top eigenvector turns a little between records, mostly the same way as before, so
    the first row moves on by its last change, ``2 p - p_previous`` (signs aligned), when the two are close
    (``|cos| >= 0.9``); after a jump (a crossing, a sudden turn) it stays. Measured on
    ``benchmarks/sharpness_bench.py``: most records then stop after the two products of the start block.
    """
    p = start[0]
    cos = p @ previous
    first = jnp.where(jnp.abs(cos) >= 0.9, 2 * p - jnp.sign(cos) * previous, p)
    return jnp.stack([first, start[1], p])


def _negated(op, v):
    return -op(v)


def _preconditioned(op, scale, v):
    return scale * op(scale * v)


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["data", "key"],
    meta_fields=[
        "loss_fn",
        "every",
        "smallest",
        "trace_probes",
        "preconditioner",
        "tol",
        "num_steps",
        "max_matvecs",
        "batch_size",
        "wrt",
    ],
)
@dataclasses.dataclass(frozen=True, eq=False)
class Tracker:
    """A sharpness monitor for ``fflab.train`` (the :class:`fflab.train.Monitor` protocol); build it with
    :func:`tracker`. A pytree: the data subset and the key are leaves (arguments of the compiled epoch), the
    settings are static."""

    data: tuple
    key: jax.Array
    loss_fn: Callable
    every: int
    smallest: bool
    trace_probes: int
    preconditioner: Callable | None
    tol: float
    num_steps: int
    max_matvecs: int
    batch_size: int | None
    wrt: Callable | None

    def operator(self, state) -> tuple[Partial, int]:
        """The Hessian operator of ``loss_fn`` on the subset at ``state.params`` (the model state, if any,
        goes first among the data, as for ``fflab.train.freeze``)."""
        args = self.data if state.model_state is None else (state.model_state, *self.data)
        return curvature.hessian_operator(self.loss_fn, state.params, *args, batch_size=self.batch_size, wrt=self.wrt)

    def init(self, state) -> dict[str, jax.Array]:
        """Start blocks, one ``(3, dim)`` array per tracked eigenvalue: a random vector and two zero rows, so
        the first record is a cold start (a single start vector: Lanczos).

        Rows 0 and 1 are the next record's start block, row 2 the previous record's top vector (see
        :func:`_ahead`). Builds the operator once, which checks the loss, the parameters and the subset.
        ``jax.vmap`` it over a stack of lanes.
        """
        if self.batch_size is not None and state.model_state is not None:
            raise ValueError("batch_size needs data with a sample axis only; a stateful model passes its state too")
        _, dim = self.operator(state)
        dtype = ravel_pytree(state.params)[0].dtype
        names = ["max", *(["min"] if self.smallest else []), *(["preconditioned"] if self.preconditioner else [])]
        keys = jax.random.split(self.key, len(names))
        return {
            name: jnp.zeros((3, dim), dtype).at[0].set(jax.random.normal(k, (dim,), dtype))
            for name, k in zip(names, keys, strict=True)
        }

    def __call__(self, vectors: dict, state) -> tuple[dict, dict[str, jax.Array]]:
        """One record at ``state`` (an ``fflab.train.TrainState`` view: the step's parameters, the optimiser
        state after its update, the step number); returns the new start blocks and the records."""
        matvec, dim = self.operator(state)
        dtype = vectors["max"].dtype
        # The primal work of the products (forward and backward pass on the subset) is shared by all of them.
        op = _hoisted(matvec, dim, dtype, self.num_steps)
        solve = functools.partial(_top, num_steps=self.num_steps, max_matvecs=self.max_matvecs)
        top = solve(op, vectors["max"][:2], self.tol, jnp.zeros((), dtype))
        new = {"max": _ahead(top.next_start, vectors["max"][2])}
        records = {"sharpness": top.value, "sharpness_error": top.error}
        count = top.matvecs
        if self.smallest:
            low = solve(Partial(_negated, op), vectors["min"][:2], self.tol, jnp.abs(top.value))
            new["min"], records["sharpness_min"] = _ahead(low.next_start, vectors["min"][2]), -low.value
            count = count + low.matvecs
        if self.trace_probes:
            z = jax.random.rademacher(jax.random.fold_in(self.key, state.step), (self.trace_probes, dim), dtype)
            records["sharpness_trace"] = jnp.mean(jnp.sum(z * jax.vmap(op)(z).astype(dtype), axis=1))
            count = count + self.trace_probes
        if self.preconditioner is not None:
            p = self.preconditioner(state.opt_state)
            p = p if self.wrt is None else self.wrt(p)
            inv_sqrt = 1 / jnp.sqrt(ravel_pytree(p)[0].astype(dtype))
            pre = solve(
                Partial(_preconditioned, op, inv_sqrt), vectors["preconditioned"][:2], self.tol, jnp.zeros((), dtype)
            )
            new["preconditioned"] = _ahead(pre.next_start, vectors["preconditioned"][2])
            records["preconditioned_sharpness"] = pre.value
            count = count + pre.matvecs
        records["sharpness_matvecs"] = count
        return new, records


def tracker(
    loss_fn: Callable,
    data: tuple,
    *,
    every: int,
    key: jax.Array,
    smallest: bool = False,
    trace_probes: int = 0,
    preconditioner: str | Callable | None = None,
    tol: float = 1e-4,
    num_steps: int = 10,
    max_matvecs: int = 200,
    batch_size: int | None = None,
    wrt: Callable | None = None,
) -> Tracker:
    """A monitor that records the sharpness every ``every`` steps of training [Cohen et al. 2021; 2022].

    Pass it to ``fflab.train.fit(..., monitor=...)`` (the records join the history, and ``fflab train``'s
    ``metrics.json``, one entry per record with ``monitor_step``) or to ``make_train_epoch(...,
    monitor=...)`` (``stats.records``). At each record, inside the compiled epoch, it takes the Hessian of
    ``loss_fn`` on ``data`` at the step's parameters and finds ``lambda_max`` with :func:`top_eigenpair`,
    started from a block of two: the previous record's :attr:`TopEigenpair.next_start` (its top two Ritz
    vectors after a power step), with the top one extrapolated in time by its change since the record before
    (:func:`_ahead`). The first record is a cold start (one random vector: Lanczos); later ones usually stop
    after the block's two Hessian-vector products (``sharpness_matvecs``), where the cold start needs 7 to 16
    in ``benchmarks/sharpness_bench.py``; more where the top eigenvector turns fast (early in training, where
    the top two eigenvalues are close). The second vector keeps the error estimate honest (its gap is to the
    second eigenvalue, not to a Rayleigh quotient of the bulk, which a single start vector would give) and
    lets the record follow a crossing of the top two eigenvalues. No warm start is safe against every
    crossing: one whose new top eigenvector is nearly orthogonal to both previous directions is missed until
    the eigenvalues separate. Steps without a record pay nothing (``lax.cond``).

    Records (scalars): ``sharpness`` (``lambda_max``), ``sharpness_error`` (its estimated relative error),
    ``sharpness_matvecs`` (all products of the record), and as asked ``sharpness_min`` (``lambda_min``),
    ``sharpness_trace`` (Hutchinson's ``tr(H)`` estimate from ``trace_probes`` Rademacher probes) and
    ``preconditioned_sharpness`` (``lambda_max`` of ``P^(-1/2) H P^(-1/2)``). Gradient descent is stable on a
    quadratic while ``sharpness < 2 / eta``; Adam while ``preconditioned_sharpness < 2 (1 + beta1) / ((1 -
    beta1) eta)``.

    Cost: a record runs one forward and backward pass on ``data`` (shared by its products) and, per product,
    about two gradients' worth of work on ``data`` plus a few passes over a basis of ``num_steps`` vectors of
    the parameter count and their images (two such arrays). Steps without a record run none of it, but the
    compiled epoch reserves the record's temporaries (mostly those two arrays) on every call: on Linux, glibc
    serves allocations above 32 MB with fresh memory maps, so once an epoch's temporaries cross that size each
    call pays page faults on its training buffers too, which shows with one-step (full-batch) epochs. Keep
    ``num_steps`` small (the default 10 suffices for warm starts) or raise ``MALLOC_MMAP_THRESHOLD_`` in the
    environment.

    Args:
        loss_fn: the training loss ``loss_fn(params, *data) -> scalar`` (for a stateful model the frozen one,
            ``fflab.train.freeze(model.loss_fn)``: the current model state is passed before ``data``).
            Must be hashable.
        data: a fixed subset to measure on, e.g. ``(x[:1000], y[:1000])``; the cost of a record is that of
            a few gradients on it, so a subset much smaller than the training set keeps tracking cheap.
        every: steps between records; records are taken at steps ``0, every, 2 every, ...``.
        key: PRNG key for the start vectors and trace probes.
        smallest: also track ``lambda_min`` (warm-started too).
        trace_probes: Hutchinson probes for ``sharpness_trace`` (0: off, else >= 2); not warm-started.
        preconditioner: ``"adam"`` (:func:`adam_preconditioner`) or a function ``opt_state -> P`` (a pytree
            like the params, positive) for the preconditioned sharpness; ``None``: off.
        tol: relative accuracy of the eigenvalues (:func:`top_eigenpair`'s error estimate).
        num_steps: Krylov basis size of :func:`top_eigenpair`.
        max_matvecs: most products per eigenvalue per record.
        batch_size: chunk the subset's products (see :func:`analysis.hessian_operator`).
        wrt: track a part of the params only (a layer), as in :func:`analysis.hessian_operator`.

    Returns:
        A :class:`Tracker`.

    Example::

        tracker = analysis.sharpness.tracker(loss_fn, (x[:1000], y[:1000]), every=20, key=jax.random.key(1))
        result = train.fit(state, opt, (x, y), loss_fn=loss_fn, epochs=500, batch_size=len(x), monitor=tracker)
        steps, lam = result.history["monitor_step"], result.history["sharpness"]
    """
    if not callable(loss_fn):
        raise ValueError(f"loss_fn must be a function loss_fn(params, *data), got {type(loss_fn).__name__}")
    if not isinstance(data, tuple | list) or not data:
        raise ValueError(f"data must be a tuple of arrays such as (x, y), got {type(data).__name__}")
    every = check_count("every", every, 1, 2**31 - 1)
    trace_probes = check_count("trace_probes", trace_probes, 0, 10**6)
    if trace_probes == 1:
        raise ValueError("trace_probes must be 0 (off) or at least 2")
    if isinstance(preconditioner, str):
        if preconditioner not in PRECONDITIONERS:
            raise ValueError(f"unknown preconditioner {preconditioner!r}; valid names: {', '.join(PRECONDITIONERS)}")
        preconditioner = adam_preconditioner
    elif preconditioner is not None and not callable(preconditioner):
        raise ValueError(f"preconditioner must be 'adam', a function opt_state -> P or None, got {preconditioner!r}")
    if not tol > 0:
        raise ValueError(f"tol must be positive, got {tol!r}")
    return Tracker(
        data=tuple(jnp.asarray(a) for a in data),
        key=key,
        loss_fn=loss_fn,
        every=every,
        smallest=bool(smallest),
        trace_probes=trace_probes,
        preconditioner=preconditioner,
        tol=float(tol),
        num_steps=check_count("num_steps", num_steps, 2, 10**6),
        max_matvecs=check_count("max_matvecs", max_matvecs, 1, 10**9),
        batch_size=batch_size,
        wrt=wrt,
    )
