import json

import numpy as np
import pytest

from experiments import newton_eigen as ne

T, D = 1.5, 0.04  # the toy loss's target and weight decay


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("newton_eigen")
    payload = ne.main(ne.QUICK, out)
    return payload, json.loads((out / "newton_eigen.json").read_text()), out


def _data():
    x, d = ne.lecun_data(ne.QUICK)
    return np.asarray(x, np.float64), np.asarray(d, np.float64)


def test_claims_hold_and_files(run):
    payload, saved, out = run
    assert all(c["holds"] for c in payload["claims"]), [c for c in payload["claims"] if not c["holds"]]
    assert saved["config"]["n_points"] == 100
    for name in ("newton_eigen.png", "newton_eigen_eigenbasis.png"):
        assert (out / name).stat().st_size > 10_000
    assert (out / "newton_eigen.json").stat().st_size < 300_000


def test_lecun_hessian_and_divergence_step(run):
    lc = run[1]["results"]["lecun"]
    x, d = _data()
    np.testing.assert_allclose(lc["x"], x, atol=1e-5)
    m = np.array(ne.CLASS_MEAN)
    H = x.T @ x / len(x)  # Hessian of E = 1/(2P) sum (d - w.x)^2
    np.testing.assert_allclose(H, np.outer(m, m) + ne.QUICK.noise_var * np.eye(2), atol=1e-12)
    np.testing.assert_allclose(lc["hessian"], H, atol=1e-12)
    lam = np.linalg.eigvalsh(H)
    np.testing.assert_allclose(lc["eigenvalues"], [0.036, 0.836], atol=1e-12)
    assert lc["2/lambda_max"] == pytest.approx(2 / lam[-1], rel=1e-12)
    assert abs(lc["critical_step"] * lam[-1] / 2 - 1) < 5e-3
    # Gradient descent by hand: w <- w - step * (H w - <x d>).
    w_star = np.linalg.solve(H, x.T @ d / len(x))
    np.testing.assert_allclose(lc["w_star"], w_star, atol=1e-10)
    for step in ne.QUICK.steps_shown:
        w, path = np.array(ne.QUICK.w0, float), []
        path.append(w)
        for _ in range(ne.QUICK.gd_iters):
            w = w - step * (H @ w - x.T @ d / len(x))
            path.append(w)
        np.testing.assert_allclose(lc["paths"][f"{step:g}"], path, rtol=1e-9, atol=1e-9)
        dist = np.linalg.norm(path[-1] - w_star) / np.linalg.norm(path[0] - w_star)
        assert (dist < 1) == (step < 2 / lam[-1])


def test_centring_condition_numbers(run):
    cond = run[1]["results"]["centring"]
    x, _ = _data()
    shifted = x + np.array(ne.QUICK.offset)
    centred = shifted - shifted.mean(axis=0)
    for name, xp in (("shifted", shifted), ("centred", centred)):
        lam = np.linalg.eigvalsh(xp.T @ xp / len(xp))
        assert cond[name]["condition"] == pytest.approx(lam[-1] / lam[0], rel=1e-8)
    assert cond["whitened"]["condition"] == pytest.approx(1, abs=1e-8)
    # GD at step 2 / (l_min + l_max) contracts by (k - 1) / (k + 1) per step: it converges in
    # ~log(reach) / log(rate) steps (the excess loss is quadratic in the distance, so the rate is squared).
    for name in ("shifted", "centred"):
        k = cond[name]["condition"]
        bound = np.log(ne.QUICK.reach) / (2 * np.log((k - 1) / (k + 1)))
        assert cond[name]["iterations"] <= bound + 2


def test_toy_eigenbasis_against_closed_form(run):
    toy = run[1]["results"]["toy"]
    a, b = ne.QUICK.toy_point
    r = a * b - T
    g = np.array([2 * r * b + 2 * D * a, 2 * r * a + 2 * D * b])
    H = np.array([[2 * b * b + 2 * D, 4 * a * b - 2 * T], [4 * a * b - 2 * T, 2 * a * a + 2 * D]])
    lam, U = np.linalg.eigh(H)
    np.testing.assert_allclose(toy["eigenvalues"], lam, atol=1e-10)
    assert lam[0] < 0 < lam[1]
    gi = U.T @ g
    np.testing.assert_allclose(np.abs(toy["gradient"]), np.abs(gi), atol=1e-10)
    np.testing.assert_allclose(toy["newton_slope"], -gi**2 / lam, atol=1e-10)  # uphill where lam < 0
    np.testing.assert_allclose(toy["saddle_free_slope"], -gi**2 / np.abs(lam), atol=1e-10)
    assert toy["newton_total_slope"] == pytest.approx(-g @ np.linalg.solve(H, g), rel=1e-10)


def test_network_saddle_spectrum_closed_form(run):
    net = run[1]["results"]["net"]
    h, decay = ne.QUICK.net_hidden, ne.QUICK.net_decay
    # At all-zero parameters the tanh net's Hessian couples W1 (along <x d> = m) with W2 per hidden unit:
    # eigenvalues +-|m| + decay (h each); the output bias gets 1 + decay; the other 2h directions decay.
    c = np.linalg.norm(ne.CLASS_MEAN)
    expected = np.sort([*([-c + decay] * h), *([c + decay] * h), 1 + decay, *([decay] * (2 * h))])
    np.testing.assert_allclose(net["eigenvalues_at_saddle"], expected, atol=1e-10)
    assert net["kind"] == "saddle" and net["index"] == pytest.approx(h / (3 * h + h + 1))
    assert net["found"]["converged"] and net["found"]["distance"] < 1e-8
    assert net["saddle_loss"] == pytest.approx(0.5)  # 0.5 * mean(d^2) with d = +-1
    assert net["runs"]["newton"]["end_distance"] < 1e-8
    assert net["runs"]["saddle_free"]["loss"][-1] < 0.1
