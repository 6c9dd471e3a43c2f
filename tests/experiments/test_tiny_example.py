import json
import math

import numpy as np
import pytest
from scipy.linalg import solve_discrete_lyapunov

from experiments import tiny_example as te

T, D = 1.5, 0.04  # target and weight decay of the lecture's toy loss


def _grad(w):
    a, b = w
    r = a * b - T
    return np.array([2 * r * b + 2 * D * a, 2 * r * a + 2 * D * b])


def _hess(w):
    a, b = w
    return np.array([[2 * b * b + 2 * D, 4 * a * b - 2 * T], [4 * a * b - 2 * T, 2 * a * a + 2 * D]])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_example")
    payload = te.main(te.QUICK, out)
    return payload, json.loads((out / "tiny_example.json").read_text()), out


def test_claims_hold_and_files(run):
    payload, saved, out = run
    assert all(c["holds"] for c in payload["claims"]), [c for c in payload["claims"] if not c["holds"]]
    assert saved["config"]["start"] == [-1.5, 0.5]
    for name in ("tiny_example.png", "tiny_example_curvature.png"):
        assert (out / name).stat().st_size > 10_000


def test_critical_points_match_closed_form(run):
    r = run[1]["results"]
    s = math.sqrt(T - D)
    pts = sorted(r["critical_points"], key=lambda p: p["w"][0])
    np.testing.assert_allclose([p["w"] for p in pts], [[-s, -s], [0, 0], [s, s]], atol=1e-6)
    assert [p["kind"] for p in pts] == ["minimum", "saddle", "minimum"]
    np.testing.assert_allclose(pts[1]["eigenvalues"], [2 * D - 2 * T, 2 * D + 2 * T], atol=1e-8)
    for p in (pts[0], pts[2]):
        np.testing.assert_allclose(p["eigenvalues"], [4 * D, 4 * (T - D)], atol=1e-8)
        np.testing.assert_allclose(p["eigenvalues"], np.linalg.eigvalsh(_hess(p["w"])), atol=1e-8)
        assert np.linalg.norm(_grad(p["w"])) < 1e-8
    assert 0.25 < 2 / (4 * (T - D)) < 0.35
    np.testing.assert_allclose(r["stability_limit"], 2 / (4 * (T - D)), rtol=1e-10)


def test_paths_follow_the_update_rules(run):
    cfg = te.QUICK
    r = run[1]["results"]
    w0 = np.array(cfg.start)
    for name, step in zip(("gd_slow", "gd_fast"), cfg.gd_steps, strict=True):
        w, path = w0.copy(), [w0]
        for _ in range(cfg.num_steps):
            w = w - step * _grad(w)
            path.append(w)
        np.testing.assert_allclose(r["paths"][name], path, atol=1e-8)
    # Polyak: m <- alpha m - lr g, w <- w + m (optax.sgd with momentum must be the same recursion).
    w, m, path = w0.copy(), np.zeros(2), [w0]
    for _ in range(cfg.num_steps):
        m = cfg.momentum * m - cfg.momentum_lr * _grad(w)
        w = w + m
        path.append(w)
    np.testing.assert_allclose(r["paths"]["momentum"], path, atol=1e-8)
    # Newton with the closed-form Hessian converges to the saddle at the origin.
    w = w0.copy()
    for _ in range(30):
        w = w - np.linalg.solve(_hess(w), _grad(w))
    np.testing.assert_allclose(w, 0, atol=1e-10)
    np.testing.assert_allclose(r["paths"]["newton"][-1], 0, atol=1e-10)


def test_step_counts_and_rates(run):
    cfg = te.QUICK
    r = run[1]["results"]
    for name, n in r["steps_to_reach"].items():
        d = np.asarray(r["distance"][name])
        if n is None:
            assert d.min() >= cfg.reach_tol
        else:
            assert d[n] < cfg.reach_tol and d[:n].min() >= cfg.reach_tol
    assert r["steps_to_reach"]["gd_fast"] is None and r["steps_to_reach"]["newton"] is None
    assert r["steps_to_reach"]["momentum"] < r["steps_to_reach"]["gd_slow"]
    # Slow direction of the minimum: error shrinks by 1 - 0.25 * 4d per step.
    np.testing.assert_allclose(r["gd_slow_rate"]["measured"], 1 - 0.25 * 4 * D, atol=2e-3)
    # Step 0.35 ends in a 2-cycle straddling the minimum.
    p = np.asarray(r["paths"]["gd_fast"])
    np.testing.assert_allclose(p[-1], p[-3], atol=1e-6)
    assert np.linalg.norm(p[-1] - p[-2]) > 0.1


def test_noisy_spread_against_lyapunov(run):
    cfg = te.QUICK
    r = run[1]["results"]
    # Linearised heavy ball at the minimum, state (w - w*, m): stationary covariance from Lyapunov's equation.
    H = _hess([math.sqrt(T - D)] * 2)
    lr, a = cfg.momentum_lr, cfg.momentum
    A = np.block([[np.eye(2) - lr * H, a * np.eye(2)], [-lr * H, a * np.eye(2)]])
    B = np.vstack([-lr * np.eye(2), -lr * np.eye(2)])
    cov = solve_discrete_lyapunov(A, cfg.noise_std**2 * B @ B.T)
    predicted = math.sqrt(np.trace(cov[:2, :2]))
    np.testing.assert_allclose(r["noisy_rms"]["predicted"], predicted, rtol=1e-8)
    assert 0.75 < r["noisy_rms"]["measured"] / predicted < 1.33


def test_indefinite_region_and_uphill_newton(run):
    g = run[1]["results"]["grid"]
    ticks = np.asarray(g["ticks"])
    a, b = np.meshgrid(ticks, ticks)
    det = (2 * b**2 + 2 * D) * (2 * a**2 + 2 * D) - (4 * a * b - 2 * T) ** 2
    neg = np.asarray(g["lambda_min"]) < 0
    clear = np.abs(det) > 1e-3  # lambda_min is saved rounded to 5 decimals
    np.testing.assert_array_equal(neg[clear], (det < 0)[clear])
    uphill = np.asarray(g["newton_uphill"]).astype(bool)
    assert uphill.any() and not uphill[~neg].any()
