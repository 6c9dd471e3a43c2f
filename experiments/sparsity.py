"""How often is a relu unit on? Activation frequencies of the example network, and dead units vs step size.

For the trained network of :mod:`experiments.mnist_mlp` (reused from ``<out_dir>/mnist_mlp_params.npz`` when
that file was trained with the same config, trained here otherwise): a histogram over the hidden units of each
layer of how often ``h_i > 0`` on the test data, with the count of units that are never on (dead), next to
the same histogram at initialisation. Then short SGD runs at several constant step sizes, a few seeds each,
counting the units that end up dead on the whole training set: a dead relu unit passes no gradient, so it
never comes back.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from analysis import signals
from experiments import _common, mnist_mlp
from fflab import data, train

NAME = "sparsity"
DESCRIPTION = "How often relu units are on (histogram per layer, dead units) and dead units vs learning rate"
SLIDE = "On sparsity: how often h_i > 0? Histogram over units i (sometimes units become completely dead)"

NETWORKS = ("quick", "full")


@dataclass(frozen=True)
class Config:
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    network: str = "full"  # which mnist_mlp config the histogram's network was (or is) trained with
    learning_rates: tuple[float, ...] = (0.03, 0.1, 0.3, 1.0, 2.0, 3.0)
    sweep_epochs: int = 1
    seeds: tuple[int, ...] = (0, 1, 2)
    bins: int = 20


QUICK = Config(dataset="digits", network="quick", sweep_epochs=10)
# Fashion-MNIST: plain SGD kills units from a step of about 0.3 and diverges at 1 within one epoch.
FULL = Config(learning_rates=(0.03, 0.1, 0.2, 0.3, 0.5, 1.0))


def network_config(config: Config) -> mnist_mlp.Config:
    """The :mod:`experiments.mnist_mlp` config of the network whose activations are counted."""
    if config.network not in NETWORKS:
        raise ValueError(f"unknown network {config.network!r}; valid names: {', '.join(NETWORKS)}")
    base = mnist_mlp.QUICK if config.network == "quick" else mnist_mlp.FULL
    return dataclasses.replace(base, dataset=config.dataset, data_dir=config.data_dir)


def lr_sweep(net: mnist_mlp.Config, ds: data.Dataset, learning_rates, seeds, epochs: int) -> dict:
    """Train the network with plain SGD at each constant step size and seed, all runs at once.

    One compiled epoch serves every run: the step size is an ``optax.inject_hyperparams`` state entry and the
    runs are ``jax.vmap``-ed over stacked :class:`fflab.train.TrainState` s.

    Returns:
        ``{"dead_train", "dead_test": (runs, layers) int, "test_error": (runs,) %, "diverged": (runs,) bool,
        "learning_rate", "seed": (runs,)}``; a run diverged if any mini-batch loss was non-finite.
    """
    opt = optax.inject_hyperparams(optax.sgd)(learning_rate=1.0)
    epoch_fn = jax.vmap(train.make_train_epoch(opt, batch_size=net.batch_size, activation=net.activation),
                        in_axes=(0, None, None))
    runs = [(float(lr), int(seed)) for lr in learning_rates for seed in seeds]
    states = []
    for lr, seed in runs:
        params, key_data = mnist_mlp.initial_params(dataclasses.replace(net, seed=seed), ds)
        state = train.init_state(params, opt, key_data)
        hyper = state.opt_state.hyperparams
        hyper = {**hyper, "learning_rate": jnp.asarray(lr, hyper["learning_rate"].dtype)}
        states.append(state._replace(opt_state=state.opt_state._replace(hyperparams=hyper)))
    state = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *states)
    dtype = jax.tree_util.tree_leaves(state.params)[0].dtype
    x, y = jnp.asarray(ds.x_train, dtype), jnp.asarray(ds.y_train)
    x_test = jnp.asarray(ds.x_test, dtype)
    finite = np.ones(len(runs), bool)
    for _ in range(epochs):
        state, stats = epoch_fn(state, x, y)
        finite &= np.isfinite(np.asarray(stats.loss)).all(axis=1)
    out = {"learning_rate": [lr for lr, _ in runs], "seed": [s for _, s in runs], "diverged": ~finite,
           "dead_train": [], "dead_test": [], "test_error": []}
    host_params = jax.tree_util.tree_map(np.asarray, state.params)
    for i in range(len(runs)):
        params = jax.tree_util.tree_map(lambda a, i=i: a[i], host_params)  # numpy: nothing to compile
        out["dead_train"].append(signals.dead_units(params, x, activation=net.activation))
        out["dead_test"].append(signals.dead_units(params, x_test, activation=net.activation))
        _, err = train.evaluate(params, ds.x_test, ds.y_test, activation=net.activation)
        out["test_error"].append(100.0 * err if finite[i] else float("nan"))
    return {k: np.asarray(v) for k, v in out.items()}


def _spearman(a, b) -> float:
    """Rank correlation (average ranks for ties); 0 when either side is constant."""
    def ranks(v):
        v = np.asarray(v, np.float64)
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for value in np.unique(v):  # average ties
            r[v == value] = r[v == value].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def main(config: Config = QUICK, out_dir=None) -> dict:
    out_dir = Path(out_dir or _common.default_out(config == QUICK))
    net = network_config(config)
    ds = data.load(net.dataset, data_dir=net.data_dir)
    params = mnist_mlp.load_params(out_dir / mnist_mlp.PARAMS_FILE, net)
    source = f"reused {mnist_mlp.PARAMS_FILE}"
    if params is None:
        _, fit = mnist_mlp.train_network(net)
        params, source = fit.state.params, "trained here (no matching mnist_mlp_params.npz)"
    init_params, _ = mnist_mlp.initial_params(net, ds)
    dtype = jax.tree_util.tree_leaves(params)[0].dtype
    x_test = jnp.asarray(ds.x_test, dtype)
    x_train = jnp.asarray(ds.x_train, dtype)

    def freqs(p):
        return [np.asarray(f) for f in signals.activation_frequency(p, x_test, activation=net.activation)]

    freq, freq_init = freqs(params), freqs(init_params)
    dead_test = signals.dead_units(params, x_test, activation=net.activation)
    dead_train = signals.dead_units(params, x_train, activation=net.activation)
    _, test_err = train.evaluate(params, ds.x_test, ds.y_test, activation=net.activation)

    sweep = lr_sweep(net, ds, config.learning_rates, config.seeds, config.sweep_epochs)
    widths = np.asarray(net.hidden)
    ok = ~sweep["diverged"]
    dead_frac = sweep["dead_train"].sum(axis=1) / widths.sum()
    lrs = np.asarray(config.learning_rates, np.float64)
    per_lr = {  # mean over the seeds that did not diverge
        "dead_fraction": [float(dead_frac[ok & (sweep["learning_rate"] == lr)].mean())
                          if (ok & (sweep["learning_rate"] == lr)).any() else float("nan") for lr in lrs],
        "diverged": [int((~ok & (sweep["learning_rate"] == lr)).sum()) for lr in lrs],
    }
    rho = _spearman(sweep["learning_rate"][ok], dead_frac[ok]) if ok.sum() > 1 else 0.0
    finite = [d for d in per_lr["dead_fraction"] if np.isfinite(d)]  # in step-size order
    lo, hi = (finite[0], finite[-1]) if finite else (0.0, 0.0)
    mean_freq = [float(f.mean()) for f in freq]
    mean_freq_init = [float(f.mean()) for f in freq_init]

    claims = [
        _common.claim(
            "sometimes units become completely dead: dead units (never on over the training set) in the "
            "step-size sweep (most in one run) and in the trained network (per layer)",
            {"sweep_max": int(sweep["dead_train"][ok].sum(axis=1).max()) if ok.any() else 0,
             "trained": dead_train},
            ok.any() and int(sweep["dead_train"][ok].sum(axis=1).max()) > 0),
        _common.claim(
            "dead units grow with the step size: rank correlation of step size and dead fraction > 0.5, "
            "and more dead at the largest than at the smallest non-diverging step (rho, lowest, highest)",
            [rho, lo, hi], rho > 0.5 and hi > lo),
        _common.claim(
            "relu activity is sparse: the average hidden unit of the trained net is on for less than half of "
            "the test inputs (mean frequency per layer)",
            mean_freq, max(mean_freq) < 0.5),
    ]
    results = {
        "params_source": source,
        "network": {"sizes": [ds.x_train.shape[1], *net.hidden, ds.num_classes], "dataset": net.dataset,
                    "test_error": 100.0 * test_err},
        "frequency": freq,
        "frequency_init": freq_init,
        "mean_frequency": mean_freq,
        "mean_frequency_init": mean_freq_init,
        "dead_test": dead_test,
        "dead_train": dead_train,
        "dead_init_test": signals.dead_units(init_params, x_test, activation=net.activation),
        "sweep": sweep,
        "sweep_per_lr": per_lr,
        "sweep_spearman": rho,
    }
    notes = (
        f"Network: the {config.network} mnist_mlp config on {net.dataset} ({source}). Histogram: test data. "
        f"Sweep: plain SGD, constant step, batch {net.batch_size}, {config.sweep_epochs} epoch(s), seeds "
        f"{list(config.seeds)}; a unit is dead if it is never on over the whole training set; diverged runs "
        "(non-finite loss) are left out of the dead counts and marked x."
    )
    if max(mean_freq) >= 0.5:
        notes += (f" Sparsity does not hold here: mean activity per layer {np.round(mean_freq, 2).tolist()} "
                  f"(at init {np.round(mean_freq_init, 2).tolist()}).")
    payload = _common.save_results(NAME, config, results, claims, out_dir, notes=notes)
    plot(payload, out_dir)
    return payload


def plot(payload: dict, out_dir) -> None:
    plt = _common.style()
    r = payload["results"]
    cfg = payload["config"]
    layers = len(r["frequency"])
    fig, axes = plt.subplots(1, layers + 1, figsize=(4.2 * (layers + 1), 4.0), layout="constrained")
    edges = np.linspace(0, 1, cfg["bins"] + 1)
    for i in range(layers):
        ax = axes[i]
        ax.hist(r["frequency"][i], bins=edges, color="C0", alpha=0.8, label="trained")
        ax.hist(r["frequency_init"][i], bins=edges, histtype="step", color="k", lw=1.2, label="at init")
        ax.set(title=f"layer {i + 1}, {len(r['frequency'][i])} units: dead {r['dead_test'][i]} on test, "
               f"{r['dead_train'][i]} on train",
               xlabel="fraction of test inputs with $h_i > 0$", ylabel="number of units")
        ax.axvline(r["mean_frequency"][i], color="C0", ls="--", lw=1)
        ax.legend(title=f"mean {r['mean_frequency'][i]:.2f} (init {r['mean_frequency_init'][i]:.2f})")
    ax = axes[-1]
    sw = r["sweep"]
    lr = np.asarray(sw["learning_rate"])
    diverged = np.asarray(sw["diverged"], bool)
    dead = np.asarray(sw["dead_train"], float)
    widths = np.array([len(f) for f in r["frequency"]])
    for i in range(layers):
        frac = 100 * dead[:, i] / widths[i]
        ax.scatter(lr[~diverged] * (1 + 0.04 * (i - 0.5)), frac[~diverged], s=16, color=f"C{i}", alpha=0.7)
        means = [frac[~diverged & (lr == v)].mean() if (~diverged & (lr == v)).any() else np.nan
                 for v in cfg["learning_rates"]]
        ax.plot(cfg["learning_rates"], means, color=f"C{i}", marker="o", label=f"layer {i + 1}")
    if diverged.any():
        ax.scatter(lr[diverged], np.full(diverged.sum(), 100.0), marker="x", color="r", label="diverged")
    ax.set_xscale("log")
    ax.set(title=f"dead units after {cfg['sweep_epochs']} epoch(s) of SGD", xlabel="step size (constant)",
           ylabel="dead units (% of layer)", ylim=(-3, 103))
    ax.legend()
    fig.suptitle(f"relu activity of the {'-'.join(map(str, r['network']['sizes']))} net on "
                 f"{r['network']['dataset']} (test error {r['network']['test_error']:.2f}%)")
    _common.savefig(fig, out_dir, NAME)


if __name__ == "__main__":
    raise SystemExit(_common.module_cli(sys.modules[__name__]))
