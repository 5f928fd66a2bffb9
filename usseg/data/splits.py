# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Deduplicated, stratified, group-aware splits and label budgets, drawn once from a seed.

The functions here are pure: they take item dictionaries (the datalist items of
:mod:`usseg.data.datalist`, at least ``{"case_id": str, "class": ...}``) and return new lists.
Nothing is read or written except by :func:`pixel_hash`, which only hashes an array in memory.

The rules, in the order :func:`split_items` applies them:

1. Items are sorted by ``case_id`` first, so the input order never changes the result.
2. Items sharing a group id (``patient_id`` by default) form one group; an item without one is
   its own group. A group never straddles two splits.
3. ``test`` is drawn from all groups, ``validation`` from what remains, and ``labeled`` from what
   remains after that; the rest is ``unlabeled``. Each draw is stratified by class: the requested
   item count is shared between classes in proportion to their sizes with largest-remainder
   rounding, so the per-class counts add up to the requested total exactly.
4. All randomness comes from one ``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any

import numpy as np

from usseg.errors import DatalistError

__all__ = ["SPLIT_NAMES", "pixel_hash", "find_duplicates", "deduplicate", "check_split_request", "split_items"]

SPLIT_NAMES: tuple[str, ...] = ("labeled", "unlabeled", "validation", "test")
"""The four splits of a usseg datalist, in the order they are written."""


