"""Initialisation schemes: which keep the forward and backward signal of a deep relu net (lecture: "Initialization").

A relu unit is on half the time, so with weight variance ``s^2`` the second moment of ``z_l`` is multiplied by
``n_in s^2 / 2`` per layer forward and that of ``delta_l = dC/dz_l`` by ``n_out s^2 / 2`` backward: ``sqrt(2 /
n_in)`` (``he_forward``) keeps the forward signal, ``sqrt(2 / n_out)`` (``he_backward``) the backward one, and where
the widths differ the lecture's ``sqrt(4 / (n_in + n_out))`` (``glorot_relu``) strikes the balance (Glorot & Bengio
2010). On a tapering relu net we measure both per layer (:func:`fflab.signals.second_moments` under an ``N(0, 1)``
output cotangent, mean over weight draws) next to that mean-field prediction, and train each scheme. Then three
contrasts from the papers: Glorot & Bengio's standard against normalised uniform init of a 5-layer tanh net; He et
al.'s 30-layer relu net, which trains under He init and stalls under Glorot's; Saxe et al.'s products of Gaussian
against orthogonal matrices, whose singular values collapse or stay at 1.
"""

import contextlib
import functools
import math
import sys
import time
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


@dataclass(frozen=True)
class Config:
    dataset: str = "digits"
    data_dir: str | None = None
    widths: tuple = (192, 160, 128, 96, 80, 64, 48, 32, 24)  # hidden widths, tapering
    # "scheme" or "scheme*scale"; orthogonal*1.4142 is orthogonal with the relu gain sqrt(2).
    schemes: tuple = ("glorot_relu", "glorot", "he_forward", "he_backward", "lecun", "sparse", "orthogonal",
                      "orthogonal*1.4142", "glorot_relu*0.5", "glorot_relu*2")
    draws: int = 6  # weight draws the signal profiles are averaged over
    signal_batch: int = 128
    train_samples: int = 0  # 0: the whole training set
    epochs: int = 6
    batch_size: int = 64
    learning_rate: float = 0.003  # SGD with momentum 0.9 (He et al. 2015 train with SGD + momentum)
    gb_width: int = 500  # Glorot & Bengio: 5 hidden tanh layers of 1000 units
    gb_depth: int = 5
    he_depth: int = 30
    he_width: int = 96
    he_seeds: int = 1
    he_epochs: int = 6
    saxe_n: int = 100
    saxe_depth: int = 20
    seed: int = 0


# QUICK drops sparse and the orthogonal variants (their per-layer-shape draws compile for seconds) and shrinks
# draws, epochs and the Glorot-Bengio / Saxe sizes; saxe_n equals he_width, so the draws share a compiled sampler.
QUICK = Config(schemes=("glorot_relu", "glorot", "he_forward", "he_backward", "lecun", "glorot_relu*0.5",
                        "glorot_relu*2"), draws=4, epochs=4, he_epochs=4, gb_width=200, saxe_n=96)
FULL = Config(dataset="fashion-mnist", widths=(384, 320, 256, 224, 192, 160, 128, 112, 96, 80, 64), draws=16,
              signal_batch=256, train_samples=5000, epochs=8, batch_size=128, gb_width=1000, he_width=192,
              he_seeds=2, he_epochs=8, saxe_n=400)


def parse_scheme(text: str) -> tuple[str, float]:
    """``"he_forward"`` -> ``("he_forward", 1.0)``; ``"glorot_relu*0.5"`` -> ``("glorot_relu", 0.5)``."""
    name, _, scale = text.partition("*")
    return name, float(scale or 1.0)


