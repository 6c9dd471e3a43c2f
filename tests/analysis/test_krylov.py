"""Lanczos and the thick-restart eigensolver against ``numpy.linalg.eigh`` and planted spectra."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import core as jex_core
from jax.tree_util import Partial

import analysis
from analysis import krylov
from tests.analysis import _models as M


def dense_operator(A):
    """``v -> A v`` with ``A`` an argument of the compiled program (a pytree leaf), not a constant."""
    return Partial(jnp.matmul, jnp.asarray(A)), A.shape[0]


def tridiagonal(alphas, betas):
    return np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)


# --------------------------------------------------------------------------------------------------
# Lanczos


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("num_steps", [12, 60])
def test_lanczos_identity_and_orthonormality(seed, num_steps):
    lam = np.concatenate([np.linspace(-3, 5, 57), [40.0, 80.0, 150.0]])
    A = M.planted(lam, seed)
    matvec, dim = dense_operator(A)
    res = analysis.lanczos(matvec, dim, num_steps, key=jax.random.PRNGKey(seed))
    Q, T = np.asarray(res.basis), tridiagonal(res.alphas, res.betas)
    assert (
        Q.shape == (num_steps, dim)
        and res.alphas.shape == (num_steps,)
        and res.betas.shape == (num_steps - 1,)
    )
    scale = np.abs(lam).max()
    e_last = np.zeros(num_steps)
    e_last[-1] = 1.0
    # A Q^T = Q^T T + r e_m^T
    np.testing.assert_allclose(A @ Q.T, Q.T @ T + np.outer(res.residual, e_last), atol=1e-10 * scale)
    np.testing.assert_allclose(Q @ Q.T, np.eye(num_steps), atol=1e-10)
    assert np.abs(Q @ np.asarray(res.residual)).max() < 1e-10 * scale
    if num_steps == dim:  # the Krylov space is everything: T is similar to A
        np.testing.assert_allclose(np.linalg.eigvalsh(T), lam, atol=1e-10 * scale)


def test_lanczos_breakdown_is_handled():
    # Three distinct eigenvalues: the Krylov space of any start vector is invariant after three steps.
    lam = np.repeat([-1.0, 2.0, 5.0], 20)
    A = M.planted(lam, 0)
    matvec, dim = dense_operator(A)
    res = analysis.lanczos(matvec, dim, 12, key=jax.random.PRNGKey(0))
    Q, T = np.asarray(res.basis), tridiagonal(res.alphas, res.betas)
    assert np.all(np.isfinite(T)) and np.all(np.isfinite(Q))
    assert float(res.betas[2]) == 0.0
    np.testing.assert_allclose(Q @ Q.T, np.eye(12), atol=1e-10)
    e_last = np.zeros(12)
    e_last[-1] = 1.0
    np.testing.assert_allclose(A @ Q.T, Q.T @ T + np.outer(res.residual, e_last), atol=1e-10 * 5)
    np.testing.assert_allclose(np.linalg.eigvalsh(T[:3, :3]), [-1.0, 2.0, 5.0], atol=1e-10)


def count_equations(jaxpr):
    total = 0
    for eqn in jaxpr.eqns:
        total += 1
        for param in eqn.params.values():
            for sub in param if isinstance(param, tuple | list) else [param]:
                inner = getattr(sub, "jaxpr", sub)
                if isinstance(inner, jex_core.Jaxpr):
                    total += count_equations(inner)
    return total


def test_lanczos_is_one_traced_loop():
    matvec, dim = dense_operator(M.planted(np.arange(1.0, 61.0), 0))
    v0, key = jnp.ones(dim), jax.random.PRNGKey(0)
    sizes = {
        m: count_equations(jax.make_jaxpr(krylov._run_lanczos, static_argnums=3)(matvec, v0, key, m).jaxpr)
        for m in (5, 50)
    }
    assert sizes[5] == sizes[50]


def test_lanczos_float32():
    lam = np.linspace(1.0, 10.0, 60)
    A = M.planted(lam, 1).astype(np.float32)
    matvec, dim = dense_operator(A)
    res = analysis.lanczos(matvec, dim, 12, key=jax.random.PRNGKey(0))
    assert res.basis.dtype == jnp.float32
    Q = np.asarray(res.basis, np.float64)
    np.testing.assert_allclose(Q @ Q.T, np.eye(12), atol=1e-5)
    T = tridiagonal(np.asarray(res.alphas, np.float64), np.asarray(res.betas, np.float64))
    e_last = np.zeros(12)
    e_last[-1] = 1.0
    np.testing.assert_allclose(A @ Q.T, Q.T @ T + np.outer(res.residual, e_last), atol=1e-4 * 10)


# --------------------------------------------------------------------------------------------------
# eigsh


def wanted(eigenvalues, which, k):
    ascending = np.sort(eigenvalues)
    if which == "LA":
        return ascending[::-1][:k]
    if which == "SA":
        return ascending[:k]
    if which == "LM":
        return ascending[np.argsort(-np.abs(ascending), kind="stable")][:k]
    return np.concatenate([ascending[: k // 2], ascending[len(ascending) - (k - k // 2) :]])


@pytest.mark.parametrize("which", ["LA", "SA", "BE", "LM"])
def test_eigsh_on_digits_mlp_hessian(which):
    params, x, y = M.digits_mlp()
    H, exact = M.digits_hessian(), M.digits_spectrum()
    norm = np.abs(exact).max()
    matvec, dim = analysis.hessian_operator(M.loss_fn, params, x, y)
    res = analysis.eigsh(matvec, dim, 5, which=which, key=jax.random.PRNGKey(0))
    assert (
        res.eigenvalues.shape == (5,) and res.eigenvectors.shape == (dim, 5) and res.residuals.shape == (5,)
    )
    np.testing.assert_allclose(res.eigenvalues, wanted(exact, which, 5), rtol=0, atol=1e-8 * norm)
    V = np.asarray(res.eigenvectors)
    assert np.all(np.asarray(res.residuals) <= 1e-6 * norm)
    np.testing.assert_allclose(
        np.linalg.norm(H @ V - V * np.asarray(res.eigenvalues), axis=0), res.residuals, atol=1e-9 * norm
    )
    np.testing.assert_allclose(V.T @ V, np.eye(5), atol=1e-10)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("which", ["LA", "SA", "BE", "LM"])
def test_eigsh_thick_restart_on_planted_spectrum(seed, which):
    # Clustered ends and a small Krylov space force many restarts. The largest magnitudes -4, 3.95,
    # 3.9 alternate in sign, so "LM" must order the Ritz values by |theta| at every restart.
    rng = np.random.default_rng(seed)
    lam = np.concatenate([[-4.0, -3.85, -3.8], rng.uniform(-3, 3, 54), [3.75, 3.9, 3.95]])
    matvec, dim = dense_operator(M.planted(lam, seed))
    res = analysis.eigsh(
        matvec, dim, 3, which=which, num_steps=10, tol=1e-9, max_restarts=2000, key=jax.random.PRNGKey(seed)
    )
    np.testing.assert_allclose(res.eigenvalues, wanted(lam, which, 3), rtol=0, atol=1e-10 * 4)
    assert np.all(np.asarray(res.residuals) <= 1e-8 * 4)


def test_eigsh_invariant_subspace():
    # Two distinct eigenvalues: the first cycle breaks down; the restart direction must keep going.
    lam = np.repeat([1.0, 3.0], 30)
    matvec, dim = dense_operator(M.planted(lam, 0))
    res = analysis.eigsh(matvec, dim, 3, which="LA", num_steps=10, key=jax.random.PRNGKey(0))
    np.testing.assert_allclose(res.eigenvalues, [3.0] * 3, atol=1e-10)
    assert np.all(np.asarray(res.residuals) < 1e-9)
    np.testing.assert_allclose(res.eigenvectors.T @ res.eigenvectors, np.eye(3), atol=1e-10)


def test_eigsh_warns_when_not_converged():
    matvec, dim = dense_operator(M.planted(np.linspace(0, 1, 60) ** 4, 0))
    with pytest.warns(RuntimeWarning, match="not converged"):
        analysis.eigsh(matvec, dim, 3, num_steps=10, tol=1e-12, max_restarts=0, key=jax.random.PRNGKey(0))


def test_eigsh_float32():
    lam = np.linspace(-1.0, 1.0, 60) ** 3 * 10
    matvec, dim = dense_operator(M.planted(lam, 3).astype(np.float32))
    res = analysis.eigsh(matvec, dim, 4, which="BE", tol=1e-5, key=jax.random.PRNGKey(0))
    assert res.eigenvalues.dtype == jnp.float32 and res.eigenvectors.dtype == jnp.float32
    np.testing.assert_allclose(res.eigenvalues, wanted(lam, "BE", 4), rtol=0, atol=1e-4 * 10)
    assert np.all(np.asarray(res.residuals) <= 1e-4 * 10)


def test_validation_errors():
    matvec, dim = dense_operator(M.planted(np.arange(10.0), 0))
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="1 <= k < dim = 10"):
        analysis.eigsh(matvec, dim, 10, key=key)
    with pytest.raises(ValueError, match="1 <= k < dim"):
        analysis.eigsh(matvec, dim, 0, key=key)
    with pytest.raises(ValueError, match="valid names: LA, SA, BE, LM"):
        analysis.eigsh(matvec, dim, 2, which="SM", key=key)
    with pytest.raises(ValueError, match="num_steps"):
        analysis.eigsh(matvec, dim, 3, num_steps=3, key=key)
    with pytest.raises(ValueError, match="num_steps"):
        analysis.lanczos(matvec, dim, 11, key=key)
    with pytest.raises(ValueError, match=r"map a \(10,\) vector to a \(10,\) vector, got \(9,\)"):
        analysis.eigsh(lambda v: v[:9], dim, 2, key=key)
    with pytest.raises(ValueError, match="matvec failed"):
        analysis.lanczos(Partial(jnp.matmul, jnp.ones((3, 3))), dim, 2, key=key)
    with pytest.raises(ValueError, match="v0 must have shape"):
        analysis.lanczos(matvec, dim, 2, key=key, v0=jnp.ones(3))
    with pytest.raises(ValueError, match="non-zero"):
        analysis.lanczos(matvec, dim, 2, key=key, v0=jnp.zeros(10))
    with pytest.raises(ValueError, match="dim must be a positive integer"):
        analysis.lanczos(matvec, 0, 2, key=key)
    with pytest.raises(ValueError, match="tol must be positive"):
        analysis.eigsh(matvec, dim, 2, tol=0.0, key=key)


# --------------------------------------------------------------------------------------------------
# per-layer operators and eigenvectors shaped like the params


@pytest.fixture(scope="module")
def layer1():
    """Layer 1 of the 64-9-7-10 MLP: its restricted operator and its dense block (``_models.layer1_operator``)."""
    return M.layer1_operator()


@pytest.mark.parametrize("which", ["LA", "SA"])
def test_eigsh_per_layer_matches_the_dense_block(layer1, which):
    params, x, y, matvec, dim, block = layer1
    exact = np.linalg.eigvalsh(block)
    res = analysis.eigsh(matvec, dim, 3, which=which, tol=1e-12, key=jax.random.PRNGKey(0))
    np.testing.assert_allclose(res.eigenvalues, wanted(exact, which, 3), rtol=0, atol=1e-10 * np.abs(exact).max())
    # Eigenvectors shaped like the layer, checked against the flat ones and as eigenvectors of the full
    # Hessian's block: H v (a tangent zero outside layer 1) restricted to layer 1 is lambda v.
    trees = res.unravel(params[1])
    assert len(trees) == 3
    for i, tree in enumerate(trees):
        assert jax.tree.structure(tree) == jax.tree.structure(params[1])
        assert tree["W"].shape == (9, 7) and tree["b"].shape == (7,)
        np.testing.assert_array_equal(M.flat(tree), res.eigenvectors[:, i])
        tangent = [jax.tree.map(jnp.zeros_like, params[0]), tree, jax.tree.map(jnp.zeros_like, params[2])]
        hv = analysis.hvp(M.loss_fn, params, tangent, x, y)[1]
        for leaf in ("W", "b"):
            np.testing.assert_allclose(hv[leaf], res.eigenvalues[i] * tree[leaf], rtol=0, atol=1e-9)


def test_eigsh_warm_start_and_full_pytree_vectors():
    lam = np.concatenate([np.linspace(-1.0, 1.0, 57), [3.0, 4.0, 5.0]])
    A = M.planted(lam, 0)
    matvec, dim = dense_operator(A)
    top = np.linalg.eigh(A)[1][:, -1]
    res = analysis.eigsh(matvec, dim, 1, key=jax.random.PRNGKey(0), v0=top)
    np.testing.assert_allclose(res.eigenvalues, [5.0], atol=1e-8)
    like = {"a": jnp.zeros((6, 5)), "b": jnp.zeros(30)}
    (tree,) = res.unravel(like)
    np.testing.assert_array_equal(jnp.concatenate([tree["a"].ravel(), tree["b"]]), res.eigenvectors[:, 0])
    with pytest.raises(ValueError, match="v0 must have shape"):
        analysis.eigsh(matvec, dim, 1, key=jax.random.PRNGKey(0), v0=top[:5])
