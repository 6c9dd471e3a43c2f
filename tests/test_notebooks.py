"""The worked examples in notebooks/: committed with their outputs, and they run top to bottom.

The committed-outputs check is cheap and runs by default; executing the notebooks takes a few minutes on two
cores and is marked ``notebooks`` (``pytest -m notebooks``; ``.ci/run`` runs it after the default suite).
"""

import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
IDS = [path.stem for path in NOTEBOOKS]


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 3, NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_committed_with_outputs_and_figures(path):
    import nbformat

    nb = nbformat.read(path, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code and all(cell.execution_count is not None for cell in code), "run it before committing"
    counts = [cell.execution_count for cell in code]
    assert counts == list(range(1, len(code) + 1)), "executed top to bottom in one kernel"
    outputs = [out for cell in code for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    assert any("image/png" in out.get("data", {}) for out in outputs), "the figures are in the committed outputs"
    assert not [out for out in outputs if "IProgress not found" in str(out.get("text", ""))]


@pytest.mark.notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_runs_top_to_bottom(path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    tic = time.perf_counter()
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    seconds = time.perf_counter() - tic
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    assert any("image/png" in out.get("data", {}) for out in outputs)
    assert not [out for out in outputs if "IProgress not found" in str(out.get("text", ""))]
    print(f"{path.name}: {seconds:.1f} s")
