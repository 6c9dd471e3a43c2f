"""Files that are never half-written, JSON with one policy for NaN, and a lock for run folders.

- :func:`atomic_write` writes to a temporary name in the same folder, fsyncs, and renames over the target,
  so an interruption leaves the old file or the new one, never a mix. Checkpoints, metrics, results and
  benchmark outputs all go through it.
- :func:`write_json` converts numpy and JAX values, NamedTuples and dataclasses, and writes every NaN or
  infinite number as ``null`` (JSON has neither), so every file it writes is valid JSON.
- :class:`FolderLock` holds an exclusive ``flock`` on ``FOLDER/.lock`` while a process writes the folder; a
  second process gets :class:`fflab.errors.RunLockedError` naming the holder at once, and the lock goes
  away with its process, however that process ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fflab.errors import RunLockedError

__all__ = ["FolderLock", "atomic_write", "jsonable", "read_json", "remove_stale_temporaries", "write_json"]

_TMP_SUFFIX = ".tmp"


def atomic_write(path: str | os.PathLike, write: Callable, *, mode: int = 0o644) -> Path:
    """Call ``write(f)`` on a binary temporary file beside ``path``, then rename it over ``path``.

    Args:
        path: the target; its folder is created if needed.
        write: ``write(f)`` fills the open binary file ``f``.
        mode: permission bits of the new file (before the umask).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TMP_SUFFIX)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, mode & ~umask)  # mkstemp makes 0600; results are for everyone to read
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
    return path


def remove_stale_temporaries(path: str | os.PathLike) -> int:
    """Delete the temporaries that an :func:`atomic_write` of ``path`` killed mid-write left behind.

    Call it only while holding the folder's :class:`FolderLock`, so that no live writer owns them.

    Returns:
        The number of files removed.
    """
    path = Path(path)
    removed = 0
    for tmp in path.parent.glob(f".{path.name}.*{_TMP_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            removed += 1
    return removed


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON types; NaN and infinities become ``None``."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if hasattr(value, "_asdict"):  # NamedTuple, before tuple
        return jsonable(value._asdict())
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if hasattr(value, "tolist") and hasattr(value, "dtype"):  # numpy and JAX arrays and scalars
        return jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: str | os.PathLike, payload: Any) -> Path:
    """Write ``payload`` as indented JSON, atomically (:func:`atomic_write`), converted by :func:`jsonable`."""
    text = json.dumps(jsonable(payload), indent=1, allow_nan=False)
    return atomic_write(path, lambda f: f.write(text.encode()))


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; ``ValueError`` naming the file if it is not valid JSON."""
    path = Path(path)
    text = path.read_text()
    try:
        return json.loads(text)
    except ValueError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None


class FolderLock:
    """An exclusive lock on a folder while one process writes it: ``with FolderLock(run_dir): ...``.

    The lock is an ``fcntl.flock`` on ``FOLDER/.lock``, which holds the owner's process id and command for
    the error message. ``flock`` locks vanish when their process dies (Ctrl-C, SIGKILL), so a lock file
    left behind never blocks the next run. Where ``fcntl`` does not exist (Windows) the lock does nothing.

    Raises:
        RunLockedError: on entry, if another process holds the folder; the message names it.
    """

    NAME = ".lock"

    def __init__(self, folder: str | os.PathLike, *, what: str = "run folder"):
        self.folder = Path(folder)
        self.what = what
        self._fd: int | None = None

    def __enter__(self) -> FolderLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / self.NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunLockedError(
                f"{self.what} {self.folder} is in use by {holder} (lock {path}); wait for it to finish or "
                "choose another folder"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        import sys

        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} ({' '.join(sys.argv)[:200]})".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock; the file stays (unlinking would race)
            self._fd = None
