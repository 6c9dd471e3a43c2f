"""Loss landscape of the example network: the line from initialisation, filter-normalised planes, plain and BN.

An extension of the lecture's "Eigenvalues of the Hessian (LeCun et al., 1998)" and Vatanen et al.'s "Analysis of
eigenvalues of Hessian", with :mod:`analysis.landscape`: the 784-225-144-10 relu net on Fashion-MNIST without and
with batch norm, along the line from initialisation to the solution [Goodfellow et al. 2015] and on planes through
the solution along filter-normalised Gaussian directions [Li et al. 2018].
"""

from dataclasses import dataclass

import jax
import numpy as np

from analysis import landscape as ls
from analysis import plots
from experiments import _common
from fflab import classifier, data, train

NAME = "landscape"
DESCRIPTION = "1-D interpolation from init to solution and 2-D filter-normalised loss slices, plain and BN"
SLIDE = ("extension, not in the lecture (nearest: 'Eigenvalues of the Hessian (LeCun et al., 1998)' and "
         "'Why does it work? (Vatanen et al., 2013)': analysis of eigenvalues of Hessian)")
PAPERS = {"Goodfellow, Vinyals & Saxe 2015": "https://arxiv.org/abs/1412.6544",
          "Li, Xu, Taylor, Studer & Goldstein 2018": "https://arxiv.org/abs/1712.09913",
          "Keskar, Mudigere, Nocedal, Smelyanskiy & Tang 2017": "https://arxiv.org/abs/1609.04836",
          "Ioffe & Szegedy 2015": "https://arxiv.org/abs/1502.03167"}

NETS = {"plain": None, "bn": "batchnorm"}  # net -> the preset's norm
LABELS, COLORS = {"plain": "plain", "bn": "batch norm"}, {"plain": "C0", "bn": "C3"}


@dataclass(frozen=True)
class Config:
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    hidden: tuple[int, ...] = (225, 144)
    activation: str = "relu"
    learning_rate: float = 0.05  # SGD with momentum 0.9, as in spectral_density
    batch_size: int = 128
    epochs: int = 5
    eval_samples: int = 2000  # fixed training and test subsets (QUICK: both of one shape, one compile)
    line_points: int = 36  # alpha in [-0.25, 1.5]: 7k + 1 points put alpha = 0 and 1 on the grid
    grid: int = 21  # points per axis of the plane, a and b in [-1, 1] (filter-normalised units)
    planes: int = 3  # random planes per network: sharpness from one plane is one draw
    radius: float = 0.5  # "sharpness": mean loss rise on the grid points at this distance from the centre
    seed: int = 0


QUICK = Config(dataset="digits", hidden=(16,), batch_size=64, epochs=8, eval_samples=360, line_points=22, grid=11)
FULL = Config()


