"""Critical points of a small tanh MLP: saddles, their index and loss, and noise escaping them.

Lecture: "Theory: Local minima not an issue (Dauphin et al., 2014, Choromanska et al., 2015)". Following
Dauphin et al. (2014, fig. 1), minibatch SGD runs from random starts, points along each trajectory (the start
included) seed a root finder on ``grad = 0`` (:func:`analysis.critical.find_critical_point`, which converges
to saddles as readily as to minima), and each converged point gets its index, the fraction of negative
Hessian eigenvalues. Local minima come from the trained end of every trajectory: L-BFGS, then Newton polish.

The loss is softmax cross-entropy plus ``weight_decay / 2 * ||theta||^2`` on every parameter, so minima are
finite (cross-entropy alone drives separable data to infinite weights) and the Hessian is smooth (tanh).
Everything runs in float64: the index counts eigenvalues of size ~1e-4 next to ~1.

References:
    Dauphin, Pascanu, Gulcehre, Cho, Ganguli & Bengio (2014), Identifying and attacking the saddle point
    problem in high-dimensional non-convex optimization.
    Choromanska, Henaff, Mathieu, Ben Arous & LeCun (2015), The loss surfaces of multilayer networks.
    Ge, Huang, Jin & Yuan (2015), Escaping from saddle points: online stochastic gradient for tensor
    decomposition (noisy gradient descent escapes strict saddles).
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.flatten_util import ravel_pytree
from tqdm.auto import tqdm

import analysis
from experiments import _common
from fflab import data, losses, mlp, train

NAME = "saddle_points"
DESCRIPTION = ("Critical points of a small tanh MLP: the index rises with the loss, minima lie near the "
               "best, and gradient noise escapes a saddle that plain gradient descent stays on")
SLIDE = "Definitions / Theory: Local minima not an issue (Dauphin et al. 2014, Choromanska et al. 2015)"


@dataclass(frozen=True)
class Config:
    # Data: the synthetic teacher task (uniform inputs, labels from a random tanh teacher).
    dim: int = 6
    num_classes: int = 4
    n_train: int = 200
    teacher_width: int = 8
    # Student: a tanh MLP [dim, hidden, num_classes] with L2 on every parameter.
    hidden: int = 16
    weight_decay: float = 1e-2
    init_scale: float = 2.0
    # SGD trajectories whose points seed the critical-point search.
    trajectories: int = 8
    sgd_steps: int = 4000
    records: int = 10  # points per trajectory, geometrically spaced in steps, step 0 included
    sgd_lr: float = 0.3
    batch_size: int = 10
    # Root finding on grad = 0 and the trained minima.
    method: str = "gradnorm"
    max_iter: int = 200
    grad_tol: float = 1e-8
    lbfgs_steps: int = 400
    # Escape from a saddle: plain vs noisy full-batch gradient descent.
    escape_lr: float = 0.3
    # Steps = escape_efolds / (lr |lambda_min|): the unstable direction grows by e^escape_efolds, enough to
    # carry noise of size ~noise out of the saddle but not the ~1e-11 exact gradient left there.
    escape_efolds: float = 12.0
    escape_max_steps: int = 3000
    noise: float = 0.01
    noise_seeds: int = 4
    seed: int = 0


QUICK = Config(dim=5, num_classes=3, n_train=100, hidden=6, trajectories=4, sgd_steps=2000, records=6,
               lbfgs_steps=300, escape_max_steps=2500, noise_seeds=3)
FULL = Config()

SPEARMAN_P = 0.05  # significance required of the index-loss rank correlation
MINIMA_SPREAD_RATIO = 0.1  # "close to the best": minima spread below this share of all critical losses
PLAIN_STAYS = 1e-6  # plain GD "stays": its loss changes by less than this
NOISE_ESCAPES = 1e-3  # noisy GD "escapes": every seed lowers the loss by more than this


def _loss(params, x, y, weight_decay):
    """Mean cross-entropy of the tanh MLP plus ``weight_decay / 2 * ||theta||^2`` (biases included)."""
    logits = mlp.apply(params, x, activation="tanh")
    return losses.cross_entropy(logits, y) + weight_decay * losses.l2(params, weights_only=False)


@functools.partial(jax.jit, static_argnames=("steps",))
def _lbfgs(params, x, y, weight_decay, *, steps):
    """Full-batch L-BFGS (optax) from each start (leading axis of ``params``): the trained local minima."""
    def one(p0):
        def fun(p):
            return _loss(p, x, y, weight_decay)

        opt = optax.lbfgs()
        value_and_grad = optax.value_and_grad_from_state(fun)

        def step(carry, _):
            p, state = carry
            value, g = value_and_grad(p, state=state)
            updates, state = opt.update(g, state, p, value=value, grad=g, value_fn=fun)
            return (optax.apply_updates(p, updates), state), None

        return lax.scan(step, (p0, opt.init(p0)), None, length=steps)[0][0]

    return jax.vmap(one)(params)


@functools.partial(jax.jit, static_argnames=("steps",))
def _descend(params, key, x, y, weight_decay, lr, noise, *, steps):
    """Full-batch gradient descent on the exact gradient plus ``noise * N(0, I)``; loss after every step.

    Returns:
        ``(losses, final_params)`` with ``losses`` of shape ``(steps + 1,)``, entry 0 the starting loss.
    """
    flat0, unravel = ravel_pytree(params)

    def fun(f):
        return _loss(unravel(f), x, y, weight_decay)

    def step(f, k):
        g = jax.grad(fun)(f) + noise * jax.random.normal(k, f.shape, f.dtype)
        f = f - lr * g
        return f, fun(f)

    f, path = lax.scan(step, flat0, jax.random.split(key, steps))
    return jnp.concatenate([fun(flat0)[None], path]), unravel(f)


@jax.jit
def _losses(params, x, y, weight_decay):
    """:func:`_loss` at each of a ``(starts, points)`` batch of parameters (leading axes of every leaf).

    One compiled program: called eagerly, ``_loss`` would compile each of its operations on first use.
    """
    return jax.vmap(jax.vmap(lambda p: _loss(p, x, y, weight_decay)))(params)


def record_epochs(epochs: int, records: int) -> tuple[int, ...]:
    """Up to ``records`` distinct epochs in ``[0, epochs]``: 0 (the random start), then geometrically spaced
    from epoch 1 to the end (the loss changes fastest early)."""
    later = np.geomspace(1, epochs, max(records - 1, 1)).round().astype(int)
    return tuple(int(s) for s in np.unique(np.r_[0, later]))


def spearman(a, b) -> tuple[float, float]:
    """Spearman's rank correlation of two samples and its two-sided p-value (scipy)."""
    from scipy import stats

    result = stats.spearmanr(a, b)
    return float(result.statistic), float(result.pvalue)


