import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from experiments import scaling_symmetry as ss
from fflab import mlp


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("scaling_symmetry")
    payload = ss.main(ss.QUICK, out)
    return payload, json.loads((out / "scaling_symmetry.json").read_text()), out


def test_claims_hold_and_files(run):
    payload, saved, out = run
    assert all(c["holds"] for c in payload["claims"]), [c for c in payload["claims"] if not c["holds"]]
    assert saved["config"]["scales"] == list(ss.QUICK.scales)
    for name in ("scaling_symmetry.png", "scaling_symmetry_mlp.png"):
        assert (out / name).stat().st_size > 10_000


def test_tiny_gradients_and_first_step_closed_form(run):
    cfg = ss.QUICK
    t = run[1]["results"]["tiny"]
    w1, w2 = cfg.tiny_start
    r = w1 * w2 - 1.5
    np.testing.assert_allclose(t["grad"], [2 * r * w2, 2 * r * w1], rtol=1e-12)
    # Scaling by 2 is exact in binary floating point, so the ratios are exactly 1/2 and 2.
    assert t["output_doubled"] == t["output"]
    np.testing.assert_array_equal(np.asarray(t["grad_doubled"]) / np.asarray(t["grad"]), [0.5, 2.0])
    # One GD step from (c w1, w2 / c): y1 = y0 - 2 lr r (c^2 w1^2 + w2^2 / c^2) + 4 lr^2 r^2 y0.
    lr, y0 = cfg.tiny_lr, w1 * w2
    expected = [y0 - 2 * lr * r * (c**2 * w1**2 + w2**2 / c**2) + 4 * lr**2 * r**2 * y0 for c in cfg.scales]
    np.testing.assert_allclose(np.asarray(t["gd_outputs"])[:, 1], expected, rtol=1e-10)
    assert np.ptp(np.asarray(t["gd_outputs"])[:, 1]) > 0.1


def test_newton_is_equivariant_gd_is_not(run):
    cfg = ss.QUICK
    t = run[1]["results"]["tiny"]
    newton = np.asarray(t["newton_outputs"])
    np.testing.assert_allclose(newton, np.broadcast_to(newton[:1], newton.shape), atol=1e-9)
    # Closed-form Newton from the unscaled start, in numpy.
    w = np.array(cfg.tiny_start)
    for k in range(1, 4):
        a, b = w
        g = 2 * (a * b - 1.5) * np.array([b, a])
        H = np.array([[2 * b * b, 4 * a * b - 3], [4 * a * b - 3, 2 * a * a]])
        w = w - np.linalg.solve(H, g)
        np.testing.assert_allclose(newton[0, k], w[0] * w[1], rtol=1e-9)
    assert np.max(np.ptp(np.asarray(t["gd_outputs"]), axis=0)) > 0.05


def test_tiny_condition_number_closed_form(run):
    cfg = ss.QUICK
    t = run[1]["results"]["tiny"]
    w1, w2 = cfg.tiny_start
    p = w1 * w2
    cs = np.asarray(t["cond_scales"])
    trace = 2 * (w2**2 / cs**2 + cs**2 * w1**2)
    det = 4 * p**2 - (4 * p - 3) ** 2  # the same at every equivalent point
    disc = np.sqrt(trace**2 - 4 * det)
    np.testing.assert_allclose(t["condition"], (trace + disc) / (trace - disc), rtol=1e-8)
    # Smallest at the balanced point c^2 = |w2 / w1|, where the trace is smallest.
    balanced = math.sqrt(w2 / w1)
    trace_b = 4 * p
    kappa_b = (trace_b + math.sqrt(trace_b**2 - 4 * det)) / (trace_b - math.sqrt(trace_b**2 - 4 * det))
    assert np.min(t["condition"]) >= kappa_b - 1e-9
    assert abs(run[1]["results"]["balanced_scale"] - balanced) < 1e-12


def test_mlp_rows_scale_as_predicted(run):
    rows = run[1]["results"]["mlp"]["rows"]
    base = next(r for r in rows if r["c"] == 1.0)
    for r in rows:
        c = r["c"]
        assert r["output_max_abs_diff"] == 0.0  # powers of two: exact
        np.testing.assert_allclose(r["grad_norm_ratio_layer"], 1 / c, rtol=1e-12)
        np.testing.assert_allclose(r["grad_norm_ratio_next"], c, rtol=1e-12)
        np.testing.assert_allclose(r["block_ratio"], base["block_ratio"] * c**-4, rtol=1e-10)
        assert r["hessian_congruence_err"] < 1e-12
    lam = [r["lambda_max"] for r in rows]
    assert max(lam) / min(lam) > 2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rescale_against_numpy_and_jax_hessian(seed):
    sizes = [3, 4, 5, 2]
    params = mlp.init(jax.random.PRNGKey(seed), sizes)
    params = [{"W": p["W"], "b": p["b"] + 0.1} for p in params]  # non-zero biases exercise the bias rule
    x = jax.random.normal(jax.random.PRNGKey(10 + seed), (7, 3))
    y = jnp.arange(7) % 2
    c, layer = 3.0, 1

    def forward(ps):
        h = np.asarray(x)
        for p in ps[:-1]:
            h = np.maximum(h @ np.asarray(p["W"]) + np.asarray(p["b"]), 0)
        return h @ np.asarray(ps[-1]["W"]) + np.asarray(ps[-1]["b"])

    scaled = ss.rescale(params, c, layer)
    np.testing.assert_allclose(forward(scaled), forward(params), rtol=1e-10, atol=1e-12)
    flat, unravel = ravel_pytree(params)
    a = ss._scale_vector(params, c, layer)
    np.testing.assert_allclose(ravel_pytree(scaled)[0], a * flat, rtol=1e-12)

    def flat_loss(theta):
        return ss.mlp_loss(unravel(theta), x, y)

    hess = jax.jit(jax.hessian(flat_loss))
    H, H_c = np.asarray(hess(flat)), np.asarray(hess(ravel_pytree(scaled)[0]))
    np.testing.assert_allclose(H_c, H / np.outer(a, a), atol=1e-10)
    # Sylvester: a congruence keeps the signs of the eigenvalues.
    e, e_c = np.linalg.eigvalsh(H), np.linalg.eigvalsh(H_c)
    tol = 1e-9
    assert np.sum(e < -tol) == np.sum(e_c < -tol) and np.sum(e > tol) == np.sum(e_c > tol)


def test_rescale_rejects_bad_arguments():
    params = mlp.init(jax.random.PRNGKey(0), [2, 3, 2])
    with pytest.raises(ValueError, match="positive"):
        ss.rescale(params, -1.0, 0)
    with pytest.raises(ValueError, match="next layer"):
        ss.rescale(params, 2.0, 1)
