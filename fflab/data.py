"""Data sets as plain numpy arrays, and PRNG-keyed batching for the trainer.

``load(name)`` returns a :class:`Dataset` with images flattened row-major to ``(n, d)`` float32 in ``[0, 1]``
and integer labels ``(n,)`` int32. Names:

- ``digits``: scikit-learn's 1,797 UCI 8x8 digits, values ``/ 16``, a fixed stratified 80/20 train/test split.
- ``mnist`` [LeCun et al. 1998] and ``fashion-mnist`` [Xiao, Rasul & Vollgraf 2017, arXiv:1708.07747]:
  the four IDX files, standard 60k/10k split, values ``/ 255``. Found in this order: ``data_dir``,
  ``$FFLAB_DATA``, the cache folder (:func:`cache_dir`), the system folders in :data:`SYSTEM_DIRS`
  (Debian's ``dataset-fashion-mnist``), and only then downloaded into the cache folder from
  :data:`MIRRORS`, checked against :data:`CHECKSUMS`.
- ``synthetic``: a teacher-student task; uniform inputs labelled by the arg-max of a fixed random tanh MLP.

Data problems (missing, corrupt or truncated files, failed downloads) raise :class:`DataError` with a one-line
message that names the file or the places searched; bad arguments raise ``ValueError``.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import math
import os
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fflab import options
from fflab.errors import DataError

__all__ = [
    "CHECKSUMS",
    "FILES",
    "MIRRORS",
    "NAMES",
    "SYSTEM_DIRS",
    "DataError",
    "Dataset",
    "batch_indices",
    "cache_dir",
    "fingerprint",
    "load",
    "permutation",
    "read_idx",
    "shuffle",
]

NAMES = options.DATASETS

# The four IDX files of MNIST and Fashion-MNIST: train images, train labels, test images, test labels.
FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

# SHA-256 of the .gz files as the public mirrors serve them. MNIST: the sums that several independent
# loaders publish (torch.rb, downloaders for tensorflow's cvdf mirror). Fashion-MNIST: the sums of the
# upstream files whose MD5s the project's README lists (8d4fb7e6..., 25c81989..., bef4ecab...,
# bb300cfd...). Debian's dataset-fashion-mnist re-gzips the same IDX payloads without the stored file
# name, so its .gz files hash differently: local files are validated by read_idx (header, dims, exact
# payload length), and only downloads are checked against these sums.
CHECKSUMS: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    },
}

# Base URLs tried in order; a file's URL is base + file name. Overridden by the ``base_url=`` option, or by
# ``$FFLAB_MIRROR``, a base with one folder per data set (``$FFLAB_MIRROR/mnist/train-images-idx3-ubyte.gz``).
MIRRORS: dict[str, list[str]] = {
    "mnist": [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ],
    "fashion-mnist": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
}

# Read-only folders searched after the cache and before any download.
SYSTEM_DIRS: dict[str, list[Path]] = {
    "mnist": [],
    "fashion-mnist": [Path("/usr/share/datasets/fashion-mnist")],
}

_INSTALL_HINTS = {"fashion-mnist": "apt-get install dataset-fashion-mnist"}

# IDX type byte -> big-endian numpy dtype.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dims (n, rows, cols)
_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dim (n,)
_MAGIC_NAMES = {_IMAGES_MAGIC: "images (3-dim unsigned byte)", _LABELS_MAGIC: "labels (1-dim unsigned byte)"}


class Dataset(NamedTuple):
    """A classification data set as numpy arrays.

    Attributes:
        x_train, x_test, x_val: ``(n, d)`` float32 in ``[0, 1]``, images flattened row-major.
        y_train, y_test, y_val: ``(n,)`` int32 class indices in ``[0, num_classes)``.
        num_classes: number of classes.
        image_shape: ``(28, 28)``, ``(8, 8)``, or ``(d,)`` for non-image data; ``prod(image_shape) == d``.
        name: the data set's name as passed to :func:`load`.
        source: where the data came from: the folder of the IDX files, or ``scikit-learn`` / ``synthetic``.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    num_classes: int
    image_shape: tuple
    name: str
    source: str = ""


