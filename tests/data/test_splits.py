# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Tests for :mod:`usseg.data.splits`: hashing, deduplication and seeded, stratified, grouped splits."""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usseg.data.splits import SPLIT_NAMES, deduplicate, find_duplicates, pixel_hash, split_items
from usseg.errors import DatalistError


def make_items(class_sizes: dict[str, int], patients_per_item: int = 1) -> list[dict]:
    """Items named ``<class>_<k>``; with ``patients_per_item > 1`` consecutive items share a patient."""
    items = []
    for name, size in class_sizes.items():
        for k in range(size):
            item = {"case_id": f"{name}_{k:03d}", "class": name}
            if patients_per_item > 1:
                item["patient_id"] = f"{name}_patient_{k // patients_per_item}"
            items.append(item)
    return items


def case_ids(items: list[dict]) -> list[str]:
    return [item["case_id"] for item in items]


# ---------------------------------------------------------------- hashing and deduplication


def test_pixel_hash_matches_an_independent_sha1():
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    expected = hashlib.sha1(repr((3, 4)).encode() + np.dtype(np.uint8).str.encode() + bytes(range(12))).hexdigest()
    assert pixel_hash(array) == expected


@pytest.mark.parametrize(
    "other",
    [
        pytest.param(np.arange(12, dtype=np.uint8).reshape(4, 3), id="same_bytes_other_shape"),
        pytest.param(np.arange(12, dtype=np.int8).reshape(3, 4), id="same_bytes_other_dtype"),
        pytest.param(np.arange(1, 13, dtype=np.uint8).reshape(3, 4), id="other_pixels"),
    ],
)
def test_pixel_hash_distinguishes(other):
    assert pixel_hash(np.arange(12, dtype=np.uint8).reshape(3, 4)) != pixel_hash(other)


def test_pixel_hash_ignores_memory_layout():
    array = np.arange(24, dtype=np.uint8).reshape(4, 6)
    assert pixel_hash(np.asfortranarray(array)) == pixel_hash(array.copy())
    assert pixel_hash(array[:, ::2]) == pixel_hash(np.ascontiguousarray(array[:, ::2]))


def test_find_duplicates_groups_equal_hashes():
    values = ["x", "y", "x", "z", "y", "x"]
    assert find_duplicates(values, lambda value: value) == [[0, 2, 5], [1, 4]]
    assert find_duplicates(["a", "b"], lambda value: value) == []


def test_deduplicate_keeps_first_sorted_copy_of_same_class_and_drops_conflicts():
    items = [
        {"case_id": "benign (9)", "class": "benign"},
        {"case_id": "benign (10)", "class": "benign"},  # same pixels as benign (9): "benign (10)" sorts first
        {"case_id": "benign (433)", "class": "benign"},
        {"case_id": "malignant (145)", "class": "malignant"},  # same pixels as benign (433), other class
        {"case_id": "normal (1)", "class": "normal"},
    ]
    hashes = ["h1", "h1", "h2", "h2", "h3"]
    kept, records = deduplicate(items, hashes)
    assert case_ids(kept) == ["benign (10)", "normal (1)"]
    assert records == [
        {
            "case_ids": ["benign (10)", "benign (9)"],
            "classes": ["benign", "benign"],
            "kept": "benign (10)",
            "dropped": ["benign (9)"],
            "reason": records[0]["reason"],
            "hash": "h1",
        },
        {
            "case_ids": ["benign (433)", "malignant (145)"],
            "classes": ["benign", "malignant"],
            "kept": None,
            "dropped": ["benign (433)", "malignant (145)"],
            "reason": records[1]["reason"],
            "hash": "h2",
        },
    ]
    assert "same class" in records[0]["reason"]
    assert "conflicting" in records[1]["reason"]


def test_deduplicate_rejects_misaligned_hashes():
    with pytest.raises(ValueError, match="same length"):
        deduplicate([{"case_id": "a"}], ["h1", "h2"])


# ---------------------------------------------------------------- splits


SIZES = {"benign": 61, "malignant": 29, "normal": 13}


def test_splits_are_disjoint_and_cover_every_item():
    items = make_items(SIZES)
    splits = split_items(items, seed=3, test_fraction=0.2, val_fraction=0.1, num_labeled=20)
    all_ids = [case_id for name in SPLIT_NAMES for case_id in case_ids(splits[name])]
    assert len(all_ids) == len(set(all_ids)) == len(items)
    assert set(all_ids) == set(case_ids(items))
    for name in SPLIT_NAMES:
        assert case_ids(splits[name]) == sorted(case_ids(splits[name]))


