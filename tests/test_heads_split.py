"""Tests of headstart.heads.split: deterministic, stable, stratified-in-expectation splits."""

import hashlib

import numpy as np
import pytest

from headstart.heads.split import (
    TEST,
    TRAIN,
    VAL,
    SplitError,
    SplitSpec,
    assign,
    check_trainable,
    split_counts,
    split_indices,
    unit_hash,
)


def _paths(n_per_class=1000, classes=("Cat", "Dog")):
    return [f"{c}/{c.lower()}.{i}.jpg" for c in classes for i in range(n_per_class)]


def test_same_paths_and_seed_give_the_same_split_in_any_order():
    paths = _paths(300)
    codes = dict(zip(paths, assign(paths, SplitSpec(seed=3))))
    shuffled = list(np.random.default_rng(0).permutation(paths))
    again = dict(zip(shuffled, assign(shuffled, SplitSpec(seed=3))))
    assert codes == again


def test_split_is_pinned_to_sha256_of_seed_and_path():
    # The recipe is part of the run format: a run made on one machine must find its test split on another.
    digest = hashlib.sha256(b"0\0Cat/1.jpg").digest()
    assert unit_hash(["Cat/1.jpg"], 0)[0] == int.from_bytes(digest[:8], "big") / 2.0**64
    assert unit_hash(["Cat/1.jpg"], 0)[0] == pytest.approx(0.5986825586536356, abs=0)
    paths = ["Cat/1.jpg", "Dog/2.jpg", "Cat/10.jpg", "Dog/7.jpg", "Cat/3.jpg", "Dog/4.jpg"]
    assert assign(paths, SplitSpec()).tolist() == [TRAIN, VAL, VAL, TRAIN, TRAIN, TRAIN]


def test_pictures_keep_their_split_when_pictures_are_added():
    old = _paths(500)
    new = old + [f"Cat/new.{i}.jpg" for i in range(700)] + [f"Bird/b.{i}.jpg" for i in range(300)]
    spec = SplitSpec((0.6, 0.2, 0.2), seed=11)
    before = assign(old, spec)
    after = assign(new, spec)
    np.testing.assert_array_equal(after[: len(old)], before)


def test_another_seed_gives_another_split():
    paths = _paths(500)
    a, b = assign(paths, SplitSpec(seed=0)), assign(paths, SplitSpec(seed=1))
    assert 0.3 < np.mean(a != b) < 0.7


def test_windows_and_posix_paths_split_alike():
    assert unit_hash(["Cat\\a.jpg", "./Cat/a.jpg"], 0).tolist() == unit_hash(["Cat/a.jpg"] * 2, 0).tolist()


@pytest.mark.parametrize("fractions", [(0.7, 0.15, 0.15), (0.5, 0.25, 0.25), (0.8, 0.1, 0.1)])
def test_each_class_is_split_at_the_fractions_in_expectation(fractions):
    classes = ("Cat", "Dog", "Fox")
    paths = _paths(2000, classes)
    labels = np.repeat(np.arange(3), 2000)
    idx = split_indices(paths, SplitSpec(fractions, seed=5))
    counts = split_counts(labels, idx, classes)
    for k, name in enumerate(("train", "val", "test")):
        for c in classes:
            share = counts[name][c] / 2000
            # binomial sd is at most sqrt(0.25 / 2000) = 0.011: 4 sd
            assert abs(share - fractions[k]) < 0.045, (name, c, share)
    all_idx = np.sort(np.concatenate(list(idx.values())))
    np.testing.assert_array_equal(all_idx, np.arange(len(paths)))


def test_zero_fractions_leave_splits_empty():
    paths = _paths(200)
    assert set(assign(paths, SplitSpec((1, 0, 0)))) == {TRAIN}
    assert VAL not in set(assign(paths, SplitSpec((0.8, 0, 0.2))))
    assert TEST not in set(assign(paths, SplitSpec((0.8, 0.2, 0))))


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0.7,0.15,0.15", (0.7, 0.15, 0.15)), ("70,15,15", (0.7, 0.15, 0.15)), (" 0.8, 0.1 ,0.1", (0.8, 0.1, 0.1))],
)
def test_parse_split_option(text, expected):
    spec = SplitSpec.parse(text, seed=4)
    assert spec.fractions == pytest.approx(expected)
    assert spec.seed == 4
    assert SplitSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0.7,0.3", "three comma-separated fractions"),
        ("a,b,c", "three comma-separated fractions"),
        ("0.7,0.2,0.2", "sum to 1"),
        ("0.9,-0.1,0.2", "non-negative"),
        ("0,0.5,0.5", "training fraction above 0"),
    ],
)
def test_bad_split_option_says_what_was_expected(text, message):
    with pytest.raises(SplitError, match=message) as err:
        SplitSpec.parse(text)
    assert "Received" in str(err.value)


def test_check_trainable_names_a_class_without_training_pictures():
    counts = {"train": {"cat": 5, "dog": 0}, "val": {"cat": 1, "dog": 1}, "test": {"cat": 1, "dog": 0}}
    with pytest.raises(SplitError, match="none of dog in the training split"):
        check_trainable(counts, {"cat": 7, "dog": 1})
    check_trainable(counts, {"cat": 7, "dog": 0})  # an empty class is not an error
