import json
import subprocess
import sys

import pytest

import experiments
from experiments import _common


def test_describe_lists_every_module_with_a_description():
    names = [name for name, _ in experiments.describe()]
    assert names == experiments.available()
    assert "activations" in names
    assert all(desc for _, desc in experiments.describe())


def test_unknown_experiment_is_a_value_error_listing_names():
    with pytest.raises(ValueError, match="valid names: .*activations"):
        experiments.run(["no_such_experiment"], quick=True, progress=False)


def test_bad_override_names_the_fields():
    with pytest.raises(ValueError, match="no config field 'nope'"):
        _common.configure(experiments.load("activations"), quick=True, overrides={"nope": 1})
    with pytest.raises(ValueError, match="cannot read num"):
        _common.configure(experiments.load("activations"), quick=True, overrides={"num": "many"})


def test_run_and_report_write_results_and_gallery(tmp_path):
    results = experiments.run(["activations"], quick=True, out_dir=tmp_path, progress=False)
    assert results[0]["name"] == "activations"
    page = experiments.report(tmp_path).read_text()
    assert "## activations" in page and "![activations](activations.png)" in page
    # The claims table: one row per claim; the checks (identities) have a table of their own.
    claims = page.split("| claim |")[1].split("\n\n")[0]
    rows = [line for line in claims.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == len(results[0]["claims"]) and all(row.endswith("| yes |") for row in rows)


def test_resume_skips_only_experiments_finished_with_the_same_config(tmp_path):
    first = experiments.run(["activations"], quick=True, out_dir=tmp_path, progress=False)[0]
    record = json.loads((tmp_path / experiments.COMPLETED).read_text())
    assert record["activations"]["config"] == first["config"]
    saved = tmp_path / "activations.json"
    stamp = saved.stat().st_mtime_ns

    again = experiments.run(["activations"], quick=True, out_dir=tmp_path, progress=False, resume=True)[0]
    assert again["skipped"] and saved.stat().st_mtime_ns == stamp
    assert again["claims"] == first["claims"] and again["results"] == first["results"]

    # Another config on record (or no record, or a damaged one) runs the experiment again.
    record["activations"]["config"]["num"] += 1
    (tmp_path / experiments.COMPLETED).write_text(json.dumps(record))
    rerun = experiments.run(["activations"], quick=True, out_dir=tmp_path, progress=False, resume=True)[0]
    assert "skipped" not in rerun and saved.stat().st_mtime_ns > stamp
    record = json.loads((tmp_path / experiments.COMPLETED).read_text())
    assert record["activations"]["config"] == first["config"]
    (tmp_path / experiments.COMPLETED).write_text("{not json")
    stamp = saved.stat().st_mtime_ns
    assert "skipped" not in experiments.run(
        ["activations"], quick=True, out_dir=tmp_path, progress=False, resume=True)[0]
    assert saved.stat().st_mtime_ns > stamp
    # Without resume a finished experiment runs again.
    stamp = saved.stat().st_mtime_ns
    assert "skipped" not in experiments.run(["activations"], quick=True, out_dir=tmp_path, progress=False)[0]
    assert saved.stat().st_mtime_ns > stamp


def test_report_without_results_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="fflab run all"):
        experiments.report(tmp_path / "missing")


def test_module_cli_runs_and_rejects_bad_input(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "experiments.activations", "--quick", "--out", str(tmp_path),
                         "--set", "num=51"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert json.loads((tmp_path / "activations.json").read_text())["config"]["num"] == 51
    bad = subprocess.run([sys.executable, "-m", "experiments.activations", "--quick", "--out", str(tmp_path),
                          "--set", "num=many"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr and bad.stderr.count("\n") == 1
    assert bad.stderr.startswith("python -m experiments.activations: error: ")


def test_module_cli_reports_missing_data_in_one_line(tmp_path, monkeypatch, capsys):
    """A data set that cannot be found (or downloaded) is one line and exit code 2, not a traceback."""
    from fflab import data

    def missing(*args, **kwargs):
        raise data.DataError("mnist not found; searched: /nowhere (data_dir)\nfix: pass --data-dir")

    monkeypatch.setattr(data, "load", missing)
    code = _common.module_cli(experiments.load("mnist_mlp"), ["--quick", "--dataset", "mnist",
                                                              "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err == (
        "python -m experiments.mnist_mlp: error: mnist not found; searched: /nowhere (data_dir) fix: pass "
        "--data-dir\n")


def test_gallery_rounds_measured_numbers_to_four_digits():
    assert experiments._rounded({"a": 0.123456, "b": [1.234567e-7, 3, "x"], "c": 12345.6}) == {
        "a": 0.1235, "b": [1.235e-7, 3, "x"], "c": 12350.0}


def _columns(row: str) -> int:
    """Cells of a Markdown table row, not counting escaped pipes."""
    return row.replace("\\|", "").count("|") - 1


def test_the_committed_gallery_is_rendered_from_the_results_and_every_row_keeps_its_columns(tmp_path):
    """figures/README.md is what ``fflab report`` writes from the committed results, and on GitHub every table
    row has exactly its header's columns (claim texts like ||H||_F have their pipes escaped)."""
    import shutil

    figures = _common.FIGURES
    for path in [*figures.glob("*.json"), *figures.glob("*.png")]:
        shutil.copy(path, tmp_path / path.name)
    page = experiments.report(tmp_path).read_text()
    assert page == (figures / "README.md").read_text(), "regenerate the gallery: fflab report"
    tables, header = 0, None
    for line in page.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        if header is None:
            header, tables = _columns(line), tables + 1
        assert _columns(line) == header, line
    assert page.count("| claim | measured | margin | holds |") == len(list(figures.glob("*.json"))) <= tables
