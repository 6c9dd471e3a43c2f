"""Batch normalisation on Ioffe & Szegedy's MNIST net: faster training, steady sigmoid inputs, larger steps.

Ioffe & Szegedy (2015, Sec. 4.1) train a net with 3 fully-connected sigmoid hidden layers of 100 units and
batches of 60 on MNIST, with and without batch norm before each sigmoid, and show (Fig. 1) (a) test accuracy
against training steps and (b, c) the 15th, 50th and 85th percentiles of a typical sigmoid's input over
training: with BN the distribution stays put; without it, it drifts. Training runs in chunks of
``eval_every`` steps (one pass over the data cut into chunks of a fixed random permutation, each chunk one
call of the jitted epoch); after each chunk we measure the test accuracy and the percentiles of unit
``probe_unit`` of the last hidden layer on ``probe_samples`` test images (for BN with the statistics of
those images, so step 0 is measured like every other step).

(b) The largest learning rate that still trains: every mini-batch loss of the first ``sweep_steps`` steps
finite and the test error after them below ``trains_error`` percent, on a log grid of rates trained together
(``train.lanes``, one compiled epoch); the curves of (a) are the lane at ``learning_rate``, continued alone.
(c) Train and eval modes agree: predictions with mini-batch statistics (the test set as one batch), with the
running averages, and with the population statistics of the whole training set (Algorithm 2).
"""

from __future__ import annotations

import functools
import sys
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


@dataclass(frozen=True)
class Config:
    dataset: str = "digits"
    data_dir: str | None = None
    hidden: tuple = (100, 100, 100)
    activation: str = "sigmoid"
    init: str = "glorot"
    batch_size: int = 60
    learning_rate: float = 0.5  # (a): the same SGD rate for both nets; must be one of sweep_lrs
    steps: int = 690
    eval_every: int = 23  # steps per chunk; steps and sweep_steps are multiples of it
    probe_unit: int = 0
    probe_samples: int = 300
    sweep_lrs: tuple = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
    sweep_steps: int = 690
    trains_error: float = 15.0  # percent
    seed: int = 0


QUICK = Config()
FULL = Config(dataset="fashion-mnist", steps=20000, eval_every=250, probe_samples=2000,
              sweep_lrs=tuple(2.0 ** (k / 2) for k in range(-4, 15)), sweep_steps=2000, trains_error=20.0)


def sigmoid_inputs(params, model_state, x):
    """Inputs ``(n, units)`` to the last hidden layer's non-linearity; BN uses the statistics of ``x``."""
    if model_state is None:
        return mlp.forward(params, x, activation="sigmoid")[0][-2]
    h = x
    for layer, s in zip(params[:-1], model_state, strict=True):
        z, _ = norm.batchnorm(layer, s, h @ layer["W"], train=True)
        h = jax.nn.sigmoid(z)
    return z


@jax.jit
def probe_percentiles(params, model_state, x):
    """15th, 50th and 85th percentiles of every last-layer sigmoid input: ``(3, units)``."""
    z = sigmoid_inputs(params, model_state, x)
    return jnp.percentile(z, jnp.asarray(PERCENTILES, z.dtype), axis=0)


@functools.partial(jax.jit, static_argnames="size")
def _chunk(x, y, key, i, *, size: int):
    """Chunk ``i`` (of ``size`` samples) of the permutation ``permutation(key, n)`` of ``(x, y)``."""
    perm = jax.lax.dynamic_slice_in_dim(jax.random.permutation(key, x.shape[0]), i * size, size)
    return jnp.take(x, perm, axis=0), jnp.take(y, perm, axis=0)


