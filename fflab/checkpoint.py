"""Atomic pytree checkpoints: one ``.npz`` file with the leaves, named by their pytree paths, and a JSON header.

``save(path, tree, metadata=...)`` writes each leaf of ``tree`` under its path (``jax.tree_util.keystr``,
e.g. ``.params[0]['W']``) plus a JSON header (format, tree structure, leaf names, shapes and dtypes, and the
caller's ``metadata``) into one uncompressed ``.npz``, through :func:`fflab.files.atomic_write`: an
interruption leaves either the old checkpoint or the new one, never a half-written file.
``load(path, template)`` restores the leaves into the structure of ``template`` (for example a freshly
initialised :class:`fflab.train.TrainState`) after checking that the leaf names, shapes and dtypes agree, so
a mismatch names the leaf. Typed PRNG keys (``jax.random.key``) are stored as their key data and re-wrapped
on load. Version 1 files (leaves numbered ``leaf_0..leaf_N``) still load.

Zip members carry a CRC-32 that numpy checks on read, so a corrupt or truncated file raises
:class:`CheckpointError` with a one-line message instead of returning garbage.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

from fflab.errors import CheckpointError
from fflab.files import atomic_write, jsonable

__all__ = ["FORMAT", "VERSION", "CheckpointError", "load", "load_metadata", "save"]

FORMAT = "fflab-checkpoint"
VERSION = 2
_HEADER = "__header__"


def _is_key(leaf) -> bool:
    return hasattr(leaf, "dtype") and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _names(tree) -> tuple[list[str], list, Any]:
    with_path, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return [jax.tree_util.keystr(p) or "<root>" for p, _ in with_path], [leaf for _, leaf in with_path], treedef


def save(path: str | os.PathLike, tree: Any, *, metadata: dict | None = None) -> Path:
    """Write ``tree`` (and JSON-able ``metadata``) to ``path`` atomically.

    Args:
        path: the checkpoint file (conventionally ``*.npz``); its folder is created if needed.
        tree: a pytree of arrays, e.g. a ``TrainState``. Leaves are copied to the host.
        metadata: anything :func:`fflab.files.jsonable` converts (history, config, epoch...); NaN and
            infinities are stored as ``null``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    names, leaves, treedef = _names(tree)
    arrays, specs = {}, []
    for name, leaf in zip(names, leaves, strict=True):
        if _is_key(leaf):
            arr = np.asarray(jax.random.key_data(leaf))
            spec = {"key_impl": str(jax.random.key_impl(leaf))}
        else:
            arr, spec = np.asarray(leaf), {}
        spec.update(name=name, shape=list(arr.shape), dtype=arr.dtype.str)
        specs.append(spec)
        arrays[name] = arr
    header = {
        "format": FORMAT,
        "version": VERSION,
        "treedef": str(treedef),
        "leaves": specs,
        "metadata": jsonable(metadata) if metadata is not None else {},  # NaN becomes null
    }
    arrays[_HEADER] = np.frombuffer(json.dumps(header, allow_nan=False).encode(), dtype=np.uint8)
    return atomic_write(path, lambda f: np.savez(f, **arrays))


def _read(path: Path, *, leaves: bool) -> tuple[dict, list[np.ndarray]]:
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            header = json.loads(npz[_HEADER].tobytes().decode())
            if not isinstance(header, dict) or header.get("format") != FORMAT:
                what = header.get("format") if isinstance(header, dict) else None
                raise CheckpointError(f"{path} is not an fflab checkpoint (format {what!r})")
            version = header.get("version")
            if version not in (1, VERSION):
                raise CheckpointError(f"{path} has checkpoint version {version}, this fflab reads 1 and {VERSION}")
            if version == 1:  # numbered leaves
                for i, spec in enumerate(header["leaves"]):
                    spec["name"] = f"leaf_{i}"
            arrays = [npz[spec["name"]] for spec in header["leaves"]] if leaves else []
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, ValueError, KeyError, EOFError, OSError, UnicodeDecodeError, TypeError) as e:
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
    meta = header.get("metadata")
    return meta if isinstance(meta, dict) else {}


def load(path: str | os.PathLike, template: Any) -> tuple[Any, dict]:
    """Restore a checkpoint into the structure of ``template``.

    Args:
        path: a file written by :func:`save`.
        template: a pytree with the same structure, shapes and dtypes as the saved one (its values are
            ignored), e.g. a freshly initialised state.

    Returns:
        ``(tree, metadata)``: the saved leaves as jax arrays in ``template``'s structure, and the metadata.

    Raises:
        CheckpointError: missing, corrupt or truncated file, or a structure / shape / dtype mismatch (the
            message names the first leaf that differs).
    """
    path = Path(path)
    header, arrays = _read(path, leaves=True)
    names, t_leaves, treedef = _names(template)
    saved = [spec["name"] for spec in header["leaves"]]
    if header["version"] > 1 and saved != names:
        missing = [n for n in names if n not in saved]
        extra = [n for n in saved if n not in names]
        detail = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}" if extra else "another order"
        raise CheckpointError(
            f"checkpoint {path} holds a different tree than the template ({len(saved)} leaves against "
            f"{len(names)}; {detail}); was it written with another model or optimizer?"
        )
    if header["treedef"] != str(treedef) or len(arrays) != len(t_leaves):
        raise CheckpointError(
            f"checkpoint {path} holds a different tree ({len(arrays)} leaves) than the template "
            f"({len(t_leaves)} leaves); was it written with another model or optimizer?"
        )
    out = []
    for name, arr, spec, ref in zip(names, arrays, header["leaves"], t_leaves, strict=True):
        if "key_impl" in spec:
            if not _is_key(ref):
                raise CheckpointError(f"checkpoint {path}: leaf {name} is a PRNG key, the template's is not")
            out.append(jax.random.wrap_key_data(arr, impl=spec["key_impl"]))
            continue
        ref = np.asarray(ref) if not hasattr(ref, "dtype") else ref
        if tuple(arr.shape) != tuple(ref.shape) or arr.dtype != np.dtype(ref.dtype):
            raise CheckpointError(
                f"checkpoint {path}: leaf {name} is {arr.dtype}{list(arr.shape)}, the template expects "
                f"{np.dtype(ref.dtype)}{list(ref.shape)}"
            )
        out.append(jax.numpy.asarray(arr))
    return jax.tree_util.tree_unflatten(treedef, out), header["metadata"]
