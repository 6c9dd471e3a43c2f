import json
import math

import jax
import numpy as np
import pytest

from experiments import initialization
from fflab import init


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("initialization")
    payload = initialization.main(initialization.QUICK, out)
    return payload, json.loads((out / "initialization.json").read_text()), out


def _theory(sizes, scheme, scale):
    """Mean-field relu recursions written out independently: E[z^2] and E[delta^2] relative to the ends."""
    var = [init.std(scheme, a, b, scale=scale) ** 2 for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
    n_layers = len(var)
    fwd = np.ones(n_layers)
    for i in range(1, n_layers):  # layer i+1 sees relu(z_i), of which half the mass survives
        fwd[i] = fwd[i - 1] * sizes[i] * var[i] / 2
    bwd = np.ones(n_layers)
    for i in range(n_layers - 2, -1, -1):  # delta_i = (delta_{i+1} W_{i+1}^T) * relu'(z_i)
        bwd[i] = bwd[i + 1] * sizes[i + 2] * var[i + 1] / 2
    return fwd, bwd


def test_quick_config_claims_hold_and_files_exist(run):
    payload, saved, out = run
    assert all(c["holds"] for c in payload["claims"]), [c for c in payload["claims"] if not c["holds"]]
    assert saved["config"]["schemes"] == list(initialization.QUICK.schemes)
    for name in ("initialization", "initialization_training", "initialization_papers"):
        assert (out / f"{name}.png").stat().st_size > 10_000


def test_signal_profiles_follow_mean_field_theory(run):
    _, saved, _ = run
    r = saved["results"]
    sizes = r["sizes"]
    assert len(sizes) - 1 >= 10  # a deep net: 10+ weight layers
    assert len(set(sizes[1:-1])) > 1  # of varying widths, so the schemes differ
    for label in initialization.QUICK.schemes:
        scheme, scale = initialization.parse_scheme(label)
        if scheme == "sparse":  # 15 N(0,1) weights per unit: heavy-tailed, the mean is slow to converge
            continue
        th_f, th_b = _theory(sizes, scheme, scale)
        fwd = np.asarray(r["profiles"][label]["forward"])
        bwd = np.asarray(r["profiles"][label]["backward"])
        np.testing.assert_allclose(np.log10(fwd / fwd[0]), np.log10(th_f), atol=0.3, err_msg=label)
        np.testing.assert_allclose(np.log10(bwd / bwd[-1]), np.log10(th_b), atol=0.3, err_msg=label)
        np.testing.assert_allclose(r["mean_field"][label]["forward"], th_f, rtol=1e-12)
        np.testing.assert_allclose(r["mean_field"][label]["backward"], th_b, rtol=1e-12)


def test_he_schemes_keep_one_direction_and_glorot_relu_balances(run):
    _, saved, _ = run
    r = saved["results"]
    sizes = r["sizes"]
    # Telescoping: he_forward's backward gain and he_backward's forward gain are both n_1 / n_L.
    ends = sizes[1] / sizes[-1]
    assert abs(math.log10(r["gains"]["he_forward"]["backward"] * ends)) < 0.3
    assert abs(math.log10(r["gains"]["he_backward"]["forward"] / ends)) < 0.3
    assert abs(math.log10(r["gains"]["he_forward"]["forward"])) < 0.3
    assert abs(math.log10(r["gains"]["he_backward"]["backward"])) < 0.3
    worst = r["worst_direction_decades"]
    assert worst["glorot_relu"] < min(worst["he_forward"], worst["he_backward"])
    # Scale s multiplies a relu net's end-to-end forward gain by exactly s^(2 (L - 1)): same draws, same
    # on/off pattern.
    depth = len(sizes) - 1
    for label, s in (("glorot_relu*0.5", 0.5), ("glorot_relu*2", 2.0)):
        ratio = r["gains"][label]["forward"] / r["gains"]["glorot_relu"]["forward"]
        assert ratio == pytest.approx(s ** (2 * (depth - 1)), rel=1e-6)


def test_training_contrasts(run):
    _, saved, _ = run
    t = saved["results"]["training"]
    for label in initialization.KEEPERS:
        loss = np.asarray(t[label]["loss"], dtype=float)
        assert np.all(np.isfinite(loss)) and loss[-1] < 0.5 * loss[0]
    small = np.asarray(t["glorot_relu*0.5"]["loss"], dtype=float)
    assert small[-1] > 0.9 * small[0]
    assert small[0] == pytest.approx(math.log(10), rel=1e-3)  # vanishing signal: uniform softmax at init
    large = np.asarray(t["glorot_relu*2"]["loss"], dtype=float)
    assert not np.isfinite(large[-1]) or large[-1] > large[0]


def test_glorot_bengio_ratio_matches_the_one_third_per_layer_estimate(run):
    _, saved, _ = run
    gb = saved["results"]["glorot_bengio"]
    depth = initialization.QUICK.gb_depth
    # Standard init: Var[W] = 1 / (3 n) and tanh' ~ 1 near 0, so each layer down divides delta's variance
    # by about 3.
    assert abs(math.log10(gb["standard"]["ratio_1_to_last"] / 3.0 ** -(depth - 1))) < 0.3
    assert gb["standard"]["ratio_1_to_last"] < 0.1
    assert 0.5 < gb["normalised"]["ratio_1_to_last"] < 2
    assert np.all(np.diff(gb["standard"]["delta_var"]) > 0)  # shrinks monotonically towards the input


def test_he_init_trains_a_30_layer_net_and_glorot_stalls(run):
    _, saved, _ = run
    he = saved["results"]["he_2015"]
    assert saved["results"]["he_net"]["depth"] == 30
    he_final = np.asarray(he["he_forward"]["loss"], dtype=float)[:, -1]
    glorot = np.asarray(he["glorot"]["loss"], dtype=float)
    assert np.all(he_final < glorot[:, -1])
    # Glorot halves the relu signal per layer: after 29 hidden layers the logits are ~0, loss ~ log(10).
    np.testing.assert_allclose(glorot, math.log(10), rtol=0.01)


def test_saxe_spectra(run):
    _, saved, _ = run
    saxe = saved["results"]["saxe"]
    n, depth = initialization.QUICK.saxe_n, initialization.QUICK.saxe_depth
    gauss = np.asarray(saxe["lecun"]["spectra"][str(depth)])
    assert gauss.shape == (n,) and np.all(np.diff(gauss) <= 0)
    assert np.mean(gauss < 0.1) > 0.5
    assert 0.3 < np.mean(gauss**2) < 3  # E ||P||_F^2 / N = 1: the average is kept, most directions collapse
    np.testing.assert_allclose(saxe["orthogonal"]["spectra"][str(depth)], 1.0, atol=1e-4)


def test_saxe_spectra_against_numpy_products():
    # The QUICK run's matrix size and depth: the same compiled draws as the experiment (in the same worker).
    n, depth = initialization.QUICK.saxe_n, initialization.QUICK.saxe_depth
    key = jax.random.key(3)
    with initialization._one_blas_thread():  # QR on two busy cores spin-waits otherwise (see there)
        spectra = initialization.saxe_spectra(key, n, depth, "orthogonal", record=(1, depth))
        mats = [np.asarray(init.weights(k, n, n, "orthogonal"), np.float64)
                for k in jax.random.split(key, depth)]
    product = np.linalg.multi_dot(mats)
    np.testing.assert_allclose(product.T @ product, np.eye(n), atol=1e-10)
    np.testing.assert_allclose(spectra[depth], np.linalg.svd(product, compute_uv=False), atol=1e-12)
    np.testing.assert_allclose(spectra[1], np.linalg.svd(mats[0], compute_uv=False), atol=1e-12)


def test_parse_scheme_and_mean_field_gains():
    assert initialization.parse_scheme("he_forward") == ("he_forward", 1.0)
    assert initialization.parse_scheme("glorot_relu*0.5") == ("glorot_relu", 0.5)
    with pytest.raises(ValueError, match="valid names"):
        initialization.parse_scheme("xavier")
    with pytest.raises(ValueError, match="scheme\\*scale"):
        initialization.parse_scheme("glorot*big")
    sizes = [5, 40, 20, 10, 3]
    fwd, bwd = initialization.mean_field_gains(sizes, "he_forward")
    np.testing.assert_allclose(fwd, 1.0)
    np.testing.assert_allclose(bwd, [3 / 40, 3 / 20, 3 / 10, 1.0])
    fwd, bwd = initialization.mean_field_gains(sizes, "he_backward")
    np.testing.assert_allclose(fwd, [1.0, 40 / 20, 40 / 10, 40 / 3])
    np.testing.assert_allclose(bwd, 1.0)
