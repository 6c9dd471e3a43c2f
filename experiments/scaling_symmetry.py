"""The scaling symmetry of "Backpropagation, tiny example": equivalent weights, different gradients.

``y = w2 w1 x`` is the same at ``(w1, w2)`` and ``(c w1, w2 / c)``, but ``dC/dw2`` is ``c`` times as large; a relu
MLP has the same symmetry (layer ``l`` times ``c > 0``, layer ``l + 1``'s weights times ``1 / c``). With ``A`` the
diagonal map ``theta -> theta_c``: ``g_c = A^-1 g``, ``H_c = A^-1 H A^-1`` (same signs of the eigenvalues, other
sizes). Newton's step ``A H^-1 g`` is equivariant, gradient descent's is not. Powers of two keep every rescaling exact.
"""

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

import analysis
import fflab
from analysis import spectrum
from experiments import _common
from fflab import data, train

NAME = "scaling_symmetry"
DESCRIPTION = "w1 times c, w2 times 1/c: same outputs, rescaled gradients, different GD paths and curvature"
SLIDE = "Backpropagation, tiny example: note a scaling issue"
PAPERS = {"Neyshabur, Salakhutdinov & Srebro 2015": "https://arxiv.org/abs/1506.02617",
          "Dinh, Pascanu, Bengio & Bengio 2017": "https://arxiv.org/abs/1703.04933"}
TARGET = 1.5


@dataclass(frozen=True)
class Config:
    tiny_start: tuple[float, float] = (0.5, 1.6)  # (w1, w2), product 0.8; balanced at c = sqrt(1.6 / 0.5)
    scales: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)  # powers of two: every rescaling is exact
    tiny_lr: float = 0.05
    tiny_steps: int = 40
    hidden: tuple[int, ...] = (16, 16)
    n_train: int = 256
    dim: int = 10
    num_classes: int = 3
    layer: int = 0  # scale this layer by c and the next one's weights by 1/c
    mlp_scales: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)  # 1.0 is the reference
    mlp_lr: float = 0.02
    mlp_steps: int = 300
    seed: int = 0


QUICK = Config(tiny_steps=30, mlp_scales=(0.25, 0.5, 1.0, 2.0, 4.0), hidden=(8, 8), n_train=128, mlp_steps=100)
FULL = Config()


def tiny_loss(w):
    """``C = (w2 w1 x - 1.5)^2`` at ``x = 1`` for ``w = (w1, w2)`` (no weight decay: it would break the symmetry)."""
    return (w[1] * w[0] - TARGET) ** 2


@_common.small_jit(static_argnames="steps")
def tiny_paths(starts, lr, *, steps: int):
    """Gradient descent's and Newton's iterates ``(S, steps + 1, 2)`` from each of the starts ``(S, 2)``."""
    def gd(w, _):
        w = w - lr * jax.grad(tiny_loss)(w)
        return w, w

    def newton(w, _):  # the minima w1 w2 = 1.5 form a valley where H is singular: stop once there (g ~ 0)
        g = jax.grad(tiny_loss)(w)
        d = jnp.linalg.solve(jax.hessian(tiny_loss)(w), g)
        w = jnp.where((jnp.linalg.norm(g) < 1e3 * jnp.finfo(w.dtype).eps) | ~jnp.all(jnp.isfinite(d)), w, w - d)
        return w, w

    return tuple(jax.vmap(lambda w0, f=f: jnp.concatenate([w0[None], lax.scan(f, w0, None, length=steps)[1]]))(
        starts) for f in (gd, newton))


def rescale(params, c: float, layer: int):
    """Layer ``layer`` (weights and bias) times ``c > 0``, layer ``layer + 1``'s weights times ``1 / c``."""
    if not (c > 0 and 0 <= layer < len(params) - 1):
        raise ValueError(f"need c > 0 and a layer with a next layer (0..{len(params) - 2}), got c={c}, layer={layer}")
    scale = {layer: (c, c), layer + 1: (1 / c, 1.0)}  # (weights, bias) per layer; the others stay
    return [{"W": p["W"] * scale.get(i, (1, 1))[0], "b": p["b"] * scale.get(i, (1, 1))[1]}
            for i, p in enumerate(params)]


