import functools
import json

import jax
import numpy as np
import pytest

from analysis import spectrum
from experiments import spectral_density as sd
from fflab import losses, mlp


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("spectral_density")
    payload = sd.main(sd.QUICK, out)  # on one BLAS thread (tests/conftest.py)
    return payload, json.loads((out / "spectral_density.json").read_text()), out


def test_claims_and_files(run):
    payload, saved, out = run
    claims = {c["text"].split(":")[0]: c for c in payload["claims"]}
    assert len(claims) == 6
    # The bulk claim's threshold is a judgement call (BN at initialisation sits near it); all others hold.
    failing = [c for c in payload["claims"] if not c["holds"] and not c["text"].startswith("most of")]
    assert not failing, failing
    for name in ("spectral_density.png", "spectral_density_outliers.png"):
        assert (out / name).stat().st_size > 10_000
    assert len((out / "spectral_density.json").read_bytes()) < 300_000
    assert saved["config"]["dataset"] == "digits"


def test_dense_check_numbers(run):
    check = run[1]["results"]["check"]
    top, exact_top = np.asarray(check["top_eigenvalues"]), np.asarray(check["exact_eigenvalues_top"])
    # eigsh stops at relative residual eigsh_tol; the well-separated outliers come out far more accurately.
    np.testing.assert_allclose(top, exact_top, rtol=0, atol=sd.QUICK.eigsh_tol * exact_top[0])
    k = check["exact_n_outliers"]
    np.testing.assert_allclose(top[:k], exact_top[:k], rtol=1e-6)
    # The outlier rule on eigsh's eigenvalues equals the rule on the exact ones, recomputed here.
    n, edge = spectrum.outliers(exact_top)
    assert check["n_outliers"] == check["exact_n_outliers"] == n
    assert int(np.sum(top > edge)) == n
    # SLQ moments: unbiased estimates, within 4 standard errors of the exact trace moments.
    for k in (0, 1):
        err = abs(check["moments"][k] - check["exact_moments"][k])
        assert err < 4 * check["moment_stderr"][k]
    # The smoothed densities integrate to 1 and the SLQ one is close in L1.
    grid = np.asarray(check["grid"])
    dx = grid[1] - grid[0]
    for key in ("density_slq", "density_exact"):
        assert abs(np.sum(check[key]) * dx - 1) < 1e-3
    assert check["l1"] < 0.2
    # The largest Ritz value of SLQ never exceeds the largest eigenvalue and gets close to it.
    assert check["lambda_max"] <= exact_top[0] * (1 + 1e-9)
    assert np.max(check["slq_nodes"]) > 0.99 * exact_top[0]


def test_settings(run):
    r = run[1]["results"]
    per = r["settings"]
    C = r["num_classes"]
    for s in per.values():
        w = np.asarray(s["slq_weights"])
        np.testing.assert_allclose(w.sum(axis=1), 1, atol=1e-5)
        top = np.asarray(s["top_eigenvalues"])
        assert np.all(np.diff(top) <= 1e-6 * abs(top[0]))
        assert np.all(np.asarray(s["top_residuals"]) < 1e-2 * abs(top[0]))
        n, edge = spectrum.outliers(top)
        assert (n, edge) == (s["n_outliers"], pytest.approx(s["bulk_edge"]))
        shares = s["gradient_share"]
        assert 0 <= shares["1"] <= shares["C"] <= 1 + 1e-6
        assert len(s["gram_eigenvalues"]) == 2 * C
    # BN lowered the number of outliers of the trained network.
    assert per["bn_trained"]["n_outliers"] < per["plain_trained"]["n_outliers"]


def _tiny_problem():
    # Drawn by numpy: jax.random would compile a program for every shape drawn.
    rng = np.random.default_rng(3)
    params = [{"W": rng.normal(size=(n_in, n_out)) * np.sqrt(2 / n_in), "b": 0.1 * rng.normal(size=n_out)}
              for n_in, n_out in ((5, 7), (7, 4))]
    x = rng.normal(size=(40, 5))
    y = np.arange(40) % 4
    return params, x, y


