"""Critical points: their index and loss in a small net, noise and saddles, minima against saddles by dimension.

Lecture: "Local minima dominate in low-dimensional optimization, but saddle points dominate in high dimensions;
most local minima are close to the global minimum; noisy gradient g helps in escaping saddle points".
1. The net (Dauphin et al. 2014, Fig. 1): points along SGD paths (:func:`fflab.train.fit`) and L-BFGS minima from
   their ends seed a root finder on ``grad = 0`` (:func:`analysis.critical.find_critical_point`, which reaches
   saddles as readily as minima); each distinct critical point gets its index (share of negative Hessian
   eigenvalues). Tanh MLP, cross-entropy plus ``weight_decay / 2 ||theta||^2`` on every parameter, float64.
2. Escape: from the most unstable saddles, started ``delta`` away in a random direction, plain gradient descent,
   minibatch SGD (the lecture's noisy g) and GD plus isotropic noise (Ge et al. 2015), same rate and steps, as
   lanes of :func:`fflab.train.make_train_epoch`.
3. Dimension: critical points of random smooth functions of ``d`` variables (random Fourier features, unit
   correlation length), by Newton's method on the gradient from random starts, classified by Hessian signs.
"""

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from scipy import stats

import analysis
from experiments import _common
from fflab import data, losses, mlp, train

NAME = "saddle_points"
DESCRIPTION = ("Critical points: the index rises with the loss, minima lie near the best, noise and saddle "
               "escape, and the share of minima falls as the dimension grows")
SLIDE = "Theory: Local minima not an issue (Dauphin et al. 2014, Choromanska et al. 2015)"
PAPERS = {
    "Dauphin et al. 2014": "https://arxiv.org/abs/1406.2572",
    "Choromanska et al. 2015": "https://arxiv.org/abs/1412.0233",
    "Ge, Huang, Jin & Yuan 2015": "https://arxiv.org/abs/1503.02101",
    "Bray & Dean 2007": "https://arxiv.org/abs/cond-mat/0611023",
}


@dataclass(frozen=True)
class Config:
    # The net: a tanh MLP [dim, hidden, num_classes] on synthetic teacher data, L2 on every parameter.
    dim: int = 6
    num_classes: int = 4
    n_train: int = 200
    teacher_width: int = 8
    hidden: int = 16
    weight_decay: float = 1e-2
    init_scale: float = 2.0
    trajectories: int = 6
    sgd_epochs: int = 200
    records: int = 8  # path points per trajectory, geometric in epochs, the random start included
    sgd_lr: float = 0.3
    batch_size: int = 10
    max_iter: int = 150
    grad_tol: float = 1e-8
    lbfgs_steps: int = 400
    # Escape from the escape_saddles most unstable saddles, at distance delta, several seeds each.
    escape_saddles: int = 4
    escape_deltas: tuple = (1e-2, 1e-4, 1e-6, 1e-8)
    escape_seeds: int = 4
    escape_steps: int = 3000
    escape_noise: float = 0.01  # std of the isotropic noise added to each gradient coordinate
    escape_drop: float = 0.1  # escaped: the loss fell this share of the way from the saddle to the best minimum
    # Random fields: dimensions, starts per dimension, features, and the volume of the box of starts.
    field_dims: tuple = (1, 2, 3, 4, 6, 8, 12)
    field_starts: int = 300
    field_features: int = 256
    field_volume: float = 200.0
    seed: int = 0


QUICK = Config(dim=5, num_classes=3, n_train=100, hidden=6, trajectories=4, records=6, lbfgs_steps=300,
               escape_deltas=(1e-2, 1e-5, 1e-8), escape_steps=1000, escape_seeds=2, field_dims=(1, 2, 4, 8),
               field_starts=60, field_volume=60.0)
FULL = Config()


def _loss(params, x, y, *, weight_decay):
    """Mean cross-entropy of the tanh MLP plus ``weight_decay / 2 * ||theta||^2`` (biases included)."""
    return losses.cross_entropy(mlp.apply(params, x, activation="tanh"), y) + weight_decay * losses.l2(
        params, weights_only=False)