def main(config: Config, out_dir) -> dict:
    # ---- the tiny model: gradients, and GD and Newton paths from (c w1, w2 / c)
    dtype, w = jnp.zeros(()).dtype, np.asarray(config.tiny_start)
    loss2, (g, g2) = map(np.asarray, _common.small_jit(jax.vmap(jax.value_and_grad(tiny_loss)))(
        jnp.asarray([w, w * [2.0, 0.5]], dtype)))  # at (w1, w2) and (2 w1, w2 / 2)
    grad_ratio = g2 / g  # (dC/dw1, dC/dw2): 1/2 and 2
    starts = jnp.asarray(w * np.array([[c, 1 / c] for c in config.scales]), dtype)
    gd, newton = (np.asarray(p) for p in tiny_paths(starts, config.tiny_lr, steps=config.tiny_steps))
    gd_y, newton_y = gd.prod(axis=-1), newton.prod(axis=-1)  # the outputs y = w1 w2: the function

    # ---- the relu MLP: outputs, gradients and Hessians at (layer times c, next layer's weights times 1/c)
    ds = data.load("synthetic", seed=config.seed, n_train=config.n_train, n_test=16, dim=config.dim,
                   num_classes=config.num_classes)
    x, y = jnp.asarray(ds.x_train, dtype), jnp.asarray(ds.y_train)
    model, lay, ref = fflab.classifier("relu"), config.layer, config.mlp_scales.index(1.0)
    sizes = [config.dim, *config.hidden, config.num_classes]
    params = jax.tree_util.tree_map(np.asarray, model.init(jax.random.PRNGKey(config.seed), sizes, dtype=dtype)[0])
    logits, grad = jax.jit(lambda p: model.apply(p, None, x)[0]), jax.jit(jax.grad(model.loss_fn))
    blocks = spectrum.param_blocks(params)
    w_this, w_next = (blocks.names.index(f"[{i}]['W']") for i in (lay, lay + 1))
    H, g0 = np.asarray(analysis.hessian(model.loss_fn, params, x, y), np.float64), grad(params, x, y)
    flat_g0 = _common.host_flat(g0)
    rows, scaled = [], [rescale(params, c, lay) for c in config.mlp_scales]
    for c, p_c in zip(config.mlp_scales, scaled, strict=True):
        g_c, H_c = grad(p_c, x, y), np.asarray(analysis.hessian(model.loss_fn, p_c, x, y), np.float64)
        a = _common.host_flat(rescale(jax.tree_util.tree_map(np.ones_like, params), c, lay))  # the diagonal of A
        lam, norms = np.linalg.eigvalsh(H_c), spectrum.block_norms(H_c, blocks)
        rows.append({"c": c, "output_diff": float(np.max(np.abs(np.asarray(logits(p_c) - logits(params))))),
                     "grad_err": float(np.linalg.norm(a * _common.host_flat(g_c) - flat_g0) / np.linalg.norm(flat_g0)),
                     "grad_norm_ratio": [float(np.linalg.norm(g_c[lay + i]["W"]) / np.linalg.norm(g0[lay + i]["W"]))
                                         for i in (0, 1)],
                     "congruence_err": float(np.max(np.abs(H_c - H / np.outer(a, a))) / np.max(np.abs(H))),
                     "lambda_max": float(lam[-1]),
                     "block_ratio": float(norms[w_this, w_this] / norms[w_next, w_next])})  # moves as c^-4
    opt = optax.sgd(config.mlp_lr)  # full-batch gradient descent from every equivalent point at once, a lane each
    states = jax.tree_util.tree_map(lambda *v: jnp.stack(v), *[train.init_state(p, opt, 0) for p in scaled])
    epoch = train.make_train_epoch(opt, loss_fn=model.loss_fn, batch_size=len(x), lanes=True, record_grad_norm=False)
    states, stats = lax.scan(lambda st, _: epoch(st, x, y), states, None, length=config.mlp_steps)  # an epoch a step
    final, outs = map(np.asarray, jax.jit(jax.vmap(lambda p: (model.loss_fn(p, x, y), logits(p))))(states.params))
    for row, tr, f, o in zip(rows, np.asarray(stats.loss[:, :, 0].T, np.float64), final, outs, strict=True):
        row.update(loss_trace=np.append(tr, f), final_loss=float(f),
                   function_distance=float(np.linalg.norm(o - outs[ref]) / np.linalg.norm(outs[ref])))

    # ---- claims (about gradient descent, which the symmetry does not bind) and checks (identities)
    gd_spread, newton_spread = float(np.ptp(gd_y, axis=0).max()), float(np.ptp(newton_y, axis=0).max())
    lam_max = np.array([r["lambda_max"] for r in rows])
    distance = min(r["function_distance"] for i, r in enumerate(rows) if i != ref)
    block_err = max(abs(r["block_ratio"] / (r["c"] ** -4 * rows[ref]["block_ratio"]) - 1) for r in rows)
    claim = _common.claim
    claims = [
        claim(f"gradient descent from equivalent points follows different paths in function space: the outputs "
              f"y_k = w1 w2 of the tiny model's runs from c = {list(config.scales)} differ by more than 0.05",
              {"largest spread of y_k": gd_spread, "y after 1 step": gd_y[:, 1]}, _common.above(gd_spread, 0.05)),
        claim(f"relu MLP: after {config.mlp_steps} full-batch gradient steps from equivalent points the losses differ "
              "(range > 1e-3) and so do the functions (relative logit distance to c = 1 above 1e-3)",
              {"final loss": dict(zip(config.mlp_scales, final, strict=True)), "min function distance": distance},
              _common.both(_common.above(float(np.ptp(final)), 1e-3), _common.above(distance, 1e-3))),
        claim("the curvature changes along equivalent points, and with it the largest stable step 2/lambda_max: the "
              "MLP's lambda_max varies more than 2x over c", lam_max, _common.above(lam_max.max() / lam_max.min(), 2)),
    ]
    checks = [
        _common.check("tiny model: doubling w1 and halving w2 leaves C unchanged, halves dC/dw1 and doubles dC/dw2 "
                      "(exactly)", {"C": loss2, "grad ratio (w1, w2)": grad_ratio},
                      loss2[0] == loss2[1] and grad_ratio.tolist() == [0.5, 2.0]),
        _common.check(f"relu MLP: layer {lay} times c, layer {lay + 1}'s weights times 1/c leave the outputs unchanged "
                      "and scale the two layers' gradients by 1/c and c (largest difference; relative error)",
                      [max(r["output_diff"] for r in rows), max(r["grad_err"] for r in rows)],
                      max(r["output_diff"] for r in rows) < 1e-5 and max(r["grad_err"] for r in rows) < 1e-5),
        _common.check("Newton's method is equivariant: the tiny model's y_k coincide from every equivalent start",
                      newton_spread, newton_spread < 1e-4),
        _common.check("relu MLP: the Hessians are congruent, H_c = A^-1 H A^-1, and the curvature of the rescaled "
                      "layer's weights relative to the next layer's moves as c^-4",
                      {"congruence rel. error": max(r["congruence_err"] for r in rows), "c^-4 rel. error": block_err},
                      max(r["congruence_err"] for r in rows) < 1e-4 and block_err < 1e-3),
    ]
    results = {"tiny": {"start": np.asarray(w), "gd_paths": gd, "newton_paths": newton, "gd_outputs": gd_y,
                        "newton_outputs": newton_y}, "mlp": {"sizes": sizes, "rows": rows}}
    notes = (f"Tiny model C = (w1 w2 - 1.5)^2 (no weight decay) from {tuple(config.tiny_start)}, GD step "
             f"{config.tiny_lr:g}. MLP {sizes}, relu, cross-entropy on {config.n_train} synthetic teacher samples, "
             f"full-batch GD at lr {config.mlp_lr:g} from each equivalent point (a lane of train.make_train_epoch per "
             f"c). Tiny starts with equal c^2 w1^2 + w2^2 / c^2 (c, {config.tiny_start[1] / config.tiny_start[0]:.2f} "
             "/ c) take one GD path in function space: the first claim fails for such a pair. Some float32 MLP paths "
             "amplify rounding: a changed summation order moved c = 0.25's final loss in the 4th digit.")
    return _common.save(NAME, config, results, claims, out_dir, checks=checks, notes=notes, plot=plot)


