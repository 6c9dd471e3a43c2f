"""Mini-batch training of the example net. Annealing: six optimisers from one init on the same mini-batches, each at
a common peak step for batch 100 (SGD and Adam also at ``tune_factors`` x it), constant and cosine-annealed: at equal
peaks and at each schedule's best. Batch size: SGD with several batch sizes and full-batch GD at equal epochs, each at
its best constant step (the steps as lanes); the RMS of ``g_B - g`` against ``B`` (sampling: ~ 1/sqrt(B), B << N)."""

import functools
import math
import sys
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

import fflab
from experiments import _common
from fflab import data, train

NAME = "optimizers"
DESCRIPTION = "Six optimisers, constant vs annealed step (equal peaks and tuned); mini-batch size and gradient noise"
SLIDE = ("Mini-batch training: no need to have an accurate estimate of g; 600 updates with 100 samples per epoch; "
         "important to anneal stepsize towards the end; adaptation of eta_k possible (Adam, Adagrad, Adadelta)")
PAPERS = {
    "Polyak 1964 (momentum)": "https://doi.org/10.1016/0041-5553(64)90137-5",
    "Sutskever et al. 2013 (Nesterov momentum)": "https://proceedings.mlr.press/v28/sutskever13.html",
    "Duchi, Hazan & Singer 2011 (Adagrad)": "https://jmlr.org/papers/v12/duchi11a.html",
    "Zeiler 2012 (Adadelta)": "https://arxiv.org/abs/1212.5701",
    "Kingma & Ba 2015 (Adam)": "https://arxiv.org/abs/1412.6980",
    "Loshchilov & Hutter 2017 (cosine anneal)": "https://arxiv.org/abs/1608.03983",
    "Bottou, Curtis & Nocedal 2018 (mini-batch variance)": "https://arxiv.org/abs/1606.04838",
}
ADAPTIVE = ("adam", "adagrad", "adadelta")


@dataclass(frozen=True)
class Config:
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    hidden: tuple[int, ...] = (225, 144)
    batch_size: int = 100
    epochs: int = 20
    seed: int = 0
    optimizers: tuple[str, ...] = ("sgd", "momentum", "nesterov", "adam", "adagrad", "adadelta")  # sgd, adam needed
    steps: tuple[float, ...] = (0.1, 0.01, 0.01, 1e-3, 0.03, 1.0)  # peak step of each; momentum 0.9 makes
    # momentum's effective step 0.01 / (1 - 0.9) equal SGD's 0.1; Adadelta has no step, optax scales by it
    schedule: str = "cosine"  # the annealed schedule, to decay_to x the peak over the run
    decay_to: float = 0.01
    momentum: float = 0.9
    tune: tuple[str, ...] = ("sgd", "adam")  # these also run both schedules at tune_factors x their step
    tune_factors: tuple[float, ...] = (0.3, 3.0)
    batch_sizes: tuple[int, ...] = (20, 100, 1000)  # with batch_size, against full-batch GD, at equal epochs
    batch_steps: tuple[float, ...] = (0.03, 0.1, 0.3, 1.0, 3.0)
    batch_epochs: int = 5
    noise_sizes: tuple[int, ...] = (10, 30, 100, 300, 1000, 3000)
    noise_draws: int = 128


QUICK = Config(dataset="digits", hidden=(64, 36), epochs=30, steps=(0.3, 0.03, 0.03, 3e-3, 0.1, 1.0),
               tune_factors=(), batch_sizes=(10, 100), noise_sizes=(4, 8, 16, 32, 64, 128))
FULL = Config()


def gradient_noise(loss_fn, params, x, y, sizes, draws: int, seed: int) -> dict[int, float]:
    """RMS over ``draws`` mini-batches (drawn without replacement) of ``||g_B - g||``, per batch size ``B``.

    ``g`` is the gradient of ``loss_fn(params, x, y)`` on all of ``(x, y)``, ``g_B`` on a mini-batch of ``B``.
    Returns ``{B: RMS}``, with ``||g||`` under ``"full"``.
    """
    rng, x, y = np.random.default_rng(seed), jnp.asarray(x), jnp.asarray(y)
    batches = {int(b): np.stack([rng.choice(len(x), b, replace=False) for _ in range(draws)]) for b in sizes}
    out = {b: [float(v) for v in _rms_distance(loss_fn, params, x, y, idx)] for b, idx in batches.items()}
    return {"full": next(iter(out.values()))[1], **{b: rms for b, (rms, _) in out.items()}}


