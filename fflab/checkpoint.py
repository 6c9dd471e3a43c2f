"""Atomic pytree checkpoints: one ``.npz`` file with the leaves and a JSON header.

``save(path, tree, metadata=...)`` flattens ``tree`` with :mod:`jax.tree_util` and writes its leaves plus a
JSON header (format, tree structure, leaf shapes and dtypes, and the caller's ``metadata``) into a single
uncompressed ``.npz``. The file is written to a temporary name in the same folder, fsynced, and renamed over
``path`` with :func:`os.replace`, so an interruption leaves either the old checkpoint or the new one, never a
half-written file. ``load(path, template)`` restores the leaves into the structure of ``template`` (for
example a freshly initialised :class:`fflab.train.TrainState`) after checking that structure, shapes and
dtypes agree. Typed PRNG keys (``jax.random.key``) are stored as their key data and re-wrapped on load.

Zip members carry a CRC-32 that numpy checks on read, so a corrupt or truncated file raises
:class:`CheckpointError` with a one-line message instead of returning garbage.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

__all__ = ["FORMAT", "VERSION", "CheckpointError", "load", "load_metadata", "save"]

FORMAT = "fflab-checkpoint"
VERSION = 1
_HEADER = "__header__"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, truncated, or does not fit the template; the message is one line."""


def _is_key(leaf) -> bool:
    return hasattr(leaf, "dtype") and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def save(path: str | os.PathLike, tree: Any, *, metadata: dict | None = None) -> Path:
    """Write ``tree`` (and JSON-able ``metadata``) to ``path`` atomically.

    Args:
        path: the checkpoint file (conventionally ``*.npz``); its folder is created if needed.
        tree: a pytree of arrays, e.g. a ``TrainState``. Leaves are copied to the host.
        metadata: anything :func:`json.dumps` accepts (history, config, epoch...).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    arrays, specs = {}, []
    for i, leaf in enumerate(leaves):
        if _is_key(leaf):
            arr = np.asarray(jax.random.key_data(leaf))
            specs.append({"key_impl": str(jax.random.key_impl(leaf))})
        else:
            arr = np.asarray(leaf)
            specs.append({})
        specs[-1].update(shape=list(arr.shape), dtype=arr.dtype.str)
        arrays[f"leaf_{i}"] = arr
    header = {
        "format": FORMAT,
        "version": VERSION,
        "treedef": str(treedef),
        "leaves": specs,
        "metadata": metadata if metadata is not None else {},
    }
    arrays[_HEADER] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    _atomic_write(path, lambda f: np.savez(f, **arrays))
    return path


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    # Make the rename itself durable; not every platform lets a folder be opened.
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _read(path: Path, *, leaves: bool) -> tuple[dict, list[np.ndarray]]:
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            header = json.loads(npz[_HEADER].tobytes().decode())
            if header.get("format") != FORMAT:
                raise CheckpointError(f"{path} is not an fflab checkpoint (format {header.get('format')!r})")
            if header.get("version") != VERSION:
                raise CheckpointError(
                    f"{path} has checkpoint version {header.get('version')}, this fflab reads {VERSION}"
                )
            arrays = [npz[f"leaf_{i}"] for i in range(len(header["leaves"]))] if leaves else []
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, ValueError, KeyError, EOFError, OSError, UnicodeDecodeError) as e:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({type(e).__name__}: {e})"
        ) from None
    return header, arrays


def load_metadata(path: str | os.PathLike) -> dict:
    """The ``metadata`` dict stored with a checkpoint, without building any arrays.

    Raises:
        CheckpointError: the file is missing, corrupt or not a checkpoint.
    """
    header, _ = _read(Path(path), leaves=False)
    return header["metadata"]


def load(path: str | os.PathLike, template: Any) -> tuple[Any, dict]:
    """Restore a checkpoint into the structure of ``template``.

    Args:
        path: a file written by :func:`save`.
        template: a pytree with the same structure, shapes and dtypes as the saved one (its values are
            ignored), e.g. a freshly initialised state.

    Returns:
        ``(tree, metadata)``: the saved leaves as jax arrays in ``template``'s structure, and the metadata.

    Raises:
        CheckpointError: missing, corrupt or truncated file, or a structure / shape / dtype mismatch.
    """
    path = Path(path)
    header, arrays = _read(path, leaves=True)
    t_leaves, treedef = jax.tree_util.tree_flatten(template)
    if header["treedef"] != str(treedef) or len(arrays) != len(t_leaves):
        raise CheckpointError(
            f"checkpoint {path} holds a different tree ({len(arrays)} leaves) than the template "
            f"({len(t_leaves)} leaves); was it written with another model or optimizer?"
        )
    out = []
    for i, (arr, spec, ref) in enumerate(zip(arrays, header["leaves"], t_leaves, strict=True)):
        if "key_impl" in spec:
            if not _is_key(ref):
                raise CheckpointError(f"checkpoint {path}: leaf {i} is a PRNG key, the template's is not")
            out.append(jax.random.wrap_key_data(arr, impl=spec["key_impl"]))
            continue
        ref = np.asarray(ref) if not hasattr(ref, "dtype") else ref
        if tuple(arr.shape) != tuple(ref.shape) or arr.dtype != np.dtype(ref.dtype):
            raise CheckpointError(
                f"checkpoint {path}: leaf {i} is {arr.dtype}{list(arr.shape)}, the template expects "
                f"{np.dtype(ref.dtype)}{list(ref.shape)}"
            )
        out.append(jax.numpy.asarray(arr))
    return jax.tree_util.tree_unflatten(treedef, out), header["metadata"]