@pytest.mark.parametrize("seed", [0, 1, 7], ids=lambda seed: f"seed{seed}")
def test_stratification_within_one_item_of_the_target(seed):
    items = make_items(SIZES)
    total = sum(SIZES.values())
    splits = split_items(items, seed=seed, test_fraction=0.2, val_fraction=0.1, num_labeled=0.25)
    # Totals: half-up rounding of the fraction at each stage, computed here by hand.
    n_test = math.floor(total * 0.2 + 0.5)  # 21
    n_val = math.floor((total - n_test) * 0.1 + 0.5)  # 8
    n_pool = total - n_test - n_val
    n_labeled = math.floor(n_pool * 0.25 + 0.5)
    assert [len(splits[name]) for name in ("test", "validation", "labeled")] == [n_test, n_val, n_labeled]
    assert len(splits["unlabeled"]) == n_pool - n_labeled
    test_counts = Counter(item["class"] for item in splits["test"])
    val_counts = Counter(item["class"] for item in splits["validation"])
    labeled_counts = Counter(item["class"] for item in splits["labeled"])
    for name, size in SIZES.items():
        assert abs(test_counts[name] - n_test * size / total) <= 1
        remaining = size - test_counts[name]
        assert abs(val_counts[name] - n_val * remaining / (total - n_test)) <= 1
        pool_share = remaining - val_counts[name]
        assert abs(labeled_counts[name] - n_labeled * pool_share / n_pool) <= 1


def test_same_seed_any_input_order_gives_the_same_split():
    items = make_items(SIZES, patients_per_item=2)
    reference = split_items(items, seed=11, test_fraction=0.2, val_fraction=0.1, num_labeled=15)
    shuffled = list(items)
    random.Random(5).shuffle(shuffled)
    again = split_items(shuffled, seed=11, test_fraction=0.2, val_fraction=0.1, num_labeled=15)
    assert {name: case_ids(reference[name]) for name in SPLIT_NAMES} == {
        name: case_ids(again[name]) for name in SPLIT_NAMES
    }


def test_different_seeds_give_different_splits():
    items = make_items(SIZES)
    first = split_items(items, seed=0, test_fraction=0.2, val_fraction=0.1, num_labeled=None)
    second = split_items(items, seed=1, test_fraction=0.2, val_fraction=0.1, num_labeled=None)
    assert case_ids(first["test"]) != case_ids(second["test"])


@pytest.mark.parametrize("patients_per_item", [2, 3, 5], ids=lambda k: f"{k}_items_per_patient")
def test_groups_never_straddle_two_splits(patients_per_item):
    items = make_items(SIZES, patients_per_item=patients_per_item)
    splits = split_items(items, seed=2, test_fraction=0.2, val_fraction=0.15, num_labeled=0.3)
    split_of_patient: dict[str, set[str]] = {}
    for name in SPLIT_NAMES:
        for item in splits[name]:
            split_of_patient.setdefault(item["patient_id"], set()).add(name)
    assert all(len(names) == 1 for names in split_of_patient.values())
    assert sum(len(splits[name]) for name in SPLIT_NAMES) == len(items)


def test_items_without_a_group_id_are_their_own_group():
    items = make_items({"a": 10, "b": 10})
    for item in items[:6]:
        item["patient_id"] = "shared"  # six "a" items of one patient
    for item in items[6:8]:
        item["patient_id"] = ""  # blank ids mean "no group", not one big group
    splits = split_items(items, seed=0, test_fraction=0.3, val_fraction=0.0, num_labeled=None)
    holders = [name for name in SPLIT_NAMES if any(item.get("patient_id") == "shared" for item in splits[name])]
    assert len(holders) == 1
    assert sum(item.get("patient_id") == "shared" for item in splits[holders[0]]) == 6


@pytest.mark.parametrize(
    ("num_labeled", "expected"),
    [
        pytest.param(None, 72, id="none_means_all"),
        pytest.param(10, 10, id="int_count"),
        pytest.param(72, 72, id="int_whole_pool"),
        pytest.param(0.5, 36, id="fraction"),
        pytest.param(1.0, 72, id="fraction_one"),
        pytest.param(0.01, 1, id="tiny_fraction_rounds_up_to_one"),
    ],
)
def test_label_budget(num_labeled, expected):
    items = make_items({"a": 50, "b": 50})  # 20 test, 8 validation, 72 in the pool
    splits = split_items(items, seed=4, test_fraction=0.2, val_fraction=0.1, num_labeled=num_labeled)
    assert len(splits["labeled"]) == expected
    assert len(splits["unlabeled"]) == 72 - expected


