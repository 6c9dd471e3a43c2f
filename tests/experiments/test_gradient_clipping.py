import copy
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fflab
from experiments import gradient_clipping as gc
from fflab import data


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gradient_clipping")
    payload = gc.main(gc.QUICK, out)
    return payload, json.loads((out / "gradient_clipping.json").read_text()), out


def _np_x50(w, b):
    """x_50 of the recurrence by plain float64 numpy, independent of jax."""
    x = gc.X0
    for _ in range(gc.STEPS_T):
        x = w / (1 + np.exp(-x)) + b
    return x


def _np_loss(w, b):
    return (1 / (1 + np.exp(-_np_x50(w, b))) - gc.TARGET) ** 2


def _fd_grad(w, b, eps=1e-7):
    return np.array([(_np_loss(w + eps, b) - _np_loss(w - eps, b)) / (2 * eps),
                     (_np_loss(w, b + eps) - _np_loss(w, b - eps)) / (2 * eps)])


def test_quick_claims_and_checks_hold_with_margins(run):
    payload, saved, out = run
    assert all(c["holds"] for c in payload["claims"] + payload["checks"]), payload["claims"] + payload["checks"]
    assert all(c["margin"] > 0 for c in saved["claims"])
    assert len(saved["checks"]) == 1 and "lr * c" in saved["checks"][0]["text"]
    assert not any("lr * c" in c["text"] for c in saved["claims"])  # the identity is not a claim
    assert (out / "gradient_clipping.png").stat().st_size > 20_000


