"""The lecture's tiny example C(w1, w2) = (w1 w2 - 1.5)^2 + 0.04 (w1^2 + w2^2) under five optimisers.

Gradient descent at step 0.25 ("too slow") and 0.35 ("oscillates"), Newton's method (which "points the wrong
way in places": where the Hessian has a negative eigenvalue), the saddle-free Newton fix (Dauphin et al.
2014), Polyak momentum, and momentum with a noisy gradient, all from the same start ``(-1.5, 0.5)``: in the
second quadrant, where the Hessian is indefinite and the path has to bend past the saddle at the origin
towards one of the minima ``w1 = w2 = +-sqrt(1.5 - 0.04)``.

Closed forms (t = 1.5, d = 0.04): the critical points are the origin, with Hessian eigenvalues ``2d +- 2t``
(a saddle), and ``w1 = w2 = +-sqrt(t - d)``, with eigenvalues ``4(t - d) = 5.84`` and ``4d = 0.16``. Gradient
descent is stable at a minimum iff ``step < 2 / lambda_max = 0.342``, and converges there at the rate
``max_i |1 - step * lambda_i|`` per step.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

import analysis
from analysis import critical, spectrum
from experiments import _common

NAME = "tiny_example"
DESCRIPTION = "Gradient descent, Newton, momentum and noisy momentum on the lecture's two-weight toy loss"
SLIDE = "Tiny Example; Gradient descent 0.25 / 0.35; Newton's method; Momentum (with noisy gradient)"
PAPERS = {
    "Polyak 1964": "https://doi.org/10.1016/0041-5553(64)90137-5",
    "Dauphin et al. 2014": "https://arxiv.org/abs/1406.2572",
}

T, D = _common.TINY_TARGET, _common.TINY_DECAY
W_MIN = math.sqrt(T - D)  # the minima sit at w1 = w2 = +-W_MIN
LAMBDA_MIN, LAMBDA_MAX = 4 * D, 4 * (T - D)  # Hessian eigenvalues at a minimum, along (1, -1) and (1, 1)
METHODS = ("gd_slow", "gd_fast", "newton", "saddle_free", "momentum", "noisy_momentum")


@dataclass(frozen=True)
class Config:
    start: tuple[float, float] = (-1.5, 0.5)
    num_steps: int = 400
    gd_steps: tuple[float, float] = (0.25, 0.35)  # the lecture's "too slow" and "oscillates"
    momentum_lr: float = 0.1
    momentum: float = 0.8
    noise_std: float = 0.2  # std of the Gaussian noise added to each gradient coordinate
    noise_chains: int = 32  # independent noisy runs, for the spread around the minimum
    reach_tol: float = 1e-3  # "reached the minimum": distance to the nearest minimum below this
    critical_starts: int = 5  # a critical_starts x critical_starts grid of starts for find_critical_point
    sfn_damping: float = 0.5  # saddle-free Newton floors |lambda| here, so its steps stay short
    span: float = 2.5
    grid: int = 121
    seed: int = 0


QUICK = Config(num_steps=300, noise_chains=16, critical_starts=3, grid=101)
FULL = Config()


def hessian(w):
    return analysis.hessian(_common.tiny_loss, w)


def distance_to_minimum(w: np.ndarray) -> np.ndarray:
    """Distance of points ``(..., 2)`` to the nearer of the two minima."""
    w_min = np.array([W_MIN, W_MIN])
    return np.minimum(np.linalg.norm(w - w_min, axis=-1), np.linalg.norm(w + w_min, axis=-1))


def steps_to_reach(path: np.ndarray, tol: float) -> int | None:
    """First iteration whose distance to a minimum is below ``tol``; ``None`` if it never gets there."""
    hit = np.flatnonzero(distance_to_minimum(path) < tol)
    return int(hit[0]) if hit.size else None


def paths(config: Config) -> dict[str, np.ndarray]:
    """Every method's iterates ``(steps + 1, 2)`` from ``config.start``; ``noisy_momentum`` has a leading
    ``chains`` axis. One compiled program for all of them."""
    grad = jax.grad(_common.tiny_loss)
    n = config.num_steps

    def optax_path(opt, w0, noise):  # the k-th gradient gets noise[k] added
        def step(carry, xi):
            w, state = carry
            updates, state = opt.update(grad(w) + xi, state, w)
            w = optax.apply_updates(w, updates)
            return (w, state), w

        return jnp.concatenate([w0[None], lax.scan(step, (w0, opt.init(w0)), noise)[1]])

    def second_order_path(direction, w0):  # w <- w - direction(H(w), g(w)): the update rule is the point
        def step(w, _):
            w = w - direction(hessian(w), grad(w))
            return w, w

        return jnp.concatenate([w0[None], lax.scan(step, w0, None, length=n)[1]])

    def sfn(H, g):
        return critical.saddle_free_newton_direction(H, g, damping=config.sfn_damping)

    @_common.small_jit
    def run(w0, key):
        zero = jnp.zeros((n, 2), w0.dtype)
        noise = config.noise_std * jax.random.normal(key, (config.noise_chains, n, 2), w0.dtype)
        momentum = optax.sgd(config.momentum_lr, momentum=config.momentum)  # m <- a m - lr g; w <- w + m
        return {
            "gd_slow": optax_path(optax.sgd(config.gd_steps[0]), w0, zero),
            "gd_fast": optax_path(optax.sgd(config.gd_steps[1]), w0, zero),
            "newton": second_order_path(jnp.linalg.solve, w0),
            "saddle_free": second_order_path(sfn, w0),
            "momentum": optax_path(momentum, w0, zero),
            "noisy_momentum": jax.vmap(lambda xi: optax_path(momentum, w0, xi))(noise),
        }

    w0 = jnp.asarray(config.start, jnp.zeros(()).dtype)
    return {k: np.asarray(p, np.float64) for k, p in run(w0, jax.random.PRNGKey(config.seed)).items()}


def main(config: Config, out_dir) -> dict:
    slow, fast = config.gd_steps
    dtype = jnp.zeros(()).dtype

    # ---- the paths
    traj = paths(config)
    noisy = traj["noisy_momentum"]
    path_of = {name: (noisy[0] if name == "noisy_momentum" else traj[name]) for name in METHODS}
    steps = {name: steps_to_reach(path_of[name], config.reach_tol) for name in METHODS}
    distances = {name: distance_to_minimum(path_of[name]) for name in METHODS}
    top_eig = {name: np.asarray(jnp.linalg.eigvalsh(jax.vmap(hessian)(jnp.asarray(p, dtype)))[:, -1], np.float64)
               for name, p in path_of.items()}

    # ---- critical points from an off-centre grid of starts (a start on a symmetry line finds only its points)
    axis = np.linspace(-config.span, config.span, config.critical_starts) + 0.1
    points = []
    for a in axis:
        for b in axis:
            res = critical.find_critical_point(_common.tiny_loss, jnp.asarray([a, b], dtype), max_iter=50)
            w = np.asarray(res.params, np.float64)
            if res.converged and all(np.linalg.norm(w - p["w"]) >= 1e-3 for p in points):
                eigs = spectrum.eigenvalues(hessian(res.params))
                kind = critical.classify(eigs, grad_norm=res.grad_norm, grad_tol=1e-3)
                points.append({"w": w, "loss": res.loss, "grad_norm": res.grad_norm, "eigenvalues": eigs,
                               "kind": kind.kind, "is_critical": kind.is_critical})
    points.sort(key=lambda p: tuple(p["w"]))
    saddles = [p for p in points if p["kind"] == "saddle"]
    minima = [p for p in points if p["kind"] == "minimum"]
    at_min = spectrum.eigenvalues(hessian(jnp.asarray([W_MIN, W_MIN], dtype)))
    limit = 2 / float(at_min[-1])

    # ---- the landscape: loss, smallest eigenvalue, and where Newton's step -H^-1 g climbs (g . H^-1 g < 0)
    ticks = jnp.linspace(-config.span, config.span, config.grid)
    a, b = jnp.meshgrid(ticks, ticks)  # grid[i, j] = (ticks[j], ticks[i])
    pts = jnp.stack([a.ravel(), b.ravel()], axis=1)
    H, g = jax.vmap(hessian)(pts), jax.vmap(jax.grad(_common.tiny_loss))(pts)
    slope = jnp.einsum("pi,pi->p", g, jnp.linalg.solve(H, g[:, :, None])[:, :, 0])
    grid = {"ticks": np.asarray(ticks),  # rounded: these only draw contours and shading
            "loss": np.round(np.asarray(jax.vmap(_common.tiny_loss)(pts), np.float64), 5).reshape(a.shape),
            "lambda_min": np.round(np.asarray(jnp.linalg.eigvalsh(H)[:, 0], np.float64), 5).reshape(a.shape),
            "newton_uphill": np.asarray(slope < 0).astype(np.int8).reshape(a.shape)}
    indefinite = grid["lambda_min"] < 0
    uphill = grid["newton_uphill"].astype(bool)

    # ---- named results
    late = traj["gd_fast"][-50:]  # past the limit: a 2-cycle across the minimum along (1, 1) / sqrt(2)
    offset = (late - np.sign(late.sum(axis=1).mean()) * W_MIN) @ np.array([1.0, 1.0])
    flips = float(np.mean(np.sign(offset[1:]) != np.sign(offset[:-1])))
    newton_end = traj["newton"][-1]
    d = distances["gd_slow"]  # geometric-mean contraction over the iterates with 1e-4 < d_k < 1e-2
    keep = (d[:-1] > 1e-4) & (d[:-1] < 1e-2) & (d[1:] > 0)
    slow_rate = float(np.exp(np.mean(np.log(d[1:][keep] / d[:-1][keep])))) if keep.any() else float("nan")
    slow_rate_closed = max(abs(1 - slow * LAMBDA_MIN), abs(1 - slow * LAMBDA_MAX))
    noisy_rms = float(np.sqrt(np.mean(distance_to_minimum(noisy[:, config.num_steps // 2:]) ** 2)))
    # heavy ball with gradient noise in the quadratic model: Var_i = lr s^2 (1 + a) / (l_i (1 - a) (2 (1 + a) - lr l_i))
    lr, alpha, s = config.momentum_lr, config.momentum, config.noise_std
    noisy_pred = math.sqrt(sum(lr * s**2 * (1 + alpha) / (lam * (1 - alpha) * (2 * (1 + alpha) - lr * lam))
                               for lam in (LAMBDA_MIN, LAMBDA_MAX)))

    def never(n):
        return "never" if n is None else n

    claims = [
        _common.claim(
            "critical points: the origin is a saddle, the minima are w1 = w2 = +-sqrt(1.46) (and nothing else)",
            {"points": [[round(float(x), 6) for x in p["w"]] for p in points], "kinds": [p["kind"] for p in points],
             "eigenvalues": [[round(float(x), 4) for x in p["eigenvalues"]] for p in points]},
            len(points) == 3 and len(saddles) == 1 and len(minima) == 2 and np.linalg.norm(saddles[0]["w"]) < 1e-4
            and all(abs(abs(p["w"][0]) - W_MIN) < 1e-4 and abs(p["w"][0] - p["w"][1]) < 1e-4 for p in minima)),
        _common.claim(
            "0.35 is past the stability limit at the minimum and 0.25 is not: 0.25 < 2/lambda_max < 0.35 "
            f"(closed form lambda_max = 4(1.5 - 0.04) = {LAMBDA_MAX:g})",
            {"lambda_max": float(at_min[-1]), "2/lambda_max": limit},
            slow < limit < fast and abs(at_min[-1] - LAMBDA_MAX) < 1e-4),
        _common.claim(
            f"gradient descent at {slow:g} is too slow: it reaches the minimum, but late on the error only "
            f"shrinks by |1 - {slow:g} * lambda_min| = {slow_rate_closed:.2f} per step",
            {"steps": never(steps["gd_slow"]), "late rate": slow_rate},
            steps["gd_slow"] is not None and abs(slow_rate - slow_rate_closed) < 5e-3),
        _common.claim(
            f"gradient descent at {fast:g} oscillates: it never reaches the minimum, and its last 50 iterates "
            "alternate sides of it along the stiff direction",
            {"steps": never(steps["gd_fast"]), "final distance": float(distances["gd_fast"][-1]),
             "fraction of side flips": flips},
            steps["gd_fast"] is None and flips == 1.0),
        _common.claim(
            "Newton's method points the wrong way where the Hessian has a negative eigenvalue: from the start it "
            "converges to the saddle at the origin, not the minimum; its step is uphill on part of that region",
            {"newton end": newton_end, "steps": never(steps["newton"]),
             "uphill fraction of the indefinite region": float(uphill[indefinite].mean()),
             "uphill fraction of the positive-definite region": float(uphill[~indefinite].mean())},
            steps["newton"] is None and np.linalg.norm(newton_end) < 1e-4
            and uphill[indefinite].any() and not uphill[~indefinite].any()),
        _common.claim(
            f"the wrong direction is solvable: saddle-free Newton (|H|^-1 g, |lambda| floored at "
            f"{config.sfn_damping:g}) reaches the minimum",
            never(steps["saddle_free"]), steps["saddle_free"] is not None),
        _common.claim(
            f"momentum (lr {config.momentum_lr:g}, alpha {config.momentum:g}) reaches the minimum in fewer steps "
            f"than gradient descent at {slow:g}",
            {"momentum": never(steps["momentum"]), f"gd {slow:g}": never(steps["gd_slow"])},
            steps["momentum"] is not None and steps["gd_slow"] is not None and steps["momentum"] < steps["gd_slow"]),
        _common.claim(
            f"with a noisy gradient (std {config.noise_std:g}) momentum only hovers around the minimum, at the "
            "spread the quadratic model predicts (measured / predicted RMS distance within 0.75-1.33)",
            {"steps (chain 0)": never(steps["noisy_momentum"]), "rms distance": noisy_rms, "predicted": noisy_pred,
             "ratio": noisy_rms / noisy_pred},
            noisy_rms > config.reach_tol and 0.75 < noisy_rms / noisy_pred < 1.33),
    ]
    results = {
        "start": list(config.start), "w_min": W_MIN, "paths": path_of, "noisy_final": noisy[:, -1],
        "distance": distances, "top_eigenvalue": top_eig, "steps_to_reach": steps, "critical_points": points,
        "hessian_at_minimum": at_min, "stability_limit": limit,
        "gd_slow_rate": {"measured": slow_rate, "closed_form": slow_rate_closed},
        "noisy_rms": {"measured": noisy_rms, "predicted": noisy_pred}, "grid": grid,
    }
    notes = (
        f"Start (w1, w2) = {tuple(config.start)}, in the second quadrant where the Hessian is indefinite. "
        f"'Reach' means distance to the nearer minimum below {config.reach_tol:g}; {config.num_steps} steps per "
        "method. Newton's method converges to the saddle at the origin, since it seeks any critical point; "
        "saddle-free Newton takes full steps |H|^-1 g with |lambda| floored at sfn_damping (without the floor it "
        "also reaches the minimum but jumps far out first). "
        f"Momentum uses optax.sgd(lr={config.momentum_lr:g}, momentum={config.momentum:g}), i.e. Polyak's "
        "m <- alpha m - lr g; with alpha = 0.9 at lr 0.1 it is not faster than gradient descent at 0.25 here. "
        "The noisy run adds N(0, std^2) to each gradient coordinate; its spread is measured over the second half "
        f"of {config.noise_chains} chains."
    )
    payload = _common.save(NAME, config, results, claims, out_dir, notes=notes)
    plot(payload, out_dir)
    return payload


_COLORS = {"gd_slow": "C0", "gd_fast": "C1", "newton": "C3", "saddle_free": "C4", "momentum": "C2",
           "noisy_momentum": "C5"}


def _labels(config: dict) -> dict[str, str]:
    slow, fast = config["gd_steps"]
    return {"gd_slow": f"gradient descent, step {slow:g}", "gd_fast": f"gradient descent, step {fast:g}",
            "newton": "Newton", "saddle_free": "saddle-free Newton", "momentum": "momentum",
            "noisy_momentum": "momentum, noisy gradient"}


def plot(payload: dict, out_dir) -> None:
    plt = _common.style()
    from matplotlib.colors import LogNorm

    r, config = payload["results"], payload["config"]
    label = _labels(config)
    g = r["grid"]
    ticks, surface = np.asarray(g["ticks"]), np.asarray(g["loss"])
    levels = np.geomspace(surface.min() * 1.02, surface.max(), 18)
    span, steps = config["span"], r["steps_to_reach"]

    def background(ax, shade=False):
        ax.contour(ticks, ticks, surface, levels=levels, norm=LogNorm(), cmap="Greys_r", linewidths=0.7)
        if shade:
            ax.contourf(ticks, ticks, (np.asarray(g["lambda_min"]) < 0).astype(float), levels=[0.5, 1.5],
                        colors=["C3"], alpha=0.12)
            ax.contourf(ticks, ticks, np.asarray(g["newton_uphill"], float), levels=[0.5, 1.5], colors="none",
                        hatches=["////"])
        for p in r["critical_points"]:
            ax.plot(*p["w"], marker="X" if p["kind"] == "saddle" else "*", color="k", ms=11, ls="none", zorder=5)
        ax.plot(*r["start"], "o", color="k", mfc="w", ms=7, zorder=5)
        ax.set(xlim=(-span, span), ylim=(-span, span), xlabel="$w_1$", ylabel="$w_2$", aspect="equal")

    fig, axes = plt.subplots(2, 3, figsize=(14, 9.6), layout="constrained")
    panels = [("gd_slow",), ("gd_fast",), ("newton", "saddle_free"), ("momentum",), ("noisy_momentum",)]
    for ax, names in zip(axes.ravel(), panels, strict=False):
        background(ax, shade="newton" in names)
        for name in names:
            p = np.asarray(r["paths"][name])
            p = p[np.all(np.abs(p) < 3 * span, axis=1)]
            n = steps[name]
            reached = "never reaches the minimum" if n is None else f"reaches the minimum in {n} steps"
            ax.plot(p[:, 0], p[:, 1], ".-", color=_COLORS[name], ms=3, lw=1, label=f"{label[name]}: {reached}")
        if names == ("noisy_momentum",):
            final = np.asarray(r["noisy_final"])
            ax.plot(final[:, 0], final[:, 1], "+", color="k", ms=6, label="final point of each noisy chain")
        ax.legend(loc="lower right", fontsize=7.5, framealpha=0.9)
        ax.set_title(label[names[0]] + (" (red: H indefinite;\nhatched: Newton step goes uphill)"
                                        if "newton" in names else ""))
    ax = axes[1, 2]
    for name in r["paths"]:
        ax.semilogy(np.maximum(np.asarray(r["distance"][name], float), 1e-12), color=_COLORS[name], label=label[name])
    ax.axhline(config["reach_tol"], color="k", ls=":", lw=1, label=f"'reached': {config['reach_tol']:g}")
    ax.set(title="distance to the nearer minimum", xlabel="iteration", ylabel="$\\|w - w^*\\|$", ylim=(1e-9, 1e5))
    ax.legend(fontsize=7, ncol=2, loc="upper right")
    fig.suptitle("$C = (w_1 w_2 - 1.5)^2 + 0.04(w_1^2 + w_2^2)$ from $(w_1, w_2) = $"
                 f"{tuple(r['start'])}; X = saddle, * = minima $\\pm\\sqrt{{1.46}}$ = {r['w_min']:.3f}")
    _common.savefig(fig, out_dir, NAME)

    fig, ax = plt.subplots(figsize=(8, 4.2))
    for name in ("gd_slow", "gd_fast", "momentum"):
        ax.plot(np.asarray(r["top_eigenvalue"][name])[:80], ".-", ms=3, color=_COLORS[name], label=label[name])
    for step, color in zip(config["gd_steps"], ("C0", "C1"), strict=True):
        ax.axhline(2 / step, color=color, ls="--", lw=1.2, label=f"stability limit 2 / {step:g} = {2 / step:.2f}")
    lam = float(np.asarray(r["hessian_at_minimum"])[-1])
    ax.axhline(lam, color="k", ls=":", lw=1.2, label=f"$\\lambda_{{max}}$ at the minimum = {lam:.2f}")
    ax.set(title="top Hessian eigenvalue along each path: unstable where $\\lambda_{max}$ > 2 / step",
           xlabel="iteration", ylabel="$\\lambda_{max}(H(w_k))$", ylim=(0, None))
    ax.legend(fontsize=8, ncol=2, loc="upper right")
    _common.savefig(fig, out_dir, f"{NAME}_curvature")


if __name__ == "__main__":
    raise SystemExit(_common.module_cli(sys.modules[__name__]))
