"""Full-batch gradient descent at the edge of stability [Cohen et al. 2021], scaled to a CPU.

The lecture's tiny example shows the classical picture: at its minimum lambda_max = 5.84, so gradient descent is
stable for step sizes below 2 / lambda_max = 0.342; 0.25 converges ("too slow"), 0.35 oscillates. Cohen, Kaur, Li,
Kolter and Talwalkar found that on neural networks full-batch gradient descent does not stay in the stable region:
the sharpness lambda_max rises while it is below 2 / eta ("progressive sharpening") until it reaches 2 / eta, and
then hovers there ("the edge of stability") while the loss keeps falling over long times, non-monotonically.
Mini-batch SGD settles below 2 / eta. Their set-up: a tanh MLP, squared loss on one-hot targets, 5,000 CIFAR-10
images; ours: the same on 2,500 Fashion-MNIST images pooled to 14 x 14 (QUICK: 1,000 of scikit-learn's digits).
Three step sizes train together in one compiled epoch, the tracker (:func:`analysis.sharpness.tracker`) inside it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

import analysis
from analysis import plots, sharpness
from experiments import _common
from fflab import data, losses, mlp, train

NAME = "edge_of_stability"
DESCRIPTION = "Full-batch GD sharpens until lambda_max reaches 2/eta and hovers there; SGD settles below"
SLIDE = ("extension, not in the lecture: extends the tiny-example slides 'Gradient descent 0.25 (too slow) / 0.35 "
         "(oscillates)', where 0.35 oscillates past 2/lambda_max = 0.342, to neural networks")
PAPERS = {"Cohen, Kaur, Li, Kolter & Talwalkar 2021": "https://arxiv.org/abs/2103.00065",
          "Jastrzebski et al. 2020": "https://arxiv.org/abs/2002.09572"}
SEVERAL = 3.0  # progressive sharpening: lambda_max ends the early phase at least this many times its start
BAND = 0.1  # "at the edge": within 10% of 2 / eta (the reading of "hovers at 2 / eta")
GD = optax.inject_hyperparams(optax.sgd)(learning_rate=1.0)  # one object, so that its compiled epochs are reused
RISE = 1e-4  # a step raises the loss when it grows by more than this fraction (float32 rounding is ~1e-6)


@dataclass(frozen=True)
class Config:
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    samples: int = 2500  # the training subset, trained on in full batch (Cohen et al.: 5,000 CIFAR-10 images)
    pool: int = 1  # average-pool pool x pool pixel blocks (2: 14 x 14 Fashion-MNIST, a quarter of the cost)
    hidden: tuple[int, ...] = (100, 100)
    activation: str = "tanh"
    init: str = "standard_uniform"  # U(+-1/sqrt(n_in)): PyTorch's default, which Cohen et al. use
    etas: tuple[float, ...] = (2 / 35, 2 / 40, 2 / 45)  # step sizes, trained together
    steps: int = 8000
    every: int = 40  # gradient descent steps between sharpness records
    subset: int = 1000  # images the sharpness is measured on (the same fixed subset throughout)
    sgd_batch: int = 32  # "small batches": SGD at the largest eta
    final: float = 1 / 3  # "the last part of training": the last third of the steps
    checked: int = 4  # records of that part checked against a cold analysis.eigsh, for each eta
    seed: int = 0
    dtype: str = "float32"


QUICK = Config(dataset="digits", samples=1000, hidden=(64, 64), etas=(2 / 9, 2 / 11, 2 / 13), steps=1800, every=25,
               subset=500, checked=2)
FULL = Config(pool=2)


def squared_loss(params, x, targets, activation="tanh"):
    """Cohen et al.'s squared loss ``mean_n 0.5 ||f(x_n) - e_{y_n}||^2`` on one-hot targets."""
    return 0.5 * losses.mse(mlp.apply(params, x, activation=activation), targets)


