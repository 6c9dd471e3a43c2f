"""Tests for fflab.data: loaders, IDX parsing, the downloader (served from 127.0.0.1), and batching."""

import functools
import gzip
import hashlib
import http.server
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fflab import data
from fflab.data import DataError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
DEAD_URL = "http://127.0.0.1:9/"  # the discard port: nothing listens, so connections are refused at once


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """A private cache, no user settings, and mirrors that can never reach the internet."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("FFLAB_DATA", raising=False)
    monkeypatch.delenv("FFLAB_MIRROR", raising=False)
    monkeypatch.setattr(data, "MIRRORS", {"mnist": [DEAD_URL], "fashion-mnist": [DEAD_URL]})


# --- helpers ---


def write_idx(path, arr, *, gz=None, magic=None, dims=None, cut=0, extra=b""):
    """Write ``arr`` as an IDX file; ``magic``/``dims`` override the header, ``cut`` drops trailing bytes."""
    arr = np.asarray(arr)
    types = {"uint8": 0x08, "int8": 0x09, "int16": 0x0B, "int32": 0x0C, "float32": 0x0D, "float64": 0x0E}
    dims = arr.shape if dims is None else dims
    if magic is None:
        magic = (types[arr.dtype.name] << 8) | len(dims)
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in dims)
    raw = header + arr.astype(arr.dtype.newbyteorder(">")).tobytes() + extra
    raw = raw[: len(raw) - cut]
    path = Path(path)
    gz = path.suffix == ".gz" if gz is None else gz
    path.write_bytes(gzip.compress(raw, mtime=0) if gz else raw)
    return path


def fake_mnist(folder, *, n_train=30, n_test=10, seed=0, gz=True):
    """Write four small MNIST-format files into ``folder``; return the arrays and the files' SHA-256 sums."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    sums = {}
    for name, arr in arrays.items():
        path = write_idx(folder / (name if gz else name.removesuffix(".gz")), arr, gz=gz)
        sums[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return arrays, sums


def leftovers(folder):
    """Files in ``folder`` whose names are not one of the four data files (temporary downloads, say)."""
    folder = Path(folder)
    return sorted(p.name for p in folder.iterdir() if p.name not in data.FILES) if folder.exists() else []


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class _CutShortHandler(http.server.BaseHTTPRequestHandler):
    """Promises 100,000 bytes and sends 100, then hangs up."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self.wfile.write(b"\x1f\x8b" + b"x" * 98)
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args):
        pass


def _serve(handler):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return httpd, thread, f"http://127.0.0.1:{httpd.server_address[1]}/"


@pytest.fixture
def server(tmp_path):
    """An HTTP server on 127.0.0.1 serving ``root``; yields ``(root, base_url)``."""
    root = tmp_path / "www"
    root.mkdir()
    httpd, thread, url = _serve(functools.partial(_QuietHandler, directory=str(root)))
    yield root, url
    httpd.shutdown()
    httpd.server_close()
    thread.join()


# --- API ---


def test_public_names_exist():
    for name in data.__all__:
        assert hasattr(data, name), name
    assert set(data.NAMES) == {"digits", "mnist", "fashion-mnist", "synthetic"}


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="digits, mnist, fashion-mnist, synthetic"):
        data.load("cifar")


def test_unknown_option_is_rejected():
    with pytest.raises(ValueError, match="n_trian"):
        data.load("synthetic", n_trian=10)
    with pytest.raises(ValueError, match="unknown option"):
        data.load("digits", dim=3)


# --- digits ---


def test_digits_shapes_range_and_split():
    ds = data.load("digits")
    assert ds.x_train.shape == (1437, 64) and ds.x_test.shape == (360, 64)
    assert ds.y_train.shape == (1437,) and ds.y_test.shape == (360,)
    assert ds.x_val.shape == (0, 64) and ds.y_val.shape == (0,)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0 and ds.x_test.max() <= 1.0
    assert ds.num_classes == 10 and ds.image_shape == (8, 8) and ds.name == "digits"
    # Stratified: each class's share of the test set matches its share of all 1,797 samples to one sample.
    total = np.bincount(np.concatenate([ds.y_train, ds.y_test]), minlength=10)
    np.testing.assert_allclose(np.bincount(ds.y_test, minlength=10), total * 0.2, atol=1)
    # Fixed split: a second load gives the same arrays.
    again = data.load("digits")
    np.testing.assert_array_equal(again.x_test, ds.x_test)
    np.testing.assert_array_equal(again.y_train, ds.y_train)


# --- synthetic ---


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_synthetic_is_deterministic_per_seed(seed):
    a, b = data.load("synthetic", seed=seed), data.load("synthetic", seed=seed)
    for u, v in zip(a, b, strict=True):
        if isinstance(u, np.ndarray):
            np.testing.assert_array_equal(u, v)
        else:
            assert u == v
    other = data.load("synthetic", seed=seed + 10)
    assert not np.array_equal(a.x_train, other.x_train)


def test_synthetic_shapes_and_options():
    ds = data.load("synthetic", n_train=100, n_test=40, dim=7, num_classes=3)
    assert ds.x_train.shape == (100, 7) and ds.x_test.shape == (40, 7) and ds.x_val.shape == (0, 7)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert ds.num_classes == 3 and ds.image_shape == (7,)
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    assert set(np.unique(ds.y_train)) <= {0, 1, 2}


def test_synthetic_teacher_is_fixed_by_teacher_seed():
    base = data.load("synthetic")
    other = data.load("synthetic", teacher_seed=1)
    np.testing.assert_array_equal(base.x_train, other.x_train)  # same inputs ...
    assert np.mean(base.y_train != other.y_train) > 0.5  # ... labelled by a different teacher


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_synthetic_is_balanced_enough_and_learnable(seed):
    from sklearn.linear_model import LogisticRegression

    ds = data.load("synthetic", seed=seed)
    counts = np.bincount(ds.y_train, minlength=10)
    assert (counts > 0).all() and counts.max() < 0.25 * len(ds.y_train)
    # A linear model on 2,000 samples learns a good share of the tanh teacher (chance is 0.1).
    accuracy = LogisticRegression(max_iter=500).fit(ds.x_train, ds.y_train).score(ds.x_test, ds.y_test)
    assert accuracy > 0.5


# --- validation split ---


@pytest.mark.parametrize("validation, n_val", [(0, 0), (100, 100), (0.25, 500), (0.1, 200)])
def test_validation_split_sizes(validation, n_val):
    full = data.load("synthetic")
    ds = data.load("synthetic", validation=validation)
    assert ds.x_val.shape == (n_val, 20) and ds.y_val.shape == (n_val,)
    assert ds.x_train.shape == (2000 - n_val, 20) and ds.y_train.shape == (2000 - n_val,)
    np.testing.assert_array_equal(ds.x_test, full.x_test)
    # Train and validation together are the original training set, rows still paired with their labels.
    x = np.concatenate([ds.x_train, ds.x_val])
    y = np.concatenate([ds.y_train, ds.y_val])
    order, full_order = np.lexsort(x.T), np.lexsort(full.x_train.T)
    np.testing.assert_array_equal(x[order], full.x_train[full_order])
    np.testing.assert_array_equal(y[order], full.y_train[full_order])


def test_validation_split_depends_on_seed_only():
    a = data.load("digits", validation=50, seed=1)
    b = data.load("digits", validation=50, seed=1)
    c = data.load("digits", validation=50, seed=2)
    np.testing.assert_array_equal(a.y_val, b.y_val)
    np.testing.assert_array_equal(a.x_val, b.x_val)
    assert not np.array_equal(a.x_val, c.x_val)


@pytest.mark.parametrize("bad", [-1, 2000, 1.0, -0.1, True, "10"])
def test_validation_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="validation"):
        data.load("synthetic", validation=bad)


# --- read_idx ---


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize(
    "arr",
    [
        np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
        np.array([0, 9, 3, 255], dtype=np.uint8),
        np.array([[-1, 2**20], [7, -(2**30)]], dtype=np.int32),
        np.array([-3, 5, 127], dtype=np.int8),
        np.array([[1, -300]], dtype=np.int16),
        np.array([[0.5, -1.25e-3, 3.0]], dtype=np.float32),
        np.array([np.pi, -np.e], dtype=np.float64),
    ],
    ids=["u8-3d", "u8-1d", "i32", "i8", "i16", "f32", "f64"],
)
def test_read_idx_round_trips(tmp_path, arr, gz):
    path = write_idx(tmp_path / ("x.idx.gz" if gz else "x.idx"), arr, gz=gz)
    out = data.read_idx(path)
    assert out.shape == arr.shape and out.dtype == arr.dtype and out.dtype.isnative
    np.testing.assert_array_equal(out, arr)


def test_read_idx_checks_the_expected_magic(tmp_path):
    labels = write_idx(tmp_path / "labels-idx1-ubyte", np.arange(5, dtype=np.uint8))
    assert data.read_idx(labels, magic=2049).shape == (5,)
    with pytest.raises(DataError, match="wrong IDX magic 2049") as err:
        data.read_idx(labels, magic=2051)
    assert str(labels) in str(err.value)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"magic": 0x12345678}, "not an IDX file"),
        ({"magic": 0x00000703}, "not an IDX file"),  # 0x07 is no IDX type
        ({"dims": (6, 28, 28)}, "truncated: header dims \\(6, 28, 28\\)"),  # header promises one image more
        ({"dims": (5, 28)}, "trailing bytes"),  # fewer dims than the payload holds
        ({"cut": 1}, "truncated"),
        ({"extra": b"\x00"}, "trailing bytes"),
    ],
    ids=["bad-magic", "bad-type", "too-many-rows", "too-few-dims", "cut-payload", "extra-byte"],
)
@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_rejects_corrupt_files(tmp_path, kwargs, message, gz):
    kwargs = dict(kwargs)
    if "dims" in kwargs and len(kwargs["dims"]) == 2:
        kwargs["magic"] = 0x00000802
    path = write_idx(tmp_path / "bad-idx3-ubyte", np.zeros((5, 28, 28), np.uint8), gz=gz, **kwargs)
    with pytest.raises(DataError, match=message) as err:
        data.read_idx(path)
    assert str(path) in str(err.value)


def test_read_idx_truncated_header_and_gzip(tmp_path):
    short = tmp_path / "short"
    short.write_bytes(b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(DataError, match="truncated IDX header") as err:
        data.read_idx(short)
    assert str(short) in str(err.value)
    cut = tmp_path / "cut.gz"
    whole = gzip.compress(b"\x00\x00\x08\x01" + (1000).to_bytes(4, "big") + bytes(1000))
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match="corrupt or truncated gzip") as err:
        data.read_idx(cut)
    assert str(cut) in str(err.value)
    with pytest.raises(DataError, match="no such file"):
        data.read_idx(tmp_path / "absent.gz")


# --- mnist from local folders ---


def test_mnist_from_data_dir_matches_the_files(tmp_path):
    arrays, _ = fake_mnist(tmp_path / "d", n_train=30, n_test=10)
    ds = data.load("mnist", data_dir=tmp_path / "d", download=False)
    assert ds.x_train.shape == (30, 784) and ds.x_test.shape == (10, 784) and ds.x_val.shape == (0, 784)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert ds.image_shape == (28, 28) and ds.num_classes == 10 and ds.name == "mnist"
    images = arrays["train-images-idx3-ubyte.gz"]
    np.testing.assert_array_equal(ds.x_train, images.reshape(30, -1).astype(np.float32) / 255)
    np.testing.assert_array_equal(ds.y_test, arrays["t10k-labels-idx1-ubyte.gz"])
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0


def test_mnist_accepts_uncompressed_files_and_name_subfolder(tmp_path):
    arrays, _ = fake_mnist(tmp_path / "root" / "mnist", gz=False)
    ds = data.load("mnist", data_dir=tmp_path / "root", download=False)
    np.testing.assert_array_equal(ds.y_train, arrays["train-labels-idx1-ubyte.gz"])


def test_search_order_data_dir_then_env_then_cache(tmp_path, monkeypatch):
    fake_mnist(tmp_path / "explicit", n_train=11)
    fake_mnist(tmp_path / "env" / "mnist", n_train=12)
    fake_mnist(data.cache_dir("mnist"), n_train=13)
    assert data.cache_dir("mnist") == tmp_path / "xdg" / "fflab" / "mnist"
    monkeypatch.setenv("FFLAB_DATA", str(tmp_path / "env"))
    assert data.load("mnist", data_dir=tmp_path / "explicit", download=False).x_train.shape[0] == 11
    assert data.load("mnist", download=False).x_train.shape[0] == 12
    monkeypatch.delenv("FFLAB_DATA")
    assert data.load("mnist", download=False).x_train.shape[0] == 13


def test_cache_dir_defaults_to_home(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert data.cache_dir("fashion-mnist") == tmp_path / ".cache" / "fflab" / "fashion-mnist"


def test_mismatched_image_and_label_counts(tmp_path):
    fake_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(29, np.uint8))
    with pytest.raises(DataError, match="30 images but .* 29 labels"):
        data.load("mnist", data_dir=tmp_path, download=False)


def test_not_found_names_every_place_and_the_fixes(tmp_path, monkeypatch):
    system = tmp_path / "usr-share"
    monkeypatch.setattr(data, "SYSTEM_DIRS", {"mnist": [], "fashion-mnist": [system]})
    monkeypatch.setenv("FFLAB_DATA", str(tmp_path / "env"))
    (tmp_path / "env").mkdir()
    write_idx(tmp_path / "env" / "train-labels-idx1-ubyte.gz", np.zeros(3, np.uint8))
    with pytest.raises(DataError) as err:
        data.load("fashion-mnist", download=False)
    message = str(err.value)
    assert "\n" not in message
    for place in [tmp_path / "env" / "fashion-mnist", tmp_path / "env", data.cache_dir("fashion-mnist"), system]:
        assert str(place) in message
    assert "1 of 4 files" in message
    for fix in ["--data-dir", "FFLAB_DATA", "apt-get install dataset-fashion-mnist"]:
        assert fix in message


def test_an_explicit_data_dir_never_falls_back_to_another_copy(tmp_path, monkeypatch):
    complete = tmp_path / "usr-share"
    fake_mnist(complete)
    monkeypatch.setattr(data, "SYSTEM_DIRS", {"mnist": [complete], "fashion-mnist": [complete]})
    assert data.load("fashion-mnist", download=False).source == str(complete)  # found where it is
    (tmp_path / "partial").mkdir()
    write_idx(tmp_path / "partial" / "train-labels-idx1-ubyte.gz", np.zeros(3, np.uint8))
    with pytest.raises(DataError, match="missing train-images-idx3-ubyte.gz, t10k-images") as err:
        data.load("fashion-mnist", data_dir=tmp_path / "partial", download=False)
    assert str(tmp_path / "partial") in str(err.value) and str(complete) not in str(err.value)
    with pytest.raises(DataError, match="no such folder"):
        data.load("fashion-mnist", data_dir=tmp_path / "typo", download=False)
    assert data.load("fashion-mnist", data_dir=complete).source == str(complete)


def test_offline_download_failure_says_what_was_tried(tmp_path):
    with pytest.raises(DataError) as err:
        data.load("mnist", timeout=5)
    message = str(err.value)
    assert "\n" not in message
    assert str(data.cache_dir("mnist")) in message and "--data-dir" in message
    assert DEAD_URL + "train-images-idx3-ubyte.gz" in message and "download" in message
    assert leftovers(data.cache_dir("mnist")) == []


# --- mnist downloads from 127.0.0.1 ---


def test_download_lands_in_cache_and_is_reused(server):
    root, url = server
    arrays, sums = fake_mnist(root, n_train=20, n_test=8)
    ds = data.load("mnist", base_url=url, checksums=sums, progress=True)
    cache = data.cache_dir("mnist")
    assert sorted(p.name for p in cache.iterdir()) == sorted(data.FILES)
    for name, digest in sums.items():
        assert hashlib.sha256((cache / name).read_bytes()).hexdigest() == digest
    np.testing.assert_array_equal(ds.y_train, arrays["train-labels-idx1-ubyte.gz"])
    assert ds.x_train.shape == (20, 784)
    # The second load needs no network.
    again = data.load("mnist", download=False)
    np.testing.assert_array_equal(again.x_test, ds.x_test)


def test_download_via_env_mirror(server, monkeypatch):
    root, url = server
    _, sums = fake_mnist(root / "mnist")
    monkeypatch.setenv("FFLAB_MIRROR", url.rstrip("/"))
    monkeypatch.setitem(data.CHECKSUMS, "mnist", sums)
    assert data.load("mnist", progress=False).x_train.shape == (30, 784)


def test_download_fetches_only_missing_files(server):
    root, url = server
    arrays, sums = fake_mnist(root)
    cache = data.cache_dir("mnist")
    cache.mkdir(parents=True)
    # A previous run fetched one file; the server no longer has it, so it must come from the cache.
    (root / "t10k-labels-idx1-ubyte.gz").rename(cache / "t10k-labels-idx1-ubyte.gz")
    ds = data.load("mnist", base_url=url, checksums=sums, progress=False)
    np.testing.assert_array_equal(ds.y_test, arrays["t10k-labels-idx1-ubyte.gz"])


def test_checksum_mismatch_leaves_nothing_behind(server):
    root, url = server
    _, sums = fake_mnist(root)
    sums["train-images-idx3-ubyte.gz"] = "0" * 64
    with pytest.raises(DataError, match="SHA-256 mismatch") as err:
        data.load("mnist", base_url=url, checksums=sums, progress=False)
    assert "train-images-idx3-ubyte.gz" in str(err.value)
    cache = data.cache_dir("mnist")
    assert not (cache / "train-images-idx3-ubyte.gz").exists()
    assert leftovers(cache) == []
    # Nothing that looks good was left, so a later offline load still fails.
    with pytest.raises(DataError, match="not found"):
        data.load("mnist", download=False)


def test_missing_checksum_refuses_the_download(server):
    root, url = server
    _, sums = fake_mnist(root)
    del sums["t10k-images-idx3-ubyte.gz"]
    with pytest.raises(DataError, match="no known SHA-256"):
        data.load("mnist", base_url=url, checksums=sums, progress=False)
    assert not (data.cache_dir("mnist") / "t10k-images-idx3-ubyte.gz").exists()


def test_http_404_is_a_data_error(server):
    _, url = server
    with pytest.raises(DataError, match="404"):
        data.load("mnist", base_url=url, checksums={f: "0" * 64 for f in data.FILES}, progress=False)
    assert leftovers(data.cache_dir("mnist")) == []


def test_interrupted_download_leaves_no_temp_file():
    httpd, thread, url = _serve(_CutShortHandler)
    try:
        with pytest.raises(DataError, match="interrupted after 100 of 100000 bytes"):
            data.load("mnist", base_url=url, checksums={f: "0" * 64 for f in data.FILES}, progress=False)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()
    cache = data.cache_dir("mnist")
    assert leftovers(cache) == [] and not any(cache.iterdir())


def test_downloaded_truncated_file_gives_a_clear_error(server):
    root, url = server
    _, sums = fake_mnist(root)
    bad = write_idx(root / "train-images-idx3-ubyte.gz", np.zeros((30, 28, 28), np.uint8), cut=100)
    sums["train-images-idx3-ubyte.gz"] = hashlib.sha256(bad.read_bytes()).hexdigest()
    with pytest.raises(DataError, match="truncated") as err:
        data.load("mnist", base_url=url, checksums=sums, progress=False)
    assert str(data.cache_dir("mnist") / "train-images-idx3-ubyte.gz") in str(err.value)


# --- fashion-mnist, the real files ---


@pytest.mark.skipif(
    not all((FASHION_DIR / f).is_file() for f in data.FILES),
    reason=f"Fashion-MNIST is not installed in {FASHION_DIR} (apt-get install dataset-fashion-mnist)",
)
def test_fashion_mnist_real_files():
    ds = data.load("fashion-mnist", download=False)
    assert ds.x_train.shape == (60000, 784) and ds.x_test.shape == (10000, 784)
    assert ds.y_train.shape == (60000,) and ds.y_test.shape == (10000,)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert ds.image_shape == (28, 28) and ds.num_classes == 10 and ds.name == "fashion-mnist"
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    assert 0.0 <= ds.x_test.min() and ds.x_test.max() <= 1.0
    # Fashion-MNIST is exactly balanced: 6,000 training and 1,000 test images per class.
    np.testing.assert_array_equal(np.bincount(ds.y_train), np.full(10, 6000))
    np.testing.assert_array_equal(np.bincount(ds.y_test), np.full(10, 1000))


# --- batching ---


# Sizes around jax's switch from one to two sort rounds (1,625 / 1,626) and the packed-sort limit 2**16.
# At 60,000 thousands of pairs share their low or their high 16 key bits, so the tie-breaking is exercised.
@pytest.mark.parametrize("n", [0, 1, 2, 37, 1625, 1626, 60_000, 65_536, 65_537])
def test_permutation_is_jax_random_permutation(n):
    for seed in range(3):
        for key in (jax.random.key(seed), jax.random.PRNGKey(seed)):
            expected = jax.random.permutation(key, n)
            got = jax.jit(data.permutation, static_argnums=1)(key, n)
            assert got.dtype == expected.dtype and got.shape == (n,)
            np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n, batch_size", [(50, 7), (48, 8), (5, 5), (10, 1)])
def test_batch_indices_is_a_permutation_in_batches(seed, n, batch_size):
    key = jax.random.key(seed)
    idx = data.batch_indices(key, n, batch_size)
    assert idx.shape == (n // batch_size, batch_size) and idx.dtype == jnp.int32
    flat = np.asarray(idx).ravel()
    assert len(np.unique(flat)) == flat.size and flat.min() >= 0 and flat.max() < n
    if n % batch_size == 0:
        np.testing.assert_array_equal(np.sort(flat), np.arange(n))
    np.testing.assert_array_equal(data.batch_indices(key, n, batch_size), idx)


def test_batch_indices_depends_on_the_key_and_runs_in_scan():
    k0, k1 = jax.random.split(jax.random.key(0))
    assert not np.array_equal(data.batch_indices(k0, 100, 10), data.batch_indices(k1, 100, 10))

    @jax.jit
    def epochs(key):
        def body(carry, k):
            return carry, data.batch_indices(k, 20, 6)

        return jax.lax.scan(body, 0, jax.random.split(key, 3))[1]

    out = epochs(jax.random.key(1))
    assert out.shape == (3, 3, 6)
    np.testing.assert_array_equal(
        out[0], data.batch_indices(jax.random.split(jax.random.key(1), 3)[0], 20, 6)
    )


@pytest.mark.parametrize("batch_size", [0, 11])
def test_batch_indices_rejects_bad_batch_size(batch_size):
    with pytest.raises(ValueError, match="batch_size"):
        data.batch_indices(jax.random.key(0), 10, batch_size)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shuffle_keeps_pairs_and_types(seed):
    x = np.arange(40, dtype=np.float32).reshape(20, 2)
    y = np.arange(20, dtype=np.int32)
    key = jax.random.key(seed)
    xs, ys = data.shuffle(key, x, y)
    assert isinstance(xs, np.ndarray) and isinstance(ys, np.ndarray)
    np.testing.assert_array_equal(xs[:, 0], 2 * ys)  # rows still paired with their labels
    np.testing.assert_array_equal(np.sort(ys), y)
    assert not np.array_equal(ys, y)
    xj, yj = data.shuffle(key, jnp.asarray(x), jnp.asarray(y))
    assert isinstance(xj, jax.Array)
    np.testing.assert_array_equal(np.asarray(xj), xs)
    np.testing.assert_array_equal(np.asarray(yj), ys)
    with pytest.raises(ValueError, match="20 rows but y has 19"):
        data.shuffle(key, x, y[:19])
