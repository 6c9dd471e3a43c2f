"""Eigenvalues of the Hessian (LeCun, Bottou, Orr & Mueller 1998, "Efficient BackProp", sec. 5) and Newton's cost.

LeCun's linear unit on two Gaussian classes: GD diverges past 2 / lambda_max, centring shrinks the condition number,
and in the whitened coordinates u = Lambda^1/2 U^T (w - w*) the ellipses become circles and Newton's step is
gradient descent's. Near the zero saddle of a small tanh net Newton's method climbs back to it, saddle-free Newton
(Dauphin et al. 2014) escapes. The CPU time of a dense Newton step against the number of parameters P.
"""

import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.flatten_util import ravel_pytree
from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

import analysis
import fflab
from analysis import critical, spectrum
from experiments import _common
from fflab import mlp

NAME = "newton_eigen"
DESCRIPTION = "LeCun's Hessian eigenvalues: Newton here is GD there, 2/lambda_max, centring, saddles, Newton's cost"
SLIDE = "Eigenvalues of the Hessian H (LeCun et al., 1998); Newton's method, too complex (#params^3)"
PAPERS = {"LeCun et al. 1998": "http://yann.lecun.com/exdb/publis/pdf/lecun-98b.pdf",
          "Dauphin et al. 2014": "https://arxiv.org/abs/1406.2572"}
CLASS_MEAN, NOISE_VAR, N_POINTS = (0.4, 0.8), 0.036, 100  # LeCun's classes at -m and +m; the small eigenvalue
MNIST_SIZES = (784, 225, 144, 10)  # the lecture's example network, for the extrapolation of the cost


@dataclass(frozen=True)
class Config:
    w0: tuple[float, float] = (-1.0, 2.0)
    steps_shown: tuple[float, ...] = (1.5, 2.3, 2.5)  # LeCun's 1.5 and 2.5, and 2.3 just below the limit
    newton_rate: float = 0.5  # Newton's step times this, so that its path has more than one step to draw
    gd_iters: int = 40
    offset: tuple[float, float] = (2.0, 2.0)  # shift that takes the inputs into the positive quadrant
    reach: float = 1e-8  # "converged": excess loss below reach * initial excess loss
    max_iters: int = 20000
    net_hidden: int = 3
    net_decay: float = 0.02
    perturb: float = 0.05  # distance from the saddle where the second-order methods start
    newton_iters: int = 25
    sfn_damping: float = 0.05
    cost_hidden: tuple[int, ...] = (4, 8, 16, 24, 32, 48)  # 64-h-10 tanh MLPs: P = 75 h + 10
    cost_fit: int = 4  # the exponents are fitted over the largest cost_fit sizes
    cost_samples: int = 256
    cost_repeats: int = 3  # the best of these CPU times
    seed: int = 0


QUICK, FULL = Config(max_iters=5000, newton_iters=15, cost_hidden=(2, 4), cost_fit=2, cost_repeats=2), Config()


def lecun_data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(x, d)``: ``x`` of shape ``(100, 2)`` with ``<x x^T> = m m^T + 0.036 I`` exactly; ``d`` is -1 or +1."""
    z = np.asarray(jax.random.normal(jax.random.PRNGKey(seed), (2, N_POINTS // 2, 2), jnp.float64))
    e = [np.linalg.solve(np.linalg.cholesky(c.T @ c / len(c)), c.T).T for c in z - z.mean(1, keepdims=True)]  # cov I
    x = np.concatenate([s * np.asarray(CLASS_MEAN) + np.sqrt(NOISE_VAR) * c for s, c in zip((-1, 1), e, strict=True)])
    return x, np.repeat([-1.0, 1.0], N_POINTS // 2)


@_common.small_jit(static_argnames="num")
def gd_path(w0, step, x, d, *, num: int):
    """Batch gradient descent iterates ``(num + 1, 2)`` on LeCun's ``E = 1/(2P) sum (d - w . x)^2``."""
    def body(w, _):
        w = w - step * x.T @ (x @ w - d) / len(d)
        return w, w

    return jnp.concatenate([w0[None], lax.scan(body, w0, None, length=num)[1]])


def cpu_seconds(fn, repeats: int) -> float:
    """The least CPU time of ``repeats`` calls of ``fn``, after one untimed call (that compiles it)."""
    times = []
    for _ in range(repeats + 1):
        start = time.process_time()
        jax.block_until_ready(fn())
        times.append(time.process_time() - start)
    return min(times[1:])


