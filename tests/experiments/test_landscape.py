import json

import numpy as np
import pytest

from experiments import landscape as ls

T = np.linspace(-1, 1, 21)
A, B = np.meshgrid(T, T, indexing="xy")


def _net(bump=0.0, bowl=A**2 + 2 * B**2 + 0.1, test_error=10.0, planes=2):
    """One network's results in the form evaluate() returns, with every plane equal to ``bowl``."""
    stats = ls.plane_stats(T, bowl, ls.FULL.radius)
    return {"bump": bump, "test_error": test_error, "planes": [bowl] * planes,
            **{k: [v] * planes for k, v in stats.items()}}


def _verdicts(**nets):
    per = {"plain": _net(test_error=12.0, bowl=A**2 + 2 * B**2 + 0.1), "bn": _net(bowl=0.5 * (A**2 + B**2) + 0.1),
           **nets}
    return [(c["holds"], c["margin"]) for c in ls.make_claims(ls.FULL, per)]


def test_each_claim_holds_for_convex_bowls_and_fails_where_the_landscape_differs():
    # BN's bowl is flatter and its test error lower: all three claims hold.
    verdicts = _verdicts()
    assert all(h for h, _ in verdicts)
    assert verdicts[0][1] == 1.0  # no bump at all
    failing = {
        0: {"bn": _net(bump=0.02, bowl=0.5 * (A**2 + B**2) + 0.1)},  # a 2% rise on the way down
        1: {"plain": _net(test_error=12.0, bowl=4 * A**2 - 0.5 * B**2 + 1.0)},  # a saddle, not a bowl
        2: {"plain": _net(test_error=8.0)},  # the sharper network generalises better
    }
    for i, change in failing.items():
        verdicts = _verdicts(**change)
        assert not verdicts[i][0] and verdicts[i][1] < 0, i
        assert all(h for j, (h, _) in enumerate(verdicts) if j != i), i
    assert _verdicts(bn=_net(bump=0.02, bowl=0.5 * (A**2 + B**2) + 0.1))[0][1] == pytest.approx(-1.0)
    # Li's margin: the smaller relative gap, of the rises (2:1 here) or of the test errors (8 against 10).
    assert _verdicts(plain=_net(test_error=8.0))[2][1] == pytest.approx(-0.2, rel=1e-6)


def test_plane_stats_on_quadratics():
    s = ls.plane_stats(T, A**2 + 2 * B**2 + 3, 0.5)
    # The nearest other grid points lie 0.1 away along a: 0.01 above the centre's 3.
    assert s["centre_gap"] == pytest.approx(0.01 / 3)
    # Central differences are exact on quadratics: the 2-D Hessian is diag(2, 4) everywhere.
    assert s["curvature_ratio"] == pytest.approx(0.5)
    ring = np.abs(np.hypot(A, B) - 0.5) <= 0.05 + 1e-12
    assert s["rise_at_radius"] == pytest.approx(np.mean((A**2 + 2 * B**2)[ring]))
    assert s["rise_at_radius"] == pytest.approx(1.5 * 0.25, rel=0.1)  # a^2 + 2 b^2 on the circle of radius r
    saddle = ls.plane_stats(T, A**2 - B**2 + 1, 0.5)
    assert saddle["curvature_ratio"] == pytest.approx(-1.0) and saddle["centre_gap"] == pytest.approx(-1.0)
    assert ls.plane_stats(T, (A - 0.3) ** 2 + B**2 + 1, 0.5)["centre_gap"] < 0


@pytest.mark.slow  # trains two digits networks, evaluates their lines and six planes: about 25 s of CPU
def test_quick_run(tmp_path):
    payload = ls.main(ls.QUICK, tmp_path)
    saved = json.loads((tmp_path / "landscape.json").read_text())
    for name in ("landscape.png", "landscape_2d.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    assert len((tmp_path / "landscape.json").read_bytes()) < 300_000
    line_claim, bowl, li = payload["claims"]
    nets = saved["results"]["nets"]
    for net, r in nets.items():
        line = r["line"]
        a = np.asarray(line["alphas"])
        i0, i1 = int(np.argmin(np.abs(a))), int(np.argmin(np.abs(a - 1)))
        assert a[i0] == 0 and a[i1] == 1
        for name in ("train", "test"):  # the line's ends are the two networks' losses, evaluated directly
            np.testing.assert_allclose([line[name][i0], line[name][i1]], line[f"{name}_end_points"], rtol=1e-5)
        seg = np.asarray(line["train"])[i0 : i1 + 1]
        assert r["bump"] == pytest.approx(max(np.max(np.diff(seg)), 0) / (seg[0] - seg[-1]))
        for j, z in enumerate(r["planes"]):
            stats = ls.plane_stats(np.asarray(r["ticks"]), np.asarray(z), ls.QUICK.radius)
            assert stats["rise_at_radius"] == pytest.approx(r["rise_at_radius"][j])
        if net == "plain":  # plain: the plane's centre is the trained network, the line's end in the same loss
            c = len(r["ticks"]) // 2
            assert r["planes"][0][c][c] == pytest.approx(line["train_end_points"][1], rel=1e-5)
    assert line_claim["holds"] == (max(r["bump"] for r in nets.values()) < 0.01)
    assert bowl["holds"] == all(min(r["centre_gap"] + r["curvature_ratio"]) > 0 for r in nets.values())
    rise = {n: np.mean(r["rise_at_radius"]) for n, r in nets.items()}
    err = {n: r["test_error"] for n, r in nets.items()}
    assert li["holds"] == (min(rise, key=rise.get) == min(err, key=err.get))
