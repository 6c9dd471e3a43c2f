"""A deep MLP with identity activations is one affine map (lecture: "On activation functions").

The slide writes layers as ``h = W x + b`` with ``W`` of shape ``(n_out, n_in)`` and concludes
``W' = W2 W1``, ``b' = W2 b1 + b2``. fflab stores ``W`` as ``(n_in, n_out)`` and computes ``x @ W + b``, so
the same collapse reads ``W' = W1 @ W2 @ ... @ WL`` and ``b' = (b1 @ W2 + b2) @ W3 + ...``; the slide's
matrices are the transposes of ours. Both forms are checked numerically against :func:`fflab.mlp.apply`.

A consequence: however deep, the identity network draws a straight decision boundary, so on a two-class
problem that no line separates (concentric circles, XOR) it cannot beat the best linear classifier, which we
find by scanning directions and thresholds. The same architecture with relu fits the data.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from experiments import _common
from fflab import mlp, train

NAME = "linear_collapse"
DESCRIPTION = "Identity activations collapse a deep MLP to one affine map that cannot fit circles or XOR"
SLIDE = "On activation functions: identity would give h2 = W'x + b'"

DATASETS = ("circles", "xor", "moons")


@dataclass(frozen=True)
class Config:
    datasets: tuple = ("circles", "xor")
    n: int = 1000
    noise: float = 0.08
    hidden: tuple = (32, 32, 32)
    epochs: int = 100
    batch_size: int = 20
    learning_rate: float = 0.01
    grid: int = 80
    seed: int = 0


QUICK = Config(n=400, epochs=40, batch_size=10, grid=50)
FULL = Config()


def make_dataset(name: str, n: int, *, noise: float = 0.08, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A two-class problem in the plane that no straight line separates.

    Args:
        name: ``circles`` (radius 0.5 inside radius 1), ``xor`` (the sign of ``x1 * x2`` on the square
            ``[-1, 1]^2``, points within ``noise`` of an axis left out) or ``moons`` (two interleaved half
            circles); see :data:`DATASETS`.
        n: number of points, half of each class.
        noise: std of the Gaussian jitter (``circles``, ``moons``) or the margin around the axes (``xor``).
        seed: numpy seed.

    Returns:
        ``x`` of shape ``(n, 2)`` float32 and ``y`` of shape ``(n,)`` int32 in ``{0, 1}``.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; valid names: {', '.join(DATASETS)}")
    if n < 2:
        raise ValueError(f"n must be at least 2, got {n}")
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    if name == "xor":
        pos, neg = np.empty((0, 2)), np.empty((0, 2))
        while len(pos) < n // 2 or len(neg) < n - n // 2:  # rejection sampling: a margin around the axes
            cand = rng.uniform(-1, 1, size=(2 * n, 2))
            cand = cand[np.all(np.abs(cand) > noise, axis=1)]
            pos = np.concatenate([pos, cand[cand[:, 0] * cand[:, 1] > 0]])
            neg = np.concatenate([neg, cand[cand[:, 0] * cand[:, 1] < 0]])
        x = np.concatenate([neg[: n - n // 2], pos[: n // 2]])
        y = np.concatenate([np.zeros(n - n // 2, int), np.ones(n // 2, int)])
    else:
        angle = rng.uniform(0, 2 * np.pi, size=n)
        if name == "circles":
            radius = np.where(y == 1, 0.5, 1.0)
            x = radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
        else:
            t = angle / 2  # half circles
            upper = np.stack([np.cos(t), np.sin(t)], axis=1)
            lower = np.stack([1 - np.cos(t), 0.5 - np.sin(t)], axis=1)
            x = np.where((y == 1)[:, None], lower, upper) - np.array([0.5, 0.25])
        x = x + noise * rng.standard_normal((n, 2))
    order = rng.permutation(n)
    return x[order].astype(np.float32), y[order].astype(np.int32)


def collapse(params) -> dict:
    """The single affine layer ``{"W": W', "b": b'}`` equal to an identity-activation MLP.

    For fflab's ``x @ W + b`` layout: ``W' = W1 @ W2 @ ... @ WL`` and ``b'`` by pushing each bias through the
    layers above it. The slide's ``W' = W2 W1`` is the transpose of this for ``(n_out, n_in)`` matrices.

    Args:
        params: MLP layers ``[{"W": (n_in, n_out), "b": (n_out,)}, ...]``.

    Returns:
        ``{"W": (n_in, n_out_last), "b": (n_out_last,)}``.
    """
    W, b = params[0]["W"], params[0]["b"]
    for layer in params[1:]:
        W = W @ layer["W"]
        b = b @ layer["W"] + layer["b"]
    return {"W": W, "b": b}


def best_linear_accuracy(x: np.ndarray, y: np.ndarray, *, num_angles: int = 2048) -> float:
    """Training accuracy of the best straight-line classifier of 2-D, two-class data.

    Scans ``num_angles`` directions in ``[0, pi)``; for each it sorts the projections and tries every
    threshold and both labellings, so the result is exact up to the angular grid (a lower bound on the true
    optimum that is tight for a fine grid).

    Args:
        x: ``(n, 2)`` points.
        y: ``(n,)`` labels in ``{0, 1}``.

    Returns:
        The best accuracy, a fraction in ``[0.5, 1]``.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y)
    if x.ndim != 2 or x.shape[1] != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"expected x: (n, 2) and y: (n,), got x: {x.shape} and y: {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    theta = np.linspace(0, np.pi, num_angles, endpoint=False)
    proj = x @ np.stack([np.cos(theta), np.sin(theta)])  # (n, angles)
    ys = y[np.argsort(proj, axis=0)]  # labels in projection order, per angle
    zeros = np.vstack([np.zeros((1, num_angles)), np.cumsum(ys == 0, axis=0)])  # class 0 at or below cut k
    ones_below = np.vstack([np.zeros((1, num_angles)), np.cumsum(ys == 1, axis=0)])
    correct = zeros + (ones_below[-1] - ones_below)  # "0 below the cut, 1 above"
    best = max(correct.max(), (len(y) - correct).max())  # the flipped labelling
    return float(best / len(y))