def load(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    validation: int | float = 0,
    seed: int = 0,
    **options,
) -> Dataset:
    """Load a data set by name.

    Args:
        name: one of :data:`NAMES`.
        data_dir: a folder searched first for the IDX files of ``mnist`` / ``fashion-mnist``
            (``data_dir/<name>/`` and then ``data_dir/`` itself).
        validation: how much of the training set to hold out: an int count, or a float fraction in ``[0, 1)``.
            The training set is shuffled with ``seed`` and its last ``validation`` samples become
            ``x_val`` / ``y_val``; with ``0`` the training set keeps its order and the validation
            arrays are empty.
        seed: seeds the validation shuffle and the ``synthetic`` samples.
        **options: per data set. ``synthetic``: ``n_train=2000, n_test=500, dim=20, num_classes=10,
            teacher_width=64, teacher_seed=0``. ``mnist`` / ``fashion-mnist``: ``download=True``
            (False: never touch the network), ``base_url`` (one mirror, overrides :data:`MIRRORS` and
            ``$FFLAB_MIRROR``), ``checksums`` (file name -> SHA-256, overrides :data:`CHECKSUMS`),
            ``progress=True``, ``timeout=60``.

    Returns:
        A :class:`Dataset`.

    Raises:
        ValueError: unknown name, option, or bad ``validation``.
        DataError: the files are missing, corrupt, or could not be downloaded.
    """
    if name not in NAMES:
        raise ValueError(f"unknown data set {name!r}; valid names: {', '.join(NAMES)}")
    if name == "digits":
        _check_options(name, options, ())
        ds = _load_digits()
    elif name == "synthetic":
        _check_options(name, options, _SYNTHETIC_DEFAULTS)
        ds = _load_synthetic(seed, **options)
    else:
        _check_options(name, options, ("download", "base_url", "checksums", "progress", "timeout"))
        ds = _load_idx_dataset(name, data_dir, **options)
    return _split_validation(ds, validation, seed)


def fingerprint(*arrays) -> str:
    """A SHA-256 over the shapes, dtypes and bytes of ``arrays``: equal only for the same data.

    ``fflab train`` records it for the training set and refuses to ``--resume`` on other data.
    """
    digest = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        digest.update(f"{a.dtype.str}{a.shape};".encode())
        digest.update(memoryview(a).cast("B"))
    return digest.hexdigest()


