import json

import jax
import matplotlib
import numpy as np
import pytest

from analysis import spectrum
from experiments import spectral_density as sd
from fflab import classifier

C = 10


def _setting(top, gram_ratio=0.95, share=0.9, mass=0.95, dim=1000):
    """One setting's results in the form analyse() returns, for a spectrum whose top eigenvalues are ``top``."""
    top = np.sort(np.asarray(top, np.float64))[::-1]
    n, edge = spectrum.outliers(top)
    bulk = np.linspace(-0.05, 0.2, 6)
    nodes = np.tile(np.concatenate([top[:n], bulk]), (2, 1))
    weights = np.concatenate([np.full((2, n), 1 / dim), np.full((2, 6), (1 - n / dim) / 6)], axis=1)
    return {"dim": dim, "loss": 0.3, "slq_nodes": nodes, "slq_weights": weights, "lambda_max": top[0],
            "top_eigenvalues": top, "top_residuals": 1e-4 * top, "n_outliers": n, "bulk_edge": edge,
            "mass_near_zero": mass, "gram_eigenvalues": gram_ratio * top[: 2 * C], "gram_outlier_overlap": 0.8,
            "gradient_share": {"1": share / 3, "C": share, "outliers": share}}


def _papers_world(**changes):
    """Four settings as the papers describe them: C outliers after training without BN, none with BN, the
    gradient in the top-C space without BN only, a bulk near zero; ``changes`` replace settings."""
    smooth = np.geomspace(1.0, 0.1, 40)  # no eigenvalue stands out
    outliers = np.concatenate([np.linspace(20, 5, C), smooth[C:]])
    per = {"plain_init": _setting(smooth), "plain_trained": _setting(outliers), "bn_init": _setting(smooth),
           "bn_trained": _setting(smooth, share=0.2)}
    return {**per, **changes}


def _verdicts(per):
    return [(c["holds"], c["margin"]) for c in sd.make_claims(sd.FULL, per, C)]


def test_each_claim_holds_in_the_papers_world_and_fails_where_the_world_differs():
    assert all(holds for holds, _ in _verdicts(_papers_world()))
    smooth, outliers = np.geomspace(1.0, 0.1, 40), np.concatenate([np.linspace(20, 5, C), np.geomspace(1, 0.1, 30)])
    failing = {
        0: {"bn_init": _setting(smooth, mass=0.85)},  # a wide bulk
        1: {"plain_trained": _setting(np.concatenate([np.linspace(20, 5, 7), np.geomspace(1, 0.1, 33)]))},
        2: {"plain_trained": _setting(outliers, gram_ratio=0.8)},  # Gram eigenvalues 20% low
        3: {"bn_trained": _setting(outliers, share=0.2)},  # BN keeps its outliers
        4: {"bn_trained": _setting(smooth, share=0.6)},  # BN's gradient stays in the top-C space
    }
    for i, change in failing.items():
        verdicts = _verdicts(_papers_world(**change))
        assert not verdicts[i][0], i
        assert verdicts[i][1] < 0
        assert all(holds for j, (holds, _) in enumerate(verdicts) if j != i), i
    # Margins: relative distance to each threshold.
    assert _verdicts(_papers_world(bn_init=_setting(smooth, mass=0.85)))[0][1] == pytest.approx(-0.05 / 0.9)
    assert _verdicts(_papers_world())[1][1] == pytest.approx(1.0)  # |n - C| = 0 against 1.5
    assert _verdicts(_papers_world(plain_trained=_setting(outliers, gram_ratio=0.8)))[2][1] == pytest.approx(-1.0)
    assert _verdicts(_papers_world(bn_trained=_setting(smooth, share=0.6)))[4][1] == pytest.approx(-0.2)


@pytest.mark.slow  # matplotlib lays out ten panels: several seconds even on a quiet machine
def test_plot_draws_both_figures(tmp_path):
    matplotlib.use("Agg")
    per = _papers_world()
    exact = np.concatenate([np.linspace(-0.1, 0.3, 90), [2.0, 3.0]])
    check = {**_setting(exact[::-1][:30]), "exact_eigenvalues": exact, "sigma": 0.05, "l1": 0.01}
    payload = {"config": {"sigma": 0.005, "hessian_samples": 1000, "dataset": "digits"},
               "results": {"settings": per, "check": check, "num_classes": C}}
    sd.plot(json.loads(json.dumps(payload, default=lambda a: np.asarray(a).tolist())), tmp_path)
    for name in ("spectral_density.png", "spectral_density_outliers.png"):
        assert (tmp_path / name).stat().st_size > 10_000


def _tiny_problem():
    # Drawn by numpy: jax.random would compile a program for every shape drawn.
    rng = np.random.default_rng(3)
    params = [{"W": rng.normal(size=(n_in, n_out)) * np.sqrt(2 / n_in), "b": 0.1 * rng.normal(size=n_out)}
              for n_in, n_out in ((5, 7), (7, 4))]
    return params, rng.normal(size=(40, 5)), np.arange(40) % 4


