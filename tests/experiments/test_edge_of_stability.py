"""edge_of_stability: the sharpness records against a dense Hessian, the training against a hand-written gradient
descent loop, the data pipeline by hand, the claim numbers on made-up runs (each claim flips), and the quick run
(slow: about 35 s of CPU) holding its claims."""

import copy
import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from analysis import sharpness
from experiments import edge_of_stability as eos
from fflab import data, mlp, train

LOSS = functools.partial(eos.squared_loss, activation="tanh")  # one object: the compiled epochs are reused


def _tiny(seed=0, n=40, d=6, classes=3):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((n, d)))
    targets = jnp.asarray(np.eye(classes)[rng.integers(0, classes, n)])
    params = mlp.init(jax.random.key(seed), [d, 5, classes], init="standard_uniform", dtype=jnp.float64)
    return LOSS, params, x, targets


def test_squared_loss_is_half_the_summed_square_averaged_over_samples():
    loss_fn, params, x, targets = _tiny()
    out = np.asarray(mlp.apply(params, x, activation="tanh"))
    assert float(loss_fn(params, x, targets)) == pytest.approx(0.5 * np.mean(np.sum((out - targets) ** 2, 1)))


@pytest.mark.parametrize("seed", [0, 1])
def test_gradient_descent_and_its_sharpness_against_a_hand_loop_and_dense_hessian(seed):
    loss_fn, params, x, targets = _tiny(seed)
    etas, every, steps, sub = (0.5, 2.0), 2, 6, 25
    tracker = sharpness.tracker(loss_fn, (x[:sub], targets[:sub]), every=every, key=jax.random.key(1), tol=1e-8,
                                num_steps=20)
    _, loss, records, kept = eos.gradient_descent(etas, loss_fn, params, x, targets, tracker, steps, keep=(2, 4))
    assert loss.shape == (steps, 2) and records["sharpness"].shape == (steps // every, 2) and sorted(kept) == [2, 4]
    # The records at the kept steps against a cold eigsh at the kept parameters: the same top eigenvalue.
    check = eos.reference_check(loss_fn, kept, (x[:sub], targets[:sub]), records["sharpness"],
                                np.arange(0, steps, every), seed)
    assert check["steps"] == [2, 4] and check["max_relative_difference"] < 1e-5
    np.testing.assert_array_equal(check["tracked"], records["sharpness"][[1, 2]])
    flat, unravel = ravel_pytree(params)
    full = jax.jit(lambda f: loss_fn(unravel(f), x, targets))
    grad, hess = jax.jit(jax.grad(full)), jax.jit(jax.hessian(lambda f: loss_fn(unravel(f), x[:sub], targets[:sub])))
    for lane, eta in enumerate(etas):
        w = flat
        for t in range(steps):  # plain gradient descent on the flat vector, the dense Hessian's top eigenvalue
            assert loss[t, lane] == pytest.approx(float(full(w)), rel=1e-10)
            if t % every == 0:
                top = np.linalg.eigvalsh(np.asarray(hess(w)))[-1]
                assert records["sharpness"][t // every, lane] == pytest.approx(top, rel=1e-6)
            if t in kept:
                at = ravel_pytree(train.lane(kept[t], lane))[0]
                np.testing.assert_allclose(at, w, rtol=1e-12)
                assert check["reference"][[2, 4].index(t), lane] == pytest.approx(top, rel=1e-8)
            w = w - eta * grad(w)


def test_load_pools_standardises_and_one_hots():
    config = dataclasses.replace(eos.QUICK, samples=300, pool=2)
    x, targets = eos.load(config)
    ds = data.load("digits")
    idx = np.sort(np.random.default_rng(config.seed).choice(len(ds.x_train), 300, replace=False))
    raw = ds.x_train[idx].reshape(300, 8, 8)
    pooled = np.stack([raw[:, 0:2, 0:2].mean((1, 2)), raw[:, 0:2, 2:4].mean((1, 2)), raw[:, 6:8, 6:8].mean((1, 2))], 1)
    all_pooled = raw.reshape(300, 4, 2, 4, 2).mean((2, 4)).reshape(300, -1)
    expected = (pooled - all_pooled.mean(0)[[0, 1, 15]]) / all_pooled.std()  # the std of all pooled pixels
    assert x.shape == (300, 16) and targets.shape == (300, 10)
    np.testing.assert_allclose(np.asarray(x)[:, [0, 1, 15]], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(x).mean(0), 0, atol=1e-5)
    np.testing.assert_array_equal(np.argmax(targets, 1), ds.y_train[idx])


def test_edge_numbers_on_a_made_up_run():
    steps = np.arange(0, 200, 10)
    lam = np.concatenate([np.linspace(2, 9, 8), 10 + 0.3 * (-1) ** np.arange(12)])  # 9 >= 0.9 * 10 at step 70
    loss = np.exp(-np.arange(200) / 100) * (1 + 0.05 * (np.arange(200) % 2))  # falls, up every other step
    g = eos.edge_numbers(steps, lam, loss, limit=10.0, final=0.3)  # the last 6 records, 60 steps
    assert g["early_end_step"] == 70 and g["lambda_early_end"] == pytest.approx(9)
    assert g["sharpening"] == pytest.approx(4.5) and g["lambda_start"] == 2
    assert g["median_final"] == pytest.approx(10) and g["edge_ratio"] == pytest.approx(1)
    assert g["loss_window_start"] == pytest.approx(loss[140]) and g["loss_end"] == pytest.approx(loss[-1])
    assert g["rising_share"] == pytest.approx(30 / 59)
    never = eos.edge_numbers(steps, np.full(20, 3.0), loss, limit=10.0, final=0.3)
    assert never["early_end_step"] == 190 and never["sharpening"] == 1  # never reached: the last record


def _results(sharpening=4.0, edge=1.02, end=0.5, rising=0.2, sgd=0.6):
    gd = {"sharpening": sharpening, "edge_ratio": edge, "loss_window_start": 1.0, "loss_end": end,
          "rising_share": rising}
    return {"gd": [dict(gd), dict(gd, sharpening=6.0)], "sgd": {"batch": 32, "eta": 0.2, "ratio": sgd},
            "tiny_example_limit": 0.34247, "gd_sharpness_error_max": 5e-5,
            "gd_reference_check": {"steps": [1200, 1700], "max_relative_difference": 2e-5}}


def test_claims_hold_and_each_fails_on_the_other_side():
    claims, checks = eos.claims(_results(), eos.QUICK)
    assert len(claims) == 5 and all(c["holds"] and c["margin"] > 0 for c in claims)
    assert all(c["holds"] for c in checks)
    assert claims[0]["margin"] == pytest.approx(1 / 3)  # min over etas of (4 - 3) / 3
    assert claims[1]["margin"] == pytest.approx(0.08 / 1.1)  # the nearer bound, 1.1
    flips = [dict(sharpening=2.5), dict(edge=1.15), dict(end=1.01), dict(rising=0.0), dict(sgd=0.95)]
    for i, change in enumerate(flips):
        claims, _ = eos.claims(_results(**change), eos.QUICK)
        assert [c["holds"] for c in claims] == [j != i for j in range(5)], change
        assert claims[i]["margin"] <= 0
    low, _ = eos.claims(_results(edge=0.85), eos.QUICK)  # below the band fails too
    assert not low[1]["holds"] and low[1]["margin"] == pytest.approx(-0.05 / 0.9)
    bad = copy.deepcopy(_results())
    bad.update(tiny_example_limit=0.25, gd_sharpness_error_max=1e-3)
    bad["gd_reference_check"]["max_relative_difference"] = 0.02  # a record on the second eigenvalue
    assert len(eos.claims(bad, eos.QUICK)[1]) == 3 and not any(c["holds"] for c in eos.claims(bad, eos.QUICK)[1])


@pytest.mark.slow  # ~35 s of CPU: 1,800 full-batch steps at three etas, and SGD, with the tracker
def test_quick_run_holds_its_claims(tmp_path):
    payload = eos.main(eos.QUICK, tmp_path)
    saved = json.loads((tmp_path / "edge_of_stability.json").read_text())
    assert all(c["holds"] and c["margin"] > 0 for c in saved["claims"]), saved["claims"]
    assert all(c["holds"] for c in saved["checks"]), saved["checks"]
    r = saved["results"]
    assert len(r["gd_loss"]) == 3 and len(r["gd_loss"][0]) == eos.QUICK.steps
    assert r["gd"][0]["median_final"] == pytest.approx(np.median(eos.window(r["gd_sharpness"][0], 1 / 3)))
    assert payload["claims"] == saved["claims"]
    assert (tmp_path / "edge_of_stability.png").stat().st_size > 20_000
