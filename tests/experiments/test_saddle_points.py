import copy
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from experiments import saddle_points as sp
from fflab import data, losses, mlp


def _field_args(d, top, m=32, seed=0):
    rng = np.random.default_rng(seed)
    mask = (np.arange(top) < d).astype(float)
    return rng.standard_normal(m), rng.standard_normal((m, top)) * mask, rng.uniform(0, 2 * np.pi, m), mask


def _np_field(x, a, w, phi, mask):
    return np.sqrt(2 / len(a)) * np.sum(a * np.cos(w @ x + phi)) + 0.5 * np.sum((1 - mask) * x**2)


def test_field_is_the_random_fourier_sum_plus_a_bowl_in_the_padded_coordinates():
    args = _field_args(2, 4)
    xs = np.random.default_rng(1).standard_normal((5, 4))
    values = jax.jit(jax.vmap(sp.field, (0, None, None, None, None)))(xs, *args)
    np.testing.assert_allclose(values, [_np_field(x, *args) for x in xs], rtol=1e-12)
    h = np.asarray(jax.jit(jax.hessian(sp.field))(jnp.zeros(4), *args))
    np.testing.assert_allclose(h[2:, 2:], np.eye(2), atol=1e-12)  # the padded directions: a minimum, unit curvature
    np.testing.assert_allclose(h[:2, 2:], 0, atol=1e-12)


def test_critical_points_of_a_2d_field_against_jax_hessian_and_numpy():
    args = tuple(map(jnp.asarray, _field_args(2, 3)))
    starts = [jnp.asarray(v) for v in np.c_[np.random.default_rng(2).uniform(0, 4, (12, 2)), np.zeros(12)]]
    points, converged = sp.critical_points(sp.field, starts, args, method="newton", max_iter=50, grad_tol=1e-10,
                                           dims=2)
    assert 3 <= len(points) <= converged <= 12 and sum(p["copies"] for p in points) == converged
    grad, hess = jax.jit(jax.grad(sp.field)), jax.jit(jax.hessian(sp.field))
    for p in points:
        assert float(jnp.linalg.norm(grad(p["params"], *args))) <= 1e-10
        eigs = np.linalg.eigvalsh(np.asarray(hess(p["params"], *args))[:2, :2])
        assert p["n_negative"] == np.sum(eigs < 0) and p["index"] == np.mean(eigs < 0)
        assert p["kind"] == {0: "minimum", 1: "saddle", 2: "maximum"}[int(np.sum(eigs < 0))]
        assert abs(float(p["params"][2])) < 1e-12  # the padded coordinate sits at its minimum
    locations = np.array([np.asarray(p["params"]) for p in points])
    gaps = np.linalg.norm(locations[:, None] - locations[None], axis=-1) + np.eye(len(points))
    assert gaps.min() > 1e-6  # distinct points


def test_escape_steps_reads_the_first_tick_below_the_line_and_censors():
    curves = np.array([[1.0, 0.99, 0.95, 0.5], [1.0, 1.0, 1.0, 1.0], [2.0, 1.0, 0.0, 0.0]])
    steps = sp.escape_steps(curves, np.array([1.0, 1.0, 2.0]), 0.5, 0.1, tick=10, budget=30)
    # lane 0 must fall below 1 - 0.1 * 0.5 = 0.95 (strictly): tick 3; lane 1 never (budget + tick); lane 2 at tick 1
    np.testing.assert_array_equal(steps, [30, 40, 10])


def _results():
    """Named results in the shape main saves, with every claim on its holding side."""
    return {
        "net": {"spearman": {"rho": 0.9, "p_value": 1e-6}, "distinct": 20, "minima_losses": [0.1, 0.1001],
                "minima_spread_ratio": 0.01, "counts": {"minimum": 2, "saddle": 18, "maximum": 0, "degenerate": 0}},
        "escape": {"saddles": [{"loss": 1.0}, {"loss": 0.5}],
                   "speedup_at_closest": {"SGD": [0.3, 0.2], "GD + noise": [0.8, 0.7]}},
        "fields": {"dims": [1, 2, 4, 8], "minima_share": [0.5, 0.25, 0.05, 0.0],
                   "spearman": {"rho": -1.0, "p_value": 1e-9},
                   "counts": [{"d": d, "minimum": n, "maximum": n, "saddle": 100 - 2 * n}
                              for d, n in ((1, 50), (2, 25), (4, 5), (8, 0))]},
    }


