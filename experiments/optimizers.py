"""SGD, momentum, Nesterov, Adam, Adagrad and Adadelta on the example network, each with a constant and an
annealed step size, for the same number of epochs: which of them need annealing?

Every run starts from the same initial parameters and sees the same mini-batches (same seed); only the
optimiser and its step-size schedule differ. Each optimiser has its own peak step size (config fields
``*_lr``), a commonly used value for batch 100 [Kingma & Ba 2015; Duchi et al. 2011; Zeiler 2012]; with
``sweep_epochs > 0`` a short run at ``sweep_factors`` times each of them checks that the choice is sensible.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np

import fflab
from experiments import _common
from fflab import data, train

NAME = "optimizers"
DESCRIPTION = "Six optimisers (SGD ... Adadelta), constant vs annealed step, same budget: who needs annealing"
SLIDE = "Mini-batch training: important to anneal stepsize towards the end; adaptation (Adam, Adagrad, ...)"
PAPERS = {}

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adagrad", "adadelta")
ADAPTIVE = ("adam", "adagrad", "adadelta")


@dataclass(frozen=True)
class Config:
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    hidden: tuple[int, ...] = (225, 144)
    batch_size: int = 100
    epochs: int = 20
    seed: int = 0
    schedule: str = "cosine"  # the annealed schedule; the other run of each optimiser keeps the peak step
    decay_to: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    sgd_lr: float = 0.1
    momentum_lr: float = 0.01  # with momentum 0.9 the effective step lr / (1 - 0.9) equals SGD's 0.1
    nesterov_lr: float = 0.01
    adam_lr: float = 1e-3
    adagrad_lr: float = 0.03
    adadelta_lr: float = 1.0  # Zeiler's ADADELTA has no step size; optax scales its update by this
    tune: tuple[str, ...] = ("sgd", "adam")  # these also run both schedules at tune_factors x their step
    tune_factors: tuple[float, ...] = (0.3, 3.0)
    sweep_epochs: int = 0  # > 0: also train each optimiser (constant step) at sweep_factors x its step
    sweep_factors: tuple[float, ...] = (0.3, 1.0, 3.0)


QUICK = Config(dataset="digits", hidden=(64, 36), epochs=30, sgd_lr=0.3, momentum_lr=0.03, nesterov_lr=0.03,
               adam_lr=3e-3, adagrad_lr=0.1, tune_factors=())
FULL = Config(sweep_epochs=3)


def learning_rates(config: Config) -> dict[str, float]:
    return {name: getattr(config, f"{name}_lr") for name in OPTIMIZERS}


def _run(config: Config, ds: data.Dataset, name: str, lr: float, schedule: str, epochs: int) -> dict:
    """One training run; ``{"history", "diverged"}`` (a diverged run keeps no history)."""
    model = fflab.classifier("relu")
    key_init, key_data = jax.random.split(jax.random.key(config.seed))
    params, _ = model.init(key_init, [ds.x_train.shape[1], *config.hidden, ds.num_classes])
    steps = epochs * (ds.x_train.shape[0] // config.batch_size)
    opt = train.make_optimizer(name, lr, schedule=schedule, total_steps=steps, decay_to=config.decay_to,
                               momentum=config.momentum, weight_decay=config.weight_decay)
    state = train.init_state(params, opt, key_data)
    try:
        fit = train.fit(state, opt, (ds.x_train, ds.y_train), loss_fn=model.loss_fn, metrics_fn=model.metrics_fn,
                        epochs=epochs, batch_size=config.batch_size, test=(ds.x_test, ds.y_test),
                        progress=sys.stderr.isatty())
    except train.NonFiniteLossError as err:
        return {"history": {}, "diverged": True, "diverged_epoch": err.epoch}
    return {"history": fit.history, "diverged": False}


def _final(run: dict, metric: str) -> float:
    h = run["history"]
    return h[metric][-1] if h else float("nan")


def _best(runs: dict, name: str, schedule: str) -> dict:
    """The run of ``name`` with ``schedule`` (main or grid) that ends with the lowest training loss."""
    mine = [r for r in runs.values() if r["optimizer"] == name and r["schedule"] == schedule]
    best = min(mine, key=lambda r: _final(r, "train_loss") if not r["diverged"] else math.inf)
    return {"learning_rate": best["learning_rate"], "train_loss": _final(best, "train_loss"),
            "test_error": _final(best, "test_error")}


def main(config: Config = QUICK, out_dir=None) -> dict:
    out_dir = Path(out_dir or _common.default_out(config == QUICK))
    ds = data.load(config.dataset, data_dir=config.data_dir)
    lrs = learning_rates(config)
    runs = {}
    for name in OPTIMIZERS:
        factors = (1.0, *config.tune_factors) if name in config.tune else (1.0,)
        for factor in factors:
            for schedule in ("constant", config.schedule):
                key = f"{name}/{schedule}" + ("" if factor == 1.0 else f"@{lrs[name] * factor:g}")
                runs[key] = {"optimizer": name, "schedule": schedule, "learning_rate": lrs[name] * factor,
                             "grid": factor != 1.0,
                             **_run(config, ds, name, lrs[name] * factor, schedule, config.epochs)}
    sweep = {}
    if config.sweep_epochs > 0:
        for name in OPTIMIZERS:
            sweep[name] = []
            for factor in config.sweep_factors:
                r = _run(config, ds, name, lrs[name] * factor, "constant", config.sweep_epochs)
                sweep[name].append({"factor": factor, "learning_rate": lrs[name] * factor,
                                    "train_loss": _final(r, "train_loss"),
                                    "test_error": _final(r, "test_error")})

    summary = {
        name: {
            label: {"train_loss": _final(runs[f"{name}/{s}"], "train_loss"),
                    "test_error": _final(runs[f"{name}/{s}"], "test_error"),
                    "best_test_error": min(runs[f"{name}/{s}"]["history"].get("test_error", [math.nan]))}
            for label, s in (("constant", "constant"), ("annealed", config.schedule))
        }
        for name in OPTIMIZERS
    }
    gain = {  # how much annealing lowers the final training loss at the chosen step: constant / annealed
        name: summary[name]["constant"]["train_loss"] / summary[name]["annealed"]["train_loss"]
        for name in OPTIMIZERS
    }
    test_gain = {  # percentage points of test error that annealing saves at the chosen step
        name: summary[name]["constant"]["test_error"] - summary[name]["annealed"]["test_error"]
        for name in OPTIMIZERS
    }
    # Fair comparison for the tuned optimisers: each schedule at its own best step size of the grid.
    tuned = {name: {label: _best(runs, name, s) for label, s in (("constant", "constant"),
                                                                  ("annealed", config.schedule))}
             for name in OPTIMIZERS if name in config.tune}
    for name in ("sgd", "adam"):
        tuned.setdefault(name, {"constant": _best(runs, name, "constant"),
                                "annealed": _best(runs, name, config.schedule)})

    def tuned_gain(name):
        t = tuned[name]
        return {"train_loss_ratio": t["constant"]["train_loss"] / t["annealed"]["train_loss"],
                "test_error_saved": t["constant"]["test_error"] - t["annealed"]["test_error"],
                "steps": [t["constant"]["learning_rate"], t["annealed"]["learning_rate"]]}

    g_sgd, g_adam = tuned_gain("sgd"), tuned_gain("adam")
    claims = [
        _common.claim(
            "important to anneal the step size towards the end (SGD): annealing lowers the final train "
            "loss (constant / annealed > 1) and test error (points saved >= 0), each schedule at its best "
            "step",
            g_sgd, g_sgd["train_loss_ratio"] > 1.0 and g_sgd["test_error_saved"] >= 0.0),
        _common.claim(
            "Adam adapts its steps but still gains from annealing: lower final train loss (constant / "
            "annealed > 1) and test error (points saved >= 0), each schedule at its best step",
            g_adam, g_adam["train_loss_ratio"] > 1.0 and g_adam["test_error_saved"] >= 0.0),
        _common.claim(
            "adaptive step sizes (Adam, Adagrad, Adadelta) replace annealing: each gains less from annealing "
            "than SGD (train loss constant / annealed, at the chosen steps)",
            {name: gain[name] for name in ("sgd", *ADAPTIVE)},
            all(gain[name] < gain["sgd"] for name in ADAPTIVE)),
    ]
    results = {
        "learning_rates": lrs,
        "runs": runs,
        "summary": summary,
        "tuned": tuned,
        "annealing_gain_train_loss": gain,
        "annealing_gain_test_error": test_gain,
        "sweep": sweep,
        "updates_per_epoch": ds.x_train.shape[0] // config.batch_size,
    }
    diverged = [k for k, r in runs.items() if r["diverged"]]
    notes = (
        f"Data set: {config.dataset}"
        + (" (Fashion-MNIST stands in for MNIST, which cannot be downloaded here)" if config.dataset ==
           "fashion-mnist" else "")
        + f". Network {ds.x_train.shape[1]}-{'-'.join(map(str, config.hidden))}-{ds.num_classes} relu, batch "
        f"{config.batch_size}, {config.epochs} epochs for every run, same init and mini-batches. Peak step "
        f"sizes: {', '.join(f'{k} {v:g}' for k, v in lrs.items())} (momentum {config.momentum}); annealed = "
        f"{config.schedule} decay to {config.decay_to:g}x the peak over the run, per step."
        + (f" {', '.join(config.tune)} were also run at {', '.join(f'{f:g}' for f in config.tune_factors)}x "
           "their step with both schedules; the first two claims compare each schedule at its best step."
           if config.tune and config.tune_factors else "")
    )
    if diverged:
        notes += f" Diverged (non-finite loss): {', '.join(diverged)}."
    notes += _explain(claims, gain, g_sgd, g_adam)
    payload = _common.save(NAME, config, results, claims, out_dir, notes=notes)
    plot(payload, out_dir)
    return payload


def _explain(claims, gain: dict, g_sgd: dict, g_adam: dict) -> str:
    """Why a claim failed, from the numbers (the gallery prints this under the experiment)."""
    out = []
    for c, g, who in ((claims[0], g_sgd, "SGD"), (claims[1], g_adam, "Adam")):
        if c["holds"]:
            continue
        if g["train_loss_ratio"] <= 1.0:
            out.append(
                f"{who}: the constant step ended with the lower train loss "
                f"(ratio {g['train_loss_ratio']:.2f}): within this budget it had not reached the noise floor "
                "where annealing pays, so annealing only cut training short (on a data set the net fits "
                "exactly, like the 8x8 digits, the mini-batch noise vanishes with the loss: there is no "
                "floor).")
        if g["test_error_saved"] < 0:
            out.append(f"{who}: annealing cost {-g['test_error_saved']:.2f} points of test error.")
    if not claims[2]["holds"]:
        more = [n for n in ADAPTIVE if gain[n] >= gain["sgd"]]
        out.append(
            f"Adaptive methods: {', '.join(more)} gained at least as much from annealing as SGD "
            f"({', '.join(f'{n} {gain[n]:.2f}' for n in ('sgd', *ADAPTIVE))}); a per-parameter step scale "
            "does not remove the mini-batch noise of a constant step.")
        if gain["adagrad"] < 1.0:
            out.append("Adagrad did better without annealing: its steps shrink by themselves as squared "
                       "gradients accumulate.")
    return (" Claims that failed: " + " ".join(out)) if out else ""


def plot(payload: dict, out_dir) -> None:
    from matplotlib import ticker

    plt = _common.style()
    r = payload["results"]
    cfg = payload["config"]
    colors = {name: f"C{i}" for i, name in enumerate(OPTIMIZERS)}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), layout="constrained")
    for run in r["runs"].values():
        h = run["history"]
        if not h or run["grid"]:
            continue
        style = "--" if run["schedule"] == "constant" else "-"
        label = f"{run['optimizer']} ({run['learning_rate']:g})" if run["schedule"] != "constant" else None
        for ax, metric in zip(axes, ("train_loss", "test_error"), strict=True):
            ax.plot(h["epoch"], h[metric], ls=style, color=colors[run["optimizer"]], label=label, lw=1.4)
    axes[0].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("epoch")
    axes[0].set(title="training loss", ylabel="cross-entropy (whole training set)")
    axes[1].set(title="test error", ylabel="error (%)")
    axes[0].plot([], [], color="gray", ls="-", label=f"annealed ({cfg['schedule']})")
    axes[0].plot([], [], color="gray", ls="--", label="constant step")
    axes[0].legend(ncol=2, fontsize=8)
    fig.suptitle(f"same budget ({cfg['epochs']} epochs, {r['updates_per_epoch']} updates each) on "
                 f"{cfg['dataset']}: peak step size in brackets")
    _common.savefig(fig, out_dir, NAME)

    s = r["summary"]
    names = [n for n in OPTIMIZERS if n in s]
    x = np.arange(len(names))
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
    for ax, metric, title in zip(axes, ("train_loss", "test_error"),
                                 ("final training loss", "final test error (%)"), strict=True):
        for j, (schedule, hatch) in enumerate((("constant", "//"), ("annealed", ""))):
            vals = [s[n][schedule][metric] for n in names]
            ax.bar(x + (j - 0.5) * 0.38, vals, width=0.38, label=schedule, hatch=hatch,
                   color=[colors[n] for n in names], alpha=0.55 if schedule == "constant" else 0.95,
                   edgecolor="k", lw=0.6)
        ax.set_xticks(x, names)
        ax.set_title(title)
        if metric == "train_loss":
            ax.set_yscale("log")
            for xi, n in zip(x, names, strict=True):
                g = r["annealing_gain_train_loss"][n]
                top = max(s[n]["constant"][metric], s[n]["annealed"][metric])
                ax.annotate(f"x{g:.1f}", (xi, top), ha="center", va="bottom", fontsize=8,
                            xytext=(0, 2), textcoords="offset points")
        else:
            lo = min(min(s[n][k][metric] for k in ("constant", "annealed")) for n in names)
            hi = max(max(s[n][k][metric] for k in ("constant", "annealed")) for n in names)
            ax.set_ylim(max(0.0, lo - 0.3 * (hi - lo + 0.5)), hi + 0.15 * (hi - lo + 0.5))
        ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, fc="w", ec="k", hatch="//", label="constant"),
                           plt.Rectangle((0, 0), 1, 1, fc="gray", ec="k", label="annealed")], fontsize=8)
    fig.suptitle("which optimisers need annealing? (x = constant / annealed final train loss)")
    _common.savefig(fig, out_dir, f"{NAME}_annealing")

    grid = [run for run in r["runs"].values() if run["grid"]]
    panels = [p for p, present in (("sweep", bool(r["sweep"])), ("grid", bool(grid))) if present]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 4.0), layout="constrained",
                             squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        if panel == "sweep":
            for name, rows in r["sweep"].items():
                ax.plot([row["factor"] for row in rows], [row["train_loss"] for row in rows], marker="o",
                        color=colors[name], label=f"{name} ({r['learning_rates'][name]:g})")
            ax.set(title=f"step-size check: {cfg['sweep_epochs']} epochs, constant step",
                   xlabel="step size / chosen step size (in brackets)", ylabel="final training loss")
        else:
            for name in cfg["tune"]:
                for schedule, ls in (("constant", "--"), (cfg["schedule"], "-")):
                    mine = sorted((run["learning_rate"], run["history"]["train_loss"][-1])
                                  for run in r["runs"].values() if run["history"]
                                  and run["optimizer"] == name and run["schedule"] == schedule)
                    ax.plot([m[0] / r["learning_rates"][name] for m in mine], [m[1] for m in mine], ls=ls,
                            marker="o", color=colors[name], label=f"{name}, {schedule}")
            ax.set(title=f"constant vs annealed over step sizes, {cfg['epochs']} epochs",
                   xlabel="step size / chosen step size", ylabel="final training loss")
        ax.set_xscale("log")
        factors = sorted({round(f, 6) for f in (1.0, *cfg["sweep_factors"], *cfg["tune_factors"])})
        ax.set_xticks(factors, [f"{f:g}x" for f in factors])
        ax.xaxis.set_minor_locator(ticker.NullLocator())
        ax.set_yscale("log")
        ax.legend(fontsize=8, handlelength=3)
    _common.savefig(fig, out_dir, f"{NAME}_steps")


if __name__ == "__main__":
    raise SystemExit(_common.module_cli(sys.modules[__name__]))
