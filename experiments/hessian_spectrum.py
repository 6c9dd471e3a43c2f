"""The full Hessian of a ~2,600-parameter network, plain, transformed and batch-normalised.

Vatanen, Raiko, Valpola & LeCun (2013) computed every eigenvalue of the Hessian of a small MLP on
downsampled MNIST and found "curvature much more even with transformations", and measured the angle between
the gradient and the second-order update ``(H + mu I)^-1 g``: the smaller it is, the closer plain gradient
descent is to Newton's method. Raiko, Valpola & LeCun (2012) add that the transformations bring the Hessian
"closer to a diagonal". This experiment repeats the analysis on three networks trained by the same SGD:

- ``plain``: a tanh MLP ``[n_in, h, h, 10]`` (100-20-20-10 on 10x10 images: 2,650 parameters);
- ``transform``: the same units with the transformations of :mod:`fflab.norm` (zero-mean, zero-slope
  non-linearities, re-estimated every step) and the shortcut connections that carry the linear part; its
  Hessian is with respect to its own parameters ``(W, b, C)``, so it has more of them;
- ``batchnorm``: batch normalisation on every hidden layer (``W, gamma, beta``).

At a few epochs of training, on a fixed set of training samples, in float64: every eigenvalue of ``H``; the
spread of ``log10 |lambda|`` (standard deviation over the non-negligible eigenvalues) and the condition
number of the positive part; the off-diagonal share of ``||H||_F`` (element-wise and per parameter block);
and the gradient-Newton angle over a log grid of ``mu``.

References:
    Vatanen, Raiko, Valpola & LeCun (2013), Pushing stochastic gradient towards second-order methods --
    backpropagation learning with transformations in nonlinearities. ICONIP.
    Raiko, Valpola & LeCun (2012), Deep learning made easier by linear transformations in perceptrons.
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
from jax.flatten_util import ravel_pytree

import analysis
from analysis import spectrum
from experiments import _common
from fflab import data, losses, mlp, norm, train

NAME = "hessian_spectrum"
DESCRIPTION = ("Every Hessian eigenvalue of a ~2,600-parameter tanh MLP, plain vs transformed vs batch-norm: "
               "spread, conditioning, diagonal dominance, gradient-Newton angle")
SLIDE = ("Why does it work? (Vatanen et al., 2013): eigenvalues of H; angle between gradient and "
         "second order update")

VARIANTS = ("plain", "transform", "batchnorm")


@dataclass(frozen=True)
class Config:
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    image_side: int = 10  # images are shrunk (antialiased) to image_side x image_side
    hidden: tuple[int, ...] = (20, 20)
    n_train: int = 10000  # training samples used
    n_hessian: int = 2000  # the Hessian is of the mean cross-entropy on these (the first of the training set)
    epochs: int = 20
    checkpoints: tuple[int, ...] = (1, 5, 20)  # epochs after which the Hessian is computed
    batch_size: int = 100
    learning_rate: float = 0.1
    mus: tuple[float, float, int] = (1e-4, 1e2, 25)  # log grid of mu: first, last, count
    keep_eigs: int = 240  # eigenvalues stored per spectrum (rank-uniform subsample, ends included)
    seed: int = 0
    # Compile the Hessian programs without LLVM's optimisations (xla_backend_optimization_level 0). QUICK's
    # Hessians (500-1000 parameters, 400 samples) take a tenth of a second to run either way, while compiling
    # them, one program per variant, takes seconds and halves without the optimisations; FULL's Hessians run
    # long enough to want optimised code. The numbers agree to rounding either way.
    fast_compile: bool = False


QUICK = Config(dataset="digits", image_side=4, hidden=(12, 12), n_train=1437, n_hessian=400, epochs=8,
               checkpoints=(1, 8), batch_size=50, learning_rate=0.1, mus=(1e-4, 1e2, 13), fast_compile=True)
FULL = Config()


# --------------------------------------------------------------------------------------------------
# data and models


def load_images(config: Config) -> tuple[np.ndarray, np.ndarray]:
    """Training inputs ``(n, side^2)`` shrunk (antialiased) to ``image_side`` a side, and labels ``(n,)``."""
    ds = data.load(config.dataset, data_dir=config.data_dir)
    x, y = np.asarray(ds.x_train[: config.n_train], np.float32), np.asarray(ds.y_train[: config.n_train])
    side = int(round(np.sqrt(x.shape[1])))
    if side * side != x.shape[1]:
        raise ValueError(f"expected square images, got {x.shape[1]} pixels")
    if side != config.image_side:
        imgs = jnp.asarray(x).reshape(-1, side, side)
        # Linear interpolation with antialiasing averages over each output pixel's footprint when shrinking.
        imgs = jax.image.resize(imgs, (imgs.shape[0], config.image_side, config.image_side), "linear",
                                antialias=True)
        x = np.asarray(imgs).reshape(imgs.shape[0], -1)
    return x, y.astype(np.int32)


def init_variant(variant: str, key, sizes):
    """``(params, model_state)`` of a variant; plain MLPs have ``model_state = ()``."""
    if variant == "plain":
        return mlp.init(key, sizes, init="glorot"), ()
    return norm.init(key, sizes, norm=variant, init="glorot")


def forward(params, model_state, x, *, variant: str):
    """Logits of a variant. Batch norm runs in training mode: statistics of the batch ``x`` itself."""
    if variant == "plain":
        return mlp.apply(params, x, activation="tanh")
    train_mode = variant == "batchnorm"
    logits, _ = norm.apply(params, model_state, x, norm=variant, activation="tanh", train=train_mode)
    return logits


def hessian_loss(params, model_state, x, y, *, variant: str):
    """Mean cross-entropy on ``(x, y)``: the function whose Hessian is taken (``model_state`` held fixed)."""
    return losses.cross_entropy(forward(params, model_state, x, variant=variant), y)


# --------------------------------------------------------------------------------------------------
# analysis of one Hessian


def _subsample(eigs: np.ndarray, keep: int) -> tuple[np.ndarray, np.ndarray]:
    """Ranks and values of ``keep`` rank-uniform eigenvalues (first and last included)."""
    idx = np.unique(np.round(np.linspace(0, eigs.size - 1, min(keep, eigs.size))).astype(int))
    return idx, eigs[idx]


def newton_angles(eigs: np.ndarray, g_eig: np.ndarray, mus: np.ndarray) -> np.ndarray:
    """Angle (degrees) between ``g`` and ``(H + mu I)^-1 g`` per ``mu``, from ``H``'s eigenvalues and ``g`` in
    its eigenbasis: :func:`analysis.critical.gradient_newton_angles` without a second ``O(P^3)``
    eigendecomposition (the test checks the two agree)."""
    shifted = eigs[None, :] + mus[:, None]
    d = g_eig[None, :] / shifted
    u = g_eig / np.linalg.norm(g_eig)
    v = d / np.linalg.norm(d, axis=1, keepdims=True)
    return np.degrees(2 * np.arctan2(np.linalg.norm(u - v, axis=1), np.linalg.norm(u + v, axis=1)))


def analyse(H: np.ndarray, g: np.ndarray, blocks: spectrum.ParamBlocks, mus: np.ndarray, keep: int) -> dict:
    """Spectrum summaries, diagonal dominance and gradient-Newton angles of one Hessian ``(P, P)``."""
    eigs, U = spectrum.eigh(H)
    s = spectrum.summarize(eigs)
    # Sorted by magnitude, largest first, as Vatanen et al. plot them; the stored ranks index that order.
    ranks, values = _subsample(eigs[np.argsort(-np.abs(eigs), kind="stable")], keep)
    angles = newton_angles(eigs, U.T @ g, mus)
    return {
        "P": int(eigs.size),
        "summary": s._asdict(),
        "spread_log10_std": s.log10_std,
        "spread_log10_range": s.log10_range,
        "condition_positive": s.condition,
        "eig_ranks": ranks,
        "eig_values": values,
        "diag_offshare": spectrum.diagonal_dominance(H),
        "block_offshare": spectrum.diagonal_dominance(H, blocks),
        "block_names": list(blocks.names),
        "block_norms": spectrum.block_norms(H, blocks),
        "grad_norm": float(np.linalg.norm(g)),
        "angles": angles,
    }


@functools.cache
def _hessian_fn(variant: str, fast_compile: bool = False):
    """One jitted program per variant: dense Hessian, loss and flat gradient of :func:`hessian_loss`
    (``fast_compile``: see :class:`Config`)."""
    loss_fn = functools.partial(hessian_loss, variant=variant)

    @functools.partial(jax.jit,
                       compiler_options={"xla_backend_optimization_level": 0} if fast_compile else None)
    def run(params, model_state, x, y):
        H = analysis.hessian(loss_fn, params, model_state, x, y)
        loss, g = jax.value_and_grad(loss_fn)(params, model_state, x, y)
        return H, loss, ravel_pytree(g)[0]

    return run


def hessian_at(variant: str, params, model_state, x, y, *, fast_compile: bool = False):
    """Dense Hessian ``(P, P)``, gradient ``(P,)`` and loss in float64 (must run under ``jax.enable_x64``;
    ``fast_compile``: see :class:`Config`)."""
    to64 = functools.partial(jax.tree_util.tree_map, lambda a: np.asarray(a, np.float64))
    params, model_state = to64(params), to64(model_state)
    run = _hessian_fn(variant, fast_compile)
    H, loss, g = run(params, model_state, np.asarray(x, np.float64), np.asarray(y))
    return np.asarray(H), np.asarray(g), float(loss), params


# --------------------------------------------------------------------------------------------------


def run_variant(variant: str, config: Config, x, y) -> dict:
    """Train one variant by SGD, snapshotting ``(params, model_state)`` at the checkpoints, then analyse."""
    sizes = [x.shape[1], *config.hidden, 10]
    key = jax.random.PRNGKey(config.seed)
    params, model_state = init_variant(variant, key, sizes)
    opt = train.make_optimizer("sgd", config.learning_rate)
    state = train.init_state(params, opt, jax.random.fold_in(key, 1), model_state=model_state)
    taken = {}

    def keep(epoch, st):
        if epoch in config.checkpoints:
            taken[epoch] = jax.device_get((st.params, st.model_state))

    tic = time.perf_counter()
    fit = train.fit(state, opt, (x, y), epochs=config.epochs, batch_size=config.batch_size, activation="tanh",
                    norm=None if variant == "plain" else variant, callback=keep, progress=False)
    train_seconds = time.perf_counter() - tic
    xh, yh = x[: config.n_hessian], y[: config.n_hessian]
    mus = np.geomspace(config.mus[0], config.mus[1], int(config.mus[2]))
    out = {"sizes": sizes, "train_error": fit.history["train_error"], "train_loss": fit.history["train_loss"],
           "train_seconds": train_seconds, "checkpoints": {}}
    with jax.enable_x64(True):
        for epoch in sorted(taken):
            tic = time.perf_counter()
            H, g, loss, p64 = hessian_at(variant, *taken[epoch], xh, yh, fast_compile=config.fast_compile)
            blocks = spectrum.param_blocks(p64)
            res = analyse(H, g, blocks, mus, config.keep_eigs)
            res["loss"] = loss
            res["seconds"] = time.perf_counter() - tic
            out["checkpoints"][epoch] = res
    return out


def main(config: Config = QUICK, out_dir=None) -> dict:
    out_dir = out_dir or _common.default_out(config == QUICK)
    x, y = load_images(config)
    runs = {v: run_variant(v, config, x, y) for v in VARIANTS}
    return finish(_common._jsonable(runs), config, out_dir)


def finish(runs: dict, config: Config, out_dir) -> dict:
    """Table, claims and notes from the per-variant results (JSON form: string epoch keys), then save and
    plot. Split from :func:`main` so a saved run can be re-summarised without recomputing the Hessians."""
    mus = np.geomspace(config.mus[0], config.mus[1], int(config.mus[2]))
    epochs = sorted(int(e) for e in runs["plain"]["checkpoints"])

    def at(v, e):
        return runs[v]["checkpoints"][str(e)]

    def per(key, v):
        return [float(at(v, e)[key]) for e in epochs]

    # Angles compared where H + mu I is positive definite for every variant at that checkpoint.
    common_angle = {v: [] for v in VARIANTS}
    for e in epochs:
        lam_min = max(-at(v, e)["summary"]["lambda_min"] for v in VARIANTS)
        ok = mus > lam_min
        for v in VARIANTS:
            a = np.asarray([float(z) for z in at(v, e)["angles"]])
            common_angle[v].append(float(np.mean(a[ok])) if ok.any() else float("nan"))
    table = {v: {"P": at(v, epochs[-1])["P"],
                 "spread_log10_std": per("spread_log10_std", v),
                 "condition_positive": per("condition_positive", v),
                 "diag_offshare": per("diag_offshare", v),
                 "block_offshare": per("block_offshare", v),
                 "mean_angle_pd": common_angle[v],
                 "n_negative": [at(v, e)["summary"]["n_negative"] for e in epochs],
                 "train_error_end": runs[v]["train_error"][-1]} for v in VARIANTS}

    def lower(key, v, ref="plain"):
        a, b = np.asarray(table[v][key], float), np.asarray(table[ref][key], float)
        return bool(np.all(a < b))

    claims = []
    for v in ("transform", "batchnorm"):
        claims.append(_common.claim(
            f"curvature is much more even with {v} than plain: smaller spread (std of log10|lambda|) at "
            f"every checkpoint (epochs {', '.join(map(str, epochs))}); the condition number of the positive "
            "part is reported alongside (see the notes)",
            {"spread plain": table["plain"]["spread_log10_std"], f"spread {v}": table[v]["spread_log10_std"],
             "condition plain": table["plain"]["condition_positive"],
             f"condition {v}": table[v]["condition_positive"]},
            lower("spread_log10_std", v)))
    for v in ("transform", "batchnorm"):
        claims.append(_common.claim(
            f"the Hessian is closer to diagonal with {v} than plain: smaller off-diagonal share of ||H||_F "
            "(element-wise), at every checkpoint",
            {"plain": table["plain"]["diag_offshare"], v: table[v]["diag_offshare"],
             "per-block share: plain": table["plain"]["block_offshare"], f"per-block share: {v}":
                 table[v]["block_offshare"]},
            lower("diag_offshare", v)))
    for v in ("transform", "batchnorm"):
        claims.append(_common.claim(
            f"gradient descent is closer to Newton with {v}: smaller angle between g and (H + mu I)^-1 g "
            "(mean over the mu grid where H + mu I is positive definite for every variant), at every "
            "checkpoint",
            {"plain (degrees)": table["plain"]["mean_angle_pd"], f"{v} (degrees)": table[v]["mean_angle_pd"]},
            lower("mean_angle_pd", v)))

    sizes = runs["plain"]["sizes"]
    cond = [c for v in VARIANTS for c in table[v]["condition_positive"]]
    bound = 1 / spectrum.DEFAULT_RTOL
    cond_note = (
        f" The condition numbers ({min(cond):.2g} to {max(cond):.2g}) sit near 1/rtol = {bound:.0g}: the "
        "eigenvalues trail off continuously to zero, so the smallest one counted positive is set by the zero "
        "tolerance and the condition number says little; the spread is the informative measure."
        if min(cond) > 0.1 * bound else "")
    notes = (
        f"{config.dataset} images shrunk to {config.image_side}x{config.image_side} (jax.image.resize, "
        "linear with antialiasing; Fashion-MNIST stands in for MNIST, which is not available here), tanh MLP "
        f"{sizes}, {config.n_train} training samples, SGD lr {config.learning_rate:g}, batch "
        f"{config.batch_size}. The Hessian is of the mean cross-entropy on the first {config.n_hessian} "
        "training samples, in float64. Batch norm's loss is in full-batch training mode (mean and variance "
        "of those samples; its scale invariance gives exact zero eigenvalues, which the zero tolerance "
        "leaves out of spread and condition). The transformed network's Hessian is in its own parameters "
        "(W, b, shortcuts C) with the slopes and offsets held fixed, so it has "
        f"{table['transform']['P']} parameters against {table['plain']['P']} (plain) and "
        f"{table['batchnorm']['P']} (batch norm). Spread = std of log10|lambda| over eigenvalues with "
        "|lambda| > 1e-6 max|lambda|; condition = lambda_max / the smallest eigenvalue above that "
        "tolerance. Angles are averaged over the mu values above every variant's -lambda_min." + cond_note
    )
    results = {"mus": mus, "epochs": epochs, "table": table, "runs": runs}
    payload = _common.save_results(NAME, config, results, claims, out_dir, notes=notes)
    plot(payload, out_dir)
    return payload


# --------------------------------------------------------------------------------------------------

_COLORS = {"plain": "C0", "transform": "C2", "batchnorm": "C3"}


def plot(payload: dict, out_dir) -> None:
    plt = _common.style()
    r = payload["results"]
    epochs = r["epochs"]
    runs = r["runs"]
    mus = np.asarray(r["mus"])
    n = len(epochs)

    fig = plt.figure(figsize=(max(5 * n, 18), 9.5), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.15, 1])
    axes = np.atleast_1d(top.subplots(1, n, sharey=True))
    for ax, e in zip(axes, epochs, strict=True):
        for v in VARIANTS:
            c = runs[v]["checkpoints"][str(e)]
            rank = np.asarray(c["eig_ranks"], float) / max(c["P"] - 1, 1)
            vals = np.asarray(c["eig_values"], float)
            mag = np.log10(np.maximum(np.abs(vals), 1e-300))
            neg = vals < 0
            ax.plot(rank, mag, "-", color=_COLORS[v], lw=1.2,
                    label=f"{v} (P = {c['P']}, spread {c['spread_log10_std']:.2f})")
            ax.plot(rank[neg], mag[neg], "v", ms=3, color=_COLORS[v], mfc="none")
        ax.set(title=f"after epoch {e}", xlabel="rank by |$\\lambda$| (fraction of P)", ylim=(-12, None))
        ax.legend(fontsize=8, loc="lower left")
    axes[0].set_ylabel("log$_{10}$ |$\\lambda$|  (triangles: $\\lambda$ < 0)")
    top.suptitle("Hessian eigenvalues sorted by magnitude (Vatanen et al. 2013), float64, "
                 f"{payload['config']['n_hessian']} training samples")
    t = r["table"]
    axes = bottom.subplots(1, 4)
    for ax, key, title, log in ((axes[0], "spread_log10_std", "spread: std of log$_{10}|\\lambda|$", False),
                                (axes[1], "condition_positive", "condition number, positive part", True),
                                (axes[2], "diag_offshare", "off-diagonal share of $\\|H\\|_F$", False),
                                (axes[3], "mean_angle_pd", "mean angle g vs $(H + \\mu I)^{-1}g$", False)):
        for v in VARIANTS:
            ax.plot(epochs, np.asarray(t[v][key], float), "o-", color=_COLORS[v], label=v)
        ax.set(title=title, xlabel="epoch", xscale="log", xticks=epochs, xticklabels=[str(e) for e in epochs])
        ax.minorticks_off()
        if log:
            ax.set_yscale("log")
        ax.legend(fontsize=8)
    bottom.suptitle("Summaries per variant over training "
                    "(lower = more even / more diagonal / closer to Newton)")
    _common.savefig(fig, out_dir, NAME)

    fig = plt.figure(figsize=(max(5 * n, 17), 10), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1, 1.1])
    axes = np.atleast_1d(top.subplots(1, n, sharey=True))
    for ax, e in zip(axes, epochs, strict=True):
        for v in VARIANTS:
            c = runs[v]["checkpoints"][str(e)]
            a = np.asarray([float(z) for z in c["angles"]])
            pd = mus > -c["summary"]["lambda_min"]
            ax.plot(mus[pd], a[pd], "o-", ms=3, color=_COLORS[v], label=v)
            ax.plot(mus[~pd], a[~pd], "x:", ms=4, color=_COLORS[v], alpha=0.7)
        ax.set(xscale="log", title=f"after epoch {e}", xlabel="$\\mu$", ylim=(0, 180))
        ax.legend(fontsize=8)
    axes[0].set_ylabel("angle (degrees)")
    top.suptitle("Angle between g and the second-order update $(H + \\mu I)^{-1} g$: smaller = SGD closer to "
                 "Newton (dotted x: $H + \\mu I$ not positive definite)")
    e = str(epochs[-1])
    axes = bottom.subplots(1, 3)
    for ax, v in zip(axes, VARIANTS, strict=True):
        c = runs[v]["checkpoints"][e]
        N = np.asarray(c["block_norms"], float)
        im = ax.imshow(np.log10(np.maximum(N, 1e-12)), cmap="viridis")
        names = [b.replace("'", "") for b in c["block_names"]]
        ax.set(xticks=range(len(names)), yticks=range(len(names)),
               title=f"{v}: off-diagonal share {c['diag_offshare']:.3f}, per block {c['block_offshare']:.3f}")
        ax.set_xticklabels(names, rotation=90, fontsize=7)
        ax.set_yticklabels(names, fontsize=7)
        ax.grid(False)
        fig.colorbar(im, ax=ax, shrink=0.8, label="log$_{10}$ $\\|H_{ab}\\|_F$")
    bottom.suptitle(f"Hessian block norms (per parameter array) after epoch {e}")
    _common.savefig(fig, out_dir, f"{NAME}_angles")


if __name__ == "__main__":
    raise SystemExit(_common.module_cli(sys.modules[__name__]))