def cache_dir(name: str | None = None) -> Path:
    """The download cache: ``$XDG_CACHE_HOME/fflab`` or ``~/.cache/fflab``, with ``/<name>`` if given."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    root = Path(base) / "fflab"
    return root / name if name else root


def read_idx(path: str | os.PathLike, *, magic: int | None = None) -> np.ndarray:
    """Read an IDX file, gzipped (detected from its first bytes) or plain.

    The header is two zero bytes, a type byte (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
    0x0E float64), a dimension count, then one big-endian uint32 per dimension; the payload must hold exactly
    ``prod(dims)`` items.

    Args:
        path: the file.
        magic: if given, the header's 32-bit magic must equal it (2051 for MNIST images, 2049 for labels).

    Returns:
        An array of shape ``dims`` in native byte order.

    Raises:
        DataError: naming the file and what is wrong with it.
    """
    path = Path(path)
    gzipped = False
    try:
        with open(path, "rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"
        with gzip.open(path, "rb") if gzipped else open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, EOFError, zlib.error) as e:
        what = "corrupt or truncated gzip file" if gzipped else "cannot read file"
        raise DataError(f"{path}: {what} ({e})") from None
    if len(raw) < 4:
        raise DataError(f"{path}: not an IDX file (only {len(raw)} bytes, shorter than the 4-byte magic)")
    found = int.from_bytes(raw[:4], "big")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataError(
            f"{path}: not an IDX file (magic {found:#010x}; expected 00 00, a type byte in "
            f"{{{', '.join(f'{t:#04x}' for t in _IDX_TYPES)}}}, and a dimension count)"
        )
    if magic is not None and found != magic:
        raise DataError(
            f"{path}: wrong IDX magic {found} ({found:#010x}), expected {magic} ({magic:#010x})"
            + (f": this is not an {_MAGIC_NAMES[magic]} file" if magic in _MAGIC_NAMES else "")
        )
    ndim = raw[3]
    if ndim == 0:
        raise DataError(f"{path}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes, {ndim} dims need {header})")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = math.prod(dims) * dtype.itemsize  # Python ints: no overflow for absurd headers
    payload = len(raw) - header
    if payload != expected:
        what = "truncated" if payload < expected else "trailing bytes after the data"
        raise DataError(
            f"{path}: {what}: header dims {dims} need {expected} payload bytes, the file has {payload}"
        )
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="))


def permutation(key: jax.Array, n: int) -> jax.Array:
    """``jax.random.permutation(key, n)``, the same array, about 3x faster on the CPU for ``n <= 65536``.

    jax shuffles by sorting ``arange(n)`` by fresh random 32-bit keys, stably, in one or two rounds; a
    key-value sort is slow on XLA:CPU (12 ms for 60,000 pairs on 2 cores, against 2 ms for a plain
    ``uint32`` sort). Below 2**16 elements each stable argsort is done here as two plain sorts of packed
    words, ``(low 16 key bits, index)`` then ``(high 16 key bits, position)``: a two-digit radix sort that
    orders exactly as the stable key-value sort does. The rounds, keys and random bits are jax's, so the
    result is identical (``tests/fflab/test_data.py`` compares them); larger ``n`` calls jax directly.

    Works under ``jit`` with a traced ``key``; ``n`` is a Python int.
    """
    n = int(n)
    if not 0 <= n <= _PACKED_MAX:
        return jax.random.permutation(key, n)
    rounds = int(np.ceil(3 * np.log(max(1, n)) / np.log(np.iinfo(np.uint32).max)))  # as jax.random._shuffle
    perm = jnp.arange(n)
    index = jnp.arange(n, dtype=jnp.uint32)
    for _ in range(rounds):
        key, subkey = jax.random.split(key)
        bits = jax.random.bits(subkey, (n,), jnp.uint32)
        by_low = jax.lax.sort(((bits & 0xFFFF) << 16) | index) & 0xFFFF
        by_high = jax.lax.sort(((bits[by_low] >> 16) << 16) | index) & 0xFFFF
        perm = perm[by_low[by_high]]
    return perm


_PACKED_MAX = 1 << 16  # indices must fit the low 16 bits of a packed sort word


def batch_indices(key: jax.Array, n: int, batch_size: int) -> jax.Array:
    """A random permutation of ``range(n)`` cut into full batches (the remainder is dropped).

    Works under ``jit`` / ``lax.scan`` with a traced ``key``; ``n`` and ``batch_size`` are Python ints.

    Args:
        key: PRNG key; the same key gives the same batches.
        n: number of samples.
        batch_size: samples per batch, ``1 <= batch_size <= n``.

    Returns:
        ``(n // batch_size, batch_size)`` int32 indices, all distinct.
    """
    n, batch_size = int(n), int(batch_size)
    if batch_size < 1 or batch_size > n:
        raise ValueError(f"batch_size must be between 1 and n = {n}, got {batch_size}")
    num_batches = n // batch_size
    perm = permutation(key, n)
    return perm[: num_batches * batch_size].reshape(num_batches, batch_size).astype(jnp.int32)


def shuffle(key: jax.Array, x, y):
    """Permute ``x`` and ``y`` along their first axis with the same random permutation.

    numpy inputs give numpy outputs (the permutation is pulled to the host); jax inputs stay on device.

    Args:
        key: PRNG key.
        x: ``(n, ...)`` inputs.
        y: ``(n, ...)`` labels.

    Returns:
        ``(x[perm], y[perm])``.
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} rows but y has {y.shape[0]}")
    perm = permutation(key, x.shape[0])
    if isinstance(x, np.ndarray) and isinstance(y, np.ndarray):
        perm = np.asarray(perm)
    return x[perm], y[perm]


# --- helpers ---


def _check_options(name: str, options: dict, valid) -> None:
    unknown = sorted(set(options) - set(valid))
    if unknown:
        allowed = ", ".join(valid) if valid else "none"
        raise ValueError(f"unknown option(s) for {name}: {', '.join(unknown)}; valid options: {allowed}")


def _empty(d: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, d), np.float32), np.zeros((0,), np.int32)


def _split_validation(ds: Dataset, validation: int | float, seed: int) -> Dataset:
    n = ds.x_train.shape[0]
    if isinstance(validation, bool) or not isinstance(validation, int | float | np.integer | np.floating):
        raise ValueError(f"validation must be an int count or a float fraction, got {validation!r}")
    if isinstance(validation, float | np.floating):
        if not 0.0 <= validation < 1.0:
            raise ValueError(f"a fractional validation must lie in [0, 1), got {validation}")
        k = int(round(float(validation) * n))
    else:
        k = int(validation)
    if not 0 <= k < n:
        raise ValueError(f"validation must hold between 0 and {n - 1} of the {n} training samples, got {k}")
    if k == 0:
        return ds
    perm = np.random.default_rng(seed).permutation(n)
    x, y = ds.x_train[perm], ds.y_train[perm]
    return ds._replace(x_train=x[: n - k], y_train=y[: n - k], x_val=x[n - k :], y_val=y[n - k :])


