"""Tiny copies of the four paper datasets' official download layouts, written into a test folder.

Each ``make_<dataset>(root)`` writes a few 8x8 images per class (JPEG or PNG, as the real data) with
the real folder names, list files and TSV columns, and returns ``(classes, source_cfg)`` ready for
``projection_probe.data.sources.run_source``. Shared by the preparer tests and end-to-end tests.

The functions after them add the gotchas of real downloads to a layout: zero-byte and truncated
files, symlinks, a tab inside a tweet, a folder unzipped one level too deep.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

from PIL import Image

from projection_probe.data.preparers.crisismmd import (
    PAPER_FIGURE3_CLASSES,
    PAPER_FIGURE3_DROP_LABELS,
    PAPER_FIGURE3_LABEL_MAP,
    TSV_COLUMNS,
)

PLANTDOC_TRAIN_ONLY_CLASS = "Tomato two spotted spider mites leaf"


def write_image(path: Path, seed: int) -> Path:
    """An 8x8 RGB image whose colour depends on ``seed``; format from the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = ((seed * 53) % 256, (seed * 97) % 256, (seed * 29) % 256)
    Image.new("RGB", (8, 8), colour).save(path)
    return path


def make_plantdoc(root: str | Path) -> tuple[list[str], dict]:
    """PlantDoc-Dataset repository root: ``train/<class>/`` and ``test/<class>/``; the train-only class
    has 2 train images and no test folder, as in the real repository. 7 train + 2 test images."""
    root = Path(root)
    classes = ["Apple Scab Leaf", "Corn leaf blight", PLANTDOC_TRAIN_ONLY_CLASS]
    counts = {"Apple Scab Leaf": (3, 1), "Corn leaf blight": (2, 1), PLANTDOC_TRAIN_ONLY_CLASS: (2, 0)}
    seed = 0
    for name, (n_train, n_test) in counts.items():
        for split, n in (("train", n_train), ("test", n_test)):
            for i in range(n):
                seed += 1
                write_image(root / split / name / f"{name.split()[0].lower()}_{i}.jpg", seed)
    return classes, {"kind": "plantdoc", "root": str(root)}


DTD_CLASSES = ["banded", "blotchy", "braided"]


