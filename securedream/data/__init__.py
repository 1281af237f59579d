"""Offline datasets as normalised tensors, and seeded client splits."""

from securedream.data.datasets import DATASET_NAMES, DatasetBundle, DatasetError, load_dataset
from securedream.data.splits import (
    SPLIT_SCHEMES,
    SplitError,
    label_histogram,
    split_clients,
    split_for_config,
)

__all__ = [
    "DATASET_NAMES",
    "SPLIT_SCHEMES",
    "DatasetBundle",
    "DatasetError",
    "SplitError",
    "label_histogram",
    "load_dataset",
    "split_clients",
    "split_for_config",
]
