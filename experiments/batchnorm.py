"""Batch normalisation on Ioffe & Szegedy's MNIST net: faster training, steady sigmoid inputs, larger steps.

Ioffe & Szegedy (2015, Sec. 4.1) train a net with 3 fully-connected sigmoid hidden layers of 100 units,
small random Gaussian initial weights, batches of 60 and 50,000 steps on MNIST, with and without batch norm
before each sigmoid, and show (Fig. 1) (a) test accuracy against training steps and (b, c) the 15th, 50th and
85th percentiles of a typical sigmoid's input. Inference uses population statistics (their Algorithm 2), and
so do our accuracies (the statistics of ``population_samples`` training images).

A sweep over a log grid of SGD rates (``train.lanes``) for ``sweep_steps`` steps gives the baseline rate
(the plain net's best) and, per cut, the largest rate that still trains (finite losses, test error below the
cut), BN over plain. The BN sweep also runs 5x and 30x the baseline (BN-x5 and BN-x30, Sec. 4.2.2). Both nets
then go on at the baseline rate to ``steps``, in chunks of ``eval_every`` steps (one pass cut into chunks of
a fixed permutation), measuring the test accuracy and the percentiles of unit ``probe_unit`` of the last
hidden layer on ``probe_samples`` test images (BN with those images' own statistics). Last, the trained BN
net's modes: mini-batch statistics (the test set as one batch), running averages, population statistics.
"""

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

import fflab
from experiments import _common
from fflab import data, mlp, norm, train

NAME = "batchnorm"
DESCRIPTION = "Batch norm on Ioffe & Szegedy's 3x100 sigmoid net: faster training, steady inputs, larger lr"
SLIDE = "Batch normalization, Ioffe & Szegedy: improves learning, allows bigger learning rates (5x, 30x)"
PAPERS = {"Ioffe & Szegedy 2015": "https://arxiv.org/abs/1502.03167"}

SETTINGS = ("plain", "batchnorm")
PERCENTILES = (15, 50, 85)
MULTIPLES = (5, 30)  # the slide's "5x and 30x": Ioffe & Szegedy's BN-x5 and BN-x30


@dataclass(frozen=True)
class Config:
    dataset: str = "digits"
    data_dir: str | None = None
    hidden: tuple = (100, 100, 100)
    init_std: float = 0.01  # "small random Gaussian values": N(0, 0.01^2), Caffe's customary Gaussian filler
    batch_size: int = 60
    bn_momentum: float = 0.9  # weight of the old running averages per step
    steps: int = 920
    eval_every: int = 23  # steps per chunk; steps and sweep_steps are multiples of it
    probe_unit: int = 0
    probe_samples: int = 300
    population_samples: int = 1437
    sweep_lrs: tuple = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
    sweep_steps: int = 690
    cuts: tuple = (10.0, 50.0)  # the window of 'still trains' error cuts (percent) the 5x claim reads
    seed: int = 0


# digits (24 steps an epoch): from N(0, 0.01^2) the plain net stays at chance for 920 steps at every rate.
QUICK = Config(init_std=0.1)
FULL = Config(dataset="fashion-mnist", bn_momentum=0.99, steps=50000, eval_every=500, probe_samples=2000,
              population_samples=10000, sweep_lrs=tuple(2.0 ** (k / 2) for k in range(-4, 15)), sweep_steps=2000,
              cuts=(15.0, 50.0))


def sigmoid_inputs(params, model_state, x):
    """Inputs ``(n, units)`` to the last hidden layer's sigmoids; BN uses the statistics of ``x`` itself."""
    if model_state is None:
        return mlp.forward(params, x, activation="sigmoid")[0][-2]
    h = x
    for layer, s in zip(params[:-1], model_state, strict=True):
        z, _ = norm.batchnorm(layer, s, h @ layer["W"], train=True)
        h = jax.nn.sigmoid(z)
    return z


