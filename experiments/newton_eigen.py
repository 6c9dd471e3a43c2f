"""Eigenvalues of the Hessian (LeCun, Bottou, Orr & Mueller 1998, "Efficient BackProp", sec. 5).

Three parts:

1. LeCun's linear example: 100 points from two Gaussian classes centred at ``(-0.4, -0.8)`` and
   ``(0.4, 0.8)``, targets ``-1`` and ``+1``, a linear unit ``y = w . x`` (no bias) trained by batch gradient
   descent on ``E = 1/(2P) sum_p (d_p - w . x_p)^2``. Its Hessian is the input second-moment matrix
   ``<x x^T>``; the within-class noise is drawn and then standardised so that ``<x x^T> = m m^T + s^2 I``
   exactly (``m = (0.4, 0.8)``, ``s^2 = 0.036``): eigenvalues ``0.8 + s^2 = 0.836`` and ``0.036``, as in the
   paper. Gradient descent converges iff ``step < 2 / lambda_max = 2.39``: 2.3 converges, 2.5 diverges. The
   critical step is also measured by bisection on "the excess loss shrinks over N steps".
2. Centring: the same points shifted off the origin (by ``offset``) have a far larger condition number;
   subtracting the mean brings it back, and whitening (LeCun's full recipe: centre, decorrelate, equalise)
   brings it to 1. Gradient descent at its best constant step then needs fewer steps.
3. In the Hessian's eigenbasis gradient descent moves each direction by ``step * lambda_i`` times its distance
   to the minimum, Newton's method by exactly 1 ("Newton here is like gradient descent there"). Where an
   eigenvalue is negative, Newton's component ``-g_i / lambda_i`` points uphill and saddle-free Newton's
   ``-g_i / |lambda_i|`` (Dauphin et al. 2014) does not: shown on the lecture's toy loss
   ``C = (w1 w2 - 1.5)^2 + 0.04 (w1^2 + w2^2)`` and near the saddle at the origin of a small tanh network.

Everything runs in float64 (``jax.enable_x64``): the problems are tiny and the bisection is precise.

References:
    LeCun, Bottou, Orr & Mueller (1998), Efficient BackProp. In Neural Networks: Tricks of the Trade.
    Dauphin, Pascanu, Gulcehre, Cho, Ganguli & Bengio (2014), Identifying and attacking the saddle point
    problem in high-dimensional non-convex optimization.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.flatten_util import ravel_pytree

import analysis
from analysis import critical, spectrum
from experiments import _common
from fflab import mlp

NAME = "newton_eigen"
DESCRIPTION = ("Hessian eigenvalues set the step: LeCun's linear example diverges past 2/lambda_max, "
               "centring shrinks the condition number, Newton climbs negative curvature, saddle-free not")
SLIDE = "Eigenvalues of the Hessian H (LeCun et al., 1998); Newton's method points the wrong way"

CLASS_MEAN = (0.4, 0.8)  # the classes sit at -m and +m

@dataclass(frozen=True)
class Config:
    # LeCun's example
    n_points: int = 100
    noise_var: float = 0.036  # within-class variance per input: the small eigenvalue
    w0: tuple[float, float] = (-1.0, 2.0)
    steps_shown: tuple[float, ...] = (1.5, 2.3, 2.5)  # LeCun's 1.5 and 2.5, the lecture's 2.3
    gd_iters: int = 40  # iterations plotted
    bisect_iters: int = 2000  # N in "the excess loss shrinks over N steps"
    bisect_tol: float = 1e-6
    grid_iters: int = 200  # steps per point of the step-size scan (short: the distance stays above round-off)
    # centring
    offset: tuple[float, float] = (2.0, 2.0)  # shift that takes the inputs into the positive quadrant
    reach: float = 1e-8  # "converged": excess loss below reach * initial excess loss
    max_iters: int = 20000
    # toy loss point (second quadrant, where the Hessian is indefinite) and the small network's saddle
    toy_point: tuple[float, float] = (-1.5, 0.5)
    net_hidden: int = 3
    net_decay: float = 0.02
    perturb: float = 0.05  # distance from the saddle where the second-order methods start
    newton_iters: int = 25
    sfn_damping: float = 0.05
    gd_lr: float = 0.5
    seed: int = 0


QUICK = Config(bisect_iters=1000, max_iters=5000, newton_iters=15)
FULL = Config()


# --------------------------------------------------------------------------------------------------
# LeCun's linear example


def lecun_data(config: Config) -> tuple[np.ndarray, np.ndarray]:
    """``(x, d)``: ``x`` of shape ``(n, 2)`` with ``<x x^T> = m m^T + s^2 I`` exactly; ``d`` is -1 or +1."""
    n = config.n_points // 2
    z = np.asarray(jax.random.normal(jax.random.PRNGKey(config.seed), (2, n, 2), jnp.float64))
    m = np.asarray(CLASS_MEAN)
    xs = []
    for k, sign in enumerate((-1.0, 1.0)):
        e = z[k] - z[k].mean(axis=0)
        # Whiten the sample so its covariance is exactly s^2 I: the eigenvalues are then exactly LeCun's.
        chol = np.linalg.cholesky(e.T @ e / n)
        e = np.linalg.solve(chol, e.T).T
        xs.append(sign * m + np.sqrt(config.noise_var) * e)
    x = np.concatenate(xs)
    d = np.concatenate([-np.ones(n), np.ones(n)])
    return x, d


def linear_loss(w, x, d):
    """LeCun's ``E = 1/(2P) sum (d - w . x)^2``; its Hessian is ``<x x^T>``."""
    return 0.5 * jnp.mean(jnp.square(d - x @ w))


