"""Gradient clipping on Pascanu et al.'s cliff and on a deep net at high learning rates.

The cliff (Pascanu, Mikolov & Bengio 2013, Fig. 6): a one-unit RNN ``x_t = w sigmoid(x_{t-1}) + b``, ``x_0 =
0.5``, loss ``(sigmoid(x_50) - 0.7)^2``. Where the map is bistable (``w`` above about 4) a small change of ``b``
moves a basin boundary across ``x_0``: ``x_50`` jumps and the surface has a wall ~1e-9 wide in ``b`` (float64),
where the gradient is a product of 50 slopes and a plain step "catapults the parameters very far". Clipping its
norm to ``c`` bounds every step by ``lr * c``. Then a deep relu MLP under plain SGD at high rates, clipped or not.
"""

import math
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
    train_samples: int = 0  # the deep net; 0: the whole training set
    depth: int = 10  # weight layers
    width: int = 64
    learning_rates: tuple = (0.5, 1.0)
    net_clip: float = 1.0
    seeds: int = 5
    epochs: int = 5
    batch_size: int = 32
    seed: int = 0


QUICK = Config(learning_rates=(1.0,))
FULL = Config(dataset="fashion-mnist", grid=161, num_starts=1000, train_samples=10000, width=128,
              learning_rates=(0.1, 0.3, 1.0), seeds=8, epochs=5, batch_size=64)
CLIPS = ("unclipped", "clipped")