def test_too_many_labels_names_the_pool_size():
    items = make_items({"a": 50, "b": 50})
    with pytest.raises(DatalistError, match=r"asked for 73 labeled items but only 72 training items exist"):
        split_items(items, seed=0, test_fraction=0.2, val_fraction=0.1, num_labeled=73)


def test_no_validation_or_test_when_fractions_are_zero():
    items = make_items({"a": 5})
    splits = split_items(items, seed=0, test_fraction=0.0, val_fraction=0.0, num_labeled=2)
    assert (len(splits["test"]), len(splits["validation"]), len(splits["labeled"]), len(splits["unlabeled"])) == (
        0,
        0,
        2,
        3,
    )


def test_without_stratification_or_groups():
    items = make_items({"a": 10, "b": 10})
    for item in items:
        item["patient_id"] = "p"
    splits = split_items(items, seed=0, test_fraction=0.25, val_fraction=0.0, num_labeled=None, stratify_key=None,
                         group_key=None)  # fmt: skip
    assert len(splits["test"]) == 5


@pytest.mark.parametrize(
    ("kwargs", "exception", "pattern"),
    [
        pytest.param({"test_fraction": 1.0}, DatalistError, r"test_fraction: must lie in \[0, 1\)", id="test_one"),
        pytest.param({"val_fraction": -0.1}, DatalistError, r"val_fraction: must lie in \[0, 1\)", id="val_negative"),
        pytest.param({"test_fraction": "0.2"}, TypeError, "test_fraction must be a number", id="fraction_str"),
        pytest.param({"num_labeled": 0}, DatalistError, "at least 1", id="labeled_zero"),
        pytest.param({"num_labeled": 1.5}, DatalistError, r"\(0, 1\]", id="labeled_fraction_above_one"),
        pytest.param({"num_labeled": True}, TypeError, "num_labeled", id="labeled_bool"),
        pytest.param({"test_fraction": 0.01}, DatalistError, "split 'test' comes out empty", id="empty_test"),
        pytest.param({"val_fraction": 0.01}, DatalistError, "split 'validation' comes out empty", id="empty_val"),
        pytest.param({"num_labeled": 0.01}, DatalistError, "split 'labeled' comes out empty", id="empty_labeled"),
        pytest.param(
            {"test_fraction": 0.9, "val_fraction": 0.99}, DatalistError, "leave no training item", id="no_training"
        ),
    ],
)
def test_bad_requests_raise(kwargs, exception, pattern):
    items = make_items({"a": 6, "b": 4})
    arguments = {"seed": 0, "test_fraction": 0.2, "val_fraction": 0.2, "num_labeled": None} | kwargs
    with pytest.raises(exception, match=pattern):
        split_items(items, **arguments)


def test_repeated_case_ids_raise():
    with pytest.raises(DatalistError, match="repeated"):
        split_items([{"case_id": "x", "class": 0}] * 2, seed=0, test_fraction=0.0, val_fraction=0.0, num_labeled=None)


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=3, max_value=30), min_size=1, max_size=4),
    group_size=st.integers(min_value=1, max_value=4),
    seed=st.integers(min_value=0, max_value=2**31),
)
def test_property_partition_and_grouping(sizes, group_size, seed):
    items = make_items({f"class{k}": size for k, size in enumerate(sizes)}, patients_per_item=group_size)
    try:
        splits = split_items(items, seed=seed, test_fraction=0.2, val_fraction=0.1, num_labeled=0.5)
    except DatalistError as err:
        assert "comes out empty" in str(err)  # tiny inputs may not yield a validation item; that must be loud
        return
    assigned = {}
    for name in SPLIT_NAMES:
        for item in splits[name]:
            assert item["case_id"] not in assigned
            assigned[item["case_id"]] = name
    assert len(assigned) == len(items)
    patient_splits: dict[str, set[str]] = {}
    for item in items:
        patient_splits.setdefault(item.get("patient_id", item["case_id"]), set()).add(assigned[item["case_id"]])
    assert all(len(names) == 1 for names in patient_splits.values())