def evaluate(config: Config, ds: data.Dataset, net: str, key) -> dict:
    """Train one network; the line from its initialisation, random planes through its solution."""
    model = classifier(config.activation, NETS[net])
    key_init, key_data = jax.random.split(jax.random.key(config.seed))
    opt = train.make_optimizer("momentum", config.learning_rate, momentum=0.9)
    p0, s0 = model.init(key_init, [ds.x_train.shape[1], *config.hidden, ds.num_classes])  # glorot_relu init
    fit = train.fit(train.init_state(p0, opt, key_data, model_state=s0), opt, (ds.x_train, ds.y_train),
                    loss_fn=model.loss_fn, metrics_fn=model.metrics_fn, epochs=config.epochs,
                    batch_size=config.batch_size, test=(ds.x_test, ds.y_test), progress=False)
    p1, s1, n = fit.state.params, fit.state.model_state, config.eval_samples
    sets = {"train": _common.subset(ds.x_train, ds.y_train, n, config.seed), "test": (ds.x_test[:n], ds.y_test[:n])}
    # BN: the line in training mode (running averages exist only at the trained end), the planes in eval mode
    line_loss, plane_loss, state = ((train.freeze(model.loss_fn), train.freeze(model.eval_loss_fn), (s1,))
                                    if model.stateful else (model.loss_fn, model.loss_fn, ()))
    line, planes = {}, []
    for name, (x, y) in sets.items():
        alphas, losses = ls.interpolate(line_loss, p0, p1, *state, x, y, num=config.line_points, extend=(0.25, 0.5),
                                        batch_size=4)
        line[name], line["alphas"] = np.asarray(losses, np.float64), np.asarray(alphas, np.float64)
        line[f"{name}_end_points"] = [float(line_loss(p, *state, x, y)) for p in (p0, p1)]
    x, y = sets["train"]
    for j in range(config.planes):  # plane 0 from `key` itself, the others from keys folded from it
        d1, d2 = ls.random_directions(jax.random.fold_in(key, j) if j else key, p1)  # filter-normalised
        X, _, Z = ls.slice_2d(plane_loss, p1, d1, d2, *state, x, y, num=config.grid, batch_size=8)  # [-1, 1]^2
        planes.append(np.asarray(Z, np.float64))
    stats = [plane_stats(np.asarray(X[0], np.float64), Z, config.radius) for Z in planes]
    seg = line["train"][(line["alphas"] >= -1e-9) & (line["alphas"] <= 1 + 1e-9)]  # alpha in [0, 1]
    return {"test_error": fit.history["test_error"][-1], "line": line, "ticks": np.asarray(X[0], np.float64),
            "planes": planes, **{k: [s[k] for s in stats] for k in stats[0]},
            "bump": float(max(np.max(np.diff(seg)), 0.0) / (seg[0] - seg[-1]))}


def plane_stats(ticks: np.ndarray, Z: np.ndarray, radius: float) -> dict:
    """The centre's relative gap below all other points, the mean rise at ``radius``, min / max 2-D curvature within."""
    h, c = float(ticks[1] - ticks[0]), ticks.size // 2
    dist = np.hypot(*np.meshgrid(ticks, ticks, indexing="xy"))
    zxx = (Z[1:-1, 2:] - 2 * Z[1:-1, 1:-1] + Z[1:-1, :-2]) / h**2
    zyy = (Z[2:, 1:-1] - 2 * Z[1:-1, 1:-1] + Z[:-2, 1:-1]) / h**2
    zxy = (Z[2:, 2:] - Z[2:, :-2] - Z[:-2, 2:] + Z[:-2, :-2]) / (4 * h * h)
    mean, spread = 0.5 * (zxx + zyy), np.sqrt(0.25 * (zxx - zyy) ** 2 + zxy**2)
    inner = dist[1:-1, 1:-1] <= radius + 1e-12
    return {"centre_gap": float((np.min(np.delete(Z.ravel(), c * ticks.size + c)) - Z[c, c]) / abs(Z[c, c])),
            "rise_at_radius": float(np.mean(Z[np.abs(dist - radius) <= h / 2 + 1e-12]) - Z[c, c]),
            "curvature_ratio": float(np.min((mean - spread)[inner]) / np.max((mean + spread)[inner]))}