def pixel_hash(array: np.ndarray) -> str:
    """Hash decoded pixels, so two files with the same picture match whatever their encoding.

    The shape and dtype are part of the digest: a (2, 8) and an (8, 2) array of the same bytes
    are different images.

    Args:
        array: decoded pixels of any shape and dtype, e.g. ``(H, W)`` uint8 or ``(F, H, W, 3)``.

    Returns:
        The 40-character hexadecimal SHA-1 digest.
    """
    array = np.ascontiguousarray(array)
    digest = hashlib.sha1(usedforsecurity=False)
    digest.update(repr(tuple(array.shape)).encode())
    digest.update(array.dtype.str.encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def find_duplicates(items: Sequence[Any], hash_fn: Callable[[Any], str]) -> list[list[int]]:
    """Group the items whose hashes are equal.

    Args:
        items: anything ``hash_fn`` accepts (item dictionaries, arrays, paths...).
        hash_fn: returns the hash of one item, e.g. ``lambda item: pixel_hash(read(item["image"]))``.

    Returns:
        One list of item indices (ascending) for every hash shared by two or more items; the groups
        are ordered by their first index. Items without a duplicate appear in no group.
    """
    by_hash: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        by_hash.setdefault(hash_fn(item), []).append(index)
    return sorted((group for group in by_hash.values() if len(group) > 1), key=lambda group: group[0])


def deduplicate(
    items: Sequence[Mapping[str, Any]], hashes: Sequence[str], class_key: str = "class"
) -> tuple[list[Mapping[str, Any]], list[dict[str, Any]]]:
    """Drop exact duplicates before splitting, so one picture can never sit in train and test at once.

    - Duplicates that all carry the same class keep one copy: the first by sorted ``case_id``.
    - Duplicates whose classes disagree are all dropped, because no copy has a trustworthy class
      (BUSI: ``benign (433)`` and ``malignant (145)`` are the same image).

    Args:
        items: item dictionaries with a ``"case_id"`` and, when present, ``class_key``.
        hashes: one hash per item (same order), e.g. from :func:`pixel_hash`.
        class_key: the key compared between duplicates; a missing key counts as its own value.

    Returns:
        ``(kept, dropped_records)``. ``kept`` holds the surviving items in their input order.
        ``dropped_records`` holds one JSON-ready record per duplicate group, ordered by the group's
        first ``case_id``: ``{"case_ids": [...], "classes": [...], "kept": case_id or None,
        "dropped": [...], "reason": str, "hash": str}``.

    Raises:
        ValueError: ``items`` and ``hashes`` differ in length.
        DatalistError: an item has no ``case_id``.
    """
    if len(items) != len(hashes):
        raise ValueError(f"items and hashes must have the same length, got {len(items)} and {len(hashes)}.")
    for item in items:
        _case_id(item)
    groups = find_duplicates(range(len(items)), lambda index: hashes[index])
    drop: set[int] = set()
    records: list[dict[str, Any]] = []
    for group in groups:
        group = sorted(group, key=lambda index: _case_id(items[index]))
        case_ids = [_case_id(items[index]) for index in group]
        classes = [items[index].get(class_key) for index in group]
        if len({_freeze(value) for value in classes}) == 1:
            kept: str | None = case_ids[0]
            dropped = case_ids[1:]
            drop.update(group[1:])
            reason = f"identical pixels, same {class_key} {classes[0]!r}: kept the first case_id"
        else:
            kept = None
            dropped = case_ids
            drop.update(group)
            conflicting = sorted({str(value) for value in classes})
            reason = f"identical pixels, conflicting {class_key} values {conflicting}: all dropped"
        records.append(
            {
                "case_ids": case_ids,
                "classes": classes,
                "kept": kept,
                "dropped": dropped,
                "reason": reason,
                "hash": hashes[group[0]],
            }
        )
    records.sort(key=lambda record: record["case_ids"][0])
    kept_items = [item for index, item in enumerate(items) if index not in drop]
    return kept_items, records


@dataclass
class _Group:
    """Items that must land in the same split, and the class that represents them when stratifying."""

    key: tuple[str, str]
    items: list[Mapping[str, Any]] = field(default_factory=list)
    stratum: str = ""

    @property
    def size(self) -> int:
        return len(self.items)


def check_split_request(test_fraction: float, val_fraction: float, num_labeled: int | float | None) -> None:
    """Check the split arguments alone, so a caller can fail before any expensive reading or hashing.

    Args:
        test_fraction: as in :func:`split_items`.
        val_fraction: as in :func:`split_items`.
        num_labeled: as in :func:`split_items`; whether a count fits the pool is checked there.

    Raises:
        TypeError: a value has the wrong type.
        DatalistError: a value is out of range.
    """
    _check_fraction("test_fraction", test_fraction)
    _check_fraction("val_fraction", val_fraction)
    if num_labeled is not None:
        _labeled_target(num_labeled, pool_size=1 << 62, num_test=0, num_val=0)


def split_items(
    items: Sequence[Mapping[str, Any]],
    seed: int,
    test_fraction: float,
    val_fraction: float,
    num_labeled: int | float | None,
    stratify_key: str | None = "class",
    group_key: str | None = "patient_id",
) -> dict[str, list[Mapping[str, Any]]]:
    """Split items into labeled, unlabeled, validation and test sets, reproducibly.

    Args:
        items: item dictionaries with a unique ``"case_id"``; ``stratify_key`` and ``group_key`` are
            read when given. Deduplicate first (:func:`deduplicate`): this function does not look at pixels.
        seed: seed of the ``numpy.random.default_rng`` that orders the draws.
        test_fraction: share of all items put in ``test``, in [0, 1).
        val_fraction: share of the items left after the test draw put in ``validation``, in [0, 1).
        num_labeled: label budget drawn from the training pool (what is left after test and validation):
            an ``int`` count >= 1, a ``float`` fraction in (0, 1] of the pool, or ``None`` for all of it.
            The rest of the pool is ``unlabeled``.
        stratify_key: item key holding the class to stratify on; ``None`` draws without stratification.
        group_key: item key holding a group id (patient); ``None`` treats every item as its own group.

    Returns:
        ``{"labeled": [...], "unlabeled": [...], "validation": [...], "test": [...]}``, every list sorted
        by ``case_id``. The items are the input objects, not copies. Counts are exact when every group
        holds one item; with larger groups a draw takes whole groups and comes as close as it can.

    Raises:
        TypeError: a fraction or ``num_labeled`` has the wrong type.
        DatalistError: a fraction outside [0, 1); a duplicated or missing ``case_id``; a missing class;
            test and validation leaving no training item; more labeled items asked for than the pool
            holds (the message gives the pool size); a split with a positive fraction that comes out empty.
    """
    check_split_request(test_fraction, val_fraction, num_labeled)
    if not isinstance(seed, Integral) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {seed!r}.")
    if not items:
        raise DatalistError("items", "there are no items to split.")
    ordered = sorted(items, key=_case_id)
    seen = Counter(_case_id(item) for item in ordered)
    repeated = sorted(case_id for case_id, count in seen.items() if count > 1)
    if repeated:
        raise DatalistError("case_id", f"case ids must be unique; repeated: {repeated[:10]}.")

    groups = _make_groups(ordered, stratify_key, group_key)
    rng = np.random.default_rng(seed)
    total = len(ordered)

    test_target = _round_half_up(total * test_fraction)
    test, pool = _draw(groups, test_target, rng)
    _check_not_empty("test", test, test_fraction > 0, f"test_fraction={test_fraction} of {total} items")

    pool_size = _count(pool)
    val_target = _round_half_up(pool_size * val_fraction)
    validation, pool = _draw(pool, val_target, rng)
    _check_not_empty(
        "validation", validation, val_fraction > 0, f"val_fraction={val_fraction} of {pool_size} items left after test"
    )

    pool_size = _count(pool)
    if pool_size == 0:
        raise DatalistError(
            "test_fraction",
            f"test ({_count(test)} items) and validation ({_count(validation)} items) leave no training item "
            f"out of {total}; lower test_fraction={test_fraction} or val_fraction={val_fraction}.",
        )
    labeled_target = _labeled_target(num_labeled, pool_size, _count(test), _count(validation))
    labeled, unlabeled = _draw(pool, labeled_target, rng)
    _check_not_empty("labeled", labeled, True, f"num_labeled={num_labeled!r} of a {pool_size}-item training pool")

    drawn = {"labeled": labeled, "unlabeled": unlabeled, "validation": validation, "test": test}
    return {name: sorted((item for group in drawn[name] for item in group.items), key=_case_id) for name in SPLIT_NAMES}


def _case_id(item: Mapping[str, Any]) -> str:
    try:
        case_id = item["case_id"]
    except KeyError:
        raise DatalistError("case_id", f"every item needs a 'case_id'; got an item with keys {sorted(item)}.") from None
    return str(case_id)


def _freeze(value: Any) -> Hashable:
    """Make class values comparable as set members (lists from JSON are not hashable)."""
    return tuple(value) if isinstance(value, list) else value


def _check_fraction(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number in [0, 1), got {value!r}.")
    if not (math.isfinite(value) and 0.0 <= value < 1.0):
        raise DatalistError(name, f"must lie in [0, 1), got {value!r}.")


def _round_half_up(value: float) -> int:
    """Round .5 up: Python's round() goes to even, which would make 2.5 and 3.5 items round differently."""
    return math.floor(value + 0.5 + 1e-9)


def _labeled_target(num_labeled: int | float | None, pool_size: int, num_test: int, num_val: int) -> int:
    if num_labeled is None:
        return pool_size
    if isinstance(num_labeled, bool) or not isinstance(num_labeled, Real):
        raise TypeError(f"num_labeled must be an int count, a float fraction or None, got {num_labeled!r}.")
    if isinstance(num_labeled, Integral):
        target = int(num_labeled)
        if target < 1:
            raise DatalistError("num_labeled", f"must be at least 1 when given as a count, got {num_labeled!r}.")
    else:
        if not (math.isfinite(num_labeled) and 0.0 < num_labeled <= 1.0):
            raise DatalistError("num_labeled", f"a fraction must lie in (0, 1], got {num_labeled!r}.")
        target = _round_half_up(pool_size * num_labeled)
    if target > pool_size:
        raise DatalistError(
            "num_labeled",
            f"asked for {target} labeled items but only {pool_size} training items exist "
            f"(after {num_test} test and {num_val} validation items).",
        )
    return target


def _make_groups(items: Sequence[Mapping[str, Any]], stratify_key: str | None, group_key: str | None) -> list[_Group]:
    groups: dict[tuple[str, str], _Group] = {}
    for item in items:
        group_id = None if group_key is None else item.get(group_key)
        # "g"/"c" prefixes keep a patient id that happens to equal some case_id from merging the two.
        key = ("g", str(group_id)) if group_id not in (None, "") else ("c", _case_id(item))
        groups.setdefault(key, _Group(key)).items.append(item)
    for group in groups.values():
        if stratify_key is None:
            group.stratum = ""
            continue
        classes = []
        for item in group.items:
            if stratify_key not in item:
                raise DatalistError(_case_id(item), f"has no {stratify_key!r} to stratify on.")
            classes.append(str(item[stratify_key]))
        counts = Counter(classes)
        # A mixed group counts under its most frequent class; ties go to the smallest name, for determinism.
        group.stratum = min(counts, key=lambda name: (-counts[name], name))
    return sorted(groups.values(), key=lambda group: group.key)


def _count(groups: Sequence[_Group]) -> int:
    return sum(group.size for group in groups)


def _allocate(total: int, sizes: Mapping[str, int]) -> dict[str, int]:
    """Share ``total`` between strata in proportion to ``sizes`` (largest remainder, exact total)."""
    grand = sum(sizes.values())
    if grand == 0 or total == 0:
        return dict.fromkeys(sizes, 0)
    quotas = {name: total * size / grand for name, size in sizes.items()}
    counts = {name: math.floor(quota + 1e-9) for name, quota in quotas.items()}
    leftover = total - sum(counts.values())
    # Ties between equal remainders go to the larger stratum, then to the smaller name: deterministic.
    by_remainder = sorted(sizes, key=lambda name: (-(quotas[name] - counts[name]), -sizes[name], name))
    for name in by_remainder[:leftover]:
        counts[name] += 1
    return counts


def _draw(groups: Sequence[_Group], target: int, rng: np.random.Generator) -> tuple[list[_Group], list[_Group]]:
    """Take about ``target`` items' worth of whole groups, stratified; return ``(taken, rest)``."""
    by_stratum: dict[str, list[_Group]] = {}
    for group in groups:
        by_stratum.setdefault(group.stratum, []).append(group)
    strata = sorted(by_stratum)
    quotas = _allocate(target, {name: _count(by_stratum[name]) for name in strata})
    taken: list[_Group] = []
    for name in strata:
        candidates = by_stratum[name]
        order = rng.permutation(len(candidates))
        quota = quotas[name]
        chosen: list[_Group] = []
        count = 0
        for index in order:
            group = candidates[index]
            # Take a group only when it brings the count strictly closer to the quota; single-item groups
            # therefore fill the quota exactly, and large groups never overshoot by more than they undershoot.
            if abs(count + group.size - quota) < abs(count - quota):
                chosen.append(group)
                count += group.size
        if quota > 0 and not chosen:
            # Every group is larger than twice the quota: one whole group beats an empty share.
            chosen.append(min((candidates[index] for index in order), key=lambda group: group.size))
        taken.extend(chosen)
    taken_keys = {group.key for group in taken}
    rest = [group for group in groups if group.key not in taken_keys]
    return sorted(taken, key=lambda group: group.key), rest


def _check_not_empty(name: str, groups: Sequence[_Group], required: bool, request: str) -> None:
    if required and not groups:
        raise DatalistError(name, f"split {name!r} comes out empty ({request}); ask for more or provide more items.")
