"""One module per lecture figure; this package is their registry.

``describe()`` lists them, ``run(names, quick=...)`` runs them, ``report(out_dir)`` writes the gallery.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import time
from pathlib import Path

from experiments import _common

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
)


def available() -> list[str]:
    """Registered experiments whose module exists in this checkout, in lecture order."""
    here = Path(__file__).parent
    return [name for name in NAMES if (here / f"{name}.py").exists()]


def load(name: str):
    """Import the experiment module ``name``; ValueError listing the valid names otherwise."""
    if name not in available():
        raise ValueError(f"unknown experiment {name!r}; valid names: {', '.join(available())}")
    return importlib.import_module(f"experiments.{name}")


def describe() -> list[tuple[str, str]]:
    """``(name, one-line description)`` for every experiment."""
    return [(name, load(name).DESCRIPTION) for name in available()]


def _expand(names) -> list[str]:
    names = list(names) or ["all"]
    out = []
    for name in names:
        for item in available() if name == "all" else [name]:
            load(item)  # validates the name before anything runs
            if item not in out:
                out.append(item)
    return out


COMPLETED = ".completed.json"  # in the output folder: the experiments that finished there, and their configs


def _config_json(config) -> dict:
    """``config`` as it reads back from the results JSON (tuples become lists, and so on)."""
    return json.loads(json.dumps(_common._jsonable(dataclasses.asdict(config))))


def _completed(out: Path) -> dict:
    """The record of finished experiments in ``out``; empty if missing or unreadable (it then only costs
    re-running them)."""
    try:
        record = json.loads((out / COMPLETED).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _finished_result(name: str, config: dict, out: Path) -> dict | None:
    """The saved result of ``name`` in ``out`` if a run with exactly ``config`` finished there, else None."""
    entry = _completed(out).get(name)
    if not isinstance(entry, dict) or entry.get("config") != config:
        return None
    try:
        result = _common.load_results(name, out)
    except (OSError, ValueError):
        return None
    return result if result.get("config") == config else None


def run(names, *, quick=False, dataset=None, data_dir=None, out_dir=None, progress=True,
        resume=False) -> list[dict]:
    """Run experiments by name (``"all"`` for every one) and return their saved results.

    Each experiment that finishes (results JSON and figures written) is recorded with its config in
    ``out_dir/.completed.json``, so an interrupted ``fflab run all`` can be continued with ``resume=True``.

    Args:
        names: experiment names, or ``["all"]``.
        quick: use each module's QUICK config (offline, seconds) instead of FULL.
        dataset, data_dir: override the data set of experiments that load one.
        out_dir: where JSON and figures go (default ``figures/``, or ``figures/quick/`` when quick).
        progress: show a progress bar over the experiments.
        resume: skip an experiment that already finished into ``out_dir`` with the same config; its saved
            result is returned (with ``"skipped": True``) instead. Code changes are not detected: after
            editing an experiment, run it without ``resume``.
    """
    from tqdm.auto import tqdm

    todo = _expand(names)
    out = Path(out_dir) if out_dir else _common.default_out(quick)
    results = []
    bar = tqdm(todo, desc="experiments", unit="exp", disable=not progress)
    for name in bar:
        bar.set_postfix_str(name)
        module = load(name)
        config = _common.configure(
            module, quick=quick, overrides=_common._known(
                module, {"dataset": dataset, "data_dir": data_dir}))
        as_json = _config_json(config)
        result = _finished_result(name, as_json, out) if resume else None
        if result is not None:
            result["skipped"] = True
        else:
            start = time.perf_counter()
            result = module.main(config, out)
            result["seconds"] = round(time.perf_counter() - start, 2)
            record = _completed(out)
            record[name] = {"config": as_json, "seconds": result["seconds"]}
            _common.write_json(out / COMPLETED, record)
        results.append(result)
        held = sum(c["holds"] for c in result.get("claims", []))
        done = "finished earlier with this config, skipped" if result.get("skipped") else (
            f"{result['seconds']:.1f} s")
        bar.write(f"{name}: {held}/{len(result.get('claims', []))} claims hold ({done})")
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


def report(out_dir=None) -> Path:
    """Write ``out_dir/README.md``: a gallery of every experiment with saved results.

    Each entry shows the figures, the slide it reproduces, and each claim with its measured number and whether
    it held.
    """
    out = Path(out_dir) if out_dir else _common.FIGURES
    if not out.is_dir():
        raise ValueError(f"no results folder {str(out)!r}: run `fflab run all` first")
    lines = [
        "# Gallery",
        "",
        "Every figure of the lecture *Optimising feed-forward neural networks* (Ole Winther, 2016) as an",
        "experiment. Each entry: the slide it reproduces, the lecture's claims, the number we measured, and",
        "whether the claim held. Regenerate everything with `fflab run all`, this page with `fflab report`.",
        "",
    ]
    found = 0
    for name in available():
        path = out / f"{name}.json"
        if not path.exists():
            continue
        found += 1
        with open(path) as f:
            payload = json.load(f)
        module = load(name)
        lines += [f"## {name}", "", f"*Slide:* {module.SLIDE}  ", f"*What:* {module.DESCRIPTION}", ""]
        lines += [f"Command: `fflab run {name}`"]
        config = payload.get("config", {})
        if config.get("dataset"):
            lines[-1] += f" (data set: `{config['dataset']}`)"
        lines.append("")
        for png in sorted(out.glob(f"{name}*.png")):
            if png.stem == name or png.stem.startswith(f"{name}_"):
                lines += [f"![{png.stem}]({png.name})", ""]
        lines += ["| claim | measured | holds |", "| --- | --- | --- |"]
        for c in payload.get("claims", []):
            value = _rounded(c["measured"])
            measured = json.dumps(value) if not isinstance(value, str) else value
            lines.append(f"| {c['text']} | {measured} | {'yes' if c['holds'] else '**no**'} |")
        if payload.get("notes"):
            lines += ["", payload["notes"]]
        lines.append("")
    if not found:
        raise ValueError(f"no experiment results in {str(out)!r}: run `fflab run all` first")
    path = out / "README.md"
    path.write_text("\n".join(lines))
    return path