def test_class_mean_gram_against_explicit_jacobians():
    with jax.enable_x64(True):
        params, x, y = _tiny_problem()
        f = sd.logits_fn("plain", "relu")
        gram, rows = sd.class_mean_gram(f, params, x, y, 4)
        flat, unravel = jax.flatten_util.ravel_pytree(params)
        # The reference as one compiled program: run op by op, jax.jacobian compiled each operation apart.
        J, p = map(np.asarray, jax.jit(lambda v: (jax.jacobian(lambda w: f(unravel(w), x))(v),
                                                  jax.nn.softmax(f(unravel(v), x))))(flat))  # J: (n, C, P)
        y_np = np.asarray(y)
        G_class = np.zeros((flat.size, flat.size))
        for c in range(4):
            m = y_np == c
            M = J[m].mean(0)
            H = np.mean([np.diag(q) - np.outer(q, q) for q in p[m]], axis=0)
            G_class += m.mean() * M.T @ H @ M
    np.testing.assert_allclose(rows.T @ rows, G_class, atol=1e-12)
    want = np.sort(np.linalg.eigvalsh(G_class))[::-1][:8]
    got = np.sort(np.linalg.eigvalsh(gram))[::-1][:8]
    np.testing.assert_allclose(got, want, atol=1e-10)


@pytest.mark.slow  # its own compiled analysis programs; test_dense_check_numbers is the default-run oracle
def test_analyse_against_jax_hessian():
    cfg = sd.Config(num_steps=30, num_probes=6, top_k=12, eigsh_steps=40, eigsh_tol=1e-8)
    with jax.enable_x64(True):
        params, x, y = _tiny_problem()
        loss = sd.plain_loss("relu")
        flat, unravel = jax.flatten_util.ravel_pytree(params)
        H = np.asarray(jax.hessian(lambda v: loss(unravel(v), x, y))(flat))
        g = np.asarray(jax.grad(lambda v: losses.cross_entropy(mlp.apply(unravel(v), x), y))(flat))
        res = sd.analyse(loss, params, (x, y), sd.logits_fn("plain", "relu"), x, y, cfg, jax.random.key(0), 4)
    lam, U = np.linalg.eigh(H)
    lam, U = lam[::-1], U[:, ::-1]
    np.testing.assert_allclose(res["top_eigenvalues"], lam[:12], atol=1e-8)
    assert res["n_outliers"] == spectrum.outliers(lam[:12])[0]
    # Share of the gradient in the top-C eigenspace, from numpy's eigenvectors.
    share = np.sum((U[:, :4].T @ g) ** 2) / np.sum(g**2)
    assert res["gradient_share"]["C"] == pytest.approx(share, rel=1e-6)
    # SLQ moments are Hutchinson estimates of tr(H^k) / P: within 4 standard errors of the exact values.
    for k, exact in ((0, np.mean(lam)), (1, np.mean(lam**2))):
        assert abs(res["moments"][k] - exact) <= 4 * res["moment_stderr"][k] + 1e-10
    np.testing.assert_allclose(res["loss"], float(loss(params, x, y)), rtol=1e-12)


def test_smoothed_density_matches_closed_form():
    nodes = np.array([[0.0, 1.0]])
    weights = np.array([[0.25, 0.75]])
    grid = np.linspace(-1, 2, 7)
    got = sd.smoothed(nodes, weights, grid, 0.5)
    want = sum(w * np.exp(-0.5 * ((grid - t) / 0.5) ** 2) / (0.5 * np.sqrt(2 * np.pi))
               for t, w in zip(nodes[0], weights[0], strict=True))
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_pool():
    x = np.arange(16, dtype=float)[None]
    np.testing.assert_allclose(sd.pool(x, 2), [[2.5, 4.5, 10.5, 12.5]])
    with pytest.raises(ValueError, match="cannot pool"):
        sd.pool(np.zeros((1, 15)), 2)


def test_partial_losses_are_cached():
    assert sd.plain_loss("relu") is sd.plain_loss("relu")
    assert sd.bn_loss("relu", True) is sd.bn_loss("relu", True)
    assert isinstance(sd.logits_fn("bn", "relu"), functools.partial)