def run_setting(config: Config, ds, sizes, setting: str) -> dict:
    """Every rate of the sweep for ``sweep_steps`` (lanes), then the lane at ``learning_rate`` to ``steps``."""
    model = fflab.classifier(config.activation, None if setting == "plain" else setting)
    x, y, xt, yt = (jnp.asarray(a) for a in (ds.x_train, ds.y_train, ds.x_test, ds.y_test))
    chunk = config.eval_every * config.batch_size
    per_pass = len(x) // chunk
    k_init, k_data = jax.random.split(jax.random.key(config.seed))
    params, model_state = model.init(k_init, sizes, init=config.init)
    opt = optax.inject_hyperparams(optax.sgd)(learning_rate=1.0)
    states = train.lanes(train.init_state(params, opt, k_data, model_state), learning_rate=config.sweep_lrs)
    epoch_all = train.make_train_epoch(opt, loss_fn=model.loss_fn, batch_size=config.batch_size, lanes=True)
    epoch = train.make_train_epoch(opt, loss_fn=model.loss_fn, batch_size=config.batch_size)
    curve_lane = config.sweep_lrs.index(config.learning_rate)
    first_bad = [None] * len(config.sweep_lrs)
    steps, acc, pct, sweep = [], [], [], None
    state = train.lane(states, curve_lane)
    for c in range(config.steps // config.eval_every + 1):
        if c:
            p, i = divmod(c - 1, per_pass)
            xc, yc = _chunk(x, y, jax.random.fold_in(k_data, p), i, size=chunk)
            if states is not None:
                states, stats = epoch_all(states, xc, yc)
                bad = ~np.isfinite(np.asarray(stats.loss))
                for j in np.flatnonzero(bad.any(axis=1)):
                    if first_bad[j] is None:
                        first_bad[j] = (c - 1) * config.eval_every + int(np.argmax(bad[j])) + 1
                state = train.lane(states, curve_lane)
            else:
                state, _ = epoch(state, xc, yc)
        if states is not None and int(state.step) == config.sweep_steps:
            errors = [None if bad is not None else train.evaluate(
                model.metrics_fn, lane.params, xt, yt, model_state=lane.model_state)["error"]
                for bad, lane in ((first_bad[j], train.lane(states, j)) for j in range(len(config.sweep_lrs)))]
            trains = [e is not None and e < config.trains_error for e in errors]
            ok = [lr for lr, t in zip(config.sweep_lrs, trains, strict=True) if t]
            sweep = {"learning_rates": list(config.sweep_lrs),
                     "used_learning_rate": np.asarray(stats.learning_rate)[:, -1],
                     "final_test_error": errors, "first_nonfinite_step": first_bad, "trains": trains,
                     "max_trainable_lr": max(ok) if ok else None, "steps": config.sweep_steps}
            states = None  # only the curve's lane goes on
        err = train.evaluate(model.metrics_fn, state.params, xt, yt, model_state=state.model_state)["error"]
        steps.append(int(state.step))
        acc.append(100.0 - err)
        pct.append(np.asarray(probe_percentiles(state.params, state.model_state, xt[: config.probe_samples])))
    pct = np.asarray(pct, np.float64)  # (evals, 3, units)
    curve = {"steps": steps, "test_accuracy": np.round(acc, 3),
             "probe_percentiles": np.round(pct[:, :, config.probe_unit].T, 4),
             # per unit of the layer: how far its median and its 15-85 spread moved over training
             "median_range": np.ptp(pct[:, 1], axis=0), "spread_range": np.ptp(pct[:, 2] - pct[:, 0], axis=0)}
    return {"curve": curve, "sweep": sweep, "state": state}


@jax.jit
def _predictions(params, model_state, x, xt):
    bn = fflab.classifier("sigmoid", "batchnorm", bn_momentum=0.0)
    # momentum 0: the returned "running" state is the statistics of this one batch, the whole training set
    _, population = bn.apply(params, model_state, x, train=True)
    preds = {"train_mode": bn.apply(params, model_state, xt, train=True)[0],
             "running_averages": bn.apply(params, model_state, xt)[0],
             "population": bn.apply(params, population, xt)[0]}
    return {k: jnp.argmax(v, axis=1) for k, v in preds.items()}


def mode_agreement(params, model_state, ds) -> dict:
    """(c): BN predictions in training mode, with the running averages and with population statistics."""
    preds = jax.tree_util.tree_map(np.asarray, _predictions(params, model_state, jnp.asarray(ds.x_train),
                                                            jnp.asarray(ds.x_test)))
    return {"test_accuracy": {k: 100.0 * float(np.mean(v == ds.y_test)) for k, v in preds.items()},
            "identical_to_train_mode": {k: 100.0 * float(np.mean(v == preds["train_mode"]))
                                        for k, v in preds.items()}}


def main(config: Config, out_dir) -> dict:
    ds = data.load(config.dataset, data_dir=config.data_dir)
    sizes = [ds.x_train.shape[1], *config.hidden, ds.num_classes]
    runs = {setting: run_setting(config, ds, sizes, setting) for setting in SETTINGS}
    curves = {s: runs[s]["curve"] for s in SETTINGS}
    sweeps = {s: runs[s]["sweep"] for s in SETTINGS}
    bn_state = runs["batchnorm"]["state"]
    modes = mode_agreement(bn_state.params, bn_state.model_state, ds)

    plain_final, bn_final = curves["plain"]["test_accuracy"][-1], curves["batchnorm"]["test_accuracy"][-1]
    reach = [s for s, a in zip(curves["batchnorm"]["steps"], curves["batchnorm"]["test_accuracy"], strict=True)
             if a >= plain_final]
    bn_reach, total = (reach[0] if reach else None), config.steps
    drift = {s: {"median_range": float(np.median(curves[s]["median_range"])),
                 "spread_range": float(np.median(curves[s]["spread_range"]))} for s in SETTINGS}
    lr_plain, lr_bn = sweeps["plain"]["max_trainable_lr"], sweeps["batchnorm"]["max_trainable_lr"]
    ratio = lr_bn / lr_plain if lr_plain and lr_bn else None
    acc, same = modes["test_accuracy"], modes["identical_to_train_mode"]
    trains_def = (f"'still trains' = every mini-batch loss of the first {config.sweep_steps} SGD steps is "
                  f"finite and the test error after them is below {config.trains_error:g}%")
    claims = [
        _common.claim(
            f"BN trains faster and reaches a higher test accuracy (Fig. 1a): after {total} steps the BN net is "
            "more accurate, and it reaches the plain net's final accuracy within half the steps",
            {"plain final accuracy %": plain_final, "BN final accuracy %": bn_final,
             "BN steps to plain's final accuracy": bn_reach},
            bn_final > plain_final and bn_reach is not None and bn_reach <= total / 2),
        _common.claim(
            "with BN a sigmoid's input distribution stays put over training; without BN it drifts in mean and "
            "spread (Fig. 1b, c): median over the last hidden layer's units of how far each unit's median and "
            "15-85 percentile spread moved", drift,
            all(drift["batchnorm"][k] < drift["plain"][k] for k in ("median_range", "spread_range"))),
        _common.claim(
            f"BN allows 5x to 30x larger learning rates: the largest rate that still trains is >= 5x larger "
            f"with BN ({trains_def})", {"plain": lr_plain, "batchnorm": lr_bn, "ratio": ratio},
            ratio is not None and ratio >= 5),
        _common.claim(
            "train and eval modes agree when eval mode uses population statistics (Algorithm 2): test accuracy "
            "within 1 point of training mode and >= 98% identical predictions",
            {"accuracy %": acc, "identical %": same["population"]},
            abs(acc["population"] - acc["train_mode"]) <= 1.0 and same["population"] >= 98.0),
        _common.claim(
            "... and when it uses the running averages (momentum 0.9): test accuracy within 1 point of training "
            "mode and >= 98% identical predictions", {"accuracy %": acc, "identical %": same["running_averages"]},
            abs(acc["running_averages"] - acc["train_mode"]) <= 1.0 and same["running_averages"] >= 98.0),
    ]
    results = {"sizes": sizes, "curves": curves, "drift": drift, "sweep": sweeps, "trains_definition": trains_def,
               "largest_trainable_lr": {"plain": lr_plain, "batchnorm": lr_bn, "ratio": ratio}, "modes": modes}
    notes = (f"{config.dataset} stands in for MNIST (not available here). Network {sizes}, {config.activation} "
             f"units, weights '{config.init}', BN before every hidden non-linearity, plain SGD with batches of "
             f"{config.batch_size}; (a) at learning rate {config.learning_rate:g} for both nets. Sweep: {trains_def}.")
    payload = _common.save(NAME, config, results, claims, out_dir, notes=notes)
    plot(payload, out_dir)
    return payload


_COLORS = {"plain": "C0", "batchnorm": "C3"}
_LABELS = {"plain": "without BN", "batchnorm": "with BN"}


def plot(payload: dict, out_dir) -> None:
    plt = _common.style()
    r, config = payload["results"], payload["config"]
    curves = r["curves"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3), layout="constrained")
    for s in SETTINGS:
        axes[0].plot(curves[s]["steps"], curves[s]["test_accuracy"], color=_COLORS[s], label=_LABELS[s])
    axes[0].set(title="(a) test accuracy", xlabel="training step", ylabel="test accuracy (%)")
    axes[0].legend(loc="lower right")
    for ax, s, tag in zip(axes[1:], SETTINGS, "bc", strict=True):
        q = np.asarray(curves[s]["probe_percentiles"], float)
        ax.fill_between(curves[s]["steps"], q[0], q[2], color=_COLORS[s], alpha=0.15)
        for row, p, ls in zip(q, PERCENTILES, (":", "-", "--"), strict=True):
            ax.plot(curves[s]["steps"], row, color=_COLORS[s], ls=ls, label=f"{p}th percentile")
        ax.set(title=f"({tag}) input to one sigmoid, {_LABELS[s]}", xlabel="training step", ylabel="sigmoid input")
        ax.legend(loc="upper left", fontsize=8)
    _common.savefig(fig, out_dir, NAME)

    fig, ax = plt.subplots(figsize=(8, 4.3), layout="constrained")
    for s in SETTINGS:
        sw = r["sweep"][s]
        err = np.asarray([np.nan if e is None else e for e in sw["final_test_error"]], float)
        ax.semilogx(sw["learning_rates"], err, "o-", color=_COLORS[s], label=_LABELS[s])
    ax.axhline(config["trains_error"], color="k", ls=":")
    ax.set(xlabel="learning rate", ylabel="test error (%)", ylim=(0, 100))
    ax.legend()
    _common.savefig(fig, out_dir, f"{NAME}_lr")


if __name__ == "__main__":
    raise SystemExit(_common.module_cli(sys.modules[__name__]))
