"""Datasets: shapes, normalisation, seeded stratified splits, offline-only behaviour and errors."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from securedream.data import DATASET_NAMES, DatasetError, load_dataset
from securedream.data.datasets import stratified_split


def test_mnist5k_default_split_is_balanced_and_normalised() -> None:
    b = load_dataset("mnist5k", seed=0)
    assert b.train_x.shape == (4000, 1, 28, 28) and b.test_x.shape == (1000, 1, 28, 28)
    assert b.train_x.dtype == torch.float32 and b.train_y.dtype == torch.int64
    assert (b.num_classes, b.channels, b.image_size) == (10, 1, 28)
    assert torch.bincount(b.test_y).tolist() == [100] * 10
    assert torch.bincount(b.train_y).tolist() == [400] * 10
    assert b.mean == (0.1307,) and b.std == (0.3081,)
    pixels = b.denormalise(b.train_x)
    assert float(pixels.min()) == pytest.approx(0.0, abs=1e-5)
    assert float(pixels.max()) == pytest.approx(1.0, abs=1e-5)
    # Normalised with MNIST statistics, so the pool is roughly zero-mean, unit-variance.
    assert abs(float(b.train_x.mean())) < 0.1 and 0.9 < float(b.train_x.std()) < 1.1


def test_mnist5k_is_deterministic_per_seed() -> None:
    a, b, c = (load_dataset("mnist5k", seed=s) for s in (3, 3, 4))
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert not torch.equal(a.test_x, c.test_x)


def test_large_derived_seeds_are_accepted() -> None:
    a = load_dataset("digits", seed=2**63 - 1)
    b = load_dataset("digits", seed=2**63 - 2)
    assert torch.equal(a.test_y, load_dataset("digits", seed=2**63 - 1).test_y)
    assert not torch.equal(a.test_x, b.test_x)


def test_mutating_a_bundle_does_not_change_the_next_load() -> None:
    a = load_dataset("mnist5k", seed=1)
    reference = a.train_x[0].clone()
    a.train_x.zero_()
    assert torch.equal(load_dataset("mnist5k", seed=1).train_x[0], reference)


def test_mnist5k_int_test_size() -> None:
    b = load_dataset("mnist5k", seed=0, test_size=200)
    assert len(b.test_y) == 200 and len(b.train_y) == 4800
    assert torch.bincount(b.test_y).tolist() == [20] * 10


def test_digits_shapes_and_training_set_normalisation() -> None:
    b = load_dataset("digits", seed=0)
    assert b.train_x.shape[1:] == (1, 8, 8) and b.image_size == 8 and b.num_classes == 10
    assert len(b.train_y) + len(b.test_y) == 1797
    assert len(b.test_y) == round(0.2 * 1797)
    assert abs(float(b.train_x.mean())) < 1e-4 and float(b.train_x.std()) == pytest.approx(1, 1e-3)
    assert set(b.test_y.tolist()) == set(range(10))


def test_stratified_split_is_a_partition_keeping_class_shares() -> None:
    labels = np.repeat(np.arange(4), [10, 20, 30, 40])
    train, test = stratified_split(labels, test_size=0.5, seed=7)
    assert np.intersect1d(train, test).size == 0
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(100))
    assert np.bincount(labels[test]).tolist() == [5, 10, 15, 20]


@pytest.mark.parametrize("bad", [0, -5, 0.0, 1.0, 1.5, float("nan"), True, "0.2", 4999])
def test_invalid_test_size_names_the_field(bad: object) -> None:
    with pytest.raises(DatasetError, match="test_size"):
        load_dataset("mnist5k", seed=0, test_size=bad)  # type: ignore[arg-type]


def test_unknown_dataset_lists_allowed_names() -> None:
    with pytest.raises(DatasetError, match="mnist5k") as info:
        load_dataset("imagenet", seed=0)
    assert all(name in str(info.value) for name in DATASET_NAMES)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("seed", [-1, 1.5, None, True])
def test_invalid_seed(seed: object) -> None:
    with pytest.raises(DatasetError, match="seed"):
        load_dataset("digits", seed=seed)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["mnist", "fashionmnist", "cifar10", "svhn"])
def test_torchvision_dataset_without_root_is_an_error(name: str) -> None:
    with pytest.raises(DatasetError, match="root"):
        load_dataset(name, seed=0)


def test_missing_folder_is_an_error_and_nothing_is_created(tmp_path: Path) -> None:
    root = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match="download=True") as info:
        load_dataset("cifar10", seed=0, root=str(root))
    assert str(root) in str(info.value)
    assert not root.exists()


@pytest.mark.parametrize("name", ["mnist", "cifar10", "svhn"])
def test_empty_folder_is_an_error_without_download(tmp_path: Path, name: str) -> None:
    with pytest.raises(DatasetError, match="download=True"):
        load_dataset(name, seed=0, root=str(tmp_path))
    assert list(tmp_path.iterdir()) == []  # nothing fetched


def _write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    """Files in MNIST's IDX format, as torchvision reads them from <root>/<Class>/raw."""
    folder.mkdir(parents=True, exist_ok=True)
    n, h, w = images.shape
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(
        struct.pack(">IIII", 2051, n, h, w) + images.astype(np.uint8).tobytes()
    )
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(
        struct.pack(">II", 2049, n) + labels.astype(np.uint8).tobytes()
    )


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"), ("fashionmnist", "FashionMNIST")])
def test_local_mnist_format_folder_loads_official_splits(
    tmp_path: Path, name: str, folder: str
) -> None:
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, size=(30, 28, 28))
    test = rng.integers(0, 256, size=(12, 28, 28))
    raw = tmp_path / folder / "raw"
    _write_idx(raw, "train", train, np.arange(30) % 10)
    _write_idx(raw, "t10k", test, np.arange(12) % 10)
    b = load_dataset(name, seed=0, root=str(tmp_path))
    assert b.train_x.shape == (30, 1, 28, 28) and b.test_x.shape == (12, 1, 28, 28)
    assert b.train_y.tolist() == (np.arange(30) % 10).tolist()
    assert (b.channels, b.image_size, b.num_classes) == (1, 28, 10)
    # Official order kept, and normalisation inverts exactly back to the stored pixels.
    expected = torch.tensor(test[:, None] / 255.0, dtype=torch.float32)
    assert torch.allclose(b.denormalise(b.test_x), expected, atol=1e-5)