def load(config: Config):
    """``(x, targets)``: the fixed training subset, pooled, centred per pixel and divided by the pixels' overall
    standard deviation (as torchvision's ``Normalize`` with a data set's std); targets one-hot."""
    ds = data.load(config.dataset, data_dir=config.data_dir)
    x, y = _common.subset(ds.x_train.reshape(len(ds.x_train), -1), ds.y_train, config.samples, config.seed)
    side, p = int(np.sqrt(x.shape[1])) // config.pool, config.pool
    x = x.reshape(len(x), side, p, side, p).mean((2, 4)).reshape(len(x), -1)
    x = (x - x.mean(0)) / x.std()
    return jnp.asarray(x, config.dtype), jnp.asarray(np.eye(ds.num_classes)[y], config.dtype)


def gradient_descent(etas, loss_fn, params, x, targets, tracker, steps: int, keep=()):
    """Full-batch gradient descent at each of ``etas``, together: ``(final states, losses (steps, lanes),
    records, kept)`` with ``records[name]`` of shape ``(steps // every, lanes)`` at steps ``0, every, ...`` and
    ``kept[step]`` the lanes' parameters at each step of ``keep`` (those its record measured)."""
    states = train.lanes(train.init_state(params, GD, jax.random.key(0)), learning_rate=list(etas))
    epoch = train.make_train_epoch(GD, loss_fn=loss_fn, batch_size=len(x), lanes=True, monitor=tracker,
                                   record_grad_norm=False)
    watch, stats, kept = jax.vmap(tracker.init)(states), [], {}
    for step in range(steps):  # one step per epoch, no host sync in the loop
        if step in keep:
            kept[step] = states.params
        states, watch, s = epoch(states, watch, x, targets)
        stats.append(s)
    loss = np.concatenate([np.asarray(s.loss) for s in stats], axis=1).T
    records = {k: np.concatenate([np.asarray(s.records[k]) for s in stats[:: tracker.every]], axis=1).T
               for k in stats[0].records}
    return states, loss, records, kept


def reference_check(loss_fn, kept, data, records, record_steps, seed: int) -> dict:
    """The tracked ``lambda_max`` at the kept steps against a cold :func:`analysis.eigsh` (4 pairs from a random
    start, tol 1e-5) at the same parameters and subset, for each lane: an oracle that shares nothing with the
    tracker's warm starts (a warm start that settles on the second eigenvalue would show here)."""
    reference = []
    for step, params in kept.items():
        row = []
        for lane in range(len(records[0])):
            matvec, dim = analysis.hessian_operator(loss_fn, train.lane(params, lane), *data)
            pairs = analysis.eigsh(matvec, dim, 4, tol=1e-5, key=jax.random.key(seed + step + lane))
            row.append(float(np.max(np.asarray(pairs.eigenvalues))))
        reference.append(row)
    tracked = records[[list(record_steps).index(step) for step in kept]]
    reference = np.asarray(reference)
    return {"steps": list(kept), "reference": reference, "tracked": tracked,
            "max_relative_difference": float(np.max(np.abs(tracked / reference - 1)))}


def window(values, final: float):
    """The last ``final`` fraction of ``values`` (at least one)."""
    return np.asarray(values)[-max(1, round(len(values) * final)):]


def edge_numbers(steps, lam, loss, limit: float, final: float) -> dict:
    """What the claims read from one run: sharpness at the start and at the end of the early phase (the first
    record within BAND of ``limit`` from below, or the last record), the median in the final window, and the loss
    over that window (its change and the share of steps where it rises)."""
    reached = np.flatnonzero(np.asarray(lam) >= (1 - BAND) * limit)
    end = int(reached[0]) if reached.size else len(lam) - 1
    last, median = window(loss, final), float(np.median(window(lam, final)))
    return {"lambda_start": float(lam[0]), "early_end_step": int(steps[end]), "lambda_early_end": float(lam[end]),
            "sharpening": float(lam[end] / lam[0]), "median_final": median, "edge_ratio": median / limit,
            "loss_window_start": float(last[0]), "loss_end": float(last[-1]),
            "rising_share": float(np.mean(np.diff(last) > RISE * last[:-1]))}


