"""Every eigenvalue of the Hessian of a ~2,600-parameter network, without and with transformations.

Vatanen, Raiko, Valpola & LeCun (2013) computed every eigenvalue of the Hessian of a small MLP on downsampled
MNIST ("curvature is much more even with transformations") and the angle between the gradient and the
second-order update ``(H + mu I)^-1 g``. We train, by the same SGD from the same weights, one tanh MLP with
shortcut connections (``image_side^2`` inputs, hidden layers ``hidden``) three ways: ``plain`` (no
transformations: ``alpha = beta = 0``, ``gamma = 1``, inputs not centred, so the same parameters as the
others), ``transform`` (Raiko et al.'s transformations and centred inputs, re-estimated every step) and
``transform_gamma`` (plus Vatanen et al.'s gamma); and, as an extension, a batch-normalised MLP without
shortcuts. At a few checkpoints, in float64, on a fixed set of training samples, with the transformations
held fixed (BN in training mode on those samples): every eigenvalue, the spread of ``log10 |lambda|``, the
gradient-Newton angle over a log grid of ``mu``, and the Fisher (Gauss-Newton) matrix's off-diagonal share over
the parameter arrays as blocks, each scaled by its diagonal blocks (:func:`analysis.spectrum.block_coupling`).
"""

import functools
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
DESCRIPTION = ("Every Hessian eigenvalue of a ~2,600-parameter tanh MLP without and with transformations (and BN): "
               "spread, gradient-Newton angle, block coupling")
SLIDE = "Why does it work? (Vatanen et al., 2013): eigenvalues of H; angle between gradient and second order update"
PAPERS = {"Vatanen, Raiko, Valpola & LeCun 2013": "https://arxiv.org/abs/1301.3476",
          "Raiko, Valpola & LeCun 2012": "https://proceedings.mlr.press/v22/raiko12.html",
          "Ioffe & Szegedy 2015": "https://arxiv.org/abs/1502.03167"}

VARIANTS = ("plain", "transform", "transform_gamma", "batchnorm")
SHARES = ("fisher_blocks_scaled", "hessian_blocks_scaled", "hessian_blocks", "hessian_elements")


@dataclass(frozen=True)
class Config:
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    image_side: int = 7  # images are shrunk (antialiased) to image_side x image_side
    hidden: tuple = (16, 16)
    n_train: int = 10000
    n_hessian: int = 2000  # the Hessian is of the mean cross-entropy on the first n_hessian training samples
    epochs: int = 20
    checkpoints: tuple = (1, 5, 20)
    batch_size: int = 100
    learning_rate: float = 0.1
    mus: tuple = (1e-4, 1e2, 25)  # log grid of mu: first, last, count
    keep_eigs: int = 240  # eigenvalues stored per spectrum (rank-uniform subsample, ends included)
    seed: int = 0


QUICK = Config(dataset="digits", image_side=4, hidden=(6, 6), n_train=1437, n_hessian=200, epochs=6,
               checkpoints=(1, 6), batch_size=50, mus=(1e-4, 1e2, 13))
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
    """The preset of a variant; the three shortcut nets share one architecture (``transform``)."""
    return fflab.classifier("tanh", "batchnorm" if variant == "batchnorm" else "transform",
                            transform_gamma=variant == "transform_gamma")


def training_loss(variant: str):
    """``plain`` trains the shortcut net at its initial (zero) transformations: the loss that never updates them."""
    return variant_model("transform").eval_loss_fn if variant == "plain" else variant_model(variant).loss_fn


def hessian_loss(variant: str):
    """``loss(params, model_state, x, y)`` at fixed state: the transformations held, BN on the batch's statistics.
    (The shortcut nets' evaluation loss does not depend on gamma's option: one function, one compiled program.)"""
    model = variant_model("batchnorm" if variant == "batchnorm" else "transform")
    return train.freeze(model.loss_fn if variant == "batchnorm" else model.eval_loss_fn)


def logits(params, state_and_x, *, variant: str):
    """The output function of the Fisher matrix: logits of ``state_and_x = (model_state, x)``, BN on the batch."""
    return variant_model(variant).apply(params, *state_and_x, train=variant == "batchnorm")[0]


_SHORTCUT_LOGITS, _BN_LOGITS = (functools.partial(logits, variant=k) for k in ("transform", "batchnorm"))


