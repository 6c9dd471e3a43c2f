import dataclasses
import json
import math

import jax
import numpy as np
import pytest

from experiments import initialization as ini
from fflab import init


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("initialization")
    payload = ini.main(ini.QUICK, out)
    return payload, json.loads((out / "initialization.json").read_text()), out


def _theory(sizes, scheme, scale):
    """Mean-field relu recursions written out independently: E[z^2] and E[delta^2] relative to the ends."""
    var = [init.std(scheme, a, b, scale=scale) ** 2 for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
    fwd, bwd = np.ones(len(var)), np.ones(len(var))
    for i in range(1, len(var)):  # layer i+1 sees relu(z_i), of which half the mass survives
        fwd[i] = fwd[i - 1] * sizes[i] * var[i] / 2
    for i in range(len(var) - 2, -1, -1):  # delta_i = (delta_{i+1} W_{i+1}^T) * relu'(z_i)
        bwd[i] = bwd[i + 1] * sizes[i + 2] * var[i + 1] / 2
    return fwd, bwd


@pytest.mark.slow  # QUICK takes about 30 s of CPU: compiling two deep nets' epochs dominates
def test_quick_config_claims_and_checks_hold(run):
    payload, saved, out = run
    assert all(c["holds"] for c in payload["claims"] + payload["checks"]), [
        c for c in payload["claims"] + payload["checks"] if not c["holds"]]
    assert saved["config"]["schemes"] == list(ini.QUICK.schemes)
    for name in ("initialization", "initialization_training", "initialization_papers"):
        assert (out / f"{name}.png").stat().st_size > 10_000
    # Margins from the saved numbers: he_forward's gain within a factor 2, in decades.
    claims = {c["text"]: c for c in saved["claims"]}
    he_fwd = next(c for t, c in claims.items() if t.startswith("he_forward"))
    assert he_fwd["margin"] == pytest.approx(1 - abs(math.log10(he_fwd["measured"])) / math.log10(2))
    he_trains = next(c for t, c in claims.items() if t.startswith("He et al.: a 30-layer"))
    assert he_trains["measured"] == np.median(saved["results"]["he_2015"]["he_forward"]["decrease"])
    assert he_trains["margin"] == pytest.approx(he_trains["measured"] / 0.5 - 1)


@pytest.mark.slow
def test_signal_profiles_follow_mean_field_theory(run):
    _, saved, _ = run
    r = saved["results"]
    sizes = r["sizes"]
    assert len(sizes) - 1 >= 10 and len(set(sizes[1:-1])) > 1  # deep, and tapering so that the schemes differ
    for label in ini.QUICK.schemes:
        name, _, scale = label.partition("*")
        th_f, th_b = _theory(sizes, name, float(scale or 1))
        fwd, bwd = np.asarray(r["profiles"][label]["forward"]), np.asarray(r["profiles"][label]["backward"])
        np.testing.assert_allclose(np.log10(fwd / fwd[0]), np.log10(th_f), atol=0.3, err_msg=label)
        np.testing.assert_allclose(np.log10(bwd / bwd[-1]), np.log10(th_b), atol=0.3, err_msg=label)
        np.testing.assert_allclose(r["mean_field"][label]["forward"], th_f, rtol=1e-12)
        np.testing.assert_allclose(r["mean_field"][label]["backward"], th_b, rtol=1e-12)


@pytest.mark.slow
def test_he_schemes_keep_one_direction_and_glorot_relu_balances(run):
    _, saved, _ = run
    r = saved["results"]
    sizes, gains = r["sizes"], r["gains"]
    # Telescoping: he_forward's backward gain and he_backward's forward gain are both n_1 / n_L.
    ends = sizes[1] / sizes[-1]
    assert abs(math.log10(gains["he_forward"]["backward"] * ends)) < 0.3
    assert abs(math.log10(gains["he_backward"]["forward"] / ends)) < 0.3
    worst = r["worst_decades"]
    assert worst["glorot_relu"] < min(worst["he_forward"], worst["he_backward"])
    # Scale s multiplies a relu net's end-to-end forward gain by exactly s^(2 (L - 1)): same draws, same pattern.
    for label, s in ((ini.SMALL, 0.5), (ini.LARGE, 2.0)):
        ratio = gains[label]["forward"] / gains["glorot_relu"]["forward"]
        assert ratio == pytest.approx(s ** (2 * (len(sizes) - 2)), rel=1e-6)


@pytest.mark.slow
def test_training_and_the_papers_contrasts(run):
    _, saved, _ = run
    r = saved["results"]
    t = r["training"]
    for label in ini.KEEPERS:
        loss = np.asarray(t[label]["loss"], dtype=float)
        assert np.all(np.isfinite(loss)) and loss[-1] < 0.5 * loss[0]
        assert t[label]["decrease"] == pytest.approx(1 - loss[-1] / loss[0])
    small = np.asarray(t[ini.SMALL]["loss"], dtype=float)
    assert small[0] == pytest.approx(math.log(10), rel=1e-3)  # vanishing signal: uniform softmax at init
    # Glorot & Bengio, standard init: Var[W] = 1 / (3 n) and tanh' ~ 1 near 0, so each layer down divides the
    # variance of delta by about 3; the ratio is the mean over draws, each draw's own ratio near it.
    gb = r["glorot_bengio"]
    assert abs(math.log10(gb["standard"]["ratio_1_to_last"] / 3.0 ** -(ini.GB_DEPTH - 1))) < 0.3
    assert np.all(np.diff(gb["standard"]["delta_var"]) > 0)  # shrinks monotonically towards the input
    assert len(gb["normalised"]["ratio_per_draw"]) == ini.QUICK.gb_draws
    # He et al.: Glorot halves the relu signal per layer: after 29 hidden layers the logits are ~0, loss ~ log 10.
    np.testing.assert_allclose(np.asarray(r["he_2015"]["glorot"]["loss"], dtype=float), math.log(10), rtol=0.01)
    gauss = np.asarray(r["saxe"]["lecun"]["spectra"][str(ini.SAXE_DEPTH)])
    assert 0.3 < np.mean(gauss**2) < 3  # E ||P||_F^2 / N = 1: the average is kept while most directions collapse


def test_claims_fail_where_the_effect_is_absent(tmp_path):
    # No training (0 epochs), and a shallow net 64-10-64-10 on digits: narrowing and widening alternate, so a
    # one-sided He scheme's drift per layer cancels between them (10/64 * 64/10 * 10/64 leaves one factor) while
    # Glorot's balance leaves more in its worse direction, and there is no depth to vanish or explode in: the
    # claims that need depth, a taper or training come out false, while the identities stay checks that hold.
    # Small sizes elsewhere keep this run cheap (it is the default smoke test).
    small = dataclasses.replace(ini.QUICK, widths=(10, 64), epochs=0, he_epochs=0, he_width=8, gb_width=16,
                                saxe_n=8, draws=2)
    payload = ini.main(small, tmp_path)
    for start in ("the lecture's sqrt", "too small (x0.5)", "the signal-keeping", "too large", "He et al.: a 30"):
        (claim,) = [c for c in payload["claims"] if c["text"].startswith(start)]
        assert not claim["holds"] and not claim["margin"] > 0, start
    assert all(c["holds"] for c in payload["checks"])
    assert (tmp_path / "initialization_papers.png").stat().st_size > 10_000


@pytest.mark.slow
def test_the_other_claims_fail_on_the_contrasting_measurements(run):
    # Glorot's gain drifts decades, the standard and normalised ratios swap sides, the trained schemes' losses
    # fall, and one Gaussian matrix (a product of depth 1) has no collapsed singular values.
    r = run[1]["results"]
    assert abs(math.log10(r["gains"]["glorot"]["forward"])) > math.log10(2)
    assert r["glorot_bengio"]["normalised"]["ratio_1_to_last"] > 0.1
    assert abs(math.log10(r["glorot_bengio"]["standard"]["ratio_1_to_last"])) > math.log10(2)
    assert min(r["training"][s]["decrease"] for s in ini.KEEPERS) > 0.1
    assert np.median(r["he_2015"]["he_forward"]["decrease"]) > 0.1
    assert np.mean(np.asarray(r["saxe"]["lecun"]["spectra"]["1"]) < 0.1) < 0.5


def test_saxe_spectra_against_numpy_products():
    n, depth, key = 12, 6, jax.random.key(3)
    spectra = ini.saxe_spectra(key, n, depth, "orthogonal", record=(1, depth))
    mats = [np.asarray(init.weights(k, n, n, "orthogonal"), np.float64) for k in jax.random.split(key, depth)]
    product = np.linalg.multi_dot(mats)
    np.testing.assert_allclose(product.T @ product, np.eye(n), atol=1e-10)
    np.testing.assert_allclose(spectra[depth], np.linalg.svd(product, compute_uv=False), atol=1e-12)
    np.testing.assert_allclose(spectra[1], np.linalg.svd(mats[0], compute_uv=False), atol=1e-12)
    assert sorted(spectra) == [1, depth]


def test_mean_field_gains_in_closed_form():
    sizes = [5, 40, 20, 10, 3]
    fwd, bwd = ini.mean_field_gains(sizes, "he_forward")
    np.testing.assert_allclose(fwd, 1.0)
    np.testing.assert_allclose(bwd, [3 / 40, 3 / 20, 3 / 10, 1.0])
    fwd, bwd = ini.mean_field_gains(sizes, "he_backward")
    np.testing.assert_allclose(fwd, [1.0, 40 / 20, 40 / 10, 40 / 3])
    np.testing.assert_allclose(bwd, 1.0)
    for scale in (0.5, 2.0):  # every weight times s: every layer's factor times s^2
        np.testing.assert_allclose(ini.mean_field_gains(sizes, "glorot_relu", scale)[0],
                                   ini.mean_field_gains(sizes, "glorot_relu")[0] * scale ** (2 * np.arange(4)))