def field(x, a, w, phi, mask):
    """``sqrt(2 / M) sum_j a_j cos(w_j . x + phi_j)`` over the coordinates where ``mask`` is 1, plus
    ``||x||^2 / 2`` over the others: a minimum there, so every dimension shares one shape and one compiled search."""
    return jnp.sqrt(2.0 / a.shape[0]) * jnp.sum(a * jnp.cos(w @ x + phi)) + 0.5 * jnp.sum((1 - mask) * x**2)


@functools.partial(jax.jit, static_argnames=("loss", "steps"))
def _lbfgs(loss, params, x, y, *, steps):
    """Full-batch L-BFGS (optax) from each start (leading axis of ``params``): the trained local minima."""
    def one(p0):
        # A backtracking line search: the default zoom search compiles three times slower for the same minima.
        opt = optax.lbfgs(linesearch=optax.scale_by_backtracking_linesearch(15, store_grad=True))
        value_and_grad = optax.value_and_grad_from_state(lambda p: loss(p, x, y))

        def step(carry, _):
            p, state = carry
            value, g = value_and_grad(p, state=state)
            updates, state = opt.update(g, state, p, value=value, grad=g, value_fn=lambda p: loss(p, x, y))
            return (optax.apply_updates(p, updates), state), None

        return jax.lax.scan(step, (p0, opt.init(p0)), None, length=steps)[0][0]

    return jax.vmap(one)(params)


def critical_points(loss, starts, args, *, method, max_iter, grad_tol, dims=None) -> tuple[list[dict], int]:
    """The distinct critical points the root finder (``method``, or one per start) reaches from ``starts`` (each with
    the spectrum of the leading ``dims x dims`` Hessian block, its kind and index), and how many searches converged.
    Equal loss and spectrum make one point (or its copy under a network symmetry), kept once in loss order, counting
    its ``copies``."""
    found, methods = [], [method] * len(starts) if isinstance(method, str) else method
    for p0, how in zip(starts, methods, strict=True):
        res = analysis.critical.find_critical_point(loss, p0, *args, method=how, max_iter=max_iter, grad_tol=grad_tol)
        if res.converged:
            eigs = analysis.spectrum.eigenvalues(analysis.hessian(loss, res.params, *args)[:dims, :dims])
            c = analysis.critical.classify(eigs)
            found.append({"loss": res.loss, "kind": c.kind, "index": c.index, "n_negative": c.n_negative,
                          "lambda_min": float(eigs[0]), "eigs": eigs, "params": res.params, "copies": 1})
    kept = []
    for p in sorted(found, key=lambda q: q["loss"]):
        same = [k for k in kept if abs(k["loss"] - p["loss"]) <= 1e-8 * max(1, abs(p["loss"]))
                and np.max(np.abs(k["eigs"] - p["eigs"])) <= 1e-5 * np.max(np.abs(k["eigs"]))]
        if same:
            same[0]["copies"] += 1
        else:
            kept.append(p)
    return kept, len(found)


def escape_steps(curves, saddle_loss, best_loss, drop, tick, budget) -> np.ndarray:
    """Steps until each lane's loss (sampled every ``tick`` steps) first falls ``drop`` of the way from its
    saddle to the best minimum; ``budget + tick`` where it never does (escape not within the budget)."""
    below = curves < (saddle_loss - drop * (saddle_loss - best_loss))[:, None]
    return np.where(below.any(1), tick * np.argmax(below, 1), budget + tick)


