import json

import numpy as np

from experiments import activations


def test_quick_config_claims_hold(tmp_path):
    payload = activations.main(activations.QUICK, tmp_path)
    assert all(c["holds"] for c in payload["claims"]), payload["claims"]
    saved = json.loads((tmp_path / "activations.json").read_text())
    assert saved["config"] == {"span": 5.0, "num": 101}
    assert (tmp_path / "activations.png").stat().st_size > 10_000
    # Independent oracle: central finite differences of numpy's own formulas.
    r = saved["results"]
    a = np.asarray(r["a"])
    numpy_f = {"sigmoid": lambda z: 1 / (1 + np.exp(-z)), "tanh": np.tanh, "relu": lambda z: np.maximum(z, 0)}
    eps = 1e-6
    for name, f in numpy_f.items():
        np.testing.assert_allclose(r["values"][name], f(a), atol=1e-12)
        fd = (f(a + eps) - f(a - eps)) / (2 * eps)
        keep = np.abs(a) > eps  # relu has no derivative at 0
        np.testing.assert_allclose(np.asarray(r["derivatives"][name])[keep], fd[keep], atol=1e-8)