def _same_point(p, q, *, rtol_loss: float = 1e-8, rtol_eigs: float = 1e-5) -> bool:
    """Equal loss and Hessian spectrum: one critical point, or its copy under a network symmetry."""
    if abs(p["loss"] - q["loss"]) > rtol_loss * max(1.0, abs(p["loss"])):
        return False
    scale = max(np.max(np.abs(p["eigs"])), np.max(np.abs(q["eigs"])))
    return bool(np.max(np.abs(p["eigs"] - q["eigs"])) <= rtol_eigs * scale)


def deduplicate(points: list[dict]) -> list[dict]:
    """Keep one of each group of :func:`_same_point` points (the first in loss order), counting the copies."""
    kept: list[dict] = []
    for p in sorted(points, key=lambda q: q["loss"]):
        match = next((k for k in kept if _same_point(k, p)), None)
        if match is None:
            kept.append({**p, "copies": 1})
        else:
            match["copies"] += 1
    return kept


def _find(params, args, config: Config, method: str):
    """A critical point near ``params`` by :func:`analysis.critical.find_critical_point`."""
    return analysis.critical.find_critical_point(_loss, params, *args, method=method,
                                                 max_iter=config.max_iter, grad_tol=config.grad_tol)


def _describe(result, origin: str, start_loss: float, start_step: int, args, grad_tol: float) -> dict:
    eigs = analysis.spectrum.eigenvalues(analysis.hessian(_loss, result.params, *args))
    c = analysis.critical.classify(eigs, grad_norm=result.grad_norm, grad_tol=grad_tol)
    return {
        "loss": result.loss, "grad_norm": result.grad_norm, "iterations": result.iterations,
        "converged": c.is_critical, "kind": c.kind, "index": c.index, "n_negative": c.n_negative,
        "n_zero": c.n_zero, "lambda_min": float(eigs[0]), "lambda_max": float(eigs[-1]),
        "origin": origin, "start_loss": start_loss, "start_step": start_step,
        "eigs": eigs, "params": result.params,
    }