def test_class_mean_gram_against_explicit_jacobians():
    params, x, y = _tiny_problem()
    apply = classifier("relu").apply
    gram, rows = sd.class_mean_gram(apply, params, None, x, y, 4)
    flat, unravel = jax.flatten_util.ravel_pytree(params)

    def logits(v):
        return apply(unravel(v), None, x)[0]

    # The reference as one compiled program: run op by op, jax.jacobian compiles each operation apart.
    J, p = map(np.asarray, jax.jit(lambda v: (jax.jacobian(logits)(v), jax.nn.softmax(logits(v))))(flat))
    G_class = np.zeros((flat.size, flat.size))
    for c in range(4):
        m = y == c
        H = np.mean([np.diag(q) - np.outer(q, q) for q in p[m]], axis=0)
        G_class += m.mean() * J[m].mean(0).T @ H @ J[m].mean(0)
    np.testing.assert_allclose(rows.T @ rows, G_class, atol=1e-12)
    want = np.sort(np.linalg.eigvalsh(G_class))[::-1][:8]
    np.testing.assert_allclose(np.sort(np.linalg.eigvalsh(gram))[::-1][:8], want, atol=1e-10)


@pytest.mark.slow  # its own compiled analysis programs (eigsh, deflated SLQ): about 20 s of CPU
def test_analyse_against_jax_hessian():
    cfg = sd.Config(num_steps=20, num_probes=6, top_k=12, eigsh_steps=40, eigsh_tol=1e-8)
    params, x, y = _tiny_problem()
    loss = classifier("relu").loss_fn
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    H = np.asarray(jax.hessian(lambda v: loss(unravel(v), x, y))(flat))
    g = np.asarray(jax.grad(lambda v: loss(unravel(v), x, y))(flat))
    res = sd.analyse("plain", params, None, x, y, cfg, jax.random.key(0), 4)
    lam, U = np.linalg.eigh(H)
    lam, U = lam[::-1], U[:, ::-1]
    np.testing.assert_allclose(res["top_eigenvalues"], lam[:12], atol=1e-8)
    n = res["n_outliers"]
    assert n == spectrum.outliers(lam[:12])[0]
    # The deflated nodes are the outliers, exactly, with weight 1 / dim in every probe's rule.
    np.testing.assert_allclose(res["slq_nodes"][:, :n], np.tile(lam[:n], (6, 1)), atol=1e-8)
    np.testing.assert_allclose(res["slq_weights"][:, :n], 1 / lam.size)
    assert res["gradient_share"]["C"] == pytest.approx(np.sum((U[:, :4].T @ g) ** 2) / np.sum(g**2), rel=1e-6)
    # SLQ moments are Hutchinson estimates of tr(H^k) / P: within 4 standard errors of the exact values.
    for k, exact in ((0, np.mean(lam)), (1, np.mean(lam**2))):
        assert abs(res["moments"][k] - exact) <= 4 * res["moment_stderr"][k] + 1e-10


@pytest.mark.slow  # trains two digits networks and analyses four settings: about 70 s of CPU
def test_quick_run_claims_and_check(tmp_path):
    payload = sd.main(sd.QUICK, tmp_path)
    saved = json.loads((tmp_path / "spectral_density.json").read_text())
    assert len((tmp_path / "spectral_density.json").read_bytes()) < 300_000
    for name in ("spectral_density.png", "spectral_density_outliers.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    r = saved["results"]
    per, check = r["settings"], r["check"]
    for s in per.values():
        top, nodes = np.asarray(s["top_eigenvalues"]), np.asarray(s["slq_nodes"])
        assert (s["n_outliers"], s["bulk_edge"]) == pytest.approx(spectrum.outliers(top))
        np.testing.assert_allclose(np.asarray(s["slq_weights"]).sum(axis=1), 1, atol=1e-9)
        np.testing.assert_allclose(nodes[:, : s["n_outliers"]], np.tile(top[: s["n_outliers"]], (len(nodes), 1)),
                                   rtol=1e-3)  # the deflated nodes are the outliers (to eigsh's tolerance)
    # The claims' verdicts follow from the saved numbers, recomputed here.
    claims = payload["claims"]
    mass = [s["mass_near_zero"] for s in per.values()]
    ratios = np.asarray(claims[2]["measured"])
    share = {k: s["gradient_share"]["C"] for k, s in per.items()}
    assert claims[0]["holds"] == (min(mass) > 0.9)
    assert claims[1]["holds"] == (abs(per["plain_trained"]["n_outliers"] - C) <= 1)
    assert ratios.size == max(per["plain_trained"]["n_outliers"], 1)
    assert claims[2]["holds"] == bool(np.all(np.abs(ratios - 1) < sd.PAPYAN_TOL))
    assert claims[3]["holds"] == (per["plain_trained"]["n_outliers"] > 0 and per["bn_trained"]["n_outliers"] == 0)
    assert claims[4]["holds"] == (share["plain_trained"] > 0.5 > share["bn_trained"])
    # The dense check against numpy's eigenvalues of the float64 Hessian (saved with the results).
    exact = np.sort(check["exact_eigenvalues"])[::-1]
    k = len(check["top_eigenvalues"])
    np.testing.assert_allclose(check["top_eigenvalues"], exact[:k], atol=sd.QUICK.eigsh_tol * exact[0])
    assert check["n_outliers"] == spectrum.outliers(exact[:k])[0]
    for j in (0, 1):
        assert abs(check["moments"][j] - np.mean(exact ** (j + 1))) < 4 * check["moment_stderr"][j]
    assert saved["checks"][0]["holds"] and check["l1"] < 0.2
