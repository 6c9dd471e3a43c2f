"""README.md's Python examples run as written, in order in one namespace, and print sensible numbers.

The test session runs in float64 (tests/conftest.py), so the README's numbers are checked against the dense
oracles (``jax.hessian`` + numpy's ``eigvalsh``) to the solvers' tolerances.
"""

import contextlib
import io
import re
from pathlib import Path

import matplotlib
import numpy as np
import pytest

from tests.analysis._models import dense_jax_hessian

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def blocks():
    """Run every ```python block of README.md in one namespace; after each, a copy of it and what it printed."""
    matplotlib.use("Agg")
    sources = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(sources) == 2, "the hand-written model, then the lecture's net"
    namespace, results = {"__name__": "readme"}, []
    for source in sources:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(source, str(README), "exec"), namespace)
        results.append((dict(namespace), out.getvalue()))
    return results


def _dense_eigenvalues(loss_fn, params, x, y):
    return np.linalg.eigvalsh(np.asarray(dense_jax_hessian(loss_fn, params, x, y), np.float64))


def test_hand_written_model_trains_and_its_eigenvalues_match_the_dense_hessian(blocks):
    ns, printed = blocks[0]
    before, after = map(float, re.search(r"train loss ([\d.e-]+) -> ([\d.e-]+)", printed).groups())
    assert after < 0.5 * before
    exact = _dense_eigenvalues(ns["loss_fn"], ns["result"].state.params, ns["ds"].x_train[:300],
                               ns["ds"].y_train[:300])
    np.testing.assert_allclose(np.asarray(ns["top"].eigenvalues), exact[::-1][:3], rtol=1e-6)
    assert "top Hessian eigenvalues" in printed


def test_lecture_net_spectrum_against_the_dense_hessian(blocks):
    ns, printed = blocks[1]
    error = float(re.search(r"test error ([\d.]+)%", printed).group(1))
    assert error < 10.0  # 10 classes: chance is 90%
    eig = _dense_eigenvalues(ns["model"].loss_fn, ns["result"].state.params, ns["x"], ns["y"])
    tr = ns["tr"]
    assert abs(float(tr.estimate) - eig.sum()) < 4 * float(tr.stderr) + 1e-4 * abs(eig.sum())
    negative = float(re.search(r"below zero: ([\d.]+)", printed).group(1))
    assert abs(negative - np.mean(eig < 0)) < 0.25  # SLQ with 4 probes: a rough share
    # With the 10 largest-magnitude eigenvalues deflated, 4 probes pin the second moment down.
    m2 = float(re.search(r"tr\(H\^2\)/P ([-\d.e+]+)", printed).group(1))
    assert m2 == pytest.approx(np.mean(eig**2), rel=0.05)
