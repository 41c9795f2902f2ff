"""The uniform random baseline (Table 1, "Random"), plus the input readers both baselines share.

Each test image gets a class drawn uniformly from the pinned class list with
``numpy.random.default_rng(seed)``, so a seed always gives the same predictions and the reported
number is a mean over seeds, as in the paper.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from projection_probe.evaluate.metrics import PREDICTION_COLUMNS
from projection_probe.io import InputError, read_json

MANIFEST_COLUMNS = ("image_path", "label", "split")
SPLITS = ("train", "test")


def read_classes_file(path: str | Path) -> list[str]:
    """The ``classes`` list of a ``classes.json`` (``{"task", "classes"}``), checked: non-empty,
    strings, no duplicates."""
    obj = read_json(path)
    if not isinstance(obj, dict) or "classes" not in obj:
        raise InputError(f"{path}: expected an object with keys 'task' and 'classes'; re-run the data stage")
    classes = obj["classes"]
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c for c in classes):
        raise InputError(f"{path}: key 'classes' must be a non-empty list of non-empty strings, got {classes!r}")
    duplicates = sorted({c for c in classes if classes.count(c) > 1})
    if duplicates:
        raise InputError(f"{path}: key 'classes' lists {duplicates} more than once; fix the class list")
    return classes


def read_test_split(manifest: str | Path, classes: list[str]) -> pd.DataFrame:
    """The manifest's test rows (columns ``image_path,label``) in manifest order, checked against the
    class list."""
    manifest = Path(manifest)
    if not manifest.exists():
        raise InputError(f"{manifest}: manifest not found; run the data stage first")
    try:
        frame = pd.read_csv(manifest, dtype=str, keep_default_na=False, na_filter=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise InputError(f"{manifest}: not a readable CSV ({e}); re-run the data stage") from e
    missing = [c for c in MANIFEST_COLUMNS if c not in frame.columns]
    if missing:
        raise InputError(f"{manifest}: missing columns {missing}; expected {list(MANIFEST_COLUMNS)}")
    bad_splits = sorted(set(frame["split"]) - set(SPLITS))
    if bad_splits:
        raise InputError(f"{manifest}: column 'split' has values {bad_splits}; only {list(SPLITS)} are allowed")
    test = frame.loc[frame["split"] == "test", ["image_path", "label"]].reset_index(drop=True)
    if len(test) == 0:
        raise InputError(f"{manifest}: no rows with split 'test'; check the dataset preparation")
    unknown = sorted(set(test["label"]) - set(classes))
    if unknown:
        raise InputError(f"{manifest}: test labels {unknown} are not in classes.json; regenerate the "
                         f"manifest and classes.json together")
    return test


def predictions_frame(test: pd.DataFrame, predicted: list[str], mode: str) -> pd.DataFrame:
    """A predictions table for baselines, whose outputs are always one class (valid, raw == parsed)."""
    if len(predicted) != len(test):
        raise ValueError(f"{len(predicted)} predictions for {len(test)} images")
    frame = pd.DataFrame({
        "image_path": test["image_path"].to_list(),
        "label": test["label"].to_list(),
        "raw": list(predicted),
        "parsed": list(predicted),
        "valid": [True] * len(predicted),
        "mode": [mode] * len(predicted),
    })
    return frame[list(PREDICTION_COLUMNS)]


def random_predictions(test: pd.DataFrame, classes: list[str], seed: int) -> pd.DataFrame:
    """One uniform draw over ``classes`` per test row, from ``numpy.random.default_rng(seed)``."""
    if not classes:
        raise InputError("classes: empty class list; nothing to draw from")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(classes), size=len(test))
    return predictions_frame(test, [classes[i] for i in draws], mode="random")