@functools.partial(jax.jit, static_argnames="probe")
def measure(params, model_state, x_pop, xt, yt, *, probe: int):
    """Test error (%), BN with population statistics (those of ``x_pop``); the probe's percentiles."""
    z = sigmoid_inputs(params, model_state, xt[:probe])
    pct = jnp.percentile(z, jnp.asarray(PERCENTILES, z.dtype), axis=0)
    if model_state is None:
        return fflab.classifier("sigmoid").metrics_fn(params, xt, yt)["error"], pct
    bn = fflab.classifier("sigmoid", "batchnorm", bn_momentum=0.0)
    population = bn.apply(params, model_state, x_pop, train=True)[1]  # momentum 0: the statistics of x_pop
    return bn.metrics_fn(params, population, xt, yt)["error"], pct


@functools.partial(jax.jit, static_argnames="size")
def _chunk(x, y, key, i, *, size: int):
    """Chunk ``i`` (of ``size`` samples) of the permutation ``permutation(key, n)`` of ``(x, y)``."""
    perm = jax.lax.dynamic_slice_in_dim(jax.random.permutation(key, x.shape[0]), i * size, size)
    return jnp.take(x, perm, axis=0), jnp.take(y, perm, axis=0)


def run_setting(config: Config, ds, sizes, setting: str, lrs, curve_lr=None) -> dict:
    """Every rate of ``lrs`` for ``sweep_steps`` (lanes, same weights and mini-batches); then the lane at
    ``curve_lr`` (default: the best after the sweep) alone to ``steps``, measured after every chunk."""
    model = fflab.classifier("sigmoid", None if setting == "plain" else setting, bn_momentum=config.bn_momentum)
    x, y, xt, yt = (jnp.asarray(a) for a in (ds.x_train, ds.y_train, ds.x_test, ds.y_test))
    x_pop = x[: config.population_samples]
    size = config.eval_every * config.batch_size
    k_init, k_data = jax.random.split(jax.random.key(config.seed))
    params, model_state = model.init(k_init, sizes)
    params = [dict(p, W=config.init_std * jax.random.normal(k, p["W"].shape))
              for p, k in zip(params, jax.random.split(k_init, len(params)), strict=True)]
    opt = optax.inject_hyperparams(optax.sgd)(learning_rate=1.0)
    states = train.lanes(train.init_state(params, opt, k_data, model_state), learning_rate=lrs)
    epoch_all = train.make_train_epoch(opt, loss_fn=model.loss_fn, batch_size=config.batch_size, lanes=True)
    epoch = train.make_train_epoch(opt, loss_fn=model.loss_fn, batch_size=config.batch_size)

    def chunk(c):  # chunk c of the run: pass p over the data, cut into chunks of a fixed permutation
        p, i = divmod(c, len(x) // size)
        return _chunk(x, y, jax.random.fold_in(k_data, p), i, size=size)

    def measured(s):
        return measure(s.params, s.model_state, x_pop, xt, yt, probe=config.probe_samples)

    diverged, kept = np.zeros(len(lrs), bool), [states]  # the lanes after every chunk of the sweep
    n_sweep = config.sweep_steps // config.eval_every
    for c in range(n_sweep):
        states, stats = epoch_all(states, *chunk(c))
        diverged |= ~np.isfinite(np.asarray(stats.loss)).all(axis=1)
        kept.append(states)
    errors = [None if bad else float(measured(train.lane(states, j))[0]) for j, bad in enumerate(diverged)]
    curve_lr = curve_lr or lrs[int(np.argmin([np.inf if e is None else e for e in errors]))]
    curve = [train.lane(s, list(lrs).index(curve_lr)) for s in kept]
    state = curve[-1]
    for c in range(n_sweep, config.steps // config.eval_every):  # only the curve's lane goes on
        state, _ = epoch(state, *chunk(c))
        curve.append(state)
    evals = [measured(s) for s in curve]
    pct = np.asarray([q for _, q in evals], np.float64)  # (evals, 3, units)
    return {"sweep": {"learning_rates": list(lrs), "test_error": errors}, "state": state,
            "curve": {"learning_rate": curve_lr, "steps": [int(s.step) for s in curve],
                      "test_accuracy": [100.0 - float(e) for e, _ in evals],
                      "probe_percentiles": pct[:, :, config.probe_unit].T,
                      # per unit of the layer: how far its median and its 15-85 spread moved over training
                      "median_range": np.ptp(pct[:, 1], axis=0), "spread_range": np.ptp(pct[:, 2] - pct[:, 0], 0)}}


@jax.jit
def _predictions(params, model_state, x, xt):
    bn = fflab.classifier("sigmoid", "batchnorm", bn_momentum=0.0)
    population = bn.apply(params, model_state, x, train=True)[1]  # momentum 0: the whole training set's
    logits = {"train_mode": bn.apply(params, model_state, xt, train=True)[0],
              "running_averages": bn.apply(params, model_state, xt)[0],
              "population": bn.apply(params, population, xt)[0]}
    return {k: jnp.argmax(v, axis=1) for k, v in logits.items()}


def mode_agreement(state, ds) -> dict:
    """BN predictions in training mode, with the running averages and with the training set's statistics."""
    preds = jax.tree_util.tree_map(np.asarray, _predictions(state.params, state.model_state, ds.x_train, ds.x_test))
    return {"test_accuracy": {k: 100.0 * float(np.mean(v == ds.y_test)) for k, v in preds.items()},
            "identical_to_train_mode": {k: 100.0 * float(np.mean(v == preds["train_mode"]))
                                        for k, v in preds.items()}}


def main(config: Config, out_dir) -> dict:
    ds = data.load(config.dataset, data_dir=config.data_dir)
    sizes = [ds.x_train.shape[1], *config.hidden, ds.num_classes]
    runs = {"plain": run_setting(config, ds, sizes, "plain", config.sweep_lrs)}
    base = runs["plain"]["curve"]["learning_rate"]  # the baseline: the plain net's best rate after the sweep
    bn_lrs = tuple(sorted({*config.sweep_lrs, *(m * base for m in MULTIPLES)}))
    runs["batchnorm"] = run_setting(config, ds, sizes, "batchnorm", bn_lrs, curve_lr=base)
    curves, sweeps = ({s: runs[s][k] for s in SETTINGS} for k in ("curve", "sweep"))
    modes = mode_agreement(runs["batchnorm"]["state"], ds)

    # (a) Fig. 1a: accuracy over training at the same rate.
    plain_final, bn_final = curves["plain"]["test_accuracy"][-1], curves["batchnorm"]["test_accuracy"][-1]
    reach = next((s for s, a in zip(curves["batchnorm"]["steps"], curves["batchnorm"]["test_accuracy"], strict=True)
                  if a >= plain_final), None)
    # (b, c) Fig. 1b, c: how far each unit's median and 15-85 spread moved, median over the layer's units.
    drift = {s: {k: float(np.median(curves[s][k])) for k in ("median_range", "spread_range")} for s in SETTINGS}
    # The 5x: the largest rate that still trains (finite, test error below the cut) on the common grid, per cut.
    grid = {s: [(lr, e) for lr, e in zip(sweeps[s]["learning_rates"], sweeps[s]["test_error"], strict=True)
                if lr in config.sweep_lrs and e is not None] for s in SETTINGS}
    cuts = np.arange(5.0, 90.0, 0.5)
    largest = {s: [max((lr for lr, e in grid[s] if e < c), default=None) for c in cuts] for s in SETTINGS}
    ratio = [b / a if a and b else None for a, b in zip(largest["plain"], largest["batchnorm"], strict=True)]
    window = [r for c, r in zip(cuts, ratio, strict=True) if config.cuts[0] <= c <= config.cuts[1] and r]
    # The 30x: BN-x5 and BN-x30 against the baseline after the same sweep steps.
    err = {"baseline (plain)": sweeps["plain"]["test_error"][list(config.sweep_lrs).index(base)],
           **{f"BN-x{m}": sweeps["batchnorm"]["test_error"][list(bn_lrs).index(m * base)] for m in MULTIPLES}}
    acc, same = modes["test_accuracy"], modes["identical_to_train_mode"]

    def agree(mode):
        return _common.both(_common.below(abs(acc[mode] - acc["train_mode"]), 1.0), _common.above(same[mode], 98.0))

    running = agree("running_averages")

    fast = _common.both(_common.above(bn_final, plain_final),
                        _common.below(reach if reach is not None else np.inf, config.steps / 2))
    stay = _common.both(*(_common.below(drift["batchnorm"][k], drift["plain"][k]) for k in drift["plain"]))
    larger = _common.above(min(window), 5.0) if window else (False, None)
    beats = _common.both(*(_common.below(np.inf if err[k] is None else err[k], err["baseline (plain)"])
                           for k in err if k.startswith("BN")))
    claim = _common.claim
    claims = [
        claim(f"BN trains faster and better (Fig. 1a): at the same rate, after {config.steps} steps the BN net is "
              "more accurate, and it reaches the plain net's final accuracy within half the steps",
              {"plain final %": plain_final, "BN final %": bn_final, "BN steps to plain's final": reach}, fast),
        claim("with BN a sigmoid's input distribution stays put over training, without BN it drifts (Fig. 1b, c): "
              "median over the last hidden layer's units of how far their median and 15-85 spread moved is smaller "
              "with BN", drift, stay),
        claim(f"BN allows larger learning rates: the largest rate that still trains (finite losses, test error after "
              f"{config.sweep_steps} steps below the cut) is > 5x larger with BN at every cut from {config.cuts[0]:g}% "
              f"to {config.cuts[1]:g}%", {"smallest ratio": min(window, default=None),
                                         "largest ratio": max(window, default=None)}, larger),
        claim(f"BN trains at 5x and 30x the baseline rate (BN-x5, BN-x30): after {config.sweep_steps} steps both are "
              "more accurate than the plain net at its best rate (the baseline)",
              {"test error %": err, "baseline rate": base}, beats),
        claim("train and eval modes agree when eval uses population statistics (Algorithm 2): test accuracy within "
              "1 point of training mode, >= 98% identical predictions",
              {"accuracy %": acc, "identical %": same["population"]}, agree("population")),
        claim(f"... and when it uses running averages (momentum {config.bn_momentum:g} per step): within 1 point, "
              ">= 98% identical", {"identical %": same["running_averages"]}, running),
    ]
    results = {"sizes": sizes, "baseline_lr": base, "curves": curves, "drift": drift, "sweep": sweeps,
               "cuts": cuts, "largest_trainable": largest, "ratio": ratio, "modes": modes}
    notes = (f"{config.dataset} stands in for MNIST (not available here). Paper's set-up: {sizes} sigmoid net, "
             f"weights N(0, {config.init_std:g}^2) (the paper: 'small random Gaussian values'), BN before every "
             f"hidden non-linearity, SGD with batches of {config.batch_size}, {config.steps} steps, accuracy with "
             f"population statistics ({config.population_samples} training images) as in Algorithm 2. The paper "
             f"gives no learning rate: both nets train at the baseline {base:g}, the plain net's best after the "
             f"{config.sweep_steps}-step sweep. The 5x and 30x are from Inception (Sec. 4.2.2), not from the MNIST "
             "net; here they are tested as BN-x5 and BN-x30 over the sweep's steps, and as the ratio of the largest "
             "rates that still train, shown against the cut in the figure (below the plain net's best error, "
             f"{min(e for _, e in grid['plain']):.1f}%, no plain rate trains and the ratio is undefined).")
    for m in MULTIPLES:
        e = err[f"BN-x{m}"]
        notes += f" BN-x{m} (rate {m * base:.3g}): " + ("diverged." if e is None else f"test error {e:.1f}%.")
    if not running[0]:
        notes += (f" The running averages (momentum {config.bn_momentum:g}: the last ~"
                  f"{1 / (1 - config.bn_momentum):.0f} mini-batches, while the weights still move at rate {base:g}) "
                  f"give {acc['running_averages']:.2f}% "
                  f"against {acc['population']:.2f}% with the population statistics that the paper's inference uses.")
    return _common.save(NAME, config, results, claims, out_dir, notes=notes, plot=plot)


_COLORS = {"plain": "C0", "batchnorm": "C3"}
_LABELS = {"plain": "without BN", "batchnorm": "with BN"}


def plot(payload: dict, out_dir) -> None:
    plt, r, config = _common.style(), payload["results"], payload["config"]
    curves = r["curves"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3), layout="constrained")
    for s in SETTINGS:
        axes[0].plot(curves[s]["steps"], curves[s]["test_accuracy"], color=_COLORS[s], label=_LABELS[s])
    lo = min(min(curves[s]["test_accuracy"][len(curves[s]["steps"]) // 10:]) for s in SETTINGS)
    axes[0].set(title=f"(a) test accuracy, SGD at {r['baseline_lr']:.3g}", xlabel="training step",
                ylabel="test accuracy (%)", ylim=(max(lo - 3, 0), None))
    axes[0].legend(loc="lower right")
    q_all = np.asarray([curves[s]["probe_percentiles"] for s in SETTINGS], float)
    for ax, s, tag in zip(axes[1:], SETTINGS, "bc", strict=True):
        q = np.asarray(curves[s]["probe_percentiles"], float)
        ax.fill_between(curves[s]["steps"], q[0], q[2], color=_COLORS[s], alpha=0.15)
        for row, p, ls in zip(q, PERCENTILES, (":", "-", "--"), strict=True):
            ax.plot(curves[s]["steps"], row, color=_COLORS[s], ls=ls, label=f"{p}th percentile")
        ax.set(title=f"({tag}) input to one sigmoid, {_LABELS[s]}", xlabel="training step", ylabel="sigmoid input",
               ylim=(q_all.min() - 0.3, q_all.max() + 0.3))
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(f"Ioffe & Szegedy's Fig. 1 on {config['dataset']}: {'-'.join(map(str, r['sizes']))} sigmoid net, "
                 f"N(0, {config['init_std']:g}^2) weights, batches of {config['batch_size']}")
    _common.savefig(fig, out_dir, NAME)

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.3), layout="constrained")
    for s in SETTINGS:
        sw = r["sweep"][s]
        e = np.asarray([np.nan if v is None else v for v in sw["test_error"]], float)
        axes[0].semilogx(sw["learning_rates"], e, "o-", color=_COLORS[s], label=_LABELS[s])
    for m, ls in zip(MULTIPLES, ("--", ":"), strict=True):
        axes[0].axvline(m * r["baseline_lr"], color="C3", ls=ls, lw=1, label=f"BN-x{m}")
        axes[1].axhline(m, color="C3", ls=ls, label=f"{m}x")
    axes[0].axvline(r["baseline_lr"], color="C0", ls="-", lw=1, label="baseline rate")
    axes[0].set(title=f"test error after {config['sweep_steps']} steps (gaps: diverged)", xlabel="learning rate",
                ylabel="test error (%)", ylim=(0, 100))
    axes[0].legend(fontsize=8)
    ratio = np.asarray([np.nan if v is None else v for v in r["ratio"]], float)
    axes[1].step(r["cuts"], ratio, where="mid", color="k")
    axes[1].axvspan(*config["cuts"], color="C2", alpha=0.1, label="the claim's window of cuts")
    axes[1].set(title="largest rate that still trains: BN / plain", xlabel="cut: test error that counts as "
                "'still trains' (%)", ylabel="ratio of largest rates", yscale="log")
    axes[1].legend(fontsize=8)
    _common.savefig(fig, out_dir, f"{NAME}_lr")


if __name__ == "__main__":
    raise SystemExit(_common.module_cli(__name__))
