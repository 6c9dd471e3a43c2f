"""The lecture's tiny example C(w1, w2) = (w1 w2 - 1.5)^2 + 0.04 (w1^2 + w2^2) under five optimisers: gradient
descent at 0.25 ("too slow") and 0.35 ("oscillates"), Newton's method ("less oscillations", "points the wrong way in
places"), saddle-free Newton (Dauphin et al. 2014) and Polyak momentum, with and without gradient noise. Minima at
w1 = w2 = +-sqrt(1.46) with Hessian eigenvalues 0.16 and 5.84: gradient descent is stable there iff step < 0.342.
"""

import functools
import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import analysis
from analysis import critical
from experiments import _common

NAME = "tiny_example"
DESCRIPTION = "Gradient descent, Newton, momentum and noisy momentum on the lecture's two-weight toy loss"
SLIDE = "Tiny Example; Gradient descent 0.25 / 0.35; Newton's method, too complex; Momentum (with noisy gradient)"
PAPERS = {"Polyak 1964": "https://doi.org/10.1016/0041-5553(64)90137-5",
          "Dauphin et al. 2014": "https://arxiv.org/abs/1406.2572"}

W_MIN = math.sqrt(_common.TINY_TARGET - _common.TINY_DECAY)  # the minima sit at w1 = w2 = +-W_MIN
LAMBDA_MIN, LAMBDA_MAX = 4 * _common.TINY_DECAY, 4 * W_MIN**2  # Hessian eigenvalues at a minimum


@dataclass(frozen=True)
class Config:
    start: tuple[float, float] = (-1.5, 0.5)
    num_steps: int = 400
    gd_steps: tuple[float, float] = (0.25, 0.35)  # the lecture's "too slow" and "oscillates"
    too_slow: int = 100  # "too slow": more steps than this to reach the minimum (our reading of the slide)
    momentum_lr: float = 0.1
    momentum: float = 0.9  # the usual alpha; one of `momenta`
    momenta: tuple[float, ...] = (0.0, 0.5, 0.7, 0.8, 0.85, 0.9, 0.95)  # the sweep behind the verdict
    noise_std: float = 0.2  # std of the Gaussian noise added to each gradient coordinate
    noise_chains: int = 32  # independent noisy runs, for the spread around the minimum
    reach_tol: float = 1e-3  # "reached the minimum": distance to the nearest minimum below this
    oscillation_starts: int = 7  # an n x n grid of starts for Newton's "less oscillations"
    sfn_damping: float = 0.5  # saddle-free Newton floors |lambda| here, so its steps stay short
    span: float = 2.5
    grid: int = 121
    seed: int = 0


QUICK, FULL = Config(num_steps=300, noise_chains=16, oscillation_starts=5, grid=101), Config()


hessian = functools.partial(analysis.hessian, _common.tiny_loss)


def distance_to_minimum(w: np.ndarray) -> np.ndarray:
    """Distance of points ``(..., 2)`` to the nearer of the two minima."""
    return np.minimum(np.linalg.norm(w - W_MIN, axis=-1), np.linalg.norm(w + W_MIN, axis=-1))


def steps_to_reach(path: np.ndarray, tol: float) -> int | None:
    """First iteration whose distance to a minimum is below ``tol``; ``None`` if it never gets there."""
    hit = np.flatnonzero(distance_to_minimum(path) < tol)
    return int(hit[0]) if hit.size else None


def oscillation(path: np.ndarray, tol: float) -> dict:
    """``zigzags``: pairs of consecutive steps more than 90 degrees apart, while farther than ``tol`` from the
    path's end; ``detour``: the path's length over the distance from its start to its end (1: straight)."""
    s = np.diff(path, axis=0)
    far = np.linalg.norm(path[1:-1] - path[-1], axis=1) > tol
    return {"zigzags": int(np.sum((np.einsum("ki,ki->k", s[:-1], s[1:]) < 0) & far)),
            "detour": float(np.linalg.norm(s, axis=1).sum() / np.linalg.norm(path[-1] - path[0]))}


def descent_path(w0, lr, alpha, noise):
    """Polyak's ``m <- alpha m - lr (g + noise_k); w <- w + m`` (``alpha = 0``: gradient descent)."""
    def step(carry, xi):
        w, m = carry
        m = alpha * m - lr * (jax.grad(_common.tiny_loss)(w) + xi)
        return (w + m, m), w + m

    return jnp.concatenate([w0[None], lax.scan(step, (w0, jnp.zeros_like(w0)), noise)[1]])