def hessian_at(variant: str, params, model_state, x, y):
    """Dense Hessian and Fisher (Gauss-Newton) matrices ``(P, P)``, flat gradient ``(P,)``, loss, and the
    float64 params (under ``enable_x64``)."""
    params, model_state, x = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), (params, model_state, x))
    loss_fn, y = hessian_loss(variant), jnp.asarray(y)
    H = analysis.hessian(loss_fn, params, model_state, x, y)
    ggn, dim = analysis.hessian_operator(None, params, (model_state, x), y, curvature="ggn",
                                         output_fn=_BN_LOGITS if variant == "batchnorm" else _SHORTCUT_LOGITS,
                                         loss=fflab.losses.cross_entropy)
    F = jax.lax.map(ggn, jnp.eye(dim), batch_size=64)
    loss, g = jax.jit(jax.value_and_grad(loss_fn))(params, model_state, x, y)
    return np.asarray(H), np.asarray(F), np.asarray(ravel_pytree(g)[0]), float(loss), params


def newton_angles(eigs: np.ndarray, g_eig: np.ndarray, mus: np.ndarray) -> np.ndarray:
    """Angle (degrees) between ``g`` and ``(H + mu I)^-1 g`` per ``mu``, from ``H``'s eigenvalues and ``g`` in
    its eigenbasis (:func:`analysis.critical.gradient_newton_angles` without a second eigendecomposition)."""
    d = g_eig[None, :] / (eigs[None, :] + mus[:, None])
    u = g_eig / np.linalg.norm(g_eig)
    v = d / np.linalg.norm(d, axis=1, keepdims=True)
    return np.degrees(2 * np.arctan2(np.linalg.norm(u - v, axis=1), np.linalg.norm(u + v, axis=1)))


def analyse(H, F, g, blocks, mus, keep: int) -> dict:
    """Spectrum summaries, gradient-Newton angles of one Hessian ``(P, P)``; block coupling of it and the Fisher."""
    eigs, U = spectrum.eigh(H)
    s, dd = spectrum.summarize(eigs), spectrum.diagonal_dominance
    by_mag = eigs[np.argsort(-np.abs(eigs), kind="stable")]  # largest |lambda| first, as Vatanen et al. plot
    ranks = np.unique(np.round(np.linspace(0, eigs.size - 1, min(keep, eigs.size))).astype(int))
    return {"P": int(eigs.size), "summary": s._asdict(), "spread_log10_std": s.log10_std, "eig_ranks": ranks,
            "decades": spectrum.decades_below_top(eigs), "eig_values": by_mag[ranks],
            "fisher_blocks_scaled": dd(F, blocks, scaled=True), "hessian_blocks_scaled": dd(H, blocks, scaled=True),
            "hessian_blocks": dd(H, blocks), "hessian_elements": dd(H), "angles": newton_angles(eigs, U.T @ g, mus)}


