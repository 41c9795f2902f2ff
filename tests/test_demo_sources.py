"""The demo's two datasets: the shipped Fashion-MNIST parquet folder (read by the `hf` source with
the demo's own source block) and the `sklearn_digits` source: stratified counts, label mapping, PNG
layout, fixed digits split."""
from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from datasets import Features
from PIL import Image

from projection_probe.cli import main
from projection_probe.data.demo_sources import encode_png
from projection_probe.data.manifest import read_manifest
from projection_probe.data.sources import get_source
from projection_probe.io import InputError
from projection_probe.testing.micro import FASHION_DATASET

REPO = Path(__file__).resolve().parents[1]
# The official label names, in label-index order (Xiao, Rasul & Vollgraf 2017).
FASHION_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
DIGIT_CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _counts(rows):
    return Counter((r.split, r.label) for r in rows)


def _fashion_split(split: str) -> tuple[list[bytes], list[int], list[str]]:
    """The shipped split's PNG bytes and integer labels in stored order, and its ClassLabel names."""
    table = pq.read_table(FASHION_DATASET / f"{split}.parquet")
    names = Features.from_arrow_schema(table.schema)["label"].names
    return [image["bytes"] for image in table.column("image").to_pylist()], table.column("label").to_pylist(), names


def _demo_fashion():
    """The demo config's fashion dataset: its classes and its source block, path made absolute."""
    fashion = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["datasets"]["fashion"]
    return fashion["classes"], {**fashion["source"], "path": str(FASHION_DATASET)}


@pytest.mark.parametrize("split, per_class", [("train", 100), ("test", 30)])
def test_shipped_fashion_subset_is_stratified_grey_28px_pngs(split, per_class):
    images, labels, names = _fashion_split(split)
    assert names == FASHION_NAMES
    assert np.bincount(labels).tolist() == [per_class] * 10
    for data in images:
        pixels = np.asarray(Image.open(io.BytesIO(data)))
        assert pixels.shape == (28, 28) and pixels.dtype == np.uint8
        # Encoded as the demo writes its own PNGs, so a rebuild from the idx files gives the same hashes.
        assert encode_png(pixels) == data
    assert sum(p.stat().st_size for p in FASHION_DATASET.iterdir()) < 1_000_000


def test_demo_fashion_source_counts_labels_and_files(tmp_path):
    classes, source_cfg = _demo_fashion()
    rows = get_source("hf")({**source_cfg, "train_per_class": 3, "test_per_class": 2}, tmp_path, classes)
    assert _counts(rows) == {**{("train", c): 3 for c in classes}, **{("test", c): 2 for c in classes}}
    images, labels, _ = _fashion_split("train")
    first_trouser = images[labels.index(FASHION_NAMES.index("Trouser"))]
    trouser_row = next(r for r in rows if r.label == "trouser" and r.split == "train")
    assert trouser_row.image_path == str(tmp_path / "images/train/1_0.png")
    assert Path(trouser_row.image_path).read_bytes() == first_trouser


def test_demo_fashion_source_rejects_too_many_per_class(tmp_path):
    classes, source_cfg = _demo_fashion()
    with pytest.raises(InputError, match="source.test_per_class: 31 requested"):
        get_source("hf")({**source_cfg, "train_per_class": 1, "test_per_class": 31}, tmp_path, classes)


def test_digits_source_rejects_bad_keys(tmp_path):
    source = get_source("sklearn_digits")
    with pytest.raises(InputError, match=r"unknown key\(s\) \['train_per_clas'\]"):
        source({"train_per_clas": 1, "test_per_class": 1}, tmp_path, DIGIT_CLASSES)
    with pytest.raises(InputError, match="source.train_per_class"):
        source({"train_per_class": 0, "test_per_class": 1}, tmp_path, DIGIT_CLASSES)


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
