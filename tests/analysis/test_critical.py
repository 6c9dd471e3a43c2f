"""Classification, critical-point search and second-order directions against closed forms."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from analysis import critical, spectrum


def flat_hessian(f, x):
    return np.asarray(jax.hessian(f)(jnp.asarray(x, dtype=jnp.float64)))


@pytest.mark.parametrize(
    ("f", "dim", "kind", "index"),
    [
        (lambda p: p[0] ** 2 - p[1] ** 2, 2, "saddle", 0.5),
        (lambda p: p[0] ** 2 + p[1] ** 2, 2, "minimum", 0.0),
        (lambda p: -(p[0] ** 2) - p[1] ** 2, 2, "maximum", 1.0),
        (lambda p: p[0] ** 3, 1, "degenerate", 0.0),
        (lambda p: p[0] ** 2 + p[1] ** 4, 2, "degenerate", 0.0),
        (lambda p: p[0] ** 2 - p[1] ** 2 + p[2] ** 4, 3, "saddle", 1 / 3),
    ],
)
def test_classify_textbook_points(f, dim, kind, index):
    x = jnp.zeros(dim)
    eigs = spectrum.eigenvalues(flat_hessian(f, x))
    grad_norm = float(jnp.linalg.norm(jax.grad(f)(x)))
    c = critical.classify(eigs, grad_norm=grad_norm)
    assert c.kind == kind
    assert c.index == pytest.approx(index, abs=1e-15)
    assert c.n_negative + c.n_zero + c.n_positive == dim
    assert c.is_critical


def test_classify_flags_non_critical_points():
    c = critical.classify(np.array([1.0, 2.0]), grad_norm=0.1)
    assert c.kind == "minimum" and not c.is_critical
    assert critical.classify(np.array([1.0, 2.0]), grad_norm=0.1, grad_tol=1.0).is_critical
    with pytest.raises(ValueError):
        critical.classify(np.array([1.0]), grad_norm=-1.0)


def toy(p):
    """The lecture's toy loss: a saddle at the origin, minima at w1 = w2 = +-sqrt(1.46)."""
    return (p["w1"] * p["w2"] - 1.5) ** 2 + 0.04 * (p["w1"] ** 2 + p["w2"] ** 2)


W_STAR = math.sqrt(1.5 - 0.04)


@pytest.mark.parametrize("method", ["newton", "gradnorm"])
@pytest.mark.parametrize(
    ("start", "target", "kind"),
    [
        ((0.3, -0.2), 0.0, "saddle"),
        ((0.1, 0.15), 0.0, "saddle"),
        ((1.0, 1.5), W_STAR, "minimum"),
        ((-0.8, -1.4), -W_STAR, "minimum"),
    ],
)
def test_find_critical_point_on_toy_loss(method, start, target, kind):
    p0 = {"w1": jnp.asarray(start[0]), "w2": jnp.asarray(start[1])}
    r = critical.find_critical_point(toy, p0, method=method, grad_tol=1e-12)
    assert r.converged and r.grad_norm <= 1e-12 and 0 < r.iterations <= 100
    assert abs(float(r.params["w1"]) - target) < 1e-8
    assert abs(float(r.params["w2"]) - target) < 1e-8
    assert r.loss == pytest.approx(float(toy(r.params)), rel=1e-15)
    x = jnp.stack([r.params["w1"], r.params["w2"]])
    eigs = spectrum.eigenvalues(flat_hessian(lambda v: toy({"w1": v[0], "w2": v[1]}), x))
    assert critical.classify(eigs, grad_norm=r.grad_norm).kind == kind


def test_find_critical_point_compiles_once_per_loss():
    traces = []

    def counted(p):
        traces.append(None)  # runs only while jax traces the function
        return toy(p)

    p0 = {"w1": jnp.asarray(0.3), "w2": jnp.asarray(0.1)}
    critical.find_critical_point(counted, p0)
    first = len(traces)
    p1 = {"w1": jnp.asarray(1.0), "w2": jnp.asarray(2.0)}
    r = critical.find_critical_point(counted, p1, grad_tol=1e-9, max_iter=50)
    assert len(traces) == first and r.converged


def test_find_critical_point_float32_and_data_args():
    def loss(w, a, b):
        return jnp.sum((a @ w - b) ** 2) - 0.1 * jnp.sum(w**4)  # has saddles and maxima as well

    a = jnp.eye(3, dtype=jnp.float32)
    b = jnp.zeros(3, dtype=jnp.float32)
    r = critical.find_critical_point(loss, jnp.full(3, 0.2, jnp.float32), a, b)
    assert r.converged and r.params.dtype == jnp.float32
    np.testing.assert_allclose(r.params, 0.0, atol=1e-4)