def claims(r: dict, config: Config) -> tuple[list[dict], list[dict]]:
    """The lecture's claims (with margins) and the checks, from the named results ``r`` of main."""
    claim = _common.claim
    net, esc, fld = r["net"], r["escape"], r["fields"]
    share = dict(zip(fld["dims"], fld["minima_share"], strict=True))
    n_min = {c["d"]: c["minimum"] for c in fld["counts"]}
    low, top = [d for d in share if d <= 2], max(share)
    speed = {m: dict(zip([f"{s['loss']:.4f}" for s in esc["saddles"]], v, strict=True))
             for m, v in esc["speedup_at_closest"].items()}
    n_max = sum(c["maximum"] for c in fld["counts"])
    return [
        claim("Dauphin et al. 2014: the index (share of negative Hessian eigenvalues) of a critical point rises "
              "with its loss (Spearman rho > 0, p < 0.05)", {**net["spearman"], "points": net["distinct"]},
              _common.both(_common.above(net["spearman"]["rho"], 0), _common.below(net["spearman"]["p_value"], 0.05))),
        claim("Choromanska et al. 2015: the local minima found lie close to the best: their loss spread is under "
              "0.1 of the spread of all critical losses", {"minima": len(net["minima_losses"]),
              "ratio": net["minima_spread_ratio"]}, _common.below(net["minima_spread_ratio"], 0.1)),
        claim("saddle points outnumber minima among the critical points found in the net", net["counts"],
              _common.above(net["counts"]["saddle"], net["counts"]["minimum"])),
        *[claim(f"{who}: started {min(config.escape_deltas):g} from each of the {len(esc['saddles'])} most unstable "
                f"saddles, {m} leaves it in fewer steps than plain GD (median of {config.escape_seeds} seeds; margin: "
                "the smallest relative speed-up)", speed[m], (min(speed[m].values()) > 0, min(speed[m].values())))
          for who, m in (("noisy gradient g helps escape saddles (lecture)", "SGD"),
                         ("noise helps escape saddles (Ge et al. 2015)", "GD + noise"))],
        claim("low dimension: local minima are common: over 10% of the critical points of a random function of "
              f"d = {', '.join(map(str, low))} variables are minima, and more than 2", {d: share[d] for d in low},
              _common.both(*[_common.above(share[d], 0.1) if n_min[d] > 2 else (False, -1.0) for d in low])),
        claim("high dimension: saddle points dominate: the share of minima falls with d (Spearman rho < 0, "
              f"p < 0.05) to under 1% at d = {top}", {**fld["spearman"], "share": share[top]},
              _common.both(_common.below(fld["spearman"]["rho"], 0), _common.below(fld["spearman"]["p_value"], 0.05),
                           _common.below(share[top], 0.01))),
    ], [
        _common.check("the field search is unbiased between minima and maxima (f and -f are alike): |#min - #max| "
                      "<= 3 sqrt(#min + #max), pooled over d", {"minima": sum(n_min.values()), "maxima": n_max},
                      abs(sum(n_min.values()) - n_max) <= 3 * np.sqrt(sum(n_min.values()) + n_max)),
    ]