def newton_path(w0, num: int, damping=None):
    """Newton's ``w <- w - H^-1 g`` (``damping`` None) or saddle-free Newton's ``w <- w - |H|^-1 g``."""
    def step(w, _):
        H, g = hessian(w), jax.grad(_common.tiny_loss)(w)
        w = w - (jnp.linalg.solve(H, g) if damping is None
                 else critical.saddle_free_newton_direction(H, g, damping=damping))
        return w, w

    return jnp.concatenate([w0[None], lax.scan(step, w0, None, length=num)[1]])


def main(config: Config, out_dir) -> dict:
    slow, fast = config.gd_steps
    n, dtype = config.num_steps, jnp.zeros(()).dtype

    # ---- one program: every path from the lecture's start, GD and Newton from a grid of starts, and the
    # landscape: loss, smallest eigenvalue, and the slope g . H^-1 g of Newton's step -H^-1 g (< 0: it climbs)
    @_common.small_jit
    def run(w0, starts, pts, key):
        zero, alphas = jnp.zeros((n, 2), w0.dtype), jnp.asarray(config.momenta, w0.dtype)
        noise = config.noise_std * jax.random.normal(key, (config.noise_chains, n, 2), w0.dtype)
        heavy = jax.vmap(lambda a, xi: descent_path(w0, config.momentum_lr, a, xi), (0, None))
        H, g = jax.vmap(hessian)(pts), jax.vmap(jax.grad(_common.tiny_loss))(pts)
        return {"gd_slow": descent_path(w0, slow, 0.0, zero), "gd_fast": descent_path(w0, fast, 0.0, zero),
                "newton": newton_path(w0, n), "saddle_free": newton_path(w0, n, config.sfn_damping),
                "momenta": heavy(alphas, zero), "noisy": jax.vmap(heavy, (None, 0), 1)(alphas, noise),
                "grid_gd": jax.vmap(lambda w: descent_path(w, slow, 0.0, zero))(starts),
                "grid_newton": jax.vmap(lambda w: newton_path(w, n))(starts),
                "loss": jax.vmap(_common.tiny_loss)(pts), "lambda_min": jnp.linalg.eigvalsh(H)[:, 0],
                "slope": jnp.einsum("pi,pi->p", g, jnp.linalg.solve(H, g[:, :, None])[:, :, 0]),
                "at_min": jnp.linalg.eigvalsh(hessian(jnp.full(2, W_MIN, w0.dtype)))}

    starts, pts = (np.stack(np.meshgrid(t, t), -1).reshape(-1, 2) for t in (  # point i * len(t) + j: (t[j], t[i])
        np.linspace(-0.9, 0.9, config.oscillation_starts) * config.span + 0.05,  # starts off the symmetry lines
        np.linspace(-config.span, config.span, config.grid)))
    out = run(*(jnp.asarray(a, dtype) for a in (config.start, starts, pts)), jax.random.PRNGKey(config.seed))
    traj = {k: np.asarray(v, np.float64) for k, v in out.items()}
    at = config.momenta.index(config.momentum)
    noisy = traj["noisy"][at]
    paths = {**{k: traj[k] for k in ("gd_slow", "gd_fast", "newton", "saddle_free")}, "momentum": traj["momenta"][at],
             "noisy_momentum": noisy[0]}
    steps = {name: steps_to_reach(p, config.reach_tol) for name, p in paths.items()}
    at_min, shape = traj["at_min"], (config.grid, config.grid)
    grid = {"loss": np.round(traj["loss"], 5).reshape(shape), "lambda_min": np.round(traj["lambda_min"], 5).reshape(
        shape), "newton_uphill": (traj["slope"] < 0).astype(np.int8).reshape(shape)}  # rounded: only drawn
    indefinite, uphill = grid["lambda_min"] < 0, grid["newton_uphill"].astype(bool)

    # ---- named results
    late = np.diff(traj["gd_fast"][-51:], axis=0)  # past the limit: a 2-cycle across the minimum
    flips = float(np.mean(np.sum(late[:-1] * late[1:], axis=1) < 0))
    fast_closest = float(distance_to_minimum(traj["gd_fast"][n // 2:]).min())
    newton_end, uphill_share = float(np.linalg.norm(traj["newton"][-1])), float(uphill[indefinite].mean())
    osc = {name: oscillation(paths[name], config.reach_tol) for name in ("gd_slow", "gd_fast", "newton")}
    ok = np.all(np.isfinite(traj["grid_gd"]), axis=(1, 2)) & np.all(np.isfinite(traj["grid_newton"]), axis=(1, 2))
    grid_osc = {m: np.array([list(oscillation(p, config.reach_tol).values()) for p in traj[f"grid_{m}"][ok]])
                for m in ("gd", "newton")}
    fewer_zigzags, shorter = np.mean(grid_osc["newton"] < grid_osc["gd"], axis=0).tolist()
    sweep = []  # per alpha: noise-free steps to reach; noisy chains that blow up; the spread of the others
    for alpha, clean, chains in zip(config.momenta, traj["momenta"], traj["noisy"], strict=True):
        finite = np.all(np.isfinite(chains), axis=(1, 2))
        rms = float(np.sqrt(np.mean(distance_to_minimum(chains[finite][:, n // 2:]) ** 2))) if finite.any() else None
        lr, s = config.momentum_lr, config.noise_std  # quadratic model of heavy ball with gradient noise:
        pred = math.sqrt(sum(lr * s**2 * (1 + alpha) / (lam * (1 - alpha) * (2 * (1 + alpha) - lr * lam))
                             for lam in (LAMBDA_MIN, LAMBDA_MAX)))  # Var_i = lr s^2 (1+a) / (l (1-a) (2(1+a) - lr l))
        sweep.append({"alpha": alpha, "steps": steps_to_reach(clean, config.reach_tol),
                      "diverged": float(1 - finite.mean()), "rms": rms, "predicted": pred})
    mom = sweep[at]
    alt = config.momenta.index(0.8) if 0.8 in config.momenta else at  # the alpha an earlier version used
    ratio = (mom["rms"] or math.inf) / mom["predicted"]
    claim = _common.claim
    claims = [
        claim(f"gradient descent at {slow:g} is too slow: it needs more than {config.too_slow} steps to reach the "
              f"minimum (late on the error shrinks by only |1 - {slow:g} * {LAMBDA_MIN:g}| per step)", steps["gd_slow"],
              _common.above(steps["gd_slow"] or math.inf, config.too_slow)),
        claim(f"gradient descent at {fast:g} oscillates: it never reaches the minimum (closest approach over the "
              "second half above the reach tolerance), and its last 50 steps each reverse the one before (> 90%)",
              {"closest": fast_closest, "share of reversals": flips},
              _common.both(_common.above(fast_closest, config.reach_tol), _common.above(flips, 0.9))),
        claim(f"Newton's method oscillates less than gradient descent at {slow:g}: from the start it zig-zags less "
              "(consecutive steps > 90 degrees apart) along a shorter path (length / distance covered), and so it "
              f"does from most of a {config.oscillation_starts}x{config.oscillation_starts} grid of starts",
              {"from the start": osc, "grid: fraction with fewer zig-zags": fewer_zigzags,
               "grid: fraction with a shorter path": shorter, "grid starts (finite runs)": int(ok.sum())},
              _common.both(_common.below(osc["newton"]["zigzags"], osc["gd_slow"]["zigzags"]),
                           _common.below(osc["newton"]["detour"], osc["gd_slow"]["detour"]),
                           _common.above(fewer_zigzags, 0.5), _common.above(shorter, 0.5))),
        claim("Newton's method points the wrong way where the Hessian has a negative eigenvalue: from the start it "
              "converges to the saddle at the origin, and its step is uphill on part of that region",
              {"distance of its end to the saddle": newton_end, "uphill share of the indefinite region": uphill_share},
              _common.both(_common.below(newton_end, 1e-4), _common.above(uphill_share, 0.0))),
        claim(f"the wrong direction is solvable: saddle-free Newton (|H|^-1 g, |lambda| floored at "
              f"{config.sfn_damping:g}) reaches the minimum within the {n} steps", steps["saddle_free"],
              _common.below(steps["saddle_free"] or math.inf, n)),
        claim(f"momentum (lr {config.momentum_lr:g}, alpha {config.momentum:g}) reaches the minimum in fewer steps "
              f"than gradient descent at {slow:g}", {"momentum": mom["steps"], f"gd {slow:g}": steps["gd_slow"],
                                                     "at each alpha": {r["alpha"]: r["steps"] for r in sweep}},
              _common.below(mom["steps"] or math.inf, steps["gd_slow"] or math.inf)),
        claim(f"with a noisy gradient (std {config.noise_std:g}) momentum (alpha {config.momentum:g}) only hovers "
              "around the minimum: no chain blows up, at the spread the quadratic model predicts (RMS ratio 0.75-1.33)",
              {"share of chains that blow up": mom["diverged"], "rms ratio (finite chains)": ratio},
              _common.both((mom["diverged"] == 0, math.inf if mom["diverged"] == 0 else -mom["diverged"]),
                           _common.above(0 if math.isinf(ratio) else ratio, 0.75), _common.below(ratio, 1.33))),
    ]
    checks = [
        _common.check(f"0.25 < 2/lambda_max < 0.35 at the minimum (closed form lambda_max = {LAMBDA_MAX:g})",
                      {"lambda_max": at_min[-1], "2/lambda_max": 2 / at_min[-1]},
                      slow < 2 / at_min[-1] < fast and abs(at_min[-1] - LAMBDA_MAX) < 1e-4),
        _common.check("Newton's step is downhill wherever H is positive definite (g . H^-1 g > 0)",
                      float(uphill[~indefinite].mean()), not uphill[~indefinite].any()),
    ]
    results = {"start": list(config.start), "paths": paths, "momentum_08": traj["momenta"][alt],
               "noisy_final": noisy[:, -1], "steps_to_reach": steps, "momentum_sweep": sweep, "oscillation": osc,
               "oscillation_grid": {"starts": starts[ok], **grid_osc}, "grid": grid}
    notes = (
        f"Start {tuple(config.start)}, where H is indefinite; 'reach': within {config.reach_tol:g} of a minimum in "
        f"{n} steps; 'too slow' = more than {config.too_slow} steps is our reading of the slide. Newton converges "
        "to the saddle (it seeks any critical point); saddle-free Newton floors |lambda| at sfn_damping. Momentum "
        f"(Polyak, m <- alpha m - lr g, lr {config.momentum_lr:g}) at the usual alpha {config.momentum:g} takes "
        f"{mom['steps']} steps against {steps['gd_slow']} for gradient descent at {slow:g}: 'faster' is false here; "
        f"alpha {config.momenta[alt]:g}, which an earlier version chose so that it passed, takes "
        f"{sweep[alt]['steps']}. With gradient noise at alpha {config.momentum:g}, {mom['diverged']:.0%} of the "
        "chains overshoot into the steep walls early on and blow up; the rest hover at the predicted spread. The "
        "second figure shows both verdicts against alpha, and Newton's 'less oscillations' from a grid of starts: "
        "true from most, not all (where H is near-singular Newton's steps jump far out)."
    )
    return _common.save(NAME, config, results, claims, out_dir, checks=checks, notes=notes, plot=plot)


COLORS = dict(gd_slow="C0", gd_fast="C1", newton="C3", saddle_free="C4", momentum="C2", noisy_momentum="C5")


def plot(payload: dict, out_dir) -> None:
    plt = _common.style()
    from matplotlib.colors import LogNorm

    r, config = payload["results"], payload["config"]
    (slow, fast), alpha, span, steps = config["gd_steps"], config["momentum"], config["span"], r["steps_to_reach"]
    label = {"gd_slow": f"gradient descent, step {slow:g}", "gd_fast": f"gradient descent, step {fast:g}",
             "newton": "Newton", "saddle_free": "saddle-free Newton", "momentum": f"momentum, alpha {alpha:g}",
             "noisy_momentum": f"momentum {alpha:g}, noisy gradient"}
    g, ticks, surface = r["grid"], np.linspace(-span, span, config["grid"]), np.asarray(r["grid"]["loss"])

    fig, axes = plt.subplots(2, 3, figsize=(14, 9.6), layout="constrained")
    panels = [("gd_slow",), ("gd_fast",), ("newton", "saddle_free"), ("momentum",), ("noisy_momentum",)]
    for ax, names in zip(axes.ravel(), panels, strict=False):
        ax.contour(ticks, ticks, surface, levels=np.geomspace(surface.min() * 1.02, surface.max(), 18), norm=LogNorm(),
                   cmap="Greys_r", linewidths=0.7)
        if "newton" in names:
            ax.contourf(ticks, ticks, (np.asarray(g["lambda_min"]) < 0).astype(float), levels=[0.5, 1.5],
                        colors=["C3"], alpha=0.12)
            ax.contourf(ticks, ticks, np.asarray(g["newton_uphill"], float), levels=[0.5, 1.5], colors="none",
                        hatches=["////"])
        ax.plot([-W_MIN, W_MIN], [-W_MIN, W_MIN], "k*", [0], [0], "kX", ms=11, zorder=5)
        ax.plot(*r["start"], "o", color="k", mfc="w", ms=7, zorder=5)
        for name in names:
            p = np.asarray(r["paths"][name])
            p = p[np.all(np.abs(p) < 3 * span, axis=1)]
            reached = "never reaches the minimum" if steps[name] is None else f"reaches it in {steps[name]} steps"
            ax.plot(p[:, 0], p[:, 1], ".-", color=COLORS[name], ms=3, lw=1, label=f"{label[name]}: {reached}")
        if names == ("momentum",):
            ax.plot(*np.asarray(r["momentum_08"]).T, ":", color="k", lw=1, label="alpha 0.8 (dotted)")
        if names == ("noisy_momentum",):
            ax.plot(*np.asarray(r["noisy_final"]).T, "+", color="k", ms=6, label="final point of each noisy chain")
        ax.legend(loc="lower right", fontsize=7.5, framealpha=0.9)
        ax.set(xlim=(-span, span), ylim=(-span, span), xlabel="$w_1$", ylabel="$w_2$", aspect="equal", title=label[
            names[0]] + ("newton" in names) * " (red: H indefinite;\nhatched: Newton's step goes uphill)")
    ax = axes[1, 2]
    gd, nt = np.asarray(r["oscillation_grid"]["gd"]), np.asarray(r["oscillation_grid"]["newton"])
    ax.scatter(gd[:, 1], nt[:, 1], c=gd[:, 0] - nt[:, 0], cmap="coolwarm_r", vmin=-10, vmax=10, s=25, edgecolors="k",
               linewidths=0.4, label="a start (blue: Newton zig-zags less)")
    ax.plot(r["oscillation"]["gd_slow"]["detour"], r["oscillation"]["newton"]["detour"], "k*", ms=12,
            label="the lecture's start")
    top = max(gd[:, 1].max(), nt[:, 1].max()) * 1.2
    ax.plot([1, top], [1, top], "k--", lw=1, label="equal (below: Newton's path is straighter)")
    ax.set(xscale="log", yscale="log", xlim=(0.9, top), ylim=(0.9, top), xlabel=f"{label['gd_slow']}: path length "
           "/ distance", ylabel="Newton: path length / distance", title="Newton's 'less oscillations', grid of starts")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter("{x:g}")
    ax.tick_params(which="minor", labelleft=False, labelbottom=False)
    ax.legend(fontsize=7.5)
    fig.suptitle("$C = (w_1 w_2 - 1.5)^2 + 0.04(w_1^2 + w_2^2)$ from $(w_1, w_2) = $"
                 f"{tuple(r['start'])}; X = saddle, * = minima $\\pm\\sqrt{{1.46}}$ = {W_MIN:.3f}")
    _common.savefig(fig, out_dir, NAME)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), layout="constrained")
    sweep = r["momentum_sweep"]
    alphas = [s["alpha"] for s in sweep]
    ax = axes[0]
    ax.plot(alphas, [s["steps"] or np.nan for s in sweep], "o-", color="C2", label=f"lr {config['momentum_lr']:g}")
    ax.axhline(steps["gd_slow"] or np.nan, color="C0", ls="--", label=label["gd_slow"])
    ax.set(title="steps to reach the minimum against alpha (missing: never);\nmomentum is faster below the dashed line",
           xlabel="momentum alpha", ylabel="steps")
    ax = axes[1]
    ax.plot(alphas, [s["rms"] / s["predicted"] if s["rms"] else np.nan for s in sweep], "o-", color="C5",
            label="RMS distance / predicted (chains that stay finite)")
    ax.plot(alphas, [s["diverged"] for s in sweep], "s-", color="C3", label="share of chains that blow up")
    ax.axhspan(0.75, 1.33, color="C5", alpha=0.1, label="the claim's band 0.75-1.33")
    ax.set(title=f"momentum with a noisy gradient (std {config['noise_std']:g})", xlabel="momentum alpha",
           ylim=(-0.05, 1.6))
    for ax in axes:
        ax.axvline(alpha, color="k", ls=":", lw=1, label=f"the claims' alpha {alpha:g}")
        ax.legend(fontsize=8)
    _common.savefig(fig, out_dir, f"{NAME}_sweeps")


if __name__ == "__main__":
    raise SystemExit(_common.module_cli(__name__))
