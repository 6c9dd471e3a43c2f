import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import fflab
from experiments import _common
from experiments import scaling_symmetry as ss
from fflab import data, losses, mlp


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("scaling_symmetry")
    payload = ss.main(ss.QUICK, out)
    return payload, json.loads((out / "scaling_symmetry.json").read_text()), out


def test_claims_checks_and_files(run):
    payload, saved, out = run
    assert all(c["holds"] and c["margin"] > 0 for c in saved["claims"]), saved["claims"]
    assert all(c["holds"] for c in saved["checks"])
    spread = saved["claims"][0]["measured"]["largest spread of y_k"]
    assert saved["claims"][0]["margin"] == pytest.approx(spread / 0.05 - 1)
    lam = np.asarray(saved["claims"][2]["measured"])
    assert saved["claims"][2]["margin"] == pytest.approx(lam.max() / lam.min() / 2 - 1)
    for name in ("scaling_symmetry.png", "scaling_symmetry_mlp.png"):
        assert (out / name).stat().st_size > 10_000


def test_tiny_paths_against_closed_forms(run):
    cfg = ss.QUICK
    t = run[1]["results"]["tiny"]
    w1, w2 = cfg.tiny_start
    lr, y0, r = cfg.tiny_lr, w1 * w2, w1 * w2 - 1.5
    # One GD step from (c w1, w2 / c): y1 = y0 - 2 lr r (c^2 w1^2 + w2^2 / c^2) + 4 lr^2 r^2 y0.
    expected = [y0 - 2 * lr * r * (c**2 * w1**2 + w2**2 / c**2) + 4 * lr**2 * r**2 * y0 for c in cfg.scales]
    np.testing.assert_allclose(np.asarray(t["gd_outputs"])[:, 1], expected, rtol=1e-10)
    # Newton from the unscaled start, with the closed-form gradient and Hessian; every start gives the same y_k.
    newton, w = np.asarray(t["newton_outputs"]), np.array(cfg.tiny_start)
    for k in range(1, 4):
        a, b = w
        hess = [[2 * b * b, 4 * a * b - 3], [4 * a * b - 3, 2 * a * a]]
        w = w - np.linalg.solve(hess, 2 * (a * b - 1.5) * np.array([b, a]))
        np.testing.assert_allclose(newton[:, k], w[0] * w[1], rtol=1e-9)


def test_mlp_rows_scale_as_predicted(run):
    rows = run[1]["results"]["mlp"]["rows"]
    base = next(r for r in rows if r["c"] == 1.0)
    for r in rows:
        c = r["c"]
        assert r["output_diff"] == 0.0 and r["grad_err"] < 1e-12  # powers of two: exact
        np.testing.assert_allclose(r["grad_norm_ratio"], [1 / c, c], rtol=1e-12)
        np.testing.assert_allclose(r["block_ratio"], base["block_ratio"] * c**-4, rtol=1e-10)
        assert r["congruence_err"] < 1e-12
        assert r["loss_trace"][-1] == pytest.approx(r["final_loss"]) and len(r["loss_trace"]) == ss.QUICK.mlp_steps + 1
    assert base["function_distance"] == 0.0


def test_lanes_train_like_plain_gradient_descent(run):
    # The lane for c = 1 is full-batch GD on the mean cross-entropy: redo it by hand from the same init.
    cfg = ss.QUICK
    ds = data.load("synthetic", seed=cfg.seed, n_train=cfg.n_train, n_test=16, dim=cfg.dim, num_classes=cfg.num_classes)
    params, _ = fflab.classifier("relu").init(jax.random.PRNGKey(cfg.seed), [cfg.dim, *cfg.hidden, cfg.num_classes])

    def loss(p):
        return losses.cross_entropy(mlp.apply(p, jnp.asarray(ds.x_train), activation="relu"), jnp.asarray(ds.y_train))

    @jax.jit
    def three_steps(p):
        trace = []
        for _ in range(3):
            value, g = jax.value_and_grad(loss)(p)
            p, trace = jax.tree_util.tree_map(lambda a, b: a - cfg.mlp_lr * b, p, g), [*trace, value]
        return jnp.stack(trace)

    lane = next(r for r in run[1]["results"]["mlp"]["rows"] if r["c"] == 1.0)
    np.testing.assert_allclose(lane["loss_trace"][:3], three_steps(params), rtol=1e-10)


_SIZES = [3, 4, 5, 2]
_UNRAVEL = ravel_pytree([{"W": np.zeros((a, b)), "b": np.zeros(b)}
                         for a, b in zip(_SIZES[:-1], _SIZES[1:], strict=True)])[1]


@jax.jit
def _hessian(theta, x, y):
    return jax.hessian(lambda t: losses.cross_entropy(mlp.apply(_UNRAVEL(t), x, activation="relu"), y))(theta)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rescale_against_numpy_and_jax_hessian(seed):
    rng = np.random.default_rng(seed)  # non-zero biases exercise the bias rule
    params = [{"W": rng.normal(size=(a, b)), "b": 0.1 + rng.normal(size=b)}
              for a, b in zip(_SIZES[:-1], _SIZES[1:], strict=True)]
    x, y = rng.normal(size=(7, 3)), np.arange(7) % 2
    c, layer = 3.0, 1

    def forward(ps):
        h = x
        for p in ps[:-1]:
            h = np.maximum(h @ p["W"] + p["b"], 0)
        return h @ ps[-1]["W"] + ps[-1]["b"]

    scaled = ss.rescale(params, c, layer)
    np.testing.assert_allclose(forward(scaled), forward(params), rtol=1e-10, atol=1e-12)
    flat, flat_c = _common.host_flat(params), _common.host_flat(scaled)
    a = _common.host_flat(ss.rescale(jax.tree_util.tree_map(np.ones_like, params), c, layer))
    np.testing.assert_allclose(flat_c, a * flat, rtol=1e-12)
    H, H_c = np.asarray(_hessian(flat, x, y)), np.asarray(_hessian(flat_c, x, y))
    np.testing.assert_allclose(H_c, H / np.outer(a, a), atol=1e-10)
    e, e_c = np.linalg.eigvalsh(H), np.linalg.eigvalsh(H_c)  # Sylvester: a congruence keeps the signs
    assert np.sum(e < -1e-9) == np.sum(e_c < -1e-9) and np.sum(e > 1e-9) == np.sum(e_c > 1e-9)
    with pytest.raises(ValueError, match="c > 0"):
        ss.rescale(params, -1.0, 0)
    with pytest.raises(ValueError, match="next layer"):
        ss.rescale(params, 2.0, 2)


def test_each_claim_can_fail():
    # Tiny starts c and (w2 / w1) / c have equal c^2 w1^2 + w2^2 / c^2: one GD path in function space.
    w = np.array(ss.QUICK.tiny_start)
    pair = jnp.asarray([[c * w[0], w[1] / c] for c in (1.0, w[1] / w[0])] * 2)  # four starts: the QUICK program
    gd, _ = ss.tiny_paths(pair, ss.QUICK.tiny_lr, steps=ss.QUICK.tiny_steps)
    spread = float(np.ptp(np.asarray(gd).prod(axis=-1), axis=0).max())
    assert spread < 1e-9 and not _common.above(spread, 0.05)[0]
    # Without steps GD cannot tell equivalent starts apart: the losses agree; and lambda_max flat in c fails too.
    assert not _common.above(float(np.ptp([0.49, 0.49])), 1e-3)[0]
    assert not _common.above(10.0 / 9.0, 2)[0]
