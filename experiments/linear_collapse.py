"""A deep MLP with identity activations is one affine map (lecture: "On activation functions").

The slide's ``W' = W2 W1`` (``W``: ``(n_out, n_in)``) is ``W' = W1 @ W2 @ ... @ WL`` in fflab's ``x @ W + b``; both are
checked against :func:`fflab.mlp.apply`. However deep, the identity net draws a straight boundary: on classes that
no line separates (circles, XOR) it cannot beat the best line, while the same net with relu fits the data.
"""

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from experiments import _common
from fflab import classifier, mlp, options, train

NAME = "linear_collapse"
DESCRIPTION = "Identity activations collapse a deep MLP to one affine map that cannot fit circles or XOR"
SLIDE = "On activation functions: identity would give h2 = W'x + b'"
PAPERS = {}

DATASETS = ("circles", "xor", "moons")
FITS, FITS_NOT = 0.97, 0.8  # train accuracy above which a net fits the data, below which it does not


@dataclass(frozen=True)
class Config:
    datasets: tuple = ("circles", "xor")
    n: int = 1000
    noise: float = 0.08
    hidden: tuple = (32, 32, 32)
    epochs: int = 100
    batch_size: int = 20
    learning_rate: float = 0.01  # Adam with a cosine schedule
    grid: int = 80
    seed: int = 0


QUICK, FULL = Config(n=400, epochs=40, batch_size=10, grid=50), Config()


def make_dataset(name: str, n: int, *, noise: float = 0.08, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two classes of ``n // 2`` points: ``circles`` (radii 1 and 0.5, jitter ``noise``), ``xor`` (sign of ``x1 x2``,
    ``noise`` from the axes) or ``moons`` (half circles, jitter ``noise``; a line nearly separates them)."""
    options.check("data set", name, DATASETS)
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    if name == "xor":
        pos, neg = np.empty((0, 2)), np.empty((0, 2))
        while len(pos) < n // 2 or len(neg) < n - n // 2:  # rejection sampling: a margin around the axes
            cand = rng.uniform(-1, 1, size=(2 * n, 2))
            cand = cand[np.all(np.abs(cand) > noise, axis=1)]
            pos = np.concatenate([pos, cand[cand[:, 0] * cand[:, 1] > 0]])
            neg = np.concatenate([neg, cand[cand[:, 0] * cand[:, 1] < 0]])
        x, y = np.concatenate([neg[: n - n // 2], pos[: n // 2]]), np.repeat([0, 1], [n - n // 2, n // 2])
    else:
        angle = rng.uniform(0, 2 * np.pi, size=n)
        if name == "circles":
            x = np.where(y == 1, 0.5, 1.0)[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
        else:
            t = angle / 2  # half circles
            upper, lower = np.stack([np.cos(t), np.sin(t)], 1), np.stack([1 - np.cos(t), 0.5 - np.sin(t)], 1)
            x = np.where((y == 1)[:, None], lower, upper) - np.array([0.5, 0.25])
        x = x + noise * rng.standard_normal((n, 2))
    order = rng.permutation(n)
    return x[order].astype(np.float32), y[order].astype(np.int32)


def collapse(params) -> dict:
    """The single layer ``{"W": W1 @ ... @ WL, "b": (b1 @ W2 + b2) @ W3 + ...}`` equal to an identity MLP."""
    W, b = params[0]["W"], params[0]["b"]
    for layer in params[1:]:
        W, b = W @ layer["W"], b @ layer["W"] + layer["b"]
    return {"W": W, "b": b}


def best_linear_accuracy(x: np.ndarray, y: np.ndarray, *, num_angles: int = 2048) -> float:
    """Training accuracy of the best straight line through 2-D, two-class data: for each of ``num_angles``
    directions, every threshold and both labellings (exact up to the angular grid, so a lower bound)."""
    theta = np.linspace(0, np.pi, num_angles, endpoint=False)
    ys = y[np.argsort(np.asarray(x, np.float64) @ np.stack([np.cos(theta), np.sin(theta)]), axis=0)]
    zeros_below = np.vstack([np.zeros((1, num_angles)), np.cumsum(ys == 0, axis=0)])  # at each of n + 1 cuts
    correct = 2 * zeros_below + np.sum(y == 1) - np.arange(len(y) + 1)[:, None]  # "0 below the cut, 1 above"
    return float(max(correct.max(), (len(y) - correct).max()) / len(y))


def _collapse_errors(params, x) -> dict:
    """Max difference between the deep identity net and its collapse relative to the logits' size, float64."""
    with jax.enable_x64(True):
        p, x = jax.tree_util.tree_map(lambda a: jnp.asarray(np.asarray(a), jnp.float64), (params, x))
        deep, flat = mlp.apply(p, x, activation="identity"), collapse(p)
        W_slide, b_slide = p[-1]["W"].T, p[-1]["b"]  # the slide's h = W h + b, W = our W.T: W' = W_L ... W_1
        for layer in reversed(p[:-1]):
            W_slide, b_slide = W_slide @ layer["W"].T, W_slide @ layer["b"] + b_slide
        scale = float(jnp.max(jnp.abs(deep)))
        return {"row_layout": float(jnp.max(jnp.abs(deep - (x @ flat["W"] + flat["b"])))) / scale,
                "slide_layout": float(jnp.max(jnp.abs(deep - ((W_slide @ x.T).T + b_slide)))) / scale}


