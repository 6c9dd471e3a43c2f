"""Initialisation schemes: which keep the forward and backward signal of a deep relu net (lecture: "Initialization").

With weight variance ``s^2`` a relu layer multiplies ``E[z^2]`` by ``n_in s^2 / 2`` and ``E[delta^2]`` by ``n_out s^2
/ 2``: ``he_forward`` keeps the one, ``he_backward`` the other, the lecture's ``sqrt(4 / (n_in + n_out))`` strikes the
balance. We measure both on a tapering relu net, train each scheme, and redo three papers' contrasts.
"""

import contextlib
import functools
import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from experiments import _common
from fflab import classifier, data, init, mlp, signals, train

NAME = "initialization"
DESCRIPTION = "Init schemes vs the forward/backward signal of a deep tapering relu net; Glorot, He, Saxe"
SLIDE = "Tricks of the trade I: Initialization, W_ij ~ sqrt(4/(n_i+n_j)) N(0,1), strike a balance"
PAPERS = {"Glorot & Bengio 2010": "https://proceedings.mlr.press/v9/glorot10a.html",
          "He et al. 2015": "https://arxiv.org/abs/1502.01852", "Saxe et al. 2014": "https://arxiv.org/abs/1312.6120",
          "Martens 2010": "https://www.cs.toronto.edu/~jmartens/docs/Deep_HessianFree.pdf"}

KEEPERS = ("glorot_relu", "he_forward", "he_backward")  # the lecture's scheme and its two one-sided versions
SMALL, LARGE = "glorot_relu*0.5", "glorot_relu*2"  # too small and too large a scale
TWO = math.log10(2)  # "within a factor 2", in decades
GB_DEPTH, HE_DEPTH, SAXE_DEPTH = 5, 30, 20  # the papers' depths: hidden tanh layers, relu layers, matrices


@dataclass(frozen=True)
class Config:
    dataset: str = "digits"
    data_dir: str | None = None
    widths: tuple = (192, 160, 128, 96, 80, 64, 48, 32, 24)  # hidden widths, tapering
    schemes: tuple = ("glorot_relu", "glorot", "he_forward", "he_backward", "lecun", "sparse", "orthogonal",
                      "orthogonal*1.4142", "glorot_relu*0.5", "glorot_relu*2")  # "scheme*scale"
    draws: int = 6  # weight draws the signal profiles are averaged over
    signal_batch: int = 128
    train_samples: int = 0  # 0: the whole training set
    epochs: int = 6
    batch_size: int = 64
    learning_rate: float = 0.003  # SGD with momentum 0.9, as He et al. 2015 train
    gb_width: int = 500  # Glorot & Bengio: 5 hidden tanh layers of 1000 units
    gb_draws: int = 4
    he_width: int = 96
    he_seeds: int = 1
    he_epochs: int = 6
    saxe_n: int = 100
    seed: int = 0


# QUICK: no sparse or orthogonal draws (they compile per layer shape); saxe_n = he_width shares a compiled sampler.
QUICK = Config(schemes=("glorot_relu", "glorot", "he_forward", "he_backward", "lecun", "glorot_relu*0.5",
                        "glorot_relu*2"), draws=4, epochs=4, he_epochs=4, gb_width=200, saxe_n=96)
FULL = Config(dataset="fashion-mnist", widths=(384, 320, 256, 224, 192, 160, 128, 112, 96, 80, 64), draws=16,
              signal_batch=256, train_samples=5000, epochs=8, batch_size=128, gb_width=1000, gb_draws=8,
              he_width=192, he_seeds=4, he_epochs=8, saxe_n=400)


