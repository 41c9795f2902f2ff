#!/usr/bin/env python
"""Rebuild resources/fashion_mnist_subset/: a stratified, seeded subset of Fashion-MNIST.

Reads Debian's copy of the official idx files (``apt-get install -y dataset-fashion-mnist``) and keeps
``--train-per-class`` images per class from the official train file and ``--test-per-class`` from
the official t10k file, so the demo's train/test split never mixes the two.

    python scripts/build_fashion_subset.py            # defaults: 100 train + 30 test per class, seed 0

It writes a local 🤗 datasets folder ({train,test}.parquet: a PNG ``image`` and a ``label`` ClassLabel
with the official names), which the demo reads with ``source.kind: hf``. The PNGs are encoded as the
demo's own image files (``data.demo_sources.encode_png``).
"""
from __future__ import annotations

import argparse
import gzip
import sys
from pathlib import Path

import numpy as np

from projection_probe.io import InputError

DEFAULT_SOURCE_DIR = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "resources" / "fashion_mnist_subset"

# The official label names, in label-index order (Xiao, Rasul & Vollgraf 2017).
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049


def read_idx_images(path: Path) -> np.ndarray:
    raw = _read_gz(path)
    magic, count, rows, cols = (int.from_bytes(raw[i:i + 4], "big") for i in range(0, 16, 4))
    if magic != IMAGE_MAGIC or len(raw) != 16 + count * rows * cols:
        raise InputError(f"{path}: not an idx3 image file (magic {magic}, {len(raw)} bytes); reinstall "
                         f"dataset-fashion-mnist")
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(count, rows, cols)


def read_idx_labels(path: Path) -> np.ndarray:
    raw = _read_gz(path)
    magic, count = (int.from_bytes(raw[i:i + 4], "big") for i in range(0, 8, 4))
    if magic != LABEL_MAGIC or len(raw) != 8 + count:
        raise InputError(f"{path}: not an idx1 label file (magic {magic}, {len(raw)} bytes); reinstall "
                         f"dataset-fashion-mnist")
    return np.frombuffer(raw, dtype=np.uint8, offset=8).copy()


def _read_gz(path: Path) -> bytes:
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError as e:
        raise InputError(f"{path}: not found; install it with `apt-get install -y dataset-fashion-mnist` "
                         f"or pass --source-dir") from e


def stratified_indices(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """``per_class`` indices drawn without replacement from each class, sorted by (class, draw order)."""
    chosen = []
    for label in np.unique(labels):
        pool = np.flatnonzero(labels == label)
        if len(pool) < per_class:
            raise InputError(f"class {label}: only {len(pool)} images, {per_class} requested; lower the count")
        chosen.append(rng.choice(pool, size=per_class, replace=False))
    return np.concatenate(chosen)


def build_subset(source_dir: Path, train_per_class: int, test_per_class: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, stem, per_class in (("train", "train", train_per_class), ("test", "t10k", test_per_class)):
        images = read_idx_images(source_dir / f"{stem}-images-idx3-ubyte.gz")
        labels = read_idx_labels(source_dir / f"{stem}-labels-idx1-ubyte.gz")
        if len(images) != len(labels):
            raise InputError(f"{source_dir}/{stem}-*: {len(images)} images but {len(labels)} labels")
        keep = stratified_indices(labels, per_class, rng)
        arrays[f"{split}_images"] = images[keep]
        arrays[f"{split}_labels"] = labels[keep]
    arrays["class_names"] = np.array(CLASS_NAMES)
    return arrays


def write_parquet_dataset(arrays: dict[str, np.ndarray], out_dir: Path) -> None:
    """``{train,test}.parquet`` in ``out_dir``, replaced whole: the splits of ``arrays`` in stored order."""
    from datasets import ClassLabel, Dataset, Features, Image

    from projection_probe.data.demo_sources import encode_png
    from projection_probe.io import atomic_dir

    features = Features({"image": Image(), "label": ClassLabel(names=[str(n) for n in arrays["class_names"]])})
    with atomic_dir(out_dir) as staging:
        for split in ("train", "test"):
            images = [{"bytes": encode_png(image), "path": None} for image in arrays[f"{split}_images"]]
            labels = [int(label) for label in arrays[f"{split}_labels"]]
            Dataset.from_dict({"image": images, "label": labels}, features=features).to_parquet(
                staging / f"{split}.parquet")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source-dir", type=Path, default=DEFAULT_SOURCE_DIR)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the dataset folder, replaced whole")
    parser.add_argument("--train-per-class", type=int, default=100)
    parser.add_argument("--test-per-class", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        arrays = build_subset(args.source_dir, args.train_per_class, args.test_per_class, args.seed)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_parquet_dataset(arrays, args.out)
    size = sum(p.stat().st_size for p in args.out.iterdir())
    print(f"wrote {args.out} ({size} bytes): {len(arrays['train_labels'])} train, {len(arrays['test_labels'])} test")
    return 0


if __name__ == "__main__":
    sys.exit(main())