@_common.small_jit(static_argnames="num")
def gd_path(w0, step, x, d, *, num: int):
    """Batch gradient descent iterates ``(num + 1, 2)`` on :func:`linear_loss`."""

    def body(w, _):
        w = w - step * jax.grad(linear_loss)(w, x, d)
        return w, w

    _, ws = lax.scan(body, w0, None, length=num)
    return jnp.concatenate([w0[None], ws])


@_common.small_jit(static_argnames="num")
def _distance_ratio(w0, step, x, d, w_star, *, num: int):
    """``||w_N - w*|| / ||w_0 - w*||`` after ``num`` gradient steps (``inf`` once it overflows).

    The distance, not the excess loss, because ``E(w) - E*`` cancels to round-off near the minimum."""

    def body(w, _):
        return w - step * jax.grad(linear_loss)(w, x, d), None

    w, _ = lax.scan(body, w0, None, length=num)
    ratio = jnp.linalg.norm(w - w_star) / jnp.linalg.norm(w0 - w_star)
    return jnp.where(jnp.isfinite(ratio), ratio, jnp.inf)


def critical_step(x, d, w0, w_star, *, num: int, lo: float, hi: float, tol: float) -> float:
    """Bisection for the largest step at which the distance to the minimum shrinks over ``num`` steps."""
    args = (jnp.asarray(w0), jnp.asarray(x), jnp.asarray(d), jnp.asarray(w_star))

    def shrinks(step):
        return float(_distance_ratio(args[0], step, *args[1:], num=num)) < 1.0

    if not shrinks(lo) or shrinks(hi):
        raise ValueError(f"the bisection bracket [{lo}, {hi}] does not straddle the critical step")
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if shrinks(mid) else (lo, mid)
    return 0.5 * (lo + hi)


def _np_loss(w, x, d) -> np.ndarray:
    """:func:`linear_loss` on the host for ``w`` of shape ``(..., 2)``."""
    return 0.5 * np.mean(np.square(d - np.asarray(w) @ x.T), axis=-1)


def iterations_to_converge(x, d, w0, step, *, reach: float, max_iters: int) -> int | None:
    """Gradient steps until the excess loss is below ``reach`` times its start value (``None``: not within
    ``max_iters``)."""
    w_star = np.linalg.lstsq(x, d, rcond=None)[0]
    path = np.asarray(gd_path(jnp.asarray(w0), step, jnp.asarray(x), jnp.asarray(d), num=max_iters))
    excess = _np_loss(path, x, d) - _np_loss(w_star, x, d)
    hit = np.flatnonzero(excess < reach * excess[0])
    return int(hit[0]) if hit.size else None


def _second_moment(x) -> np.ndarray:
    return x.T @ x / x.shape[0]


def preprocessings(x: np.ndarray, offset) -> dict[str, np.ndarray]:
    """The inputs shifted off the origin, then centred, then whitened (centred, rotated, unit variances)."""
    shifted = x + np.asarray(offset)
    centred = shifted - shifted.mean(axis=0)
    lam, U = np.linalg.eigh(_second_moment(centred))
    whitened = (centred @ U) / np.sqrt(lam)
    return {"shifted": shifted, "centred": centred, "whitened": whitened}


