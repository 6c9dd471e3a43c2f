"""Loss landscape of the example network: 1-D line from initialisation, 2-D filter-normalised slices.

The 784-225-144-10 relu network on Fashion-MNIST, trained for a few epochs without and with batch norm
(the same training as :mod:`experiments.spectral_density`). Two views of each loss surface:

- the straight line ``(1 - alpha) theta_init + alpha theta_trained`` [Goodfellow, Vinyals & Saxe 2015],
  ``alpha`` past both ends, on fixed subsets of the training and test images
  (:func:`analysis.landscape.interpolate`);
- the plane ``theta_trained + a d1 + b d2`` through the solution along two Gaussian directions with filter
  normalisation [Li, Xu, Taylor, Studer & Goldstein 2018] (:func:`analysis.landscape.random_directions`,
  :func:`analysis.landscape.slice_2d`): every column of every weight matrix of ``d`` is rescaled to the
  norm of the same column of ``theta_trained``, and biases, BN gains and shifts are not moved. This removes
  the scale invariance (BN makes each hidden layer's ``W`` scale-free) that makes unnormalised plots of
  different networks incomparable.

Which loss for BN: on the line, training-mode normalisation with the statistics of the evaluation subset
itself (no running-average update), because the running averages belong to the trained end only; the
eval-mode loss with the trained running averages is drawn too, for reference. On the plane, eval mode
with the trained running averages: that is the network as deployed.

References:
    Goodfellow, Vinyals & Saxe (2015), Qualitatively characterizing neural network optimization problems.
    Li, Xu, Taylor, Studer & Goldstein (2018), Visualizing the loss landscape of neural nets. NeurIPS.
    Keskar, Mudigere, Nocedal, Smelyanskiy & Tang (2017), On large-batch training for deep learning:
    generalization gap and sharp minima.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from analysis import landscape as ls
from experiments import _common
from fflab import classifier, data, train

NAME = "landscape"
DESCRIPTION = "1-D interpolation from init to solution and 2-D filter-normalised loss slices, plain and BN"
SLIDE = "Why does BN work? (part 3): the loss surface along lines and planes (Goodfellow 2015; Li 2018)"

NETS = {"plain": None, "bn": "batchnorm"}  # net -> the preset's norm


@dataclass(frozen=True)
class Config:
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    hidden: tuple[int, ...] = (225, 144)
    activation: str = "relu"
    init: str = "glorot_relu"
    learning_rate: float = 0.05  # SGD with momentum, as in spectral_density
    momentum: float = 0.9
    batch_size: int = 128
    epochs: int = 5
    eval_samples: int = 2000  # fixed training and test subsets the losses are evaluated on
    line_points: int = 36  # 7k + 1 points put alpha = 0 and 1 on the grid of [-0.25, 1.5]
    extend: tuple[float, float] = (0.25, 0.5)  # alpha runs over [-0.25, 1.5]
    grid: int = 21  # points per axis of the plane
    span: float = 1.0  # a, b in [-span, span] (filter-normalised units)
    radius: float = 0.5  # "sharpness": mean loss rise on the grid points at this distance from the centre
    seed: int = 0


# Compilation dominates QUICK. eval_samples = 360, the size of the digits test set: the training and test
# subsets then have one shape, so each line loss compiles once rather than once per subset; one hidden
# layer means fewer parameter shapes to initialise and draw directions for.
QUICK = Config(dataset="digits", hidden=(16,), batch_size=64, epochs=8, eval_samples=360,
               line_points=22, grid=11)
FULL = Config()


def evaluate_landscape(config: Config, ds: data.Dataset, net: str, key) -> dict:
    """Train one network and evaluate its line and plane."""
    model = classifier(config.activation, NETS[net])
    key_init, key_data = jax.random.split(jax.random.key(config.seed))
    opt = train.make_optimizer("momentum", config.learning_rate, momentum=config.momentum)
    p0, s0 = model.init(key_init, [ds.x_train.shape[1], *config.hidden, ds.num_classes], init=config.init)
    fit = train.fit(train.init_state(p0, opt, key_data, model_state=s0), opt, (ds.x_train, ds.y_train),
                    loss_fn=model.loss_fn, metrics_fn=model.metrics_fn, epochs=config.epochs,
                    batch_size=config.batch_size, test=(ds.x_test, ds.y_test), progress=False)
    p1, s1, hist = fit.state.params, fit.state.model_state, fit.history
    xtr, ytr = _common.subset(ds.x_train, ds.y_train, min(config.eval_samples, ds.x_train.shape[0]), config.seed)
    n_test = min(config.eval_samples, ds.x_test.shape[0])
    xte, yte = ds.x_test[:n_test], ds.y_test[:n_test]
    sets = {"train": (jnp.asarray(xtr, jnp.float32), jnp.asarray(ytr)),
            "test": (jnp.asarray(xte, jnp.float32), jnp.asarray(yte))}
    out = {"test_error": float(hist["test_error"][-1]), "train_loss_full": float(hist["train_loss"][-1])}
    if net == "plain":
        line_loss = plane_loss = model.loss_fn
        state = ()
    else:  # the state (running averages) is a data argument; the loss in training mode ignores it
        line_loss, plane_loss, state = train.freeze(model.loss_fn), train.freeze(model.eval_loss_fn), (s1,)
    line = {}
    for name, (x, y) in sets.items():
        alphas, losses = ls.interpolate(line_loss, p0, p1, *state, x, y, num=config.line_points,
                                        extend=config.extend, batch_size=4)
        line[name] = np.asarray(losses, np.float64)
        line[f"{name}_end_points"] = [float(line_loss(p0, *state, x, y)), float(line_loss(p1, *state, x, y))]
        if net == "bn":
            _, eval_losses = ls.interpolate(plane_loss, p0, p1, *state, x, y, num=config.line_points,
                                            extend=config.extend, batch_size=4)
            line[f"{name}_eval_mode"] = np.asarray(eval_losses, np.float64)
    line["alphas"] = np.asarray(alphas, np.float64)
    d1, d2 = ls.random_directions(key, p1, 2, normalize="filter", biases="zero")
    x, y = sets["train"]
    X, Y, Z = ls.slice_2d(plane_loss, p1, d1, d2, *state, x, y, span=(-config.span, config.span),
                          num=config.grid, batch_size=8)
    Z = np.asarray(Z, np.float64)
    centre = float(plane_loss(p1, *state, x, y))
    out.update({"line": line, "plane": {"ticks": np.asarray(X[0], np.float64), "loss": Z, "centre": centre},
                **plane_stats(np.asarray(X[0], np.float64), Z, config.radius)})
    return out


def plane_stats(ticks: np.ndarray, Z: np.ndarray, radius: float) -> dict:
    """Where the grid minimum is, how much the loss rises at ``radius``, and where the slice is not convex.

    Convexity at an interior grid point: the 2 x 2 finite-difference Hessian of the loss (central
    differences, spacing ``h``) is positive semi-definite.
    """
    n = ticks.size
    h = float(ticks[1] - ticks[0])
    c = n // 2
    i_min = np.unravel_index(np.argmin(Z), Z.shape)
    A, B = np.meshgrid(ticks, ticks, indexing="xy")
    dist = np.hypot(A, B)
    ring = np.abs(dist - radius) <= h / 2 + 1e-12
    zxx = (Z[1:-1, 2:] - 2 * Z[1:-1, 1:-1] + Z[1:-1, :-2]) / h**2
    zyy = (Z[2:, 1:-1] - 2 * Z[1:-1, 1:-1] + Z[:-2, 1:-1]) / h**2
    zxy = (Z[2:, 2:] - Z[2:, :-2] - Z[:-2, 2:] + Z[:-2, :-2]) / (4 * h * h)
    lam_min = 0.5 * (zxx + zyy) - np.sqrt(0.25 * (zxx - zyy) ** 2 + zxy**2)
    inner = dist[1:-1, 1:-1] <= radius + 1e-12
    return {
        "grid_min_at": [float(A[i_min]), float(B[i_min])],
        "centre_is_min": bool(i_min == (c, c)),
        "rise_at_radius": float(np.mean(Z[ring]) - Z[c, c]),
        "nonconvex_fraction": float(np.mean(lam_min < 0)),
        "nonconvex_fraction_inner": float(np.mean(lam_min[inner] < 0)),
    }


def main(config: Config = QUICK, out_dir=None) -> dict:
    out_dir = out_dir or _common.default_out(config == QUICK)
    ds = data.load(config.dataset, data_dir=config.data_dir)
    key = jax.random.key(config.seed + 7)
    per = {net: evaluate_landscape(config, ds, net, jax.random.fold_in(key, i)) for i, net in enumerate(NETS)}

    def bump(r):
        """Largest rise of the training loss between consecutive points with alpha in [0, 1], relative to
        the total drop from alpha = 0 to 1."""
        a, loss = r["line"]["alphas"], r["line"]["train"]
        inside = (a >= -1e-9) & (a <= 1 + 1e-9)
        seg = loss[inside]
        return float(max(np.max(np.diff(seg)), 0.0) / (seg[0] - seg[-1]))

    bumps = {net: bump(r) for net, r in per.items()}
    flatter = min(NETS, key=lambda n: per[n]["rise_at_radius"])
    better = min(NETS, key=lambda n: per[n]["test_error"])
    claims = [
        _common.claim(
            "the training loss falls monotonically along the straight line from initialisation to the "
            "solution (Goodfellow et al. 2015): no rise between consecutive alpha in [0, 1] above 1% of the "
            "total drop",
            bumps, all(b <= 0.01 for b in bumps.values()),
        ),
        _common.claim(
            "the solution is the lowest point of its filter-normalised 2-D slice (plain and BN)",
            {net: r["grid_min_at"] for net, r in per.items()}, all(r["centre_is_min"] for r in per.values()),
        ),
        _common.claim(
            f"the slice is convex near the solution: within radius {config.radius:g} no grid point has a "
            "negative eigenvalue of the finite-difference 2-D Hessian",
            {net: r["nonconvex_fraction_inner"] for net, r in per.items()},
            all(r["nonconvex_fraction_inner"] == 0 for r in per.values()),
        ),
        _common.claim(
            "with filter normalisation, the flatter slice belongs to the network that generalises better "
            f"(Li et al. 2018): loss rise at radius {config.radius:g} against test error",
            {net: {"rise": r["rise_at_radius"], "test error %": r["test_error"]} for net, r in per.items()},
            flatter == better,
        ),
    ]
    results = {"nets": per, "bumps": bumps}
    notes = notes_text(config, per)
    payload = _common.save(NAME, config, results, claims, out_dir, notes=notes)
    plot(payload, out_dir)
    return payload


def notes_text(config: Config, per: dict) -> str:
    notes = (
        f"Data: {config.dataset} (Fashion-MNIST stands in for MNIST). Networks: {list(config.hidden)} hidden "
        f"relu units, trained {config.epochs} epochs by SGD with momentum {config.momentum:g} at lr "
        f"{config.learning_rate:g} (fflab.classifier presets). Losses on fixed subsets of "
        f"{config.eval_samples} training and test images. BN: the line uses training-mode normalisation with "
        "the statistics of the evaluation subset (the running averages exist only at the trained end; the "
        "eval-mode loss with them is drawn dotted); the plane uses eval mode with the trained running "
        "averages. Directions: Gaussian, filter-normalised to the trained weights' columns, biases and BN "
        f"gamma/beta not moved; grid {config.grid} x {config.grid} over "
        f"[-{config.span:g}, {config.span:g}]^2. "
        "'Rise at radius' is the mean loss on the grid points at that distance from the centre minus the "
        "centre's loss; convexity is judged by central differences on the grid."
    )
    flatter = min(NETS, key=lambda n: per[n]["rise_at_radius"])
    better = min(NETS, key=lambda n: per[n]["test_error"])
    if flatter != better:
        p, b = per["plain"], per["bn"]
        notes += (
            f" Li et al.'s ordering does not hold here: the {_LABELS[flatter]} slice is the flatter one "
            f"(rise {per[flatter]['rise_at_radius']:.3g} against {per[better]['rise_at_radius']:.3g}), yet "
            f"the {_LABELS[better]} network has the lower test error ({p['test_error']:.2f}% plain, "
            f"{b['test_error']:.2f}% BN). The two errors are close after a few epochs, one random plane per "
            "network is a noisy measure of sharpness, and in eval mode the BN network's weights are no "
            "longer scale-free, so filter normalisation does not make the two slices fully comparable."
        )
    return notes


_LABELS = {"plain": "plain", "bn": "batch norm"}
_COLORS = {"plain": "C0", "bn": "C3"}


def plot(payload: dict, out_dir) -> None:
    plt = _common.style()
    from matplotlib.colors import LogNorm

    per = payload["results"]["nets"]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for net, r in per.items():
        line = r["line"]
        a = np.asarray(line["alphas"])
        ax.semilogy(a, line["train"], color=_COLORS[net], label=f"{_LABELS[net]}, train subset")
        ax.semilogy(a, line["test"], color=_COLORS[net], ls="--", label=f"{_LABELS[net]}, test subset")
        if "train_eval_mode" in line:
            ax.semilogy(a, line["train_eval_mode"], color=_COLORS[net], ls=":", lw=1.2,
                        label=f"{_LABELS[net]}, train, eval mode (trained running stats)")
    for x in (0, 1):
        ax.axvline(x, color="k", lw=0.8, ls=":")
    ax.set(xlabel="$\\alpha$: $(1 - \\alpha)\\,\\theta_{init} + \\alpha\\,\\theta_{trained}$",
           ylabel="cross-entropy",
           title="straight line from initialisation ($\\alpha$ = 0) to the solution (1)")
    ax.legend(fontsize=7.5)
    _common.savefig(fig, out_dir, NAME)

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), layout="constrained")
    zs = [np.asarray(r["plane"]["loss"]) for r in per.values()]
    lo = min(z.min() for z in zs)
    hi = max(z.max() for z in zs)
    levels = np.geomspace(lo * 1.001, hi, 25)
    for ax, (net, r), z in zip(axes[:2], per.items(), zs, strict=True):
        t = np.asarray(r["plane"]["ticks"])
        cs = ax.contourf(t, t, z, levels=levels, norm=LogNorm(), cmap="viridis")
        ax.contour(t, t, z, levels=levels[::3], colors="w", linewidths=0.5)
        ax.plot(0, 0, "*", color="r", ms=12, label="trained solution")
        ax.plot(*r["grid_min_at"], "x", color="w", ms=8, label="grid minimum")
        ax.set(aspect="equal", xlabel="$a$ (filter-normalised direction 1)", ylabel="$b$ (direction 2)",
               title=f"{_LABELS[net]}: test error {r['test_error']:.1f}%")
        ax.legend(fontsize=7.5, loc="upper right")
    cb = fig.colorbar(cs, ax=axes[:2], label="training cross-entropy", shrink=0.9)
    ticks = [v for v in 10.0 ** np.arange(np.floor(np.log10(lo)), np.ceil(np.log10(hi)) + 1) if lo <= v <= hi]
    cb.set_ticks(ticks, labels=[f"{v:g}" for v in ticks])
    cb.minorticks_off()
    ax = axes[2]
    for net, r in per.items():
        t = np.asarray(r["plane"]["ticks"])
        z = np.asarray(r["plane"]["loss"])
        c = t.size // 2
        ax.semilogy(t, z[c, :], color=_COLORS[net], label=f"{_LABELS[net]}, along $a$")
        ax.semilogy(t, z[:, c], color=_COLORS[net], ls="--", label=f"{_LABELS[net]}, along $b$")
    ax.set(xlabel="distance along the direction (filter-normalised units)",
           title="training cross-entropy through the solution")
    ax.legend(fontsize=8)
    _common.savefig(fig, out_dir, f"{NAME}_2d")


if __name__ == "__main__":
    sys.exit(_common.module_cli(sys.modules[__name__]))
