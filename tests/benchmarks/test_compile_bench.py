"""Smoke test of benchmarks.compile_bench: both settings run in their own processes and report every experiment."""

import json

import pytest

from benchmarks import compile_bench


@pytest.mark.slow  # two subprocesses that each import JAX and run the activations experiment
def test_reports_both_settings(tmp_path, capsys):
    assert compile_bench.main(["activations", "--json", str(tmp_path / "c.json")]) == 0
    out = json.loads((tmp_path / "c.json").read_text())
    for setting in ("default", "fast"):
        row = out[setting]["activations"]
        assert row["wall"] > 0 and 0 < row["compile"] < row["wall"]
        assert out["total"][setting]["compile"] == pytest.approx(row["compile"])
    assert "compilation:" in capsys.readouterr().out


def test_rejects_an_unknown_experiment(capsys):
    with pytest.raises(SystemExit) as err:
        compile_bench.main(["no_such_experiment"])
    assert err.value.code == 2 and "unknown experiment(s): no_such_experiment" in capsys.readouterr().err
