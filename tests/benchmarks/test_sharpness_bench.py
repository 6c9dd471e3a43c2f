"""Smoke test of benchmarks.sharpness_bench on a tiny digits problem: both arms train the same trajectory, every
record is accounted for, the tracked and the cold-start eigenvalues agree (they answer the same question), and the
"fewest" products (an oracle stop) bound what each run spent."""

import numpy as np
import pytest

from benchmarks import sharpness_bench as sb


@pytest.mark.slow  # ~15 s of CPU, mostly compiling the plain, the monitored and the cold-start programs
def test_tiny_run_is_consistent():
    args = sb.parse(["--dataset", "digits", "--n", "200", "--subset", "50", "--hidden", "16", "--steps", "40",
                     "--every", "10", "--lr", "0.5"])
    out = sb.run(args)
    assert out["same_trajectory"]
    assert out["steps"] == [0, 10, 20, 30]
    np.testing.assert_allclose(out["sharpness"], out["cold_sharpness"], rtol=1e-3)
    np.testing.assert_allclose(out["reference_sharpness"], out["cold_sharpness"], rtol=1e-3)
    assert 0 <= out["warm_within_tol"] <= 1 and out["warm_error_max"] >= out["warm_error_median"] >= 0
    assert out["cold_records_at"] == [0, 20] and all(m >= 1 for m in out["warm_matvecs"] + out["cold_matvecs"])
    assert out["overhead_holds"] == (out["overhead"] <= 0.25)
    assert out["warm_holds"] == (out["warm_over_cold_max"] <= 1 / 3)
    # "fewest" runs the same solver from the same start with a budget: where a run stopped on its own within tol,
    # the budget that first reaches tol is at most what it spent.
    reference = np.array(out["reference_sharpness"])
    for name, values in (("warm", out["sharpness"]), ("cold", out["cold_sharpness"])):
        spent, least = np.array(out[f"{name}_matvecs"]), np.array(out[f"fewest_{name}_matvecs"])
        within = np.abs(np.array(values) / reference - 1) <= 1e-4
        if name == "warm":
            within &= spent == np.array(out["replayed_matvecs"])
        assert within.any() and np.all(least[within] <= spent[within]) and np.all(least >= 1)
    warm = [i for i, s in enumerate(out["steps"]) if s not in out["cold_records_at"]]
    least = np.array(out["fewest_warm_matvecs"])[warm] / np.array(out["cold_matvecs"])[warm]
    assert out["unreachable_steps"] == [out["steps"][i] for i, r in zip(warm, least, strict=True) if r > 1 / 3]