def _load_digits() -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
    return Dataset(x_tr, y_tr, x_te, y_te, *_empty(x.shape[1]), 10, (8, 8), "digits", "scikit-learn")


_SYNTHETIC_DEFAULTS = {
    "n_train": 2000,
    "n_test": 500,
    "dim": 20,
    "num_classes": 10,
    "teacher_width": 64,
    "teacher_seed": 0,
}


def _load_synthetic(seed: int, **options) -> Dataset:
    """Inputs uniform in [0, 1]^dim from ``seed``; labels from a teacher fixed by ``teacher_seed``."""
    opts = {**_SYNTHETIC_DEFAULTS, **options}
    n_train, n_test, dim = int(opts["n_train"]), int(opts["n_test"]), int(opts["dim"])
    k, width = int(opts["num_classes"]), int(opts["teacher_width"])
    if min(n_train, n_test, dim, width) < 1 or k < 2:
        raise ValueError(f"synthetic needs positive sizes and num_classes >= 2, got {opts}")
    # numpy Generators: explicit state, no global RNG, and identical under jax's float32 and float64 modes.
    teacher = np.random.default_rng([int(opts["teacher_seed"]), 0x7EAC])
    # Inputs centred to variance 1/12 per coordinate; scale so hidden pre-activations have variance ~4,
    # which puts tanh in its non-linear range.
    w1 = teacher.standard_normal((dim, width)) * np.sqrt(48.0 / dim)
    b1 = teacher.standard_normal(width) * 0.5
    w2 = teacher.standard_normal((width, k)) / np.sqrt(width)

    def logits(x):
        return np.tanh((x.astype(np.float64) - 0.5) @ w1 + b1) @ w2

    # Centre each output on a reference sample so that no class dominates the arg-max.
    b2 = -logits(teacher.random((4096, dim))).mean(axis=0)
    rng = np.random.default_rng(seed)
    x = rng.random((n_train + n_test, dim), dtype=np.float32)
    y = np.argmax(logits(x) + b2, axis=1).astype(np.int32)
    return Dataset(
        x[:n_train], y[:n_train], x[n_train:], y[n_train:], *_empty(dim), k, (dim,), "synthetic", "synthetic"
    )


def _search_dirs(name: str, data_dir) -> list[tuple[str, Path]]:
    """Folders to look in, in order, each with a label saying where it came from."""
    places = []
    for label, root in (("data_dir", data_dir), ("$FFLAB_DATA", os.environ.get("FFLAB_DATA") or None)):
        if root is not None:
            root = Path(root).expanduser()
            places += [(label, root / name), (label, root)]
    places.append(("cache", cache_dir(name)))
    places += [("system", Path(p)) for p in SYSTEM_DIRS.get(name, ())]
    return places