def main(config: Config, out_dir) -> dict:
    key, results, claims, checks = jax.random.key(config.seed), {}, [], []
    for d, name in enumerate(config.datasets):
        x, y = make_dataset(name, config.n, noise=config.noise, seed=config.seed + d)
        gx, gy = np.meshgrid(*(np.linspace(x[:, i].min() - 0.3, x[:, i].max() + 0.3, config.grid) for i in (0, 1)))
        grid = jnp.asarray(np.stack([gx.ravel(), gy.ravel()], axis=1), jnp.float32)
        best = best_linear_accuracy(x, y)
        results[name] = r = {"x": x, "y": y, "best_linear_accuracy": best, "grid_x": gx[0], "grid_y": gy[:, 0]}
        nets = {}
        for activation in ("identity", "relu"):  # the same widths, init, optimiser and data order
            model = classifier(activation)
            init_key, shuffle_key = jax.random.split(jax.random.fold_in(key, d))
            steps = config.epochs * (len(x) // config.batch_size)
            opt = train.make_optimizer("adam", config.learning_rate, schedule="cosine", total_steps=steps)
            state = train.init_state(model.init(init_key, [2, *config.hidden, 2])[0], opt, shuffle_key)
            fit = train.fit(state, opt, (x, y), loss_fn=model.loss_fn, metrics_fn=model.metrics_fn,
                            epochs=config.epochs, batch_size=config.batch_size, progress=False)
            prob = jax.nn.softmax(mlp.apply(fit.state.params, grid, activation=activation), axis=1)[:, 1]
            r[activation] = {"train_accuracy": 1 - fit.history["train_error"][-1] / 100,
                             "prob_class1": np.round(np.asarray(prob, np.float64).reshape(gx.shape), 4)}
            nets[activation] = fit.state.params
        err = _collapse_errors(nets["identity"], x)
        r["identity"].update(collapsed=collapse(nets["identity"]), collapse_error=err)
        lin, relu = r["identity"]["train_accuracy"], r["relu"]["train_accuracy"]
        claims += [_common.claim(f"{name}: the net with relu fits the data (train accuracy above {FITS})", relu,
                                 _common.above(relu, FITS)),
                   _common.claim(f"{name}: the same net with identity activations cannot (train accuracy below "
                                 f"{FITS_NOT})", lin, _common.below(lin, FITS_NOT))]
        checks += [_common.check(f"{name}: the trained identity net equals x W' + b' (relative max error < 1e-10, "
                                 "float64; fflab's and the slide's layout)", err, max(err.values()) < 1e-10),
                   _common.check(f"{name}: so it is no better than the best straight line (+ 0.01 for the scan's "
                                 "angular grid)", {"identity": lin, "best_line": best}, lin <= best + 0.01),
                   _common.check(f"{name}: no line separates the classes (best < {FITS_NOT})", best, best < FITS_NOT)]
    notes = ("The relu claim's margin is small because accuracy cannot pass 1: relu reaches at worst "
             f"{min(r['relu']['train_accuracy'] for r in results.values()):.1%}, so it holds for any threshold below "
             "that. On two moons, which a line nearly separates, the identity net passes 0.8 (the tests run it).")
    return _common.save(NAME, config, results, claims, out_dir, checks=checks, notes=notes, plot=plot)


def plot(payload: dict, out_dir) -> None:
    plt, results = _common.style(), payload["results"]
    fig, axes = plt.subplots(len(results), 2, figsize=(8, 4 * len(results)), squeeze=False, layout="constrained")
    for row, (name, r) in enumerate(results.items()):
        for ax, activation in zip(axes[row], ("identity", "relu"), strict=True):
            prob = np.asarray(r[activation]["prob_class1"])
            ax.contourf(r["grid_x"], r["grid_y"], prob, levels=np.linspace(0, 1, 11), cmap="RdBu_r", alpha=0.6)
            ax.contour(r["grid_x"], r["grid_y"], prob, levels=[0.5], colors="k", linewidths=1.2)
            ax.scatter(*np.asarray(r["x"]).T, c=r["y"], cmap="RdBu_r", s=6, edgecolors="none")
            best = f"\n(best straight line {r['best_linear_accuracy']:.1%})" if activation == "identity" else ""
            ax.set(title=f"{name}, {activation}: train acc {r[activation]['train_accuracy']:.1%}{best}", aspect="equal",
                   xlabel="$x_1$", ylabel="$x_2$")
            ax.axis([r["grid_x"][0], r["grid_x"][-1], r["grid_y"][0], r["grid_y"][-1]]), ax.grid(False)
    _common.savefig(fig, out_dir, NAME)


if __name__ == "__main__":
    raise SystemExit(_common.module_cli(__name__))