# --------------------------------------------------------------------------------------------------
# Second-order directions in the eigenbasis


def eigen_steps(H, g, *, gd_step: float, sfn_damping: float | None = None) -> dict:
    """Per eigen-direction of ``H``: eigenvalue, gradient component, and the components of the gradient,
    Newton and saddle-free Newton steps (``-step g_i``, ``-g_i / lambda_i``, ``-g_i / |lambda_i|``), with the
    first-order loss change ``g_i * step_i`` of each (positive = uphill)."""
    lam, U = spectrum.eigh(H)
    g = np.asarray(g, np.float64)
    gi = U.T @ g
    newton, sfn = (-np.asarray(a) for a in _newton_directions(H, g, damping=sfn_damping))
    steps = {"gd": -gd_step * g, "newton": newton, "saddle_free": sfn}
    out = {"eigenvalues": lam, "gradient": gi, "eigenvectors": U}
    for name, s in steps.items():
        si = U.T @ s
        out[name] = si
        out[f"{name}_slope"] = gi * si  # directional derivative contributed by each direction
        out[f"{name}_total_slope"] = float(g @ s)
    return out


@_common.small_jit(static_argnames="damping")
def _newton_directions(H, g, *, damping):
    """Newton's and saddle-free Newton's directions of :mod:`analysis.critical`, as one compiled program
    (per shape) instead of a compiled dispatch for each of their operations."""
    return (critical.damped_newton_direction(H, g, 0.0),
            critical.saddle_free_newton_direction(H, g, damping=damping))


def _toy_hessian(w):
    return analysis.hessian(_common.tiny_loss, w)


_toy_grad = _common.small_jit(jax.grad(_common.tiny_loss))


def net_loss(params, x, d, decay):
    """``0.5 * mean (d - net(x))^2 + decay / 2 * ||theta||^2`` for a tanh network with one output."""
    out = mlp.apply(params, x, activation="tanh")[:, 0]
    flat = ravel_pytree(params)[0]
    return 0.5 * jnp.mean(jnp.square(d - out)) + 0.5 * decay * flat @ flat


@functools.cache
def _net_loss_fn(decay: float):
    """:func:`net_loss` at weight decay ``decay``, one object per value so that analysis reuses its
    compiled programs."""
    return functools.partial(net_loss, decay=decay)


def _net_saddle_params(config: Config):
    """The saddle at the origin: every weight and bias zero (the output bias is ``mean(d) / (1 + decay)``,
    zero for balanced classes), the network's analogue of the toy loss's ``w1 = w2 = 0``."""
    # Only the structure of an initialised network is needed: eval_shape draws (and compiles) nothing.
    shapes = jax.eval_shape(
        lambda: mlp.init(jax.random.PRNGKey(config.seed), [2, config.net_hidden, 1], init="glorot"))
    return jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes)


@_common.small_jit
def _net_value_and_grad(flat, unravel_template, x, d, decay):
    """:func:`net_loss` and its flat gradient at the flat parameters ``flat``."""
    unravel = ravel_pytree(unravel_template)[1]
    return jax.value_and_grad(lambda w: net_loss(unravel(w), x, d, decay))(flat)


SECOND_ORDER = ("newton", "saddle_free")


@_common.small_jit(static_argnames=("second_order", "num", "sfn_damping"))
def _net_paths(flat0, unravel_template, x, d, decay, sfn_damping, lr, *, second_order: bool, num: int):
    """``num`` steps from ``flat0``: the last point and the ``num + 1`` losses along the way.

    ``second_order=False``: gradient descent at rate ``lr``. ``second_order=True``: Newton's method and
    saddle-free Newton's (damping ``sfn_damping``) side by side, one row each in the order of
    :data:`SECOND_ORDER`. Vmapped over the method (each row forms both directions and keeps its own, which
    costs nothing at this size), they trace and compile one Hessian and eigendecomposition, not two programs.
    """
    unravel = ravel_pytree(unravel_template)[1]

    def f(flat):
        return net_loss(unravel(flat), x, d, decay)

    def gd(w, _):
        return w - lr * jax.grad(f)(w), f(w)

    def path(w0, saddle_free=None):
        def newton(w, _):
            g, H = jax.grad(f)(w), jax.hessian(f)(w)
            step = jnp.where(saddle_free, critical.saddle_free_newton_direction(H, g, damping=sfn_damping),
                             critical.damped_newton_direction(H, g, 0.0))
            return w - step, f(w)

        w, losses = lax.scan(gd if saddle_free is None else newton, w0, None, length=num)
        return w, jnp.concatenate([losses, f(w)[None]])

    if not second_order:
        return path(flat0)
    return jax.vmap(path, in_axes=(None, 0))(flat0, jnp.asarray([False, True]))


