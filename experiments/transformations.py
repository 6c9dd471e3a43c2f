"""Plain, Raiko-transformed and batch-normalised networks trained side by side.

Lecture: "Why does it work? (Raiko et al., 2012)": transformations do not change the model, but the
optimisation; the Hessian is closer to a diagonal, so the gradient is closer to Newton's step; curvature is
much more even with transformations (Vatanen et al., 2013).

Three versions of the same sigmoid MLP, from the same weights ``W`` and the same mini-batches:

- ``plain``: :func:`fflab.mlp.apply`.
- ``transform``: every hidden unit computes ``f(z) - alpha z - beta`` with shortcut connections from every
  layer below (:mod:`fflab.norm`, Raiko, Valpola & LeCun 2012); before each SGD step ``alpha`` and ``beta``
  are re-estimated on the mini-batch (momentum 0.9) and the shortcuts and biases are changed so that the
  network computes the same function (:func:`fflab.norm.transform_update`, inside
  :func:`fflab.train.make_train_epoch` with ``norm="transform"``).
- ``batchnorm``: Ioffe & Szegedy's batch norm before every hidden non-linearity.

Each net is trained with plain SGD at every learning rate of a small log grid (the rates train together,
``jax.vmap`` over the jitted epoch with the rate in the optimiser state) and compared at its own best rate
(lowest mean mini-batch loss over the last epoch). We check that a transformation step leaves the trained
network's outputs unchanged, and measure the Hessian of the training loss of one small network at one point
in function space in two parameterisations of the same parameter space: with ``alpha = beta = 0`` (the plain
network, its shortcuts included) and after :func:`fflab.norm.transform_update` on the training set. Same
function, same parameter count; only the transformation differs. We report how much of the Hessian's mass
lies off the diagonal and how spread out its eigenvalues are.

References:
    Raiko, Valpola & LeCun (2012), Deep learning made easier by linear transformations in perceptrons.
    Vatanen, Raiko, Valpola & LeCun (2013), Pushing stochastic gradient towards second-order methods:
    backpropagation learning with transformations in nonlinearities.
    Ioffe & Szegedy (2015), Batch normalization.
"""

from __future__ import annotations

import functools
import sys
import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from analysis import spectrum
from experiments import _common
from experiments.batchnorm import _norm_arg, init_net, lr_lanes
from fflab import data, losses, mlp, norm, train

NAME = "transformations"
DESCRIPTION = "Plain, Raiko-transformed and BN sigmoid nets side by side: same model, new optimisation"
SLIDE = "Why does it work? (Raiko et al. 2012; Vatanen et al. 2013): transformations change the optimisation"

NETS = ("plain", "transform", "batchnorm")


@dataclass(frozen=True)
class Config:
    dataset: str = "digits"
    data_dir: str | None = None
    hidden: tuple = (100, 100, 100)
    activation: str = "sigmoid"
    init: str = "glorot"
    batch_size: int = 60
    train_samples: int = 0  # 0: the whole training set
    learning_rates: tuple = (0.25, 1.0, 4.0)
    epochs: int = 5
    # The Hessian comparison: a small net, trained plainly for a few epochs, on a subset of the data.
    hessian_pool: int = 2  # inputs average-pooled by this factor: 8x8 digits -> 4x4
    hessian_hidden: tuple = (8, 8)
    hessian_epochs: int = 20
    hessian_lr: float = 2.0
    hessian_samples: int = 300
    seed: int = 0


# Digits, in seconds: compiling the three nets' epochs is most of the cost, so two hidden layers and 5 epochs
# (115 steps). The plain net's best mean batch loss is then still 1.3 to 1.7 (seeds 0-2, float32 and
# float64), the transformed and batch-normalised nets' below 0.17.
QUICK = Config(hidden=(100, 100))
FULL = Config(dataset="fashion-mnist", learning_rates=(0.015625, 0.0625, 0.25, 1.0, 4.0), epochs=10,
              hessian_pool=4, hessian_hidden=(12, 12), hessian_epochs=10, hessian_samples=2000)


