"""One script per lecture figure; this package is their registry.

``describe()`` lists them without importing any (no JAX), ``run(names, quick=...)`` runs them, ``report(out_dir)``
writes the gallery. ``fflab list/run/report`` reach the experiments only through these three functions.
"""

import ast
import importlib
import time
from pathlib import Path

from fflab.compilation import fast_compile
from fflab.files import FolderLock, atomic_write, jsonable, read_json, write_json

__all__ = ["NAMES", "describe", "load", "report", "run"]

# Lecture order. Each entry is a module experiments/NAME.py.
NAMES = (
    "activations",
    "linear_collapse",
    "mnist_mlp",
    "sparsity",
    "backprop",
    "tiny_example",
    "optimizers",
    "saddle_points",
    "scaling_symmetry",
    "signal_propagation",
    "initialization",
    "gradient_clipping",
    "batchnorm",
    "transformations",
    "hessian_spectrum",
    "spectral_density",
    "newton_eigen",
    "landscape",
    "edge_of_stability",
)
_HERE = Path(__file__).parent
COMPLETED = ".completed.json"  # in the output folder: the experiments that finished there, and their configs


def available() -> list[str]:
    """Registered experiments whose module exists in this checkout, in lecture order."""
    return [name for name in NAMES if (_HERE / f"{name}.py").exists()]


def _check(name: str) -> None:
    if name not in available():
        raise ValueError(f"unknown experiment {name!r}; valid names: {', '.join(available())}")


def load(name: str):
    """Import the experiment module ``name``; ValueError listing the valid names otherwise."""
    _check(name)
    return importlib.import_module(f"experiments.{name}")


def _constant(name: str, field: str, default=""):
    """A literal module constant (``DESCRIPTION``, ``SLIDE``, ``PAPERS``) read from the source, not imported."""
    # Parse the assignment's lines only (the first that parse), not the whole module: `fflab list` reads every
    # experiment's DESCRIPTION, and parsing 5,000 lines costs more than the rest of the command.
    lines = (_HERE / f"{name}.py").read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith((f"{field} =", f"{field}: ")):
            for j in range(i + 1, len(lines) + 1):
                try:
                    node = ast.parse("\n".join(lines[i:j])).body[0]
                except SyntaxError:
                    continue
                return ast.literal_eval(node.value)
    return default


def describe() -> list[tuple[str, str]]:
    """``(name, one-line description)`` for every experiment, read without importing them."""
    return [(name, _constant(name, "DESCRIPTION")) for name in available()]


def _expand(names) -> list[str]:
    out = []
    for name in list(names) or ["all"]:
        for item in available() if name == "all" else [name]:
            _check(item)  # validates every name before anything runs
            if item not in out:
                out.append(item)
    return out


def _completed(out: Path) -> dict:
    """The record of finished experiments in ``out``; empty if missing or unreadable (it then only costs
    re-running them)."""
    try:
        record = read_json(out / COMPLETED)
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _finished_result(name: str, config: dict, out: Path) -> dict | None:
    """The saved result of ``name`` in ``out`` if a run with exactly ``config`` finished there, else None."""
    entry = _completed(out).get(name)
    if not isinstance(entry, dict) or entry.get("config") != config:
        return None
    try:
        from experiments import _common

        result = _common.load_results(name, out)
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) and result.get("config") == config else None


def run(names, *, quick=False, dataset=None, data_dir=None, out_dir=None, progress=True, resume=False,
        interrupted=None) -> list[dict]:
    """Run experiments by name (``"all"`` for every one) and return their saved results.

    Each experiment that finishes (results JSON and figures written) is recorded with its config in
    ``out_dir/.completed.json``, so an interrupted ``fflab run all`` can be continued with ``resume=True``.
    The output folder is locked while it runs (:class:`fflab.files.FolderLock`): a second run into the same
    folder fails at once instead of overwriting this one's results.

    Args:
        names: experiment names, or ``["all"]``.
        quick: use each module's QUICK config (offline, seconds) instead of FULL.
        dataset, data_dir: override the data set of experiments that load one.
        out_dir: where JSON and figures go (default ``figures/``, or ``figures/quick/`` when quick).
        progress: show a progress bar over the experiments.
        resume: skip an experiment that already finished into ``out_dir`` with the same config; its saved
            result is returned (with ``"skipped": True``) instead. Code changes are not detected: after
            editing an experiment, run it without ``resume``.
        interrupted: called between experiments; raise from it to stop (the command line's Ctrl-C check).
    """
    from fflab.progress import tqdm

    todo = _expand(names)
    if quick:  # tiny programs: compile fast (only if JAX has not started yet; see fflab.compilation)
        fast_compile()
    from experiments import _common

    out = Path(out_dir) if out_dir else _common.default_out(quick)
    results = []
    with FolderLock(out, what="results folder"):
        bar = tqdm(todo, desc="experiments", unit="exp", disable=not progress)
        for name in bar:
            bar.set_postfix_str(name)
            module = load(name)
            config = _common.configure(module, quick=quick, overrides={"dataset": dataset, "data_dir": data_dir})
            as_json = jsonable(config)
            result = _finished_result(name, as_json, out) if resume else None
            if result is not None:
                result["skipped"] = True
            else:
                start = time.perf_counter()
                result = module.main(config, out)
                result["seconds"] = round(time.perf_counter() - start, 2)
                record = _completed(out)
                record[name] = {"config": as_json, "seconds": result["seconds"]}
                write_json(out / COMPLETED, record)
            results.append(result)
            held = sum(c["holds"] for c in result.get("claims", []))
            done = "finished earlier with this config, skipped" if result.get("skipped") else (
                f"{result['seconds']:.1f} s")
            bar.write(f"{name}: {held}/{len(result.get('claims', []))} claims hold ({done})")
            if interrupted is not None:
                interrupted()
    return results


