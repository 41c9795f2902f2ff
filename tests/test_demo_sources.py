"""The two demo sources: stratified counts, label mapping, PNG layout, fixed digits split."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from projection_probe.cli import main
from projection_probe.data.manifest import read_manifest
from projection_probe.data.sources import get_source
from projection_probe.io import InputError

REPO = Path(__file__).resolve().parents[1]
FASHION_NPZ = REPO / "resources" / "fashion_mnist_subset.npz"
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
DIGIT_CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _counts(rows):
    return Counter((r.split, r.label) for r in rows)


def test_shipped_fashion_subset_is_stratified():
    with np.load(FASHION_NPZ) as npz:
        assert list(npz["class_names"]) == FASHION_CLASSES
        assert npz["train_images"].shape == (1000, 28, 28) and npz["train_images"].dtype == np.uint8
        assert np.bincount(npz["train_labels"]).tolist() == [100] * 10
        assert np.bincount(npz["test_labels"]).tolist() == [30] * 10
    assert FASHION_NPZ.stat().st_size < 1_000_000


def test_fashion_source_counts_labels_and_files(tmp_path):
    source = get_source("fashion_mnist_subset")
    rows = source({"kind": "fashion_mnist_subset", "path": str(FASHION_NPZ), "train_per_class": 3,
                   "test_per_class": 2}, tmp_path, FASHION_CLASSES)
    assert _counts(rows) == {**{("train", c): 3 for c in FASHION_CLASSES},
                             **{("test", c): 2 for c in FASHION_CLASSES}}
    with np.load(FASHION_NPZ) as npz:
        first_trouser = npz["train_images"][np.flatnonzero(npz["train_labels"] == 1)[0]]
    trouser_row = next(r for r in rows if r.label == "Trouser" and r.split == "train")
    assert trouser_row.image_path == str(tmp_path / "images/train/1_0.png")
    assert np.array_equal(np.asarray(Image.open(trouser_row.image_path)), first_trouser)


def test_fashion_source_rejects_too_many_per_class(tmp_path):
    source = get_source("fashion_mnist_subset")
    with pytest.raises(InputError, match="only 30 images but 31"):
        source({"path": str(FASHION_NPZ), "train_per_class": 1, "test_per_class": 31}, tmp_path, FASHION_CLASSES)


def test_fashion_source_rejects_missing_npz_and_bad_keys(tmp_path):
    source = get_source("fashion_mnist_subset")
    with pytest.raises(InputError, match="build_fashion_subset"):
        source({"path": str(tmp_path / "none.npz"), "train_per_class": 1, "test_per_class": 1},
               tmp_path, FASHION_CLASSES)
    with pytest.raises(InputError, match=r"unknown key\(s\) \['train_per_clas'\]"):
        source({"path": str(FASHION_NPZ), "train_per_clas": 1, "test_per_class": 1}, tmp_path, FASHION_CLASSES)
    with pytest.raises(InputError, match="source.train_per_class"):
        source({"path": str(FASHION_NPZ), "train_per_class": 0, "test_per_class": 1}, tmp_path, FASHION_CLASSES)


def test_class_count_must_match_labels(tmp_path):
    with pytest.raises(InputError, match="9 pinned class names.*10 integer labels"):
        get_source("sklearn_digits")({"train_per_class": 1, "test_per_class": 1}, tmp_path, DIGIT_CLASSES[:9])


def test_digits_source_counts_scaling_and_fixed_split(tmp_path):
    source = get_source("sklearn_digits")
    cfg = {"kind": "sklearn_digits", "train_per_class": 4, "test_per_class": 2}
    rows = source(cfg, tmp_path / "a", DIGIT_CLASSES)
    assert _counts(rows) == {**{("train", c): 4 for c in DIGIT_CLASSES}, **{("test", c): 2 for c in DIGIT_CLASSES}}
    pixels = [np.asarray(Image.open(r.image_path)) for r in rows]
    assert all(p.shape == (8, 8) for p in pixels)
    assert max(int(p.max()) for p in pixels) == 255
    again = source(cfg, tmp_path / "b", DIGIT_CLASSES)
    for r1, r2 in zip(rows, again):
        assert np.array_equal(np.asarray(Image.open(r1.image_path)), np.asarray(Image.open(r2.image_path)))
    train = {np.asarray(Image.open(r.image_path)).tobytes() for r in rows if r.split == "train"}
    test = {np.asarray(Image.open(r.image_path)).tobytes() for r in rows if r.split == "test"}
    assert not train & test


def test_rerun_with_fewer_images_leaves_no_stale_files(tmp_path):
    source = get_source("sklearn_digits")
    source({"train_per_class": 3, "test_per_class": 1}, tmp_path, DIGIT_CLASSES)
    source({"train_per_class": 1, "test_per_class": 1}, tmp_path, DIGIT_CLASSES)
    assert len(list((tmp_path / "images/train").iterdir())) == 10


def test_prepare_dataset_cli_with_demo_source(tmp_path):
    code = main(["prepare-dataset", "--dataset", "digits",
                 "--source-json", json.dumps({"kind": "sklearn_digits", "train_per_class": 2, "test_per_class": 1}),
                 "--classes-json", json.dumps(DIGIT_CLASSES), "--task", "handwritten digits",
                 "--on-bad-image", "fail", "--out-dir", str(tmp_path / "digits")])
    assert code == 0
    rows = read_manifest(tmp_path / "digits/manifest.csv")
    assert Counter(r.split for r in rows) == {"train": 20, "test": 10}
    assert all(Path(r.image_path).is_file() for r in rows)
    assert (tmp_path / "digits/bad_images.txt").read_text() == ""
