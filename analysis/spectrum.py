"""Exact Hessian spectra and the summaries the experiments report.

Everything here works on a dense symmetric matrix ``H`` of shape ``(P, P)`` (e.g. from
:func:`analysis.curvature.hessian`) or on its eigenvalues, on the host in float64: these are small-model
diagnostics, and the summaries (counts, ratios, logs) need the precision more than the speed.

"Zero" eigenvalues: ``|lambda| <= tol`` with ``tol = max(atol, rtol * max|lambda|)``, relative to the
spectral norm so the count does not depend on the scale of the loss. The default ``rtol = 1e-6`` suits
Hessians computed in float64; for float32 Hessians use ``rtol`` around ``1e-4``.

References:
    Sagun, Bottou & LeCun (2017), Eigenvalues of the Hessian in deep learning: singularity and beyond.
    Papyan (2019), Measurements of three-level hierarchical structure in the outliers in the spectrum of
    deepnet Hessians.
    Raiko, Valpola & LeCun (2012), Deep learning made easier by linear transformations in perceptrons.
    Iglewicz & Hoaglin (1993), How to detect and handle outliers (the modified z-score).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import numpy as np

__all__ = [
    "Inertia",
    "ParamBlocks",
    "SpectrumSummary",
    "block_norms",
    "condition_number",
    "diagonal_dominance",
    "eigenvalues",
    "eigh",
    "block_coupling",
    "inertia",
    "log_spread",
    "decades_below_top",
    "outliers",
    "param_blocks",
    "summarize",
    "zero_tolerance",
]

DEFAULT_RTOL = 1e-6
# Modified z-score cut-off of Iglewicz & Hoaglin (1993); 1.4826 makes the MAD a consistent estimate of the
# standard deviation for Gaussian data.
DEFAULT_OUTLIER_C = 3.5
_MAD_TO_STD = 1.4826


def _as_square(H) -> np.ndarray:
    H = np.asarray(H, dtype=np.float64)
    if H.ndim != 2 or H.shape[0] != H.shape[1]:
        raise ValueError(f"H must be a square matrix of shape (P, P), got shape {H.shape}")
    if not np.all(np.isfinite(H)):
        raise ValueError("H has non-finite entries")
    return H


def _symmetric(H) -> np.ndarray:
    H = _as_square(H)
    # Autodiff Hessians are symmetric only up to round-off; eigh reads one triangle, so average first.
    return 0.5 * (H + H.T)


def _as_eigs(eigs) -> np.ndarray:
    eigs = np.asarray(eigs, dtype=np.float64)
    if eigs.ndim != 1 or eigs.size == 0:
        raise ValueError(f"eigenvalues must be a non-empty vector of shape (P,), got shape {eigs.shape}")
    if not np.all(np.isfinite(eigs)):
        raise ValueError("eigenvalues has non-finite entries")
    return np.sort(eigs)


def eigenvalues(H) -> np.ndarray:
    """All eigenvalues of the symmetric part of ``H``, exactly (LAPACK ``eigh``), in float64.

    Args:
        H: a square matrix of shape ``(P, P)``; it is symmetrised as ``(H + H^T) / 2``.

    Returns:
        Eigenvalues of shape ``(P,)``, sorted ascending, as a float64 numpy array.
    """
    return np.linalg.eigvalsh(_symmetric(H))


def eigh(H) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues and orthonormal eigenvectors of the symmetric part of ``H``, in float64.

    Args:
        H: a square matrix of shape ``(P, P)``; it is symmetrised as ``(H + H^T) / 2``.

    Returns:
        ``(eigs, vecs)``: ``eigs`` of shape ``(P,)`` ascending, ``vecs`` of shape ``(P, P)`` whose column
        ``vecs[:, i]`` belongs to ``eigs[i]``.
    """
    return np.linalg.eigh(_symmetric(H))