def run_variant(variant: str, config: Config, x, y) -> dict:
    """Train one variant by SGD, keeping ``(params, model_state)`` at the checkpoints, then analyse each."""
    model = variant_model(variant)
    key = jax.random.key(config.seed)  # the same weights W for every variant
    params, model_state = model.init(key, [x.shape[1], *config.hidden, 10], init="glorot")
    opt = train.make_optimizer("sgd", config.learning_rate)
    taken = {}

    def keep(epoch, st):
        if epoch in config.checkpoints:
            taken[epoch] = jax.device_get((st.params, st.model_state))

    fit = train.fit(train.init_state(params, opt, jax.random.fold_in(key, 1), model_state), opt, (x, y),
                    loss_fn=training_loss(variant), metrics_fn=model.metrics_fn, epochs=config.epochs,
                    batch_size=config.batch_size, callback=keep, progress=False)
    mus = np.geomspace(*config.mus[:2], int(config.mus[2]))
    out = {"train_error": fit.history["train_error"], "checkpoints": {}}
    with jax.enable_x64(True):
        for epoch in sorted(taken):
            H, F, g, loss, p64 = hessian_at(variant, *taken[epoch], x[: config.n_hessian], y[: config.n_hessian])
            out["checkpoints"][epoch] = {**analyse(H, F, g, spectrum.param_blocks(p64), mus, config.keep_eigs),
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
    ok = {e: mus > max(-runs[v]["checkpoints"][str(e)]["summary"]["lambda_min"] for v in VARIANTS) for e in epochs}
    angle = {v: [float(np.mean(np.asarray(runs[v]["checkpoints"][str(e)]["angles"], float)[ok[e]])) for e in epochs]
             for v in VARIANTS}
    table = {v: {"P": runs[v]["checkpoints"][str(epochs[-1])]["P"], "spread": per("spread_log10_std", v),
                 "angle": angle[v], **{k: per(k, v) for k in ("decades", *SHARES)}} for v in VARIANTS}

    def lower(key, v):  # smaller than plain's at every checkpoint; the margin is the closest call
        return _common.both(*(_common.below(a, b) for a, b in zip(table[v][key], table["plain"][key], strict=True)))

    texts = {"decades": "curvature is much more even with {v} than without transformations: the median |eigenvalue| "
                        "lies fewer orders of magnitude below the largest, at every checkpoint",
             "angle": "gradient descent is closer to Newton with {v}: smaller angle between g and (H + mu I)^-1 g "
                      "(mean over the mu where H + mu I is positive definite for every variant), at every checkpoint",
             "fisher_blocks_scaled": "the Fisher matrix (Raiko et al.; the lecture says Hessian) is closer to a "
                                     "diagonal with {v}: smaller off-diagonal share over the parameter arrays as "
                                     "blocks, each scaled by its two diagonal blocks, at every checkpoint"}
    claims = [_common.claim(text.format(v=v), {"plain": table["plain"][key], v: table[v][key]}, lower(key, v))
              for key, text in texts.items() for v in VARIANTS[1:]]
    notes = (f"{config.dataset} images shrunk to {config.image_side}x{config.image_side} (MNIST is not available "
             f"here), tanh MLP {[x.shape[1], *config.hidden, 10]}, {config.n_train} training samples, SGD lr "
             f"{config.learning_rate:g}, batch {config.batch_size}, the same initial W for every variant. plain, "
             f"transform and transform_gamma are one network with shortcuts ({table['plain']['P']} parameters), the "
             f"first with its transformations never estimated; batch norm has no shortcuts ({table['batchnorm']['P']} "
             f"parameters). The Hessian is of the mean cross-entropy on the first {config.n_hessian} training samples, "
             "in float64. Evenness and the unscaled shares change under a rescaling of the parameters (gamma is one); "
             "the block share scaled by the diagonal blocks does not. Last checkpoint, per variant, the spread (std of "
             "log10|lambda| over |lambda| > 1e-6 max: the old measure, which drops the tail below the cut, so a deeper "
             "tail scores a smaller spread) and the Hessian's shares (blocks scaled / blocks / elements): " + "; ".join(
                 f"{v} {table[v]['spread'][-1]:.3f}, " + " / ".join(f"{table[v][k][-1]:.3f}" for k in SHARES[1:])
                 for v in VARIANTS) + ".")
    return _common.save(NAME, config, {"mus": mus, "epochs": epochs, "table": table, "runs": runs}, claims,
                        out_dir, notes=notes, plot=plot)


_COLORS = {"plain": "C0", "transform": "C2", "transform_gamma": "C1", "batchnorm": "C3"}
_LABELS = {"plain": "no transformations", "transform": "transformed (Raiko)",
           "transform_gamma": "transformed + gamma (Vatanen)", "batchnorm": "batch norm (no shortcuts)"}


def plot(payload: dict, out_dir) -> None:
    plt, r = _common.style(), payload["results"]
    e, mus, t = str(r["epochs"][-1]), np.asarray(r["mus"]), r["table"]
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.6), layout="constrained", width_ratios=(1.3, 1.1, 0.8, 0.8))
    for v in VARIANTS:
        c = r["runs"][v]["checkpoints"][e]
        rank = np.asarray(c["eig_ranks"], float) / (c["P"] - 1)
        mags = np.abs(np.asarray(c["eig_values"], float))
        axes[0].semilogy(rank, np.maximum(mags / mags[0], 1e-14), color=_COLORS[v],
                         label=f"{_LABELS[v]}: median {c['decades']:.1f} decades down")
        pd = mus > -c["summary"]["lambda_min"]
        axes[1].semilogx(mus[pd], np.asarray(c["angles"], float)[pd], "o-", ms=3, color=_COLORS[v], label=_LABELS[v])
        for ax, key in zip(axes[2:], ("decades", "fisher_blocks_scaled"), strict=True):
            ax.plot(r["epochs"], t[v][key], "o-", color=_COLORS[v])
    axes[0].set(title=f"(a) Hessian |eigenvalues| after epoch {e}, largest first", xlabel="rank / number of "
                "parameters", ylabel="|eigenvalue| / largest", ylim=(1e-9, 1.5))
    axes[1].set(title="(b) angle between g and (H + mu I)^-1 g", xlabel="mu (where H + mu I is positive definite)",
                ylabel="degrees", ylim=(0, None))
    axes[2].set(title="(c) decades from the largest to the median |eigenvalue|", xlabel="epoch")
    axes[3].set(title="(d) Fisher: off-block-diagonal share (scaled)", xlabel="epoch")
    for ax in axes[2:]:
        ax.set(xscale="log", xticks=r["epochs"], xticklabels=[str(k) for k in r["epochs"]])
        ax.minorticks_off()
    for ax in axes[:2]:
        ax.legend(fontsize=8)
    fig.suptitle(f"Vatanen et al.'s analysis: every eigenvalue of the Hessian ({payload['config']['n_hessian']} "
                 "training samples, float64); flatter (a) = more even curvature, lower (b) = SGD closer to Newton")
    _common.savefig(fig, out_dir, NAME)


if __name__ == "__main__":
    raise SystemExit(_common.module_cli(__name__))
