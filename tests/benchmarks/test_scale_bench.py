"""Smoke tests of benchmarks/scale_bench.py on tiny settings: what it times is what the library computes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import analysis
from benchmarks import scale_bench
from fflab import data

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fashion():
    try:
        return scale_bench._fashion_train()  # cached: loaded once per session
    except data.DataError:
        pytest.skip("fashion-mnist IDX files not installed (apt-get install dataset-fashion-mnist)")


def test_slope_recovers_power_laws():
    xs = np.array([1e3, 1e4, 6e4])
    assert abs(scale_bench._slope(xs, 3e-6 * xs) - 1.0) < 1e-12
    assert abs(scale_bench._slope(xs, 2e-9 * xs**2) - 2.0) < 1e-12


@pytest.mark.slow  # ~15 s of CPU, mostly compiling the density program
def test_density_program_is_the_public_spectral_density(fashion):
    res, (matvec, dim, probes, nodes, weights) = scale_bench.density_at_scale((16,), 600, 200, 5, 2, None)
    assert dim == res["params"] == 784 * 16 + 16 + 16 * 10 + 10
    assert nodes.shape == weights.shape == (2, 5) and nodes.dtype == jnp.float32
    public = analysis.spectral_density(matvec, dim, num_steps=5, probes=probes)
    np.testing.assert_allclose(nodes, public.nodes, rtol=1e-5, atol=1e-6 * float(jnp.max(jnp.abs(nodes))))
    np.testing.assert_allclose(weights, public.weights, rtol=1e-4, atol=1e-6)
    assert abs(res["weights_sum"] - 1.0) < 1e-5
    assert res["lanczos_basis_mib"] == pytest.approx(2 * 6 * dim * 4 / 2**20)
    assert res["p_squared_mib"] == pytest.approx(dim**2 * 4 / 2**20)


def test_gpu_check_script_is_valid_bash():
    script = ROOT / "benchmarks" / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "set -euo pipefail" in text and "--steps" in text and "fflab train" in text
