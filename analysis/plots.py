"""Plots of curvature results (matplotlib): each draws on a given ``Axes``, or on a new one, and returns it.

They take :mod:`analysis`'s own results as they come: a :class:`analysis.density.SpectralDensity`, an
:class:`analysis.krylov.EigshResult`, the outputs of :func:`analysis.landscape.interpolate` and
:func:`analysis.landscape.slice_2d`, the records of :func:`analysis.sharpness.tracker`. matplotlib is imported
when a plot is drawn, so ``import analysis`` stays light; select a backend (e.g. ``matplotlib.use("Agg")``)
before the first plot where there is no display.

Example::

    density = analysis.spectral_density(matvec, dim, num_deflate=10, key=key)
    ax = analysis.plots.spectral_density(density, num_deflate=10)
    ax.figure.savefig("density.png")

References:
    Ghorbani, Krishnan & Xiao (2019), An investigation into neural net optimization via Hessian eigenvalue
    density (smoothed SLQ densities on a log axis).
    Goodfellow, Vinyals & Saxe (2015); Li, Xu, Taylor, Studer & Goldstein (2018) (landscape slices).
    Cohen, Kaur, Li, Kolter & Talwalkar (2021), Gradient descent on neural networks typically occurs at the edge
    of stability (sharpness against 2 / eta).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["eigenvalues", "line", "plane", "sharpness", "spectral_density"]


def _axes(ax):
    """``ax``, or the axes of a new figure."""
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots()
    return ax


def spectral_density(
    density,
    *,
    num_deflate: int = 0,
    ax=None,
    sigma: float | None = None,
    grid=None,
    num: int = 400,
    log: bool = True,
    floor: float | None = None,
    color: str = "C0",
    label: str | None = "bulk (SLQ, smoothed)",
    spike_label: str | None = "{k} deflated eigenvalues",
):
    """Draw a spectral density: the bulk as a Gaussian-smoothed curve, deflated eigenvalues as spikes.

    The bulk is :meth:`SpectralDensity.density` of the quadrature rules without their first ``num_deflate``
    nodes (it integrates to ``(dim - k) / dim``). Each deflated eigenvalue is an exact point mass ``1 / dim``
    (its weight); its spike rises to ``mass / (sigma sqrt(2 pi))``, the peak the same kernel would give it,
    so spikes and curve share one scale and a spike's height reads as "one eigenvalue".

    Args:
        density: a :class:`analysis.density.SpectralDensity` (``nodes`` and ``weights`` of shape
            ``(num_probes, m)``), e.g. from :func:`analysis.spectral_density`.
        num_deflate: how many leading nodes of each rule are deflated eigenvalues (the ``num_deflate``
            given to :func:`analysis.spectral_density`; 0: all of it is bulk).
        ax: the axes to draw on (default: a new figure).
        sigma: the kernel width (default: the nodes' range / 200).
        grid: ``(g,)`` points to evaluate the bulk on (default: ``num`` points over the nodes' range, padded
            by 5% on each side).
        num: grid size when ``grid`` is not given.
        log: logarithmic density axis (the bulk near zero and the outliers differ by orders of magnitude).
        floor: lowest density drawn on a log axis (default: a tenth of the smallest spike, or ``1e-8`` of the
            bulk's peak without spikes); the curve is clipped to it and the spikes start there.
        color: colour of curve and spikes.
        label, spike_label: legend entries (``{k}`` in ``spike_label`` becomes the number of spikes);
            ``None`` for none.

    Returns:
        The axes; the curve is ``ax.lines[-1]`` (or ``[-2]`` with spikes, whose markers come last) and the
        spikes a ``LineCollection`` in ``ax.collections``.
    """
    import jax.numpy as jnp

    from analysis.density import SpectralDensity

    ax = _axes(ax)
    nodes, weights = np.asarray(density.nodes, np.float64), np.asarray(density.weights, np.float64)
    k = int(num_deflate)
    if not 0 <= k < nodes.shape[1]:
        raise ValueError(f"num_deflate must lie in [0, {nodes.shape[1]}), got {num_deflate}")
    lo, hi = float(nodes.min()), float(nodes.max())
    width = (hi - lo) or max(abs(hi), 1.0)
    sigma = width / 200 if sigma is None else float(sigma)
    if grid is None:
        grid = np.linspace(lo - 0.05 * width, hi + 0.05 * width, int(num))
    rest = SpectralDensity(jnp.asarray(nodes[:, k:]), jnp.asarray(weights[:, k:]))
    bulk = np.asarray(rest.density(jnp.asarray(grid), sigma), np.float64)
    spikes, heights = nodes[0, :k], weights[0, :k] / (sigma * math.sqrt(2 * math.pi))
    if log:
        if floor is None:
            floor = 0.1 * heights.min() if k else 1e-8 * bulk.max()
        bulk = np.maximum(bulk, floor)
        ax.set_yscale("log")
    else:
        floor = 0.0
    ax.plot(grid, bulk, color=color, label=label)
    if k:
        ax.vlines(spikes, floor, heights, color=color, lw=1.2,
                  label=None if spike_label is None else spike_label.format(k=k))
        ax.plot(spikes, heights, "v", color=color, ms=4)
    if log:
        ax.set_ylim(bottom=floor)
    ax.set(xlabel="eigenvalue $\\lambda$", ylabel="density")
    return ax


def eigenvalues(
    result,
    *,
    ax=None,
    highlight: int = 0,
    color: str = "0.6",
    highlight_color: str = "C3",
    label: str | None = None,
    highlight_label: str | None = None,
    log: bool = False,
):
    """Bar chart of eigenvalues by index, each with its residual norm as an error bar.

    For a symmetric operator and a unit vector ``v``, some eigenvalue lies within ``||A v - theta v||`` of the
    Ritz value ``theta``: the error bar is that interval.

    Args:
        result: an :class:`analysis.krylov.EigshResult` (or anything with ``eigenvalues`` and ``residuals``
            of shape ``(k,)``), e.g. from :func:`analysis.eigsh`.
        ax: the axes to draw on (default: a new figure).
        highlight: draw the first ``highlight`` bars in ``highlight_color`` (e.g. the outliers).
        color, highlight_color: bar colours.
        label, highlight_label: legend entries of the plain and the highlighted bars.
        log: logarithmic eigenvalue axis (for positive eigenvalues).

    Returns:
        The axes; the bars are ``ax.containers[-1]`` (a ``BarContainer`` with its error bars).
    """
    ax = _axes(ax)
    values, residuals = np.asarray(result.eigenvalues, np.float64), np.asarray(result.residuals, np.float64)
    h = int(highlight)
    colors = [highlight_color] * h + [color] * (values.size - h)
    bars = ax.bar(np.arange(1, values.size + 1), values, yerr=residuals, color=colors, capsize=2,
                  error_kw={"lw": 0.8})
    if label is not None and h < values.size:
        bars.patches[h].set_label(label)
    if highlight_label is not None and h:
        bars.patches[0].set_label(highlight_label)
    if log:
        ax.set_yscale("log")
    ax.set(xlabel="index $i$", ylabel="eigenvalue $\\lambda_i$")
    return ax


def line(alphas, losses, *, ax=None, log: bool = False, ends: bool = True, label: str | None = None, **style):
    """The loss along a line, as from :func:`analysis.landscape.interpolate`, with its two ends marked.

    Args:
        alphas: ``(num,)`` positions ``alpha`` on ``(1 - alpha) params_a + alpha params_b``.
        losses: ``(num,)`` losses there.
        ax: the axes to draw on (default: a new figure).
        log: logarithmic loss axis.
        ends: dotted vertical lines at ``alpha = 0`` and ``1`` (drawn once per axes).
        label: legend entry.
        **style: passed to ``ax.plot`` (``color``, ``ls``, ...).

    Returns:
        The axes; the curve is ``ax.lines[-1]``.
    """
    ax = _axes(ax)
    if ends and not any(a.get_gid() == "line-ends" for a in ax.lines):
        for x in (0, 1):
            ax.axvline(x, color="k", lw=0.8, ls=":", gid="line-ends")
    ax.plot(np.asarray(alphas), np.asarray(losses), label=label, **style)
    if log:
        ax.set_yscale("log")
    ax.set(xlabel="$\\alpha$: $(1 - \\alpha)\\,\\theta_a + \\alpha\\,\\theta_b$", ylabel="loss")
    return ax


def plane(X, Y, Z, *, ax=None, levels=25, log: bool = True, colorbar: bool = True, label: str = "loss"):
    """Filled contours of the loss on a plane, as from :func:`analysis.landscape.slice_2d`.

    The centre ``(0, 0)`` (the parameters the plane goes through) is a red star and the grid's lowest point a
    white cross, so a reader sees at once whether the centre is the minimum of the slice.

    Args:
        X, Y, Z: ``(n2, n1)`` grids (``meshgrid`` "xy" indexing): coefficients of the two directions and the
            loss there.
        ax: the axes to draw on (default: a new figure).
        levels: number of contour levels (spaced geometrically with ``log``) or the levels themselves (e.g.
            shared by several panels).
        log: logarithmic colour scale (``Z`` must be positive).
        colorbar: add a colour bar labelled ``label``.
        label: what ``Z`` is.

    Returns:
        The axes; the filled contours are ``ax.collections[0]``.
    """
    from matplotlib.colors import LogNorm

    ax = _axes(ax)
    X, Y, Z = (np.asarray(a, np.float64) for a in (X, Y, Z))
    if np.ndim(levels) == 0:
        lo, hi = float(Z.min()), float(Z.max())
        levels = np.geomspace(lo, hi * (1 + 1e-9), int(levels)) if log else np.linspace(lo, hi, int(levels))
    levels = np.asarray(levels, np.float64)
    filled = ax.contourf(X, Y, Z, levels=levels, norm=LogNorm() if log else None, extend="both")
    ax.contour(X, Y, Z, levels=levels[::3], colors="w", linewidths=0.5)
    i = np.unravel_index(np.argmin(Z), Z.shape)
    ax.plot(0, 0, "*", color="r", ms=12, label="centre")
    ax.plot(X[i], Y[i], "x", color="w", ms=8, mew=2, label="grid minimum")
    ax.set(aspect="equal", xlabel="$a$ (direction 1)", ylabel="$b$ (direction 2)")
    if colorbar:
        bar = ax.figure.colorbar(filled, ax=ax, label=label)
        if log:
            ticks = [v for v in 10.0 ** np.arange(np.floor(np.log10(levels[0])), np.ceil(np.log10(levels[-1])) + 1)
                     if levels[0] <= v <= levels[-1]]
            if len(ticks) >= 2:
                bar.set_ticks(ticks, labels=[f"{v:g}" for v in ticks])
                bar.minorticks_off()
    return ax


def sharpness(
    steps,
    values,
    *,
    lr: float | None = None,
    limit: float | None = None,
    ax=None,
    log: bool = False,
    color: str | None = None,
    label: str | None = "$\\lambda_{max}$",
    limit_label: str | None = "{name} = {limit:.3g}",
    **style,
):
    """Sharpness over training steps with the stability limit ``2 / eta`` as a dashed line [Cohen et al. 2021].

    Gradient descent with step size ``eta`` is stable on a quadratic while ``lambda_max < 2 / eta``; on neural
    networks the sharpness rises to that line and hovers there (the edge of stability). Several runs (step sizes)
    share one axes: each call draws its curve and its limit in one colour.

    Args:
        steps: ``(r,)`` global steps of the records, e.g. ``fit``'s ``history["monitor_step"]``.
        values: ``(r,)`` the sharpness there, e.g. ``history["sharpness"]`` (or ``"preconditioned_sharpness"``
            with ``limit``); ``None`` entries (``null`` in ``metrics.json``) are gaps.
        lr: the step size ``eta``: draws the line ``2 / eta``.
        limit: draw the line here instead, e.g. Adam's ``2 (1 + beta1) / ((1 - beta1) eta)`` (``38 / eta`` for
            ``beta1 = 0.9``) against the preconditioned sharpness [Cohen et al. 2022]. Neither: no line.
        ax: the axes to draw on (default: a new figure).
        log: logarithmic sharpness axis.
        color: colour of curve and line (default: the axes' next colour).
        label: legend entry of the curve.
        limit_label: legend entry of the line (``{limit}`` becomes its value, ``{name}`` ``2/eta`` or
            ``limit``); ``None`` for none.
        **style: passed to ``ax.plot`` for the curve (``marker``, ``lw``, ...).

    Returns:
        The axes; the curve is ``ax.lines[-1]``, or ``ax.lines[-2]`` when the limit is drawn, the limit
        ``ax.lines[-1]`` (gid ``"stability-limit"``).
    """
    ax = _axes(ax)
    steps = np.asarray(steps, np.float64)
    values = np.asarray([np.nan if v is None else v for v in np.asarray(values, object).ravel()], np.float64)
    if steps.shape != values.shape:
        raise ValueError(f"steps and values must have the same shape, got {steps.shape} and {values.shape}")
    if lr is not None and limit is not None:
        raise ValueError("give lr (the line 2 / lr) or limit, not both")
    (curve,) = ax.plot(steps, values, color=color, label=label, **style)
    if lr is not None or limit is not None:
        name, limit = ("$2/\\eta$", 2 / float(lr)) if limit is None else ("limit", float(limit))
        ax.axhline(limit, color=curve.get_color(), ls="--", lw=1, gid="stability-limit",
                   label=None if limit_label is None else limit_label.format(name=name, limit=limit))
    if log:
        ax.set_yscale("log")
    ax.set(xlabel="step", ylabel="sharpness $\\lambda_{max}$")
    return ax