def _train(x, y, activation: str, config: Config, key):
    sizes = [2, *config.hidden, 2]
    init_key, shuffle_key = jax.random.split(key)
    params = mlp.init(init_key, sizes)
    steps = config.epochs * (len(x) // config.batch_size)
    opt = train.make_optimizer("adam", config.learning_rate, schedule="cosine", total_steps=steps)
    state = train.init_state(params, opt, shuffle_key)
    result = train.fit(state, opt, (x, y), epochs=config.epochs, batch_size=config.batch_size,
                       activation=activation, progress=False)
    return result.state.params, result.history


def _collapse_errors(params, x) -> dict:
    """Max abs difference between the deep identity net and its collapse, in both layouts, in float64."""
    with jax.enable_x64(True):
        p = jax.tree_util.tree_map(lambda a: jnp.asarray(np.asarray(a), jnp.float64), params)
        x = jnp.asarray(x, jnp.float64)
        deep = mlp.apply(p, x, activation="identity")
        flat = collapse(p)
        ours = x @ flat["W"] + flat["b"]
        # The slide's layout: W_slide = W.T, h = W_slide h + b, so W'_slide = W_L.T ... W_1.T.
        W_slide = p[-1]["W"].T
        b_slide = p[-1]["b"]
        for layer in reversed(p[:-1]):
            b_slide = W_slide @ layer["b"] + b_slide
            W_slide = W_slide @ layer["W"].T
        slide = (W_slide @ x.T).T + b_slide
        scale = float(jnp.max(jnp.abs(deep)))
        return {
            "row_layout": float(jnp.max(jnp.abs(deep - ours))) / scale,
            "slide_layout": float(jnp.max(jnp.abs(deep - slide))) / scale,
            "logit_scale": scale,
        }


def main(config: Config = QUICK, out_dir=None) -> dict:
    out_dir = out_dir or _common.default_out(config == QUICK)
    key = jax.random.key(config.seed)
    results, claims = {}, []
    for d, name in enumerate(config.datasets):
        x, y = make_dataset(name, config.n, noise=config.noise, seed=config.seed + d)
        best = best_linear_accuracy(x, y)
        lo, hi = x.min(axis=0) - 0.3, x.max(axis=0) + 0.3
        gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], config.grid), np.linspace(lo[1], hi[1], config.grid))
        grid = np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32)
        entry = {"x": x, "y": y, "best_linear_accuracy": best, "grid_x": gx[0], "grid_y": gy[:, 0]}
        for activation in ("identity", "relu"):
            params, history = _train(x, y, activation, config, jax.random.fold_in(key, d))
            logits = mlp.apply(params, jnp.asarray(grid), activation=activation)
            prob = jax.nn.softmax(logits, axis=1)[:, 1].reshape(config.grid, config.grid)
            entry[activation] = {
                "train_accuracy": 1 - history["train_error"][-1] / 100,
                "train_loss": history["train_loss"],
                "prob_class1": np.round(np.asarray(prob, np.float64), 4),
            }
            if activation == "identity":
                flat = collapse(params)
                entry["identity"]["collapsed"] = {"W": flat["W"], "b": flat["b"]}
                entry["identity"]["collapse_error"] = _collapse_errors(params, x)
        results[name] = entry
        lin, relu = entry["identity"]["train_accuracy"], entry["relu"]["train_accuracy"]
        err = entry["identity"]["collapse_error"]
        claims += [
            _common.claim(f"{name}: the trained {len(config.hidden)}-hidden-layer identity net equals "
                          "x W' + b' (relative max error, float64; fflab's and the slide's layout)",
                          {k: err[k] for k in ("row_layout", "slide_layout")},
                          max(err["row_layout"], err["slide_layout"]) < 1e-10),
            _common.claim(f"{name}: identity net is no better than the best straight line (train accuracy "
                          "vs best line)", {"identity": lin, "best_line": best}, lin <= best + 0.01),
            _common.claim(f"{name}: no straight line separates the classes (best line < 0.8)", best,
                          best < 0.8),
            _common.claim(f"{name}: the same net with relu fits the data (train accuracy >= 0.97)", relu,
                          relu >= 0.97),
        ]
    notes = ("fflab computes x @ W + b with W of shape (n_in, n_out), so the collapse is W' = W1 @ W2 @ ...; "
             "the slide's W' = W2 W1 is its transpose. Best line: a scan over 2048 directions and all "
             "thresholds. Both nets: same widths, Adam with a cosine schedule via fflab.train.fit.")
    payload = _common.save_results(NAME, config, results, claims, out_dir, notes=notes)
    plot(payload, out_dir)
    return payload