def _find_file(folder: Path, gz_name: str) -> Path | None:
    for candidate in (folder / gz_name, folder / gz_name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def _mirrors(name: str, base_url: str | None) -> list[str]:
    if base_url:
        bases = [base_url]
    elif os.environ.get("FFLAB_MIRROR"):
        bases = [os.environ["FFLAB_MIRROR"].rstrip("/") + f"/{name}/"]
    else:
        bases = list(MIRRORS.get(name, ()))
    return [b if b.endswith("/") else b + "/" for b in bases]


def _load_idx_dataset(
    name: str,
    data_dir,
    *,
    download: bool = True,
    base_url: str | None = None,
    checksums: dict[str, str] | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Dataset:
    places = _search_dirs(name, data_dir)
    if data_dir is not None:
        # An explicit folder is what the user means: never fall back to another copy without a word.
        folders = [folder for label, folder in places if label == "data_dir"]
        for folder in folders:
            paths = [_find_file(folder, f) for f in FILES]
            if all(paths):
                return _parse_idx_files(name, paths)
        found = max(folders, key=lambda f: sum(_find_file(f, g) is not None for g in FILES))
        missing = [g for g in FILES if _find_file(found, g) is None]
        where = " or ".join(str(f) for f in folders)
        if not Path(data_dir).expanduser().is_dir():
            raise DataError(f"--data-dir {data_dir}: no such folder")
        raise DataError(f"{name} not found in --data-dir {where}: missing {', '.join(missing)} (gzipped or not)")
    searched = []
    for label, folder in places:
        paths = [_find_file(folder, f) for f in FILES]
        if all(paths):
            return _parse_idx_files(name, paths)
        found = sum(p is not None for p in paths)
        searched.append(f"{folder} ({label}{f', {found} of 4 files' if found else ''})")

    target = cache_dir(name)
    hint = (
        f"fix: put the four files ({', '.join(FILES)}, gzipped or not) in a folder and pass --data-dir "
        f"(data_dir=) or set FFLAB_DATA"
        + (f", or run `{_INSTALL_HINTS[name]}`" if name in _INSTALL_HINTS else "")
        + (", or connect to the internet so" if download else ", or allow downloads so")
        + " they can be downloaded into the cache"
    )
    where = f"{name} not found; searched: {'; '.join(searched)}"
    if not download:
        raise DataError(f"{where}; downloads are off; {hint}")
    sums = CHECKSUMS.get(name, {}) if checksums is None else checksums
    failures = []
    for base in _mirrors(name, base_url):
        try:
            for gz_name in FILES:
                if _find_file(target, gz_name) is None:  # an earlier, interrupted run may have fetched some
                    _download(base + gz_name, target / gz_name, sums.get(gz_name), progress, timeout)
            break
        except DataError as e:
            failures.append(str(e))
    else:
        reasons = "; ".join(failures) if failures else "no mirror configured"
        raise DataError(f"{where}; download into {target} failed: {reasons}; {hint}")
    return _parse_idx_files(name, [_find_file(target, f) for f in FILES])


def _download(url: str, dest: Path, sha256: str | None, progress: bool, timeout: float) -> None:
    """Stream ``url`` to a temporary file beside ``dest``, renamed to ``dest`` only if its SHA-256 matches."""
    from fflab.progress import tqdm

    if not sha256:
        raise DataError(f"{url}: no known SHA-256 for {dest.name}, refusing to trust an unchecked download")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the cache folder {dest.parent} ({e})") from None
    # The temporary name cannot be mistaken for a data file: it does not end in -ubyte or -ubyte.gz.
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        digest = hashlib.sha256()
        size = 0
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with tqdm(
                total=total, unit="B", unit_scale=True, desc=f"downloading {dest.name}", disable=not progress
            ) as bar:
                while chunk := response.read(1 << 16):
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                    bar.update(len(chunk))
        if total is not None and size != total:
            raise DataError(f"{url}: download interrupted after {size} of {total} bytes")
        if digest.hexdigest() != sha256.lower():
            raise DataError(
                f"{url}: SHA-256 mismatch (expected {sha256}, got {digest.hexdigest()}); download discarded"
            )
        os.replace(tmp, dest)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        reason = e.reason if type(e) is urllib.error.URLError else e
        raise DataError(f"{url}: download failed ({reason})") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _parse_idx_files(name: str, paths: list[Path]) -> Dataset:
    train_x, train_y, test_x, test_y = paths
    x_tr, x_te = read_idx(train_x, magic=_IMAGES_MAGIC), read_idx(test_x, magic=_IMAGES_MAGIC)
    y_tr, y_te = read_idx(train_y, magic=_LABELS_MAGIC), read_idx(test_y, magic=_LABELS_MAGIC)
    for xs, ys, xp, yp in ((x_tr, y_tr, train_x, train_y), (x_te, y_te, test_x, test_y)):
        if xs.shape[0] != ys.shape[0]:
            raise DataError(f"{xp} holds {xs.shape[0]} images but {yp} holds {ys.shape[0]} labels")
        if ys.size and ys.max() >= 10:
            raise DataError(f"{yp}: label {int(ys.max())} is out of range, expected 0..9")
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise DataError(f"{train_x} has {x_tr.shape[1:]} images but {test_x} has {x_te.shape[1:]}")
    image_shape = tuple(int(s) for s in x_tr.shape[1:])

    d = math.prod(image_shape)
    for xs, xp, what in ((x_tr, train_x, "training"), (x_te, test_x, "test")):
        if xs.shape[0] == 0:
            raise DataError(f"{xp} holds no images: the {what} set is empty")

    def flat(images):
        out = images.reshape(images.shape[0], d).astype(np.float32)
        out /= 255.0  # in place: avoids a second 188 MB temporary for the 60k training images
        return out

    return Dataset(
        flat(x_tr),
        y_tr.astype(np.int32),
        flat(x_te),
        y_te.astype(np.int32),
        *_empty(d),
        10,
        image_shape,
        name,
        str(Path(train_x).parent),
    )
