import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import gradient_clipping as gc


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gradient_clipping")
    payload = gc.main(gc.QUICK, out)
    return payload, json.loads((out / "gradient_clipping.json").read_text()), out


def _np_loss(w, b):
    """The cliff's loss by plain float64 numpy, independent of jax."""
    x = gc.X0
    for _ in range(gc.STEPS_T):
        x = w / (1 + np.exp(-x)) + b
    return (1 / (1 + np.exp(-x)) - gc.TARGET) ** 2


def _fd_grad(w, b, eps=1e-7):
    return np.array([(_np_loss(w + eps, b) - _np_loss(w - eps, b)) / (2 * eps),
                     (_np_loss(w, b + eps) - _np_loss(w, b - eps)) / (2 * eps)])


def test_quick_config_claims_hold_and_files_exist(run):
    payload, saved, out = run
    assert all(c["holds"] for c in payload["claims"]), [c for c in payload["claims"] if not c["holds"]]
    assert saved["config"]["lr"] == gc.QUICK.lr
    for name in ("gradient_clipping", "gradient_clipping_descent"):
        assert (out / f"{name}.png").stat().st_size > 10_000


def test_loss_grid_and_gradients_against_numpy(run):
    _, saved, _ = run
    c = saved["results"]["cliff"]
    w, b = np.asarray(c["w"]), np.asarray(c["b"])
    loss, gnorm = np.asarray(c["loss"]), np.asarray(c["grad_norm"])
    rng = np.random.default_rng(0)
    for i, j in rng.integers(0, len(w), size=(8, 2)):
        assert loss[i, j] == pytest.approx(_np_loss(w[j], b[i]), rel=1e-6, abs=1e-15)  # saved to 7 digits
    # Away from the wall the surface is smooth: central differences match the autodiff gradient norm.
    for i, j in ((5, 5), (len(b) - 5, 5), (5, len(w) - 5), (len(b) // 2, 10)):
        fd = np.linalg.norm(_fd_grad(w[j], b[i]))
        assert gnorm[i, j] == pytest.approx(fd, rel=1e-4, abs=1e-10)
    assert math.log10(gnorm.max() / gnorm.min()) > 4


def test_wall_separates_basins_and_gradient_explodes_near_it(run):
    _, saved, _ = run
    c = saved["results"]["cliff"]
    w = gc.QUICK.cliff_w
    below, above = gc.final_state(w, c["wall_b"] - 1e-6), gc.final_state(w, c["wall_b"] + 1e-6)
    assert below < 0 < above  # the low and high fixed points of x -> w sigmoid(x) + b
    grads = np.maximum(c["wall_grad_norm_below"], c["wall_grad_norm_above"])
    assert grads[0] < 1 and grads.max() > 1e6  # far away modest, near the wall enormous
    # Loss jumps across the wall: sigmoid(x_50) is ~0 on one side and ~1 on the other.
    low, high = np.asarray(c["wall_loss"])[2]
    assert low > 0.3 and high < 0.1


def test_catapult_step_is_lr_times_gradient_and_clipped_steps_are_bounded(run):
    _, saved, _ = run
    paths = saved["results"]["cliff"]["paths"]
    lr, clip = gc.QUICK.lr, gc.QUICK.clip
    path = np.asarray(paths["unclipped"]["path"])
    k = paths["unclipped"]["max_jump_step"]
    step = path[k + 1] - path[k]
    np.testing.assert_allclose(step, -lr * _fd_grad(*path[k]), rtol=1e-4)  # plain GD: the jump is lr * grad
    assert np.linalg.norm(step) > 10
    clipped = np.asarray(paths["clipped"]["path"])
    jumps = np.linalg.norm(np.diff(clipped, axis=0), axis=1)
    assert jumps.max() <= lr * clip * (1 + 1e-9)
    assert paths["clipped"]["final_loss"] < gc.QUICK.success_loss < paths["unclipped"]["final_loss"]


def test_success_fractions_recount(run):
    _, saved, _ = run
    rs = saved["results"]["cliff"]["random_starts"]
    for label in ("unclipped", "clipped"):
        final = np.asarray(rs[label]["final_loss"], dtype=float)
        assert final.shape == (gc.QUICK.num_starts,)
        assert rs[label]["success_fraction"] == pytest.approx(np.mean(final < gc.QUICK.success_loss))
    assert rs["clipped"]["success_fraction"] > rs["unclipped"]["success_fraction"]
    assert np.max(rs["clipped"]["max_jump"]) <= gc.QUICK.lr * gc.QUICK.clip * (1 + 1e-9)


def test_deep_net_divergence_counts(run):
    _, saved, _ = run
    runs = saved["results"]["deep"]["runs"]
    for key, entry in runs.items():
        assert len(entry["runs"]) == gc.QUICK.seeds
        recount = 0
        for r in entry["runs"]:
            loss = np.asarray(r["loss"], dtype=float)
            diverged = not np.isfinite(loss[-1]) or loss[-1] > loss[0]
            assert diverged == r["diverged"], key
            recount += diverged
        assert recount == entry["diverged"]
    top = max(gc.QUICK.learning_rates)
    assert runs[f"{top:g}/unclipped"]["diverged"] > gc.QUICK.seeds / 2
    assert runs[f"{top:g}/clipped"]["diverged"] <= 1


def test_descend_matches_an_explicit_optax_loop():
    with jax.enable_x64(True):
        start = jnp.asarray([[1.0, -1.0]])
        opt = gc.make_optimizer(2.0, 0.05)
        path, values = gc.descend(opt, start, 5)
        p, state = start[0], opt.init(start[0])
        grad = jax.jit(jax.grad(gc.loss))  # traced once; an eager grad re-traces the 50-step scan every call
        for t in range(5):
            np.testing.assert_allclose(path[0, t], p, rtol=1e-12)
            g = grad(p)
            updates, state = opt.update(g, state, p)
            assert float(optax.tree.norm(updates)) <= 2.0 * 0.05 * (1 + 1e-12)
            p = optax.apply_updates(p, updates)
        np.testing.assert_allclose(path[0, -1], p, rtol=1e-12)
        assert float(values[0, -1]) == pytest.approx(_np_loss(*np.asarray(p)), rel=1e-9)


def test_find_wall_rejects_a_bracket_in_one_basin():
    with pytest.raises(ValueError, match="no wall"):
        gc.find_wall(6.0, 1.0, 2.0)  # both ends on the high branch
    with pytest.raises(ValueError, match="no wall"):
        gc.find_wall(2.0, -8.0, 4.0)  # w = 2: one fixed point, x_50 moves smoothly with b
