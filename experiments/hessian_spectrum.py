"""The full Hessian of a ~2,600-parameter network, plain, transformed and batch-normalised.

Vatanen, Raiko, Valpola & LeCun (2013) computed every eigenvalue of the Hessian of a small MLP on downsampled
MNIST, found "curvature much more even with transformations", and measured the angle between the gradient and
the second-order update ``(H + mu I)^-1 g``. We repeat this on three tanh MLPs trained by the same SGD
(``plain``; ``transform``: :mod:`fflab.norm`'s transformations, Hessian in its own parameters ``W, b, C`` at
fixed transformations; ``batchnorm``, Hessian of the full-batch training-mode loss) at a few checkpoints, in
float64: every eigenvalue, the spread of ``log10 |lambda|``, the off-diagonal shares of ``||H||_F`` and the
gradient-Newton angle over a log grid of ``mu``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

import analysis
import fflab
from analysis import spectrum
from experiments import _common
from fflab import data, train

NAME = "hessian_spectrum"
DESCRIPTION = ("Every Hessian eigenvalue of a ~2,600-parameter tanh MLP, plain vs transformed vs batch-norm: "
               "spread, diagonal dominance, gradient-Newton angle")
SLIDE = "Why does it work? (Vatanen et al., 2013): eigenvalues of H; angle between gradient and second order update"
PAPERS = {"Vatanen, Raiko, Valpola & LeCun 2013": "https://arxiv.org/abs/1301.3476",
          "Raiko, Valpola & LeCun 2012": "https://proceedings.mlr.press/v22/raiko12.html",
          "Ioffe & Szegedy 2015": "https://arxiv.org/abs/1502.03167"}

VARIANTS = ("plain", "transform", "batchnorm")


@dataclass(frozen=True)
class Config:
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    image_side: int = 10  # images are shrunk (antialiased) to image_side x image_side
    hidden: tuple = (20, 20)
    n_train: int = 10000
    n_hessian: int = 2000  # the Hessian is of the mean cross-entropy on the first n_hessian training samples
    epochs: int = 20
    checkpoints: tuple = (1, 5, 20)
    batch_size: int = 100
    learning_rate: float = 0.1
    mus: tuple = (1e-4, 1e2, 25)  # log grid of mu: first, last, count
    keep_eigs: int = 240  # eigenvalues stored per spectrum (rank-uniform subsample, ends included)
    seed: int = 0


QUICK = Config(dataset="digits", image_side=4, hidden=(12, 12), n_train=1437, n_hessian=400, epochs=8,
               checkpoints=(1, 8), batch_size=50, mus=(1e-4, 1e2, 13))
FULL = Config()


def load_images(config: Config) -> tuple[np.ndarray, np.ndarray]:
    """Training inputs ``(n, side^2)`` shrunk (linear, antialiased) to ``image_side`` a side, and labels."""
    ds = data.load(config.dataset, data_dir=config.data_dir)
    x, y = np.asarray(ds.x_train[: config.n_train], np.float32), np.asarray(ds.y_train[: config.n_train])
    side = int(round(np.sqrt(x.shape[1])))
    if side != config.image_side:
        imgs = jax.image.resize(jnp.asarray(x).reshape(-1, side, side),
                                (len(x), config.image_side, config.image_side), "linear", antialias=True)
        x = np.asarray(imgs).reshape(len(x), -1)
    return x, y.astype(np.int32)


def variant_model(variant: str):
    return fflab.classifier("tanh", None if variant == "plain" else variant)


def hessian_loss(variant: str):
    """The loss whose Hessian is taken: plain ``loss(params, x, y)``; else ``loss(params, model_state, x, y)``
    at fixed state: batch norm in training mode (statistics of the batch itself), the transformed net without
    re-estimating its transformations."""
    model = variant_model(variant)
    if variant == "plain":
        return model.loss_fn
    return train.freeze(model.loss_fn if variant == "batchnorm" else model.eval_loss_fn)


def hessian_at(variant: str, params, model_state, x, y):
    """Dense Hessian ``(P, P)``, flat gradient ``(P,)``, loss, and the float64 params (under ``enable_x64``)."""
    params, model_state, x = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), (params, model_state, x))
    args = (x, jnp.asarray(y)) if model_state is None else (model_state, x, jnp.asarray(y))
    loss_fn = hessian_loss(variant)
    H = analysis.hessian(loss_fn, params, *args)
    loss, g = jax.jit(jax.value_and_grad(loss_fn))(params, *args)
    return np.asarray(H), np.asarray(ravel_pytree(g)[0]), float(loss), params


def newton_angles(eigs: np.ndarray, g_eig: np.ndarray, mus: np.ndarray) -> np.ndarray:
    """Angle (degrees) between ``g`` and ``(H + mu I)^-1 g`` per ``mu``, from ``H``'s eigenvalues and ``g`` in
    its eigenbasis (:func:`analysis.critical.gradient_newton_angles` without a second eigendecomposition)."""
    d = g_eig[None, :] / (eigs[None, :] + mus[:, None])
    u = g_eig / np.linalg.norm(g_eig)
    v = d / np.linalg.norm(d, axis=1, keepdims=True)
    return np.degrees(2 * np.arctan2(np.linalg.norm(u - v, axis=1), np.linalg.norm(u + v, axis=1)))


def analyse(H, g, blocks, mus, keep: int) -> dict:
    """Spectrum summaries, diagonal dominance and gradient-Newton angles of one Hessian ``(P, P)``."""
    eigs, U = spectrum.eigh(H)
    s = spectrum.summarize(eigs)
    by_mag = eigs[np.argsort(-np.abs(eigs), kind="stable")]  # largest |lambda| first, as Vatanen et al. plot
    ranks = np.unique(np.round(np.linspace(0, eigs.size - 1, min(keep, eigs.size))).astype(int))
    return {"P": int(eigs.size), "summary": s._asdict(), "spread_log10_std": s.log10_std,
            "condition_positive": s.condition, "eig_ranks": ranks, "eig_values": by_mag[ranks],
            "diag_offshare": spectrum.diagonal_dominance(H), "block_offshare": spectrum.diagonal_dominance(H, blocks),
            "block_names": list(blocks.names), "block_norms": spectrum.block_norms(H, blocks),
            "grad_norm": float(np.linalg.norm(g)), "angles": newton_angles(eigs, U.T @ g, mus)}


def run_variant(variant: str, config: Config, x, y) -> dict:
    """Train one variant by SGD, keeping ``(params, model_state)`` at the checkpoints, then analyse each."""
    model = variant_model(variant)
    key = jax.random.PRNGKey(config.seed)
    params, model_state = model.init(key, [x.shape[1], *config.hidden, 10], init="glorot")
    opt = train.make_optimizer("sgd", config.learning_rate)
    taken = {}

    def keep(epoch, st):
        if epoch in config.checkpoints:
            taken[epoch] = jax.device_get((st.params, st.model_state))

    fit = train.fit(train.init_state(params, opt, jax.random.fold_in(key, 1), model_state), opt, (x, y),
                    loss_fn=model.loss_fn, metrics_fn=model.metrics_fn, epochs=config.epochs,
                    batch_size=config.batch_size, callback=keep, progress=False)
    mus = np.geomspace(*config.mus[:2], int(config.mus[2]))
    out = {"sizes": [x.shape[1], *config.hidden, 10], "train_error": fit.history["train_error"], "checkpoints": {}}
    with jax.enable_x64(True):
        for epoch in sorted(taken):
            H, g, loss, p64 = hessian_at(variant, *taken[epoch], x[: config.n_hessian], y[: config.n_hessian])
            out["checkpoints"][epoch] = {**analyse(H, g, spectrum.param_blocks(p64), mus, config.keep_eigs),
                                         "loss": loss}
    return out


def main(config: Config, out_dir) -> dict:
    x, y = load_images(config)
    runs = fflab.files.jsonable({v: run_variant(v, config, x, y) for v in VARIANTS})
    mus = np.geomspace(*config.mus[:2], int(config.mus[2]))
    epochs = sorted(int(e) for e in runs["plain"]["checkpoints"])

    def per(key, v):
        return [float(runs[v]["checkpoints"][str(e)][key]) for e in epochs]

    # Angles compared where H + mu I is positive definite for every variant at that checkpoint.
    angle = {v: [] for v in VARIANTS}
    for e in epochs:
        ok = mus > max(-runs[v]["checkpoints"][str(e)]["summary"]["lambda_min"] for v in VARIANTS)
        for v in VARIANTS:
            a = np.asarray(runs[v]["checkpoints"][str(e)]["angles"], float)
            angle[v].append(float(np.mean(a[ok])) if ok.any() else None)
    table = {v: {"P": runs[v]["checkpoints"][str(epochs[-1])]["P"], "spread_log10_std": per("spread_log10_std", v),
                 "condition_positive": per("condition_positive", v), "diag_offshare": per("diag_offshare", v),
                 "block_offshare": per("block_offshare", v), "mean_angle_pd": angle[v]} for v in VARIANTS}

    def lower(key, v):
        return all(a < b for a, b in zip(table[v][key], table["plain"][key], strict=True))

    claims = []
    for key, text in (("spread_log10_std", "curvature is much more even with {v} than plain: smaller spread (std "
                       "of log10|lambda|) at every checkpoint"),
                      ("diag_offshare", "the Hessian is closer to diagonal with {v} than plain: smaller "
                       "off-diagonal share of ||H||_F (element-wise), at every checkpoint"),
                      ("mean_angle_pd", "gradient descent is closer to Newton with {v}: smaller angle between g "
                       "and (H + mu I)^-1 g (mean over the mu where H + mu I is positive definite for every "
                       "variant), at every checkpoint")):
        for v in ("transform", "batchnorm"):
            claims.append(_common.claim(text.format(v=v), {"plain": table["plain"][key], v: table[v][key]},
                                        lower(key, v)))
    sizes = runs["plain"]["sizes"]
    notes = (f"{config.dataset} images shrunk to {config.image_side}x{config.image_side}, tanh MLP {sizes}, "
             f"{config.n_train} training samples, SGD lr {config.learning_rate:g}, batch {config.batch_size}. The "
             f"Hessian is of the mean cross-entropy on the first {config.n_hessian} training samples, in float64.")
    payload = _common.save(NAME, config, {"mus": mus, "epochs": epochs, "table": table, "runs": runs}, claims,
                           out_dir, notes=notes)
    plot(payload, out_dir)
    return payload


_COLORS = {"plain": "C0", "transform": "C2", "batchnorm": "C3"}


def plot(payload: dict, out_dir) -> None:
    plt = _common.style()
    r = payload["results"]
    e = str(r["epochs"][-1])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.3), layout="constrained")
    for v in VARIANTS:
        c = r["runs"][v]["checkpoints"][e]
        vals = np.asarray(c["eig_values"], float)
        axes[0].semilogy(np.asarray(c["eig_ranks"]) / (c["P"] - 1), np.abs(vals), color=_COLORS[v], label=v)
        axes[1].semilogx(r["mus"], c["angles"], "o-", color=_COLORS[v], label=v)
    axes[0].legend()
    _common.savefig(fig, out_dir, NAME)


if __name__ == "__main__":
    raise SystemExit(_common.module_cli(sys.modules[__name__]))