def loss(params: jax.Array) -> jax.Array:
    """``(sigmoid(x_50) - 0.7)^2`` at ``params = (w, b)``: ``x_t = w sigmoid(x_{t-1}) + b``, ``x_0 = 0.5``."""
    w, b = params[0], params[1]
    x = jax.lax.fori_loop(0, STEPS_T, lambda _, x: w * jax.nn.sigmoid(x) + b, jnp.asarray(X0, params.dtype))
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
def descend(starts: jax.Array, lr, clips: jax.Array, ticks: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Gradient descent on :func:`loss` from each row of ``starts`` ``(k, 2)`` for ``len(ticks)`` steps, clipped at
    ``clips[i]`` (inf: unclipped): ``(paths, losses)`` of shapes ``(k, steps + 1, 2)``, ``(k, steps + 1)``."""
    def one(p, c):
        opt = optax.chain(optax.clip_by_global_norm(c), optax.sgd(lr))

        def step(carry, _):
            p, s = carry
            updates, s = opt.update(jax.grad(loss)(p), s, p)
            return (optax.apply_updates(p, updates), s), p

        end, path = jax.lax.scan(step, (p, opt.init(p)), ticks)
        return jnp.concatenate([path, end[0][None]])

    paths = jax.vmap(one)(starts, clips)
    return paths, jax.vmap(jax.vmap(loss))(paths)


def claims(r: dict, config: Config) -> tuple[list[dict], list[dict]]:
    """The lecture's claims (with margins) and the identity checks, from the named results ``r`` of main."""
    claim = _common.claim
    top, div, frac = max(config.learning_rates), r["diverged"], r["success_fraction"]
    total = {k: sum(v for run, v in div.items() if run.endswith(f"/{k}")) for k in CLIPS}
    top_share = {k: div[f"{top:g}/{k}"] / config.seeds for k in CLIPS}
    bound = config.lr * config.clip
    return [
        claim(f"on the cliff's loss surface the gradient norm spans over 4 decades ({config.grid}^2 grid)",
              r["grad_norm_decades"], _common.above(r["grad_norm_decades"], 4)),
        claim("approaching the wall the gradient explodes: norm above 1e6 (largest over distances 1e-1 to 1e-14)",
              r["wall_peak_grad_norm"], _common.above(r["wall_peak_grad_norm"], 1e6)),
        claim("an unclipped step catapults the parameters far: the largest step of the descent from the plateau "
              "is over 10 (most of the grid)", r["max_step"]["unclipped"],
              _common.above(r["max_step"]["unclipped"], 10)),
        claim(f"from {config.num_starts} random starts, clipped descent reaches a low loss (< {config.success_loss:g}) "
              "more often than unclipped", frac, _common.above(frac["clipped"], frac["unclipped"])),
        claim(f"a {config.depth}-layer relu net under SGD at high rates diverges in fewer runs ({config.seeds} seeds "
              f"per rate) with clip_by_global_norm({config.net_clip:g}), summed over rates", div,
              _common.below(total["clipped"], total["unclipped"])),
        claim(f"at the highest rate ({top:g}) most unclipped runs diverge (over half) and most clipped runs do not",
              top_share, _common.both(_common.above(top_share["unclipped"], 0.5),
                                      _common.below(top_share["clipped"], 0.5))),
    ], [_common.check(f"no clipped step, from any start, is longer than lr * c = {bound:g} (clipping's bound)",
                      r["max_step"]["clipped_any_start"], r["max_step"]["clipped_any_start"] <= bound * (1 + 1e-9))]


def main(config: Config, out_dir) -> dict:
    with jax.enable_x64(True):  # the cliff: the grid and a line through the wall, then the descents
        w, b = np.linspace(*config.w_range, config.grid), np.linspace(*config.b_range, config.grid)
        grid = np.stack([a.ravel() for a in np.meshgrid(w, b)], 1)
        wall = find_wall(config.cliff_w, *config.b_range)
        offsets = 10.0 ** -np.arange(1, 15)
        line = np.asarray([[config.cliff_w, wall + s * d] for d in offsets for s in (-1, 1)])
        values, grads = map(np.asarray, jax.jit(jax.vmap(jax.value_and_grad(loss)))(np.concatenate([grid, line])))
        grid_gnorm = np.linalg.norm(grads[: len(grid)], axis=1).reshape(len(b), len(w))
        line_gnorm = np.linalg.norm(grads[len(grid):], axis=1).reshape(len(offsets), 2)
        box = np.array([config.w_range, config.b_range]).T  # rows lo, hi
        unit = init.flat_draw(jax.random.uniform, jax.random.key(config.seed), (config.num_starts, 2), jnp.float64)
        rows = np.concatenate([[config.start], box[0] + (box[1] - box[0]) * np.asarray(unit)])  # row 0: plateau
        paths, path_loss = (np.asarray(a).reshape(2, len(rows), *a.shape[1:]) for a in descend(
            np.concatenate([rows, rows]), config.lr, np.repeat([math.inf, config.clip], len(rows)),
            jnp.zeros(config.descent_steps)))
    steps = np.linalg.norm(np.diff(paths, axis=2), axis=3)  # (clip, row, step)

    # The deep net: each (rate, clip) run and seed is a lane of one compiled epoch ("unclipped": clip at +inf).
    dtype = jnp.zeros(()).dtype  # float32, or float64 under jax_enable_x64
    ds = data.load(config.dataset, data_dir=config.data_dir)
    n = config.train_samples or len(ds.x_train)
    x, y = jnp.asarray(ds.x_train[:n], dtype), jnp.asarray(ds.y_train[:n])
    sizes = [x.shape[1], *[config.width] * (config.depth - 1), ds.num_classes]
    model = fflab.classifier("relu")
    opt = optax.chain(optax.inject_hyperparams(optax.clip_by_global_norm)(max_norm=math.inf),
                      optax.inject_hyperparams(optax.sgd)(learning_rate=1.0))
    runs = [(lr, c) for lr in config.learning_rates for c in (math.inf, config.net_clip)]
    seeds = []
    for key in jax.random.split(jax.random.key(config.seed + 1), config.seeds):
        k_init, k_data = jax.random.split(key)
        state = train.init_state(model.init(k_init, sizes, dtype=dtype)[0], opt, k_data)
        seeds.append(train.lanes(state, learning_rate=[lr for lr, _ in runs], max_norm=[c for _, c in runs]))
    states = jax.tree.map(lambda *a: jnp.concatenate(a), *seeds)  # lane = seed * len(runs) + run
    epoch = train.make_train_epoch(opt, loss_fn=model.loss_fn, batch_size=config.batch_size, lanes=True)
    lane_loss = jax.jit(jax.vmap(model.loss_fn, in_axes=(0, None, None)))
    curves = [lane_loss(states.params, x, y)]  # a NaN step leaves NaN parameters, so divergence shows here
    for _ in range(config.epochs):
        states, _ = epoch(states, x, y)
        curves.append(lane_loss(states.params, x, y))
    curves = np.stack(curves, 1).reshape(config.seeds, len(runs), -1)  # (seed, run, epoch)
    diverged = ~np.isfinite(curves[..., -1]) | (curves[..., -1] > curves[..., 0])

    r = {
        "grad_norm_decades": float(np.log10(grid_gnorm.max() / grid_gnorm.min())),
        "wall_peak_grad_norm": float(line_gnorm.max()),
        "max_step": {"unclipped": float(steps[0, 0].max()), "clipped": float(steps[1, 0].max()),
                     "clipped_any_start": float(steps[1].max())},
        "success_fraction": {k: float(np.mean(path_loss[i, 1:, -1] < config.success_loss))
                             for i, k in enumerate(CLIPS)},
        "diverged": {f"{lr:g}/{CLIPS[j % 2]}": int(diverged[:, j].sum()) for j, (lr, _) in enumerate(runs)},
    }
    claim_list, checks = claims(r, config)
    digits = np.vectorize(lambda v: float(f"{v:.7g}"))  # the grids to 7 digits, so the JSON stays small
    results = {**r, "cliff": {
        "w": w, "b": b, "loss": digits(values[: len(grid)].reshape(len(b), len(w))), "grad_norm": digits(grid_gnorm),
        "wall_b": wall, "wall_offsets": offsets, "wall_grad_norm": line_gnorm,
        "wall_loss": values[len(grid):].reshape(-1, 2), "random_starts": rows[1:],
        **{key: dict(zip(CLIPS, a, strict=True)) for key, a in (
            ("paths", paths[:, 0]), ("path_loss", path_loss[:, 0]), ("random_final_loss", path_loss[:, 1:, -1]))}},
        "deep": {"sizes": sizes, "runs": list(r["diverged"]), "loss": curves, "diverged": diverged}}
    notes = ("Set-up as in Pascanu et al. (2013, Fig. 6): a one-unit RNN unrolled 50 steps, in float64 (the wall "
             f"is a band ~1e-9 wide in b). Plain gradient descent at rate {config.lr:g} (plateau gradients are "
             f"1e-3 to 1e-7), clipped at global norm {config.clip:g}; that no clipped step exceeds lr * c is "
             "clipping's identity, listed as a check. The deep net is an extension (Pascanu clips RNNs); a run "
             "diverges when its loss turns non-finite or ends above its start.")
    if config.dataset == "fashion-mnist":
        notes += f" It trains on Fashion-MNIST ({n} images) standing in for MNIST, which cannot be downloaded here."
    return _common.save(NAME, config, results, claim_list, out_dir, checks=checks, notes=notes, plot=plot)


def plot(payload: dict, out_dir) -> None:
    plt, r, config = _common.style(), payload["results"], payload["config"]
    c, rates = r["cliff"], config["learning_rates"]
    extent = (c["w"][0], c["w"][-1], c["b"][0], c["b"][-1])
    fig, axes = plt.subplots(2, 3, figsize=(17, 9), gridspec_kw={"wspace": 0.35, "hspace": 0.35})
    (surface, gnorm, wall), (starts, deep, spare) = axes
    for ax, image, label, cmap in ((surface, np.maximum(c["loss"], 1e-8), "log10 loss", "viridis"),
                                   (gnorm, c["grad_norm"], "log10 ||grad C||", "magma")):
        fig.colorbar(ax.imshow(np.log10(image), origin="lower", extent=extent, aspect="auto", cmap=cmap), ax=ax,
                     label=label)
        ax.set(xlim=extent[:2], ylim=extent[2:], xlabel="w", ylabel="b")
    for label, color in zip(CLIPS, ("red", "white"), strict=True):
        path = np.asarray(c["paths"][label])
        surface.plot(*path.T, "-", color=color, lw=1.2, label=f"{label}: largest step {r['max_step'][label]:.3g}, "
                     f"final loss {c['path_loss'][label][-1]:.1e}")
    surface.plot(*config["start"], "k*", ms=12, label="start")
    surface.set_title(f"(sigmoid(x_50) - 0.7)^2 and descent paths (lr {config['lr']:g}, clip {config['clip']:g})")
    surface.legend(loc="lower left", fontsize=7, facecolor="0.8")
    gnorm.axvline(config["cliff_w"], color="cyan", ls="--", lw=1)
    gnorm.set_title(f"gradient norm: {r['grad_norm_decades']:.1f} decades on the grid")
    for i, side in enumerate("-+"):
        wall.loglog(c["wall_offsets"], np.asarray(c["wall_grad_norm"])[:, i], ("-o", "-s")[i], ms=3,
                    label=f"b = wall {side} d")
    wall.axhline(config["clip"], color="k", ls=":", label=f"clip threshold {config['clip']:g}")
    wall.invert_xaxis()
    wall.set(xlabel="distance d from the wall", ylabel="||grad C||",
             title=f"approaching the wall at w = {config['cliff_w']:g} (float64)")
    wall.legend(fontsize=8)
    for j, (label, color) in enumerate(zip(CLIPS, ("C3", "C0"), strict=True)):
        starts.hist(np.clip(c["random_final_loss"][label], 1e-32, None), bins=np.logspace(-32, 0, 33),
                    histtype="step", lw=2, color=color, label=f"{label}: {100 * r['success_fraction'][label]:.0f}% "
                    f"below {config['success_loss']:g}")
        deep.bar_label(deep.bar(np.arange(len(rates)) + (j - 0.5) * 0.38, [r["diverged"][f"{lr:g}/{label}"]
                                for lr in rates], width=0.38, color=color, label=label))
    starts.axvline(config["success_loss"], color="k", ls=":")
    starts.set(xscale="log", xlabel="final loss (floored at 1e-32)", ylabel="starts",
               title=f"{config['num_starts']} random starts, {config['descent_steps']} steps")
    deep.set_xticks(np.arange(len(rates)), [f"lr {lr:g}" for lr in rates])
    deep.set(ylabel=f"diverged runs of {config['seeds']}", ylim=(0, config["seeds"] + 0.8), title=f"SGD on a "
             f"{config['depth']}-layer relu net ({config['dataset']}), clip {config['net_clip']:g}")
    for ax in (starts, deep):
        ax.legend(fontsize=8)
    spare.set_axis_off()
    _common.savefig(fig, out_dir, NAME)


if __name__ == "__main__":
    raise SystemExit(_common.module_cli(__name__))
