import json

import numpy as np
import pytest

from experiments import activations


def test_quick_config_claims_hold(tmp_path):
    payload = activations.main(activations.QUICK, tmp_path)
    assert all(c["holds"] for c in payload["claims"] + payload["checks"]), payload
    saved = json.loads((tmp_path / "activations.json").read_text())
    assert saved["config"] == {"span": 5.0, "num": 101}
    assert (tmp_path / "activations.png").stat().st_size > 10_000
    r = saved["results"]
    a = np.asarray(r["a"])
    # Independent oracle: numpy's own formulas and central finite differences of them.
    numpy_f = {"sigmoid": lambda z: 1 / (1 + np.exp(-z)), "tanh": np.tanh, "relu": lambda z: np.maximum(z, 0)}
    eps = 1e-6
    for name, f in numpy_f.items():
        np.testing.assert_allclose(r["values"][name], f(a), atol=1e-12)
        fd = (f(a + eps) - f(a - eps)) / (2 * eps)
        keep = np.abs(a) > eps  # relu has no derivative at 0
        np.testing.assert_allclose(np.asarray(r["derivatives"][name])[keep], fd[keep], atol=1e-8)
    # The saturation claim, numerically: sigmoid'(5) = s(1 - s) with s = sigmoid(5), margin against 0.01.
    s = 1 / (1 + np.exp(-5.0))
    (claim,) = saved["claims"]
    assert claim["measured"]["sigmoid"] == pytest.approx(s * (1 - s), rel=1e-12)
    assert claim["margin"] == pytest.approx((0.01 - s * (1 - s)) / 0.01, rel=1e-9)


def test_saturation_claim_fails_near_the_origin(tmp_path):
    # At a = 2 the sigmoid still passes on 10% of the gradient: the claim must come out false.
    payload = activations.main(activations.Config(span=2.0, num=21), tmp_path)
    (claim,) = payload["claims"]
    assert not claim["holds"] and claim["margin"] < 0
    assert claim["measured"]["sigmoid"] == pytest.approx(0.104994, rel=1e-5)