def loglog_fit(p, t) -> tuple[float, float]:
    """Slope of ``log t`` against ``log p`` by least squares, and its standard error (nan for two points)."""
    lp, lt = np.log(np.asarray(p, float)), np.log(np.asarray(t, float))
    (slope, icpt), dof = np.polyfit(lp, lt, 1), len(lp) - 2
    se = np.sqrt(np.sum((lt - slope * lp - icpt) ** 2) / dof / np.sum((lp - lp.mean()) ** 2)) if dof else np.nan
    return float(slope), float(se)


@jax.enable_x64(True)  # the problems are tiny and the checks precise
def main(config: Config, out_dir) -> dict:
    # ---- 1. LeCun's example: the Hessian <x x^T>, and gradient descent at the shown steps
    x, d = lecun_data(config.seed)
    xj, dj, w0 = jnp.asarray(x), jnp.asarray(d), np.asarray(config.w0, np.float64)
    H = x.T @ x / len(x)
    (lam, U), w_star = spectrum.eigh(H), np.linalg.solve(H, x.T @ d / len(d))
    limit = 2 / lam[-1]
    paths = {f"{s:g}": np.asarray(gd_path(jnp.asarray(w0), s, xj, dj, num=config.max_iters))[:config.gd_iters + 1]
             for s in config.steps_shown}
    growth = {k: float(np.linalg.norm(p[-1] - w_star) / np.linalg.norm(w0 - w_star)) for k, p in paths.items()}

    # ---- 2. centring: inputs shifted off the origin, then centred; GD at each one's best constant step
    cond = {}
    for name, xp in {"shifted": x + config.offset, "centred": x - x.mean(axis=0)}.items():  # centring undoes shifts
        lp, wp = np.linalg.eigvalsh(xp.T @ xp / len(xp)), np.linalg.lstsq(xp, d, rcond=None)[0]
        path = np.asarray(gd_path(jnp.zeros(2), 2 / (lp[0] + lp[-1]), jnp.asarray(xp), dj, num=config.max_iters))
        excess = 0.5 * np.mean((d - path @ xp.T) ** 2, axis=1) - 0.5 * np.mean((d - xp @ wp) ** 2)
        hit = np.flatnonzero(excess < config.reach * excess[0])
        cond[name] = {"eigenvalues": lp, "condition": lp[-1] / lp[0], "iterations": int(hit[0]) if hit.size else None}

    # ---- 3. whitened coordinates u = Lambda^1/2 U^T (w - w*): Newton at rate r in w, GD at rate r in u
    whiten = np.sqrt(lam)[:, None] * U.T
    newton, gd_u = [w0], [whiten @ (w0 - w_star)]  # GD on E(u) = E* + |u|^2 / 2, whose gradient is u
    for _ in range(config.gd_iters):
        newton.append(newton[-1] - config.newton_rate * np.linalg.solve(H, H @ (newton[-1] - w_star)))
        gd_u.append(gd_u[-1] - config.newton_rate * gd_u[-1])
    newton_u = (np.asarray(newton) - w_star) @ whiten.T
    step, g0, delta = max(s for s in config.steps_shown if s < limit), H @ (w0 - w_star), U.T @ (w0 - w_star)
    fraction = {"gd": U.T @ (step * g0) / delta, "newton": U.T @ np.linalg.solve(H, g0) / delta}  # of the distance

    # ---- 4. the tanh network's saddle (all parameters zero), and Newton / saddle-free Newton / GD from near it
    h = config.net_hidden
    flat_s, unravel = ravel_pytree([{"W": np.zeros((a, b)), "b": np.zeros(b)} for a, b in ((2, h), (h, 1))])
    direction = np.asarray(jax.random.normal(jax.random.PRNGKey(config.seed + 1), flat_s.shape, jnp.float64))
    start = flat_s + config.perturb * direction / np.linalg.norm(direction)

    def f(w):  # 0.5 * mean (d - net(x))^2 + decay / 2 * ||w||^2
        out = mlp.apply(unravel(w), xj, activation="tanh")[:, 0]
        return 0.5 * jnp.mean((dj - out) ** 2) + config.net_decay / 2 * w @ w

    @_common.small_jit
    def net_runs(w):
        def second_order(saddle_free):
            def body(w, _):
                Hw, g = jax.hessian(f)(w), jax.grad(f)(w)
                return w - (critical.saddle_free_newton_direction(Hw, g, damping=config.sfn_damping) if saddle_free
                            else critical.damped_newton_direction(Hw, g, 0.0)), f(w)
            return lax.scan(body, w, None, length=config.newton_iters)
        runs = {"newton": second_order(False), "saddle_free": second_order(True)}
        return ({k: (end, jnp.append(trace, f(end))) for k, (end, trace) in runs.items()},
                {p: (f(v), jax.grad(f)(v), jax.hessian(f)(v)) for p, v in (("saddle", flat_s), ("start", w))})

    runs, at = net_runs(jnp.asarray(start))
    runs = {k: {"loss": np.asarray(trace), "end_distance": float(np.linalg.norm(end - flat_s))}
            for k, (end, trace) in runs.items()}
    saddle_loss, lam_s = float(at["saddle"][0]), spectrum.eigenvalues(at["saddle"][2])
    kind = critical.classify(lam_s, grad_norm=float(np.linalg.norm(at["saddle"][1])))
    lam_0, U_0 = spectrum.eigh(at["start"][2])
    g_0 = U_0.T @ np.asarray(at["start"][1])  # per eigendirection: Newton's slope -g_i^2 / lambda_i
    slopes = {"newton": -g_0**2 / lam_0, "saddle_free": -g_0**2 / np.maximum(np.abs(lam_0), config.sfn_damping)}

    # ---- 5. Newton's cost: a dense Hessian and a (damped: the softmax makes H singular) LU solve, one BLAS thread
    loss, rng, n = fflab.classifier("tanh").loss_fn, np.random.default_rng(config.seed), config.cost_samples
    xc, yc = jnp.asarray(rng.normal(size=(n, 64))), jnp.asarray(rng.integers(0, 10, n))  # values cost nothing
    cost = []
    with threadpool_limits(limits=1, user_api="blas"):
        for hc in config.cost_hidden:
            params = [{"W": jnp.asarray(rng.normal(size=(a, b)) * fflab.init.std("glorot_relu", a, b)),
                       "b": jnp.zeros(b)} for a, b in ((64, hc), (hc, 10))]
            Hc = np.asarray(analysis.hessian(loss, params, xc, yc)) + 1e-3 * np.eye(75 * hc + 10)
            cost.append({"P": len(Hc), "hessian": cpu_seconds(lambda p=params: analysis.hessian(loss, p, xc, yc),
                                                              config.cost_repeats),
                         "solve": cpu_seconds(lambda H=Hc: np.linalg.solve(H, np.ones(len(H))), config.cost_repeats)})
    P = [c["P"] for c in cost]
    times = {k: [c["hessian"] * (k != "solve") + c["solve"] * (k != "hessian") for c in cost]
             for k in ("hessian", "solve", "step")}
    exponent = {k: loglog_fit(P[-config.cost_fit:], t[-config.cost_fit:]) for k, t in times.items()}
    windows = {f"largest {n}": loglog_fit(P[-n:], times["step"][-n:])[0] for n in range(2, len(P) + 1)}
    p_mnist = sum(a * b + b for a, b in zip(MNIST_SIZES[:-1], MNIST_SIZES[1:], strict=True))
    mnist_step = times["step"][-1] * (p_mnist / P[-1]) ** exponent["step"][0]

    # ---- claims and checks
    it = {k: v["iterations"] or np.inf for k, v in cond.items()}
    claim = _common.claim

    def cubic(name, **more):
        e, se = exponent[name]
        return {"exponent": e, "standard error": se, **more}, _common.both(_common.above(e, 2.5), _common.below(e, 3.5))

    claims = [
        claim(f"centring the inputs (shifted by {config.offset}) shrinks the condition number of the Hessian, and "
              "gradient descent at its best constant step converges in fewer steps (LeCun et al. 1998, sec. 4.3)",
              {"condition": {k: v["condition"] for k, v in cond.items()}, "iterations": it},
              _common.both(_common.below(cond["centred"]["condition"], cond["shifted"]["condition"]),
                           _common.below(it["centred"], it["shifted"]))),
        claim(f"Newton's method points the wrong way: started {config.perturb:g} from the saddle of a tanh network "
              f"[2, {h}, 1], it converges back to the saddle, while saddle-free Newton escapes to a lower loss",
              {"saddle loss": saddle_loss, "final loss": {k: v["loss"][-1] for k, v in runs.items()},
               "distance to the saddle": {k: v["end_distance"] for k, v in runs.items()}},
              _common.both(_common.below(runs["newton"]["end_distance"], 1e-8),
                           _common.below(runs["saddle_free"]["loss"][-1], saddle_loss))),
        claim(f"the solve in Newton's step costs #params^3: log-log exponent within 2.5-3.5 over the largest sizes, "
              f"P = {P[-config.cost_fit]}-{P[-1]}", *cubic("solve")),
        claim("so does the whole step, dense Hessian plus solve: exponent within 2.5-3.5",
              *cubic("step", by_fit_window=windows)),
        claim(f"prohibitive: one Newton step for the lecture's {'-'.join(map(str, MNIST_SIZES))} net (P = {p_mnist}) "
              "takes more than an hour of CPU (extrapolated with the measured exponent)",
              {"seconds": mnist_step, "H in float32 (GB)": 4 * p_mnist**2 / 1e9}, _common.above(mnist_step, 3600)),
    ]
    checks = [
        _common.check(f"gradient descent diverges past 2/lambda_max = {limit:.3f} (eigenvalues 0.036, 0.836 as built): "
                      f"after {config.gd_iters} steps at 2.3 it is closer to the minimum, at 2.5 farther", growth,
                      growth["2.3"] < 1 < growth["2.5"] and 2.3 < limit < 2.5),
        _common.check(f"in the eigenbasis one gradient step ({step:g}) covers step x lambda_i of the distance to the "
                      "minimum along direction i, Newton's all of it", fraction,
                      np.allclose(fraction["gd"], step * lam, rtol=1e-8) and np.allclose(fraction["newton"], 1)),
        _common.check(f"Newton here is gradient descent there: Newton's iterates (rate {config.newton_rate:g}) in the "
                      "whitened coordinates equal gradient descent's at that rate on the circles |u|^2 / 2",
                      float(np.max(np.abs(newton_u - np.asarray(gd_u)))), np.allclose(newton_u, gd_u, atol=1e-12)),
        _common.check(f"the tanh net's zero parameters are a saddle (index {kind.index:.3f}); near it Newton's step "
                      "climbs along each negative-curvature direction, saddle-free Newton's descends",
                      {k: v[lam_0 < 0] for k, v in slopes.items()}, kind.kind == "saddle" and kind.is_critical
                      and bool(np.all(slopes["newton"][lam_0 < 0] > 0) and np.all(slopes["saddle_free"] < 0))),
    ]
    results = {"lecun": {"x": np.round(x, 5), "d": d, "hessian": H, "eigenvalues": lam, "2/lambda_max": limit,
                         "w_star": w_star, "w0": w0, "paths": paths, "newton": np.asarray(newton), "newton_u": newton_u,
                         "paths_u": {k: (p - w_star) @ whiten.T for k, p in paths.items()}, "growth": growth},
               "centring": cond, "net": {"saddle_loss": saddle_loss, "eigenvalues_at_saddle": lam_s, "runs": runs,
               "index": kind.index}, "cost": {"rows": cost, "fit_P": P[-config.cost_fit:], "exponent": exponent,
               "mnist_P": p_mnist, "mnist_step": mnist_step}}
    notes = (
        "LeCun's inputs are standardised to his eigenvalues 0.836 and 0.036, so 2/lambda_max = 2.39 holds by "
        f"construction (checks); his classes are centred already, so the centring part shifts them by {config.offset} "
        f"first. The net's loss: 0.5 MSE plus {config.net_decay:g}/2 ||theta||^2. Newton's cost: best of "
        f"{config.cost_repeats} CPU times (one BLAS thread, float64) of analysis.hessian and numpy's LU solve for "
        f"64-h-10 tanh MLPs on {config.cost_samples} random inputs. LU takes 2/3 P^3 flops, the Hessian P products of "
        "O(N P) each: the step turns cubic only where the solve dominates; its exponent grows with the fit window's P.")
    return _common.save(NAME, config, results, claims, out_dir, checks=checks, notes=notes, plot=plot)


