import json
import math

import numpy as np
import pytest

from experiments import signal_propagation as sp


def test_quick_config_claims_hold(tmp_path):
    payload = sp.main(sp.QUICK, tmp_path)
    assert all(c["holds"] for c in payload["claims"] + payload["checks"]), payload["claims"] + payload["checks"]
    saved = json.loads((tmp_path / "signal_propagation.json").read_text())
    assert saved["config"]["depth"] == 20
    assert (tmp_path / "signal_propagation.png").stat().st_size > 10_000
    relu, tanh = saved["results"]["relu"], saved["results"]["tanh"]
    L = sp.QUICK.depth
    for r in relu.values():
        assert len(r["log_rms_forward"]) == L + 1 and len(r["log_rms_backward"]) == L
        assert r["log_rms_forward"][0] == 0 and r["log_rms_backward"][0] == 0
    for scale in ("0.5", "2.0"):
        # Homogeneity: with the same draws, scale s shifts log rms of layer l by exactly l log s.
        for key, layers in (("log_rms_forward", np.arange(L + 1)), ("log_rms_backward", np.arange(L))):
            shift = np.asarray(relu[scale][key]) - np.asarray(relu["1.0"][key])
            np.testing.assert_allclose(shift, layers * math.log(float(scale)), atol=1e-4)
        # The saved slopes are least-squares fits of the saved profiles.
        y = np.asarray(relu[scale]["log_rms_forward"])
        assert relu[scale]["slope_forward"] == pytest.approx(np.polyfit(np.arange(L + 1), y, 1)[0], rel=1e-9)
    level, exponential, small, large = saved["claims"]
    spread = max(np.ptp(relu["1.0"]["log_rms_forward"]), np.ptp(relu["1.0"]["log_rms_backward"]))
    assert level["margin"] == pytest.approx((2 - math.exp(spread)) / 2, rel=1e-9)
    worst = max(abs(relu[s][f"slope_{d}"] - math.log(float(s))) for s in ("0.5", "2.0") for d in ("forward",
                                                                                                   "backward"))
    assert exponential["margin"] == pytest.approx((0.03 - worst) / 0.03, rel=1e-9)
    assert small["measured"]["forward"] == tanh["0.5"]["slope_forward"]
    # Tanh at 2x: forward saturated at O(1) while the backward slope is positive.
    assert large["measured"]["forward_end"] < 10 and large["measured"]["backward_slope"] > 0.1


def test_claims_fail_in_narrow_nets(tmp_path):
    # At width 4 a layer's length fluctuates far from the mean-field law: every claim comes out false, while
    # the homogeneity identity still holds exactly.
    payload = sp.main(sp.Config(width=4, batch=64, seeds=(0,)), tmp_path)
    assert [c["holds"] for c in payload["claims"]] == [False] * 4
    assert all(c["margin"] < 0 for c in payload["claims"])
    assert all(c["holds"] for c in payload["checks"])