def test_find_critical_point_validates():
    with pytest.raises(ValueError, match="valid names: newton, gradnorm"):
        critical.find_critical_point(toy, {"w1": 1.0, "w2": 1.0}, method="bfgs")
    with pytest.raises(ValueError, match="floating"):
        critical.find_critical_point(lambda p: p.sum(), jnp.arange(3))


def planted(lam, seed):
    lam = np.asarray(lam, dtype=np.float64)
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((lam.size, lam.size)))
    return q, (q * lam) @ q.T


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_saddle_free_newton_descends_where_newton_climbs(seed):
    lam = np.array([-2.0, -0.5, 1.0, 3.0])
    U, H = planted(lam, seed)
    g = U @ np.array([1.0, 0.3, 0.1, 0.1])  # mostly along negative curvature
    d_sfn = np.asarray(critical.saddle_free_newton_direction(H, g))
    np.testing.assert_allclose(U.T @ d_sfn, (U.T @ g) / np.abs(lam), atol=1e-12)
    d_newton = np.asarray(critical.damped_newton_direction(H, g, 0.0))
    np.testing.assert_allclose(H @ d_newton, g, atol=1e-12)
    # The step is -d: a descent direction iff g . d > 0.
    assert g @ d_sfn > 0
    assert g @ d_newton < 0


def test_directions_keep_pytree_structure_and_damping():
    H = np.diag([1.0, -2.0, 4.0])
    g = {"a": jnp.array([1.0, 1.0]), "b": jnp.array(1.0)}
    d = critical.damped_newton_direction(H, g, 3.0)
    np.testing.assert_allclose(d["a"], [1 / 4, 1 / 1], rtol=1e-14)
    np.testing.assert_allclose(d["b"], 1 / 7, rtol=1e-14)
    sf = critical.saddle_free_newton_direction(np.diag([1e-12, -2.0]), jnp.ones(2), damping=0.5)
    np.testing.assert_allclose(sf, [2.0, 0.5], rtol=1e-14)
    # The damping may be traced (a jitted sweep over it): the same direction.
    jitted = jax.jit(
        lambda mu: critical.saddle_free_newton_direction(np.diag([1e-12, -2.0]), jnp.ones(2), damping=mu)
    )
    np.testing.assert_allclose(jitted(0.5), [2.0, 0.5], rtol=1e-14)
    with pytest.raises(ValueError, match="damping must be positive"):
        critical.saddle_free_newton_direction(np.eye(2), jnp.ones(2), damping=0.0)
    with pytest.raises(ValueError, match=r"shape \(3, 3\)"):
        critical.damped_newton_direction(np.eye(2), g, 1.0)


def test_gradient_newton_angles():
    H = np.diag([1.0, 4.0])
    g = np.array([1.0, 1.0])
    mus = np.array([0.0, 1.0, 1e3, 1e9])
    angles = np.asarray(critical.gradient_newton_angles(H, g, mus))
    expected = [45 - math.degrees(math.atan(1 / 4)), 45 - math.degrees(math.atan(2 / 5))]
    np.testing.assert_allclose(angles[:2], expected, rtol=1e-12)
    assert np.all(np.diff(angles) < 0)
    assert angles[-1] < 1e-6
    oracle = [
        math.degrees(math.acos(g @ d / np.linalg.norm(g) / np.linalg.norm(d)))
        for d in (np.linalg.solve(H + mu * np.eye(2), g) for mu in mus[:3])
    ]
    np.testing.assert_allclose(angles[:3], oracle, rtol=1e-8)


def test_gradient_newton_angles_when_not_positive_definite():
    H = np.diag([-1.0, 4.0])
    g = np.array([1.0, 1.0])
    mus = np.array([0.0, 1.0, 2.0])
    computed = np.asarray(critical.gradient_newton_angles(H, g, mus))
    # mu = 0: d = (-1, 1/4), pointing at 180 - atan(1/4) against g at 45 degrees.
    assert computed[0] == pytest.approx(135 - math.degrees(math.atan(1 / 4)), rel=1e-12)
    assert np.isnan(computed[1])  # H + I is singular
    assert computed[2] == pytest.approx(45 - math.degrees(math.atan(1 / 6)), rel=1e-12)
    masked = np.asarray(critical.gradient_newton_angles(H, g, mus, indefinite="nan"))
    assert np.isnan(masked[:2]).all() and masked[2] == pytest.approx(computed[2])
    assert np.shape(critical.gradient_newton_angles(H, g, 5.0)) == ()
    with pytest.raises(ValueError, match="valid names: compute, nan"):
        critical.gradient_newton_angles(H, g, mus, indefinite="skip")