def plot(payload: dict, out_dir) -> None:
    plt, r, config = _common.style(), payload["results"], payload["config"]
    lc, rate, w_star = r["lecun"], config["newton_rate"], np.asarray(r["lecun"]["w_star"])

    # ---- LeCun's figure: ellipses in w, circles in u = Lambda^1/2 U^T (w - w*); the same paths on both
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.6), layout="constrained")
    for ax, u, centre, A in ((axes[0], "", w_star, np.asarray(lc["hessian"])), (axes[1], "_u", np.zeros(2), np.eye(2))):
        newton = np.asarray(lc["newton" + u])
        lo, hi = centre - 1.3 * np.max(np.abs(newton[0] - centre)), centre + 1.3 * np.max(np.abs(newton[0] - centre))
        g = np.stack(np.meshgrid(*(np.linspace(a, b, 200) for a, b in zip(lo, hi, strict=True))), -1) - centre
        level = np.einsum("...i,ij,...j->...", g, A, g) / 2  # E - E*
        ax.contour(g[..., 0] + centre[0], g[..., 1] + centre[1], level, colors="0.7", linewidths=0.8,
                   levels=np.geomspace(level.max() * 1e-3, level.max(), 12))
        for i, (k, p) in enumerate(lc["paths" + u].items()):
            ax.plot(*np.asarray(p)[:8 if float(k) > lc["2/lambda_max"] else 25].T, ".-", ms=4, lw=1, color=f"C{i}",
                    label=f"gradient descent in w, step {k}")
        ax.plot(*newton[:8].T, "s-", ms=5, lw=2, color="C3",
                label=f"Newton in w, rate {rate:g}" + bool(u) * f" = gradient descent in u, step {rate:g}")
        ax.plot(*centre, "k*", ms=12)
        ax.set(xlim=(lo[0], hi[0]), ylim=(lo[1], hi[1]), aspect="equal", xlabel=f"${'u' if u else 'w'}_1$",
               ylabel=f"${'u' if u else 'w'}_2$", title="... is like gradient descent there: u = $\\Lambda^{1/2} U^T "
               "(w - w^*)$, circles" if u else "Newton algorithm here: w, ellipses ($\\lambda$ = 0.036, 0.836)")
        ax.legend(fontsize=8, loc="lower left")
    fig.suptitle("LeCun et al. (1998): a linear unit on two Gaussian classes, before and after the change of variables")
    _common.savefig(fig, out_dir, f"{NAME}_eigenbasis")

    fig, axes = plt.subplots(1, 3, figsize=(16, 5), layout="constrained")
    cond = r["centring"]
    bars = axes[0].bar(range(len(cond)), [v["condition"] for v in cond.values()], color=["C1", "C0"])
    for b, v in zip(bars, cond.values(), strict=True):
        axes[0].text(b.get_x() + b.get_width() / 2, b.get_height() * 1.1, f"$\\kappa$ = {v['condition']:.3g}\n"
                     f"{v['iterations'] or '> max'} GD steps", ha="center", fontsize=9)
    axes[0].set(yscale="log", xticks=range(len(cond)), xticklabels=list(cond), ylim=(1, 1000), ylabel="$\\kappa = "
                "\\lambda_{max}/\\lambda_{min}$", title=f"centring the inputs (shifted by {tuple(config['offset'])}) "
                f"shrinks $\\kappa$\n(GD steps at the best constant step to excess loss x {config['reach']:g})")
    for name, color, label in (("newton", "C3", "Newton"), ("saddle_free", "C2", "saddle-free Newton")):
        axes[1].plot(r["net"]["runs"][name]["loss"], ".-", ms=4, color=color, label=label)
    axes[1].axhline(r["net"]["saddle_loss"], color="k", ls=":", lw=1, label=f"saddle {r['net']['saddle_loss']:.3f}")
    axes[1].set(title=f"tanh net [2, {config['net_hidden']}, 1] from {config['perturb']:g} off its saddle "
                      f"(index {r['net']['index']:.2f})", xlabel="iteration", ylabel="loss")
    cost = r["cost"]
    P, fit = np.array([c["P"] for c in cost["rows"]]), np.asarray(cost["fit_P"], float)
    for key, color, label in (("hessian", "C0", "dense Hessian"), ("solve", "C1", "LU solve"), ("step", "k", "step")):
        t = np.array([c["hessian"] * (key != "solve") + c["solve"] * (key != "hessian") for c in cost["rows"]])
        axes[2].loglog(P, t, "o-", color=color, label=f"{label}: exponent {cost['exponent'][key][0]:.2f} $\\pm$ "
                       f"{cost['exponent'][key][1] or np.nan:.2f}")  # None: a fit through two points
    axes[2].loglog(fit, t[-1] * (fit / fit[-1]) ** 3, "k:", lw=1, label="$\\propto P^3$")
    axes[2].axvspan(fit[0], fit[-1], color="0.9", zorder=0, label="fit range")
    axes[2].set(title=f"Newton's cost: CPU seconds per step (one BLAS thread)\nextrapolated to P = {cost['mnist_P']:,}:"
                      f" {cost['mnist_step'] / 3600:.3g} h", xlabel="number of parameters P", ylabel="CPU seconds")
    for ax in axes[1:]:
        ax.legend(fontsize=8)
    _common.savefig(fig, out_dir, NAME)


if __name__ == "__main__":
    raise SystemExit(_common.module_cli(__name__))
