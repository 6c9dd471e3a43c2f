"""README.md's Python example runs as written and prints sensible numbers."""

import contextlib
import io
import re
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 1
    out = io.StringIO()
    namespace = {"__name__": "readme"}
    with contextlib.redirect_stdout(out):
        exec(compile(blocks[0], str(README), "exec"), namespace)
    printed = out.getvalue()
    error = float(re.search(r"test error ([\d.]+)%", printed).group(1))
    assert error < 10.0  # 10 classes: chance is 90%
    # The example's own numbers against the dense Hessian (analysis.hessian, itself tested against
    # jax.hessian in tests/analysis) and numpy's eigh.
    import analysis

    params, x, y = namespace["result"].state.params, namespace["x"], namespace["y"]
    H = analysis.hessian(namespace["loss_fn"], params, x, y)
    eig = np.linalg.eigvalsh(np.asarray(H, np.float64))
    np.testing.assert_allclose(np.asarray(namespace["top"].eigenvalues), eig[::-1][:3], rtol=1e-3)
    tr = namespace["tr"]
    assert abs(float(tr.estimate) - eig.sum()) < 4 * float(tr.stderr) + 1e-4 * abs(eig.sum())
    negative = float(re.search(r"below zero: ([\d.]+)", printed).group(1))
    assert abs(negative - np.mean(eig < 0)) < 0.25  # SLQ with 4 probes: a rough share
    # With the 10 largest-magnitude eigenvalues deflated, 4 probes pin the second moment down.
    m2 = float(re.search(r"tr\(H\^2\)/P ([-\d.e+]+)", printed).group(1))
    assert m2 == pytest.approx(np.mean(eig**2), rel=0.05)