def test_loss_grid_and_gradients_against_numpy(run):
    _, saved, _ = run
    c = saved["results"]["cliff"]
    w, b = np.asarray(c["w"]), np.asarray(c["b"])
    loss, gnorm = np.asarray(c["loss"]), np.asarray(c["grad_norm"])
    for i, j in np.random.default_rng(0).integers(0, len(w), size=(8, 2)):
        assert loss[i, j] == pytest.approx(_np_loss(w[j], b[i]), rel=1e-6, abs=1e-15)  # saved to 7 digits
    for i, j in ((5, 5), (len(b) - 5, 5), (5, len(w) - 5), (len(b) // 2, 10)):  # smooth away from the wall
        assert gnorm[i, j] == pytest.approx(np.linalg.norm(_fd_grad(w[j], b[i])), rel=1e-4, abs=1e-10)
    decades = math.log10(gnorm.max() / gnorm.min())
    assert decades == pytest.approx(saved["results"]["grad_norm_decades"], abs=1e-6) and decades > 4


def test_wall_separates_basins_and_gradient_explodes_near_it(run):
    _, saved, _ = run
    c = saved["results"]["cliff"]
    assert _np_x50(gc.QUICK.cliff_w, c["wall_b"] - 1e-6) < 0 < _np_x50(gc.QUICK.cliff_w, c["wall_b"] + 1e-6)
    grads = np.max(c["wall_grad_norm"], axis=1)
    assert grads[0] < 1 and grads.max() == saved["results"]["wall_peak_grad_norm"] > 1e6
    low, high = np.asarray(c["wall_loss"])[2]  # sigmoid(x_50) ~0 below the wall, ~1 above
    assert low > 0.3 and high < 0.1


def test_catapult_step_is_lr_times_gradient_and_clipped_steps_are_bounded(run):
    _, saved, _ = run
    r = saved["results"]
    path = np.asarray(r["cliff"]["paths"]["unclipped"])
    jumps = np.linalg.norm(np.diff(path, axis=0), axis=1)
    k = int(jumps.argmax())
    np.testing.assert_allclose(path[k + 1] - path[k], -gc.QUICK.lr * _fd_grad(*path[k]), rtol=1e-4)
    assert jumps.max() == pytest.approx(r["max_step"]["unclipped"], rel=1e-12) and jumps.max() > 10
    clipped = np.linalg.norm(np.diff(np.asarray(r["cliff"]["paths"]["clipped"]), axis=0), axis=1)
    assert clipped.max() <= gc.QUICK.lr * gc.QUICK.clip * (1 + 1e-9)
    assert r["cliff"]["path_loss"]["clipped"][-1] < gc.QUICK.success_loss < r["cliff"]["path_loss"]["unclipped"][-1]


def test_success_fractions_recount_and_a_clipped_start_reruns_by_hand(run):
    _, saved, _ = run
    r, config = saved["results"], gc.QUICK
    for label in gc.CLIPS:
        final = np.asarray(r["cliff"]["random_final_loss"][label], dtype=float)
        assert final.shape == (config.num_starts,)
        assert r["success_fraction"][label] == pytest.approx(np.mean(final < config.success_loss))
    # Start 3, clipped descent written out here (rescale the gradient to norm c when longer), no optax.
    p, grad = np.asarray(r["cliff"]["random_starts"])[3], jax.jit(jax.grad(gc.loss))
    for _ in range(config.descent_steps):
        g = np.asarray(grad(jnp.asarray(p)))
        p = p - config.lr * g * min(1.0, config.clip / np.linalg.norm(g))
    assert r["cliff"]["random_final_loss"]["clipped"][3] == pytest.approx(_np_loss(*p), rel=1e-6, abs=1e-20)


def test_deep_net_counts_and_initial_losses(run):
    _, saved, _ = run
    deep, config = saved["results"]["deep"], gc.QUICK
    curves = np.asarray(deep["loss"], dtype=float)  # (seed, run, epoch)
    assert curves.shape == (config.seeds, 2 * len(config.learning_rates), config.epochs + 1)
    diverged = ~np.isfinite(curves[..., -1]) | (curves[..., -1] > curves[..., 0])
    assert diverged.tolist() == deep["diverged"]
    for j, run_name in enumerate(deep["runs"]):
        assert saved["results"]["diverged"][run_name] == diverged[:, j].sum()
    # The initial loss of seed 0, from its own init and the preset's loss, not through the lanes.
    ds = data.load("digits")
    model = fflab.classifier("relu")
    k_init, _ = jax.random.split(jax.random.split(jax.random.key(config.seed + 1), config.seeds)[0])
    params, _ = model.init(k_init, deep["sizes"], dtype=jnp.float64)
    expected = float(model.loss_fn(params, jnp.asarray(ds.x_train, jnp.float64), jnp.asarray(ds.y_train)))
    np.testing.assert_allclose(curves[0, :, 0], expected, rtol=1e-5)


def test_claims_fail_on_the_other_side(run):
    _, saved, _ = run
    r = saved["results"]
    flipped = copy.deepcopy(r)
    flipped.update(grad_norm_decades=3.0, wall_peak_grad_norm=5e5, max_step={**r["max_step"], "unclipped": 2.0},
                   success_fraction={"unclipped": 0.9, "clipped": 0.8},
                   diverged={"1/unclipped": 2, "1/clipped": 3})
    claims, checks = gc.claims(flipped, gc.QUICK)
    assert not any(c["holds"] for c in claims) and all(c["margin"] < 0 for c in claims)
    claims, checks = gc.claims({**r, "max_step": {**r["max_step"], "clipped_any_start": 1.0}}, gc.QUICK)
    assert all(c["holds"] for c in claims) and not checks[0]["holds"]


def test_descent_path_matches_an_explicit_optax_loop(run):
    _, saved, _ = run
    path = np.asarray(saved["results"]["cliff"]["paths"]["clipped"])
    opt = optax.chain(optax.clip_by_global_norm(gc.QUICK.clip), optax.sgd(gc.QUICK.lr))
    p = jnp.asarray(gc.QUICK.start, jnp.float64)
    state, grad = opt.init(p), jax.jit(jax.grad(gc.loss))
    for t in range(20):
        np.testing.assert_allclose(path[t], p, rtol=1e-12)
        updates, state = opt.update(grad(p), state, p)
        p = optax.apply_updates(p, updates)


def test_find_wall_rejects_a_bracket_in_one_basin():
    with pytest.raises(ValueError, match="no wall"):
        gc.find_wall(6.0, 1.0, 2.0)  # both ends on the high branch
    with pytest.raises(ValueError, match="no wall"):
        gc.find_wall(2.0, -8.0, 4.0)  # w = 2: one fixed point, x_50 moves smoothly with b