def escape_steps(lambda_min: float, config: Config) -> int:
    """Steps for the unstable direction of a saddle to grow by ``e^escape_efolds`` under gradient descent."""
    return int(np.ceil(config.escape_efolds / (config.escape_lr * max(-lambda_min, 1e-300))))


def _pick_saddle(points: list[dict], config: Config) -> dict | None:
    """The lowest-loss saddle that noise leaves within ``escape_max_steps``, else the most unstable one."""
    saddles = [p for p in points if p["kind"] == "saddle"]
    if not saddles:
        return None
    fast = [p for p in saddles if escape_steps(p["lambda_min"], config) <= config.escape_max_steps]
    return min(fast, key=lambda p: p["loss"]) if fast else min(saddles, key=lambda p: p["lambda_min"])


def _escape(saddle: dict, args, config: Config, key) -> dict:
    """Plain and noisy gradient descent started exactly on ``saddle``; run 0 is plain, the rest noisy."""
    # Polish to float64's default tolerance so the exact gradient left at the start is as small as it gets.
    polished = analysis.critical.find_critical_point(_loss, saddle["params"], *args, method="newton",
                                                     max_iter=config.max_iter)
    if polished.grad_norm < saddle["grad_norm"]:
        start, g0 = polished.params, polished.grad_norm
    else:
        start, g0 = saddle["params"], saddle["grad_norm"]
    steps = min(escape_steps(saddle["lambda_min"], config), config.escape_max_steps)
    noise = [0.0] + [config.noise] * config.noise_seeds
    keys = jax.random.split(key, len(noise))
    # One run at a time through the same compiled _descend (a vmapped batch would be a second, larger
    # program to compile for a few milliseconds of work).
    lr = np.float64(config.escape_lr)
    runs = [_descend(start, k, *args, lr, np.float64(sigma), steps=steps)
            for k, sigma in zip(keys, noise, strict=True)]
    curves = np.stack([np.asarray(curve) for curve, _ in runs])
    flat0 = _common.host_flat(start)
    dist = np.array([np.linalg.norm(_common.host_flat(end) - flat0) for _, end in runs])
    plain, noisy = curves[0], curves[1:]
    return {
        "saddle_loss": float(plain[0]), "saddle_index": saddle["index"],
        "saddle_n_negative": saddle["n_negative"], "saddle_lambda_min": saddle["lambda_min"],
        "start_params": flat0, "start_grad_norm": g0, "steps": steps,
        "efolds": -saddle["lambda_min"] * config.escape_lr * steps,
        "plain_curve": plain, "noisy_curves": noisy,
        "plain_final": float(plain[-1]), "noisy_final": noisy[:, -1],
        "plain_change": float(plain[-1] - plain[0]), "noisy_decrease": plain[0] - noisy[:, -1],
        "plain_distance": float(dist[0]), "noisy_distance": dist[1:],
    }


def main(config: Config = QUICK, out_dir=None) -> dict:
    out_dir = out_dir or _common.default_out(config == QUICK)
    if config.method not in ("newton", "gradnorm"):
        raise ValueError(f"unknown method {config.method!r}; valid names: newton, gradnorm")
    with jax.enable_x64(True):  # the index needs eigenvalues ~1e-4 resolved next to ~1
        results, claims, notes = _run(config)
    payload = _common.save(NAME, config, results, claims, out_dir, notes=notes)
    plot(payload, out_dir)
    return payload