def zero_tolerance(eigs, *, rtol: float = DEFAULT_RTOL, atol: float = 0.0) -> float:
    """The threshold below which ``|lambda|`` counts as zero: ``max(atol, rtol * max|lambda|)``.

    Args:
        eigs: eigenvalues of shape ``(P,)``.
        rtol: tolerance relative to the spectral norm ``max|lambda|``.
        atol: absolute floor (matters when every eigenvalue is zero or tiny).

    Returns:
        The tolerance, a Python float.
    """
    eigs = _as_eigs(eigs)
    if rtol < 0 or atol < 0:
        raise ValueError(f"tolerances must be non-negative, got rtol={rtol}, atol={atol}")
    return float(max(atol, rtol * np.max(np.abs(eigs))))


class Inertia(NamedTuple):
    """Counts of negative, zero and positive eigenvalues (Sylvester's inertia) and the tolerance used."""

    n_negative: int
    n_zero: int
    n_positive: int
    tol: float


def inertia(eigs, *, rtol: float = DEFAULT_RTOL, atol: float = 0.0) -> Inertia:
    """Count eigenvalues below ``-tol``, within ``[-tol, tol]`` and above ``tol`` (:func:`zero_tolerance`).

    Args:
        eigs: eigenvalues of shape ``(P,)``.
        rtol, atol: as in :func:`zero_tolerance`.

    Returns:
        :class:`Inertia` ``(n_negative, n_zero, n_positive, tol)``.
    """
    eigs = _as_eigs(eigs)
    tol = zero_tolerance(eigs, rtol=rtol, atol=atol)
    n_neg = int(np.sum(eigs < -tol))
    n_pos = int(np.sum(eigs > tol))
    return Inertia(n_neg, eigs.size - n_neg - n_pos, n_pos, tol)


def condition_number(eigs, *, rtol: float = DEFAULT_RTOL, atol: float = 0.0) -> float:
    """Condition number of the positive part: ``lambda_max`` over the smallest eigenvalue above ``tol``.

    Zero and negative eigenvalues are left out, so at a degenerate minimum this is the conditioning of the
    directions that do curve up.

    Args:
        eigs: eigenvalues of shape ``(P,)``.
        rtol, atol: as in :func:`zero_tolerance`.

    Returns:
        ``lambda_max / lambda_min_positive`` (``>= 1``), or ``nan`` when no eigenvalue is above ``tol``.
    """
    eigs = _as_eigs(eigs)
    tol = zero_tolerance(eigs, rtol=rtol, atol=atol)
    pos = eigs[eigs > tol]
    return float(pos[-1] / pos[0]) if pos.size else float("nan")


def outliers(eigs, *, c: float = DEFAULT_OUTLIER_C) -> tuple[int, float]:
    """Count eigenvalues above the bulk, with a robust (median / MAD) estimate of the bulk's upper edge.

    Rule: ``edge = median(lambda) + c * 1.4826 * MAD(lambda)``, with ``MAD = median|lambda - median|``;
    eigenvalues strictly above ``edge`` are outliers. ``1.4826 * MAD`` estimates a standard deviation that
    the outliers themselves cannot inflate, and ``c = 3.5`` is the modified z-score cut-off of Iglewicz &
    Hoaglin (1993). Deep-net Hessians show a bulk near zero plus about one outlier per class (Sagun et al.
    2017; Papyan 2019), which is what this count is meant to expose.

    Caveat: when more than half the eigenvalues sit at the same value (e.g. an exactly flat subspace),
    ``MAD = 0`` and every eigenvalue above that value counts; pass a larger ``c`` or count on the
    non-zero part of the spectrum.

    Args:
        eigs: eigenvalues of shape ``(P,)``.
        c: how many robust standard deviations above the median the bulk edge lies.

    Returns:
        ``(n_outliers, edge)``.
    """
    eigs = _as_eigs(eigs)
    if c < 0:
        raise ValueError(f"c must be non-negative, got {c}")
    med = np.median(eigs)
    mad = np.median(np.abs(eigs - med))
    edge = float(med + c * _MAD_TO_STD * mad)
    return int(np.sum(eigs > edge)), edge


