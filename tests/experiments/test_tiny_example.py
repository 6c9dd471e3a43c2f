import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.linalg import solve_discrete_lyapunov

from experiments import tiny_example as te

T, D = 1.5, 0.04  # target and weight decay of the lecture's toy loss
S = math.sqrt(T - D)


def _grad(w):
    a, b = w
    r = a * b - T
    return np.array([2 * r * b + 2 * D * a, 2 * r * a + 2 * D * b])


def _hess(w):
    a, b = w
    return np.array([[2 * b * b + 2 * D, 4 * a * b - 2 * T], [4 * a * b - 2 * T, 2 * a * a + 2 * D]])


def _numpy_path(w0, step, steps):
    """Gradient descent (momentum 0) or Newton (step None) with the closed-form gradient and Hessian."""
    w, path = np.array(w0, float), [np.array(w0, float)]
    for _ in range(steps):
        w = w - (np.linalg.solve(_hess(w), _grad(w)) if step is None else step * _grad(w))
        path.append(w)
    return np.array(path)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_example")
    payload = te.main(te.QUICK, out)
    return payload, json.loads((out / "tiny_example.json").read_text()), out


def test_claims_numerically_and_files(run):
    payload, saved, out = run
    r = saved["results"]
    verdicts = [c["holds"] for c in saved["claims"]]
    # GD 0.25 slow, 0.35 oscillates, Newton oscillates less, points the wrong way, saddle-free fixes it: hold.
    # Momentum at the usual alpha 0.9 is not faster than GD at 0.25 (130 vs 127 steps) and its noisy chains blow up.
    assert verdicts == [True, True, True, True, True, False, False]
    assert all(c["holds"] for c in saved["checks"])
    assert r["steps_to_reach"]["gd_slow"] == 127 and r["steps_to_reach"]["gd_fast"] is None
    assert r["steps_to_reach"]["newton"] is None and r["steps_to_reach"]["saddle_free"] < 40
    sweep = {s["alpha"]: s for s in r["momentum_sweep"]}
    assert sweep[0.9]["steps"] > 127 > sweep[0.8]["steps"]  # the verdict flips with alpha
    assert sweep[0.8]["diverged"] == 0 and sweep[0.9]["diverged"] > 0.2
    assert saved["claims"][5]["margin"] < 0 < saved["claims"][0]["margin"]
    for name in ("tiny_example.png", "tiny_example_sweeps.png"):
        assert (out / name).stat().st_size > 10_000


def test_paths_follow_the_update_rules(run):
    cfg = te.QUICK
    r = run[1]["results"]
    for name, step in zip(("gd_slow", "gd_fast"), cfg.gd_steps, strict=True):
        np.testing.assert_allclose(r["paths"][name], _numpy_path(cfg.start, step, cfg.num_steps), atol=1e-8)
    for got, alpha in ((r["paths"]["momentum"], cfg.momentum), (r["momentum_08"], 0.8)):  # m <- a m - lr g; w += m
        w, m, path = np.array(cfg.start), np.zeros(2), [np.array(cfg.start)]
        for _ in range(cfg.num_steps):
            m = alpha * m - cfg.momentum_lr * _grad(w)
            w = w + m
            path.append(w)
        np.testing.assert_allclose(got, path, atol=1e-8)
    np.testing.assert_allclose(r["paths"]["newton"][:30], _numpy_path(cfg.start, None, 29), atol=1e-10)
    np.testing.assert_allclose(r["paths"]["newton"][-1], 0, atol=1e-12)  # Newton settles on the saddle