def make_claims(config: Config, per: dict) -> list[dict]:
    """The papers' claims, decided from the named results of both networks."""
    bumps = {net: r["bump"] for net, r in per.items()}
    rise = {net: float(np.mean(r["rise_at_radius"])) for net, r in per.items()}
    error = {net: r["test_error"] for net, r in per.items()}
    flatter, better = min(rise, key=rise.get), min(error, key=error.get)
    gap = min(abs(d["plain"] - d["bn"]) / max(d.values()) for d in (rise, error))  # either gap closing flips it
    return [_common.claim(text, measured, holds, margin=margin) for text, measured, (holds, margin) in [
        ("the training loss falls monotonically on the straight line from initialisation to the solution (Goodfellow "
         "et al. 2015): no rise between consecutive alpha in [0, 1] above 1% of the total drop",
         bumps, _common.below(max(bumps.values()), 0.01)),
        (f"each filter-normalised slice through the solution ({config.planes} random planes per network) is a convex "
         "bowl with its bottom at the solution (Li et al. 2018): every other grid point is higher, and within radius "
         f"{config.radius:g} the 2-D Hessian's smallest over largest eigenvalue is positive",
         {net: {k: r[k] for k in ("centre_gap", "curvature_ratio")} for net, r in per.items()},
         _common.both(*(_common.above(v, 0) for r in per.values() for v in r["centre_gap"] + r["curvature_ratio"]))),
        ("with filter normalisation the flatter network generalises better (Li et al. 2018; Keskar et al. 2017): "
         f"the lower mean loss rise at radius {config.radius:g} over {config.planes} planes goes with the lower "
         "test error", {"rise": rise, "test error %": error}, (flatter == better, gap if flatter == better else -gap)),
    ]]


def main(config: Config, out_dir) -> dict:
    ds = data.load(config.dataset, data_dir=config.data_dir)
    per = {net: evaluate(config, ds, net, jax.random.fold_in(jax.random.key(config.seed + 7), i))
           for i, net in enumerate(NETS)}
    notes = (
        f"Ours: {config.dataset} (for MNIST), {list(config.hidden)} relu units, {config.epochs} epochs of SGD with "
        f"momentum, plain against batch norm; losses on {config.eval_samples} fixed training and test images; "
        f"{config.planes} planes of {config.grid}^2 points per net. Goodfellow et al. interpolated fully trained MNIST "
        "and CIFAR-10 nets; Li et al. compare CIFAR-10 ResNets and VGG nets trained with small and large batches, one "
        "plane each. Our nets differ by batch norm, with close test errors. The titles give each plane's rise and the "
        "centre's gap to the lowest other grid point (negative: a nearby point lies lower): verdicts move with the "
        "plane drawn. In eval mode BN's weights are not scale-free: filter normalisation does not make the slices "
        "fully comparable."
    )
    return _common.save(NAME, config, {"nets": per}, make_claims(config, per), out_dir, notes=notes, plot=plot)


def plot(payload: dict, out_dir) -> None:
    plt, per = _common.style(), payload["results"]["nets"]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for net, r in per.items():
        for name, ls_ in (("train", "-"), ("test", "--")):
            plots.line(r["line"]["alphas"], r["line"][name], ax=ax, log=True, color=COLORS[net], ls=ls_,
                       label=f"{LABELS[net]}, {name} subset")
    ax.set(ylabel="cross-entropy", title="straight line from initialisation ($\\alpha$ = 0) to the solution (1)")
    ax.legend(fontsize=7.5)
    _common.savefig(fig, out_dir, NAME)

    fig, axes = plt.subplots(1, 2, figsize=(12, 5), layout="constrained")
    zs = {net: np.asarray(r["planes"][0]) for net, r in per.items()}
    levels = np.geomspace(min(map(np.min, zs.values())), max(map(np.max, zs.values())), 25)  # shared by both
    for ax, (net, r) in zip(axes, per.items(), strict=True):
        plots.plane(*np.meshgrid(r["ticks"], r["ticks"]), zs[net], ax=ax, levels=levels, label="training cross-entropy")
        rise = ", ".join(map("{:.3g}".format, r["rise_at_radius"]))
        gap = ", ".join(map("{:+.2%}".format, r["centre_gap"]))
        ax.set_title(f"{LABELS[net]}: test error {r['test_error']:.2f}%, plane 1 of {len(r['planes'])}\nper plane: "
                     f"rise at r = {payload['config']['radius']:g}: {rise}\ngap, centre to lowest other point: {gap}")
        ax.legend(fontsize=7.5, loc="upper right")
    _common.savefig(fig, out_dir, f"{NAME}_2d")


if __name__ == "__main__":
    raise SystemExit(_common.module_cli(__name__))
