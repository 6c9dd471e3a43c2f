"""Gradient clipping on Pascanu et al.'s cliff and on a deep net at high learning rates.

The cliff: a one-unit recurrent net ``x_t = w sigmoid(x_{t-1}) + b``, ``x_0 = 0.5``, with loss
``C(w, b) = (sigmoid(x_50) - 0.7)^2`` (Pascanu, Mikolov & Bengio 2013, Fig. 6). Where the map is bistable
(``w`` above about 4), a small change of ``b`` moves the boundary between the two basins of attraction across
``x_0``, ``x_50`` jumps, and the loss surface has a wall, a band of width ``~ slope^-50`` in ``b`` (so this
part runs in float64). Near it the gradient is a product of 50 slopes and an ordinary step "catapults the
parameters very far" (the slide); clipping the gradient's norm to ``c`` (``optax.clip_by_global_norm``) bounds
every step at ``lr * c``. Measured: the loss and gradient norm over a ``(w, b)`` grid and towards the wall;
one descent path from the high plateau and many random starts, clipped and not. Then a deep relu MLP under
plain SGD at high learning rates, clipped and not, trained by :func:`fflab.train.make_train_epoch` with every
(rate, clip, seed) as one lane: how many runs diverge (a non-finite loss, or a final loss above the initial).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

import fflab
from experiments import _common
from fflab import data, init, train

NAME = "gradient_clipping"
DESCRIPTION = "Pascanu's cliff: an unclipped step catapults the parameters; clipping rescues descent and SGD"
SLIDE = "Gradient clipping: a gradient update can catapult parameters very far; clip its magnitude"
PAPERS = {
    "Pascanu, Mikolov & Bengio 2013": "https://arxiv.org/abs/1211.5063",
    "Pascanu 2014 (PhD thesis)": "https://papyrus.bib.umontreal.ca/xmlui/handle/1866/11452",
}

STEPS_T, X0, TARGET = 50, 0.5, 0.7  # the recurrence is unrolled 50 steps from x_0 = 0.5; target 0.7


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
    """``x_50`` by plain float64 Python arithmetic (to locate the wall)."""
    x = X0
    for _ in range(STEPS_T):
        x = w / (1 + math.exp(-x)) + b
    return x


def find_wall(w: float, lo: float, hi: float, *, iters: int = 200) -> float:
    """The ``b`` in ``[lo, hi]`` where ``x_50`` jumps between two basins, by float64 bisection on the midpoint
    of its values at the ends; ``ValueError`` if ``x_50`` does not jump there (by more than 1 across +-1e-6)."""
    x_lo, x_hi = final_state(w, lo), final_state(w, hi)
    mid_x, a, c = 0.5 * (x_lo + x_hi), lo, hi
    for _ in range(iters):
        mid = 0.5 * (a + c)
        a, c = (mid, c) if (final_state(w, mid) < mid_x) == (x_lo < mid_x) else (a, mid)
    wall = 0.5 * (a + c)
    if abs(final_state(w, wall + 1e-6) - final_state(w, wall - 1e-6)) <= 1:
        raise ValueError(f"x_50 does not jump for b in [{lo}, {hi}] at w = {w}: no wall there")
    return wall


@jax.jit
def descend(starts: jax.Array, lr: jax.Array, clip: jax.Array, steps_template: jax.Array):
    """Gradient descent on :func:`loss` from each row of ``starts`` ``(k, 2)``, clipped at ``clip[i]`` (inf:
    unclipped; a finite gradient passes through unchanged), ``len(steps_template)`` steps.

    Returns:
        ``(path, losses)`` of shapes ``(k, steps + 1, 2)`` and ``(k, steps + 1)``, the start included.
    """
    def one(p, c):
        opt = optax.chain(optax.clip_by_global_norm(c), optax.sgd(lr))

        def step(carry, _):
            p, s = carry
            value, g = jax.value_and_grad(loss)(p)
            updates, s = opt.update(g, s, p)
            return (optax.apply_updates(p, updates), s), (p, value)

        (end, _), (path, values) = jax.lax.scan(step, (p, opt.init(p)), steps_template)
        return jnp.concatenate([path, end[None]]), jnp.concatenate([values, loss(end)[None]])

    return jax.vmap(one)(starts, clip)


def _digits(a) -> np.ndarray:
    """``a`` rounded to 7 significant digits, so the saved grids stay small as JSON."""
    return np.vectorize(lambda v: float(f"{v:.7g}"))(np.asarray(a))


def main(config: Config = QUICK, out_dir=None) -> dict:
    out_dir = out_dir or _common.default_out(config == QUICK)
    with jax.enable_x64(True):
        # The cliff: loss and gradient over the grid and along a line through the wall, in one call.
        w, b = np.linspace(*config.w_range, config.grid), np.linspace(*config.b_range, config.grid)
        W, B = np.meshgrid(w, b)
        grid = np.stack([W.ravel(), B.ravel()], 1)
        wall = find_wall(config.cliff_w, *config.b_range)
        offsets = 10.0 ** -np.arange(1, 15)
        line = np.asarray([[config.cliff_w, wall + s * d] for d in offsets for s in (-1, 1)])
        values, grads = (np.asarray(a) for a in jax.jit(jax.vmap(jax.value_and_grad(loss)))(
            jnp.asarray(np.concatenate([grid, line]))))
        grid_loss = _digits(values[: len(grid)].reshape(W.shape))
        grid_gnorm = _digits(np.linalg.norm(grads[: len(grid)], axis=1).reshape(W.shape))
        line_gnorm = np.linalg.norm(grads[len(grid):], axis=1).reshape(len(offsets), 2)
        # One path from the plateau (row 0) and the random starts, unclipped (clip at +inf) and clipped.
        lo, hi = np.array([config.w_range[0], config.b_range[0]]), np.array([config.w_range[1], config.b_range[1]])
        unit = init.flat_draw(jax.random.uniform, jax.random.key(config.seed), (config.num_starts, 2), jnp.float64)
        starts = lo + (hi - lo) * np.asarray(unit)
        rows = np.concatenate([np.asarray([config.start], float), starts])
        settings = {"unclipped": math.inf, "clipped": config.clip}
        paths, path_loss = (np.asarray(a).reshape(len(settings), len(rows), *a.shape[1:]) for a in descend(
            jnp.asarray(np.concatenate([rows] * len(settings))), config.lr,
            jnp.repeat(jnp.asarray(list(settings.values())), len(rows)), jnp.zeros(config.descent_steps)))
    jumps = np.linalg.norm(np.diff(paths, axis=2), axis=3)  # (setting, row, step)
    descent = {label: {"path": paths[i, 0], "loss": path_loss[i, 0], "max_jump": float(jumps[i, 0].max()),
                       "max_jump_step": int(jumps[i, 0].argmax()), "final_loss": float(path_loss[i, 0, -1])}
               for i, label in enumerate(settings)}
    random_starts = {label: {"final_loss": path_loss[i, 1:, -1], "max_jump": jumps[i, 1:].max(axis=1),
                             "success_fraction": float(np.mean(path_loss[i, 1:, -1] < config.success_loss))}
                     for i, label in enumerate(settings)}

    # The deep net: every (rate, clip) setting and seed is one lane of one compiled SGD epoch; "unclipped"
    # clips at +inf. A lane that diverges carries NaN to its end without touching the others.
    dtype = jnp.zeros(()).dtype  # float32, or float64 under jax_enable_x64
    ds = data.load(config.dataset, data_dir=config.data_dir)
    n = config.train_samples or len(ds.x_train)
    x, y = jnp.asarray(ds.x_train[:n], dtype), jnp.asarray(ds.y_train[:n])
    sizes = [x.shape[1], *[config.width] * (config.depth - 1), ds.num_classes]
    model = fflab.classifier("relu")
    opt = optax.chain(optax.inject_hyperparams(optax.clip_by_global_norm)(max_norm=math.inf),
                      optax.inject_hyperparams(optax.sgd)(learning_rate=1.0))
    grid_lr = [(lr, label) for lr in config.learning_rates for label in ("unclipped", "clipped")]
    clips = [math.inf if label == "unclipped" else config.net_clip for _, label in grid_lr]
    seed_states = []
    for key in jax.random.split(jax.random.key(config.seed + 1), config.seeds):
        k_init, k_data = jax.random.split(key)
        state = train.init_state(model.init(k_init, sizes, dtype=dtype)[0], opt, k_data)
        seed_states.append(train.lanes(state, learning_rate=[lr for lr, _ in grid_lr], max_norm=clips))
    states = jax.tree.map(lambda *a: jnp.concatenate(a), *seed_states)  # lane = seed * len(grid_lr) + setting
    epoch = train.make_train_epoch(opt, loss_fn=model.loss_fn, batch_size=config.batch_size, lanes=True)
    lane_loss = jax.jit(jax.vmap(model.loss_fn, in_axes=(0, None, None)))
    curves, grad_norms = [np.asarray(lane_loss(states.params, x, y))], []
    for _ in range(config.epochs):
        states, stats = epoch(states, x, y)
        grad_norms.append(np.max(np.asarray(stats.grad_norm), axis=1))
        curves.append(np.where(np.isfinite(np.asarray(stats.loss)).all(axis=1),
                               np.asarray(lane_loss(states.params, x, y)), np.nan))
    curves, grad_norms = np.stack(curves, 1), np.stack(grad_norms, 1)  # (lanes, epochs + 1), (lanes, epochs)
    runs = {}
    for j, (lr, label) in enumerate(grid_lr):
        lanes = [s * len(grid_lr) + j for s in range(config.seeds)]
        per_seed = []
        for i in lanes:  # a run stops at its first non-finite loss, as a training loop would
            bad = ~np.isfinite(curves[i])
            stop = int(np.argmax(bad)) + 1 if bad.any() else len(curves[i])
            per_seed.append({"loss": curves[i, :stop], "max_grad_norm": grad_norms[i, :stop - 1],
                             "diverged": bool(bad.any() or curves[i, -1] > curves[i, 0])})
        finals = [r["loss"][-1] if math.isfinite(r["loss"][-1]) else np.inf for r in per_seed]
        runs[f"{lr:g}/{label}"] = {"lr": lr, "clip": None if label == "unclipped" else config.net_clip,
                                   "runs": per_seed, "diverged": int(sum(r["diverged"] for r in per_seed)),
                                   "median_final_loss": float(np.median(finals))}

    closest = offsets[-1]
    wall_peak = float(line_gnorm.max())
    div = {key: v["diverged"] for key, v in runs.items()}
    top_lr = max(config.learning_rates)
    orders = float(np.log10(grid_gnorm.max() / grid_gnorm.min()))
    claims = [
        _common.claim("on the cliff's loss surface the gradient norm spans many orders of magnitude "
                      f"(over 4 decades on the {config.grid}x{config.grid} grid)", orders, orders > 4),
        _common.claim(f"approaching the wall the gradient explodes: norm above 1e6 (largest over distances "
                      f"1e-1 to {closest:g})", wall_peak, wall_peak > 1e6),
        _common.claim("one unclipped step catapults the parameters far (largest step > 10, most of the "
                      f"grid); the clipped path's largest step is at most lr * c = {config.lr * config.clip:g}",
                      {k: v["max_jump"] for k, v in descent.items()},
                      descent["unclipped"]["max_jump"] > 10
                      and descent["clipped"]["max_jump"] <= config.lr * config.clip * (1 + 1e-9)),
        _common.claim(f"from {config.num_starts} random starts, clipped descent reaches a low loss "
                      f"(< {config.success_loss:g}) more often",
                      {k: v["success_fraction"] for k, v in random_starts.items()},
                      random_starts["clipped"]["success_fraction"] > random_starts["unclipped"]["success_fraction"]),
        _common.claim(f"a {config.depth}-layer relu net under SGD at high learning rates diverges in fewer "
                      f"of {config.seeds} seeds with clip_by_global_norm({config.net_clip:g}), summed over rates",
                      div, sum(v for k, v in div.items() if k.endswith("/clipped"))
                      < sum(v for k, v in div.items() if k.endswith("/unclipped"))),
        _common.claim(f"at the highest rate ({top_lr:g}) most unclipped runs diverge, at most one clipped "
                      "run does", {k: div[f"{top_lr:g}/{k}"] for k in ("unclipped", "clipped")},
                      div[f"{top_lr:g}/unclipped"] > config.seeds / 2 and div[f"{top_lr:g}/clipped"] <= 1),
    ]
    results = {
        "cliff": {"w": w, "b": b, "loss": grid_loss, "grad_norm": grid_gnorm, "grad_norm_orders": orders,
                  "wall_b": wall, "wall_offsets": offsets, "wall_grad_norm_below": line_gnorm[:, 0],
                  "wall_grad_norm_above": line_gnorm[:, 1], "wall_loss": values[len(grid):].reshape(-1, 2),
                  "paths": descent, "starts": starts, "random_starts": random_starts},
        "deep": {"sizes": sizes, "runs": runs},
    }
    notes = ("The cliff part runs in float64: the wall is a band of width ~1e-9 in b, which float32 cannot "
             f"resolve. Descent: plain gradient descent at learning rate {config.lr:g} (plateau gradients "
             f"are 1e-3 to 1e-7), clipped at global norm {config.clip:g}.")
    if config.dataset == "fashion-mnist":
        notes += (f" Deep net on Fashion-MNIST (first {config.train_samples or 'all'} training images), "
                  "standing in for MNIST, which cannot be downloaded here.")
    payload = _common.save(NAME, config, results, claims, out_dir, notes=notes)
    plot(payload, out_dir)
    return payload


def plot(payload: dict, out_dir) -> None:
    plt = _common.style()
    c, config = payload["results"]["cliff"], payload["config"]
    w, b = np.asarray(c["w"], float), np.asarray(c["b"], float)
    extent = (w[0], w[-1], b[0], b[-1])
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.6), gridspec_kw={"wspace": 0.35})
    im = axes[0].imshow(np.log10(np.maximum(np.asarray(c["loss"], float), 1e-8)), origin="lower", extent=extent,
                        aspect="auto", cmap="viridis")
    fig.colorbar(im, ax=axes[0], label="log10 loss, (sigmoid(x_50) - 0.7)^2")
    for label, color, text_y in (("unclipped", "red", 0.93), ("clipped", "white", 0.83)):
        run = c["paths"][label]
        path = np.asarray(run["path"], float)
        axes[0].plot(path[:, 0], path[:, 1], "-", color=color, lw=1.2, label=f"{label}: largest step "
                     f"{run['max_jump']:.3g}, final loss {run['final_loss']:.2g}")
        end = path[-1]
        if extent[0] <= end[0] <= extent[1] and extent[2] <= end[1] <= extent[3]:
            axes[0].plot(*end, "o", color=color, ms=5)
        else:  # catapulted out of the window: say where it landed
            axes[0].annotate(f"lands at ({end[0]:.1f}, {end[1]:.1f})", xy=(np.clip(end[0], *extent[:2]),
                             np.clip(end[1], *extent[2:])), xytext=(0.5, text_y), textcoords="axes fraction",
                             color=color, fontsize=8, arrowprops={"arrowstyle": "->", "color": color})
    axes[0].plot(*config["start"], "k*", ms=12, label="start")
    axes[0].set(xlim=extent[:2], ylim=extent[2:], xlabel="w", ylabel="b",
                title=f"loss surface, descent paths (lr {config['lr']:g}, clip {config['clip']:g})")
    axes[0].legend(loc="lower left", fontsize=7, facecolor="0.8")
    im = axes[1].imshow(np.log10(np.asarray(c["grad_norm"], float)), origin="lower", extent=extent,
                        aspect="auto", cmap="magma")
    fig.colorbar(im, ax=axes[1], label="log10 ||grad C||")
    axes[1].axvline(config["cliff_w"], color="cyan", ls="--", lw=1)
    axes[1].set(xlabel="w", ylabel="b", title="log10 gradient norm on the grid")
    offsets = np.asarray(c["wall_offsets"], float)
    axes[2].loglog(offsets, np.asarray(c["wall_grad_norm_below"], float), "-o", ms=3, label="b = wall - d")
    axes[2].loglog(offsets, np.asarray(c["wall_grad_norm_above"], float), "-s", ms=3, label="b = wall + d")
    axes[2].axhline(config["clip"], color="k", ls=":", label=f"clip threshold {config['clip']:g}")
    axes[2].invert_xaxis()
    axes[2].set(xlabel="distance d from the wall", ylabel="||grad C||",
                title=f"approaching the wall at w = {config['cliff_w']:g} (float64)")
    axes[2].legend(fontsize=8)
    _common.savefig(fig, out_dir, NAME)

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))  # random starts and the deep net
    bins = np.logspace(-32, 0, 33)
    for label, color in (("unclipped", "C3"), ("clipped", "C0")):
        rs = c["random_starts"][label]
        axes[0].hist(np.clip(np.asarray(rs["final_loss"], float), 1e-32, None), bins=bins, histtype="step",
                     lw=2, color=color, label=f"{label}: {100 * rs['success_fraction']:.0f}% below "
                     f"{config['success_loss']:g}")
    axes[0].axvline(config["success_loss"], color="k", ls=":")
    axes[0].set(xscale="log", xlabel="final loss (floored at 1e-32)", ylabel="starts",
                title=f"{config['num_starts']} random starts, {config['descent_steps']} steps")
    axes[0].legend(fontsize=8)
    runs, rates = payload["results"]["deep"]["runs"], config["learning_rates"]
    for j, (label, color) in enumerate((("unclipped", "C3"), ("clipped", "C0"))):
        bars = axes[1].bar(np.arange(len(rates)) + (j - 0.5) * 0.38, [runs[f"{lr:g}/{label}"]["diverged"]
                           for lr in rates], width=0.38, color=color,
                           label=label if label == "unclipped" else f"clipped at {config['net_clip']:g}")
        axes[1].bar_label(bars)
    axes[1].set_xticks(np.arange(len(rates)), [f"lr {lr:g}" for lr in rates])
    axes[1].set(ylabel=f"diverged runs of {config['seeds']}", ylim=(0, config["seeds"] + 0.8),
                title=f"SGD on a {config['depth']}-layer relu net ({config['dataset']}), {config['epochs']} epochs")
    axes[1].legend()
    _common.savefig(fig, out_dir, f"{NAME}_descent")


if __name__ == "__main__":
    raise SystemExit(_common.module_cli(sys.modules[__name__]))
