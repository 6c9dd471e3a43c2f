"""What the experiment scripts share: claims and checks, results files, figure style, the command line.

Every experiment module ``experiments/NAME.py`` defines ``DESCRIPTION`` (one line), ``SLIDE`` (the lecture
slide it reproduces, or says that it is an extension), a frozen dataclass ``Config`` with ``QUICK`` and
``FULL`` instances, and ``main(config, out_dir) -> dict`` that saves ``<out_dir>/NAME.json`` (via :func:`save`)
before it plots ``<out_dir>/NAME*.png`` from the saved numbers.

A *claim* is the lecture's (or its paper's) statement about the world, tested the way the paper tested it; it
can come out false, and its ``margin`` says how far the measured value is from flipping the verdict. A
*check* is an identity that holds by construction or a sanity check of the machinery (a residual, an oracle
agreement); checks are listed apart from claims.

Also here, because two or more experiments use them: the lecture's tiny example loss, a fixed data subset,
and :func:`small_jit`, the one place where compile-time tuning lives.
"""

import argparse
import dataclasses
import functools
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from fflab.compilation import fast_compile
from fflab.errors import USER_ERRORS, one_line
from fflab.files import jsonable, read_json, write_json

FIGURES = Path("figures")
QUICK_OUT = FIGURES / "quick"

# --- claims and checks ---


def claim(text: str, measured: Any, holds: bool | tuple[bool, float], *, margin: float | None = None) -> dict:
    """One claim of the lecture, the number that tests it, whether it held, and its margin.

    Args:
        text: the claim as a reader would say it, with its threshold.
        measured: the number (or small dict of numbers) that decides it.
        holds: the verdict, or the ``(verdict, margin)`` pair that :func:`above`, :func:`below` and :func:`both`
            return.
        margin: how far ``measured`` is from flipping the verdict, relative to the threshold, positive when
            the claim holds and negative when it fails.
    """
    if isinstance(holds, tuple):
        holds, margin = holds
    out = {"text": text, "measured": jsonable(measured), "holds": bool(holds)}
    if margin is not None:
        out["margin"] = float(margin) if math.isfinite(margin) else None
    return out


def check(text: str, measured: Any, holds: bool) -> dict:
    """An identity or sanity check (not a claim about the world): kept apart from claims in the results."""
    return {"text": text, "measured": jsonable(measured), "holds": bool(holds)}


def above(value: float, threshold: float) -> tuple[bool, float]:
    """``(value > threshold, relative margin)``: the margin is ``(value - threshold) / |threshold|``."""
    return value > threshold, (value - threshold) / (abs(threshold) or 1.0)


def below(value: float, threshold: float) -> tuple[bool, float]:
    """``(value < threshold, relative margin)``: the margin is ``(threshold - value) / |threshold|``."""
    return value < threshold, (threshold - value) / (abs(threshold) or 1.0)


def both(*verdicts: tuple[bool, float]) -> tuple[bool, float]:
    """Several conditions that must all hold: the verdict of all, and the smallest margin."""
    return all(h for h, _ in verdicts), min(m for _, m in verdicts)


# --- results and figures ---


def save(name: str, config, results: dict, claims: list[dict], out_dir, *, checks: list[dict] = (),
         notes: str = "", plot=None) -> dict:
    """Save ``{"name", "config", "results", "claims", "checks", "notes"}`` to ``out_dir/name.json``, then draw
    the figures from the saved numbers with ``plot(payload, out_dir)`` if given.

    ``notes`` is printed under the experiment in the gallery: say there why a claim does not hold, what the
    cited paper's set-up was and what ours is, or what stands in for what (Fashion-MNIST for MNIST, say).

    Returns:
        The payload as it reads back from the file.
    """
    payload = jsonable({
        "name": name, "config": dataclasses.asdict(config), "results": results, "claims": list(claims),
        "checks": list(checks), "notes": notes,
    })
    write_json(Path(out_dir) / f"{name}.json", payload)
    if plot is not None:
        plot(payload, out_dir)
    return payload


def load_results(name: str, out_dir) -> dict:
    """The saved ``out_dir/name.json``."""
    return read_json(Path(out_dir) / f"{name}.json")


