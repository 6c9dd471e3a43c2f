"""analysis.plots: each plot draws, and its artists carry the data it was given (closed forms, not images)."""

import math

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from analysis import plots  # noqa: E402
from analysis.density import SpectralDensity  # noqa: E402
from analysis.krylov import EigshResult  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def _gaussians(grid, nodes, weights, sigma):
    """The smoothed density written out: mean over probes of sum_i w_i N(t; theta_i, sigma^2)."""
    z = (grid[:, None, None] - nodes[None]) / sigma
    return np.sum(weights[None] * np.exp(-0.5 * z**2), axis=(1, 2)) / (nodes.shape[0] * sigma * math.sqrt(2 * math.pi))


def test_spectral_density_spikes_are_the_deflated_eigenvalues():
    # Two deflated eigenvalues (9, 6) of a dim-60 operator, laid out as analysis.spectral_density returns them:
    # the same first columns in every probe's rule, weight 1 / dim each; the rest is a bulk in [0, 1].
    dim, rng = 60, np.random.default_rng(0)
    bulk_nodes = np.sort(rng.uniform(0, 1, (3, 5)), axis=1)
    bulk_weights = rng.dirichlet(np.ones(5), 3) * (dim - 2) / dim
    density = SpectralDensity(np.concatenate([np.tile([9.0, 6.0], (3, 1)), bulk_nodes], axis=1),
                              np.concatenate([np.full((3, 2), 1 / dim), bulk_weights], axis=1))
    sigma = 0.05
    ax = plots.spectral_density(density, num_deflate=2, sigma=sigma)
    (spikes,) = ax.collections
    segments = np.asarray(spikes.get_segments())  # (2, 2 points, xy)
    np.testing.assert_allclose(segments[:, 0, 0], [9.0, 6.0], rtol=1e-10)
    np.testing.assert_allclose(segments[:, 1, 1], 1 / dim / (sigma * math.sqrt(2 * math.pi)), rtol=1e-12)
    # The bulk curve is the smoothed rest of the rules, clipped at the floor where the spikes start.
    curve = ax.lines[0]
    grid, drawn = np.asarray(curve.get_xdata()), np.asarray(curve.get_ydata())
    nodes, weights = np.asarray(density.nodes), np.asarray(density.weights)
    want = _gaussians(grid, nodes[:, 2:], weights[:, 2:], sigma)
    floor = segments[0, 0, 1]
    np.testing.assert_allclose(drawn, np.maximum(want, floor), rtol=1e-10)
    assert floor == pytest.approx(0.1 * segments[0, 1, 1])
    assert ax.get_yscale() == "log" and ax.get_ylim()[0] == pytest.approx(floor)
    assert "2 deflated eigenvalues" in [t.get_text() for t in ax.legend().get_texts()]


def test_spectral_density_without_deflation_is_one_curve_of_mass_one():
    nodes = np.array([[0.0, 1.0, 3.0], [0.5, 1.5, 2.0]])
    weights = np.array([[0.2, 0.5, 0.3], [0.6, 0.2, 0.2]])
    fig, ax = plt.subplots()
    assert plots.spectral_density(SpectralDensity(nodes, weights), ax=ax, log=False, num=2001) is ax
    assert not ax.collections and len(ax.lines) == 1
    x, y = (np.asarray(a) for a in ax.lines[0].get_data())
    np.testing.assert_allclose(y, _gaussians(x, nodes, weights, 3.0 / 200), rtol=1e-10)
    # The grid spans the nodes' range padded by 5%: the curve holds (nearly) all of the mass.
    assert (x[0], x[-1]) == pytest.approx((-0.15, 3.15))
    assert np.sum(y) * (x[1] - x[0]) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="num_deflate"):
        plots.spectral_density(SpectralDensity(nodes, weights), num_deflate=3)