def plot(payload: dict, out_dir) -> None:
    plt = _common.style()
    results = payload["results"]
    names = list(results)
    fig, axes = plt.subplots(len(names), 2, figsize=(8, 4 * len(names)), squeeze=False,
                             layout="constrained")
    for row, name in enumerate(names):
        r = results[name]
        x, y = np.asarray(r["x"]), np.asarray(r["y"])
        for col, activation in enumerate(("identity", "relu")):
            ax = axes[row, col]
            a = r[activation]
            ax.contourf(r["grid_x"], r["grid_y"], np.asarray(a["prob_class1"]), levels=np.linspace(0, 1, 11),
                        cmap="RdBu_r", alpha=0.6)
            ax.contour(r["grid_x"], r["grid_y"], np.asarray(a["prob_class1"]), levels=[0.5], colors="k",
                       linewidths=1.2)
            ax.scatter(x[:, 0], x[:, 1], c=y, cmap="RdBu_r", s=6, edgecolors="none")
            title = f"{name}, {activation}: train acc {a['train_accuracy']:.1%}"
            if activation == "identity":
                title += f"\n(best straight line {r['best_linear_accuracy']:.1%})"
            ax.set(title=title, xlabel="$x_1$", ylabel="$x_2$", aspect="equal",
                   xlim=(r["grid_x"][0], r["grid_x"][-1]), ylim=(r["grid_y"][0], r["grid_y"][-1]))
            ax.grid(False)
    _common.savefig(fig, out_dir, NAME)


if __name__ == "__main__":
    raise SystemExit(_common.module_cli(sys.modules[__name__]))