def mean_field_gains(sizes, scheme: str, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The slide's relu recursions ``q_l = q_{l-1} n_in s_l^2 / 2`` and ``r_{l-1} = r_l n_out s_l^2 / 2``, from 1."""
    var = np.array([init.std(scheme, a, b, scale=scale) ** 2 for a, b in zip(sizes[:-1], sizes[1:], strict=True)])
    return (np.cumprod([1.0, *(np.asarray(sizes[1:-1]) * var[1:] / 2)]),
            np.cumprod([1.0, *(np.asarray(sizes[2:]) * var[1:] / 2)[::-1]])[::-1])


def saxe_spectra(key, n: int, depth: int, scheme: str, *, record=(1, 2, 5, 10, 20)) -> dict[int, np.ndarray]:
    """Singular values of products ``W_1 ... W_d`` of ``(n, n)`` draws of ``scheme``, in float64 (they fall far)."""
    product, spectra = np.eye(n), {}
    for d, k in enumerate(jax.random.split(key, depth), start=1):
        product = product @ np.asarray(init.weights(k, n, n, scheme), np.float64)
        if d in record or d == depth:
            spectra[d] = np.linalg.svd(product, compute_uv=False)
    return spectra


def _curves(inits, x, y, *, epochs: int, config: Config, key) -> list[dict]:
    """Per init, the training loss at init and per epoch until one is not finite (then NaN), and 1 - final / initial."""
    model, opt, curves = classifier("relu"), train.make_optimizer("momentum", config.learning_rate, momentum=0.9), []
    for params in inits:
        state, losses = train.init_state(params, opt, key), [train.evaluate(model.loss_fn, params, x, y)["loss"]]
        with contextlib.suppress(FloatingPointError):  # fit's NonFiniteLossError: the run stops there
            while len(losses) <= epochs:  # fit trains on to its epochs argument: one more epoch per call
                state, history, _ = train.fit(state, opt, (x, y), loss_fn=model.loss_fn, epochs=len(losses),
                                              batch_size=config.batch_size, progress=False, record_grad_norm=False)
                if not math.isfinite(history["train_loss"][-1]):
                    break
                losses.append(history["train_loss"][-1])
        fall = 1 - losses[-1] / losses[0] if len(losses) == epochs + 1 else -math.inf
        curves.append({"loss": losses + [math.nan] * (epochs + 1 - len(losses)), "decrease": fall})
    return curves


def main(config: Config, out_dir) -> dict:
    import scipy.linalg  # noqa: F401  jax's LAPACK (QR, SVD) is scipy's OpenBLAS, loaded lazily: load it, then
    from threadpoolctl import threadpool_limits  # limit it to one thread (two on two busy cores spin-wait)
    with threadpool_limits(limits=1, user_api="blas"):
        return _main(config, out_dir)


def _main(config: Config, out_dir) -> dict:
    variants = [(name, float(scale or 1)) for name, _, scale in (s.partition("*") for s in config.schemes)]
    ds, dtype = data.load(config.dataset, data_dir=config.data_dir), jnp.zeros(()).dtype
    n = config.train_samples or len(ds.x_train)
    x, y = jnp.asarray(ds.x_train[:n], dtype), jnp.asarray(ds.y_train[:n])
    x_sig, y_sig = x[: config.signal_batch], y[: config.signal_batch]
    sizes, keys = [x.shape[1], *config.widths, ds.num_classes], jax.random.split(jax.random.key(config.seed), 6)

    # 1. Forward and backward signal per layer at init, mean over weight draws, and its mean-field prediction.
    moments, draw_keys = jax.jit(signals.second_moments), jax.random.split(keys[0], config.draws)
    cotangents = np.asarray(init.flat_draw(jax.random.normal, jax.random.fold_in(keys[0], 1),
                                           (config.draws, len(x_sig), sizes[-1]), dtype))  # on the host: no unstack
    profiles, theory = {}, {}
    for label, (scheme, scale) in zip(config.schemes, variants, strict=True):
        stats = [moments(mlp.init(k, sizes, init=scheme, scale=scale, dtype=dtype), x_sig, cot)
                 for k, cot in zip(draw_keys, cotangents, strict=True)]
        profiles[label] = {d: np.mean([np.asarray(getattr(s, d)) for s in stats], 0) for d in ("forward", "backward")}
        theory[label] = dict(zip(("forward", "backward"), mean_field_gains(sizes, scheme, scale), strict=True))
    gains = {label: {"forward": float(p["forward"][-1] / p["forward"][0]),
                     "backward": float(p["backward"][0] / p["backward"][-1])} for label, p in profiles.items()}
    decades = {label: {d: math.log10(g) for d, g in v.items()} for label, v in gains.items()}
    worst = {label: max(abs(v) for v in d.values()) for label, d in decades.items()}  # in the worse direction

    # 2. Training curves of every scheme from the same draw.
    inits = [mlp.init(keys[1], sizes, init=scheme, scale=scale, dtype=dtype) for scheme, scale in variants]
    training = dict(zip(config.schemes, _curves(inits, x, y, epochs=config.epochs, config=config, key=keys[2]),
                        strict=True))

    # 3. Glorot & Bengio (2010): the back-propagated gradient per tanh layer, standard against normalised init.
    depth, gb, tanh_stats = GB_DEPTH, {}, jax.jit(functools.partial(signals.gradient_stats, activation="tanh"))
    for kind, scheme in (("standard", "standard_uniform"), ("normalised", "glorot_uniform")):
        stats = [tanh_stats(mlp.init(k, [x.shape[1], *[config.gb_width] * depth, ds.num_classes], init=scheme,
                                     dtype=dtype), x_sig, y_sig) for k in jax.random.split(keys[3], config.gb_draws)]
        delta = np.mean([np.asarray(s.delta_var) for s in stats], axis=0)[:depth]
        gb[kind] = {"delta_var": delta, "ratio_1_to_last": float(delta[0] / delta[-1]),
                    "ratio_per_draw": [float(s.delta_var[0] / s.delta_var[depth - 1]) for s in stats]}

    # 4. He et al. (2015): a 30-layer relu net, he_forward against glorot, the same budget; one compiled epoch.
    inits = [mlp.init(k, [x.shape[1], *[config.he_width] * (HE_DEPTH - 1), ds.num_classes], init=scheme, dtype=dtype)
             for scheme in ("he_forward", "glorot") for k in jax.random.split(keys[4], config.he_seeds)]
    runs, seeds = _curves(inits, x, y, epochs=config.he_epochs, config=config, key=keys[2]), config.he_seeds
    he = {scheme: {k: [r[k] for r in runs[i * seeds: (i + 1) * seeds]] for k in ("loss", "decrease")}
          for i, scheme in enumerate(("he_forward", "glorot"))}
    he_fall = {k: float(np.median(v["decrease"])) for k, v in he.items()}  # median over the seeds

    # 5. Saxe et al. (2014): singular values of products of Gaussian N(0, 1/N) (lecun) and orthogonal matrices.
    saxe = {}
    for scheme in ("lecun", "orthogonal"):
        top = (spectra := saxe_spectra(keys[5], config.saxe_n, SAXE_DEPTH, scheme))[SAXE_DEPTH]
        saxe[scheme] = {"spectra": {str(d): v for d, v in spectra.items()}, "below_0.1": float(np.mean(top < 0.1)),
                        "max_abs_deviation_from_1": float(np.max(np.abs(top - 1)))}
    claim = _common.claim
    keep, gb_ratio = {s: training[s]["decrease"] for s in KEEPERS}, {k: v["ratio_1_to_last"] for k, v in gb.items()}
    claims = [
        claim("he_forward, std sqrt(2/n_in), keeps the forward signal: end-to-end gain within a factor 2",
              gains["he_forward"]["forward"], _common.below(abs(decades["he_forward"]["forward"]), TWO)),
        claim("he_backward, std sqrt(2/n_out), keeps the backward signal: end-to-end gain within a factor 2",
              gains["he_backward"]["backward"], _common.below(abs(decades["he_backward"]["backward"]), TWO)),
        claim("the lecture's sqrt(4/(n_in+n_out)) strikes the balance: in its worse direction the signal drifts "
              "fewer decades than under either one-sided He scheme", {s: worst[s] for s in KEEPERS},
              _common.below(worst["glorot_relu"], min(worst["he_forward"], worst["he_backward"]))),
        claim("too small (x0.5) a scale makes the forward signal vanish (gain < 1e-3), too large (x2) explode (> 1e3)",
              {s: gains[s]["forward"] for s in (SMALL, LARGE)},
              _common.both(_common.below(decades[SMALL]["forward"], -3), _common.above(decades[LARGE]["forward"], 3))),
        claim("the signal-keeping schemes train: training loss falls by more than half", keep,
              _common.above(min(keep.values()), 0.5)),
        claim("too small a scale stalls: training loss falls by less than 10%", training[SMALL]["decrease"],
              _common.below(training[SMALL]["decrease"], 0.1)),
        claim("too large a scale does not train: the loss goes non-finite or ends above its start",
              training[LARGE]["loss"][-1], _common.below(training[LARGE]["decrease"], 0)),
        claim("Glorot & Bengio: standard init shrinks layer 1's back-propagated gradient below 1/10 of the last "
              "hidden layer's", gb_ratio["standard"], _common.below(gb_ratio["standard"], 0.1)),
        claim("Glorot & Bengio: normalised init keeps that ratio within a factor 2 of 1", gb_ratio["normalised"],
              _common.below(abs(math.log10(gb_ratio["normalised"])), TWO)),
        claim(f"He et al.: a {HE_DEPTH}-layer relu net trains under He init: loss falls by more than half "
              "(median over seeds)", he_fall["he_forward"], _common.above(he_fall["he_forward"], 0.5)),
        claim("He et al.: and it stalls under Glorot init: loss falls by less than 10%", he_fall["glorot"],
              _common.below(he_fall["glorot"], 0.1)),
        claim(f"Saxe et al.: in a product of {SAXE_DEPTH} Gaussian matrices most singular values collapse "
              "(over half below 0.1)", saxe["lecun"]["below_0.1"], _common.above(saxe["lecun"]["below_0.1"], 0.5)),
    ]
    homogeneity = {s: abs(gains[s]["forward"] / gains["glorot_relu"]["forward"] / f ** (2 * len(sizes) - 4) - 1)
                   for s, f in ((SMALL, 0.5), (LARGE, 2.0))}
    orthogonal = saxe["orthogonal"]["max_abs_deviation_from_1"]
    checks = [_common.check("relu homogeneity: scale s multiplies the forward gain by exactly s^(2(L-1)) (same draws; "
                            "relative error < 1e-4)", homogeneity, max(homogeneity.values()) < 1e-4),
              _common.check("a product of orthogonal matrices keeps every singular value at 1 (within 1e-4, float32 "
                            "draws)", orthogonal, orthogonal < 1e-4)]
    results = {"sizes": sizes, "profiles": profiles, "mean_field": theory, "gains": gains, "worst_decades": worst,
               "training": training, "glorot_bengio": gb, "he_2015": he, "he_median_decrease": he_fall, "saxe": saxe}
    per_layer = {k: v ** (1 / (depth - 1)) for k, v in gb_ratio.items()}
    listed = {k: ", ".join(f"{v:.3f}" for v in vs) for k, vs in (("gb", gb["normalised"]["ratio_per_draw"]),
                                                                 ("he", he["he_forward"]["decrease"]))}
    notes = (f"Signals: mean of {config.draws} weight draws; the Gaussian schemes share their N(0, 1) draws. Glorot & "
             f"Bengio: per layer down, the gradient's variance is multiplied by {per_layer['standard']:.2f} under "
             f"standard init (1/3 from Var[W], times E[tanh'^2]) and {per_layer['normalised']:.2f} under normalised "
             "init: their linear-regime argument keeps it at 1, but E[tanh'^2] < 1 on real inputs. Where the thinnest "
             f"verdicts flip: the normalised ratio at a factor {10 ** abs(math.log10(gb_ratio['normalised'])):.3f}, "
             f"not 2 (per draw: {listed['gb']}); He init at a fall of {he_fall['he_forward']:.3f}, not 0.5 (per seed: "
             f"{listed['he']}); see the papers' figure's last panel." + (
                 f" Fashion-MNIST (its first {n} images) stands in for MNIST." if "fashion" in config.dataset else ""))
    return _common.save(NAME, config, results, claims, out_dir, checks=checks, notes=notes, plot=plot)


def plot(payload: dict, out_dir) -> None:
    plt, r, cfg = _common.style(), payload["results"], payload["config"]
    labels, arr = list(r["profiles"]), functools.partial(np.asarray, dtype=float)  # JSON null (NaN) -> nan
    color, layers = {label: plt.cm.tab10(i % 10) for i, label in enumerate(labels)}, np.arange(1, len(r["sizes"]))

    # Signals per layer: the mean field as a wide pale line, the measurements as markers on it; a zoom on KEEPERS.
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6), gridspec_kw={"width_ratios": [1, 1, 0.9]})
    for i, key in enumerate(("forward", "backward")):
        for label in labels:
            measured = arr(r["profiles"][label][key]) / arr(r["profiles"][label][key])[0 if i == 0 else -1]
            axes[i].plot(layers, arr(r["mean_field"][label][key]), "-", lw=6, alpha=0.25, color=color[label])
            axes[i].plot(layers, measured, "o", ms=4, color=color[label], label=label)
            if label in KEEPERS:
                axes[2].plot(layers, measured, ("o-", "s--")[i], ms=4, color=color[label], label=f"{label} {key}")
    for ax, title, lim in zip(axes, ("forward: E[z_l^2] / E[z_1^2]", "backward: E[delta_l^2] / E[delta_L^2]",
                                     "zoom: the relu scales, measured"), (1e10, 1e10, 60), strict=True):
        ax.set(yscale="log", ylim=(1 / lim, lim), title=title, xticks=layers, xlabel="layer l / its width n_out")
        ax.set_xticklabels([f"{i}\n{w}" for i, w in zip(layers, r["sizes"][1:], strict=True)], fontsize=7)
    handles = [plt.Line2D([], [], color="gray", lw=6, alpha=0.25), plt.Line2D([], [], color="gray", marker="o", ls="")]
    axes[0].legend(handles, ["mean field (wide pale line)", "measured (markers)"], loc="upper left", fontsize=8)
    axes[1].legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=5, fontsize=8)
    axes[0].set_ylabel("second moment, relative"), axes[2].legend(fontsize=7, loc="upper left")
    _common.savefig(fig, out_dir, NAME)

    # Training curves; losses above TOP (the exploding inits) are drawn at the top edge, and the legend names them.
    top, (fig, ax) = 30.0, plt.subplots(figsize=(8.5, 4.2))
    for i, label in enumerate(labels):  # hollow markers of different shapes and sizes: curves that coincide all show
        loss = arr(r["training"][label]["loss"])
        ax.plot(np.minimum(loss, top), "-" + "os^vDPX*<>"[i % 10], ms=10 - 0.6 * i, mfc="none", color=color[label],
                label=label + (", then non-finite" if np.isnan(loss[-1]) else "") + (f" (starts at {loss[0]:.0e})"
                                                                                     if np.nanmax(loss) > top else ""))
    ax.set(yscale="log", ylim=(None, top * 1.3), xlabel="epoch", ylabel="training loss (cross-entropy)",
           title=f"Training each init ({cfg['dataset']}, SGD momentum, lr {cfg['learning_rate']:g}); cut at {top:g}")
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5))
    _common.savefig(fig, out_dir, f"{NAME}_training")

    # The three papers, and how the two thinnest verdicts move with the threshold and over draws and seeds.
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.4), gridspec_kw={"wspace": 0.3})
    for kind, g in r["glorot_bengio"].items():
        axes[0].plot(np.arange(1, GB_DEPTH + 1), arr(g["delta_var"]), "-o",
                     label=f"{kind}: layer 1 / layer {len(g['delta_var'])} = {g['ratio_1_to_last']:.3g}")
    for c, (scheme, runs) in zip(("C0", "C3"), r["he_2015"].items(), strict=True):
        for i, loss in enumerate(runs["loss"]):
            axes[1].plot(arr(loss), "-o", ms=3, color=c, label=None if i else scheme)
    for i, (d, spectrum) in enumerate(r["saxe"]["lecun"]["spectra"].items()):
        axes[2].plot(np.maximum(arr(spectrum), 1e-18), color=plt.cm.Oranges(0.35 + 0.15 * i), label=f"Gaussian, d={d}")
    axes[2].plot(arr(r["saxe"]["orthogonal"]["spectra"][d]), color="C2", lw=2.5, label=f"orthogonal, d={d}")
    stricter = np.linspace(-0.5, 0.5, 201)  # each draw's or seed's verdict holds while its margin exceeds this
    gb_margin = 1 - np.abs(np.log10(arr(r["glorot_bengio"]["normalised"]["ratio_per_draw"]))) / TWO
    he_margin = arr(r["he_2015"]["he_forward"]["decrease"]) / 0.5 - 1
    axes[3].plot(stricter, np.mean(gb_margin[:, None] > stricter, 0), label=f"G&B normalised ({len(gb_margin)} draws)")
    axes[3].plot(stricter, np.mean(he_margin[:, None] > stricter, 0), "--", label=f"He trains ({len(he_margin)} seeds)")
    axes[3].axvline(0, color="k", lw=0.8, ls=":")
    axes[0].set(yscale="log", xlabel="hidden layer l", ylabel="Var[dC/dz_l] (back-propagated gradient)",
                title=f"Glorot & Bengio 2010\ntanh, {GB_DEPTH} x {cfg['gb_width']}, at init")
    axes[1].set(xlabel="epoch", ylabel="training loss", title=f"He et al. 2015\n{HE_DEPTH}-layer relu, width "
                f"{cfg['he_width']}")
    axes[2].set(yscale="log", xlabel="index i (descending)", ylabel="singular value s_i", title=f"Saxe et al. 2014\n"
                f"products of d {cfg['saxe_n']} x {cfg['saxe_n']} N(0, 1/N) or orthogonal matrices")
    axes[3].set(xlabel="threshold made stricter by this fraction (0: the claim's)", title="the thin margins: verdict "
                "against threshold", ylabel="fraction of draws / seeds holding", ylim=(-0.05, 1.05))
    for ax in axes:
        ax.legend(fontsize=8, loc="lower left" if ax in axes[2:] else "best")
    _common.savefig(fig, out_dir, f"{NAME}_papers")


if __name__ == "__main__":
    raise SystemExit(_common.module_cli(__name__))