def train_net(config: Config, ds, sizes, dtype, net: str) -> dict:
    """Train ``net`` at every rate of ``config.learning_rates`` (vmapped); per-epoch records per rate."""
    n = config.train_samples or len(ds.x_train)
    x, y = jnp.asarray(ds.x_train[:n], dtype), jnp.asarray(ds.y_train[:n])
    xt, yt = jnp.asarray(ds.x_test, dtype), jnp.asarray(ds.y_test)
    nrm = _norm_arg(net)
    k_init, k_data = jax.random.split(jax.random.key(config.seed))
    params, model_state = init_net(k_init, sizes, net, init=config.init, dtype=dtype)
    opt = optax.inject_hyperparams(optax.sgd)(learning_rate=1.0)

    start, _, epoch_all = lr_lanes(opt, batch_size=config.batch_size, activation=config.activation, norm=nrm)
    k = len(config.learning_rates)
    tic = time.perf_counter()
    states = start(params, model_state, k_data, jnp.asarray(config.learning_rates, dtype))
    batch_loss = np.zeros((k, config.epochs))
    test_error = np.zeros((k, config.epochs))
    finite = np.ones(k, bool)
    for e in range(config.epochs):
        states, stats = epoch_all(states, x, y)
        loss = np.asarray(stats.loss, np.float64)
        finite &= np.all(np.isfinite(loss), axis=1)
        batch_loss[:, e] = loss.mean(axis=1)
        for j in range(k):
            lane_params, lane_state = _host_lane(states, j)
            _, err = train.evaluate(lane_params, xt, yt, activation=config.activation, norm=nrm,
                                    model_state=lane_state)
            test_error[j, e] = 100.0 * err
    batch_loss[~finite] = np.nan
    test_error[~finite] = np.nan
    final = np.where(finite, batch_loss[:, -1], np.inf)
    best = int(np.argmin(final))
    return {
        "learning_rates": list(config.learning_rates),
        "batch_loss": batch_loss,  # (rates, epochs): mean mini-batch loss of each epoch
        "test_error": test_error,  # (rates, epochs), percent
        "finite": finite,
        "best": best,
        "best_lr": config.learning_rates[best],
        "steps_per_epoch": n // config.batch_size,
        "seconds": time.perf_counter() - tic,
        "_state": _host_lane(states, best),
    }


def _host_lane(states, i: int):
    """``(params, model_state)`` of lane ``i`` of the vmapped states, as numpy arrays.

    Indexed on the host: a jitted lane picker compiles one program per net for what is only a copy.
    """
    return jax.tree_util.tree_map(lambda a: np.asarray(a)[i], (states.params, states.model_state))


@functools.cache
def _invariance_check(activation: str):
    """The jitted check of :func:`invariance`, one per activation (so repeated calls compile once)."""

    @jax.jit
    def check(params, model_state, x):
        before, _ = norm.apply(params, model_state, x, norm="transform", activation=activation)
        p2, s2 = norm.transform_update(params, model_state, x, activation=activation, momentum=0.0)
        after, _ = norm.apply(p2, s2, x, norm="transform", activation=activation)
        moved = jnp.max(jnp.stack([jnp.max(jnp.abs(a.alpha - b.alpha)) for a, b in
                                   zip(model_state, s2, strict=True)]))
        return jnp.max(jnp.abs(after - before)), jnp.max(jnp.abs(before)), moved

    return check


def invariance(params, model_state, x, *, activation: str) -> dict:
    """Re-estimate a trained ``transform`` net's transformations on ``x``: how far do its outputs move?"""
    change, scale, moved = (float(v) for v in _invariance_check(activation)(params, model_state, x))
    return {"max_abs_logit_change": change, "max_abs_logit": scale, "max_alpha_change": moved}


def _hessian_loss(params, model_state, x, y, *, activation: str):
    logits, _ = norm.apply(params, model_state, x, norm="transform", activation=activation)
    return losses.cross_entropy(logits, y)


def _round(a) -> list[float]:
    """Four significant digits, to keep the JSON small."""
    return [float(f"{v:.4g}") for v in np.asarray(a).ravel()]