def decades_below_top(eigs, *, q: float = 0.5) -> float:
    """Orders of magnitude between the largest ``|lambda|`` and the ``q``-quantile of ``|lambda|``.

    ``log10(max|lambda| / quantile_q |lambda|)``: how far below the top curvature the typical direction lies;
    0 for perfectly even curvature. It needs no zero tolerance: :func:`log_spread` counts only the eigenvalues
    above ``rtol * max|lambda|``, so a spectrum with more of its tail below the cut scores a *smaller* spread
    (the tail it drops is the uneven part); a quantile of all ``P`` eigenvalues keeps the whole spectrum.

    Args:
        eigs: eigenvalues of shape ``(P,)``.
        q: the quantile in ``(0, 1]`` (``0.5``: the median ``|lambda|``).

    Returns:
        A float ``>= 0``; ``inf`` when the quantile is 0.
    """
    mags = np.abs(_as_eigs(eigs))
    if not 0 < q <= 1:
        raise ValueError(f"q must lie in (0, 1], got {q}")
    top, typical = mags.max(), np.quantile(mags, q)
    return float(np.log10(top / typical)) if typical > 0 else float("inf")


def log_spread(eigs, *, rtol: float = DEFAULT_RTOL, atol: float = 0.0) -> tuple[float, float]:
    """How many orders of magnitude the non-negligible eigenvalues span.

    Over ``m = {|lambda| : |lambda| > tol}`` (see :func:`zero_tolerance`), two measures:
    ``log10_range = log10(max(m) / min(m))`` and ``log10_std = std(log10(m))``.

    Args:
        eigs: eigenvalues of shape ``(P,)``.
        rtol, atol: as in :func:`zero_tolerance`.

    Returns:
        ``(log10_range, log10_std)``; both ``nan`` when no eigenvalue is above ``tol``.
    """
    eigs = _as_eigs(eigs)
    tol = zero_tolerance(eigs, rtol=rtol, atol=atol)
    mags = np.abs(eigs)
    mags = mags[mags > tol]
    if mags.size == 0:
        return float("nan"), float("nan")
    logs = np.log10(mags)
    return float(logs.max() - logs.min()), float(logs.std())


class SpectrumSummary(NamedTuple):
    """Scalar summaries of a symmetric spectrum; see :func:`summarize` for the definitions."""

    size: int
    lambda_min: float
    lambda_max: float
    spectral_norm: float
    n_negative: int
    n_zero: int
    n_positive: int
    index: float
    condition: float
    n_outliers: int
    bulk_edge: float
    log10_range: float
    log10_std: float
    tol: float


def summarize(
    eigs, *, rtol: float = DEFAULT_RTOL, atol: float = 0.0, outlier_c: float = DEFAULT_OUTLIER_C
) -> SpectrumSummary:
    """All scalar summaries of a spectrum in one record.

    Args:
        eigs: eigenvalues of shape ``(P,)`` (any order), e.g. from :func:`eigenvalues`.
        rtol, atol: the zero tolerance, see :func:`zero_tolerance`.
        outlier_c: the bulk-edge parameter of :func:`outliers`.

    Returns:
        :class:`SpectrumSummary` with ``size = P``; ``lambda_min``, ``lambda_max``;
        ``spectral_norm = max|lambda|``; the :func:`inertia` counts; ``index = n_negative / P`` (the fraction
        of negative-curvature directions); ``condition`` from :func:`condition_number`; ``n_outliers`` and
        ``bulk_edge`` from :func:`outliers`; ``log10_range`` and ``log10_std`` from :func:`log_spread`;
        and the zero tolerance ``tol``.
    """
    eigs = _as_eigs(eigs)
    n_neg, n_zero, n_pos, tol = inertia(eigs, rtol=rtol, atol=atol)
    n_out, edge = outliers(eigs, c=outlier_c)
    log_range, log_std = log_spread(eigs, rtol=rtol, atol=atol)
    return SpectrumSummary(
        size=int(eigs.size),
        lambda_min=float(eigs[0]),
        lambda_max=float(eigs[-1]),
        spectral_norm=float(np.max(np.abs(eigs))),
        n_negative=n_neg,
        n_zero=n_zero,
        n_positive=n_pos,
        index=n_neg / eigs.size,
        condition=condition_number(eigs, rtol=rtol, atol=atol),
        n_outliers=n_out,
        bulk_edge=edge,
        log10_range=log_range,
        log10_std=log_std,
        tol=tol,
    )