# --------------------------------------------------------------------------------------------------


def main(config: Config, out_dir) -> dict:
    with jax.enable_x64(True):
        results, claims, notes = _run(config)
    payload = _common.save(NAME, config, results, claims, out_dir, notes=notes)
    plot(payload, out_dir)
    return payload


def _run(config: Config):
    # ---- 1. LeCun's example
    x, d = lecun_data(config)
    H = np.asarray(analysis.hessian(linear_loss, jnp.zeros(2), jnp.asarray(x), jnp.asarray(d)))
    lam = spectrum.eigenvalues(H)
    limit = 2 / lam[-1]
    w_star = np.linalg.solve(H, x.T @ d / len(d))
    w0 = np.asarray(config.w0, np.float64)
    measured = critical_step(x, d, w0, w_star, num=config.bisect_iters, lo=0.5 * limit, hi=1.5 * limit,
                             tol=config.bisect_tol)
    paths = {f"{s:g}": np.asarray(gd_path(jnp.asarray(w0), s, jnp.asarray(x), jnp.asarray(d),
                                          num=config.gd_iters)) for s in config.steps_shown}
    e_star = float(_np_loss(w_star, x, d))
    curves = {k: _np_loss(p, x, d) - e_star for k, p in paths.items()}
    grid_steps = np.linspace(0.5 * limit, 1.25 * limit, 61)
    ratio_of = jax.vmap(functools.partial(_distance_ratio, num=config.grid_iters),
                        in_axes=(None, 0, None, None, None))
    grid_ratio = np.asarray(ratio_of(jnp.asarray(w0), jnp.asarray(grid_steps), jnp.asarray(x), jnp.asarray(d),
                                     jnp.asarray(w_star)))

    # ---- 2. centring
    prep = {"LeCun (as given)": x, **preprocessings(x, config.offset)}
    cond = {}
    for name, xp in prep.items():
        Hp = np.asarray(analysis.hessian(linear_loss, jnp.zeros(2), jnp.asarray(xp), jnp.asarray(d)))
        lp = spectrum.eigenvalues(Hp)
        best = 2 / (lp[0] + lp[-1])  # the constant step with the fastest worst-case rate
        cond[name] = {"eigenvalues": lp, "condition": spectrum.condition_number(lp), "best_step": best,
                      "iterations": iterations_to_converge(xp, d, np.zeros(2), best, reach=config.reach,
                                                           max_iters=config.max_iters)}

    # ---- 3a. eigenbasis of LeCun's quadratic: GD moves direction i by step * lambda_i of the way
    step_hi = max(s for s in config.steps_shown if s < limit)
    lam_l, U_l = spectrum.eigh(H)
    delta = U_l.T @ (w0 - w_star)
    g0 = H @ (w0 - w_star)
    lin = eigen_steps(H, g0, gd_step=step_hi)
    fraction = {"gd": -lin["gd"] / delta, "newton": -lin["newton"] / delta}

    # ---- 3b. the toy loss at an indefinite point
    wt = jnp.asarray(config.toy_point, jnp.float64)
    Ht, gt = np.asarray(_toy_hessian(wt)), np.asarray(_toy_grad(wt))
    toy = eigen_steps(Ht, gt, gd_step=0.1)

    # ---- 3c. the small network's saddle
    xj, dj = jnp.asarray(x), jnp.asarray(d)
    saddle = _net_saddle_params(config)  # numpy leaves: host arithmetic on them compiles nothing
    loss_fn = _net_loss_fn(config.net_decay)
    found = critical.find_critical_point(
        loss_fn, jax.tree_util.tree_map(lambda a: a + 1e-3, saddle), xj, dj, max_iter=50)
    Hs = np.asarray(analysis.hessian(loss_fn, saddle, xj, dj))
    lam_s = spectrum.eigenvalues(Hs)
    flat_s, unravel = ravel_pytree(saddle)
    flat_s = np.asarray(flat_s)
    saddle_loss, g_saddle = _net_value_and_grad(flat_s, saddle, xj, dj, config.net_decay)
    saddle_loss = float(saddle_loss)
    kind = critical.classify(lam_s, grad_norm=float(np.linalg.norm(np.asarray(g_saddle))))
    direction = np.asarray(jax.random.normal(jax.random.PRNGKey(config.seed + 1), flat_s.shape, jnp.float64))
    start = flat_s + config.perturb * direction / np.linalg.norm(direction)
    g_start = np.asarray(_net_value_and_grad(start, saddle, xj, dj, config.net_decay)[1])
    H_start = np.asarray(analysis.hessian(loss_fn, unravel(start), xj, dj))
    net = eigen_steps(H_start, g_start, gd_step=config.gd_lr, sfn_damping=config.sfn_damping)
    args = (start, saddle, xj, dj, config.net_decay, config.sfn_damping, config.gd_lr)
    w_end, losses = map(np.asarray, _net_paths(*args, second_order=True, num=config.newton_iters))
    runs = {method: {"loss": losses[i], "end_distance": float(np.linalg.norm(w_end[i] - flat_s))}
            for i, method in enumerate(SECOND_ORDER)}
    w_end, losses = map(np.asarray, _net_paths(*args, second_order=False, num=10 * config.newton_iters))
    runs["gd"] = {"loss": losses, "end_distance": float(np.linalg.norm(w_end - flat_s))}

    results = {
        "lecun": {
            "x": np.round(x, 5), "d": d, "hessian": H, "eigenvalues": lam, "2/lambda_max": limit,
            "critical_step": measured, "w_star": w_star, "w0": w0, "paths": paths, "excess_loss": curves,
            "grid_steps": grid_steps, "grid_ratio": grid_ratio,
        },
        "centring": cond,
        "eigenbasis_linear": {"eigenvalues": lam_l, "gd_step": step_hi, "fraction": fraction},
        "toy": {"point": list(config.toy_point), **{k: v for k, v in toy.items() if k != "eigenvectors"},
                "eigenvectors": toy["eigenvectors"]},
        "net": {"sizes": [2, config.net_hidden, 1], "saddle_loss": saddle_loss,
                "eigenvalues_at_saddle": lam_s,
                "kind": kind.kind, "index": kind.index, "found": {
                    "converged": found.converged, "loss": found.loss, "grad_norm": found.grad_norm,
                    "distance": float(jnp.linalg.norm(ravel_pytree(found.params)[0] - flat_s))},
                "start": {k: v for k, v in net.items() if k != "eigenvectors"},
                "runs": runs},
    }

    shifted, centred, whitened = (cond[k]["condition"] for k in ("shifted", "centred", "whitened"))
    it = {k: cond[k]["iterations"] for k in cond}
    neg_t = toy["eigenvalues"] < 0
    neg_n = net["eigenvalues"] < 0
    claims = [
        _common.claim(
            "LeCun's inputs: Hessian (input second-moment) eigenvalues about 0.84 and 0.036",
            {"eigenvalues": lam}, abs(lam[-1] - 0.84) < 0.01 and abs(lam[0] - 0.036) < 0.005),
        _common.claim(
            "batch gradient descent converges at step 2.3 and diverges at 2.5: 2.3 < 2/lambda_max < 2.5",
            {"2/lambda_max": limit, "excess loss after the plotted steps":
                {k: v[-1] for k, v in curves.items()}},
            2.3 < limit < 2.5 and curves["2.3"][-1] < curves["2.3"][0]
            and curves["2.5"][-1] > curves["2.5"][0]),
        _common.claim(
            f"the measured critical step (bisection on 'the distance to the minimum shrinks over "
            f"{config.bisect_iters} steps') is 2/lambda_max (within 0.5%)",
            {"measured": measured, "2/lambda_max": limit, "relative difference": measured / limit - 1},
            abs(measured / limit - 1) < 5e-3),
        _common.claim(
            f"centring the inputs shrinks the condition number (inputs shifted by {config.offset} vs "
            "centred; whitened for reference), and gradient descent at its best step converges in fewer "
            "steps",
            {"condition": {k: cond[k]["condition"] for k in cond}, "iterations": it},
            centred < shifted and whitened < centred and abs(whitened - 1) < 1e-8
            and it["centred"] is not None and (it["shifted"] is None or it["centred"] < it["shifted"])),
        _common.claim(
            f"in the eigenbasis gradient descent (step {step_hi:g}) covers step * lambda_i of the distance "
            "to the minimum per direction, Newton all of it",
            {"gd": fraction["gd"], "step * lambda": step_hi * lam_l, "newton": fraction["newton"]},
            np.allclose(fraction["gd"], step_hi * lam_l, rtol=1e-8) and np.allclose(fraction["newton"], 1,
                                                                                   rtol=1e-8)),
        _common.claim(
            f"toy loss at {config.toy_point}: where an eigenvalue is negative Newton's step points uphill "
            "along it, saddle-free Newton's does not",
            {"eigenvalues": toy["eigenvalues"], "newton slope per direction": toy["newton_slope"],
             "saddle-free slope per direction": toy["saddle_free_slope"],
             "total slope": {"newton": toy["newton_total_slope"],
                             "saddle_free": toy["saddle_free_total_slope"]}},
            bool(neg_t.any() and np.all(toy["newton_slope"][neg_t] > 0)
                 and np.all(toy["saddle_free_slope"] < 0))),
        _common.claim(
            f"a tanh network {[2, config.net_hidden, 1]} has a saddle with all weights zero; near it "
            "Newton's components along negative eigenvalues point uphill, saddle-free Newton's downhill",
            {"kind": kind.kind, "index": kind.index, "n_negative at start": int(neg_n.sum()),
             "newton slope (negative directions)": net["newton_slope"][neg_n],
             "saddle-free slope (negative directions)": net["saddle_free_slope"][neg_n]},
            kind.kind == "saddle" and kind.is_critical and bool(neg_n.any())
            and np.all(net["newton_slope"][neg_n] > 0) and np.all(net["saddle_free_slope"] <= 0)),
        _common.claim(
            f"started {config.perturb:g} from that saddle, Newton's method converges back to it; saddle-free "
            "Newton escapes to a lower loss",
            {"saddle loss": saddle_loss,
             "final loss": {k: float(v["loss"][-1]) for k, v in runs.items()},
             "final distance to the saddle": {k: v["end_distance"] for k, v in runs.items()}},
            runs["newton"]["end_distance"] < 1e-8 and runs["saddle_free"]["loss"][-1] < saddle_loss - 0.05),
    ]
    notes = (
        "LeCun's data are drawn, then each class's noise is standardised so the inputs' second moment is "
        "exactly m m^T + 0.036 I (eigenvalues 0.836 and 0.036); the loss is E = 1/(2P) sum (d - w.x)^2, so "
        "the Hessian is <x x^T> and GD diverges past 2/lambda_max = 2.39. LeCun's two classes are centred "
        f"already (means +-(0.4, 0.8)), so the centring part shifts them by {config.offset} first (a shift "
        "along the classes' axis raises the condition number, one across it can lower it: the mean adds the "
        "rank-one term c c^T to the Hessian); the linear unit has no bias, as in LeCun's figure. The "
        "network's saddle: 0.5 * MSE on the same points plus "
        f"{config.net_decay:g}/2 ||theta||^2, all parameters zero; saddle-free Newton floors |lambda| at "
        f"{config.sfn_damping:g}. Float64 throughout."
    )
    return results, claims, notes