def test_claims_hold_on_one_side_and_fail_on_the_other():
    claims, checks = sp.claims(_results(), sp.QUICK)
    assert len(claims) == 7 and all(c["holds"] and c["margin"] > 0 for c in claims) and checks[0]["holds"]
    r = copy.deepcopy(_results())
    r["net"].update(spearman={"rho": -0.2, "p_value": 0.3}, minima_spread_ratio=0.3,
                    counts={"minimum": 5, "saddle": 4, "maximum": 0, "degenerate": 0})
    r["escape"]["speedup_at_closest"] = {"SGD": [0.3, -0.1], "GD + noise": [-0.05, 0.7]}
    r["fields"].update(minima_share=[0.5, 0.05, 0.1, 0.02], spearman={"rho": 0.2, "p_value": 0.7})
    r["fields"]["counts"][3]["maximum"] = 60  # 80 minima against 140 maxima: a biased search
    claims, checks = sp.claims(r, sp.QUICK)
    assert not any(c["holds"] for c in claims) and all(c["margin"] < 0 for c in claims)
    assert not checks[0]["holds"]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("saddle_points")
    sp.main(sp.QUICK, out)
    assert (out / "saddle_points.png").stat().st_size > 50_000
    return json.loads((out / "saddle_points.json").read_text())


def _net_loss(config):
    """The experiment's data and a float64 loss over flat parameters, rebuilt from fflab and numpy alone."""
    ds = data.load("synthetic", seed=config["seed"], n_train=config["n_train"], n_test=1, dim=config["dim"],
                   num_classes=config["num_classes"], teacher_width=config["teacher_width"],
                   teacher_seed=config["seed"])
    x, y = jnp.asarray(ds.x_train, jnp.float64), jnp.asarray(ds.y_train)
    unravel = ravel_pytree(mlp.init(jax.random.key(0), [config["dim"], config["hidden"], config["num_classes"]],
                                    dtype=jnp.float64))[1]

    def loss(flat, xs=x, ys=y):
        params = unravel(flat)
        penalty = 0.5 * sum(jnp.sum(leaf**2) for leaf in jax.tree_util.tree_leaves(params))
        return losses.cross_entropy(mlp.apply(params, xs, activation="tanh"), ys) + config["weight_decay"] * penalty

    return loss, x, y


def _ranks(a):
    """Average ranks (ties share the mean rank), as Spearman's rho needs."""
    a = np.asarray(a, float)
    ranks = np.empty(a.size)
    ranks[np.argsort(a, kind="stable")] = np.arange(a.size)
    for value in np.unique(a):
        ranks[a == value] = ranks[a == value].mean()
    return ranks


@pytest.mark.slow  # the QUICK run: about 30 s of CPU (two root-finder programs, three lanes epochs, L-BFGS)
def test_quick_net_points_against_jax_hessian_and_the_claims(quick):
    r, config = quick["results"], quick["config"]
    loss, _, _ = _net_loss(config)
    loss = jax.jit(loss)
    grad, hess = jax.jit(jax.grad(loss)), jax.jit(jax.hessian(loss))
    for p in r["net"]["points"]:
        flat = jnp.asarray(p["flat_params"])
        assert float(loss(flat)) == pytest.approx(p["loss"], rel=1e-12)
        assert float(jnp.linalg.norm(grad(flat))) <= 10 * config["grad_tol"]
        eigs = np.linalg.eigvalsh(np.asarray(hess(flat)))
        assert np.sum(eigs < -1e-6 * np.abs(eigs).max()) == p["n_negative"]
    index = [p["index"] for p in r["net"]["points"]]
    loss_v = [p["loss"] for p in r["net"]["points"]]
    rho = np.corrcoef(_ranks(index), _ranks(loss_v))[0, 1]
    assert rho == pytest.approx(r["net"]["spearman"]["rho"], abs=1e-12) and rho > 0.5
    held = {c["text"].split(":")[0]: c["holds"] for c in quick["claims"]}
    assert held == {"Dauphin et al. 2014": True, "Choromanska et al. 2015": True,
                    "saddle points outnumber minima among the critical points found in the net": True,
                    "noisy gradient g helps escape saddles (lecture)": False,
                    "noise helps escape saddles (Ge et al. 2015)": True, "low dimension": True, "high dimension": True}
    assert all(c["holds"] for c in quick["checks"])


