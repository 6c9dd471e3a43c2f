import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from analysis import critical, spectrum
from experiments import hessian_spectrum as hs

CFG = hs.QUICK


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("hessian_spectrum")
    payload = hs.main(CFG, out)  # on one BLAS thread (tests/conftest.py)
    return payload, json.loads((out / "hessian_spectrum.json").read_text()), out


def _param_counts(sizes):
    n_in, h1, h2, n_out = sizes
    plain = n_in * h1 + h1 + h1 * h2 + h2 + h2 * n_out + n_out
    # Shortcuts: x -> layer 2 and x, h1 -> output; batch norm swaps each hidden bias for gamma and beta.
    return {"plain": plain, "transform": plain + n_in * h2 + n_in * n_out + h1 * n_out,
            "batchnorm": plain + h1 + h2}


def test_files_and_parameter_counts(run):
    _, saved, out = run
    for name in ("hessian_spectrum.png", "hessian_spectrum_angles.png"):
        assert (out / name).stat().st_size > 10_000
    assert (out / "hessian_spectrum.json").stat().st_size < 300_000
    sizes = [CFG.image_side**2, *CFG.hidden, 10]
    counts = _param_counts(sizes)
    for v in hs.VARIANTS:
        run_v = saved["results"]["runs"][v]
        assert run_v["sizes"] == sizes
        assert sorted(int(e) for e in run_v["checkpoints"]) == list(CFG.checkpoints)
        for c in run_v["checkpoints"].values():
            assert c["P"] == counts[v]
        assert run_v["train_error"][-1] < 50  # it learned something (percent)


def test_claims_match_the_table(run):
    payload, saved, _ = run
    t = saved["results"]["table"]
    claims = payload["claims"]
    assert len(claims) == 6

    def below(key, v):
        return all(a < b for a, b in zip(t[v][key], t["plain"][key], strict=True))

    for i, v in enumerate(("transform", "batchnorm")):
        assert claims[i]["holds"] == below("spread_log10_std", v)
        assert claims[2 + i]["holds"] == below("diag_offshare", v)
        assert claims[4 + i]["holds"] == below("mean_angle_pd", v)
    # Measured on the quick config (seeded): both normalisations bring the Hessian closer to diagonal, and the
    # transformations bring the gradient closer to the Newton direction.
    assert claims[2]["holds"] and claims[3]["holds"] and claims[4]["holds"]


def test_saved_spectra_are_consistent(run):
    r = run[1]["results"]
    mus = np.asarray(r["mus"])
    np.testing.assert_allclose(mus, np.geomspace(CFG.mus[0], CFG.mus[1], CFG.mus[2]))
    for v in hs.VARIANTS:
        for c in r["runs"][v]["checkpoints"].values():
            s = c["summary"]
            vals = np.asarray(c["eig_values"])
            assert c["eig_ranks"][0] == 0 and c["eig_ranks"][-1] == c["P"] - 1
            assert np.all(np.diff(np.abs(vals)) <= 0)  # sorted by magnitude, largest first
            assert abs(vals[0]) == pytest.approx(s["spectral_norm"], rel=1e-12)
            assert s["n_negative"] + s["n_zero"] + s["n_positive"] == c["P"]
            assert s["lambda_max"] > 0 and s["condition"] >= 1
            # The block diagonal contains the element-wise diagonal, so less is off it.
            assert 0 <= c["block_offshare"] <= c["diag_offshare"] <= 1
            N = np.asarray(c["block_norms"])
            np.testing.assert_allclose(N, N.T, rtol=1e-10, atol=1e-14)
            diag_share = np.sqrt(1 - np.sum(np.diag(N) ** 2) / np.sum(N**2))
            assert c["block_offshare"] == pytest.approx(diag_share, rel=1e-8)
            a = np.asarray([float(z) for z in c["angles"]])
            pd = mus > -s["lambda_min"]
            assert np.all(a[pd] < 90) and a[-1] < 10  # positive definite: descent; mu -> inf: the gradient


# Each variant compiles two Hessian programs of its own (hs.hessian_at's and the reference): the normalised
# ones are kept out of the default run.
_SLOW = pytest.mark.slow


@pytest.mark.parametrize("variant", ["plain", *(pytest.param(v, marks=_SLOW) for v in hs.VARIANTS[1:])])
def test_hessian_against_jax_hessian_and_eigh(variant):
    key = jax.random.PRNGKey(3)
    params, state = hs.init_variant(variant, key, [5, 4, 3, 3])
    rng = np.random.default_rng(3)
    x, y = rng.uniform(size=(40, 5)), rng.integers(0, 3, size=40)
    if variant == "transform":  # non-zero shortcuts, slopes and offsets, so every block is exercised
        from fflab import norm

        params = jax.tree_util.tree_map(lambda a: a + 0.1, params)
        params, state = norm.transform_update(params, state, jnp.asarray(x), activation="tanh")
    with jax.enable_x64(True):
        H, g, loss, p64 = hs.hessian_at(variant, params, state, x, y)
        flat, unravel = ravel_pytree(p64)
        s64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), state)

        def f(w):
            xj, yj = jnp.asarray(x, jnp.float64), jnp.asarray(y)
            return hs.hessian_loss(unravel(w), s64, xj, yj, variant=variant)

        # jax.hessian, jax.grad and the loss itself as the reference, compiled as one program (run op by op
        # they compiled each operation apart, several times the cost of the whole check).
        reference = jax.jit(lambda w: (f(w), jax.grad(f)(w), jax.hessian(f)(w)))
        loss_ref, g_ref, H_ref = map(np.asarray, reference(flat))
        np.testing.assert_allclose(H, H_ref, atol=1e-12)
        np.testing.assert_allclose(g, g_ref, atol=1e-12)
        assert loss == pytest.approx(float(loss_ref), rel=1e-12)
        eigs, U = np.linalg.eigh(H_ref)
        np.testing.assert_allclose(spectrum.eigenvalues(H), eigs, atol=1e-12)
        mus = np.geomspace(1e-3, 1e2, 9)
        mine = hs.newton_angles(eigs, U.T @ g_ref, mus)
        angles_ref = jax.jit(critical.gradient_newton_angles)(H_ref, g_ref, mus)
        np.testing.assert_allclose(mine, np.asarray(angles_ref), atol=1e-7)
        for mu, angle in zip(mus, mine, strict=True):  # by a linear solve
            d = np.linalg.solve(H_ref + mu * np.eye(len(g_ref)), g_ref)
            cos = d @ g_ref / np.linalg.norm(d) / np.linalg.norm(g_ref)
            assert angle == pytest.approx(np.degrees(np.arccos(np.clip(cos, -1, 1))), abs=1e-5)


def test_downsampling_keeps_each_image_mean():
    cfg = hs.QUICK
    x, y = hs.load_images(cfg)
    from fflab import data

    full = np.asarray(data.load(cfg.dataset).x_train[: cfg.n_train], np.float64)
    assert x.shape == (full.shape[0], cfg.image_side**2) and y.shape == (full.shape[0],)
    np.testing.assert_allclose(x.mean(axis=1), full.mean(axis=1), atol=0.05)