def mean_field_gains(sizes, scheme: str, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Mean-field second moments of ``z_l`` and ``delta_l`` of a relu MLP, relative to layer 1 and layer L.

    ``q_l = q_{l-1} n_in s^2 / 2`` forward and ``r_{l-1} = r_l n_out s^2 / 2`` backward, with ``s`` the weight std
    of layer ``l`` (:func:`fflab.init.std`): the slide's independent signals. Returns ``(forward, backward)``, each
    of shape ``(L,)`` with ``forward[0] = 1`` and ``backward[-1] = 1``.
    """
    var = [init.std(scheme, a, b, scale=scale) ** 2 for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
    fwd, bwd = [1.0], [1.0]
    for layer in range(1, len(var)):
        fwd.append(fwd[-1] * sizes[layer] * var[layer] / 2)
        bwd.append(bwd[-1] * sizes[-layer] * var[-layer] / 2)
    return np.array(fwd), np.array(bwd[::-1])


def saxe_spectra(key, n: int, depth: int, scheme: str, *, record=(1, 2, 5, 10, 20)) -> dict[int, np.ndarray]:
    """Singular values (descending) of products ``W_1 ... W_d`` of ``(n, n)`` matrices drawn from ``scheme``, for
    each ``d`` in ``record`` up to ``depth`` and for ``depth``; the product is formed in float64 on the host, as at
    depth 20 the smallest singular values of a Gaussian product fall far below float32's resolution."""
    product, spectra = np.eye(n), {}
    for d, k in enumerate(jax.random.split(key, depth), start=1):
        product = product @ np.asarray(init.weights(k, n, n, scheme), np.float64)
        if d in record or d == depth:
            spectra[d] = np.linalg.svd(product, compute_uv=False)
    return spectra


@contextlib.contextmanager
def _one_blas_thread():
    """LAPACK (the orthogonal draws' QR, the SVDs) on one OpenBLAS thread: with two threads on two busy cores a
    192 x 160 QR spin-waits for seconds. jax's LAPACK is scipy's OpenBLAS, loaded lazily: import it first."""
    import scipy.linalg  # noqa: F401
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _curves(inits, x, y, *, epochs: int, config: Config, key) -> list[list[float]]:
    """Training loss on ``(x, y)`` at init and after each epoch for each parameter set, SGD with momentum 0.9 by
    :func:`fflab.train.fit`; a run stops at its first non-finite loss and the rest of its curve is NaN."""
    model, opt = classifier("relu"), train.make_optimizer("momentum", config.learning_rate, momentum=0.9)
    curves = []
    for params in inits:
        losses = [train.evaluate(model.loss_fn, params, x, y)["loss"]]

        def record(epoch, state, losses=losses):
            loss = train.evaluate(model.loss_fn, state.params, x, y)["loss"]
            if not math.isfinite(loss):
                raise FloatingPointError(loss)
            losses.append(loss)

        with contextlib.suppress(FloatingPointError):  # fit's NonFiniteLossError is one too
            train.fit(train.init_state(params, opt, key), opt, (x, y), loss_fn=model.loss_fn, epochs=epochs,
                      batch_size=config.batch_size, eval_every=epochs, callback=record, progress=False,
                      record_grad_norm=False)
        curves.append(losses + [math.nan] * (epochs + 1 - len(losses)))
    return curves


def _decrease(curve) -> float:
    """Relative fall of the training loss, ``1 - final / initial``; ``-inf`` if the run went non-finite."""
    return float(1 - curve[-1] / curve[0]) if math.isfinite(curve[-1]) else -math.inf


def main(config: Config, out_dir) -> dict:
    with _one_blas_thread():
        return _main(config, out_dir)


def _main(config: Config, out_dir) -> dict:
    variants, dtype = [parse_scheme(s) for s in config.schemes], jnp.zeros(()).dtype
    ds = data.load(config.dataset, data_dir=config.data_dir)
    n = config.train_samples or len(ds.x_train)
    x, y = jnp.asarray(ds.x_train[:n], dtype), jnp.asarray(ds.y_train[:n])
    x_sig, y_sig = x[: config.signal_batch], y[: config.signal_batch]
    sizes = [x.shape[1], *config.widths, ds.num_classes]
    keys, seconds, tic = jax.random.split(jax.random.key(config.seed), 6), {}, time.perf_counter()

    # 1. Forward and backward signal per layer at init, mean over weight draws, and its mean-field prediction.
    moments, draw_keys = jax.jit(signals.second_moments), jax.random.split(keys[0], config.draws)
    cotangents = np.asarray(init.flat_draw(jax.random.normal, jax.random.fold_in(keys[0], 1),
                                           (config.draws, len(x_sig), sizes[-1]), dtype))  # on the host: no unstack
    profiles, theory = {}, {}
    for label, (scheme, scale) in zip(config.schemes, variants, strict=True):
        stats = [moments(mlp.init(k, sizes, init=scheme, scale=scale, dtype=dtype), x_sig, cot)
                 for k, cot in zip(draw_keys, cotangents, strict=True)]
        profiles[label] = {d: np.mean([np.asarray(getattr(s, d)) for s in stats], axis=0)
                           for d in ("forward", "backward")}
        theory[label] = dict(zip(("forward", "backward"), mean_field_gains(sizes, scheme, scale), strict=True))
    gains = {label: {"forward": float(p["forward"][-1] / p["forward"][0]),
                     "backward": float(p["backward"][0] / p["backward"][-1])} for label, p in profiles.items()}
    worst = {label: max(abs(math.log10(g["forward"])), abs(math.log10(g["backward"])))
             for label, g in gains.items()}  # decades the signal drifts in its worse direction
    seconds["signals"], tic = time.perf_counter() - tic, time.perf_counter()

    # 2. Training curves of every scheme from the same draw.
    inits = [mlp.init(keys[1], sizes, init=scheme, scale=scale, dtype=dtype) for scheme, scale in variants]
    curves = _curves(inits, x, y, epochs=config.epochs, config=config, key=keys[2])
    training = {label: {"loss": c, "decrease": _decrease(c)} for label, c in zip(config.schemes, curves, strict=True)}
    seconds["training"], tic = time.perf_counter() - tic, time.perf_counter()

    # 3. Glorot & Bengio (2010): the back-propagated gradient per tanh layer, standard against normalised init.
    gb_sizes, gb = [x.shape[1], *[config.gb_width] * config.gb_depth, ds.num_classes], {}
    tanh_stats = jax.jit(functools.partial(signals.gradient_stats, activation="tanh"))
    for kind, scheme in (("standard", "standard_uniform"), ("normalised", "glorot_uniform")):
        stats = [tanh_stats(mlp.init(k, gb_sizes, init=scheme, dtype=dtype), x_sig, y_sig)
                 for k in jax.random.split(keys[3], 4)]
        delta = np.mean([np.asarray(s.delta_var) for s in stats], axis=0)[: config.gb_depth]
        ratio = float(delta[0] / delta[-1])
        gb[kind] = {"delta_var": delta, "ratio_1_to_last": ratio,
                    "factor_per_layer": ratio ** (1 / (config.gb_depth - 1)),
                    "weight_grad_var": np.mean([np.asarray(s.weight_grad_var) for s in stats], 0)[: config.gb_depth]}
    seconds["glorot_bengio"], tic = time.perf_counter() - tic, time.perf_counter()

    # 4. He et al. (2015): a 30-layer relu net, he_forward against glorot, the same budget; one compiled epoch.
    he_sizes, he_schemes = [x.shape[1], *[config.he_width] * (config.he_depth - 1), ds.num_classes], ("he_forward",
                                                                                                      "glorot")
    inits = [mlp.init(k, he_sizes, init=scheme, dtype=dtype) for scheme in he_schemes
             for k in jax.random.split(keys[4], config.he_seeds)]
    he_curves = _curves(inits, x, y, epochs=config.he_epochs, config=config, key=keys[2])
    he = {}
    for i, scheme in enumerate(he_schemes):
        c = he_curves[i * config.he_seeds: (i + 1) * config.he_seeds]
        he[scheme] = {"loss": c, "decrease": [_decrease(ci) for ci in c],
                      "median_decrease": float(np.median([_decrease(ci) for ci in c]))}
    seconds["he_2015"], tic = time.perf_counter() - tic, time.perf_counter()

    # 5. Saxe et al. (2014): singular values of products of Gaussian N(0, 1/N) (lecun) and orthogonal matrices.
    saxe = {}
    for scheme in ("lecun", "orthogonal"):
        spectra = saxe_spectra(keys[5], config.saxe_n, config.saxe_depth, scheme)
        top = spectra[config.saxe_depth]
        saxe[scheme] = {"spectra": {str(d): s for d, s in spectra.items()},
                        "fraction_below_0.1": float(np.mean(top < 0.1)),
                        "median": float(np.median(top)), "mean_square": float(np.mean(top**2)),
                        "max_abs_deviation_from_1": float(np.max(np.abs(top - 1)))}
    seconds["saxe_2014"] = time.perf_counter() - tic

    keepers_dec = {s: training[s]["decrease"] for s in KEEPERS}
    he_fwd, he_bwd = gains["he_forward"]["forward"], gains["he_backward"]["backward"]
    claims = [
        _common.claim("he_forward, std sqrt(2/n_in), keeps the forward signal: end-to-end gain within 2x",
                      he_fwd, abs(math.log10(he_fwd)) < 0.3),
        _common.claim("he_backward, std sqrt(2/n_out), keeps the backward signal: end-to-end gain within 2x",
                      he_bwd, abs(math.log10(he_bwd)) < 0.3),
        _common.claim("the lecture's sqrt(4/(n_in+n_out)) strikes the balance: in its worse direction the "
                      "signal drifts fewer decades than under either one-sided He scheme",
                      {s: worst[s] for s in KEEPERS},
                      worst["glorot_relu"] < min(worst["he_forward"], worst["he_backward"])),
        _common.claim("too small (x0.5) a scale makes the forward signal vanish (gain < 1e-3), too large "
                      "(x2) makes it explode (gain > 1e3)",
                      {SMALL: gains[SMALL]["forward"], LARGE: gains[LARGE]["forward"]},
                      gains[SMALL]["forward"] < 1e-3 and gains[LARGE]["forward"] > 1e3),
        _common.claim("the signal-keeping schemes train: training loss falls by more than half",
                      keepers_dec, min(keepers_dec.values()) > 0.5),
        _common.claim("too small a scale stalls: training loss falls by less than 10%",
                      training[SMALL]["decrease"], training[SMALL]["decrease"] < 0.1),
        _common.claim("too large a scale does not train: the loss goes non-finite or ends above its start",
                      training[LARGE]["loss"][-1], training[LARGE]["decrease"] < 0),
        _common.claim("Glorot & Bengio: standard init shrinks layer 1's back-propagated gradient below 1/10 "
                      "of the last hidden layer's; normalised init keeps the ratio within 2x of 1",
                      {k: v["ratio_1_to_last"] for k, v in gb.items()},
                      gb["standard"]["ratio_1_to_last"] < 0.1
                      and abs(math.log10(gb["normalised"]["ratio_1_to_last"])) < 0.3),
        _common.claim(f"He et al.: a {config.he_depth}-layer relu net trains under He init (loss falls by "
                      "more than half) and stalls under Glorot init (by less than 10%), median over seeds",
                      {k: v["median_decrease"] for k, v in he.items()},
                      he["he_forward"]["median_decrease"] > 0.5 and he["glorot"]["median_decrease"] < 0.1),
        _common.claim(f"Saxe et al.: in a product of {config.saxe_depth} Gaussian matrices most singular "
                      "values collapse (over half below 0.1); in a product of orthogonal ones all stay at 1 "
                      "(within 1e-4: float32 draws)",
                      {"gaussian_fraction_below_0.1": saxe["lecun"]["fraction_below_0.1"],
                       "orthogonal_max_abs_deviation": saxe["orthogonal"]["max_abs_deviation_from_1"]},
                      saxe["lecun"]["fraction_below_0.1"] > 0.5
                      and saxe["orthogonal"]["max_abs_deviation_from_1"] < 1e-4),
    ]
    checks = []
    results = {"sizes": sizes, "he_net": {"depth": config.he_depth, "width": config.he_width}, "profiles": profiles,
               "mean_field": theory, "gains": gains, "worst_direction_decades": worst, "training": training,
               "glorot_bengio": gb, "he_2015": he, "saxe": saxe, "seconds": seconds}
    notes = ["Signal profiles: second moments of z_l and of delta_l (N(0, 1) output cotangent), mean over "
             f"{config.draws} weight draws, relative to layer 1 (forward) and the output layer (backward). "
             "The Gaussian schemes share their N(0, 1) draws (same keys), so they differ only by scale."]
    notes.append("Glorot & Bengio: per layer down, the back-propagated gradient's variance is multiplied by "
                 f"{gb['standard']['factor_per_layer']:.2f} under standard init (1/3 from Var[W] = 1/(3 n), "
                 f"times E[tanh'^2]) and by {gb['normalised']['factor_per_layer']:.2f} under normalised init "
                 "(n Var[W] = 1, so only E[tanh'^2] < 1 is lost); the input scale sets how far below 1 "
                 "that is.")
    if config.dataset == "fashion-mnist":
        notes.append("Fashion-MNIST stands in for MNIST, which cannot be downloaded here; the training "
                     f"curves use the first {config.train_samples or 'all'} training images.")
    if "sparse" in training:
        notes.append("sparse (Martens 2010: 15 N(0, 1) weights per unit) multiplies a relu net's forward "
                     f"signal by 7.5 per layer (measured end-to-end gain {gains['sparse']['forward']:.3g}); "
                     "Martens used it with tanh units and a second-order optimiser: unscaled, it does not "
                     "suit a deep relu net trained by SGD.")
    notes.append("glorot, lecun and orthogonal (gain 1) are the tanh/linear scales: in a relu net they halve "
                 "the signal per layer; orthogonal*1.4142 restores the relu gain sqrt(2). Saxe spectra: "
                 "values below ~1e-16 of the largest are float64 round-off.")
    payload = _common.save(NAME, config, results, claims, out_dir, checks=checks, notes=" ".join(notes))
    plot(payload, out_dir)
    return payload


def plot(payload: dict, out_dir) -> None:
    plt, r, cfg = _common.style(), payload["results"], payload["config"]
    labels, arr = list(r["profiles"]), functools.partial(np.asarray, dtype=float)  # JSON null (NaN) -> nan
    color, widths = {label: plt.cm.tab10(i % 10) for i, label in enumerate(labels)}, r["sizes"][1:]
    layers = np.arange(1, len(widths) + 1)

    # Signals per layer: the mean field as a wide pale line, the measurements as markers on it.
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6), gridspec_kw={"width_ratios": [1, 1, 0.9]})
    for i, key in enumerate(("forward", "backward")):
        for label in labels:
            measured = arr(r["profiles"][label][key])
            axes[i].plot(layers, arr(r["mean_field"][label][key]), "-", lw=6, alpha=0.25, color=color[label])
            axes[i].plot(layers, measured / measured[0 if key == "forward" else -1], "o", ms=4, color=color[label],
                         label=label)
            if label in KEEPERS:
                axes[2].plot(layers, measured / measured[0 if key == "forward" else -1], "o-" if i == 0 else "s--",
                             ms=4, color=color[label], label=f"{label} {key}")
    axes[0].set(ylabel="second moment, relative", title="forward: E[z_l^2] / E[z_1^2]")
    axes[1].set(title="backward: E[delta_l^2] / E[delta_L^2]")
    axes[2].set(ylim=(1 / 60, 60), title="zoom: the relu scales, measured")
    for ax in axes:
        ax.set(yscale="log", xticks=layers, xlabel="layer l / its width n_out")
        ax.set_xticklabels([f"{i}\n{w}" for i, w in zip(layers, widths, strict=True)], fontsize=7)
    axes[0].set_ylim(1e-10, 1e10), axes[1].set_ylim(1e-10, 1e10), axes[2].legend(fontsize=7, loc="upper left")
    handles = [plt.Line2D([], [], color="gray", lw=6, alpha=0.25), plt.Line2D([], [], color="gray", marker="o", ls="")]
    axes[0].legend(handles, ["mean field (wide pale line)", "measured (markers)"], loc="upper left", fontsize=8)
    axes[1].legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=5, fontsize=8)
    fig.suptitle(f"Relu net, widths {widths[0]} -> {widths[-2]} (+ {widths[-1]} outputs): signal per layer at init, "
                 f"mean of {cfg['draws']} draws")
    _common.savefig(fig, out_dir, NAME)

    # Training curves; losses above TOP (the exploding inits) are drawn at the top edge and named.
    top, (fig, ax) = 30.0, plt.subplots(figsize=(8.5, 4.2))
    for label in labels:
        loss = arr(r["training"][label]["loss"])
        last = np.flatnonzero(np.isfinite(loss))[-1]
        name = label + (f" (starts at {loss[0]:.0e})" if np.nanmax(loss) > top else "")
        ax.plot(np.arange(len(loss)), np.minimum(loss, top), "-o", ms=4, color=color[label],
                label=name + (", then non-finite" if last < len(loss) - 1 else ""))
        if last < len(loss) - 1:  # went non-finite: mark the last finite epoch
            ax.plot(last, min(loss[last], top), "x", ms=10, mew=2, color=color[label])
    ax.set(yscale="log", ylim=(None, top * 1.3), xlabel="epoch", ylabel="training loss (cross-entropy)",
           title=f"Training each init ({cfg['dataset']}, SGD momentum lr {cfg['learning_rate']:g})\n"
           f"losses above {top:g} drawn at {top:g}; x: the next epoch's loss was non-finite")
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5))
    _common.savefig(fig, out_dir, f"{NAME}_training")

    # The three papers.
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    for kind, marker in (("standard", "-o"), ("normalised", "-s")):
        g = r["glorot_bengio"][kind]
        axes[0].plot(layers[: len(g["delta_var"])], arr(g["delta_var"]), marker,
                     label=f"{kind}: layer 1 / layer {len(g['delta_var'])} = {g['ratio_1_to_last']:.3g}")
    axes[0].set(yscale="log", xlabel="hidden layer l", ylabel="Var[dC/dz_l] (back-propagated gradient)",
                title=f"Glorot & Bengio 2010\ntanh, {cfg['gb_depth']} x {cfg['gb_width']}, at init")
    for scheme, c in (("he_forward", "C0"), ("glorot", "C3")):
        for i, loss in enumerate(r["he_2015"][scheme]["loss"]):
            axes[1].plot(arr(loss), "-o", ms=3, color=c, label=scheme if i == 0 else None)
    axes[1].set(xlabel="epoch", ylabel="training loss",
                title=f"He et al. 2015\n{r['he_net']['depth']}-layer relu, width {r['he_net']['width']}")
    spectra = r["saxe"]["lecun"]["spectra"]
    for i, d in enumerate(spectra):
        axes[2].plot(np.maximum(arr(spectra[d]), 1e-18), color=plt.cm.Oranges(0.35 + 0.65 * i / (len(spectra) - 1)),
                     label=f"Gaussian N(0, 1/N), depth {d}")
    axes[2].plot(arr(r["saxe"]["orthogonal"]["spectra"][d]), color="C2", lw=2.5, label=f"orthogonal, depth {d}")
    axes[2].set(yscale="log", xlabel="index i (descending)", ylabel="singular value s_i",
                title=f"Saxe et al. 2014\nproducts of {cfg['saxe_n']} x {cfg['saxe_n']} matrices")
    for ax in axes:
        ax.legend(fontsize=8, loc="lower left" if ax is axes[2] else "best")
    fig.subplots_adjust(wspace=0.3)
    _common.savefig(fig, out_dir, f"{NAME}_papers")


if __name__ == "__main__":
    raise SystemExit(_common.module_cli(sys.modules[__name__]))