class ParamBlocks(NamedTuple):
    """Names and sizes of the contiguous blocks of a raveled params vector, in ``ravel_pytree`` order."""

    names: tuple[str, ...]
    sizes: tuple[int, ...]


_LEVELS = ("leaf", "layer")


def param_blocks(params, *, level: str = "leaf") -> ParamBlocks:
    """Blocks of the flat parameter vector, one per leaf or per top-level entry (layer), with names.

    ``jax.flatten_util.ravel_pytree`` concatenates the leaves in ``jax.tree_util.tree_leaves`` order, so a
    block is a contiguous slice and the blocks tile the vector. For fflab's MLPs (a list of ``{"W", "b"}``)
    ``level="leaf"`` gives ``("[0]['W']", "[0]['b']", "[1]['W']", ...)`` and ``level="layer"`` gives
    ``("[0]", "[1]", ...)`` with ``W`` and ``b`` of a layer together.

    Args:
        params: any pytree of arrays.
        level: ``"leaf"`` (one block per array) or ``"layer"`` (leaves grouped by their first path key).

    Returns:
        :class:`ParamBlocks` ``(names, sizes)`` with ``sum(sizes) == P``.
    """
    if level not in _LEVELS:
        raise ValueError(f"unknown level {level!r}; valid names: {', '.join(_LEVELS)}")
    leaves = jax.tree_util.tree_leaves_with_path(params)
    if not leaves:
        raise ValueError("params has no leaves")
    names: list[str] = []
    sizes: list[int] = []
    for path, leaf in leaves:
        size = int(np.size(leaf))
        if level == "leaf":
            names.append(jax.tree_util.keystr(path))
            sizes.append(size)
            continue
        name = jax.tree_util.keystr(path[:1])
        if names and names[-1] == name:
            sizes[-1] += size
        else:
            names.append(name)
            sizes.append(size)
    return ParamBlocks(tuple(names), tuple(sizes))


def _check_sizes(sizes: Sequence[int] | ParamBlocks, P: int) -> np.ndarray:
    if isinstance(sizes, ParamBlocks):
        sizes = sizes.sizes
    sizes = np.asarray(sizes)
    if sizes.ndim != 1 or sizes.size == 0 or not np.issubdtype(sizes.dtype, np.integer):
        raise ValueError(f"block sizes must be a non-empty sequence of ints, got {sizes!r}")
    if np.any(sizes < 1) or int(sizes.sum()) != P:
        raise ValueError(f"block sizes must be positive and sum to P={P}, got {sizes.tolist()}")
    return sizes


def block_norms(H, sizes: Sequence[int] | ParamBlocks) -> np.ndarray:
    """Frobenius norm of every block ``H[I_a, I_b]`` for a partition of the parameters into blocks.

    Args:
        H: a square matrix of shape ``(P, P)``.
        sizes: block sizes summing to ``P`` (in order), or a :class:`ParamBlocks` from :func:`param_blocks`.

    Returns:
        ``N`` of shape ``(B, B)`` with ``N[a, b] = ||H[I_a, I_b]||_F``; ``sum(N**2) == ||H||_F**2``.
    """
    H = _as_square(H)
    sizes = _check_sizes(sizes, H.shape[0])
    edges = np.concatenate([[0], np.cumsum(sizes)])
    sq = np.square(H)
    # Sum squares over row blocks then column blocks; reduceat keeps this one vectorised pass.
    rows = np.add.reduceat(sq, edges[:-1], axis=0)
    return np.sqrt(np.add.reduceat(rows, edges[:-1], axis=1))