def test_oscillation_measures_against_hand_counts(run):
    r = run[1]["results"]
    gd = np.asarray(r["paths"]["gd_slow"])
    s = np.diff(gd, axis=0)
    far = np.linalg.norm(gd[1:-1] - gd[-1], axis=1) > te.QUICK.reach_tol
    turns = [k for k in range(len(s) - 1) if far[k] and np.dot(s[k], s[k + 1]) < 0]
    assert r["oscillation"]["gd_slow"]["zigzags"] == len(turns) > 0
    length = sum(np.linalg.norm(gd[k + 1] - gd[k]) for k in range(len(gd) - 1))
    assert r["oscillation"]["gd_slow"]["detour"] == pytest.approx(length / np.linalg.norm(gd[-1] - gd[0]))
    assert r["oscillation"]["newton"]["zigzags"] == 0
    assert r["oscillation"]["newton"]["detour"] == pytest.approx(1, abs=1e-3)  # a straight line to the saddle
    # Late on, GD at 0.25 contracts by |1 - 0.25 * 4d| = 0.96 per step (the slide's "too slow").
    d = te.distance_to_minimum(gd)
    k = np.flatnonzero((d < 1e-2) & (d > 1e-4))
    assert (d[k[-1]] / d[k[0]]) ** (1 / (k[-1] - k[0])) == pytest.approx(1 - 0.25 * 4 * D, abs=2e-3)


def test_noisy_spread_against_lyapunov(run):
    cfg = te.QUICK
    H = _hess([S, S])
    for row in run[1]["results"]["momentum_sweep"]:
        lr, a = cfg.momentum_lr, row["alpha"]
        if a == 0 or row["rms"] is None:
            continue
        # Linearised heavy ball at the minimum, state (w - w*, m): stationary covariance from Lyapunov's equation.
        A = np.block([[np.eye(2) - lr * H, a * np.eye(2)], [-lr * H, a * np.eye(2)]])
        B = np.vstack([-lr * np.eye(2), -lr * np.eye(2)])
        cov = solve_discrete_lyapunov(A, cfg.noise_std**2 * B @ B.T)
        assert row["predicted"] == pytest.approx(math.sqrt(np.trace(cov[:2, :2])), rel=1e-8)
        assert 0.75 < row["rms"] / row["predicted"] < 1.33


def test_indefinite_region_and_uphill_newton(run):
    g = run[1]["results"]["grid"]
    ticks = np.linspace(-te.QUICK.span, te.QUICK.span, te.QUICK.grid)
    a, b = np.meshgrid(ticks, ticks)
    det = (2 * b**2 + 2 * D) * (2 * a**2 + 2 * D) - (4 * a * b - 2 * T) ** 2
    neg = np.asarray(g["lambda_min"]) < 0
    clear = np.abs(det) > 1e-3  # lambda_min is saved rounded to 5 decimals
    np.testing.assert_array_equal(neg[clear], (det < 0)[clear])
    uphill = np.asarray(g["newton_uphill"]).astype(bool)
    assert uphill.any() and not uphill[~neg].any()


@jax.jit
def _paths(starts):
    """Gradient descent at 0.25 and 0.3, Newton, saddle-free Newton: 150 steps from each start, in one program."""
    def one(w0):
        zero = jnp.zeros((150, 2), w0.dtype)
        return (te.descent_path(w0, 0.25, 0.0, zero), te.descent_path(w0, 0.3, 0.0, zero), te.newton_path(w0, 150),
                te.newton_path(w0, 150, 0.5))

    return jax.vmap(one)(starts)


def test_each_claim_can_fail():
    gd, gd_03, newton, sfn = map(np.asarray, _paths(jnp.asarray([(-1.42, -0.68), (1.4, 1.4), (-1.5, 0.5)])))
    # Newton from (-1.42, -0.68): where H is near-singular its steps jump out; its path is longer than GD's.
    assert te.oscillation(newton[0], 1e-3)["detour"] > te.oscillation(gd[0], 1e-3)["detour"]
    assert te.oscillation(newton[0], 1e-3)["zigzags"] > 0
    # From (1.4, 1.4) GD at 0.25 is not "too slow" (< 100 steps), and Newton goes to the minimum, not a saddle.
    assert te.steps_to_reach(gd[1], 1e-3) < 100
    assert np.linalg.norm(newton[1] - S, axis=1)[-1] < 1e-10
    # Saddle-free Newton given 5 steps does not reach the minimum; below 2 / lambda_max GD converges.
    assert te.steps_to_reach(sfn[2][:6], 1e-3) is None and te.steps_to_reach(sfn[2], 1e-3) is not None
    assert te.steps_to_reach(gd_03[2], 1e-3) is not None
