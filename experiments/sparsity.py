"""How often is a relu unit on? Per layer of the example net, a histogram over units of how often ``h_i > 0``; then SGD
at several constant steps and seeds (one lane each), counting units never on over the training set (dead for good)."""

import sys
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import stats

import fflab
from experiments import _common
from fflab import data, signals, train

NAME = "sparsity"
DESCRIPTION = "How often relu units are on (histogram per layer, dead units) and dead units vs learning rate"
SLIDE = "On sparsity: how often h_i > 0? Histogram over units i (sometimes units become completely dead)"
PAPERS = {"Lu et al. 2020, Dying ReLU and initialization": "https://arxiv.org/abs/1903.06733"}


@dataclass(frozen=True)
class Config:
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    hidden: tuple[int, ...] = (225, 144)  # the histogram's net: SGD, cosine anneal from learning_rate to 1%
    learning_rate: float = 0.1
    batch_size: int = 100
    epochs: int = 50
    learning_rates: tuple[float, ...] = (0.03, 0.1, 0.3, 1.0, 2.0, 3.0)  # the sweep: plain SGD, constant step
    sweep_epochs: int = 1
    seeds: tuple[int, ...] = (0, 1, 2)  # the first also seeds the histogram's net


QUICK = Config(dataset="digits", hidden=(64, 36), learning_rate=0.3, sweep_epochs=10)
# Fashion-MNIST: plain SGD kills units from a step of about 0.3 and diverges at 1 within one epoch.
FULL = Config(learning_rates=(0.03, 0.1, 0.2, 0.3, 0.5, 1.0))