@functools.partial(jax.jit, static_argnums=0)
def _rms_distance(loss_fn, params, x, y, batches):
    """RMS of ``||g_B - g||`` over the rows of ``batches`` (one at a time: ``lax.map``), and ``||g||``."""
    grad = jax.grad(loss_fn)
    full = grad(params, x, y)
    squares = jax.lax.map(lambda i: optax.tree.norm(optax.tree.sub(grad(params, x[i], y[i]), full)) ** 2, batches)
    return jnp.sqrt(jnp.mean(squares)), optax.tree.norm(full)


def main(config: Config, out_dir) -> dict:
    ds = data.load(config.dataset, data_dir=config.data_dir)
    x, y, test = ds.x_train, ds.y_train, (ds.x_test, ds.y_test)
    model = fflab.classifier("relu")
    key_init, key_data = jax.random.split(jax.random.key(config.seed))
    params0, _ = model.init(key_init, [x.shape[1], *config.hidden, ds.num_classes])
    per_epoch = len(x) // config.batch_size

    # Annealing: every optimiser at its step (and tuned ones at tune_factors x it), constant and annealed.
    runs, trained = {}, None
    for name, step in zip(config.optimizers, config.steps, strict=True):
        for factor in (1.0, *config.tune_factors) if name in config.tune else (1.0,):
            for schedule in ("constant", config.schedule):
                opt = train.make_optimizer(name, step * factor, schedule=schedule, decay_to=config.decay_to,
                                           total_steps=config.epochs * per_epoch, momentum=config.momentum)
                try:
                    fit = train.fit(train.init_state(params0, opt, key_data), opt, (x, y), loss_fn=model.loss_fn,
                                    metrics_fn=model.metrics_fn, epochs=config.epochs, batch_size=config.batch_size,
                                    test=test, progress=sys.stderr.isatty())
                    run = {"history": fit.history, "diverged": False}
                    trained = fit.state.params if (name, factor, schedule) == ("sgd", 1.0, "constant") else trained
                except train.NonFiniteLossError as err:
                    run = {"history": {}, "diverged": True, "diverged_epoch": err.epoch}
                runs[f"{name}/{schedule}@{step * factor:g}"] = {"optimizer": name, "schedule": schedule,
                                                               "learning_rate": step * factor, "factor": factor, **run}

    def final(run, metric):
        return run["history"][metric][-1] if run["history"] else math.inf

    def compare(constant, annealed):  # constant / annealed final train loss; test-error points annealing saves
        return {"steps": [constant["learning_rate"], annealed["learning_rate"]],
                "train_loss_ratio": final(constant, "train_loss") / final(annealed, "train_loss"),
                "test_error_saved": final(constant, "test_error") - final(annealed, "test_error")}

    annealing = {}
    for name in config.optimizers:
        mine = {s: [r for r in runs.values() if r["optimizer"] == name and r["schedule"] == s]
                for s in ("constant", config.schedule)}
        annealing[name] = {
            "equal_peak": [compare(c, a) for c, a in zip(mine["constant"], mine[config.schedule], strict=True)],
            "tuned": compare(*(min(mine[s], key=lambda r: final(r, "train_loss")) for s in mine)),
        }
        annealing[name]["chosen"] = annealing[name]["equal_peak"][0]  # at the chosen step (factor 1)

    # Mini-batches: SGD at a constant step, every step of the grid as one lane, per batch size and full batch.
    sgd = optax.inject_hyperparams(optax.sgd)(learning_rate=1.0)
    by_batch = {}
    for b in (*config.batch_sizes, len(x)):
        states = train.lanes(train.init_state(params0, sgd, key_data), learning_rate=config.batch_steps)
        epoch = train.make_train_epoch(sgd, loss_fn=model.loss_fn, batch_size=b, lanes=True)
        for _ in range(config.batch_epochs):
            states, _ = epoch(states, x, y)
        losses = [train.evaluate(model.metrics_fn, train.lane(states, i).params, x, y)["loss"]
                  for i in range(len(config.batch_steps))]
        by_batch[b] = {"updates": config.batch_epochs * (len(x) // b), "train_loss": losses,
                       "best": float(np.nanmin(losses)), "best_step": config.batch_steps[int(np.nanargmin(losses))]}
    noise = {point: gradient_noise(model.loss_fn, p, x, y, config.noise_sizes, config.noise_draws, config.seed)
             for point, p in (("init", params0), ("trained", trained))}
    slope = {point: float(np.polyfit(np.log(config.noise_sizes), np.log([n[b] for b in config.noise_sizes]), 1)[0])
             for point, n in noise.items()}
    gd_over_100 = by_batch[len(x)]["best"] / by_batch[config.batch_size]["best"]

    sgd_a, adam_a = annealing["sgd"], annealing["adam"]
    gain = {name: annealing[name]["chosen"]["train_loss_ratio"] for name in config.optimizers}
    adaptive = [n for n in ADAPTIVE if n in gain]
    in_band = _common.both(*(v for s in slope.values() for v in (_common.above(s, -0.6), _common.below(s, -0.4))))

    def helps(tuned):  # annealing lowers both the final train loss and the test error
        return _common.both(_common.above(tuned["train_loss_ratio"], 1), _common.above(tuned["test_error_saved"], 0))

    claims = [
        _common.claim("important to anneal the step size towards the end (SGD), at equal peak steps: annealing "
                      "lowers the final train loss at every peak step tried (smallest constant / annealed > 1)",
                      [c["train_loss_ratio"] for c in sgd_a["equal_peak"]],
                      _common.above(min(c["train_loss_ratio"] for c in sgd_a["equal_peak"]), 1.0)),
        _common.claim("important to anneal (SGD), each schedule at its own best step: annealing lowers the final "
                      "train loss (constant / annealed > 1) and the test error (points saved > 0)",
                      sgd_a["tuned"], helps(sgd_a["tuned"])),
        _common.claim("Adam adapts its steps but still gains from annealing, each schedule at its own best step: "
                      "lower final train loss (constant / annealed > 1) and test error (points saved > 0)",
                      adam_a["tuned"], helps(adam_a["tuned"])),
        _common.claim("adaptive step sizes (Adam, Adagrad, Adadelta) replace annealing: each gains less from "
                      "annealing than SGD (train loss constant / annealed, at the chosen steps)",
                      {n: gain[n] for n in ("sgd", *adaptive)},
                      _common.both(*(_common.below(gain[n], gain["sgd"]) for n in adaptive))),
        _common.claim(f"no need for an accurate gradient: in {config.batch_epochs} epochs, batches of 100 reach a "
                      "lower training loss than full-batch GD, each at its best step (GD / batch 100 > 1)",
                      gd_over_100, _common.above(gd_over_100, 1.0)),
        _common.claim("mini-batch gradient noise falls like 1/sqrt(batch): log-log slope of the RMS distance "
                      "||g_B - g|| against B in [-0.6, -0.4], at init and after training", slope, in_band),
    ]
    results = {"runs": runs, "annealing": annealing, "annealing_gain_train_loss": gain, "updates_per_epoch": per_epoch,
               "by_batch": by_batch, "gd_over_batch100": gd_over_100, "gradient_noise": noise, "noise_slope": slope}
    notes = (
        f"Data set: {config.dataset}"
        + (" (Fashion-MNIST stands in for MNIST, which cannot be downloaded here)" if config.dataset ==
           "fashion-mnist" else "")
        + f". Network {x.shape[1]}-{'-'.join(map(str, config.hidden))}-{ds.num_classes} relu, batch "
        f"{config.batch_size}, {config.epochs} epochs for every run, same init and mini-batches; annealed = "
        f"{config.schedule} decay to {config.decay_to:g}x the peak. Annealing, constant / annealed final train loss "
        "at equal peak steps: " + "; ".join(
            f"{n} " + ", ".join(f"{c['steps'][0]:g}: {c['train_loss_ratio']:.2f}" for c in a["equal_peak"])
            + (f" (tuned: constant {a['tuned']['steps'][0]:g} vs annealed {a['tuned']['steps'][1]:g}: "
               f"{a['tuned']['train_loss_ratio']:.2f})" if len(a["equal_peak"]) > 1 else "")
            for n, a in annealing.items())
        + f". Mini-batches: SGD, constant step, best of {list(config.batch_steps)} per batch size, "
        f"{config.batch_epochs} epochs; best final train loss " + ", ".join(
            f"batch {b}: {v['best']:.3f} ({v['updates']} updates)" for b, v in by_batch.items())
        + f". Gradient noise: {config.noise_draws} mini-batches per size; relative noise at batch "
        f"{config.noise_sizes[2]}: " + ", ".join(
            f"{p} {noise[p][config.noise_sizes[2]] / noise[p]['full']:.2f} x ||g||" for p in noise) + "."
        + "".join(f" Diverged (non-finite loss): {k}." for k, r in runs.items() if r["diverged"])
    )
    return _common.save(NAME, config, results, claims, out_dir, notes=notes, plot=plot)


def plot(payload: dict, out_dir) -> None:
    plt, r, cfg = _common.style(), payload["results"], payload["config"]
    names = list(r["annealing"])
    fig, axes = plt.subplots(2, math.ceil(len(names) / 2), figsize=(4 * math.ceil(len(names) / 2), 6.5),
                             sharex=True, sharey=True, layout="constrained", squeeze=False)
    for ax, name in zip(axes.T.flat, names, strict=False):
        for run in r["runs"].values():
            if run["optimizer"] == name and run["factor"] == 1.0 and run["history"]:
                ax.plot(run["history"]["eval_epoch"], run["history"]["train_loss"],
                        ls="--" if run["schedule"] == "constant" else "-", label=run["schedule"],
                        color="C0" if run["schedule"] == "constant" else "C3")
        ax.set(title=f"{name} ({r['annealing'][name]['chosen']['steps'][0]:g}): "
               f"x{r['annealing_gain_train_loss'][name]:.2f}", yscale="log", xlabel="epoch")
    axes[0, 0].legend()
    fig.supylabel("training loss (whole training set)")
    fig.suptitle(f"constant vs annealed step, same budget ({cfg['epochs']} epochs of {r['updates_per_epoch']} "
                 "updates); x = constant / annealed final loss (> 1: annealing helps)")
    _common.savefig(fig, out_dir, NAME)

    tuned = [n for n in cfg["tune"] if n in names and len(r["annealing"][n]["equal_peak"]) > 1]
    fig, axes = plt.subplots(1, len(tuned) + 2, figsize=(4.6 * (len(tuned) + 2), 4), layout="constrained")
    for ax, name in zip(axes, tuned, strict=False):
        for schedule, ls in (("constant", "--"), (cfg["schedule"], "-")):
            pts = sorted((run["learning_rate"], run["history"]["train_loss"][-1]) for run in r["runs"].values()
                         if run["optimizer"] == name and run["schedule"] == schedule and run["history"])
            ax.plot(*zip(*pts, strict=True), ls=ls, marker="o", label=schedule)
        ax.set(title=f"{name}: equal peaks vs each one's best", xlabel="peak step", ylabel="final training loss",
               xscale="log", xticks=[p[0] for p in pts], xticklabels=[f"{p[0]:.2g}" for p in pts])
        ax.minorticks_off()
        ax.legend()
    for b, v in r["by_batch"].items():
        axes[-2].plot(cfg["batch_steps"], v["train_loss"], marker="o", label=f"batch {b} ({v['updates']} updates)")
    axes[-2].set(title=f"SGD, {cfg['batch_epochs']} epochs: final loss vs step", xlabel="step size (constant)",
                 ylabel="final training loss (off the top: diverged)", xscale="log", yscale="log", ylim=(None, 3))
    axes[-2].legend(fontsize=8)
    ax, sizes = axes[-1], np.array(cfg["noise_sizes"])
    for point, n in r["gradient_noise"].items():
        rel = np.array([n[str(b)] for b in sizes]) / n["full"]
        ax.plot(sizes, rel, marker="o", label=f"{point}: slope {r['noise_slope'][point]:.2f}")
        ax.plot(sizes, rel[0] * np.sqrt(sizes[0] / sizes), color="gray", ls=":", lw=1)
    ax.axhline(1.0, color="k", ls="--", lw=0.8, label="noise as large as the gradient")
    ax.set(title="mini-batch gradient noise (dotted: 1/sqrt(B))", xlabel="batch size B", xscale="log",
           ylabel="RMS ||g_B - g|| / ||g||", yscale="log")
    ax.legend()
    fig.suptitle("annealing at equal peak steps and at each schedule's best; mini-batches against full-batch GD")
    _common.savefig(fig, out_dir, f"{NAME}_steps")


if __name__ == "__main__":
    raise SystemExit(_common.module_cli(__name__))