def block_coupling(H, blocks: Sequence[int] | ParamBlocks | None = None, *, rtol: float = DEFAULT_RTOL) -> np.ndarray:
    """How strongly each pair of blocks couples, relative to their own curvature: ``N_ab / sqrt(N_aa N_bb)``.

    ``N`` is :func:`block_norms` (``N_ab = ||H[I_a, I_b]||_F``), or ``|H|`` element-wise for ``blocks=None``,
    where the result is ``|H_ij| / sqrt(|H_ii H_jj|)``, the Jacobi-scaled matrix. The result does not change when
    the parameters are rescaled, each by its own factor (element-wise) or each block by one factor (``theta_a
    -> s_a theta_a`` turns ``H_ab`` into ``H_ab / (s_a s_b)``): it measures coupling, not the parameters' units.
    Rows and columns whose ``N_aa`` is at most ``rtol * max N_aa`` (parameters the loss does not see) are zero.

    Args:
        H: a square matrix of shape ``(P, P)``.
        blocks: block sizes summing to ``P`` (or a :class:`ParamBlocks`), or ``None`` for single parameters.
        rtol: the relative size below which a diagonal entry of ``N`` counts as zero.

    Returns:
        ``(B, B)`` non-negative, symmetric, with unit diagonal (``(P, P)`` for ``blocks=None``).
    """
    H = _as_square(H)
    N = np.abs(H) if blocks is None else block_norms(H, blocks)
    d = np.diag(N)
    keep = d > rtol * d.max() if d.max() > 0 else np.zeros(d.shape, bool)
    inv = np.where(keep, 1 / np.sqrt(np.where(keep, d, 1.0)), 0.0)
    return N * inv[:, None] * inv[None, :]


def diagonal_dominance(
    H, blocks: Sequence[int] | ParamBlocks | None = None, *, scaled: bool = False, rtol: float = DEFAULT_RTOL
) -> float:
    """Share of ``H``'s Frobenius norm off the (block) diagonal: ``||offdiag(H)||_F / ||H||_F``.

    0 for a (block-)diagonal matrix, towards 1 when the off-diagonal part dominates. Raiko, Valpola &
    LeCun (2012) show that making each unit's output zero-mean and zero-slope brings the Fisher / Hessian
    closer to diagonal: the blocks that couple different layers' weights, and those weights with the
    shortcuts, vanish. That is a block-wise statement; element-wise, a dense ``P x P`` matrix has ``P^2 - P``
    off-diagonal entries against ``P`` diagonal ones, so its share sits near 1 whatever its structure.

    Args:
        H: a square matrix of shape ``(P, P)``.
        blocks: ``None`` for the element-wise diagonal, or block sizes summing to ``P`` (or a
            :class:`ParamBlocks`), in which case "diagonal" means the diagonal blocks ``H[I_a, I_a]``.
        scaled: the share of :func:`block_coupling` instead, each (block) entry divided by the geometric mean
            of its two diagonal (block) entries: it does not depend on the units of the parameters (blocks).
        rtol: with ``scaled``, as in :func:`block_coupling`.

    Returns:
        The ratio in ``[0, 1]``; ``nan`` for ``H = 0``.
    """
    if scaled:
        N = block_coupling(H, blocks, rtol=rtol)
    else:
        H = _as_square(H)
        N = H if blocks is None else block_norms(H, blocks)
    total = np.linalg.norm(N)
    if total == 0:
        return float("nan")
    # Sum the off-diagonal part directly rather than subtracting norms, which cancels for nearly
    # diagonal matrices.
    return float(np.linalg.norm(N - np.diag(np.diag(N))) / total)
