"""Checkpoints: exact round trips, atomic writes, and clear errors for corrupt or mismatched files."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fflab import checkpoint, mlp, train


def _state(seed=0, dtype=jnp.float64):
    opt = train.make_optimizer("adam", 1e-3, schedule="cosine", total_steps=10, weight_decay=1e-4)
    params = mlp.init(jax.random.key(seed), [3, 5, 2], dtype=dtype)
    state = train.init_state(params, opt, jax.random.key(seed + 100))

    @jax.jit
    def step(state):  # one step so the optimiser state is not all zeros
        grads = jax.tree_util.tree_map(jnp.ones_like, state.params)
        updates, opt_state = opt.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return state._replace(params=params, opt_state=opt_state, step=state.step + 1)

    return step(state)


def _raw(tree):
    def leaf(x):
        return np.asarray(
            jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x
        )

    return [leaf(x) for x in jax.tree_util.tree_leaves(tree)]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_round_trip_is_exact(tmp_path, dtype, seed):
    state = _state(seed, dtype)
    meta = {"epoch": 3, "history": {"loss": [1.5, 0.25]}, "config": {"hidden": [5], "lr": 1e-3}}
    path = checkpoint.save(tmp_path / "sub" / "c.npz", state, metadata=meta)
    loaded, got = checkpoint.load(path, _state(seed + 7, dtype))
    assert type(loaded) is train.TrainState and got == meta
    assert checkpoint.load_metadata(path) == meta
    for a, b in zip(_raw(loaded), _raw(state), strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert jax.dtypes.issubdtype(loaded.key.dtype, jax.dtypes.prng_key)
    assert [p.name for p in path.parent.iterdir()] == ["c.npz"]  # no temp files left behind


def test_failed_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.npz"
    old = _state(0)
    checkpoint.save(path, old, metadata={"epoch": 1})
    before = path.read_bytes()

    def half_write(f, **arrays):  # writes some bytes, then dies like a full disk or a kill would
        f.write(b"PK\x03\x04 partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", half_write)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(path, _state(1), metadata={"epoch": 2})
    monkeypatch.undo()

    def no_rename(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(path, _state(1), metadata={"epoch": 2})
    monkeypatch.undo()

    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npz"]
    loaded, meta = checkpoint.load(path, old)
    assert meta == {"epoch": 1}
    assert all(np.array_equal(a, b) for a, b in zip(_raw(loaded), _raw(old), strict=True))


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
def test_corrupt_file_raises_one_line_error(tmp_path, damage):
    path = tmp_path / "c.npz"
    checkpoint.save(path, _state(0))
    raw = bytearray(path.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    elif damage == "flip":
        mid = len(raw) // 3  # inside a leaf's data: only the zip CRC-32 can notice
        raw[mid : mid + 8] = bytes(b ^ 0xFF for b in raw[mid : mid + 8])
    elif damage == "garbage":
        raw = bytearray(b"not a checkpoint at all")
    else:
        raw = bytearray()
    path.write_bytes(bytes(raw))
    with pytest.raises(checkpoint.CheckpointError, match="corrupt or truncated") as info:
        checkpoint.load(path, _state(0))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_and_mismatched(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint at"):
        checkpoint.load(tmp_path / "nope.npz", _state(0))
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint at"):
        checkpoint.load_metadata(tmp_path / "nope.npz")
    path = checkpoint.save(tmp_path / "c.npz", _state(0))
    with pytest.raises(checkpoint.CheckpointError, match="different tree"):
        checkpoint.load(path, {"W": jnp.zeros(3)})
    with pytest.raises(checkpoint.CheckpointError, match="float32"):
        checkpoint.load(path, _state(0, jnp.float32))
    other = mlp.init(jax.random.key(0), [3, 6, 2])
    opt = optax.adam(1e-3)
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.load(path, train.init_state(other, opt, 0))
    np.savez(tmp_path / "plain.npz", a=np.zeros(3))
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.load(tmp_path / "plain.npz", _state(0))