# --------------------------------------------------------------------------------------------------


def plot(payload: dict, out_dir) -> None:
    plt = _common.style()
    r = payload["results"]
    lc = r["lecun"]
    x, d = np.asarray(lc["x"]), np.asarray(lc["d"])
    H = np.asarray(lc["hessian"])
    w_star = np.asarray(lc["w_star"])
    limit = lc["2/lambda_max"]

    fig, axes = plt.subplots(2, 2, figsize=(11, 9.5), layout="constrained")
    ax = axes[0, 0]
    ax.scatter(*x[d < 0].T, s=12, label="class -1")
    ax.scatter(*x[d > 0].T, s=12, label="class +1")
    lam, U = np.linalg.eigh(H)
    for k in range(2):
        v = U[:, k] * np.sqrt(lam[k]) * 1.5
        ax.annotate("", xy=v, xytext=(0, 0), arrowprops={"arrowstyle": "->", "color": "k", "lw": 1.5})
        ax.text(*(v * 1.15), f"$\\lambda$ = {lam[k]:.3f}", fontsize=8)
    ax.set(title="LeCun's inputs and the Hessian's eigenvectors\n(arrows $\\propto \\sqrt{\\lambda}$)",
           xlabel="$x_1$", ylabel="$x_2$", aspect="equal")
    ax.legend(fontsize=8)

    ax = axes[0, 1]
    paths = {k: np.asarray(v) for k, v in lc["paths"].items()}
    allw = np.concatenate([p[: min(len(p), 12)] for p in paths.values()])
    lo, hi = allw.min(axis=0) - 0.5, allw.max(axis=0) + 0.5
    g1, g2 = np.meshgrid(np.linspace(lo[0], hi[0], 150), np.linspace(lo[1], hi[1], 150))
    W = np.stack([g1.ravel(), g2.ravel()], 1)
    E = 0.5 * np.mean((d[None, :] - W @ x.T) ** 2, axis=1).reshape(g1.shape)
    ax.contour(g1, g2, E, levels=np.quantile(E, np.linspace(0.01, 0.9, 14)), colors="0.7", linewidths=0.8)
    for i, (k, p) in enumerate(paths.items()):
        n = 12 if float(k) > limit else 30
        ax.plot(*p[:n].T, ".-", ms=4, color=f"C{i}", label=f"step {k}")
    ax.plot(*w_star, "k*", ms=12)
    ax.set(xlim=(lo[0], hi[0]), ylim=(lo[1], hi[1]), xlabel="$w_1$", ylabel="$w_2$",
           title=f"batch gradient descent from {tuple(lc['w0'])}")
    ax.legend(fontsize=8)

    ax = axes[1, 0]
    for i, (k, c) in enumerate(lc["excess_loss"].items()):
        ax.semilogy(np.maximum(np.asarray(c, float), 1e-30), ".-", ms=3, color=f"C{i}",
                    label=f"step {k}" + (" (> 2/$\\lambda_{max}$)" if float(k) > limit else ""))
    ax.set(title="excess loss $E(w_k) - E^*$", xlabel="iteration", ylabel="$E - E^*$")
    ax.legend(fontsize=8)

    ax = axes[1, 1]
    steps = np.asarray(lc["grid_steps"])
    n = payload["config"]["grid_iters"]
    ratio = np.asarray([float(v) for v in lc["grid_ratio"]])
    with np.errstate(divide="ignore"):
        factor = np.exp(np.log(ratio) / n)  # geometric-mean change of the distance per step
    ax.plot(steps, factor, "C0.", ms=5, label=f"measured over {n} steps")
    lam_all = np.asarray(lc["eigenvalues"])
    fine = np.linspace(steps[0], steps[-1], 400)
    ax.plot(fine, np.max(np.abs(1 - fine[:, None] * lam_all[None, :]), axis=1), "k-", lw=1,
            label="max$_i |1 - $step$\\, \\lambda_i|$")
    ax.axvline(limit, color="k", ls="--", lw=1.2, label=f"2/$\\lambda_{{max}}$ = {limit:.4f}")
    ax.axvline(lc["critical_step"], color="C3", ls=":", lw=1.5, label=f"bisection: {lc['critical_step']:.4f}")
    ax.axhline(1, color="0.5", lw=0.8)
    ax.set(title="distance to $w^*$: change per step (geometric mean)", xlabel="step size",
           ylabel="$(\\|w_N - w^*\\| / \\|w_0 - w^*\\|)^{1/N}$")
    ax.legend(fontsize=8)
    fig.suptitle("LeCun et al. (1998): a linear unit on two Gaussian classes; "
                 "gradient descent diverges past 2/$\\lambda_{max}$")
    _common.savefig(fig, out_dir, NAME)

    # ---- centring and eigenbasis figure
    fig, axes = plt.subplots(2, 2, figsize=(11, 9.5), layout="constrained")
    ax = axes[0, 0]
    cond = r["centring"]
    names = list(cond)
    vals = [cond[k]["condition"] for k in names]
    bars = ax.bar(range(len(names)), vals, color=[f"C{i}" for i in range(len(names))])
    for b, k in zip(bars, names, strict=True):
        it = cond[k]["iterations"]
        ax.text(b.get_x() + b.get_width() / 2, b.get_height() * 1.1,
                f"$\\kappa$ = {b.get_height():.3g}\n{it if it is not None else '>max'} GD steps",
                ha="center", fontsize=8)
    ax.set_yscale("log")
    ax.set(xticks=range(len(names)), xticklabels=names,
           ylabel="condition number $\\lambda_{max}/\\lambda_{min}$",
           title=f"centring the inputs (shifted by {tuple(payload['config']['offset'])}) shrinks $\\kappa$\n"
                 f"(GD steps at 2/($\\lambda_{{min}}+\\lambda_{{max}}$) until the excess loss falls by "
                 f"{payload['config']['reach']:g})", ylim=(0.5, max(vals) * 20))

    ax = axes[0, 1]
    eb = r["eigenbasis_linear"]
    lam_l = np.asarray(eb["eigenvalues"])
    pos = np.arange(len(lam_l))
    ax.bar(pos - 0.2, eb["fraction"]["gd"], 0.4, label=f"gradient descent, step {eb['gd_step']:g}")
    ax.bar(pos + 0.2, eb["fraction"]["newton"], 0.4, label="Newton")
    ax.axhline(2, color="k", ls=":", lw=1, label="2: the stability limit")
    ax.set(xticks=pos, xticklabels=[f"$\\lambda$ = {v:.3f}" for v in lam_l],
           ylabel="fraction of the distance to $w^*$ covered in one step",
           title="LeCun's quadratic in the Hessian's eigenbasis:\n"
                 "GD moves direction i by step x $\\lambda_i$, Newton by 1")
    ax.legend(fontsize=8)

    ax = axes[1, 0]
    toy = r["toy"]
    span = np.linspace(-2.5, 2.5, 201)
    a, b = np.meshgrid(span, span)
    C = (a * b - _common.TINY_TARGET) ** 2 + _common.TINY_DECAY * (a**2 + b**2)
    ax.contour(a, b, C, levels=np.geomspace(0.02, 30, 16), colors="0.7", linewidths=0.8)
    p = np.asarray(toy["point"])
    Ut = np.asarray(toy["eigenvectors"])
    gt = Ut @ np.asarray(toy["gradient"])
    for name, color, label in (("newton", "C3", "Newton $-H^{-1}g$"),
                               ("saddle_free", "C2", "saddle-free $-|H|^{-1}g$")):
        s = Ut @ np.asarray(toy[name])
        ax.annotate("", xy=p + s, xytext=p, arrowprops={"arrowstyle": "->", "color": color, "lw": 2})
        ax.plot([], [], color=color, lw=2, label=label)
    s = -gt / np.linalg.norm(gt) * 0.8
    ax.annotate("", xy=p + s, xytext=p, arrowprops={"arrowstyle": "->", "color": "C0", "lw": 2})
    ax.plot([], [], color="C0", lw=2, label="$-g$ (scaled)")
    for k, lam_k in enumerate(toy["eigenvalues"]):
        v = Ut[:, k] * 0.6
        ax.plot(*np.stack([p - v, p + v]).T, "k--" if lam_k < 0 else "k-", lw=1)
    ax.plot(0, 0, "kx", ms=9)
    w_min = (_common.TINY_TARGET - _common.TINY_DECAY) ** 0.5
    ax.plot([w_min, -w_min], [w_min, -w_min], "k*", ms=10)
    ax.set(aspect="equal", xlim=(-2.5, 2.5), ylim=(-2.5, 2.5), xlabel="$w_1$", ylabel="$w_2$",
           title=f"toy loss at {tuple(toy['point'])}: eigenvalues "
                 f"{', '.join(f'{v:.2f}' for v in toy['eigenvalues'])}\n(dashed: the negative eigenvector)")
    ax.legend(fontsize=8, loc="lower right")

    ax = axes[1, 1]
    net = r["net"]
    for name, color, label in (("newton", "C3", "Newton"), ("saddle_free", "C2", "saddle-free Newton"),
                               ("gd", "C0", f"gradient descent, lr {payload['config']['gd_lr']:g}")):
        ax.plot(np.asarray(net["runs"][name]["loss"]), ".-" if name != "gd" else "-", ms=4, color=color,
                label=label)
    ax.axhline(net["saddle_loss"], color="k", ls=":", lw=1, label=f"saddle loss {net['saddle_loss']:.3f}")
    ax.set(title=f"tanh net {net['sizes']}: from {payload['config']['perturb']:g} off its saddle\n"
                 f"(index {net['index']:.2f}: {int(np.sum(np.asarray(net['eigenvalues_at_saddle']) < 0))} "
                 "negative eigenvalues)", xlabel="iteration", ylabel="loss")
    ax.legend(fontsize=8)
    fig.suptitle("Newton's method in the Hessian's eigenbasis: each direction gets step 1/$\\lambda_i$, "
                 "which climbs where $\\lambda_i < 0$")
    _common.savefig(fig, out_dir, f"{NAME}_eigenbasis")


if __name__ == "__main__":
    raise SystemExit(_common.module_cli(sys.modules[__name__]))
