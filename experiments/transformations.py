"""Plain, transformed (Raiko et al. 2012; with Vatanen et al.'s gamma) and batch-normalised nets side by side.

Lecture: "Why does it work? (Raiko et al., 2012)": transformations do not change the model, but the
optimisation; the Hessian is closer to a diagonal, so the gradient is closer to Newton's step.

One tanh MLP from the same weights and mini-batches: ``plain``; ``transform`` (hidden outputs ``f(z) - alpha z
- beta`` with zero mean and zero mean slope, shortcuts from every layer below, centred inputs, re-estimated on
every mini-batch: :mod:`fflab.norm`); ``transform_gamma`` (plus Vatanen et al.'s output scale ``gamma``);
``batchnorm``. Each trains with SGD at every rate of a log grid (``train.lanes``), compared at its best rate.
Then one small trained net at one function in three parameterisations: none (zero shortcuts), Raiko's and
Vatanen's. Raiko et al. show the Fisher matrix (for cross-entropy, the Gauss-Newton matrix) closer to a
diagonal block-wise (the coupling of different layers' weights and the shortcuts): the measure is the
off-diagonal share over the parameter arrays as blocks, each block's norm over the geometric mean of its two
diagonal blocks' (:func:`analysis.spectrum.block_coupling`: coupling, not units). The Hessian's shares too.
"""

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

import analysis
import fflab
from analysis import spectrum
from experiments import _common
from fflab import data, norm, train

NAME = "transformations"
DESCRIPTION = "Plain, Raiko-transformed (+ Vatanen's gamma) and BN tanh nets: same model, new optimisation"
SLIDE = "Why does it work? (Raiko et al. 2012): transformations do not change the model, but the optimisation"
PAPERS = {"Raiko, Valpola & LeCun 2012": "https://proceedings.mlr.press/v22/raiko12.html",
          "Vatanen, Raiko, Valpola & LeCun 2013": "https://arxiv.org/abs/1301.3476",
          "Ioffe & Szegedy 2015": "https://arxiv.org/abs/1502.03167"}

NETS = ("plain", "transform", "transform_gamma", "batchnorm")
PARAMETERISATIONS = ("none", "transform", "transform_gamma")
SHARES = {"fisher_blocks_scaled": "Fisher, blocks\nscaled (claim)", "hessian_blocks_scaled": "Hessian, blocks\nscaled",
          "hessian_blocks": "Hessian,\nblocks", "hessian_elements": "Hessian,\nelements"}


@dataclass(frozen=True)
class Config:
    dataset: str = "digits"
    data_dir: str | None = None
    hidden: tuple = (32, 32)
    batch_size: int = 60
    learning_rates: tuple = (0.0625, 0.25, 1.0)
    epochs: int = 4
    # The Hessian comparison: a small net trained plainly on a subset of the data, pooled by hessian_pool.
    hessian_pool: int = 2
    hessian_hidden: tuple = (6, 6)
    hessian_epochs: int = 10
    hessian_lr: float = 0.5
    hessian_samples: int = 200
    seed: int = 0


QUICK = Config()
FULL = Config(dataset="fashion-mnist", hidden=(100, 100), learning_rates=(0.015625, 0.0625, 0.25, 1.0, 4.0), epochs=3,
              hessian_pool=4, hessian_hidden=(12, 12), hessian_epochs=10, hessian_samples=2000)


def model(net: str):  # the transformed nets' apply and eval loss do not depend on gamma's option
    return fflab.classifier("tanh", {"plain": None}.get(net, net.split("_")[0]), transform_gamma="gamma" in net)


