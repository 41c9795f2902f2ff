"""scikit-learn's 8×8 digits, one of the CPU demo's two real datasets (the other, the shipped
Fashion-MNIST subset, is a parquet folder read by the ``hf`` source). It writes PNGs to
``out_dir/images/{split}/{class_index}_{n}.png`` and maps integer label ``i`` to ``classes[i]`` (the
pinned class strings, in config order)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from projection_probe.data.manifest import ManifestRow
from projection_probe.data.sources import register_source
from projection_probe.io import InputError, atomic_dir

# The digits split must not move when the study seed changes, so its RNG seed is fixed.
DIGITS_SPLIT_SEED = 0


def _positive_int(source_cfg: dict, key: str, kind: str) -> int:
    if key not in source_cfg:
        raise InputError(f"source.{key}: missing for kind {kind!r}; set a positive integer")
    value = source_cfg[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"source.{key}: {value!r} is not a positive integer (kind {kind!r})")
    return value


def _reject_unknown_keys(source_cfg: dict, allowed: set[str], kind: str) -> None:
    unknown = sorted(set(source_cfg) - allowed - {"kind"})
    if unknown:
        raise InputError(f"source: unknown key(s) {unknown} for kind {kind!r}; allowed: {sorted(allowed)}")


def _check_class_count(classes: list[str], n_labels: int, kind: str) -> None:
    if len(classes) != n_labels:
        raise InputError(f"classes: {len(classes)} pinned class names but source {kind!r} has {n_labels} "
                         f"integer labels; list exactly {n_labels} names, in label-index order")


def encode_png(image: np.ndarray) -> bytes:
    """A uint8 array (H×W grey or H×W×3 RGB) as PNG bytes: the digits source's image files, and the
    images of the shipped Fashion-MNIST parquet folder (scripts/build_fashion_subset.py)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_split_images(images_by_split: dict[str, tuple[np.ndarray, np.ndarray]], out_dir: Path,
                       classes: list[str]) -> list[ManifestRow]:
    """Write uint8 arrays (N×H×W grey or N×H×W×3 RGB) as PNGs; the images folder is replaced whole so
    that images from an earlier run with other counts never linger beside the new ones."""
    final_images = Path(out_dir) / "images"
    rows: list[ManifestRow] = []
    with atomic_dir(final_images) as staging:
        for split, (images, labels) in images_by_split.items():
            (staging / split).mkdir(parents=True)
            counters: dict[int, int] = {}
            for image, label in zip(images, labels):
                label = int(label)
                n = counters.get(label, 0)
                counters[label] = n + 1
                name = f"{label}_{n}.png"
                (staging / split / name).write_bytes(encode_png(image))
                rows.append(ManifestRow(str(final_images / split / name), classes[label], split))
    return rows


@register_source("sklearn_digits")
def sklearn_digits(source_cfg: dict, out_dir: Path, classes: list[str]) -> list[ManifestRow]:
    """Source keys: ``train_per_class``, ``test_per_class``. A stratified split with a fixed seed
    (``DIGITS_SPLIT_SEED``); the 0..16 pixel values are scaled to 0..255."""
    from sklearn.datasets import load_digits

    kind = "sklearn_digits"
    _reject_unknown_keys(source_cfg, {"train_per_class", "test_per_class"}, kind)
    n_train = _positive_int(source_cfg, "train_per_class", kind)
    n_test = _positive_int(source_cfg, "test_per_class", kind)
    digits = load_digits()
    labels = digits.target.astype(np.int64)
    _check_class_count(classes, len(digits.target_names), kind)
    images = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    rng = np.random.default_rng(DIGITS_SPLIT_SEED)
    train_idx, test_idx = [], []
    for label in np.unique(labels):
        pool = rng.permutation(np.flatnonzero(labels == label))
        if len(pool) < n_train + n_test:
            raise InputError(f"source: digit {label} has {len(pool)} images but train_per_class + "
                             f"test_per_class = {n_train + n_test}; lower them")
        train_idx.append(pool[:n_train])
        test_idx.append(pool[n_train:n_train + n_test])
    train_idx, test_idx = np.concatenate(train_idx), np.concatenate(test_idx)
    return write_split_images({"train": (images[train_idx], labels[train_idx]),
                               "test": (images[test_idx], labels[test_idx])}, out_dir, classes)