@pytest.mark.slow
def test_quick_escape_reruns_by_hand_and_noise_share(quick):
    r, config = quick["results"], quick["config"]
    e = r["escape"]
    loss, x, y = _net_loss(config)
    grad = jax.jit(jax.grad(loss))
    lane_loss = jax.jit(loss)
    best = r["net"]["best_loss"]
    # Lane 0 (the first saddle, the largest delta, seed 0): plain gradient descent written out here.
    f = jnp.asarray(e["start"][0])
    line = e["saddles"][0]["loss"] - config["escape_drop"] * (e["saddles"][0]["loss"] - best)
    step = 0
    while float(lane_loss(f)) >= line and step <= config["escape_steps"]:
        for _ in range(e["tick"]):
            f = f - config["sgd_lr"] * grad(f)
        step += e["tick"]
    assert step == e["steps"]["GD"][0][0][0]
    # The noise share at each saddle: per-example gradients one by one, eigenvectors by numpy.
    hess = jax.jit(jax.hessian(loss))
    for s, saddle in enumerate(e["saddles"]):
        centre = jnp.asarray(saddle["flat_params"])
        eigs, vecs = np.linalg.eigh(np.asarray(hess(centre)))
        assert eigs[0] == pytest.approx(saddle["lambda_min"], rel=1e-8)
        assert np.linalg.norm(np.asarray(e["start"])[s * len(e["deltas"]) * config["escape_seeds"]] - centre) == (
            pytest.approx(e["deltas"][0], rel=1e-9))  # lane order: saddle, delta, seed
        g = np.stack([np.asarray(grad(centre, x[i:i + 1], y[i:i + 1])) for i in range(len(x))])
        g = g - g.mean(0)
        share = np.sum((g @ vecs[:, eigs < 0]) ** 2) / np.sum(g**2)
        assert share == pytest.approx(saddle["noise_share"], abs=1e-3)
        fastest = np.sum((g @ vecs[:, eigs <= eigs[0] * (1 - 1e-6)]) ** 2) / np.sum(g**2)
        assert fastest == pytest.approx(saddle["noise_share_fastest"], abs=1e-10)
    # Minibatch noise does not help where it has no component along the escape directions, and noise helps
    # everywhere: the measured speed-ups behind the two escape claims.
    for saddle, sgd, noisy in zip(e["saddles"], *e["speedup_at_closest"].values(), strict=True):
        assert noisy > 0.2
        if saddle["noise_share"] < 1e-10:
            assert abs(sgd) < 0.15


@pytest.mark.slow
def test_quick_fields_recount_and_the_2d_points_are_critical(quick):
    f = quick["results"]["fields"]
    for c, share in zip(f["counts"], f["minima_share"], strict=True):
        assert c["minimum"] + c["saddle"] + c["maximum"] + c["degenerate"] == c["points"]
        assert share == c["minimum"] / c["points"]
    assert f["counts"][0]["saddle"] == 0  # one variable: minima and maxima only
    pic = f["picture"]
    a, w, phi = (np.asarray(pic[k]) for k in ("a", "w", "phi"))
    c = np.sqrt(2 / len(a))
    for x0, x1, kind in pic["points"]:
        z = w @ np.array([x0, x1]) + phi
        assert np.linalg.norm(-c * (a * np.sin(z)) @ w) < 1e-8  # the numpy gradient vanishes
        eigs = np.linalg.eigvalsh(-c * (w.T * (a * np.cos(z))) @ w)
        assert kind == {0: "minimum", 1: "saddle", 2: "maximum"}[int(np.sum(eigs < 0))]