def _run(config: Config):
    ds = data.load("synthetic", seed=config.seed, n_train=config.n_train, n_test=1, dim=config.dim,
                   num_classes=config.num_classes, teacher_width=config.teacher_width,
                   teacher_seed=config.seed)
    x = jnp.asarray(ds.x_train, jnp.float64)
    y = jnp.asarray(ds.y_train)
    wd = jnp.asarray(config.weight_decay, jnp.float64)
    args = (x, y, wd)
    key_init, key_sgd, key_escape = jax.random.split(jax.random.key(config.seed), 3)
    sizes = [config.dim, config.hidden, config.num_classes]
    starts = [mlp.init(k, sizes, init="glorot", scale=config.init_scale, dtype=jnp.float64)
              for k in jax.random.split(key_init, config.trajectories)]
    # Minibatch SGD from each start by fflab.train.fit, the parameters kept at the recorded epochs.
    epochs = config.sgd_steps // (config.n_train // config.batch_size)
    record = record_epochs(epochs, config.records)
    opt = optax.sgd(config.sgd_lr)
    sgd_loss = functools.partial(_loss, weight_decay=config.weight_decay)
    runs = [train.fit(train.init_state(p0, opt, k), opt, (x, y), loss_fn=sgd_loss, epochs=epochs,
                      batch_size=config.batch_size, eval_every=epochs, snapshot_epochs=record, progress=False)
            for p0, k in zip(starts, jax.random.split(key_sgd, config.trajectories), strict=True)]
    def stack(trees):
        return jax.tree.map(lambda *leaves: np.stack(leaves), *trees)

    paths = stack([stack([r.snapshots[e] for e in record]) for r in runs])
    ends = stack([r.state.params for r in runs])
    trained = _lbfgs(ends, x, y, wd, steps=config.lbfgs_steps)
    # Every start on the host, the trained end after the path points: indexing numpy costs no compilation.
    seeds = jax.tree.map(lambda a, b: np.concatenate([np.asarray(a), np.asarray(b)[:, None]], axis=1),
                         paths, trained)
    seed_losses = np.asarray(_losses(seeds, *args))

    def take(t, r):
        return jax.tree.map(lambda a: a[t, r], seeds)

    found = []
    bar = tqdm(total=config.trajectories * (len(record) + 1), desc="critical points", disable=None)
    for t in range(config.trajectories):  # Dauphin et al.: the root finder from points along SGD
        for r, epoch in enumerate(record):
            res = _find(take(t, r), args, config, config.method)
            found.append(_describe(res, "sgd path", float(seed_losses[t, r]), epoch * config.n_train
                                   // config.batch_size, args, config.grad_tol))
            bar.update()
    for t in range(config.trajectories):  # the trained minima, polished by Newton's method
        res = _find(take(t, len(record)), args, config, "newton")
        found.append(_describe(res, "trained", float(seed_losses[t, -1]), config.sgd_steps, args,
                               config.grad_tol))
        bar.update()
    bar.close()

    converged = [p for p in found if p["converged"]]
    points = deduplicate(converged)
    loss = np.array([p["loss"] for p in points])
    index = np.array([p["index"] for p in points])
    kinds = [p["kind"] for p in points]
    rho, pval = spearman(index, loss) if len(points) >= 3 else (float("nan"), float("nan"))
    minima = np.array([p["loss"] for p in points if p["n_negative"] == 0])
    best = float(loss.min()) if loss.size else float("nan")
    critical_spread = float(np.ptp(loss)) if loss.size else float("nan")
    minima_spread = float(np.ptp(minima)) if minima.size else float("nan")
    ratio = minima_spread / critical_spread if minima.size and critical_spread > 0 else float("nan")
    counts = {k: kinds.count(k) for k in ("minimum", "saddle", "maximum", "degenerate")}
    n_saddle = counts["saddle"]

    saddle = _pick_saddle(points, config)
    escape = _escape(saddle, args, config, key_escape) if saddle is not None else None

    n_params = mlp.num_params(starts[0])
    claims = [
        _common.claim(
            "Dauphin et al. 2014: the index (fraction of negative Hessian eigenvalues) of a critical point "
            f"rises with its loss (Spearman rank correlation > 0, p < {SPEARMAN_P})",
            {"spearman": rho, "p_value": pval, "points": len(points)},
            len(points) >= 5 and rho > 0 and pval < SPEARMAN_P),
        _common.claim(
            "Choromanska et al. 2015: the local minima found lie close to the best loss (their loss spread "
            f"is under {MINIMA_SPREAD_RATIO:g} of the spread of all critical losses)",
            {"minima": int(minima.size), "minima_spread": minima_spread, "critical_spread": critical_spread,
             "ratio": ratio,
             "worst_minimum_gap_to_best": float(minima.max() - best) if minima.size else None},
            minima.size >= 2 and ratio < MINIMA_SPREAD_RATIO),
        _common.claim(
            "saddle points outnumber minima among the critical points found",
            {"saddles": n_saddle, "minima": counts["minimum"], "distinct_points": len(points),
             "parameters": n_params},
            n_saddle > counts["minimum"]),
    ]
    if escape is None:
        claims.append(_common.claim("a noisy gradient escapes a saddle where plain gradient descent stays",
                                    "no saddle found", False))
    else:
        claims.append(_common.claim(
            "a noisy gradient escapes a saddle where plain gradient descent stays: loss after N steps "
            f"from the saddle (plain changes by < {PLAIN_STAYS:g}; noisy drops by > {NOISE_ESCAPES:g} "
            "for every seed)",
            {"steps": escape["steps"], "saddle_loss": escape["saddle_loss"],
             "plain_loss": escape["plain_final"],
             "noisy_loss_mean": float(np.mean(escape["noisy_final"])),
             "noisy_decrease_min": float(np.min(escape["noisy_decrease"]))},
            abs(escape["plain_change"]) < PLAIN_STAYS
            and float(np.min(escape["noisy_decrease"])) > NOISE_ESCAPES))

    spectra = _spectra(points)
    results = {
        "parameters": n_params,
        "record_steps": [e * (config.n_train // config.batch_size) for e in record],
        "solves": len(found),
        "converged": len(converged),
        "distinct": len(points),
        "counts": counts,
        "spearman": {"rho": rho, "p_value": pval},
        "best_loss": best,
        "minima_losses": np.sort(minima),
        # Flat parameters (ravel_pytree order) let anyone recheck a point's gradient and Hessian.
        "points": [{**{k: v for k, v in p.items() if k not in ("eigs", "params")},
                    "flat_params": _common.host_flat(p["params"])} for p in points],
        "unconverged": [{"grad_norm": p["grad_norm"], "start_loss": p["start_loss"], "origin": p["origin"]}
                        for p in found if not p["converged"]],
        "spectra": spectra,
        "escape": escape,
    }
    notes = (
        f"{n_params}-parameter tanh MLP {sizes} on {config.n_train} synthetic teacher samples, cross-entropy "
        f"plus L2 {config.weight_decay:g} on all parameters (finite minima), float64. Critical points: "
        f"{config.method} root finding on grad = 0 from {config.trajectories} x {len(record)} points along "
        f"SGD paths (random starts included), plus L-BFGS + Newton from each trained end; kept if "
        f"||g|| <= {config.grad_tol:g} and merged when loss and spectrum agree (symmetric copies count "
        "once). "
        "Minima means index 0. The root finder converges to saddles as readily as to minima and minima are "
        "sought only at trained ends, so the saddle/minimum count reflects the search as well as the "
        "landscape. Escape: the lowest-loss saddle that GD leaves within "
        f"{config.escape_max_steps} steps, Newton-polished, run for N = {config.escape_efolds:g} / "
        f"(lr |lambda_min|) steps; noise N(0, {config.noise:g}^2 I) added to the exact gradient. "
        f"{len(converged)} of {len(found)} searches converged; the rest stalled at small but non-zero "
        "||g|| (local minima of ||g||^2, results['unconverged']) and are left out.")
    failed = [c["text"].split(":")[0] for c in claims if not c["holds"]]
    if failed:
        notes += " Failed on this run: " + "; ".join(failed) + "."
    return results, claims, notes


def _spectra(points: list[dict]) -> dict:
    """Full spectra of up to four representative points: the best minimum and low, middle and high saddles."""
    chosen = {}
    minima = [p for p in points if p["n_negative"] == 0]
    saddles = [p for p in points if p["kind"] == "saddle"]
    if minima:
        chosen["best minimum"] = minima[0]
    if saddles:
        for label, i in (("lowest saddle", 0), ("middle saddle", len(saddles) // 2), ("highest saddle", -1)):
            if all(saddles[i] is not q for q in chosen.values()):
                chosen[label] = saddles[i]
    return {label: {"loss": p["loss"], "index": p["index"], "eigenvalues": p["eigs"]}
            for label, p in chosen.items()}


_KIND_COLORS = {"minimum": "tab:green", "saddle": "tab:orange", "maximum": "tab:red",
                "degenerate": "tab:gray"}


def plot(payload: dict, out_dir) -> None:
    plt = _common.style()
    r = payload["results"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))

    ax = axes[0]
    best = float(r["best_loss"])  # losses crowd just above the best: plot the gap on a symlog axis
    for kind, color in _KIND_COLORS.items():
        pts = [p for p in r["points"] if p["kind"] == kind]
        if pts:
            ax.scatter([p["loss"] - best for p in pts], [p["index"] for p in pts], c=color, s=36, alpha=0.8,
                       edgecolors="k", linewidths=0.4, label=f"{kind} ({len(pts)})")
    if r["escape"]:
        ax.scatter([r["escape"]["saddle_loss"] - best], [r["escape"]["saddle_index"]], s=160,
                   facecolors="none", edgecolors="k", linewidths=1.4, label="start of the escape run (right)")
    ax.set_xscale("symlog", linthresh=1e-4)
    ax.set_xlim(left=-2e-5)
    rho = r["spearman"]["rho"]
    ax.set(title=f"{r['distinct']} critical points: Spearman rho = {float(rho):.2f}",
           xlabel=f"loss above the best critical point ({best:.3f}), symlog",
           ylabel="index (fraction of negative eigenvalues)")
    ax.legend(loc="upper left")

    ax = axes[1]
    for (label, s), color in zip(r["spectra"].items(), ["tab:green", "tab:blue", "tab:purple", "tab:red"],
                                 strict=False):
        eigs = np.asarray(s["eigenvalues"])
        ax.plot(np.arange(eigs.size) / eigs.size, eigs, ".-", ms=3, color=color,
                label=f"{label}: loss {s['loss']:.3f}, index {s['index']:.2f}")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_yscale("symlog", linthresh=1e-4)
    ax.set(title="Hessian spectra (sorted)", xlabel="eigenvalue rank / P", ylabel="eigenvalue (symlog)")
    ax.legend(fontsize=8, loc="upper left")

    ax = axes[2]
    e = r["escape"]
    if e:
        steps = np.arange(len(e["plain_curve"]))
        noisy_label = rf"GD + noise N(0, $\sigma^2$I), $\sigma$ = {payload['config']['noise']:g}"
        for i, curve in enumerate(e["noisy_curves"]):
            ax.plot(steps, curve, color="tab:blue", alpha=0.7, lw=1.2, label=noisy_label if i == 0 else None)
        ax.plot(steps, e["plain_curve"], color="k", lw=2, ls="--", label="plain GD (exact gradient)")
        ax.set(title=f"GD started on a saddle (index {e['saddle_index']:.2f}, "
                     rf"$\lambda_{{min}}$ = {e['saddle_lambda_min']:.1e})",
               xlabel="gradient step", ylabel="training loss")
        ax.legend()
    else:
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no saddle found", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    _common.savefig(fig, out_dir, NAME)


if __name__ == "__main__":
    raise SystemExit(_common.module_cli(sys.modules[__name__]))