def plot(payload: dict, out_dir) -> None:
    plt = _common.style()
    from matplotlib.colors import LogNorm

    config, r = payload["config"], payload["results"]
    tiny, rows = r["tiny"], r["mlp"]["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), layout="constrained")
    ticks = np.linspace(0.01, 3.6, 240)
    axes[0].contour(ticks, ticks, (np.outer(ticks, ticks) - TARGET) ** 2, levels=np.geomspace(1e-2, 100, 12),
                    norm=LogNorm(), cmap="Greys_r", linewidths=0.6, alpha=0.7)
    p0 = float(np.prod(tiny["start"]))
    axes[0].plot(ticks, p0 / ticks, "k:", lw=1.2, label=f"equivalent points $w_1 w_2 = {p0:g}$")
    axes[0].plot(ticks, TARGET / ticks, "-", color="C7", lw=2.5, alpha=0.6, label="minima $w_1 w_2 = 1.5$")
    for i, (c, gd, nt, yg, yn) in enumerate(zip(config["scales"], tiny["gd_paths"], tiny["newton_paths"],
                                                tiny["gd_outputs"], tiny["newton_outputs"], strict=True)):
        axes[0].plot(*np.asarray(gd).T, ".-", color=f"C{i}", ms=3, lw=1, label=f"GD from c = {c:g}")
        axes[0].plot(*np.asarray(nt).T, "s--", color=f"C{i}", ms=3, lw=0.8, alpha=0.7)
        axes[1].plot(yg, ".-", color=f"C{i}", ms=3, label=f"GD, c = {c:g}")
        axes[1].plot(yn, "s--", color=f"C{i}", ms=4, alpha=0.7, label=f"Newton, c = {c:g}")
    axes[0].set(xlim=(0, 3.6), ylim=(0, 3.6), aspect="equal", xlabel="$w_1$", ylabel="$w_2$",
                title="GD (dots) and Newton (squares) from $(c w_1, w_2 / c)$")
    axes[1].axhline(TARGET, color="k", lw=0.8, ls=":")
    axes[1].set(title="function space: output $y = w_1 w_2$ per iteration\n(Newton's curves coincide, GD's do not)",
                xlabel="iteration", ylabel="$y$")
    axes[0].legend(fontsize=7.5)
    axes[1].legend(fontsize=7, ncol=2)
    _common.savefig(fig, out_dir, NAME)

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), layout="constrained")
    c = np.array([row["c"] for row in rows])
    for i, row in enumerate(rows):
        axes[0].plot(row["loss_trace"], color=plt.cm.viridis(i / max(len(rows) - 1, 1)), label=f"c = {row['c']:g}")
    axes[0].set(title=f"relu MLP {r['mlp']['sizes']}: full-batch GD from equivalent points", xlabel="step",
                ylabel="training cross-entropy")
    ratios, block = (np.array([row[k] for row in rows]) for k in ("grad_norm_ratio", "block_ratio"))
    for k, (val, slope, label) in enumerate(((ratios[:, 0], -1, f"$\\|g\\|$ of layer {config['layer']}'s W"),
                                             (ratios[:, 1], 1, f"$\\|g\\|$ of layer {config['layer'] + 1}'s W"),
                                             (block / block[c == 1], -4, "$\\|H_{W_l}\\|_F / \\|H_{W_{l+1}}\\|_F$"))):
        axes[1].loglog(c, val, "os^"[k], color=f"C{k}", label=f"{label}: measured", base=2)
        axes[1].loglog(c, c**slope, "-", color=f"C{k}", alpha=0.5, label=f"$c^{{{slope}}}$", base=2)
    axes[1].set(title="relative to c = 1: gradients as 1/c and c,\nthe two layers' curvature ratio as $c^{-4}$",
                xlabel="scale c")
    axes[2].loglog(c, [row["lambda_max"] for row in rows], "o-", label="$\\lambda_{max}$", base=2)
    axes[2].axhline(2 / config["mlp_lr"], color="k", ls=":", lw=1, label=f"2 / lr = {2 / config['mlp_lr']:g}")
    axes[2].set(title="MLP Hessian at equivalent points: the stable step 2/$\\lambda_{max}$ moves",
                xlabel="scale c", ylabel="eigenvalue")
    for ax in axes:
        ax.legend(fontsize=7.5)
    _common.savefig(fig, out_dir, f"{NAME}_mlp")


if __name__ == "__main__":
    raise SystemExit(_common.module_cli(__name__))
