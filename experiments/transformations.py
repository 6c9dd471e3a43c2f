"""Plain, Raiko-transformed and batch-normalised networks trained side by side.

Lecture: "Why does it work? (Raiko et al., 2012)": transformations do not change the model, but the
optimisation; the Hessian is closer to a diagonal, so the gradient is closer to Newton's step.

Three versions of the same sigmoid MLP from the same weights and mini-batches: ``plain``; ``transform``
(every hidden unit computes ``f(z) - alpha z - beta`` with shortcuts from every layer below, re-estimated on
each mini-batch: :mod:`fflab.norm`); ``batchnorm``. Each is trained with SGD at every rate of a log grid
(``train.lanes``) and compared at its own best rate (lowest mean mini-batch loss in the last epoch). Then the
Hessian of one small trained network at one function in two parameterisations of the same parameter space:
``alpha = beta = 0`` (the plain network, shortcuts included) and after :func:`fflab.norm.transform_update`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

import analysis
import fflab
from analysis import spectrum
from experiments import _common
from fflab import data, norm, train

NAME = "transformations"
DESCRIPTION = "Plain, Raiko-transformed and BN sigmoid nets side by side: same model, new optimisation"
SLIDE = "Why does it work? (Raiko et al. 2012; Vatanen et al. 2013): transformations change the optimisation"
PAPERS = {"Raiko, Valpola & LeCun 2012": "https://proceedings.mlr.press/v22/raiko12.html",
          "Vatanen, Raiko, Valpola & LeCun 2013": "https://arxiv.org/abs/1301.3476",
          "Ioffe & Szegedy 2015": "https://arxiv.org/abs/1502.03167"}

NETS = ("plain", "transform", "batchnorm")


@dataclass(frozen=True)
class Config:
    dataset: str = "digits"
    data_dir: str | None = None
    hidden: tuple = (100, 100)
    activation: str = "sigmoid"
    init: str = "glorot"
    batch_size: int = 60
    learning_rates: tuple = (0.25, 1.0, 4.0)
    epochs: int = 5
    # The Hessian comparison: a small net, trained plainly, on a subset of the data pooled by hessian_pool.
    hessian_pool: int = 2
    hessian_hidden: tuple = (8, 8)
    hessian_epochs: int = 20
    hessian_lr: float = 2.0
    hessian_samples: int = 300
    seed: int = 0


QUICK = Config()
FULL = Config(dataset="fashion-mnist", hidden=(100, 100, 100), learning_rates=(0.015625, 0.0625, 0.25, 1.0, 4.0),
              epochs=10, hessian_pool=4, hessian_hidden=(12, 12), hessian_epochs=10, hessian_samples=2000)


def train_net(config: Config, ds, sizes, net: str) -> dict:
    """Train ``net`` at every rate of ``config.learning_rates`` (lanes); per-epoch records per rate."""
    model = fflab.classifier(config.activation, None if net == "plain" else net)
    x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
    k_init, k_data = jax.random.split(jax.random.key(config.seed))
    params, model_state = model.init(k_init, sizes, init=config.init)
    opt = optax.inject_hyperparams(optax.sgd)(learning_rate=1.0)
    states = train.lanes(train.init_state(params, opt, k_data, model_state), learning_rate=config.learning_rates)
    epoch = train.make_train_epoch(opt, loss_fn=model.loss_fn, batch_size=config.batch_size, lanes=True)
    k = len(config.learning_rates)
    batch_loss, test_error = np.zeros((k, config.epochs)), np.zeros((k, config.epochs))
    finite = np.ones(k, bool)
    for e in range(config.epochs):
        states, stats = epoch(states, x, y)
        loss = np.asarray(stats.loss, np.float64)
        finite &= np.all(np.isfinite(loss), axis=1)
        batch_loss[:, e] = loss.mean(axis=1)
        for j in range(k):
            lane = train.lane(states, j)
            test_error[j, e] = train.evaluate(model.metrics_fn, lane.params, ds.x_test, ds.y_test,
                                              model_state=lane.model_state)["error"]
    batch_loss[~finite] = test_error[~finite] = np.nan
    best = int(np.argmin(np.where(finite, batch_loss[:, -1], np.inf)))
    return {"learning_rates": list(config.learning_rates), "batch_loss": batch_loss, "test_error": test_error,
            "finite": finite, "best": best, "best_lr": config.learning_rates[best],
            "steps_per_epoch": len(x) // config.batch_size, "_state": train.lane(states, best)}


@jax.jit
def _invariance(params, model_state, x):
    model = fflab.classifier("sigmoid", "transform")
    before, _ = model.apply(params, model_state, x)
    new = norm.transform_update(params, model_state, x, activation="sigmoid")
    after, _ = model.apply(params, new, x)
    moved = jnp.max(jnp.stack([jnp.max(jnp.abs(a - b)) for a, b in zip(model_state.alpha, new.alpha, strict=True)]))
    return jnp.max(jnp.abs(after - before)), jnp.max(jnp.abs(before)), moved


def invariance(params, model_state, x) -> dict:
    """Re-estimate a trained ``transform`` net's transformations on ``x``: how far do its outputs move?"""
    change, scale, moved = (float(v) for v in _invariance(params, model_state, x))
    return {"max_abs_logit_change": change, "max_abs_logit": scale, "max_alpha_change": moved}