def claims(r: dict, config: Config) -> tuple[list[dict], list[dict]]:
    """The paper's claims (with margins) and the sanity checks, from the named results ``r`` of main."""
    above, below, both, gd, sgd = _common.above, _common.below, _common.both, r["gd"], r["sgd"]
    return [
        _common.claim(f"progressive sharpening: for each eta, lambda_max at the end of the early phase (until it "
                      f"first comes within {BAND:.0%} of 2/eta) is at least {SEVERAL:g} times its start",
                      [g["sharpening"] for g in gd], both(*(above(g["sharpening"], SEVERAL) for g in gd))),
        _common.claim(f"the edge: for each eta, the median lambda_max over the last {config.final:.0%} of the steps "
                      f"is within {BAND:.0%} of 2/eta", [g["edge_ratio"] for g in gd],
                      both(*(v for g in gd for v in (above(g["edge_ratio"], 1 - BAND),
                                                     below(g["edge_ratio"], 1 + BAND))))),
        _common.claim("the loss falls over that last part of training (for each eta: lower at its end than at its "
                      "start)", [(g["loss_window_start"], g["loss_end"]) for g in gd],
                      both(*(below(g["loss_end"], g["loss_window_start"]) for g in gd))),
        _common.claim(f"... but not monotonically: for each eta it rises (by more than {RISE:g} of itself) at some "
                      "steps of that part (share of steps)", [g["rising_share"] for g in gd],
                      both(*(above(g["rising_share"], 0.0) for g in gd))),
        _common.claim(f"SGD with batch {sgd['batch']} at eta = {sgd['eta']:.3g} settles below the edge: its median "
                      f"lambda_max over the last {config.final:.0%} of the steps is below {1 - BAND:g} x 2/eta "
                      "(ratio to 2/eta)", sgd["ratio"], below(sgd["ratio"], 1 - BAND)),
    ], [
        _common.check("the lecture's tiny example: 2/lambda_max at its minimum is 0.342 (0.25 converges, 0.35 "
                      "oscillates)", r["tiny_example_limit"], abs(r["tiny_example_limit"] - 0.3425) < 1e-3),
        _common.check("every GD sharpness record converged (estimated relative error <= 1e-4)",
                      r["gd_sharpness_error_max"], r["gd_sharpness_error_max"] <= 1e-4),
        _common.check(f"GD records at {len(r['gd_reference_check']['steps'])} steps of the last part, each eta, "
                      "agree with a cold analysis.eigsh within 1e-4 (largest relative difference)",
                      r["gd_reference_check"]["max_relative_difference"],
                      r["gd_reference_check"]["max_relative_difference"] <= 1e-4),
    ]