def main(config: Config, out_dir) -> dict:
    ds = data.load(config.dataset, data_dir=config.data_dir)
    sizes = [ds.x_train.shape[1], *config.hidden, ds.num_classes]
    model = fflab.classifier("relu")

    def start(seed, opt):  # mnist_mlp's keys: init from the first half, shuffling from the second
        key_init, key_data = jax.random.split(jax.random.key(seed))
        return train.init_state(model.init(key_init, sizes)[0], opt, key_data)

    opt = train.make_optimizer("sgd", config.learning_rate, schedule="cosine", decay_to=0.01,
                               total_steps=config.epochs * (ds.x_train.shape[0] // config.batch_size))
    state0 = start(config.seeds[0], opt)
    fit = train.fit(state0, opt, (ds.x_train, ds.y_train), loss_fn=model.loss_fn, metrics_fn=model.metrics_fn,
                    epochs=config.epochs, batch_size=config.batch_size, test=(ds.x_test, ds.y_test),
                    progress=sys.stderr.isatty())
    params = fit.state.params
    freq, freq_init = ([np.asarray(f) for f in signals.activation_frequency(p, ds.x_test)]
                       for p in (params, state0.params))

    sgd = optax.inject_hyperparams(optax.sgd)(learning_rate=1.0)  # the sweep: one lane per (step, seed)
    runs = [(float(lr), int(seed)) for seed in config.seeds for lr in config.learning_rates]
    states = jax.tree_util.tree_map(lambda *leaves: jnp.concatenate(leaves), *(
        train.lanes(start(seed, sgd), learning_rate=config.learning_rates) for seed in config.seeds))
    epoch = train.make_train_epoch(sgd, loss_fn=model.loss_fn, batch_size=config.batch_size, lanes=True)
    x, y = jnp.asarray(ds.x_train, jax.tree_util.tree_leaves(params)[0].dtype), jnp.asarray(ds.y_train)
    diverged = np.zeros(len(runs), bool)
    for _ in range(config.sweep_epochs):
        states, epoch_stats = epoch(states, x, y)
        diverged |= ~np.isfinite(np.asarray(epoch_stats.loss)).all(axis=1)
    sweep = {"learning_rate": [lr for lr, _ in runs], "seed": [s for _, s in runs], "diverged": diverged,
             "dead_train": np.array([signals.dead_units(train.lane(states, i).params, x) for i in range(len(runs))])}

    ok, lr_of = ~diverged, np.asarray(sweep["learning_rate"])  # means over the seeds that did not diverge
    dead_fraction = sweep["dead_train"].sum(axis=1) / sum(config.hidden)
    per_lr = [float(dead_fraction[ok & (lr_of == lr)].mean()) if (ok & (lr_of == lr)).any() else np.nan
              for lr in config.learning_rates]
    rho = float(np.nan_to_num(stats.spearmanr(lr_of[ok], dead_fraction[ok]).statistic)) if ok.sum() > 1 else 0.0
    finite = [d for d in per_lr if np.isfinite(d)] or [0.0]  # in step-size order
    lowest, highest, most_dead = finite[0], finite[-1], int(sweep["dead_train"][ok].sum(axis=1).max(initial=0))
    dead_train = signals.dead_units(params, ds.x_train)
    mean_freq = [float(f.mean()) for f in freq]

    sparse = _common.below(max(mean_freq), 0.5)
    claims = [  # the third is the slide's title ("On sparsity") made testable
        _common.claim("sometimes units become completely dead: most dead units in one run of the sweep > 0 (and "
                      "dead units of the trained net per layer)",
                      {"sweep_max": most_dead, "trained": dead_train}, _common.above(most_dead, 0)),
        _common.claim("dead units grow with the step size: rank correlation rho > 0.5, and more dead at the largest "
                      "than the smallest non-diverging step (rho, lowest, highest)", [rho, lowest, highest],
                      _common.both(_common.above(rho, 0.5), _common.above(highest, lowest))),
        _common.claim("relu activity is sparse: the average hidden unit is on for less than half of the test "
                      "inputs (mean frequency per layer, max < 0.5)", mean_freq, sparse),
    ]
    results = {
        "network": {"sizes": sizes, "dataset": config.dataset, "test_error": fit.history["test_error"][-1]},
        "frequency": freq, "frequency_init": freq_init, "mean_frequency": mean_freq,
        "mean_frequency_init": [float(f.mean()) for f in freq_init],
        "dead_test": signals.dead_units(params, ds.x_test), "dead_train": dead_train,
        "sweep": sweep, "sweep_spearman": rho, "sweep_dead_fraction": per_lr,
    }
    notes = (
        f"Network: {'-'.join(map(str, sizes))} relu on {config.dataset}, SGD from {config.learning_rate}, cosine "
        f"anneal to 1% over {config.epochs} epochs, Glorot-relu init (trained here); histogram on test data. "
        f"Sweep: plain SGD, constant step, batch {config.batch_size}, {config.sweep_epochs} epoch(s), seeds "
        f"{list(config.seeds)}; diverged runs (marked x) are left out of the dead counts. Mean activity per layer "
        f"{np.round(mean_freq, 3).tolist()} (at init {np.round(results['mean_frequency_init'], 3).tolist()})"
        + ("; the sparsity verdict is within 5% of its threshold 0.5." if abs(sparse[1]) < 0.05 else ".")
    )
    return _common.save(NAME, config, results, claims, out_dir, notes=notes, plot=plot)


def plot(payload: dict, out_dir) -> None:
    plt, r, cfg = _common.style(), payload["results"], payload["config"]
    layers = len(r["frequency"])
    fig, axes = plt.subplots(1, layers + 1, figsize=(4.2 * (layers + 1), 4.0), layout="constrained")
    for i, ax in enumerate(axes[:-1]):
        ax.hist(r["frequency"][i], bins=20, range=(0, 1), color="C0", alpha=0.8, label="trained")
        ax.hist(r["frequency_init"][i], bins=20, range=(0, 1), histtype="step", color="k", label="init")
        ax.set(title=f"layer {i + 1}, {len(r['frequency'][i])} units: dead {r['dead_test'][i]} on test, "
               f"{r['dead_train'][i]} on train", xlabel="fraction of test inputs with $h_i > 0$",
               ylabel="number of units")
        ax.legend(title=f"mean {r['mean_frequency'][i]:.2f} (init {r['mean_frequency_init'][i]:.2f})")
    ax, sw = axes[-1], {k: np.asarray(v) for k, v in r["sweep"].items()}
    lr, diverged = sw["learning_rate"], sw["diverged"].astype(bool)
    for i in range(layers):
        frac = 100 * sw["dead_train"][:, i] / len(r["frequency"][i])
        ax.scatter(lr[~diverged] * (1 + 0.04 * (i - 0.5)), frac[~diverged], s=16, color=f"C{i}",
                   label=f"layer {i + 1}, one run")
    ax.plot(cfg["learning_rates"], 100 * np.asarray(r["sweep_dead_fraction"], float), "k-o", label="all, mean")
    ax.scatter(lr[diverged], np.full(diverged.sum(), 100.0), marker="x", color="r",
               label="diverged" if diverged.any() else None)
    ax.set(title=f"dead units after {cfg['sweep_epochs']} epoch(s) of SGD", xlabel="step size (constant)",
           ylabel="dead units (% of layer)", ylim=(-3, 103), xscale="log")
    ax.legend()
    fig.suptitle(f"relu activity of the {'-'.join(map(str, r['network']['sizes']))} net on "
                 f"{r['network']['dataset']} (test error {r['network']['test_error']:.2f}%)")
    _common.savefig(fig, out_dir, NAME)


if __name__ == "__main__":
    raise SystemExit(_common.module_cli(__name__))