def main(config: Config, out_dir) -> dict:
    with jax.enable_x64(True):  # the index needs eigenvalues ~1e-4 resolved next to ~1
        # 1. The net: SGD paths, L-BFGS from their ends, and the root finder from every point.
        ds = data.load("synthetic", seed=config.seed, n_train=config.n_train, n_test=1, dim=config.dim,
                       num_classes=config.num_classes, teacher_width=config.teacher_width, teacher_seed=config.seed)
        x, y = jnp.asarray(ds.x_train, jnp.float64), jnp.asarray(ds.y_train)
        loss = functools.partial(_loss, weight_decay=config.weight_decay)
        key_init, key_sgd, key_escape = jax.random.split(jax.random.key(config.seed), 3)
        starts = [mlp.init(k, [config.dim, config.hidden, config.num_classes], init="glorot",
                           scale=config.init_scale, dtype=jnp.float64)
                  for k in jax.random.split(key_init, config.trajectories)]
        record = (0, *np.unique(np.geomspace(1, config.sgd_epochs, config.records - 1).round().astype(int)).tolist())
        opt = optax.sgd(config.sgd_lr)
        runs = [train.fit(train.init_state(p0, opt, k), opt, (x, y), loss_fn=loss, epochs=config.sgd_epochs,
                          batch_size=config.batch_size, eval_every=config.sgd_epochs, snapshot_epochs=record,
                          progress=False)
                for p0, k in zip(starts, jax.random.split(key_sgd, config.trajectories), strict=True)]
        trained = _lbfgs(loss, jax.tree.map(lambda *a: jnp.stack(a), *[r.state.params for r in runs]), x, y,
                         steps=config.lbfgs_steps)
        seeds = [r.snapshots[e] for r in runs for e in record] + [train.lane(trained, t) for t in range(len(runs))]
        points, converged = critical_points(  # Newton polishes the L-BFGS ends into their minima
            loss, seeds, (x, y), method=["gradnorm"] * (len(seeds) - len(runs)) + ["newton"] * len(runs),
            max_iter=config.max_iter, grad_tol=config.grad_tol)
        loss_v = np.array([p["loss"] for p in points])
        minima = np.array([p["loss"] for p in points if p["n_negative"] == 0])
        rho, p_value = stats.spearmanr([p["index"] for p in points], loss_v)

        # 2. Escape from the most unstable saddles: GD and GD + isotropic noise (full batch, one lanes run) and
        # minibatch SGD, from the same starts delta away in random directions, same steps, same rate.
        saddles = sorted((p for p in points if p["kind"] == "saddle"), key=lambda p: p["lambda_min"])
        saddles = saddles[: config.escape_saddles]
        per_example = jax.jit(jax.vmap(lambda p, xi, yi: ravel_pytree(jax.grad(loss)(p, xi[None], yi[None]))[0],
                                       in_axes=(None, 0, 0)))
        for s in saddles:  # shares of the minibatch noise (per-example gradient variance) along escape directions
            g = np.asarray(per_example(s["params"], x, y))
            g = g - g.mean(0)
            eigs, vecs = analysis.spectrum.eigh(analysis.hessian(loss, s["params"], x, y))
            fastest = int(np.sum(eigs <= eigs[0] * (1 - 1e-6)))  # the eigenspace of lambda_min (often degenerate)
            s["noise_share"], s["noise_share_fastest"] = (float(np.sum((g @ vecs[:, :k]) ** 2) / np.sum(g**2))
                                                          for k in (s["n_negative"], fastest))
        lanes = [(s, d) for s in range(len(saddles)) for d in config.escape_deltas for _ in range(config.escape_seeds)]
        centre = np.stack([_common.host_flat(saddles[s]["params"]) for s, _ in lanes])
        u = np.random.default_rng(config.seed).standard_normal(centre.shape)
        begin = centre + np.array([d for _, d in lanes])[:, None] * u / np.linalg.norm(u, axis=1, keepdims=True)
        noisy = optax.chain(optax.inject_hyperparams(optax.add_noise, static_args=("key",))(eta=0.0, gamma=0.0, key=0),
                            optax.sgd(config.sgd_lr))
        unravel, tick = ravel_pytree(starts[0])[1], config.n_train // config.batch_size
        lane_loss = jax.jit(jax.vmap(loss, in_axes=(0, None, None)))

        def curves(begin, eta, key, batch_size, epochs_per_tick):
            """Each lane's loss every ``tick`` steps, trained from ``begin`` with gradient noise variance ``eta``."""
            keys = jax.random.split(key, len(begin))
            states = jax.jit(jax.vmap(lambda b, k: train.init_state(unravel(b), noisy, k)))(jnp.asarray(begin), keys)
            states = states._replace(opt_state=optax.tree_utils.tree_set(states.opt_state, eta=jnp.asarray(eta),
                                                                         rng_key=keys))
            epoch = train.make_train_epoch(noisy, loss_fn=loss, batch_size=batch_size, lanes=True)
            out = [lane_loss(states.params, x, y)]
            for _ in range(config.escape_steps // tick):
                for _ in range(epochs_per_tick):
                    states, _ = epoch(states, x, y)
                out.append(lane_loss(states.params, x, y))
            return np.stack(out, 1)

        k_full, k_sgd = jax.random.split(key_escape)
        full = curves(np.concatenate([begin, begin]), np.repeat([0.0, config.escape_noise**2], len(lanes)), k_full,
                      config.n_train, tick)
        runs_by = {"GD": full[: len(lanes)], "SGD": curves(begin, np.zeros(len(lanes)), k_sgd, config.batch_size, 1),
                   "GD + noise": full[len(lanes):]}
        saddle_loss = np.array([saddles[s]["loss"] for s, _ in lanes])
        escape = {m: escape_steps(c, saddle_loss, loss_v.min(), config.escape_drop, tick, config.escape_steps)
                  .reshape(len(saddles), len(config.escape_deltas), config.escape_seeds) for m, c in runs_by.items()}
        median = {m: np.median(e, axis=2) for m, e in escape.items()}  # (saddle, delta)
        at = int(np.argmin(config.escape_deltas))
        speedup = {m: 1 - median[m][:, at] / median["GD"][:, at] for m in ("SGD", "GD + noise")}

        # 3. Random fields of d = 1, 2, ... variables: Newton's method on the gradient from random starts in a box
        # of volume field_volume; each point classified by the signs of its d x d Hessian.
        rng, top, m = np.random.default_rng(config.seed + 1), max(config.field_dims), config.field_features
        counts, picture = [], None
        for d in config.field_dims:
            mask = (np.arange(top) < d).astype(float)
            args = tuple(jnp.asarray(a) for a in (rng.standard_normal(m), rng.standard_normal((m, top)) * mask,
                                                  rng.uniform(0, 2 * np.pi, m), mask))
            side = config.field_volume ** (1 / d)
            x0 = [jnp.asarray(v) for v in rng.uniform(0, side, (config.field_starts, top)) * mask]
            found, _ = critical_points(field, x0, args, method="newton", max_iter=50, grad_tol=1e-10, dims=d)
            kinds = [p["kind"] for p in found]
            counts.append({"d": d, "side": side, "points": len(found), **{k: kinds.count(k) for k in _KINDS}})
            if d == 2:  # the low-dimensional picture: the function (its parameters) and the critical points found
                picture = {"side": side, "a": args[0], "w": args[1][:, :2], "phi": args[2],
                           "points": [[*np.asarray(p["params"][:2]), p["kind"]] for p in found]}
        share = [c["minimum"] / c["points"] for c in counts]

    r = {
        "net": {"parameters": int(centre.shape[1]), "record_epochs": record, "searches": len(seeds),
                "converged": converged, "distinct": len(points),
                "counts": {k: sum(p["kind"] == k for p in points) for k in _KINDS},
                "spearman": dict(zip(("rho", "p_value"), (rho, p_value), strict=True)), "best_loss": loss_v.min(),
                "minima_losses": minima, "minima_spread_ratio": np.ptp(minima) / np.ptp(loss_v) if minima.size > 1
                else np.nan, "points": [{**{k: p[k] for k in ("loss", "kind", "index", "n_negative", "lambda_min",
                "copies")}, "flat_params": _common.host_flat(p["params"])} for p in points]},
        "escape": {"saddles": [{**{k: s[k] for k in ("loss", "index", "lambda_min", "noise_share",
                                                     "noise_share_fastest")},
                                "flat_params": _common.host_flat(s["params"])} for s in saddles],
                   "deltas": config.escape_deltas, "tick": tick, "steps": escape, "median": median,
                   "speedup_at_closest": speedup, "start": begin},
        "fields": {"dims": config.field_dims, "counts": counts, "minima_share": share, "picture": picture,
                   "spearman": dict(zip(("rho", "p_value"), stats.spearmanr(config.field_dims, share), strict=True))},
    }
    claim_list, checks = claims(r, config)
    notes = (
        f"Net: {converged} of {len(seeds)} searches reached ||g|| <= {config.grad_tol:g}; the finder reaches saddles "
        "as readily as minima, so the saddle/minimum count reflects the search as well as the landscape. Escape: "
        f"{config.escape_seeds} random directions per delta, rate {config.sgd_lr:g}, {config.escape_steps} steps, SGD "
        f"batch {config.batch_size}, noise N(0, {config.escape_noise:g}^2) per gradient coordinate; escaped when the "
        f"loss fell {config.escape_drop:g} of the way to the best minimum (checked every {tick} steps). noise_share "
        "(_fastest): the share of the minibatch gradient's variance along all negative-curvature directions (along "
        f"the eigenspace of lambda_min); here at most {max(s['noise_share_fastest'] for s in saddles):.0e} along the "
        "fastest (per-example gradients keep the symmetry among hidden units that makes lambda_min degenerate), so "
        "minibatch noise pushes only along slower escape directions, and where those carry none either SGD escapes "
        "no faster than GD. Fields: "
        f"{config.field_features} random Fourier features, {config.field_starts} searches per d in "
        f"a box of volume {config.field_volume:g}; random-field theory: minima are 1/2 of the critical points for d = "
        "1, 1/4 for d = 2 (saddles = minima + maxima there), exponentially few as d grows (Bray & Dean 2007). "
        "Fails on this run: " + ("; ".join(c["text"].split(":")[0] for c in claim_list if not c["holds"])
                                 or "none") + ".")
    return _common.save(NAME, config, r, claim_list, out_dir, checks=checks, notes=notes, plot=plot)


_KINDS = {"minimum": "tab:green", "saddle": "tab:orange", "maximum": "tab:red", "degenerate": "tab:gray"}


def plot(payload: dict, out_dir) -> None:
    plt, r, config = _common.style(), payload["results"], payload["config"]
    fig, ((ax_net, ax_esc), (ax_2d, ax_dim)) = plt.subplots(2, 2, figsize=(15, 10))
    pic, best = r["fields"]["picture"], r["net"]["best_loss"]  # net losses crowd above the best: symlog gap
    grid = np.linspace(-0.1 * pic["side"], 1.1 * pic["side"], 150)
    xy = np.stack(np.meshgrid(grid, grid), -1)  # the same function as `field`, in numpy
    values = np.sqrt(2 / len(pic["a"])) * np.cos(xy @ np.transpose(pic["w"]) + pic["phi"]) @ pic["a"]
    ax_2d.contourf(grid, grid, values, levels=30, cmap="Greys_r")  # dark: low
    for kind, color in _KINDS.items():
        net = [p for p in r["net"]["points"] if p["kind"] == kind]
        two = np.array([p[:2] for p in pic["points"] if p[2] == kind], float).reshape(-1, 2)
        for ax, xs, ys, n in ((ax_net, [p["loss"] - best for p in net], [p["index"] for p in net], len(net)),
                              (ax_2d, *two.T, len(two))):
            if n:
                ax.scatter(xs, ys, c=color, s=40, edgecolors="k", linewidths=0.5, label=f"{kind} ({n})")
    ax_net.set_xscale("symlog", linthresh=1e-4)
    ax_net.set(title=f"{r['net']['distinct']} critical points of a {r['net']['parameters']}-parameter net: "
               f"Spearman {r['net']['spearman']['rho']:.2f}", xlabel=f"loss above the best ({best:.3f}), symlog",
               ylabel="index (share of negative eigenvalues)")
    ax_2d.set(xlim=(grid[0], grid[-1]), ylim=(grid[0], grid[-1]), aspect="equal",
              title="a random function of 2 variables and the critical points found")
    e, budget = r["escape"], config["escape_steps"]
    for m, color in zip(e["median"], ("k", "tab:blue", "tab:orange"), strict=True):
        for s, (row, marker) in enumerate(zip(e["median"][m], "osD^v<>", strict=False)):
            ax_esc.plot(e["deltas"], row, "-", marker=marker, color=color, alpha=0.8, label=m if s == 0 else None)
    for s, marker in zip(e["saddles"], "osD^v<>", strict=False):
        ax_esc.plot([], [], marker, color="0.5", ls="none", label=f"saddle at loss {s['loss']:.3f}: lambda_min "
                    f"{s['lambda_min']:.1e},\nminibatch noise share {s['noise_share']:.0e} "
                    f"({s['noise_share_fastest']:.0e} along it)")
    ax_esc.axhline(budget, color="0.5", ls=":", label=f"budget, {budget} steps\n(above: not escaped)")
    ax_esc.set(xscale="log", yscale="log", xlabel="distance delta of the start from the saddle",
               ylabel="steps to escape (median, log)",
               title="escaping saddles: plain GD, minibatch SGD, GD + isotropic noise")
    ax_esc.invert_xaxis()
    ax_esc.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    counts = r["fields"]["counts"]
    for kind in ("minimum", "saddle", "maximum"):
        ax_dim.plot([c["d"] for c in counts], [c[kind] / c["points"] for c in counts], "o-", color=_KINDS[kind],
                    label=kind)
    for c in counts:
        ax_dim.annotate(f"{c['minimum']}/{c['points']}", (c["d"], c["minimum"] / c["points"]), fontsize=7,
                        textcoords="offset points", xytext=(4, 4), color=_KINDS["minimum"])
    ax_dim.plot([1, 2, 2], [0.5, 0.25, 0.5], "k_", ms=16, mew=2, label="random-field theory (d = 1, 2)")
    ax_dim.set(xlabel="dimension d", ylabel="share of the critical points found",
               title="minima against saddles as the dimension grows (label: minima / all)")
    for ax in (ax_net, ax_2d, ax_dim):
        ax.legend(fontsize=8)
    fig.tight_layout()
    _common.savefig(fig, out_dir, NAME)


if __name__ == "__main__":
    raise SystemExit(_common.module_cli(__name__))
