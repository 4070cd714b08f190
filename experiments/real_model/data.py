"""Data for the real-model section: scikit-learn's digits (embedded) or MNIST (IDX).

Sources
-------
``digits``
    ``sklearn.datasets.load_digits``: 1797 images of 8x8 pixels with values 0..16,
    bundled with scikit-learn (no network). Features: pixels / 16, then standardised
    with ONE global scalar mean and std (like MNIST's 0.1307 / 0.3081), computed on the
    training split of all ten classes (so no validation/test pixel leaks into it).
``mnist``
    The official IDX files read from a directory (``--mnist-dir`` or ``$MNIST_DIR``),
    gzip-compressed (``t10k-images-idx3-ubyte.gz``) or raw (same name without ``.gz``).
    Every file is MD5-verified against the official checksum before use; a mismatch is
    one :class:`DataError` line. ``download=True`` fetches the missing official files
    where a network exists. Features: pixels / 255, then ``(x - 0.1307) / 0.3081``
    (the constants of the MNIST training set used by the paper's code).

Split
-----
Only the official 10k TEST set of MNIST is available here, so train / validation /
test all come out of it (the paper trains on the 60k training set; our numbers are
therefore on 6k training images and are not directly comparable). The same logic is
used for digits: for every class c separately, its n_c samples are put in a random
order that is a pure function of (``split_seed`` = 0, class) through
:mod:`solvers.rng` (stream DATA), and the first ``round(0.6 n_c)`` go to train, the
next ``round(0.2 n_c)`` to validation, the rest to test (stratified 60/20/20). The
split is fixed: it does not depend on the training seeds.

Tasks
-----
Pretraining uses digits 0-4 and fine-tuning digits 5-9 with labels minus 5, each with
its own train/validation/test part of the split above (:func:`load_bundle`).
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import struct
from pathlib import Path

import numpy as np
import torch

from solvers import rng

from resultstore.files import atomic_write

MNIST_FILES = {
    "images": "t10k-images-idx3-ubyte",
    "labels": "t10k-labels-idx1-ubyte",
}
# MD5 of the official files: the .gz as distributed and their decompressed contents.
MNIST_MD5 = {
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
MNIST_URLS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)
SPLIT_SEED = 0
PRETRAIN_CLASSES = (0, 1, 2, 3, 4)
FINETUNE_CLASSES = (5, 6, 7, 8, 9)

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DataError(ValueError):
    """Bad or missing data; the message is one line naming the field."""


# --------------------------------------------------------------------------- IDX / MNIST
def md5sum(path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_idx(path) -> np.ndarray:
    """Read an IDX file (gzip-compressed if the name ends in .gz) into an array.

    Format: 2 zero bytes, a dtype code (0x08 = ubyte, ...), the number of
    dimensions d, then d big-endian int32 sizes and the data in C order.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"mnist: {path.name} is not an IDX file (bad magic number)")
    ndim = raw[3]
    dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    count = int(np.prod(dims)) if ndim else 1
    body = raw[4 + 4 * ndim :]
    if len(body) != count * dtype.itemsize:
        raise DataError(f"mnist: {path.name} is truncated ({len(body)} bytes of data, expected {count * dtype.itemsize})")
    return np.frombuffer(body, dtype=dtype).reshape(dims)


