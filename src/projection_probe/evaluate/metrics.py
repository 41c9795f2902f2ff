"""Macro-F1, accuracy and invalid rate from per-image predictions.

Every number in the report's tables is computed here from a predictions CSV, so this module stays
pure: pandas, numpy and scikit-learn only, no torch.

Predictions CSV (``results/predictions/{model}/{dataset}/{setting}/seed{seed}.csv``): columns
``image_path,label,raw,parsed,valid,mode``; ``parsed`` is empty exactly when ``valid`` is False.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from projection_probe.io import InputError

PREDICTION_COLUMNS: tuple[str, ...] = ("image_path", "label", "raw", "parsed", "valid", "mode")

F1_CLASS_SETS = ("true", "observed", "all")

_TRUE_STRINGS = {"true", "1"}
_FALSE_STRINGS = {"false", "0"}


def is_invalid_prediction(value) -> bool:
    """None, NaN and the empty (or blank) string all mean "the output named no class"."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def classification_metrics(y_true: Sequence[str], y_pred: Sequence[str | None], classes: Sequence[str],
                           f1_classes: str = "true") -> dict:
    """Return ``{"macro_f1", "accuracy", "invalid_rate", "n"}``.

    - An invalid prediction (None, NaN or empty) is wrong for accuracy and is never a class for F1:
      labels are mapped to their index in ``classes`` and an invalid prediction to -1, which is not in
      the ``labels`` passed to sklearn, so it only costs the true class a false negative.
    - ``f1_classes`` picks the classes averaged in macro-F1 (``zero_division=0`` in every case):
      ``"true"`` (default): ``labels=`` the classes present in the ground truth, in pinned order; a
      prediction of any other class still costs its image's true class a false negative.
      ``"observed"``: classes that occur in ``y_true`` or among the valid predictions --
      sklearn's own default label set, which the authors used, minus "invalid"; a pinned class with
      no test image that is never predicted (PlantDoc's spider-mites class) is then not averaged in as
      a free 0. ``"all"``: every class in ``classes``.
    """
    from sklearn.metrics import f1_score

    if f1_classes not in F1_CLASS_SETS:
        raise InputError(f"f1_classes: unknown value {f1_classes!r}; use one of {list(F1_CLASS_SETS)}")
    if len(y_true) != len(y_pred):
        raise InputError(f"predictions: {len(y_true)} true labels but {len(y_pred)} predictions")
    if len(y_true) == 0:
        raise InputError("predictions: no rows to score; check that the test split is not empty")
    index = {c: i for i, c in enumerate(classes)}
    if len(index) != len(classes):
        raise InputError(f"classes: duplicate class strings in {list(classes)}; fix the class list")

    true_idx = np.empty(len(y_true), dtype=np.int64)
    pred_idx = np.empty(len(y_pred), dtype=np.int64)
    for i, (t, p) in enumerate(zip(y_true, y_pred)):
        if t not in index:
            raise InputError(f"label {t!r}: not one of the classes {list(classes)}; "
                             f"re-run the data stage or fix the class list")
        true_idx[i] = index[t]
        if is_invalid_prediction(p):
            pred_idx[i] = -1
        elif p in index:
            pred_idx[i] = index[p]
        else:
            raise InputError(f"prediction {p!r}: not one of the classes and not empty; a prediction "
                             f"must be a pinned class string or empty (invalid)")

    valid = pred_idx >= 0
    if f1_classes == "all":
        labels = list(range(len(classes)))
    elif f1_classes == "true":
        labels = sorted(set(true_idx.tolist()))
    else:
        labels = sorted(set(true_idx.tolist()) | set(pred_idx[valid].tolist()))
    macro_f1 = f1_score(true_idx, pred_idx, labels=labels, average="macro", zero_division=0)
    return {
        "macro_f1": float(macro_f1),
        "accuracy": float(np.mean(pred_idx == true_idx)),
        "invalid_rate": float(np.mean(~valid)),
        "n": int(len(true_idx)),
    }


def parse_valid_flag(value: str, path: Path, row: int) -> bool:
    text = str(value).strip().lower()
    if text in _TRUE_STRINGS:
        return True
    if text in _FALSE_STRINGS:
        return False
    raise InputError(f"{path}: row {row}: valid={value!r} is not True/False; regenerate the predictions")


def read_predictions_csv(path: str | Path):
    """Read a predictions CSV as strings (so labels such as "NA" or "None" stay labels) and check it:
    every column present, ``valid`` a boolean, ``parsed`` empty exactly when ``valid`` is False.
    Returns a DataFrame whose ``valid`` column is bool and whose invalid ``parsed`` cells are ""."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: predictions file not found; run the rule that writes it")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not a readable CSV ({e}); delete it and rerun") from e
    missing = [c for c in PREDICTION_COLUMNS if c not in frame.columns]
    if missing:
        raise InputError(f"{path}: missing columns {missing}; expected {list(PREDICTION_COLUMNS)}")
    frame["valid"] = [parse_valid_flag(v, path, i + 2) for i, v in enumerate(frame["valid"])]
    for i, (parsed, valid) in enumerate(zip(frame["parsed"], frame["valid"])):
        if valid == is_invalid_prediction(parsed):
            raise InputError(f"{path}: row {i + 2}: valid={valid} but parsed={parsed!r}; parsed must be "
                             f"empty exactly when valid is False; regenerate the predictions")
    return frame


def metrics_from_predictions_csv(path: str | Path, classes: Sequence[str], f1_classes: str = "true") -> dict:
    """:func:`classification_metrics` over one predictions CSV (see the module docstring)."""
    frame = read_predictions_csv(path)
    if len(frame) == 0:
        raise InputError(f"{path}: no prediction rows; check that the test split is not empty")
    try:
        return classification_metrics(list(frame["label"]), [p if v else None for p, v in
                                                             zip(frame["parsed"], frame["valid"])],
                                      classes, f1_classes=f1_classes)
    except InputError as e:
        raise InputError(f"{path}: {e}") from e