def style():
    """Select the shared matplotlib style (headless) and return ``pyplot``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({
        "figure.dpi": 110, "savefig.dpi": 110, "savefig.bbox": "tight", "font.size": 10,
        "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 9, "axes.grid": True,
        "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False, "lines.linewidth": 1.6,
        "image.cmap": "viridis",
    })
    return plt


def savefig(fig, out_dir, name: str) -> Path:
    """Save a figure as ``out_dir/name.png`` and close it."""
    import matplotlib.pyplot as plt

    path = Path(out_dir) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


# --- what several experiments compute ---

TINY_TARGET, TINY_DECAY = 1.5, 0.04  # the lecture's tiny example: data {x = 1, y = 1.5}, weight decay 0.04


def tiny_loss(w):
    """The lecture's tiny example ``C(w) = (w1 w2 - 1.5)^2 + 0.04 (w1^2 + w2^2)`` for ``w`` of shape ``(2,)``."""
    import jax.numpy as jnp

    return (w[0] * w[1] - TINY_TARGET) ** 2 + TINY_DECAY * jnp.sum(jnp.square(w))


def subset(x, y, n: int, seed: int):
    """A fixed random subset of ``n`` rows of ``(x, y)`` (numpy, the same for every caller with ``seed``)."""
    if not 1 <= n <= len(x):
        raise ValueError(f"a subset needs between 1 and {len(x)} samples, got {n}")
    idx = np.sort(np.random.default_rng(seed).choice(len(x), n, replace=False))
    return x[idx], y[idx]


def host_flat(tree) -> np.ndarray:
    """The leaves of ``tree`` as one numpy vector, in :func:`jax.flatten_util.ravel_pytree`'s order.

    On the host: ``ravel_pytree`` on device arrays compiles a concatenation for every new set of shapes.
    """
    import jax

    return np.concatenate([np.ravel(np.asarray(leaf)) for leaf in jax.tree_util.tree_leaves(tree)])


def small_jit(fun=None, **jit_kwargs):
    """``jax.jit`` for tiny problems (a few parameters, a few hundred samples): LLVM's optimisations off.

    On these problems compiling dominates running; ``xla_backend_optimization_level=0`` compiles several
    times faster and the programs run in microseconds either way. The numbers are the same to rounding.
    Use as ``@small_jit`` or ``small_jit(f, static_argnames=...)``.
    """
    import jax

    if fun is None:
        return functools.partial(small_jit, **jit_kwargs)
    return jax.jit(fun, compiler_options={"xla_backend_optimization_level": 0}, **jit_kwargs)


# --- configs and the command line ---


def default_out(quick: bool) -> Path:
    """Full runs write the committed ``figures/``; quick runs write ``figures/quick/`` (not committed)."""
    return QUICK_OUT if quick else FIGURES


def configure(module, *, quick: bool, overrides: dict | None = None):
    """The module's QUICK or FULL config with ``overrides`` applied to the fields it has.

    ``dataset`` and ``data_dir`` are dropped for configs without them (they are offered to every experiment
    by ``fflab run``); any other unknown key is a ``ValueError``.
    """
    config = module.QUICK if quick else module.FULL
    fields = {f.name for f in dataclasses.fields(config)}
    changes = {}
    for key, value in (overrides or {}).items():
        if value is None or (key in ("dataset", "data_dir") and key not in fields):
            continue
        if key not in fields:
            raise ValueError(f"{module.__name__} has no config field {key!r}; fields: {', '.join(sorted(fields))}")
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
    """``python -m experiments.NAME [--quick] [--dataset D] [--data-dir DIR] [--out DIR] [--set k=v]``; ``module``
    is the experiment module or its ``__name__``."""
    module = sys.modules[module] if isinstance(module, str) else module
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
    if args.quick:  # tiny programs: compile fast (see fflab.compilation)
        fast_compile()
    try:
        overrides = {"dataset": args.dataset, "data_dir": args.data_dir}
        for item in args.set:
            if "=" not in item:
                raise ValueError(f"--set expects FIELD=VALUE, got {item!r}")
            key, value = item.split("=", 1)
            overrides[key] = value
        config = configure(module, quick=args.quick, overrides=overrides)
        out = Path(args.out) if args.out else default_out(args.quick)
        result = module.main(config, out)
    except USER_ERRORS as err:  # what `fflab run` reports in one line, reported the same way
        print(f"{parser.prog}: error: {one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    for kind in ("claims", "checks"):
        for c in result.get(kind, []):
            print(f"[{'holds' if c['holds'] else 'FAILS'}] {c['text']}: {c['measured']}")
    return 0
