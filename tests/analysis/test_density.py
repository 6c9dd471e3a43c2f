"""Stochastic Lanczos quadrature and trace estimators against exact traces and planted spectra."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.tree_util import Partial

import analysis
from tests.analysis import _models as M


def dense_operator(A):
    return Partial(jnp.matmul, jnp.asarray(A)), A.shape[0]


@pytest.fixture(scope="module")
def digits():
    params, x, y = M.digits_mlp()
    H = M.digits_hessian()
    matvec, dim = analysis.hessian_operator(M.loss_fn, params, x, y)
    return matvec, dim, H


def rademacher_sd(frobenius_sq, diagonal, num_probes):
    """Exact standard error of the mean of ``z^T B z`` over ``n`` Rademacher ``z``.

    ``Var(z^T B z) = 2 (||B||_F^2 - sum_i B_ii^2)`` for symmetric ``B``.
    """
    return np.sqrt(2 * (frobenius_sq - np.sum(diagonal**2)) / num_probes)


def test_slq_moments_on_digits_mlp(digits):
    matvec, dim, H = digits
    lam = M.digits_spectrum()
    m1, m2 = np.mean(lam), np.mean(lam**2)  # tr(H)/P and tr(H^2)/P
    # Each probe's quadrature is exact for degree < 2 * 90, so its moments are the probe's own
    # quadratic forms v^T H^k v (v = z / ||z||): an oracle without sampling error.
    z = jax.random.rademacher(jax.random.PRNGKey(0), (20, dim), jnp.float64)
    density = analysis.spectral_density(matvec, dim, num_steps=90, probes=z)
    assert density.nodes.shape == density.weights.shape == (20, 90)
    np.testing.assert_allclose(jnp.sum(density.weights, axis=1), 1.0, atol=1e-12)
    nodes, weights, z = np.asarray(density.nodes), np.asarray(density.weights), np.asarray(z)
    hz = z @ H
    for k, exact in [(1, np.sum(z * hz, axis=1) / dim), (2, np.sum(hz * hz, axis=1) / dim)]:
        got = np.sum(weights * nodes**k, axis=1)
        np.testing.assert_allclose(got, exact, rtol=0, atol=1e-10 * np.abs(exact).max())
    # Against tr(H^k)/P the error is the probes' sampling error. This Hessian is indefinite and led by
    # a few outliers: with 20 probes the exact standard errors are ~27% of tr(H)/P and ~11% of
    # tr(H^2)/P, so "2% and 5%" cannot hold in general; hold both to 4 exact standard errors.
    sd1 = rademacher_sd(np.sum(lam**2), np.diag(H), 20) / dim
    sd2 = rademacher_sd(np.sum(lam**4), np.sum(H * H, axis=1), 20) / dim
    assert abs(float(density.moment(1)) - m1) < 4 * sd1
    assert abs(float(density.moment(2)) - m2) < 4 * sd2
    # The smoothed density is a probability density.
    grid = jnp.linspace(-20.0, 25.0, 4501)
    phi = density.density(grid, 0.2)
    assert float(jnp.min(phi)) >= 0.0
    assert float(jnp.sum(phi) * (grid[1] - grid[0])) == pytest.approx(1.0, abs=1e-6)


def largest_magnitude(lam, U, k):
    order = np.argsort(-np.abs(lam), kind="stable")[:k]
    return lam[order], U[:, order]


def deflated_sd(lam, U, k, power, num_probes):
    """Exact standard error of the mean of ``z^T B^power z`` for ``B = (I - V V^T) H (I - V V^T)``, ``V``
    the ``k`` eigenvectors of largest ``|lambda|``: ``B^p`` has eigenvalues ``lambda_j^p`` on the rest."""
    rest = np.argsort(-np.abs(lam), kind="stable")[k:]
    values = lam[rest] ** power
    return rademacher_sd(np.sum(values**2), (U[:, rest] ** 2) @ values, num_probes)


def deflated_forms(z, A, V):
    """Unit projected probes ``w`` and ``B w`` for ``B = (I - V V^T) A (I - V V^T)``, per row of ``z``."""
    w = z - (z @ V) @ V.T
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    bw = w @ A
    bw -= (bw @ V) @ V.T  # w is already orthogonal to V
    return w, bw


def test_deflated_slq_is_exact_per_probe(digits):
    # Oracle without sampling error: with the top-|lambda| pairs (lambda_i, u_i) removed, each row is
    # (1/P) [sum_i lambda_i^k + (P - k) w^T B^k w] for B = (I - U U^T) H (I - U U^T) and w the unit
    # projected probe; the first k nodes are the eigenvalues themselves.
    matvec, dim, H = digits
    lam, U = M.digits_eigh()
    norm, k = np.abs(lam).max(), 10
    top, V = largest_magnitude(lam, U, k)
    z = jax.random.rademacher(jax.random.PRNGKey(0), (20, dim), jnp.float64)
    density = analysis.spectral_density(
        matvec, dim, num_steps=90, probes=z, key=jax.random.PRNGKey(1), num_deflate=k, deflate_tol=1e-10
    )
    assert density.nodes.shape == density.weights.shape == (20, k + 90)
    np.testing.assert_allclose(jnp.sum(density.weights, axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(density.nodes[:, :k], np.broadcast_to(top, (20, k)), rtol=0, atol=1e-8 * norm)
    np.testing.assert_allclose(density.weights[:, :k], 1 / dim, rtol=1e-12)
    w, bw = deflated_forms(np.asarray(z), H, V)
    nodes, weights = np.asarray(density.nodes), np.asarray(density.weights)
    for power, forms in [(1, np.sum(w * bw, axis=1)), (2, np.sum(bw * bw, axis=1))]:
        exact = (np.sum(top**power) + (dim - k) * forms) / dim
        got = np.sum(weights * nodes**power, axis=1)
        np.testing.assert_allclose(got, exact, rtol=0, atol=1e-8 * np.abs(exact).max())


@pytest.fixture(scope="module")
def trained():
    params, x, y = M.trained_digits_mlp()
    H, lam, U = M.trained_digits_hessian()
    matvec, dim = analysis.hessian_operator(M.loss_fn, params, x, y)
    return matvec, dim, H, lam, U


@pytest.mark.parametrize("seed", [0, 1, *(pytest.param(s, marks=pytest.mark.slow) for s in (2, 3, 4, 5))])
def test_deflated_slq_moment_targets_on_trained_mlp(trained, seed):
    # The acceptance targets, trace/P within 2% and tr(H^2)/P within 5% with 20 probes, on the trained
    # 2,780-parameter MLP with its 20 largest-magnitude eigenpairs deflated. The exact standard errors
    # of the deflated estimator (from the dense Hessian) are 0.8% and 0.07%: both bounds are more than
    # two standard errors wide, so they hold for most seeds, not only these.
    matvec, dim, H, lam, U = trained
    k, n = 20, 20
    m1, m2 = np.mean(lam), np.mean(lam**2)
    sd1, sd2 = (deflated_sd(lam, U, k, power, n) / dim for power in (1, 2))
    assert 0.02 * abs(m1) > 2 * sd1 and 0.05 * m2 > 2 * sd2
    density = analysis.spectral_density(
        matvec, dim, num_steps=90, num_probes=n, key=jax.random.PRNGKey(seed), num_deflate=k
    )
    assert abs(float(density.moment(1)) / m1 - 1) < 0.02
    assert abs(float(density.moment(2)) / m2 - 1) < 0.05


@pytest.mark.slow
def test_deflated_slq_second_moment_at_initialisation(digits):
    # At the random initialisation tr(H)/P is a near-cancellation (0.0075 against eigenvalues in
    # [-3.8, 10]): deflation brings the second moment within 5% but the trace only to its (smaller)
    # standard error, 13% of tr(H)/P with 20 pairs deflated; hold it to 4 exact standard errors.
    matvec, dim, _ = digits
    lam, U = M.digits_eigh()
    k, n = 20, 20
    sd1 = deflated_sd(lam, U, k, 1, n) / dim
    density = analysis.spectral_density(
        matvec, dim, num_steps=90, num_probes=n, key=jax.random.PRNGKey(0), num_deflate=k
    )
    assert abs(float(density.moment(2)) / np.mean(lam**2) - 1) < 0.05
    assert abs(float(density.moment(1)) - np.mean(lam)) < 4 * sd1


def test_slq_is_exact_quadrature_on_planted_spectrum():
    # Six distinct eigenvalues: after six steps each probe's Krylov space is invariant, so every node
    # with weight is an eigenvalue and the rest of T is a zero block with zero weight.
    distinct = np.array([-2.0, -0.5, 0.1, 1.0, 3.0, 7.0])
    lam = np.repeat(distinct, 10)
    matvec, dim = dense_operator(M.planted(lam, 0))
    density = analysis.spectral_density(matvec, dim, num_steps=12, num_probes=200, key=jax.random.PRNGKey(1))
    nodes, weights = np.asarray(density.nodes), np.asarray(density.weights)
    assert np.all(np.isfinite(nodes)) and np.all(np.isfinite(weights))
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-12)
    weighted = weights > 1e-12
    assert np.abs(nodes[weighted][:, None] - distinct[None, :]).min(axis=1).max() < 1e-10
    # Per probe, every eigenvalue of the planted matrix carries weight.
    for node_row, w_row in zip(nodes, weights, strict=True):
        for value in distinct:
            assert w_row[np.abs(node_row - value) < 1e-8].sum() > 1e-6


def test_slq_moments_are_unbiased_on_planted_spectrum():
    lam = np.linspace(-1.0, 3.0, 60) ** 3
    matvec, dim = dense_operator(M.planted(lam, 2))
    for probe in ["rademacher", "gaussian"]:
        density = analysis.spectral_density(
            matvec, dim, num_steps=12, num_probes=200, key=jax.random.PRNGKey(3), probe=probe
        )
        for k in (1, 2, 3):
            exact = np.mean(lam**k)
            assert abs(float(density.moment(k)) - exact) < 4 * float(density.moment_stderr(k)), (probe, k)


def test_slq_float32():
    lam = np.linspace(0.5, 4.0, 60)
    matvec, dim = dense_operator(M.planted(lam, 1).astype(np.float32))
    density = analysis.spectral_density(matvec, dim, num_steps=60, num_probes=4, key=jax.random.PRNGKey(0))
    assert density.nodes.dtype == jnp.float32
    np.testing.assert_allclose(np.sum(density.weights, axis=1), 1.0, atol=1e-5)
    # A full Krylov space: every probe's Ritz values are the spectrum.
    np.testing.assert_allclose(np.sort(density.nodes, axis=1), np.tile(lam, (4, 1)), atol=1e-4 * 4)


def test_deflated_slq_float32():
    # Three outliers of alternating sign over a bulk in [0.5, 4]: after deflation every node that
    # carries weight lies in the bulk, and the moments (degree < 2 * 30) are exact up to rounding.
    lam = np.concatenate([[-30.0, 25.0, 40.0], np.linspace(0.5, 4.0, 57)])
    matvec, dim = dense_operator(M.planted(lam, 2).astype(np.float32))
    density = analysis.spectral_density(
        matvec, dim, num_steps=30, num_probes=4, key=jax.random.PRNGKey(0), num_deflate=3, deflate_tol=1e-5
    )
    assert density.nodes.dtype == density.weights.dtype == jnp.float32
    assert density.nodes.shape == (4, 33)
    np.testing.assert_allclose(density.nodes[:, :3], np.tile([40.0, -30.0, 25.0], (4, 1)), atol=1e-5 * 40)
    nodes, weights = np.asarray(density.nodes[:, 3:]), np.asarray(density.weights[:, 3:])
    carried = nodes[weights > 1e-6]
    assert carried.min() > 0.5 - 1e-3 and carried.max() < 4.0 + 1e-3
    np.testing.assert_allclose(np.sum(density.weights, axis=1), 1.0, atol=1e-5)
    # Per probe: the outliers exactly, plus the bulk's quadratic forms of the unit projected probe.
    A = M.planted(lam, 2)
    values, U = np.linalg.eigh(A)
    V = largest_magnitude(values, U, 3)[1]
    z = np.asarray(jax.random.rademacher(jax.random.PRNGKey(0), (4, dim), jnp.float32), np.float64)
    _, bw = deflated_forms(z, A, V)
    got = np.asarray(density.weights, np.float64) * np.asarray(density.nodes, np.float64) ** 2
    exact = (np.sum(lam[:3] ** 2) + 57 * np.sum(bw * bw, axis=1)) / dim
    np.testing.assert_allclose(np.sum(got, axis=1), exact, rtol=1e-4)


def test_slq_compiles_once():
    traces = []

    def matvec(A, v):
        traces.append(None)
        return A @ v

    A = jnp.asarray(M.planted(np.linspace(-1.0, 1.0, 60), 0))
    for seed in range(3):
        analysis.spectral_density(
            Partial(matvec, A), 60, num_steps=12, num_probes=7, key=jax.random.PRNGKey(seed)
        )
    # One abstract shape check per call, and one compiled program for all three.
    assert len(traces) == 3 + 1


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("method", ["hutchinson", "hutch++"])
def test_trace_within_three_standard_errors(digits, seed, method):
    matvec, dim, H = digits
    est = analysis.trace(matvec, dim, num_probes=30, key=jax.random.PRNGKey(seed), method=method)
    assert est.estimate.shape == est.stderr.shape == ()
    assert abs(float(est.estimate) - np.trace(H)) < 3 * float(est.stderr)


def test_hutch_plus_plus_beats_hutchinson_on_decaying_spectrum():
    lam = 1.0 / np.arange(1, 61) ** 2
    matvec, dim = dense_operator(M.planted(lam, 0))
    errors = {}
    for method in ["hutchinson", "hutch++"]:
        ests = [
            float(
                analysis.trace(matvec, dim, num_probes=30, key=jax.random.PRNGKey(s), method=method).estimate
            )
            for s in range(5)
        ]
        errors[method] = np.sqrt(np.mean((np.asarray(ests) - lam.sum()) ** 2))
    assert errors["hutch++"] < 0.2 * errors["hutchinson"]


def test_validation_errors():
    matvec, dim = dense_operator(M.planted(np.arange(10.0), 0))
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="num_steps"):
        analysis.spectral_density(matvec, dim, num_steps=11, key=key)
    with pytest.raises(ValueError, match="valid names: rademacher, gaussian"):
        analysis.spectral_density(matvec, dim, num_steps=5, key=key, probe="sphere")
    with pytest.raises(ValueError, match=r"map a \(10,\) vector"):
        analysis.spectral_density(lambda v: jnp.ones(3), dim, num_steps=5, key=key)
    with pytest.raises(ValueError, match="valid names: hutchinson, hutch\\+\\+"):
        analysis.trace(matvec, dim, num_probes=10, key=key, method="xtrace")
    with pytest.raises(ValueError, match="num_probes"):
        analysis.trace(matvec, dim, num_probes=3, key=key, method="hutch++")
    with pytest.raises(ValueError, match="num_probes"):
        analysis.trace(matvec, dim, num_probes=1, key=key)
    density = analysis.density.SpectralDensity(jnp.zeros((2, 5)), jnp.full((2, 5), 0.2))
    with pytest.raises(ValueError, match="sigma must be positive"):
        density.density(jnp.zeros(3), 0.0)
    with pytest.raises(ValueError, match=r"probes must have shape \(num_probes, 10\)"):
        analysis.spectral_density(matvec, dim, num_steps=5, probes=jnp.ones((2, 9)))
    with pytest.raises(ValueError, match="non-zero"):
        analysis.spectral_density(matvec, dim, num_steps=5, probes=jnp.zeros((2, 10)))
    with pytest.raises(ValueError, match="needs a PRNG key"):
        analysis.spectral_density(matvec, dim, num_steps=5)
    with pytest.raises(ValueError, match=r"num_deflate must be an integer in \[0, 5\]"):
        analysis.spectral_density(matvec, dim, num_steps=5, key=key, num_deflate=6)
    top = jnp.asarray(np.linalg.eigh(M.planted(np.arange(10.0), 0))[1][:, -1:].T)  # eigenvalue 9
    with pytest.raises(ValueError, match="span of the deflated eigenvectors"):
        analysis.spectral_density(matvec, dim, num_steps=5, probes=top, key=key, num_deflate=2)
    with pytest.raises(ValueError, match="key to find the eigenpairs"):
        analysis.spectral_density(matvec, dim, num_steps=5, probes=jnp.ones((2, 10)), num_deflate=2)
    with pytest.raises(ValueError, match=r"grid must have shape \(g,\)"):
        density.density(jnp.zeros((3, 2)), 1.0)


# --------------------------------------------------------------------------------------------------
# per-layer spectra from restricted operators, against the dense blocks


@pytest.fixture(scope="module")
def layer1():
    """Layer 1 of the 64-9-7-10 MLP: its restricted operator and its dense block (``_models.layer1_operator``)."""
    *_, matvec, dim, block = M.layer1_operator()
    return matvec, dim, block


def test_per_layer_slq_moments_match_the_dense_block(layer1):
    matvec, dim, B = layer1
    lam = np.linalg.eigvalsh(B)
    z = jax.random.rademacher(jax.random.PRNGKey(0), (20, dim), jnp.float64)
    density = analysis.spectral_density(matvec, dim, num_steps=30, probes=z)
    nodes, weights, z = np.asarray(density.nodes), np.asarray(density.weights), np.asarray(z)
    bz = z @ B
    # Per probe exact (degree < 60): the probe's own quadratic forms, no sampling error.
    for k, exact in [(1, np.sum(z * bz, axis=1) / dim), (2, np.sum(bz * bz, axis=1) / dim)]:
        np.testing.assert_allclose(np.sum(weights * nodes**k, axis=1), exact, rtol=0, atol=1e-10 * np.abs(exact).max())
    # Against the block's tr(B^k) / dim: within 4 exact standard errors of 20 Rademacher probes.
    for k in (1, 2):
        power = np.linalg.matrix_power(B, k)
        sd = rademacher_sd(np.sum(lam ** (2 * k)), np.diag(power), 20) / dim
        assert abs(float(density.moment(k)) - np.mean(lam**k)) < 4 * sd


@pytest.mark.parametrize("method", ["hutchinson", pytest.param("hutch++", marks=pytest.mark.slow)])
def test_per_layer_trace_matches_the_dense_block(layer1, method):
    matvec, dim, B = layer1
    est = analysis.trace(matvec, dim, num_probes=30, key=jax.random.PRNGKey(1), method=method)
    assert abs(float(est.estimate) - np.trace(B)) < 3 * float(est.stderr)
