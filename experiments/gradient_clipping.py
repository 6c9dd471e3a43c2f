"""Gradient clipping on Pascanu et al.'s cliff and on a deep net at high learning rates.

Lecture: "Gradient clipping".

The cliff: a one-unit recurrent net ``x_t = w sigmoid(x_{t-1}) + b``, ``x_0 = 0.5``, with loss
``C(w, b) = (sigmoid(x_50) - 0.7)^2`` (Pascanu, Mikolov & Bengio 2013, Fig. 6). Where the map is bistable
(``w`` above about 4), a small change of ``b`` moves the boundary between the two basins of attraction
across ``x_0`` and ``x_50`` jumps: the loss surface has a wall. Near the wall the gradient is the product of
50 slopes ``w sigmoid'(x_t)``, so its norm spans many orders of magnitude, and an ordinary gradient step
taken there "catapults the parameters very far" (the slide). Clipping the gradient's norm to ``c`` bounds
every step at ``learning_rate * c`` (``optax.clip_by_global_norm``). The wall is exponentially thin (a band
of width ``~ slope^-50`` in ``b``), so this part computes in float64 whatever the global setting.

We measure: the loss and gradient norm over a ``(w, b)`` grid and along a line through the wall; one descent
path started on the high plateau, with and without clipping (its largest single step); and, from many random
starts, the fraction that reaches a low loss. Then a deep relu MLP trained with plain SGD at high learning
rates, with and without clipping (``optax.clip_by_global_norm`` ahead of SGD, the chain that
:func:`fflab.train.make_optimizer`'s ``clip`` builds): how many of ``seeds`` runs diverge (a non-finite loss,
or a final training loss above the initial one).

References:
    Pascanu, Mikolov & Bengio (2013), On the difficulty of training recurrent neural networks.
    Pascanu (2014), On recurrent and deep neural networks, PhD thesis, Universite de Montreal.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import _common
from fflab import data, init, mlp, train

NAME = "gradient_clipping"
DESCRIPTION = "Pascanu's cliff: an unclipped step catapults the parameters; clipping rescues descent and SGD"
SLIDE = "Gradient clipping: a gradient update can catapult parameters very far; clip its magnitude"

STEPS_T = 50  # the recurrence is unrolled 50 steps
X0 = 0.5
TARGET = 0.7


@dataclass(frozen=True)
class Config:
    dataset: str = "digits"
    data_dir: str | None = None
    w_range: tuple = (-4.0, 12.0)
    b_range: tuple = (-8.0, 4.0)
    grid: int = 121
    cliff_w: float = 6.0  # the line through the wall
    lr: float = 30.0  # plateau gradients are 1e-3..1e-7, so the toy needs a large step
    clip: float = 0.03  # clipped steps are at most lr * clip = 0.9 long
    descent_steps: int = 1000
    start: tuple = (8.0, -2.0)  # on the high plateau, downhill towards the wall
    num_starts: int = 200
    success_loss: float = 1e-3
    # The deep network.
    train_samples: int = 0  # 0: the whole training set
    depth: int = 10  # weight layers
    width: int = 64
    learning_rates: tuple = (0.5, 1.0)
    net_clip: float = 1.0
    seeds: int = 5
    epochs: int = 5
    batch_size: int = 32
    seed: int = 0


QUICK = Config(learning_rates=(1.0,))  # the claims read only the highest rate
FULL = Config(dataset="fashion-mnist", grid=161, num_starts=1000, train_samples=10000, width=128,
              learning_rates=(0.1, 0.3, 1.0), seeds=8, epochs=5, batch_size=64)


def loss(params: jax.Array) -> jax.Array:
    """``(sigmoid(x_50) - 0.7)^2`` at ``params = (w, b)``: ``x_t = w sigmoid(x_{t-1}) + b``, ``x_0 = 0.5``."""
    w, b = params[0], params[1]
    x, _ = jax.lax.scan(lambda x, _: (w * jax.nn.sigmoid(x) + b, None),
                        jnp.asarray(X0, params.dtype), None, length=STEPS_T)
    return (jax.nn.sigmoid(x) - TARGET) ** 2


def final_state(w: float, b: float) -> float:
    """``x_50`` by plain float64 Python arithmetic (the check used to locate the wall)."""
    x = X0
    for _ in range(STEPS_T):
        x = w / (1 + math.exp(-x)) + b
    return x


def find_wall(w: float, lo: float, hi: float, *, iters: int = 200) -> float:
    """The ``b`` in ``[lo, hi]`` where ``x_50`` jumps between two basins of attraction, by float64 bisection.

    ``x_50`` increases with ``b``; bisection finds where it crosses the midpoint of its values at the ends,
    which is the jump if there is one.

    Raises:
        ValueError: if ``x_50`` does not jump there (by more than 1 across ``+-1e-6``): no wall in between.
    """
    x_lo, x_hi = final_state(w, lo), final_state(w, hi)
    mid_x = 0.5 * (x_lo + x_hi)
    a, c = lo, hi
    for _ in range(iters):
        mid = 0.5 * (a + c)
        if (final_state(w, mid) < mid_x) == (x_lo < mid_x):
            a = mid
        else:
            c = mid
    wall = 0.5 * (a + c)
    if abs(final_state(w, wall + 1e-6) - final_state(w, wall - 1e-6)) <= 1:
        raise ValueError(f"x_50 does not jump for b in [{lo}, {hi}] at w = {w}: no wall there")
    return wall


def make_optimizer(lr: float, clip: float | None) -> optax.GradientTransformation:
    """Plain gradient descent, optionally after ``optax.clip_by_global_norm(clip)``."""
    opt = optax.sgd(lr)
    return opt if clip is None else optax.chain(optax.clip_by_global_norm(clip), opt)


def descend(optimizer: optax.GradientTransformation, starts: jax.Array, steps: int):
    """Run ``steps`` optimiser steps on :func:`loss` from each row of ``starts`` ``(k, 2)``.

    Returns:
        ``(path, losses)``: ``path`` of shape ``(k, steps + 1, 2)`` (start included), ``losses`` of shape
        ``(k, steps + 1)``.
    """
    return _descend(lambda _: optimizer, starts, np.zeros(len(starts)), steps)


def _descend(make_opt, starts, hyper, steps: int):
    """:func:`descend` with row ``i`` of ``starts`` run by the optimiser ``make_opt(hyper[i])``.

    ``hyper[i]`` is traced, so rows with different hyperparameters (the clipped and the unclipped runs)
    share one compilation of the 1000-step scan.
    """
    grad_fn = jax.value_and_grad(loss)

    def one(p, h):
        optimizer = make_opt(h)

        def step(carry, _):
            p, s = carry
            value, g = grad_fn(p)
            updates, s = optimizer.update(g, s, p)
            return (optax.apply_updates(p, updates), s), (p, value)

        (p_end, _), (path, values) = jax.lax.scan(step, (p, optimizer.init(p)), None, length=steps)
        return jnp.concatenate([path, p_end[None]]), jnp.concatenate([values, loss(p_end)[None]])

    return jax.jit(jax.vmap(one))(jnp.asarray(starts), jnp.asarray(hyper))


def _digits(a: np.ndarray, digits: int = 7) -> np.ndarray:
    """``a`` rounded to ``digits`` significant digits, so the saved grids stay small as JSON."""
    return np.array([float(f"{v:.{digits}g}") for v in a.ravel()]).reshape(a.shape)


def _cliff(config: Config) -> dict:
    w = np.linspace(*config.w_range, config.grid)
    b = np.linspace(*config.b_range, config.grid)
    W, B = np.meshgrid(w, b)
    grid = np.stack([W.ravel(), B.ravel()], 1)

    # The gradient norm as the wall is approached along b at w = cliff_w.
    wall = find_wall(config.cliff_w, config.b_range[0], config.b_range[1])
    offsets = 10.0 ** -np.arange(1, 15)
    line = np.asarray([[config.cliff_w, wall + s * d] for d in offsets for s in (-1, 1)])

    # Grid and line in one call: the rows are independent, and one batch shape is one compilation.
    values, grads = (np.asarray(a) for a in jax.jit(jax.vmap(jax.value_and_grad(loss)))(
        jnp.asarray(np.concatenate([grid, line]))))
    grid_loss = _digits(values[: len(grid)].reshape(W.shape))
    grid_gnorm = _digits(np.linalg.norm(grads[: len(grid)], axis=1).reshape(W.shape))
    line_loss = values[len(grid):]
    line_gnorm = np.linalg.norm(grads[len(grid):], axis=1).reshape(len(offsets), 2)

    # One path from the high plateau (row 0) and many random starts, with and without clipping, in one
    # descent (one compilation): the rows are independent, and an unclipped row is one clipped at +inf,
    # which passes every finite gradient through unchanged.
    lo = np.array([config.w_range[0], config.b_range[0]])
    hi = np.array([config.w_range[1], config.b_range[1]])
    key = jax.random.key(config.seed)
    unit = init.flat_draw(jax.random.uniform, key, (config.num_starts, 2), jnp.float64)  # compiles faster
    starts = lo + (hi - lo) * np.asarray(unit)
    rows = np.concatenate([np.asarray([config.start], float), starts])
    settings = (("unclipped", math.inf), ("clipped", config.clip))
    all_paths, all_values = (np.asarray(a) for a in _descend(
        lambda clip: make_optimizer(config.lr, clip), np.concatenate([rows] * len(settings)),
        np.repeat([clip for _, clip in settings], len(rows)), config.descent_steps))
    paths, starts_result, n = {}, {}, len(rows)
    for i, (label, _) in enumerate(settings):
        run_paths, run_values = all_paths[i * n: (i + 1) * n], all_values[i * n: (i + 1) * n]
        path, values = run_paths[0], run_values[0]
        jumps = np.linalg.norm(np.diff(path, axis=0), axis=1)
        paths[label] = {"path": path, "loss": values, "max_jump": float(jumps.max()),
                        "max_jump_step": int(jumps.argmax()), "final_loss": float(values[-1])}
        final = run_values[1:, -1]
        jumps = np.linalg.norm(np.diff(run_paths[1:], axis=1), axis=2).max(axis=1)
        starts_result[label] = {
            "final_loss": final,
            "success_fraction": float(np.mean(final < config.success_loss)),
            "max_jump": jumps,
        }
    return {
        "w": w, "b": b, "loss": grid_loss, "grad_norm": grid_gnorm,
        "grad_norm_orders": float(np.log10(grid_gnorm.max() / grid_gnorm.min())),
        "wall_b": wall, "wall_offsets": offsets, "wall_grad_norm_below": line_gnorm[:, 0],
        "wall_grad_norm_above": line_gnorm[:, 1], "wall_loss": line_loss.reshape(len(offsets), 2),
        "paths": paths, "starts": starts, "random_starts": starts_result,
    }


def _with_hyperparams(opt_state, **values):
    """The state of a chain of ``inject_hyperparams`` transforms with the named hyperparameters set.

    Each value takes the dtype the state holds, so every setting hits the same compiled epoch.
    """
    parts = []
    for part in opt_state:
        hyper = {k: jnp.asarray(values[k], v.dtype) if k in values else v
                 for k, v in part.hyperparams.items()}
        parts.append(part._replace(hyperparams=hyper))
    return tuple(parts)


def _deep(config: Config) -> dict:
    dtype = jnp.zeros(()).dtype  # float32, or float64 under jax_enable_x64
    ds = data.load(config.dataset, data_dir=config.data_dir)
    n = config.train_samples or len(ds.x_train)
    x, y = jnp.asarray(ds.x_train[:n], dtype), jnp.asarray(ds.y_train[:n])
    sizes = [x.shape[1], *[config.width] * (config.depth - 1), ds.num_classes]
    keys = jax.random.split(jax.random.key(config.seed + 1), config.seeds)
    # Plain SGD after optax.clip_by_global_norm, both with their hyperparameter in the optimiser state
    # (optax.inject_hyperparams), so one compiled epoch serves every rate, clipped or not, and every seed.
    # "Unclipped" is clipping at +inf, which passes every finite gradient through unchanged (and a
    # non-finite one stays non-finite): the same steps as optax.sgd alone.
    opt = optax.chain(optax.inject_hyperparams(optax.clip_by_global_norm)(max_norm=math.inf),
                      optax.inject_hyperparams(optax.sgd)(learning_rate=1.0))
    epoch_fn = train.make_train_epoch(opt, batch_size=config.batch_size)
    out = {}
    for lr in config.learning_rates:
        for label, clip in (("unclipped", None), ("clipped", config.net_clip)):
            runs = []
            for key in keys:
                k_init, k_data = jax.random.split(key)
                state = train.init_state(mlp.init(k_init, sizes, dtype=dtype), opt, k_data)
                state = state._replace(opt_state=_with_hyperparams(
                    state.opt_state, max_norm=math.inf if clip is None else clip, learning_rate=lr))
                curve = [train.evaluate(state.params, x, y)[0]]
                grad_norms = []
                for _ in range(config.epochs):
                    state, stats = epoch_fn(state, x, y)
                    grad_norms.append(float(np.max(np.asarray(stats.grad_norm))))
                    value = train.evaluate(state.params, x, y)[0]
                    if not (math.isfinite(value) and np.all(np.isfinite(np.asarray(stats.loss)))):
                        curve.append(math.nan)
                        break
                    curve.append(value)
                diverged = not math.isfinite(curve[-1]) or curve[-1] > curve[0]
                runs.append({"loss": curve, "max_grad_norm": grad_norms, "diverged": diverged})
            finals = [r["loss"][-1] if math.isfinite(r["loss"][-1]) else np.inf for r in runs]
            out[f"{lr:g}/{label}"] = {
                "lr": lr, "clip": clip, "runs": runs,
                "diverged": int(sum(r["diverged"] for r in runs)),
                "median_final_loss": float(np.median(finals)),
            }
    return {"sizes": sizes, "runs": out}


def main(config: Config = QUICK, out_dir=None) -> dict:
    out_dir = out_dir or _common.default_out(config == QUICK)
    with jax.enable_x64(True):
        cliff = _cliff(config)
    deep = _deep(config)

    paths, starts = cliff["paths"], cliff["random_starts"]
    closest = cliff["wall_offsets"][-1]
    wall_peak = float(max(np.max(cliff["wall_grad_norm_below"]), np.max(cliff["wall_grad_norm_above"])))
    div = {key: v["diverged"] for key, v in deep["runs"].items()}
    top_lr = max(config.learning_rates)
    claims = [
        _common.claim("on the cliff's loss surface the gradient norm spans many orders of magnitude "
                      f"(over 4 decades on the {config.grid}x{config.grid} grid)",
                      cliff["grad_norm_orders"], cliff["grad_norm_orders"] > 4),
        _common.claim(f"approaching the wall the gradient explodes: norm above 1e6 (largest over distances "
                      f"1e-1 to {closest:g})",
                      wall_peak, wall_peak > 1e6),
        _common.claim("one unclipped step catapults the parameters far (largest step > 10, most of the "
                      "grid); the clipped path's largest step is at most lr * c = "
                      f"{config.lr * config.clip:g}",
                      {k: v["max_jump"] for k, v in paths.items()},
                      paths["unclipped"]["max_jump"] > 10
                      and paths["clipped"]["max_jump"] <= config.lr * config.clip * (1 + 1e-9)),
        _common.claim(f"from {config.num_starts} random starts, clipped descent reaches a low loss "
                      f"(< {config.success_loss:g}) more often",
                      {k: v["success_fraction"] for k, v in starts.items()},
                      starts["clipped"]["success_fraction"] > starts["unclipped"]["success_fraction"]),
        _common.claim(f"a {config.depth}-layer relu net under SGD at high learning rates diverges in fewer "
                      f"of {config.seeds} seeds with clip_by_global_norm({config.net_clip:g}), "
                      "summed over rates",
                      div,
                      sum(v for k, v in div.items() if k.endswith("/clipped"))
                      < sum(v for k, v in div.items() if k.endswith("/unclipped"))),
        _common.claim(f"at the highest rate ({top_lr:g}) most unclipped runs diverge, at most one clipped "
                      "run does",
                      {k: div[f"{top_lr:g}/{k}"] for k in ("unclipped", "clipped")},
                      div[f"{top_lr:g}/unclipped"] > config.seeds / 2 and div[f"{top_lr:g}/clipped"] <= 1),
    ]
    results = {"cliff": cliff, "deep": deep}
    notes = ("The cliff part runs in float64: the wall is a band of width ~1e-9 in b, which float32 cannot "
             f"resolve. Descent: plain gradient descent at learning rate {config.lr:g} (plateau gradients "
             f"are 1e-3 to 1e-7), clipped at global norm {config.clip:g}.")
    if config.dataset == "fashion-mnist":
        notes += (f" Deep net on Fashion-MNIST (first {config.train_samples or 'all'} training images), "
                  "standing in for MNIST, which cannot be downloaded here.")
    payload = _common.save_results(NAME, config, results, claims, out_dir, notes=notes)
    plot(payload, out_dir)
    return payload


def _arr(values) -> np.ndarray:
    """Saved lists back to float arrays ("nan"/"inf" strings included)."""
    return np.asarray(values, dtype=float)


def plot(payload: dict, out_dir) -> None:
    plt = _common.style()
    c = payload["results"]["cliff"]
    config = payload["config"]
    w, b = _arr(c["w"]), _arr(c["b"])
    extent = (w[0], w[-1], b[0], b[-1])
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.6), gridspec_kw={"wspace": 0.35})
    log_loss = np.log10(np.maximum(_arr(c["loss"]), 1e-8))
    im = axes[0].imshow(log_loss, origin="lower", extent=extent, aspect="auto", cmap="viridis")
    fig.colorbar(im, ax=axes[0], label="log10 loss, (sigmoid(x_50) - 0.7)^2")
    for label, color, text_y in (("unclipped", "red", 0.93), ("clipped", "white", 0.83)):
        path = _arr(c["paths"][label]["path"])
        axes[0].plot(path[:, 0], path[:, 1], "-", color=color, lw=1.2,
                     label=f"{label}: largest step {c['paths'][label]['max_jump']:.3g}, "
                     f"final loss {c['paths'][label]['final_loss']:.2g}")
        end = path[-1]
        inside = extent[0] <= end[0] <= extent[1] and extent[2] <= end[1] <= extent[3]
        if inside:
            axes[0].plot(*end, "o", color=color, ms=5)
        else:  # catapulted out of the window: say where it landed
            axes[0].annotate(f"lands at ({end[0]:.1f}, {end[1]:.1f})", xy=(np.clip(end[0], *extent[:2]),
                             np.clip(end[1], *extent[2:])), xytext=(0.5, text_y), textcoords="axes fraction",
                             color=color, fontsize=8, arrowprops={"arrowstyle": "->", "color": color})
    axes[0].plot(*config["start"], "k*", ms=12, label="start")
    axes[0].set(xlim=extent[:2], ylim=extent[2:], xlabel="w", ylabel="b",
                title=f"loss surface, descent paths (lr {config['lr']:g}, clip {config['clip']:g})")
    axes[0].legend(loc="lower left", fontsize=7, facecolor="0.8")
    im = axes[1].imshow(np.log10(_arr(c["grad_norm"])), origin="lower", extent=extent, aspect="auto",
                        cmap="magma")
    fig.colorbar(im, ax=axes[1], label="log10 ||grad C||")
    axes[1].axvline(config["cliff_w"], color="cyan", ls="--", lw=1)
    axes[1].set(xlabel="w", ylabel="b", title="log10 gradient norm on the grid")
    offsets = _arr(c["wall_offsets"])
    axes[2].loglog(offsets, _arr(c["wall_grad_norm_below"]), "-o", ms=3, label="b = wall - d")
    axes[2].loglog(offsets, _arr(c["wall_grad_norm_above"]), "-s", ms=3, label="b = wall + d")
    axes[2].axhline(config["clip"], color="k", ls=":", label=f"clip threshold {config['clip']:g}")
    axes[2].invert_xaxis()
    axes[2].set(xlabel="distance d from the wall", ylabel="||grad C||",
                title=f"approaching the wall at w = {config['cliff_w']:g} (float64)")
    axes[2].legend(fontsize=8)
    _common.savefig(fig, out_dir, NAME)

    # Random starts and the deep net.
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    rs = c["random_starts"]
    bins = np.logspace(-32, 0, 33)
    for label, color in (("unclipped", "C3"), ("clipped", "C0")):
        final = np.clip(_arr(rs[label]["final_loss"]), 1e-32, None)
        axes[0].hist(final, bins=bins, histtype="step", lw=2, color=color,
                     label=f"{label}: {100 * rs[label]['success_fraction']:.0f}% "
                     f"below {config['success_loss']:g}")
    axes[0].axvline(config["success_loss"], color="k", ls=":")
    axes[0].set(xscale="log", xlabel="final loss (floored at 1e-32)", ylabel="starts",
                title=f"{config['num_starts']} random starts, {config['descent_steps']} steps")
    axes[0].legend(fontsize=8)
    runs = payload["results"]["deep"]["runs"]
    x = np.arange(len(config["learning_rates"]))
    for j, (label, color) in enumerate((("unclipped", "C3"), ("clipped", "C0"))):
        counts = [runs[f"{lr:g}/{label}"]["diverged"] for lr in config["learning_rates"]]
        bars = axes[1].bar(x + (j - 0.5) * 0.38, counts, width=0.38, color=color,
                           label=label if label == "unclipped" else f"clipped at {config['net_clip']:g}")
        axes[1].bar_label(bars)
    axes[1].set_xticks(x, [f"lr {lr:g}" for lr in config["learning_rates"]])
    axes[1].set(ylabel=f"diverged runs of {config['seeds']}", ylim=(0, config["seeds"] + 0.8),
                title=f"SGD on a {config['depth']}-layer relu net ({config['dataset']}), "
                f"{config['epochs']} epochs")
    axes[1].legend()
    _common.savefig(fig, out_dir, f"{NAME}_descent")


if __name__ == "__main__":
    raise SystemExit(_common.module_cli(sys.modules[__name__]))