def _rounded(value, digits: int = 4):
    """``value`` with every float rounded to ``digits`` significant digits, for the gallery's tables."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {k: _rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v, digits) for v in value]
    return value


def _cell(value) -> str:
    """A table cell: one line, with ``|`` escaped so that it cannot split the row."""
    import json

    text = value if isinstance(value, str) else json.dumps(_rounded(value))
    return " ".join(text.split()).replace("|", "\\|")


def _table(rows: list[dict], path: Path, kind: str) -> list[str]:
    """The gallery table of claims (with margins) or checks; a malformed row names the file."""
    margins = kind == "claims"
    lines = ["| claim | measured | margin | holds |" if margins else "| check | measured | holds |",
             "| --- | --- | --- | --- |" if margins else "| --- | --- | --- |"]
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not {"text", "measured", "holds"} <= set(row):
            raise ValueError(f"{path}: {kind}[{i}] needs 'text', 'measured' and 'holds', got {row!r:.80}")
        verdict = "yes" if row["holds"] else "**no**"
        cells = [_cell(row["text"]), _cell(row["measured"])]
        if margins:
            m = row.get("margin")
            cells.append(f"{m:+.2g}" if isinstance(m, int | float) else "")
        lines.append("| " + " | ".join([*cells, verdict]) + " |")
    return lines


def report(out_dir=None) -> Path:
    """Write ``out_dir/README.md``: a gallery of every experiment with saved results.

    Each entry shows the figures, the slide it reproduces, the papers it cites, each claim with its measured
    number, margin and verdict, and the checks apart.
    """
    from experiments import _common

    out = Path(out_dir) if out_dir else _common.FIGURES
    if not out.is_dir():
        raise ValueError(f"no results folder {str(out)!r}: run `fflab run all` first")
    lines = [
        "# Gallery",
        "",
        "Every figure of the lecture *Optimising feed-forward neural networks* (Ole Winther, DTU deep learning",
        "summer camp, 2016) as an experiment. Each entry: the slide it reproduces, the papers it follows, the",
        "lecture's claims with the number we measured, the margin (how far that number is from flipping the",
        "verdict, relative to the threshold) and whether the claim held; then the checks (identities and",
        "sanity checks of the machinery), kept apart from the claims. Regenerate everything with",
        "`fflab run all`, this page with `fflab report`.",
        "",
    ]
    found = 0
    for name in available():
        path = out / f"{name}.json"
        if not path.exists():
            continue
        payload = read_json(path)
        if not isinstance(payload, dict):
            raise ValueError(f"{path}: expected a JSON object with claims, got {type(payload).__name__}")
        found += 1
        lines += [f"## {name}", "", f"*Slide:* {_constant(name, 'SLIDE')}  ",
                  f"*What:* {_constant(name, 'DESCRIPTION')}  "]
        papers = _constant(name, "PAPERS", {})
        if papers:
            lines.append("*Papers:* " + "; ".join(f"[{k}]({v})" if v else k for k, v in papers.items()) + "  ")
        config = payload.get("config") if isinstance(payload.get("config"), dict) else {}
        data = f" (data set: `{config['dataset']}`)" if config.get("dataset") else ""
        lines += [f"*Command:* `fflab run {name}`{data}", ""]
        for png in sorted(out.glob(f"{name}*.png")):
            if png.stem == name or png.stem.startswith(f"{name}_"):
                lines += [f"![{png.stem}]({png.name})", ""]
        for kind in ("claims", "checks"):
            rows = payload.get(kind) or []
            if not isinstance(rows, list):
                raise ValueError(f"{path}: '{kind}' must be a list, got {type(rows).__name__}")
            if rows:
                lines += [*_table(rows, path, kind), ""]
        if payload.get("notes"):
            lines += [str(payload["notes"]), ""]
    if not found:
        raise ValueError(f"no experiment results in {str(out)!r}: run `fflab run all` first")
    path = out / "README.md"
    text = "\n".join(lines)
    atomic_write(path, lambda f: f.write(text.encode()))
    return path