def find_mnist_file(directory, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        p = Path(directory) / name
        if p.is_file():
            return p
    return None


def download_mnist(directory, *, timeout: float = 30.0) -> None:
    """Fetch the official t10k files into ``directory`` (one-line DataError on failure)."""
    import urllib.request

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for stem in MNIST_FILES.values():
        if find_mnist_file(directory, stem) is not None:
            continue
        name = stem + ".gz"
        last_error = None
        for base in MNIST_URLS:
            try:
                with urllib.request.urlopen(base + name, timeout=timeout) as r:
                    payload = r.read()
                atomic_write(directory / name, lambda tmp: Path(tmp).write_bytes(payload))
                last_error = None
                break
            except Exception as exc:  # network errors of every kind
                last_error = exc
        if last_error is not None:
            msg = str(last_error).splitlines()[0] if str(last_error) else type(last_error).__name__
            raise DataError(f"mnist: --download failed for {name} (no network?): {msg}")


def load_mnist(directory, *, download: bool = False, checksums: dict | None = MNIST_MD5):
    """Images (N, 784) uint8 and labels (N,) int64 from the IDX files in ``directory``.

    ``checksums`` maps file names to MD5 hex digests; ``None`` skips verification
    (tests use their own tiny files). A file with no entry is refused.
    """
    if directory is None:
        raise DataError("mnist-dir: no MNIST directory given (use --mnist-dir or set MNIST_DIR)")
    directory = Path(directory)
    if download:
        download_mnist(directory)
    if not directory.is_dir():
        raise DataError(f"mnist-dir: directory {str(directory)!r} does not exist")
    arrays = {}
    for key, stem in MNIST_FILES.items():
        path = find_mnist_file(directory, stem)
        if path is None:
            raise DataError(f"mnist-dir: {stem}[.gz] not found in {str(directory)!r}")
        if checksums is not None:
            want = checksums.get(path.name)
            got = md5sum(path)
            if want is None or got != want:
                raise DataError(f"mnist-dir: checksum mismatch for {path.name} (md5 {got}, expected {want})")
        arrays[key] = read_idx(path)
    images, labels = arrays["images"], arrays["labels"]
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DataError(f"mnist-dir: inconsistent shapes images {images.shape}, labels {labels.shape}")
    return images.reshape(images.shape[0], -1), labels.astype(np.int64)


# --------------------------------------------------------------------------- split
def stratified_split(labels: np.ndarray, *, fractions=SPLIT_FRACTIONS, seed: int = SPLIT_SEED):
    """Indices (train, val, test): per class, a fixed random order cut 60/20/20."""
    labels = np.asarray(labels)
    parts = ([], [], [])
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        keys = rng.random_bits(torch.tensor([seed]), rng.Stream.DATA, int(c), (idx.size,))[0]
        idx = idx[torch.argsort(keys, stable=True).numpy()]
        n_train = int(round(fractions[0] * idx.size))
        n_val = int(round(fractions[1] * idx.size))
        parts[0].append(idx[:n_train])
        parts[1].append(idx[n_train : n_train + n_val])
        parts[2].append(idx[n_train + n_val :])
    return tuple(np.sort(np.concatenate(p)) for p in parts)


# --------------------------------------------------------------------------- tasks
@dataclasses.dataclass
class Split:
    """Features (N, d) and labels (N,) int64, on one device."""

    x: torch.Tensor
    y: torch.Tensor

    def to(self, device=None, dtype=None) -> "Split":
        return Split(self.x.to(device=device, dtype=dtype), self.y.to(device=device))

    def __len__(self):
        return int(self.y.shape[0])


@dataclasses.dataclass
class Task:
    train: Split
    val: Split
    test: Split
    classes: tuple

    def to(self, device=None, dtype=None) -> "Task":
        return Task(self.train.to(device, dtype), self.val.to(device, dtype), self.test.to(device, dtype), self.classes)


@dataclasses.dataclass
class Bundle:
    """Everything the protocol needs: the two tasks on the same feature space."""

    name: str
    in_dim: int
    pretrain: Task
    finetune: Task
    normalisation: tuple  # (mean, std) applied after scaling pixels to [0, 1]

    def to(self, device=None, dtype=None) -> "Bundle":
        return Bundle(self.name, self.in_dim, self.pretrain.to(device, dtype), self.finetune.to(device, dtype), self.normalisation)


def _task(x, y, parts, classes) -> Task:
    out = []
    for idx in parts:
        keep = idx[np.isin(y[idx], classes)]
        out.append(Split(torch.as_tensor(x[keep]), torch.as_tensor(y[keep] - min(classes), dtype=torch.int64)))
    return Task(*out, classes=tuple(classes))


def raw_dataset(name: str, *, mnist_dir=None, download: bool = False):
    """Pixels scaled to [0, 1] (N, d) float64 and labels (N,) int64."""
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        return d.data.astype(np.float64) / 16.0, d.target.astype(np.int64)
    if name == "mnist":
        mnist_dir = mnist_dir if mnist_dir is not None else os.environ.get("MNIST_DIR")
        images, labels = load_mnist(mnist_dir, download=download)
        return images.astype(np.float64) / 255.0, labels
    raise DataError(f"data: unknown data set {name!r} (choose digits or mnist)")


def load_bundle(name: str = "digits", *, mnist_dir=None, download: bool = False, dtype=torch.float32, device="cpu",
                data=None) -> Bundle:
    """Split, normalise and cut into the pretraining (0-4) and fine-tuning (5-9) tasks.

    ``data`` = (pixels in [0, 1], labels) overrides the named source (tests).
    """
    x, y = data if data is not None else raw_dataset(name, mnist_dir=mnist_dir, download=download)
    if not np.all(np.isfinite(x)):
        raise DataError(f"data: {name} contains NaN or infinite values")
    parts = stratified_split(y)
    if name == "mnist":
        mean, std = MNIST_MEAN, MNIST_STD
    else:
        mean, std = float(x[parts[0]].mean()), float(x[parts[0]].std())
    x = (x - mean) / std
    bundle = Bundle(name, int(x.shape[1]), _task(x, y, parts, PRETRAIN_CLASSES), _task(x, y, parts, FINETUNE_CLASSES),
                    (mean, std))
    return bundle.to(device, dtype)