def main(config: Config, out_dir) -> dict:
    x, targets = load(config)
    loss_fn = functools.partial(squared_loss, activation=config.activation)
    sizes = [x.shape[1], *config.hidden, targets.shape[1]]
    params = mlp.init(jax.random.key(config.seed), sizes, init=config.init, dtype=config.dtype)
    subset = (x[: config.subset], targets[: config.subset])  # the sharpness is measured on it
    tracker = sharpness.tracker(loss_fn, subset, every=config.every, key=jax.random.key(config.seed + 1))

    # Full-batch gradient descent at each eta, all three in one compiled epoch; the parameters kept at a few
    # records of the last part, evenly spaced, to check those records against a cold eigsh.
    steps = np.arange(0, config.steps, config.every)
    last = window(steps, config.final)
    keep = [int(s) for s in last[np.linspace(0, len(last) - 1, config.checked).round().astype(int)]]
    _, gd_loss, rec, kept = gradient_descent(config.etas, loss_fn, params, x, targets, tracker, config.steps, keep)
    check = reference_check(loss_fn, kept, subset, rec["sharpness"], steps, config.seed)
    gd = [edge_numbers(steps, rec["sharpness"][:, i], gd_loss[:, i], 2 / eta, config.final)
          for i, eta in enumerate(config.etas)]

    # Mini-batch SGD at the largest eta, as many steps, the sharpness on the same subset.
    eta, opt = config.etas[0], optax.sgd(config.etas[0])
    epochs = max(1, config.steps // (len(x) // config.sgd_batch))
    sgd = train.fit(train.init_state(params, opt, jax.random.key(config.seed)), opt, (x, targets), loss_fn=loss_fn,
                    epochs=epochs, batch_size=config.sgd_batch, eval_every=epochs, monitor=tracker, progress=False,
                    record_grad_norm=False).history
    sgd_median = float(np.median(window(sgd["sharpness"], config.final)))

    # The lecture's tiny example at its minimum w1 = w2 = sqrt(1.46): the classical stability limit.
    w_min = jnp.full(2, np.sqrt(_common.TINY_TARGET - _common.TINY_DECAY))
    tiny_limit = 2 / float(np.linalg.eigvalsh(np.asarray(analysis.hessian(_common.tiny_loss, w_min)))[-1])

    results = {
        "etas": list(config.etas), "limits": [2 / e for e in config.etas], "record_steps": steps, "gd": gd,
        "gd_sharpness": rec["sharpness"].T, "gd_loss": gd_loss.T, "gd_matvecs": rec["sharpness_matvecs"].T,
        "gd_sharpness_error_max": float(rec["sharpness_error"].max()), "gd_reference_check": check,
        "sgd": {"eta": eta, "batch": config.sgd_batch, "steps": sgd["monitor_step"], "sharpness": sgd["sharpness"],
                "median_final": sgd_median, "ratio": sgd_median * eta / 2, "train_loss": sgd["train_loss"][-1]},
        "tiny_example_limit": tiny_limit,
    }
    claim_list, checks = claims(results, config)
    failed = [c["text"].split(":")[0] for c in claim_list if not c["holds"]]
    notes = (f"Cohen et al.'s set-up scaled to a CPU: a {'-'.join(map(str, sizes))} {config.activation} MLP "
             f"(U(+-1/sqrt(n_in)) weights as PyTorch's default, zero biases), squared loss, {config.samples} "
             f"{config.dataset} images{f' pooled {config.pool}x{config.pool}' if config.pool > 1 else ''} in full "
             f"batch (theirs: 5,000 CIFAR-10 images), lambda_max on {config.subset} of them every {config.every} "
             f"steps. The lecture's tiny example is the same limit on a 2-parameter loss: GD at 0.35 oscillates past "
             f"2/lambda_max = {tiny_limit:.3f}. " + (f"Not reproduced here: {'; '.join(failed)}." if failed else ""))
    return _common.save(NAME, config, results, claim_list, out_dir, checks=checks, notes=notes, plot=plot)


def plot(payload, out_dir) -> None:
    plt, r = _common.style(), payload["results"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for i, eta in enumerate(r["etas"]):
        label = f"$\\eta$ = {eta:.3g}"
        plots.sharpness(r["record_steps"], r["gd_sharpness"][i], lr=eta, ax=axes[0], color=f"C{i}", label=label)
        axes[1].plot(np.arange(len(r["gd_loss"][i])), r["gd_loss"][i], color=f"C{i}", lw=1, label=label)
    axes[0].set_title("full-batch GD: $\\lambda_{max}$ rises to $2/\\eta$ and hovers there")
    axes[1].set(yscale="log", xlabel="step", ylabel="training loss", title="the loss falls, not monotonically")
    sgd = r["sgd"]
    plots.sharpness(sgd["steps"], sgd["sharpness"], lr=sgd["eta"], ax=axes[2], color="C3",
                    label=f"SGD, batch {sgd['batch']}")
    plots.sharpness(r["record_steps"], r["gd_sharpness"][0], ax=axes[2], color="C0", label="full-batch GD")
    axes[2].set_title(f"$\\eta$ = {sgd['eta']:.3g}: SGD settles below $2/\\eta$")
    for ax in axes:
        ax.legend(fontsize=8)
    _common.savefig(fig, out_dir, NAME)


if __name__ == "__main__":
    raise SystemExit(_common.module_cli(__name__))
