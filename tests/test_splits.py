"""Client splits: disjoint, exact sizes, seeded, label skew as configured, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from securedream.data import SPLIT_SCHEMES, SplitError, label_histogram, split_clients


@st.composite
def split_cases(draw: st.DrawFn) -> dict:
    num_classes = draw(st.integers(2, 8))
    counts = draw(st.lists(st.integers(1, 40), min_size=num_classes, max_size=num_classes))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    labels = rng.permutation(np.repeat(np.arange(num_classes), counts))
    num_clients = draw(st.integers(1, 8))
    return {
        "labels": labels,
        "num_clients": num_clients,
        "scheme": draw(st.sampled_from(SPLIT_SCHEMES)),
        "samples_per_client": draw(st.one_of(st.none(), st.integers(1, len(labels)))),
        "alpha": draw(st.floats(0.01, 100.0)),
        "labels_per_client": draw(st.integers(1, num_classes)),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


def _check_valid(case: dict, parts: list[np.ndarray]) -> None:
    labels, k = case["labels"], case["num_clients"]
    size = case["samples_per_client"] or len(labels) // k
    assert len(parts) == k
    assert all(p.dtype == np.int64 and len(p) == size for p in parts)
    everything = np.concatenate(parts)
    assert len(np.unique(everything)) == len(everything)  # no sample given twice
    assert everything.min() >= 0 and everything.max() < len(labels)


@given(split_cases())
def test_split_is_disjoint_exact_and_deterministic(case: dict) -> None:
    labels, k, spc = case["labels"], case["num_clients"], case["samples_per_client"]
    fits = (spc or len(labels) // k) * k <= len(labels) and (spc or len(labels) // k) >= 1
    try:
        parts = split_clients(**case)
    except SplitError as exc:
        # Only disjoint can fail on a request that fits the pool (labels too scarce per client).
        assert not fits or (case["scheme"] == "disjoint" and "client" in str(exc))
        return
    assert fits
    _check_valid(case, parts)
    again = split_clients(**case)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    if case["scheme"] == "disjoint":
        for i, p in enumerate(parts):
            held = set(labels[p].tolist())
            assert len(held) <= case["labels_per_client"], f"client {i} holds {held}"


@given(split_cases())
def test_iid_and_dirichlet_never_fail_when_the_pool_suffices(case: dict) -> None:
    case = {**case, "scheme": "iid" if case["seed"] % 2 else "dirichlet"}
    size = case["samples_per_client"] or len(case["labels"]) // case["num_clients"]
    if size < 1 or size * case["num_clients"] > len(case["labels"]):
        with pytest.raises(SplitError, match="samples_per_client"):
            split_clients(**case)
    else:
        _check_valid(case, split_clients(**case))


LABELS = np.repeat(np.arange(10), 100)


def test_none_divides_the_whole_pool_equally() -> None:
    parts = split_clients(LABELS, 3, scheme="iid", samples_per_client=None, seed=0)
    assert [len(p) for p in parts] == [333, 333, 333]


def test_different_seeds_give_different_splits() -> None:
    a = split_clients(LABELS, 4, scheme="dirichlet", samples_per_client=100, seed=0)
    b = split_clients(LABELS, 4, scheme="dirichlet", samples_per_client=100, seed=1)
    assert not all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def _mean_top_share(alpha: float) -> float:
    parts = split_clients(
        LABELS, 8, scheme="dirichlet", samples_per_client=100, alpha=alpha, seed=0
    )
    return float(np.mean([label_histogram(LABELS, p, 10).max() / 100 for p in parts]))


def test_small_alpha_is_more_skewed_than_large_alpha() -> None:
    assert _mean_top_share(0.05) > 0.6
    assert _mean_top_share(1000.0) < 0.3


def test_disjoint_deals_labels_round_robin_covering_all() -> None:
    parts = split_clients(
        LABELS, 5, scheme="disjoint", samples_per_client=100, labels_per_client=2, seed=0
    )
    hists = np.stack([label_histogram(LABELS, p, 10) for p in parts])
    assert (hists > 0).sum(axis=1).tolist() == [2] * 5
    assert (hists.sum(axis=0) > 0).all()  # every label used
    assert hists[0].tolist() == [50, 50] + [0] * 8


def test_disjoint_shared_labels_are_divided_without_overlap() -> None:
    # 10 clients x 2 labels over 10 labels: each label is shared by two clients (50 samples each).
    parts = split_clients(
        LABELS, 10, scheme="disjoint", samples_per_client=100, labels_per_client=2, seed=0
    )
    assert len(np.unique(np.concatenate(parts))) == 1000
    # 7 clients: client 5 gets labels [0, 1] again, so client 0 has only 2 x 50 = 100 of them.
    with pytest.raises(SplitError, match=r"client 0 holds labels \[0, 1\]") as info:
        split_clients(
            LABELS, 7, scheme="disjoint", samples_per_client=101, labels_per_client=2, seed=0
        )
    assert "100 samples" in str(info.value) and "101" in str(info.value)


def test_too_many_samples_names_the_numbers() -> None:
    with pytest.raises(
        SplitError, match=r"4 clients x 300 samples = 1200 exceeds the pool of 1000"
    ):
        split_clients(LABELS, 4, scheme="iid", samples_per_client=300, seed=0)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": -1.0}, "alpha"),
        ({"alpha": float("nan")}, "alpha"),
        ({"alpha": float("inf")}, "alpha"),
        ({"scheme": "shards"}, "scheme"),
        ({"num_clients": 0}, "num_clients"),
        ({"samples_per_client": 0}, "samples_per_client"),
        ({"seed": -1}, "seed"),
        ({"scheme": "disjoint", "labels_per_client": 11}, "labels_per_client"),
        ({"scheme": "disjoint", "labels_per_client": 0}, "labels_per_client"),
        ({"labels": np.zeros((2, 2), dtype=int)}, "labels"),
        ({"labels": np.array([0.5, 1.0])}, "labels"),
        ({"labels": np.array([-1, 2])}, "labels"),
    ],
)
def test_invalid_arguments_name_the_field(kwargs: dict, field: str) -> None:
    args = {
        "labels": LABELS,
        "num_clients": 2,
        "scheme": "dirichlet",
        "samples_per_client": 10,
        "seed": 0,
        **kwargs,
    }
    with pytest.raises(SplitError, match=field) as info:
        split_clients(**args)
    assert isinstance(info.value, ValueError)


def test_label_histogram_counts_and_checks_num_classes() -> None:
    labels = np.array([0, 1, 1, 3, 3, 3])
    assert label_histogram(labels, np.array([1, 3, 4, 5]), 5).tolist() == [0, 1, 0, 3, 0]
    with pytest.raises(SplitError, match="num_classes"):
        label_histogram(labels, np.arange(6), 3)


def test_accepts_torch_labels() -> None:
    torch = pytest.importorskip("torch")
    parts = split_clients(torch.tensor(LABELS), 2, scheme="iid", samples_per_client=5, seed=0)
    assert [len(p) for p in parts] == [5, 5]
