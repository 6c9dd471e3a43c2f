"""Sharpness tracking: the warm-started eigensolver on planted spectra, and the tracker inside fflab.train against
dense float64 oracles (``analysis.hessian`` + ``numpy.linalg.eigvalsh``, Adam's preconditioner by hand)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree
from jax.tree_util import Partial

import analysis
from analysis import sharpness
from fflab import train
from tests.analysis import _models as M


def dense_operator(A):
    return Partial(jnp.matmul, jnp.asarray(A)), A.shape[0]


# --------------------------------------------------------------------------------------------------
# top_eigenpair


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top_eigenpair_cold_and_warm_on_planted_spectrum(seed):
    # A top pair 4.0 next to 3.9 over a bulk in [-3, 3]: slow enough that a basis of 10 restarts thick.
    rng = np.random.default_rng(seed)
    lam = np.concatenate([rng.uniform(-3, 3, 58), [3.9, 4.0]])
    A = M.planted(lam, seed)
    u = np.linalg.eigh(A)[1][:, -1]
    matvec, dim = dense_operator(A)
    v0 = jax.random.normal(jax.random.PRNGKey(seed), (dim,))
    cold = sharpness.top_eigenpair(matvec, v0, tol=1e-11, num_steps=10, max_matvecs=500)
    assert abs(float(cold.value) - 4.0) < 1e-10 * 4
    assert float(cold.error) <= 1e-11 and int(cold.matvecs) > 10  # converged after at least one restart
    v = np.asarray(cold.vector)
    # The reported residual is the true one, and the vector is the top eigenvector.
    assert np.linalg.norm(A @ v - float(cold.value) * v) == pytest.approx(4 * float(cold.residual), rel=1e-3)
    assert abs(abs(v @ u) - 1) < 1e-9
    # Warm, from the answer perturbed: a few products for the same tolerance.
    warm = sharpness.top_eigenpair(matvec, u + 1e-6 * rng.standard_normal(dim), tol=1e-11, num_steps=10)
    assert abs(float(warm.value) - 4.0) < 1e-10 * 4
    assert int(warm.matvecs) <= int(cold.matvecs) // 3
    # From the eigenvector itself: one product.
    exact = sharpness.top_eigenpair(matvec, u, tol=1e-11)
    assert int(exact.matvecs) == 1 and abs(float(exact.value) - 4.0) < 1e-12


def test_warm_starts_follow_the_top_eigenvalue_through_a_crossing():
    # The top two eigenvalues cross between calls (4.0 - 0.1k against 3.5 + 0.1k, fixed eigenvectors). Lanczos
    # from the previous top eigenvector alone lies in (nearly) an invariant subspace once it is the second one:
    # it would "converge" to 3.7, 3.6, ... with tiny error estimates. next_start carries both directions.
    bulk = np.random.default_rng(0).uniform(-3, 3, 58)
    v = jax.random.normal(jax.random.PRNGKey(0), (60,))
    for k in range(7):
        A = M.planted(np.concatenate([bulk, [4 - 0.1 * k, 3.5 + 0.1 * k]]), 0)
        got = sharpness.top_eigenpair(dense_operator(A)[0], v, tol=1e-8, num_steps=10)
        top = max(4 - 0.1 * k, 3.5 + 0.1 * k)
        assert abs(float(got.value) - top) <= 1e-7 * top, k
        assert float(got.error) <= 1e-8
        if k == 0:
            assert int(got.matvecs) > 10  # cold, with a restart
        else:  # warm: the start block's two products, more only where the two are equal (k = 3: no gap yet)
            assert int(got.matvecs) == (5 if k == 3 else 2), k
        start = np.asarray(got.next_start)
        assert start.shape == (2, 60)
        np.testing.assert_allclose(np.linalg.norm(start, axis=1), 1.0, atol=1e-12)
        # Both eigenvectors of the pair lie in the start block's span (to a power step's accuracy).
        pair = np.linalg.eigh(A)[1][:, -2:]
        q = np.linalg.qr(start.T)[0]
        assert np.linalg.norm(q.T @ pair, axis=0).min() > 0.999
        v = got.next_start


def test_top_eigenpair_from_a_block_and_the_power_step():
    # A block start is orthonormalised; a row in the span of the rows before it, or zero, is replaced by the
    # residual direction (as from a single vector). next_start's rows are (A - sigma) times the Ritz vectors.
    lam = np.concatenate([np.linspace(-1, 1, 57), [1.5, 1.8, 2.0]])
    A = M.planted(lam, 3)
    matvec, dim = dense_operator(A)
    u = np.linalg.eigh(A)[1]
    v = jax.random.normal(jax.random.PRNGKey(3), (dim,))
    single = sharpness.top_eigenpair(matvec, v, tol=1e-10)
    for block in (jnp.stack([v, 2 * v]), jnp.stack([v, jnp.zeros(dim)])):
        got = sharpness.top_eigenpair(matvec, block, tol=1e-10)
        assert int(got.matvecs) == int(single.matvecs)
        assert float(got.value) == pytest.approx(float(single.value), rel=1e-12)
    # From the top two eigenvectors: exact in the two products of the block.
    exact = sharpness.top_eigenpair(matvec, jnp.asarray(u[:, [-1, -2]].T), tol=1e-10)
    assert int(exact.matvecs) == 2 and float(exact.value) == pytest.approx(2.0, rel=1e-13)
    # The power step: rows of next_start are (A - sigma) u_i, normalised, with sigma = min(0, lowest Ritz value).
    near = u[:, -1] + 0.01 * u[:, 0] + 0.01 * u[:, 10]
    got = sharpness.top_eigenpair(matvec, jnp.stack([jnp.asarray(near), jnp.asarray(u[:, -2])]), tol=1e-2)
    assert int(got.matvecs) == 2
    w = np.asarray(got.vector)
    want = A @ w  # sigma = 0: the block's Ritz values are positive
    np.testing.assert_allclose(np.asarray(got.next_start[0]), want / np.linalg.norm(want), atol=1e-12)
    assert abs(np.asarray(got.next_start[0]) @ u[:, -1]) > abs(w @ u[:, -1])  # closer to the top eigenvector
    with pytest.raises(ValueError, match="num_steps must be larger"):
        sharpness.top_eigenpair(matvec, jnp.ones((10, dim)), num_steps=10)


def test_the_tracker_extrapolates_a_smooth_turn_and_not_a_jump():
    # The top start vector moves on by its last change: for a turn by angle a per record, 2p - p_prev points at
    # about angle 2a (to O(a^3)), whichever sign the previous vector had. After a jump (cos < 0.9) it stays.
    a, e = 0.1, np.eye(5)
    p, p_prev, second = np.cos(a) * e[0] + np.sin(a) * e[1], e[0], e[3]
    for sign in (1, -1):
        start = jnp.stack([jnp.asarray(p), jnp.asarray(second)])
        block = np.asarray(sharpness._ahead(start, sign * jnp.asarray(p_prev)))
        assert block.shape == (3, 5)
        np.testing.assert_array_equal(block[1:], np.stack([second, p]))
        assert abs(np.arctan2(block[0, 1], block[0, 0]) - 2 * a) < a**3
    far = np.asarray(sharpness._ahead(jnp.stack([jnp.asarray(e[1]), jnp.asarray(second)]), jnp.asarray(p)))
    np.testing.assert_array_equal(far[0], e[1])


def test_top_eigenpair_budget_float32_and_validation():
    lam = np.linspace(0, 1, 60) ** 4
    matvec, dim = dense_operator(M.planted(lam, 0))
    v0 = jnp.ones(dim)
    # (num_steps=10 throughout: the planted tests share one compiled program.)
    short = sharpness.top_eigenpair(matvec, v0, tol=1e-14, num_steps=10, max_matvecs=7)
    assert int(short.matvecs) == 7 and float(short.error) > 1e-14 and float(short.value) <= 1.0 + 1e-12
    # The smallest eigenvalue of an indefinite spectrum, as the top of -A, judged against the spectral norm.
    lam2 = np.concatenate([[-0.5], np.linspace(0.1, 2.0, 59)])
    neg, _ = dense_operator(-M.planted(lam2, 1))
    low = sharpness.top_eigenpair(neg, v0, tol=1e-11, scale=2.0, num_steps=10)
    assert abs(-float(low.value) + 0.5) < 1e-9
    A32 = M.planted(lam2, 1).astype(np.float32)
    got = sharpness.top_eigenpair(*dense_operator(A32)[:1], jnp.ones(dim, jnp.float32), tol=1e-5)
    assert got.value.dtype == jnp.float32 and abs(float(got.value) - 2.0) < 1e-4
    with pytest.raises(ValueError, match="num_steps"):
        sharpness.top_eigenpair(matvec, v0, num_steps=1)
    with pytest.raises(ValueError, match="tol must be positive"):
        sharpness.top_eigenpair(matvec, v0, tol=0.0)
    with pytest.raises(ValueError, match=r"v0 must be a vector"):
        sharpness.top_eigenpair(matvec, jnp.ones((2, 2, dim)))


# --------------------------------------------------------------------------------------------------
# the tracker inside training


@pytest.fixture(scope="module")
def adam_run():
    """Full-batch Adam (b2 and eps injected, so the tracker reads them) on the 64-9-7-10 tanh MLP (120 digits,
    one step per epoch), tracked every 2 steps: lambda_max, lambda_min, a 6-probe trace and the preconditioned
    sharpness, tol 1e-11."""
    params, x, y = M.small_mlp()
    b2, eps = 0.99, 1e-4
    opt = optax.inject_hyperparams(optax.adam)(learning_rate=0.01, b2=b2, eps=eps)
    tracker = sharpness.tracker(M.loss_fn, (x, y), every=2, key=jax.random.PRNGKey(1), smallest=True,
                                trace_probes=6, preconditioner="adam", tol=1e-11)
    result = train.fit(train.init_state(params, opt, 0), opt, (x, y), loss_fn=M.loss_fn, epochs=5, batch_size=120,
                       monitor=tracker, progress=False)
    return result.history, params, x, y, b2, eps


def adam_by_hand(params, x, y, b2, eps, steps):
    """``(parameters before step t, P after step t's update)`` for t < steps: Adam written out, full batch."""
    flat, unravel = ravel_pytree(params)
    mu = nu = jnp.zeros_like(flat)
    grad = jax.jit(lambda f: ravel_pytree(jax.grad(M.loss_fn)(unravel(f), x, y))[0])
    out = []
    for t in range(steps):
        g = grad(flat)
        mu, nu = 0.9 * mu + 0.1 * g, b2 * nu + (1 - b2) * g * g
        P = jnp.sqrt(nu / (1 - b2 ** (t + 1))) + eps
        out.append((unravel(flat), np.asarray(P)))
        flat = flat - 0.01 * (mu / (1 - 0.9 ** (t + 1))) / P
    return out


def test_tracker_matches_dense_oracles_along_training(adam_run):
    # The record at step t: the eigenvalues of the dense Hessian at the step's parameters, and of D H D with
    # D = P^(-1/2) from the state after its update [Cohen et al. 2022]; the trace within its standard error.
    h, params, x, y, b2, eps = adam_run
    assert h["monitor_step"] == [0, 2, 4]
    by_hand = adam_by_hand(params, x, y, b2, eps, 5)
    for i, step in enumerate(h["monitor_step"]):
        p, P = by_hand[step]
        H = np.asarray(analysis.hessian(M.loss_fn, p, x, y))
        H = 0.5 * (H + H.T)
        lam = np.linalg.eigvalsh(H)
        scale = np.abs(lam).max()
        assert abs(h["sharpness"][i] - lam[-1]) < 1e-10 * scale
        assert abs(h["sharpness_min"][i] - lam[0]) < 1e-10 * scale
        assert h["sharpness_error"][i] <= 1e-11
        d = 1 / np.sqrt(P)
        assert h["preconditioned_sharpness"][i] == pytest.approx(np.linalg.eigvalsh(d[:, None] * H * d)[-1], rel=1e-9)
        sd = np.sqrt(2 * (np.sum(lam**2) - np.sum(np.diag(H) ** 2)) / 6)  # Hutchinson, 6 Rademacher probes
        assert abs(h["sharpness_trace"][i] - lam.sum()) < 4 * sd


def test_tracker_on_one_layer():
    # wrt= restricts the operator and the preconditioner: a record is then the dense block's eigenvalue.
    params, x, y = M.small_mlp()
    opt = optax.adam(0.01)
    tracker = sharpness.tracker(M.loss_fn, (x, y), every=1, key=jax.random.PRNGKey(2), preconditioner="adam",
                                tol=1e-11, wrt=lambda p: p[2])
    state = train.init_state(params, opt, 0)
    state = state._replace(opt_state=opt.update(jax.grad(M.loss_fn)(params, x, y), state.opt_state, params)[1])
    vectors = tracker.init(state)
    assert vectors["max"].shape == vectors["preconditioned"].shape == (3, 7 * 10 + 10)
    record = jax.jit(lambda tracker, vectors, state: tracker(vectors, state))  # as inside the training epoch
    warm, records = record(tracker, vectors, state)
    # The returned vectors are the eigenvectors: a second record from them (a warm start) costs less.
    assert int(record(tracker, warm, state)[1]["sharpness_matvecs"]) < int(records["sharpness_matvecs"])
    block = np.asarray(analysis.hessian(M.loss_fn, params, x, y, wrt=lambda p: p[2]))
    block = 0.5 * (block + block.T)
    d = 1 / np.sqrt(np.asarray(ravel_pytree(sharpness.adam_preconditioner(state.opt_state)[2])[0]))
    assert float(records["sharpness"]) == pytest.approx(np.linalg.eigvalsh(block)[-1], rel=1e-9)
    want = np.linalg.eigvalsh(d[:, None] * block * d)[-1]
    assert float(records["preconditioned_sharpness"]) == pytest.approx(want, rel=1e-9)


def test_adam_preconditioner_and_tracker_validation():
    params = {"w": jnp.arange(1.0, 4.0)}
    opt = optax.adam(0.1, b1=0.0)
    state = opt.init(params)
    _, state = opt.update({"w": jnp.array([1.0, -2.0, 0.5])}, state, params)
    P = sharpness.adam_preconditioner(state)  # optax's defaults: b2 = 0.999, eps = 1e-8
    np.testing.assert_allclose(P["w"], np.abs([1.0, -2.0, 0.5]) + 1e-8, rtol=1e-12)
    with pytest.raises(ValueError, match="one optax.ScaleByAdamState, found 0"):
        sharpness.adam_preconditioner(optax.sgd(0.1).init(params))
    x, y = jnp.ones((4, 3)), jnp.zeros(4, jnp.int32)
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="every"):
        sharpness.tracker(M.loss_fn, (x, y), every=0, key=key)
    with pytest.raises(ValueError, match="trace_probes must be 0"):
        sharpness.tracker(M.loss_fn, (x, y), every=1, key=key, trace_probes=1)
    with pytest.raises(ValueError, match="valid names: adam"):
        sharpness.tracker(M.loss_fn, (x, y), every=1, key=key, preconditioner="sgd")
    with pytest.raises(ValueError, match="tuple of arrays"):
        sharpness.tracker(M.loss_fn, x, every=1, key=key)
    with pytest.raises(ValueError, match="tol must be positive"):
        sharpness.tracker(M.loss_fn, (x, y), every=1, key=key, tol=0)
    assert "sharpness" in analysis.__all__ and analysis.sharpness.tracker is sharpness.tracker