def train_net(config: Config, ds, sizes, net: str) -> dict:
    """Train ``net`` at every rate of ``config.learning_rates`` (lanes); per-epoch records per rate."""
    m = model(net)
    x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
    k_init, k_data = jax.random.split(jax.random.key(config.seed))
    params, model_state = m.init(k_init, sizes, init="glorot")
    opt = optax.inject_hyperparams(optax.sgd)(learning_rate=1.0)
    states = train.lanes(train.init_state(params, opt, k_data, model_state), learning_rate=config.learning_rates)
    epoch = train.make_train_epoch(opt, loss_fn=m.loss_fn, batch_size=config.batch_size, lanes=True)
    k = len(config.learning_rates)
    batch_loss, test_error = np.zeros((k, config.epochs)), np.zeros((k, config.epochs))
    for e in range(config.epochs):
        states, stats = epoch(states, x, y)
        batch_loss[:, e] = np.asarray(stats.loss, np.float64).mean(axis=1)  # not finite once a lane diverged
        lanes = [train.lane(states, j) for j in range(k)]
        test_error[:, e] = [train.evaluate(m.metrics_fn, s.params, ds.x_test, ds.y_test, model_state=s.model_state)
                            ["error"] for s in lanes]
    finite = np.isfinite(batch_loss).all(axis=1)
    batch_loss[~finite] = test_error[~finite] = np.nan
    best = int(np.argmin(np.where(finite, batch_loss[:, -1], np.inf)))
    return {"learning_rates": list(config.learning_rates), "batch_loss": batch_loss, "test_error": test_error,
            "finite": finite, "best": best, "best_lr": config.learning_rates[best],
            "steps_per_epoch": len(x) // config.batch_size, "_state": train.lane(states, best)}


@jax.jit
def invariance(params, model_state, x):
    """Re-estimate a trained net's transformations on ``x``: max logit change, max logit, max transformation change."""
    before, _ = model("transform").apply(params, model_state, x)
    new = norm.transform_update(params, model_state, x, activation="tanh", gamma=True)
    after, _ = model("transform").apply(params, new, x)
    moved = jax.tree.map(lambda a, b: jnp.max(jnp.abs(a - b)), model_state[:4], new[:4])  # alpha, beta, gamma, mean
    return jnp.max(jnp.abs(after - before)), jnp.max(jnp.abs(before)), jnp.max(jnp.stack(jax.tree.leaves(moved)))


def pool_images(x: np.ndarray, image_shape, factor: int) -> np.ndarray:
    """Average-pool flattened images ``(n, h * w)`` by ``factor x factor`` blocks to ``(n, h/f * w/f)``."""
    (h, w), f = image_shape, factor
    if h % f or w % f:
        raise ValueError(f"pool factor {f} does not divide the image shape {tuple(image_shape)}")
    return np.asarray(x).reshape(-1, h // f, f, w // f, f).mean(axis=(2, 4)).reshape(len(x), -1)


def hessian_comparison(config: Config, ds) -> dict:
    """The Hessian of the training loss at one function in each parameterisation (dense, then summarised)."""
    x = jnp.asarray(pool_images(ds.x_train[: config.hessian_samples], ds.image_shape, config.hessian_pool))
    y = jnp.asarray(ds.y_train[: config.hessian_samples])
    sizes = [x.shape[1], *config.hessian_hidden, ds.num_classes]
    k_init, k_data = jax.random.split(jax.random.key(config.seed + 1))
    opt = optax.sgd(config.hessian_lr)
    state = train.init_state(model("plain").init(k_init, sizes, init="glorot")[0], opt, k_data)
    epoch = train.make_train_epoch(opt, loss_fn=model("plain").loss_fn, batch_size=config.batch_size)
    for _ in range(config.hessian_epochs):
        state, _ = epoch(state, x, y)
    layout, none = model("transform").init(k_init, sizes)
    params = [dict(layer, W=t["W"], b=t["b"]) for layer, t in zip(layout, state.params, strict=True)]
    update = jax.jit(norm.transform_update, static_argnames=("activation", "gamma"))
    states = {"none": none, "transform": update(params, none, x, activation="tanh"),
              "transform_gamma": update(params, none, x, activation="tanh", gamma=True)}
    loss_fn = train.freeze(model("transform").eval_loss_fn)
    blocks = spectrum.param_blocks(params)
    rtol = 1e-4 if x.dtype == jnp.float32 else 1e-8  # |eigenvalues| below rtol * max count as zero
    out = {"sizes": sizes, "num_params": fflab.mlp.num_params(params), "block_names": list(blocks.names)}
    for name, s in states.items():
        h = np.asarray(analysis.hessian(loss_fn, params, s, x, y), np.float64)
        ggn = analysis.hessian_operator(None, params, (s, x), y, curvature="ggn", output_fn=logits,
                                        loss=fflab.losses.cross_entropy)[0]
        fisher = np.asarray(jax.lax.map(ggn, jnp.eye(h.shape[0], dtype=x.dtype), batch_size=64), np.float64)
        eigs, dd = spectrum.eigenvalues(h), spectrum.diagonal_dominance
        mags = np.sort(np.abs(eigs))[::-1]
        out[name] = {"loss": float(loss_fn(params, s, x, y)), "coupling": spectrum.block_coupling(fisher, blocks),
                     "fisher_blocks_scaled": dd(fisher, blocks, scaled=True), "hessian_blocks": dd(h, blocks),
                     "hessian_blocks_scaled": dd(h, blocks, scaled=True), "hessian_elements": dd(h),
                     "decades": spectrum.decades_below_top(eigs), "log10_std": spectrum.log_spread(eigs, rtol=rtol)[1],
                     "abs_eigenvalues_desc": [float(f"{v:.4g}") for v in mags[:: max(1, mags.size // 300)]]}
    return out


def logits(params, state_and_x):
    """The transformed net's logits, ``state_and_x = (model_state, x)``: the output function of the Fisher matrix."""
    return model("transform").apply(params, *state_and_x)[0]


def main(config: Config, out_dir) -> dict:
    ds = data.load(config.dataset, data_dir=config.data_dir)
    sizes = [ds.x_train.shape[1], *config.hidden, ds.num_classes]
    runs = {net: train_net(config, ds, sizes, net) for net in NETS}
    t_state = [runs[net].pop("_state") for net in NETS][NETS.index("transform_gamma")]
    change, scale, moved = (float(v) for v in invariance(t_state.params, t_state.model_state, ds.x_train))
    hess = hessian_comparison(config, ds)

    def at_best(key, e):
        return {net: float(runs[net][key][runs[net]["best"], e]) for net in NETS}

    final, first, final_err = at_best("batch_loss", -1), at_best("batch_loss", 0), at_best("test_error", -1)
    best_lr = {n: runs[n]["best_lr"] for n in NETS}
    edge = [n for n in NETS if runs[n]["best"] in (0, len(config.learning_rates) - 1)]
    diverged = {n: [lr for lr, f in zip(config.learning_rates, runs[n]["finite"], strict=True) if not f] for n in NETS}
    tol = 1e-4 if jnp.zeros(()).dtype == jnp.float32 else 1e-10
    share = {p: hess[p]["fisher_blocks_scaled"] for p in PARAMETERISATIONS}
    spread = {p: hess[p]["decades"] for p in PARAMETERISATIONS}

    faster = {net: _common.below(final[net], final["plain"]) for net in NETS[1:]}
    claim = _common.claim
    claims = [
        claim(f"transformations change the optimisation (Raiko et al.): after {config.epochs} epochs of SGD, each "
              "at its best rate, the transformed net (alpha, beta, centred inputs) reaches a lower training loss "
              "than the plain one", {"final mean batch loss": final, "best learning rate": best_lr,
                                     "best rate at the grid's edge": edge, "final test error %": final_err,
                                     "first epoch's mean batch loss": first}, faster["transform"]),
        claim("... and with Vatanen et al.'s gamma too", {k: final[k] for k in ("plain", "transform_gamma")},
              faster["transform_gamma"]),
        claim("gamma further speeds up learning (Vatanen et al.): lower final training loss with gamma than without",
              {k: final[k] for k in ("transform", "transform_gamma")},
              _common.below(final["transform_gamma"], final["transform"])),
        claim("batch norm, the transformations' descendant, also trains faster than the plain net",
              {k: final[k] for k in ("plain", "batchnorm")}, faster["batchnorm"]),
        claim("the Fisher matrix (Raiko et al.'s statement; the lecture says Hessian) is closer to a diagonal with the "
              "transformations (same function, same parameters): smaller off-diagonal share over the parameter arrays "
              "as blocks, each block scaled by its two diagonal blocks", share,
              _common.below(share["transform"], share["none"])),
        claim("curvature is more even with transformations (Vatanen et al.): the median |eigenvalue| lies fewer orders "
              "of magnitude below the largest, with gamma", spread,
              _common.below(spread["transform_gamma"], spread["none"])),
    ]
    checks = [_common.check(
        "transformations do not change the model: re-estimating alpha, beta, gamma and the input centre of the "
        f"trained net on the whole training set moves its logits by less than {tol:g} x their scale",
        {"max |logit change|": change, "max |logit|": scale, "largest change of a transformation": moved},
        change <= tol * max(1.0, scale) and moved > 0)]
    results = {"sizes": sizes, "runs": runs, "hessian": hess}
    notes = (f"{config.dataset} stands in for MNIST. The papers' units (tanh), network {sizes}, the same initial "
             f"weights and mini-batches for all nets, plain SGD with batches of {config.batch_size} at each rate "
             f"of {list(config.learning_rates)}; the transformed nets re-estimate their transformations on every "
             "mini-batch (momentum 0.9) and have shortcut weights (more parameters). gamma is Vatanen et al.'s "
             "third transformation as fflab.norm.transform_update computes it: gamma^4 mean g^2 mean g'^2 = 1. The "
             f"Hessians are of a small {hess['sizes']} net with shortcuts ({hess['num_params']} parameters) trained "
             f"plainly for {config.hessian_epochs} epochs on {config.hessian_samples} pooled images; the loss is the "
             "same in every parameterisation (" + ", ".join(f"{hess[p]['loss']:.6g}" for p in PARAMETERISATIONS) + "). "
             + (f"Best rate at the grid's edge for {', '.join(edge)}: a wider grid could move it. " if edge else "")
             + "None / Raiko / with gamma: " + "; ".join(f"{k.replace('_', ' ')} " + " / ".join(
                 f"{hess[p][k]:.3f}" for p in PARAMETERISATIONS) for k in (*SHARES, "log10_std"))
             + " (log10 std: the old spread, over the |lambda| above the zero tolerance only). Unscaled shares and "
             "spreads move with the parameters' units (gamma rescales the outgoing weights), the Hessian's scaled "
             "share with its indefinite part. Diverged (non-finite losses): "
             + ("; ".join(f"{n} at {v}" for n, v in diverged.items() if v) or "none") + ".")
    return _common.save(NAME, config, results, claims, out_dir, checks=checks, notes=notes, plot=plot)


_COLORS = {"plain": "C0", "transform": "C2", "transform_gamma": "C1", "batchnorm": "C3", "none": "C0"}
_LABELS = {"plain": "plain", "transform": "transformed (Raiko)", "transform_gamma": "transformed + gamma (Vatanen)",
           "batchnorm": "batch norm", "none": "no transformations"}


def plot(payload: dict, out_dir) -> None:
    plt, r, config = _common.style(), payload["results"], payload["config"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), layout="constrained")
    for net in NETS:
        run = r["runs"][net]
        b, steps = run["best"], run["steps_per_epoch"] * np.arange(1, config["epochs"] + 1)
        label = f"{_LABELS[net]}, best rate {run['best_lr']:g}"
        axes[0].semilogy(steps, np.asarray(run["batch_loss"][b], float), "o-", color=_COLORS[net], label=label)
        last = np.asarray([row[-1] for row in run["batch_loss"]], float)
        axes[1].loglog(run["learning_rates"], last, "o-", color=_COLORS[net], label=_LABELS[net])
    axes[0].set(title="(a) training loss, each net at its best rate", xlabel="SGD step",
                ylabel="mean mini-batch cross-entropy (epoch)")
    axes[1].set(title="(b) final training loss against the rate (missing: diverged)", xlabel="learning rate",
                ylabel=f"mean mini-batch loss, epoch {config['epochs']}")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.suptitle(f"{'-'.join(map(str, r['sizes']))} tanh net on {config['dataset']}: same initial weights, same "
                 "mini-batches, plain SGD")
    _common.savefig(fig, out_dir, NAME)

    h = r["hessian"]
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.8), layout="constrained", width_ratios=(1, 1, 0.9, 1.1))
    names = [n.replace("'", "") for n in h["block_names"]]
    logs = {p: np.log10(np.maximum(np.asarray(h[p]["coupling"], float), 1e-6)) for p in ("none", "transform")}
    lo, hi = min(v.min() for v in logs.values()), max(v.max() for v in logs.values())
    for ax, p in zip(axes[:2], logs, strict=True):
        im = ax.imshow(logs[p], vmin=lo, vmax=hi, cmap="magma")
        ax.set(title=f"Fisher, {_LABELS[p]}\noff-block-diagonal share {h[p]['fisher_blocks_scaled']:.2f}")
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.grid(False)
    fig.colorbar(im, ax=axes[:2], shrink=0.8, label="log10 ||F_ab||_F / sqrt(||F_aa||_F ||F_bb||_F)")
    for i, p in enumerate(PARAMETERISATIONS):
        axes[2].bar(np.arange(len(SHARES)) + 0.27 * (i - 1), [h[p][k] for k in SHARES], 0.27, color=_COLORS[p],
                    label=_LABELS[p])
    axes[2].set(title="off-diagonal share of the matrix's norm", ylim=(0, 1.15))
    axes[2].set_xticks(range(len(SHARES)), list(SHARES.values()), fontsize=8)
    axes[2].legend(fontsize=7, loc="upper left")
    for p in PARAMETERISATIONS:
        mags = np.asarray(h[p]["abs_eigenvalues_desc"], float)
        axes[3].semilogy(np.linspace(0, 1, len(mags)), np.maximum(mags / mags[0], 1e-14), color=_COLORS[p],
                         label=f"{_LABELS[p]}: median {h[p]['decades']:.1f} decades down")
    axes[3].set(title="Hessian |eigenvalues|, largest first", xlabel="rank / number of parameters",
                ylabel="|eigenvalue| / largest", ylim=(1e-9, 1.5))
    axes[3].legend(fontsize=8)
    fig.suptitle(f"The Fisher matrix and Hessian of one {'-'.join(map(str, h['sizes']))} tanh net (with shortcuts, "
                 f"{h['num_params']} parameters) at one function, in three parameterisations")
    _common.savefig(fig, out_dir, f"{NAME}_hessian")


if __name__ == "__main__":
    raise SystemExit(_common.module_cli(__name__))