def make_dtd(root: str | Path) -> tuple[list[str], dict]:
    """The extracted ``dtd/`` folder: ``images/<class>/<class>_NNNN.jpg`` (4 per class) and
    ``labels/{train,val,test}{1,2}.txt``. Split 1: images 1-2 train, 3 val, 4 test; split 2 swaps
    train and test roles (3-4 train, 1 val, 2 test)."""
    root = Path(root)
    for c_index, name in enumerate(DTD_CLASSES):
        for i in range(1, 5):
            write_image(root / "images" / name / f"{name}_{i:04d}.jpg", 10 * c_index + i)
    assignments = {1: {"train": (1, 2), "val": (3,), "test": (4,)},
                   2: {"train": (3, 4), "val": (1,), "test": (2,)}}
    (root / "labels").mkdir(parents=True, exist_ok=True)
    for k, by_split in assignments.items():
        for split, numbers in by_split.items():
            lines = [f"{name}/{name}_{i:04d}.jpg" for name in DTD_CLASSES for i in numbers]
            (root / "labels" / f"{split}{k}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return list(DTD_CLASSES), {"kind": "dtd", "root": str(root), "split_index": 1}


DERMNET_FOLDERS = {"Acne and Rosacea Photos": "acne and rosacea", "Eczema Photos": "eczema",
                   "Melanoma Skin Cancer Nevi and Moles": "melanoma skin cancer nevi and moles"}


def make_dermnet(root: str | Path) -> tuple[list[str], dict]:
    """The unzipped Kaggle archive: ``train/<folder>/`` (2 per class) and ``test/<folder>/`` (1 per
    class), folder names as on Kaggle. ``label_map`` drops the ``Photos`` suffix; the melanoma folder
    has no entry and reaches its class through the normalised identity mapping."""
    root = Path(root)
    seed = 0
    for folder in DERMNET_FOLDERS:
        for split, n in (("train", 2), ("test", 1)):
            for _ in range(n):
                seed += 1
                write_image(root / split / folder / f"img_{seed:03d}.jpg", seed)
    label_map = {k: v for k, v in DERMNET_FOLDERS.items() if k.endswith(" Photos")}
    return list(DERMNET_FOLDERS.values()), {"kind": "dermnet", "root": str(root), "label_map": label_map}


# (split, raw label_image) per TSV row; the text label deliberately disagrees on one row so that a
# preparer reading the wrong column would fail the tests.
CRISISMMD_ROWS = [
    ("train", "affected_individuals"), ("train", "injured_or_dead_people"),
    ("train", "infrastructure_and_utility_damage"), ("train", "rescue_volunteering_or_donation_effort"),
    ("train", "vehicle_damage"), ("train", "not_humanitarian"), ("train", "other_relevant_information"),
    ("dev", "vehicle_damage"), ("dev", "not_humanitarian"),
    ("test", "affected_individuals"), ("test", "infrastructure_and_utility_damage"),
    ("test", "rescue_volunteering_or_donation_effort"), ("test", "vehicle_damage"),
    ("test", "missing_or_found_people"), ("test", "not_humanitarian"),
]
CRISISMMD_TSV = "crisismmd_datasplit_all/task_humanitarian_text_img_{split}.tsv"


def make_crisismmd(root: str | Path) -> tuple[list[str], dict]:
    """The ``CrisisMMD_v2.0/`` folder with the splits unzipped: ``data_image/<event>/<date>/<id>.jpg``
    and ``crisismmd_datasplit_all/task_humanitarian_text_img_{train,dev,test}.tsv`` with the official
    columns; source config = the paper's Figure 3 mapping. Kept: 5 train, 1 dev, 5 test rows."""
    root = Path(root)
    by_split: dict[str, list[dict]] = {"train": [], "dev": [], "test": []}
    for index, (split, raw) in enumerate(CRISISMMD_ROWS):
        tweet_id = str(917791044158185000 + index)
        event = "hurricane_harvey" if index % 2 else "california_wildfires"
        image = f"data_image/{event}/10_10_2017/{tweet_id}_0.jpg"
        write_image(root / image, index + 1)
        text_label = "not_humanitarian" if index == 0 else raw
        by_split[split].append({
            "event_name": event, "tweet_id": tweet_id, "image_id": f"{tweet_id}_0",
            # Unbalanced quotes, as in real tweets: the reader must not treat them as CSV quoting.
            "tweet_text": f'RT @user: "Flooding in #Houston {index}',
            "image": image, "label": text_label, "label_text": text_label, "label_image": raw,
            "label_text_image": "Positive" if text_label == raw else "Negative"})
    for split, records in by_split.items():
        tsv = root / CRISISMMD_TSV.format(split=split)
        tsv.parent.mkdir(parents=True, exist_ok=True)
        with open(tsv, "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=TSV_COLUMNS, delimiter="\t", quoting=csv.QUOTE_NONE,
                                    quotechar=None, escapechar=None, lineterminator="\n")
            writer.writeheader()
            writer.writerows(records)
    cfg = {"kind": "crisismmd", "root": str(root), "label_map": dict(PAPER_FIGURE3_LABEL_MAP),
           "drop_labels": list(PAPER_FIGURE3_DROP_LABELS), "train_splits": ["train"]}
    return list(PAPER_FIGURE3_CLASSES), cfg


# Gotchas of real downloads, applied to a layout made above ----------------------------------------

def crisismmd_tsv(root: str | Path, split: str) -> Path:
    return Path(root) / CRISISMMD_TSV.format(split=split)


def crisismmd_image(root: str | Path, split: str, row: int) -> Path:
    """The image of the ``row``-th data row (0-based) of a CrisisMMD split TSV; its line is row + 2."""
    line = crisismmd_tsv(root, split).read_text(encoding="utf-8").splitlines()[row + 1]
    return Path(root) / line.split("\t")[TSV_COLUMNS.index("image")]


def make_zero_byte(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def truncate_image(path: Path) -> Path:
    """Keep the first 40 bytes: the header still names the format, the pixels are gone."""
    path.write_bytes(path.read_bytes()[:40])
    return path


def link_image(target: Path, link: Path) -> Path:
    """A relative symlink ``link`` -> ``target`` (as `cp -s` or a deduplicating mirror leaves)."""
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(target, link.parent))
    return link


def put_tab_in_tweet(root: str | Path, split: str, row: int) -> int:
    """Write a tab into the tweet text of a CrisisMMD TSV row, as some tweets hold; returns its line."""
    tsv = crisismmd_tsv(root, split)
    lines = tsv.read_text(encoding="utf-8").split("\n")
    fields = lines[row + 1].split("\t")
    fields[TSV_COLUMNS.index("tweet_text")] += "\tcontinued after a tab"
    lines[row + 1] = "\t".join(fields)
    tsv.write_text("\n".join(lines), encoding="utf-8")
    return row + 2


def nest_folder(folder: Path) -> Path:
    """Move ``folder`` into a folder of its own name (``x/`` -> ``x/x/``), as unzipping a zip of
    ``x/`` into a folder named ``x`` does; returns the new inner folder."""
    folder = Path(folder)
    moved = folder.with_name(folder.name + ".moving")
    folder.rename(moved)
    folder.mkdir()
    return moved.rename(folder / folder.name)
