import json
import math

import jax
import numpy as np
import pytest

from experiments import signal_propagation as sp
from fflab import mlp


def test_quick_config_claims_hold(tmp_path):
    payload = sp.main(sp.QUICK, tmp_path)
    assert all(c["holds"] for c in payload["claims"]), payload["claims"]
    saved = json.loads((tmp_path / "signal_propagation.json").read_text())
    assert saved["config"]["depth"] == 20 and saved["config"]["scales"] == [0.5, 1.0, 2.0]
    assert (tmp_path / "signal_propagation.png").stat().st_size > 10_000
    relu = saved["results"]["relu"]
    L = sp.QUICK.depth
    for scale in ("0.5", "2.0"):
        # Homogeneity: with the same seeds, scale s shifts log rms of layer l by exactly l log s.
        for key, layers in (("log_rms_forward", np.arange(L + 1)), ("log_rms_backward", np.arange(L))):
            shift = np.asarray(relu[scale][key]) - np.asarray(relu["1.0"][key])
            np.testing.assert_allclose(shift, layers * math.log(float(scale)), atol=1e-4)
    for r in relu.values():
        assert len(r["log_rms_forward"]) == L + 1 and len(r["log_rms_backward"]) == L


def _numpy_profiles(params, x, cot, activation):
    """rms of z_l and of dC/dz_l for C = sum(z_L * cot), by a plain numpy forward and reverse pass."""
    f, fprime = {"relu": (lambda z: np.maximum(z, 0), lambda z: (z > 0) * 1.0),
                 "tanh": (np.tanh, lambda z: 1 - np.tanh(z) ** 2)}[activation]
    Ws = [np.asarray(p["W"]) for p in params]
    zs, h = [], np.asarray(x)
    for i, W in enumerate(Ws):
        zs.append(h @ W)
        h = f(zs[-1]) if i < len(Ws) - 1 else None
    deltas = [np.asarray(cot)]
    for i in range(len(Ws) - 1, 0, -1):
        deltas.insert(0, (deltas[0] @ Ws[i].T) * fprime(zs[i - 1]))
    rms = lambda arrays: np.array([np.sqrt(np.mean(a**2)) for a in arrays])  # noqa: E731
    return rms(zs), rms(deltas)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_profiles_match_a_numpy_forward_and_reverse_pass(activation, seed):
    k_net, k_x, k_c = jax.random.split(jax.random.key(seed), 3)
    params = mlp.init(k_net, [6, 9, 8, 7, 5], init=sp.PRESERVING_INIT[activation])
    x = jax.random.normal(k_x, (11, 6))
    cot = jax.random.normal(k_c, (11, 5))
    fwd, bwd = sp.profiles(params, x, cot, activation=activation)
    want_fwd, want_bwd = _numpy_profiles(params, x, cot, activation)
    np.testing.assert_allclose(fwd, want_fwd, rtol=1e-10)
    np.testing.assert_allclose(bwd, want_bwd, rtol=1e-10)


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_relu_profiles_scale_exactly_as_scale_to_the_depth(scale):
    sizes = [16] * 7
    k_net, k_x, k_c = jax.random.split(jax.random.key(3), 3)
    x, cot = jax.random.normal(k_x, (10, 16)), jax.random.normal(k_c, (10, 16))
    one = sp.profiles(mlp.init(k_net, sizes, init="he_forward"), x, cot, activation="relu")
    scaled = sp.profiles(mlp.init(k_net, sizes, init="he_forward", scale=scale), x, cot, activation="relu")
    L = len(sizes) - 1
    np.testing.assert_allclose(scaled[0], one[0] * scale ** np.arange(1, L + 1), rtol=1e-12)
    np.testing.assert_allclose(scaled[1], one[1] * scale ** np.arange(L - 1, -1, -1), rtol=1e-12)
