"""Shared plumbing for experiment modules: configs from the command line, results JSON, figure style.

Every experiment module ``experiments/NAME.py`` defines ``DESCRIPTION`` (one line), ``SLIDE`` (the lecture
slide it reproduces), a frozen dataclass ``Config`` with ``QUICK`` and ``FULL`` instances, and
``main(config, out_dir) -> dict`` that saves ``<out_dir>/NAME.json`` (via :func:`save_results`) before it
plots ``<out_dir>/NAME*.png`` from the saved numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

FIGURES = Path("figures")
QUICK_OUT = FIGURES / "quick"


def claim(text: str, measured: Any, holds: bool) -> dict:
    """One claim of the lecture, the number that tests it, and whether it held."""
    return {"text": text, "measured": _jsonable(measured), "holds": bool(holds)}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if hasattr(value, "_asdict"):
        return _jsonable(value._asdict())
    if isinstance(value, np.ndarray) or type(value).__module__.startswith("jax"):
        return _jsonable(np.asarray(value).tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no inf/nan: keep them readable
    return value


def write_json(path: Path, payload: dict) -> Path:
    """Write JSON atomically: a temp file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results are for everyone to read
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_jsonable(payload), f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_results(name: str, config, results: dict, claims: list[dict], out_dir, *, notes: str = "") -> dict:
    """Save ``{"name", "config", "results", "claims", "notes"}`` to ``out_dir/name.json`` and return it.

    ``notes`` is printed under the experiment in the gallery: say there why a claim does not hold, or what
    stands in for what (Fashion-MNIST for MNIST, say).
    """
    payload = {
        "name": name,
        "config": dataclasses.asdict(config),
        "results": results,
        "claims": claims,
        "notes": notes,
    }
    write_json(Path(out_dir) / f"{name}.json", payload)
    return _jsonable(payload)


def load_results(name: str, out_dir) -> dict:
    with open(Path(out_dir) / f"{name}.json") as f:
        return json.load(f)


def style():
    """Select the shared matplotlib style (headless) and return ``pyplot``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "figure.dpi": 110,
            "savefig.dpi": 110,
            "savefig.bbox": "tight",
            "font.size": 10,
            "axes.titlesize": 11,
            "axes.labelsize": 10,
            "legend.fontsize": 9,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "lines.linewidth": 1.6,
            "image.cmap": "viridis",
        }
    )
    return plt


def savefig(fig, out_dir, name: str) -> Path:
    """Save a figure as ``out_dir/name.png`` and close it."""
    import matplotlib.pyplot as plt

    path = Path(out_dir) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def host_flat(tree) -> np.ndarray:
    """The leaves of ``tree`` as one numpy vector, in :func:`jax.flatten_util.ravel_pytree`'s order.

    On the host: ``ravel_pytree`` on device arrays compiles a concatenation for every new set of shapes.
    """
    import jax  # here, not at the top: the command line lists experiments without starting jax

    return np.concatenate([np.ravel(np.asarray(leaf)) for leaf in jax.tree_util.tree_leaves(tree)])


def default_out(quick: bool) -> Path:
    """Full runs write the committed ``figures/``; quick runs write ``figures/quick/`` (not committed)."""
    return QUICK_OUT if quick else FIGURES


def configure(module, *, quick: bool, overrides: dict | None = None):
    """The module's QUICK or FULL config with ``overrides`` applied to the fields it has.

    Raises:
        ValueError: for an override naming no field of the config.
    """
    config = module.QUICK if quick else module.FULL
    fields = {f.name: f for f in dataclasses.fields(config)}
    changes = {}
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in fields:
            valid = ", ".join(fields)
            raise ValueError(f"{module.__name__} has no config field {key!r}; fields: {valid}")
        changes[key] = _coerce(value, getattr(config, key), key)
    return dataclasses.replace(config, **changes)


def _coerce(value, current, key):
    if not isinstance(value, str) or isinstance(current, str) or current is None:
        return value
    try:
        if isinstance(current, bool):
            if value.lower() in ("1", "true", "yes"):
                return True
            if value.lower() in ("0", "false", "no"):
                return False
            raise ValueError
        if isinstance(current, int):
            return int(value)
        if isinstance(current, float):
            return float(value)
        if isinstance(current, tuple):
            kind = type(current[0]) if current else float
            return tuple(kind(v) for v in value.split(","))
    except ValueError:
        raise ValueError(f"cannot read {key}={value!r} as {type(current).__name__}") from None
    return value


def module_cli(module, argv=None) -> int:
    """``python -m experiments.NAME [--quick] [--dataset D] [--data-dir DIR] [--out DIR] [--set k=v]``."""
    spec = getattr(module, "__spec__", None)  # under `python -m` it is __main__; its spec has the name
    name = spec.name if spec is not None else module.__name__
    parser = argparse.ArgumentParser(prog=f"python -m {name}", description=module.DESCRIPTION)
    parser.add_argument("--quick", action="store_true", help="the small offline config (seconds)")
    parser.add_argument("--dataset", help="override the config's data set")
    parser.add_argument("--data-dir", help="folder holding the IDX files")
    parser.add_argument("--out", help="output folder (default figures/, or figures/quick/ with --quick)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override any config field, e.g. --set epochs=5")
    args = parser.parse_args(argv)
    from fflab.cli import one_line, user_errors

    try:
        overrides = {"dataset": args.dataset, "data_dir": args.data_dir}
        for item in args.set:
            if "=" not in item:
                raise ValueError(f"--set expects FIELD=VALUE, got {item!r}")
            key, value = item.split("=", 1)
            overrides[key] = value
        config = configure(module, quick=args.quick, overrides=_known(module, overrides))
        out = Path(args.out) if args.out else default_out(args.quick)
        result = module.main(config, out)
    except user_errors() as err:  # what `fflab run` reports in one line, reported the same way
        print(f"{parser.prog}: error: {one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    for c in result.get("claims", []):
        print(f"[{'holds' if c['holds'] else 'FAILS'}] {c['text']}: {c['measured']}")
    return 0


def _known(module, overrides: dict) -> dict:
    """Drop data-set overrides for configs without a data set; keep every other key for validation."""
    fields = {f.name for f in dataclasses.fields(module.QUICK)}
    return {
        k: v for k, v in overrides.items() if k in fields or k not in ("dataset", "data_dir")
    }