def pool_images(x: np.ndarray, image_shape, factor: int) -> np.ndarray:
    """Average-pool flattened images ``(n, h * w)`` by ``factor x factor`` blocks to ``(n, h/f * w/f)``."""
    h, w = image_shape
    if h % factor or w % factor:
        raise ValueError(f"pool factor {factor} does not divide the image shape {tuple(image_shape)}")
    x = np.asarray(x).reshape(-1, h // factor, factor, w // factor, factor)
    return x.mean(axis=(2, 4)).reshape(x.shape[0], -1)


def hessian_comparison(config: Config, ds, dtype) -> dict:
    """Hessian of the training loss at one function, without and with the transformations.

    A small sigmoid MLP (``hessian_hidden``) is trained plainly for ``hessian_epochs`` epochs and written in
    the transform layout (zero shortcuts, ``alpha = beta = 0``); its Hessian over all parameters (shortcuts
    included) on ``hessian_samples`` training images (pooled by ``hessian_pool``) is compared with the
    Hessian after :func:`fflab.norm.transform_update` on those images, which changes the parameterisation
    but not the function. Dense, by ``jax.hessian`` of the ravelled parameters.
    """
    x = jnp.asarray(pool_images(ds.x_train[: config.hessian_samples], ds.image_shape, config.hessian_pool),
                    dtype)
    y = jnp.asarray(ds.y_train[: config.hessian_samples])
    sizes = [x.shape[1], *config.hessian_hidden, ds.num_classes]
    k_init, k_data = jax.random.split(jax.random.key(config.seed + 1))
    # Train a plain MLP, then write it in the transform layout: zero shortcuts, alpha = beta = 0.
    opt = optax.sgd(config.hessian_lr)
    state = train.init_state(mlp.init(k_init, sizes, init=config.init, dtype=dtype), opt, k_data)
    epoch = train.make_train_epoch(opt, batch_size=config.batch_size, activation=config.activation)
    for _ in range(config.hessian_epochs):
        state, _ = epoch(state, x, y)
    layout, zero_state = norm.init(k_init, sizes, norm="transform", init=config.init, dtype=dtype)
    plain_params = [dict(layer, W=trained["W"], b=trained["b"])
                    for layer, trained in zip(layout, state.params, strict=True)]
    t_params, t_state = norm.transform_update(plain_params, zero_state, x, activation=config.activation)
    loss_fn = functools.partial(_hessian_loss, activation=config.activation)
    rtol = 1e-4 if dtype == jnp.float32 else 1e-8  # |eigenvalues| below rtol * max count as zero
    flat, unravel = ravel_pytree(plain_params)

    @jax.jit
    def loss_and_hessian(flat, model_state, x, y):  # P is small (a few thousand): jax.hessian in one go
        def f(v):
            return loss_fn(unravel(v), model_state, x, y)

        return f(flat), jax.hessian(f)(flat)

    out = {"sizes": sizes, "num_params": int(sum(a.size for a in jax.tree_util.tree_leaves(plain_params)))}
    for name, p, s in (("plain", plain_params, zero_state), ("transform", t_params, t_state)):
        loss, h = loss_and_hessian(ravel_pytree(p)[0], s, x, y)
        h = np.asarray(h, np.float64)
        h = 0.5 * (h + h.T)
        eigs = spectrum.eigenvalues(h)
        mags = np.sort(np.abs(eigs))[::-1]
        log_range, log_std = spectrum.log_spread(eigs, rtol=rtol)
        out[name] = {
            "loss": float(loss),
            "offdiag_fraction": spectrum.diagonal_dominance(h),
            "lambda_max": float(eigs[-1]),
            "lambda_min": float(eigs[0]),
            "log10_range": log_range,
            "log10_std": log_std,
            "abs_eigenvalues_desc": _round(mags[:: max(1, mags.size // 300)]),
        }
    return out


def main(config: Config = QUICK, out_dir=None) -> dict:
    out_dir = out_dir or _common.default_out(config == QUICK)
    dtype = jnp.zeros(()).dtype
    ds = data.load(config.dataset, data_dir=config.data_dir)
    sizes = [ds.x_train.shape[1], *config.hidden, ds.num_classes]
    runs = {net: train_net(config, ds, sizes, dtype, net) for net in NETS}
    t_params, t_model_state = runs["transform"].pop("_state")
    for net in ("plain", "batchnorm"):
        runs[net].pop("_state")
    n = config.train_samples or len(ds.x_train)
    inv = invariance(t_params, t_model_state, jnp.asarray(ds.x_train[:n], dtype),
                     activation=config.activation)
    hess = hessian_comparison(config, ds, dtype)

    final = {net: float(runs[net]["batch_loss"][runs[net]["best"], -1]) for net in NETS}
    first = {net: float(runs[net]["batch_loss"][runs[net]["best"], 0]) for net in NETS}
    final_err = {net: float(runs[net]["test_error"][runs[net]["best"], -1]) for net in NETS}
    best_lr = {net: runs[net]["best_lr"] for net in NETS}
    # Same-rate comparison: at every rate where both trained, is the transformed net's loss lower?
    same_rate = {f"{lr:g}": {net: float(runs[net]["batch_loss"][j, -1]) for net in NETS}
                 for j, lr in enumerate(config.learning_rates)}
    tol = 1e-4 if dtype == jnp.float32 else 1e-10
    hp, ht = hess["plain"], hess["transform"]
    claims = [
        _common.claim(
            "transformations do not change the model: re-estimating alpha and beta on the whole training set "
            "moves the trained transformed net's logits by less than "
            f"{tol:g} x their scale",
            inv,
            inv["max_abs_logit_change"] <= tol * max(1.0, inv["max_abs_logit"])
            and inv["max_alpha_change"] > 0,
        ),
        _common.claim(
            f"but they change the optimisation: after {config.epochs} epochs of SGD, each at its best rate, "
            "the transformed net reaches a lower training loss than the plain one",
            {"final mean batch loss": final, "best learning rate": best_lr, "final test error %": final_err,
             "first epoch's mean batch loss": first,
             "best rate at the grid's edge": {net: runs[net]["best"] in (0, len(config.learning_rates) - 1)
                                              for net in NETS}},
            final["transform"] < final["plain"],
        ),
        _common.claim(
            "batch norm, the transformations' descendant, also trains faster than the plain net",
            {"plain": final["plain"], "batchnorm": final["batchnorm"]},
            final["batchnorm"] < final["plain"],
        ),
        _common.claim(
            "the Hessian is closer to a diagonal with transformations (same function, same parameters): "
            "a smaller off-diagonal share of its Frobenius norm, by at least 10% of the plain one",
            {"plain": hp["offdiag_fraction"], "transform": ht["offdiag_fraction"]},
            ht["offdiag_fraction"] < 0.9 * hp["offdiag_fraction"],
        ),
        _common.claim(
            "curvature is more even with transformations (Vatanen et al. 2013): the non-negligible "
            "|eigenvalues| spread over fewer orders of magnitude (std of log10 |lambda|)",
            {"plain": hp["log10_std"], "transform": ht["log10_std"],
             "lambda_max": {"plain": hp["lambda_max"], "transform": ht["lambda_max"]}},
            ht["log10_std"] < hp["log10_std"],
        ),
    ]
    results = {"sizes": sizes, "runs": runs, "same_rate_final_loss": same_rate, "invariance": inv,
               "hessian": hess}
    notes = (
        (f"{config.dataset} stands in for MNIST. " if config.dataset != "mnist" else "")
        + f"Network {sizes}, {config.activation} units, weights '{config.init}' (the same W for all three), "
        f"plain SGD with batches of {config.batch_size} at each rate of {list(config.learning_rates)}; each "
        "net is shown at its best rate (lowest mean mini-batch loss in the last epoch). The transformed net "
        "re-estimates alpha, beta on every mini-batch (momentum 0.9) before the step and has shortcut "
        "weights (more parameters than the plain net). The Hessian comparison uses a small "
        f"{hess['sizes']} net with shortcuts ({hess['num_params']} parameters) trained plainly for "
        f"{config.hessian_epochs} epochs, on {config.hessian_samples} training images, before and after one "
        "transformation step on those images (the loss is the same to rounding: "
        f"{hp['loss']:.6g} vs {ht['loss']:.6g})."
    )
    for i, claim in enumerate(claims, 1):
        if not claim["holds"]:
            notes += f" Claim {i} does not hold in this measurement: {claim['measured']}."
    if not claims[3]["holds"] or not claims[4]["holds"]:
        notes += (" What the transformation does do to this Hessian: lambda_max "
                  f"{hp['lambda_max']:.4g} -> {ht['lambda_max']:.4g}, off-diagonal share "
                  f"{hp['offdiag_fraction']:.4f} -> {ht['offdiag_fraction']:.4f}, std of log10|lambda| "
                  f"{hp['log10_std']:.3f} -> {ht['log10_std']:.3f}. Raiko et al. transform only the hidden "
                  "units; the inputs (pixels in [0, 1], not centred) keep their own share of the curvature.")
    payload = _common.save_results(NAME, config, results, claims, out_dir, notes=notes)
    plot(payload, out_dir)
    return payload


_COLORS = {"plain": "C0", "transform": "C2", "batchnorm": "C3"}
_LABELS = {"plain": "plain", "transform": "transformed (Raiko et al.)", "batchnorm": "batch norm"}


def plot(payload: dict, out_dir) -> None:
    plt = _common.style()
    r, config = payload["results"], payload["config"]
    runs = r["runs"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3), layout="constrained")
    for net in NETS:
        run = runs[net]
        b = run["best"]
        steps = run["steps_per_epoch"] * np.arange(1, config["epochs"] + 1)
        label = f"{_LABELS[net]}, lr {run['best_lr']:g}"
        axes[0].semilogy(steps, np.asarray(run["batch_loss"][b], float), color=_COLORS[net], label=label)
        axes[1].plot(steps, np.asarray(run["test_error"][b], float), color=_COLORS[net], label=label)
        lrs = np.asarray(run["learning_rates"], float)
        last = np.asarray([row[-1] for row in run["batch_loss"]], float)
        axes[2].loglog(lrs, last, "o-", color=_COLORS[net], label=_LABELS[net])
    axes[0].set(title="training loss at each net's best rate", xlabel="SGD step",
                ylabel="mean mini-batch cross-entropy (epoch)")
    axes[1].set(title="test error at each net's best rate", xlabel="SGD step", ylabel="test error (%)")
    err = np.concatenate([np.asarray(runs[n]["test_error"][runs[n]["best"]], float) for n in NETS])
    axes[1].set_ylim(0, min(100, np.nanmax(err[len(err) // 6:]) * 1.3 + 1))
    axes[2].set(title=f"final training loss against the rate ({config['epochs']} epochs)",
                xlabel="learning rate", ylabel="last epoch's mean mini-batch loss")
    rates = config["learning_rates"]
    axes[2].set_xticks(rates, [f"{v:g}" for v in rates])
    axes[2].minorticks_off()
    for ax in axes:
        ax.legend(fontsize=8)
    fig.suptitle(f"{'-'.join(map(str, r['sizes']))} {config['activation']} net on {config['dataset']}: "
                 "same initial weights, same mini-batches, plain SGD")
    _common.savefig(fig, out_dir, NAME)

    h = r["hessian"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.3), layout="constrained")
    ax = axes[0]
    for name, color in (("plain", "C0"), ("transform", "C2")):
        mags = np.asarray(h[name]["abs_eigenvalues_desc"], float)
        rank = np.linspace(0, 1, len(mags))
        ax.semilogy(rank, np.maximum(mags, 1e-12), color=color,
                    label=f"{_LABELS[name]}: std of log10|eig| = {h[name]['log10_std']:.2f}")
    ax.set(title=f"Hessian |eigenvalues|, sorted ({h['num_params']} parameters, same function)",
           xlabel="rank / number of parameters", ylabel="|eigenvalue|", ylim=(1e-8, None))
    ax.legend(fontsize=8)
    ax = axes[1]
    names = ["plain", "transform"]
    vals = [h[n]["offdiag_fraction"] for n in names]
    bars = ax.bar(range(2), vals, color=["C0", "C2"])
    for bar, v in zip(bars, vals, strict=True):
        ax.text(bar.get_x() + bar.get_width() / 2, v + 0.01, f"{v:.3f}", ha="center")
    ax.set_xticks(range(2), [_LABELS[n] for n in names])
    ax.set(title="off-diagonal share of the Hessian: ||H - diag H||_F / ||H||_F", ylabel="fraction",
           ylim=(0, 1.05))
    _common.savefig(fig, out_dir, f"{NAME}_hessian")


if __name__ == "__main__":
    raise SystemExit(_common.module_cli(sys.modules[__name__]))
