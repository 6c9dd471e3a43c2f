import json

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from experiments import saddle_points as sp
from fflab import data, losses, mlp


def _ranks(a):
    """Average ranks (ties share the mean rank), as Spearman's rho needs."""
    a = np.asarray(a, float)
    order = np.argsort(a, kind="stable")
    ranks = np.empty(a.size)
    ranks[order] = np.arange(a.size)
    for value in np.unique(a):
        tie = a == value
        ranks[tie] = ranks[tie].mean()
    return ranks


def _problem(config):
    """The experiment's data and a float64 loss over flat parameters, rebuilt from fflab and numpy alone."""
    ds = data.load("synthetic", seed=config["seed"], n_train=config["n_train"], n_test=1, dim=config["dim"],
                   num_classes=config["num_classes"], teacher_width=config["teacher_width"],
                   teacher_seed=config["seed"])
    x, y = jnp.asarray(ds.x_train, jnp.float64), jnp.asarray(ds.y_train)
    sizes = [config["dim"], config["hidden"], config["num_classes"]]
    template = mlp.init(jax.random.key(0), sizes, dtype=jnp.float64)
    _, unravel = ravel_pytree(template)

    def loss(flat):
        params = unravel(flat)
        logits = mlp.apply(params, x, activation="tanh")
        penalty = 0.5 * sum(jnp.sum(leaf**2) for leaf in jax.tree_util.tree_leaves(params))
        return losses.cross_entropy(logits, y) + config["weight_decay"] * penalty

    return loss


def test_quick_config_claims_hold(tmp_path):
    payload = sp.main(sp.QUICK, tmp_path)
    assert all(c["holds"] for c in payload["claims"]), payload["claims"]
    saved = json.loads((tmp_path / "saddle_points.json").read_text())
    assert saved["config"]["hidden"] == sp.QUICK.hidden
    assert (tmp_path / "saddle_points.png").stat().st_size > 20_000
    r, config = saved["results"], saved["config"]
    points = r["points"]
    assert len(points) >= 5 and r["converged"] <= r["solves"]

    # Independent oracle for every kept point: gradient and full Hessian by jax.hessian on the flat loss,
    # eigenvalues by numpy. The point is critical and its saved index is the share of negative eigenvalues.
    loss = jax.jit(_problem(config))
    grad, hess = jax.jit(jax.grad(loss)), jax.jit(jax.hessian(loss))
    for p in points:
        flat = jnp.asarray(p["flat_params"], jnp.float64)
        np.testing.assert_allclose(float(loss(flat)), p["loss"], rtol=1e-12)
        assert float(jnp.linalg.norm(grad(flat))) <= 10 * config["grad_tol"]
        eigs = np.linalg.eigvalsh(np.asarray(hess(flat)))
        tol = 1e-6 * np.abs(eigs).max()
        assert np.sum(eigs < -tol) == p["n_negative"]
        np.testing.assert_allclose(p["index"], np.mean(eigs < -tol), atol=1e-12)
        assert (p["kind"] == "saddle") == (eigs[0] < -tol and eigs[-1] > tol)
    # Distinct points: no two share both loss and spectrum (deduplication worked).
    key = {(round(p["loss"], 9), p["n_negative"]) for p in points}
    assert len(key) == len(points)

    # Dauphin: Spearman from numpy ranks equals the saved one and is positive.
    loss_v = np.array([p["loss"] for p in points])
    index_v = np.array([p["index"] for p in points])
    rho = np.corrcoef(_ranks(index_v), _ranks(loss_v))[0, 1]
    np.testing.assert_allclose(rho, r["spearman"]["rho"], atol=1e-12)
    assert rho > 0.5

    # Choromanska: minima (no negative eigenvalue) sit within 10% of the loss range of the best.
    minima = loss_v[[p["n_negative"] == 0 for p in points]]  # counts checked against the oracle above
    assert minima.size >= 2
    assert minima.min() == loss_v.min()  # the best critical point is a minimum
    assert np.ptp(minima) < 0.1 * np.ptp(loss_v)

    # Escape: rerun plain gradient descent from the saved start with a loop written here.
    e = r["escape"]
    start = jnp.asarray(e["start_params"], jnp.float64)
    lr, steps = config["escape_lr"], e["steps"]
    assert float(jnp.linalg.norm(grad(start))) < 1e-9
    assert np.linalg.eigvalsh(np.asarray(hess(start)))[0] < 0  # it is a saddle
    end = jax.lax.fori_loop(0, steps, lambda i, f: f - lr * grad(f), start)
    np.testing.assert_allclose(float(loss(end)), e["plain_final"], atol=1e-10)
    assert abs(float(loss(end)) - float(loss(start))) < 1e-6
    plain = np.asarray(e["plain_curve"])
    noisy = np.asarray(e["noisy_curves"])
    assert plain.shape == (steps + 1,) and noisy.shape == (config["noise_seeds"], steps + 1)
    assert np.max(np.abs(plain - plain[0])) < 1e-6
    assert np.all(noisy[:, -1] < plain[0] - 1e-3)
    assert np.all(np.asarray(e["noisy_distance"]) > 1e3 * e["plain_distance"])