def test_eigenvalue_bars_carry_values_and_residuals():
    result = EigshResult(np.array([5.0, 3.0, 1.0, 0.5]), None, np.array([1e-3, 2e-2, 0.1, 0.0]))
    ax = plots.eigenvalues(result, highlight=2, label="rest", highlight_label="outliers")
    bars = ax.containers[-1]
    np.testing.assert_allclose([p.get_height() for p in bars.patches], result.eigenvalues)
    np.testing.assert_allclose([p.get_x() + p.get_width() / 2 for p in bars.patches], [1, 2, 3, 4])
    # Each error bar spans eigenvalue -/+ residual.
    (error_lines,) = bars.errorbar.lines[2]
    segments = np.asarray(error_lines.get_segments())
    np.testing.assert_allclose(segments[:, :, 1], np.stack([result.eigenvalues - result.residuals,
                                                            result.eigenvalues + result.residuals], axis=1))
    red = matplotlib.colors.to_rgba("C3")
    assert [p.get_facecolor() == red for p in bars.patches] == [True, True, False, False]
    assert sorted(t.get_text() for t in ax.legend().get_texts()) == ["outliers", "rest"]


def test_line_draws_the_losses_and_marks_the_ends_once():
    alphas, losses = np.linspace(-0.5, 1.5, 9), np.linspace(3.0, 1.0, 9) ** 2
    ax = plots.line(alphas, losses, label="train", color="C1")
    plots.line(alphas, losses + 1, ax=ax, ls="--", log=True)
    curves = [a for a in ax.lines if a.get_gid() != "line-ends"]
    np.testing.assert_allclose(curves[0].get_xdata(), alphas)
    np.testing.assert_allclose(curves[1].get_ydata(), losses + 1)
    assert curves[1].get_linestyle() == "--" and ax.get_yscale() == "log"
    ends = [a.get_xdata()[0] for a in ax.lines if a.get_gid() == "line-ends"]
    assert ends == [0, 1]


def test_plane_contours_the_grid_and_marks_centre_and_minimum():
    a = np.linspace(-1, 1, 11)
    X, Y = np.meshgrid(a, a + 0.2, indexing="xy")  # the minimum of Z sits at (0.4, 0.2), not at the centre
    Z = 1 + (X - 0.4) ** 2 + 2 * (Y - 0.2) ** 2
    ax = plots.plane(X, Y, Z, levels=10)
    filled = ax.collections[0]
    levels = np.asarray(filled.levels)
    assert levels.size == 10 and levels[0] == pytest.approx(Z.min())
    np.testing.assert_allclose(np.diff(np.log(levels)), np.log(levels[1] / levels[0]), rtol=1e-9)
    centre, minimum = (a for a in ax.lines)
    assert (centre.get_xdata()[0], centre.get_ydata()[0]) == (0, 0)
    assert (minimum.get_xdata()[0], minimum.get_ydata()[0]) == pytest.approx((0.4, 0.2))
    assert len(ax.figure.axes) == 2  # the colour bar
    shared = np.array([1.0, 2.0, 4.0])
    ax2 = plots.plane(X, Y, Z, levels=shared, log=False, colorbar=False)
    np.testing.assert_allclose(ax2.collections[0].levels, shared)
    assert len(ax2.figure.axes) == 1


def test_sharpness_draws_the_records_and_the_stability_limit():
    steps, values = [0, 20, 40, 60], [10.0, 30.0, None, 41.0]  # None: a null record in metrics.json
    ax = plots.sharpness(steps, values, lr=0.05, label="eta 0.05")
    curve, limit = ax.lines
    np.testing.assert_allclose(curve.get_xdata(), steps)
    np.testing.assert_allclose(curve.get_ydata(), [10.0, 30.0, np.nan, 41.0])
    assert limit.get_gid() == "stability-limit" and limit.get_ydata()[0] == pytest.approx(40.0)
    assert limit.get_linestyle() == "--" and limit.get_color() == curve.get_color()
    assert sorted(t.get_text() for t in ax.legend().get_texts()) == ["$2/\\eta$ = 40", "eta 0.05"]
    # A second run on the same axes takes the next colour; Adam's limit for the preconditioned sharpness.
    plots.sharpness(steps, [5.0, 6.0, 7.0, 8.0], limit=38 / 1e-3, ax=ax, label="adam", log=True)
    assert ax.lines[-2].get_color() != curve.get_color() and ax.lines[-1].get_ydata()[0] == pytest.approx(38e3)
    assert ax.get_yscale() == "log"
    bare = plots.sharpness(steps, [1.0, 2.0, 3.0, 4.0])
    assert len(bare.lines) == 1
    with pytest.raises(ValueError, match="not both"):
        plots.sharpness(steps, values, lr=0.1, limit=20.0)
    with pytest.raises(ValueError, match="same shape"):
        plots.sharpness(steps[:3], values)
