import json

import numpy as np
import pytest

from experiments import landscape as ls


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("landscape")
    payload = ls.main(ls.QUICK, out)
    return payload, json.loads((out / "landscape.json").read_text()), out


def test_claims_and_files(run):
    payload, saved, out = run
    assert len(payload["claims"]) == 4
    # The monotone line and local convexity hold on digits. Whether the grid minimum falls exactly on the
    # solution (the 8-epoch digits net sits one grid step off it in float64) and the Li et al. ordering
    # (flatter = better test error) are measurements that may go either way; test their numbers instead.
    line, minimum, convex, li = payload["claims"]
    for c in (line, convex):
        assert c["holds"], (c["text"][:60], c["measured"])
    nets = saved["results"]["nets"]
    for net in ls.NETS:
        t = np.asarray(nets[net]["plane"]["ticks"])
        z = np.asarray(nets[net]["plane"]["loss"])
        i, j = np.unravel_index(np.argmin(z), z.shape)
        assert minimum["measured"][net] == pytest.approx([t[j], t[i]])
        assert nets[net]["centre_is_min"] == (i == j == t.size // 2)
    flatter = min(ls.NETS, key=lambda n: nets[n]["rise_at_radius"])
    better = min(ls.NETS, key=lambda n: nets[n]["test_error"])
    assert li["holds"] == (flatter == better)
    for name in ("landscape.png", "landscape_2d.png"):
        assert (out / name).stat().st_size > 10_000
    assert len((out / "landscape.json").read_bytes()) < 300_000
    assert saved["config"]["dataset"] == "digits"


def test_line_end_points_are_the_two_networks(run):
    for net in ls.NETS:
        line = run[1]["results"]["nets"][net]["line"]
        a = np.asarray(line["alphas"])
        i0, i1 = int(np.argmin(np.abs(a))), int(np.argmin(np.abs(a - 1)))
        assert a[i0] == 0 and a[i1] == 1
        for name in ("train", "test"):
            start, end = line[f"{name}_end_points"]
            np.testing.assert_allclose(line[name][i0], start, rtol=1e-5)
            np.testing.assert_allclose(line[name][i1], end, rtol=1e-5)
            assert end < start
        if net == "bn":
            # Eval mode with the trained running averages equals batch statistics nowhere exactly, but at
            # the trained end both are good fits.
            assert line["train_eval_mode"][i1] < 0.5 * line["train_eval_mode"][i0]


def test_plane_centre_is_the_trained_loss(run):
    for net in ls.NETS:
        r = run[1]["results"]["nets"][net]
        z = np.asarray(r["plane"]["loss"])
        c = z.shape[0] // 2
        np.testing.assert_allclose(z[c, c], r["plane"]["centre"], rtol=1e-5)
        assert r["plane"]["ticks"][c] == 0
        stats = ls.plane_stats(np.asarray(r["plane"]["ticks"]), z, ls.QUICK.radius)
        assert stats["rise_at_radius"] == pytest.approx(r["rise_at_radius"])


def test_plane_stats_on_quadratics():
    t = np.linspace(-1, 1, 21)
    a, b = np.meshgrid(t, t, indexing="xy")
    s = ls.plane_stats(t, a**2 + 2 * b**2 + 3, 0.5)
    assert s["centre_is_min"] and s["grid_min_at"] == [0.0, 0.0]
    assert s["nonconvex_fraction"] == 0
    ring = np.abs(np.hypot(a, b) - 0.5) <= 0.05 + 1e-12
    assert s["rise_at_radius"] == pytest.approx(np.mean((a**2 + 2 * b**2)[ring]))
    # On the ring a^2 + b^2 = r^2, the mean of a^2 + 2 b^2 is about 1.5 r^2.
    assert s["rise_at_radius"] == pytest.approx(1.5 * 0.25, rel=0.1)
    saddle = ls.plane_stats(t, a**2 - b**2, 0.5)
    assert saddle["nonconvex_fraction"] == 1 and not saddle["centre_is_min"]
    shifted = ls.plane_stats(t, (a - 0.3) ** 2 + b**2, 0.5)
    assert shifted["grid_min_at"] == pytest.approx([0.3, 0.0])