def pool_images(x: np.ndarray, image_shape, factor: int) -> np.ndarray:
    """Average-pool flattened images ``(n, h * w)`` by ``factor x factor`` blocks to ``(n, h/f * w/f)``."""
    h, w = image_shape
    if h % factor or w % factor:
        raise ValueError(f"pool factor {factor} does not divide the image shape {tuple(image_shape)}")
    return np.asarray(x).reshape(-1, h // factor, factor, w // factor, factor).mean(axis=(2, 4)).reshape(len(x), -1)


def hessian_comparison(config: Config, ds) -> dict:
    """Hessian of the training loss at one function, without and with the transformations (dense)."""
    x = jnp.asarray(pool_images(ds.x_train[: config.hessian_samples], ds.image_shape, config.hessian_pool))
    y = jnp.asarray(ds.y_train[: config.hessian_samples])
    sizes = [x.shape[1], *config.hessian_hidden, ds.num_classes]
    k_init, k_data = jax.random.split(jax.random.key(config.seed + 1))
    plain, transformed = fflab.classifier(config.activation), fflab.classifier(config.activation, "transform")
    opt = optax.sgd(config.hessian_lr)
    state = train.init_state(plain.init(k_init, sizes, init=config.init)[0], opt, k_data)
    epoch = train.make_train_epoch(opt, loss_fn=plain.loss_fn, batch_size=config.batch_size)
    for _ in range(config.hessian_epochs):
        state, _ = epoch(state, x, y)
    layout, zero_state = transformed.init(k_init, sizes, init=config.init)
    params = [dict(layer, W=t["W"], b=t["b"]) for layer, t in zip(layout, state.params, strict=True)]
    t_state = norm.transform_update(params, zero_state, x, activation=config.activation)
    loss_fn = train.freeze(transformed.eval_loss_fn)
    rtol = 1e-4 if x.dtype == jnp.float32 else 1e-8  # |eigenvalues| below rtol * max count as zero
    out = {"sizes": sizes, "num_params": fflab.mlp.num_params(params)}
    for name, s in (("plain", zero_state), ("transform", t_state)):
        h = np.asarray(jax.jit(analysis.hessian, static_argnums=0)(loss_fn, params, s, x, y), np.float64)
        eigs = spectrum.eigenvalues(h)
        mags = np.sort(np.abs(eigs))[::-1]
        out[name] = {"loss": float(loss_fn(params, s, x, y)), "offdiag_fraction": spectrum.diagonal_dominance(h),
                     "lambda_max": float(eigs[-1]), "lambda_min": float(eigs[0]),
                     "log10_std": spectrum.log_spread(eigs, rtol=rtol)[1],
                     "abs_eigenvalues_desc": [float(f"{v:.4g}") for v in mags[:: max(1, mags.size // 300)]]}
    return out


def main(config: Config, out_dir) -> dict:
    ds = data.load(config.dataset, data_dir=config.data_dir)
    sizes = [ds.x_train.shape[1], *config.hidden, ds.num_classes]
    runs = {net: train_net(config, ds, sizes, net) for net in NETS}
    t_state = runs["transform"]["_state"]
    inv = invariance(t_state.params, t_state.model_state, jnp.asarray(ds.x_train))
    for net in NETS:
        del runs[net]["_state"]
    hess = hessian_comparison(config, ds)

    def at_best(key, e):
        return {net: float(runs[net][key][runs[net]["best"], e]) for net in NETS}

    final, first, final_err = at_best("batch_loss", -1), at_best("batch_loss", 0), at_best("test_error", -1)
    best_lr = {net: runs[net]["best_lr"] for net in NETS}
    tol = 1e-4 if jnp.zeros(()).dtype == jnp.float32 else 1e-10
    hp, ht = hess["plain"], hess["transform"]
    claims = [
        _common.claim(
            "transformations do not change the model: re-estimating alpha and beta on the whole training set "
            f"moves the trained transformed net's logits by less than {tol:g} x their scale", inv,
            inv["max_abs_logit_change"] <= tol * max(1.0, inv["max_abs_logit"]) and inv["max_alpha_change"] > 0),
        _common.claim(
            f"but they change the optimisation: after {config.epochs} epochs of SGD, each at its best rate, "
            "the transformed net reaches a lower training loss than the plain one",
            {"final mean batch loss": final, "best learning rate": best_lr, "final test error %": final_err,
             "first epoch's mean batch loss": first}, final["transform"] < final["plain"]),
        _common.claim(
            "batch norm, the transformations' descendant, also trains faster than the plain net",
            {"plain": final["plain"], "batchnorm": final["batchnorm"]}, final["batchnorm"] < final["plain"]),
        _common.claim(
            "the Hessian is closer to a diagonal with transformations (same function, same parameters): "
            "a smaller off-diagonal share of its Frobenius norm, by at least 10% of the plain one",
            {"plain": hp["offdiag_fraction"], "transform": ht["offdiag_fraction"]},
            ht["offdiag_fraction"] < 0.9 * hp["offdiag_fraction"]),
        _common.claim(
            "curvature is more even with transformations (Vatanen et al. 2013): the non-negligible "
            "|eigenvalues| spread over fewer orders of magnitude (std of log10 |lambda|)",
            {"plain": hp["log10_std"], "transform": ht["log10_std"]}, ht["log10_std"] < hp["log10_std"]),
    ]
    results = {"sizes": sizes, "runs": runs, "invariance": inv, "hessian": hess}
    notes = (f"{config.dataset} stands in for MNIST. Network {sizes}, {config.activation} units, plain SGD with "
             f"batches of {config.batch_size} at each rate of {list(config.learning_rates)}.")
    payload = _common.save(NAME, config, results, claims, out_dir, notes=notes)
    plot(payload, out_dir)
    return payload


_COLORS = {"plain": "C0", "transform": "C2", "batchnorm": "C3"}


def plot(payload: dict, out_dir) -> None:
    plt = _common.style()
    r, config = payload["results"], payload["config"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.3), layout="constrained")
    for net in NETS:
        run = r["runs"][net]
        steps = run["steps_per_epoch"] * np.arange(1, config["epochs"] + 1)
        axes[0].semilogy(steps, np.asarray(run["batch_loss"][run["best"]], float), color=_COLORS[net], label=net)
        axes[1].loglog(run["learning_rates"], [row[-1] for row in run["batch_loss"]], "o-", color=_COLORS[net])
    axes[0].legend()
    _common.savefig(fig, out_dir, NAME)
    fig, ax = plt.subplots(figsize=(6, 4.3), layout="constrained")
    for name in ("plain", "transform"):
        mags = np.asarray(r["hessian"][name]["abs_eigenvalues_desc"], float)
        ax.semilogy(np.linspace(0, 1, len(mags)), np.maximum(mags, 1e-12), color=_COLORS[name], label=name)
    ax.legend()
    _common.savefig(fig, out_dir, f"{NAME}_hessian")


if __name__ == "__main__":
    raise SystemExit(_common.module_cli(sys.modules[__name__]))
