"""Interpolations, directions and 2-D slices against closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from analysis import landscape
from fflab import losses, mlp


def mlp_loss(params, x, y):
    return losses.cross_entropy(mlp.apply(params, x), y)


def quadratic(p, A, c):
    """``0.5 p^T A p + c^T p`` on the raveled params."""
    v = ravel_pytree(p)[0]
    return 0.5 * v @ A @ v + c @ v


def random_quadratic(seed, P):
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((P, P))
    return jnp.asarray(M + M.T), jnp.asarray(rng.standard_normal(P))


@pytest.fixture
def mlp_problem():
    kx, kp, kq = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (32, 4))
    y = jnp.arange(32) % 3
    return mlp.init(kp, [4, 6, 3]), mlp.init(kq, [4, 6, 3]), x, y


def test_interpolate_endpoints_and_midpoint(mlp_problem):
    pa, pb, x, y = mlp_problem
    alphas, values = landscape.interpolate(mlp_loss, pa, pb, x, y, num=11)
    assert alphas.shape == values.shape == (11,)
    assert alphas[0] == 0.0 and alphas[-1] == 1.0
    assert values[0] == pytest.approx(float(mlp_loss(pa, x, y)), rel=1e-12)
    assert values[-1] == pytest.approx(float(mlp_loss(pb, x, y)), rel=1e-12)
    mid = jax.tree_util.tree_map(lambda a, b: 0.5 * (a + b), pa, pb)
    assert values[5] == pytest.approx(float(mlp_loss(mid, x, y)), rel=1e-12)
    batched = landscape.interpolate(mlp_loss, pa, pb, x, y, num=11, batch_size=4)[1]
    np.testing.assert_allclose(batched, values, rtol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_interpolate_quadratic_closed_form(seed):
    A, c = random_quadratic(seed, 5)
    rng = np.random.default_rng(seed + 10)
    pa, pb = (jnp.asarray(rng.standard_normal(5)) for _ in range(2))
    alphas, values = landscape.interpolate(quadratic, pa, pb, A, c, num=7, extend=(0.5, 1.0))
    np.testing.assert_allclose(alphas, np.linspace(-0.5, 2.0, 7), rtol=1e-15)
    pts = (1 - alphas)[:, None] * pa + alphas[:, None] * pb
    expected = 0.5 * jnp.einsum("ni,ij,nj->n", pts, A, pts) + pts @ c
    np.testing.assert_allclose(values, expected, rtol=1e-12)


def test_interpolate_validates(mlp_problem):
    pa, _, x, y = mlp_problem
    other = mlp.init(jax.random.key(1), [4, 5, 3])
    with pytest.raises(ValueError, match="shape"):
        landscape.interpolate(mlp_loss, pa, other, x, y)
    with pytest.raises(ValueError, match="num"):
        landscape.interpolate(mlp_loss, pa, pa, x, y, num=1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_filter_normalised_directions(seed):
    params = mlp.init(jax.random.key(seed), [5, 7, 3])
    params[0]["b"] = jnp.arange(7.0)
    d1, d2 = landscape.random_directions(jax.random.key(seed + 100), params)
    for d in (d1, d2):
        assert jax.tree_util.tree_structure(d) == jax.tree_util.tree_structure(params)
        for layer, dl in zip(params, d, strict=True):
            np.testing.assert_allclose(
                jnp.linalg.norm(dl["W"], axis=0), jnp.linalg.norm(layer["W"], axis=0), rtol=1e-12
            )
            assert jnp.all(dl["b"] == 0)
    assert not jnp.allclose(d1[0]["W"], d2[0]["W"])
    (d,) = landscape.random_directions(jax.random.key(seed + 200), params, 1, biases="normalize")
    assert jnp.linalg.norm(d[0]["b"]) == pytest.approx(float(jnp.linalg.norm(params[0]["b"])), rel=1e-12)
    # A direction is not parallel to the params: only the filter norms are copied.
    assert abs(jnp.vdot(d[0]["W"][:, 0], params[0]["W"][:, 0])) < jnp.linalg.norm(params[0]["W"][:, 0]) ** 2


def test_layer_and_raw_directions():
    params = mlp.init(jax.random.key(0), [5, 7, 3])
    (d,) = landscape.random_directions(jax.random.key(1), params, 1, normalize="layer")
    for layer, dl in zip(params, d, strict=True):
        assert jnp.linalg.norm(dl["W"]) == pytest.approx(float(jnp.linalg.norm(layer["W"])), rel=1e-12)
        assert jnp.all(dl["b"] == 0)
    (raw,) = landscape.random_directions(jax.random.key(1), params, 1, normalize=None)
    flat = ravel_pytree(raw)[0]
    assert jnp.all(flat != 0) and abs(float(jnp.std(flat)) - 1) < 0.2
    with pytest.raises(ValueError, match="valid values"):
        landscape.random_directions(jax.random.key(1), params, normalize="unit")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_slice_2d_on_a_quadratic(seed):
    P = 6
    A, c = random_quadratic(seed, P)
    rng = np.random.default_rng(seed + 20)
    p, d1, d2 = (
        {"u": jnp.asarray(rng.standard_normal(2)), "v": jnp.asarray(rng.standard_normal((2, 2)))}
        for _ in range(3)
    )
    X, Y, Z = landscape.slice_2d(quadratic, p, d1, d2, A, c, span=((-1, 2), (-0.5, 0.5)), num=(7, 5))
    assert X.shape == Y.shape == Z.shape == (5, 7)
    np.testing.assert_allclose(X[0], np.linspace(-1, 2, 7), rtol=1e-15)
    np.testing.assert_allclose(Y[:, 0], np.linspace(-0.5, 0.5, 5), rtol=1e-15)
    pv, u, w = (ravel_pytree(t)[0] for t in (p, d1, d2))
    g = A @ pv + c
    expected = (
        quadratic(p, A, c)
        + X * (g @ u)
        + Y * (g @ w)
        + 0.5 * (X**2 * (u @ A @ u) + 2 * X * Y * (u @ A @ w) + Y**2 * (w @ A @ w))
    )
    np.testing.assert_allclose(Z, expected, rtol=1e-10, atol=1e-12)
    Zb = landscape.slice_2d(
        quadratic, p, d1, d2, A, c, span=((-1, 2), (-0.5, 0.5)), num=(7, 5), batch_size=8
    )[2]
    np.testing.assert_allclose(Zb, Z, rtol=1e-12)


def test_slice_2d_on_an_mlp_matches_pointwise(mlp_problem):
    params, _, x, y = mlp_problem
    d1, d2 = landscape.random_directions(jax.random.key(3), params)
    X, Y, Z = landscape.slice_2d(mlp_loss, params, d1, d2, x, y, num=5)
    shifted = jax.tree_util.tree_map(lambda p, a, b: p + X[1, 3] * a + Y[1, 3] * b, params, d1, d2)
    assert Z[1, 3] == pytest.approx(float(mlp_loss(shifted, x, y)), rel=1e-12)
    assert Z[2, 2] == pytest.approx(float(mlp_loss(params, x, y)), rel=1e-12)
    with pytest.raises(ValueError, match="d1"):
        landscape.slice_2d(mlp_loss, params, d1[0], d2, x, y)


def test_slice_2d_compiles_once_per_loss():
    traces = []

    def counted(p, A, c):
        traces.append(None)  # runs only while jax traces the function
        return quadratic(p, A, c)

    A, c = random_quadratic(0, 3)
    p, d1, d2 = jnp.zeros(3), jnp.eye(3)[0], jnp.eye(3)[1]
    landscape.slice_2d(counted, p, d1, d2, A, c, num=4)
    first = len(traces)
    Z = landscape.slice_2d(counted, p + 1.0, d2, d1, 2 * A, c, span=(0.0, 3.0), num=4)[2]
    assert len(traces) == first and Z.shape == (4, 4)


def test_eigen_directions_dense():
    lam = np.array([-1.0, 0.5, 2.0, 3.0, 7.0])
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((5, 5)))
    A = jnp.asarray((q * lam) @ q.T)
    params = {"a": jnp.ones(2), "b": jnp.ones(3)}
    vals, dirs = landscape.eigen_directions(quadratic, params, A, jnp.zeros(5), k=2)
    np.testing.assert_allclose(vals, [7.0, 3.0], rtol=1e-12)
    for i, d in enumerate(dirs):
        v = ravel_pytree(d)[0]
        assert jnp.linalg.norm(v) == pytest.approx(1.0, rel=1e-12)
        np.testing.assert_allclose(A @ v, vals[i] * v, atol=1e-12)
    with pytest.raises(ValueError, match="k must be"):
        landscape.eigen_directions(quadratic, params, A, jnp.zeros(5), k=6)


def test_eigen_directions_lanczos_matches_dense():
    pytest.importorskip("analysis.krylov")
    lam = np.concatenate([np.linspace(-1.0, 1.0, 10), [5.0, 9.0]])
    q, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((12, 12)))
    A = jnp.asarray((q * lam) @ q.T)
    params = {"a": jnp.ones((3, 2)), "b": jnp.ones(6)}
    vals, dirs = landscape.eigen_directions(
        quadratic, params, A, jnp.zeros(12), k=2, method="lanczos", key=jax.random.key(0)
    )
    np.testing.assert_allclose(vals, [9.0, 5.0], rtol=1e-8)
    for i, d in enumerate(dirs):
        v = ravel_pytree(d)[0]
        np.testing.assert_allclose(A @ v, vals[i] * v, atol=1e-5)
    with pytest.raises(ValueError, match="key"):
        landscape.eigen_directions(quadratic, params, A, jnp.zeros(12), method="lanczos")
