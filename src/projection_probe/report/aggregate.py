"""Collect every run's per-image predictions into one tidy table, ``all_runs.csv``.

Every number in the tables and the figure is recomputed here from a predictions CSV
(``image_path,label,raw,parsed,valid,mode``), never copied from a run's own summary, so that a reader
can check any cell against the per-image file it came from.

A run is described by a dict with exactly these keys (``aggregate --runs`` takes a JSON list of them,
as the workflow's `aggregate` rule passes it; ``--runs-json`` reads the same list from a file)::

    {"dataset": "dtd", "setting": "ft-proj", "seed": 0, "method": "mllm",
     "predictions": "results/predictions/llava15-7b/dtd/ft-proj/generate/seed0.csv",
     "classes": "results/data/dtd/classes.json"}

A study of more than one model adds ``"model": "<name>"`` to every run; ``all_runs.csv`` then starts
with a ``model`` column, and the tables and the figure show one block per model.

``method`` is one of :data:`METHODS`. Methods that do not depend on a fine-tuning setting (random,
encoder zero-shot, image-only probe) use ``setting: "-"``; ``mllm`` and ``probe_post`` name their
setting (``original``, ``ft-proj``, ``ft-e2e``, ``ft-lora``, or any other variant name).
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd

from projection_probe.io import InputError, read_json
from projection_probe.names import NO_SETTING, SETTINGS

METHODS = ("random", "encoder_zero_shot", "mllm", "probe_post", "probe_image_only")
METHODS_WITHOUT_SETTING = ("random", "encoder_zero_shot", "probe_image_only")
# The MLLM in a classification mode other than the study's primary one (e.g. "mllm-likelihood"),
# shown beside the primary mode in Table 1.
EXTRA_MODE_METHODS = ("mllm-generate", "mllm-constrained", "mllm-likelihood")
METRICS = ("macro_f1", "accuracy", "invalid_rate")
RUN_KEYS = ("dataset", "setting", "seed", "method", "predictions", "classes")
ALL_RUNS_COLUMNS = ["dataset", "setting", "seed", "method", "metric", "value"]
ID_COLUMNS = ["dataset", "setting", "seed", "method"]
# The optional leading key and column of a study of several models.
MODEL_COLUMN = "model"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def validate_entry(entry, where: str) -> dict:
    """Check one run description; return it with ``seed`` as int. ``where`` names it in errors."""
    if not isinstance(entry, dict):
        raise InputError(f"{where}: expected an object with keys {list(RUN_KEYS)}, got {type(entry).__name__}")
    missing = [k for k in RUN_KEYS if k not in entry]
    extra = [k for k in entry if k not in RUN_KEYS and k != MODEL_COLUMN]
    if missing or extra:
        raise InputError(f"{where}: keys must be exactly {list(RUN_KEYS)}, and optionally {MODEL_COLUMN!r} "
                         f"(missing {missing}, unexpected {extra})")
    out = dict(entry)
    _check_id_fields(out, where)
    for key in ("predictions", "classes"):
        if not isinstance(out[key], str) or not out[key]:
            raise InputError(f"{where}: {key!r} must be a file path")
    return out


def _check_id_fields(row: dict, where: str) -> None:
    method, setting = row["method"], row["setting"]
    if method not in METHODS and method not in EXTRA_MODE_METHODS:
        raise InputError(f"{where}: method {method!r} unknown; use one of {list(METHODS + EXTRA_MODE_METHODS)}")
    for key in ("dataset", MODEL_COLUMN) if MODEL_COLUMN in row else ("dataset",):
        if not isinstance(row[key], str) or not _NAME.match(row[key]):
            raise InputError(f"{where}: {key} {row[key]!r} must be a plain name (letters, digits, _.+-)")
    if method in METHODS_WITHOUT_SETTING:
        if setting != NO_SETTING:
            raise InputError(f"{where}: method {method!r} does not depend on a fine-tuning setting; "
                             f"use setting {NO_SETTING!r}, not {setting!r}")
    elif not isinstance(setting, str) or setting == NO_SETTING or not _NAME.match(setting):
        raise InputError(f"{where}: method {method!r} needs a setting such as {list(SETTINGS)}, got {setting!r}")
    seed = row["seed"]
    if isinstance(seed, bool) or not (isinstance(seed, int) or (isinstance(seed, str) and seed.isdigit())):
        raise InputError(f"{where}: seed {seed!r} must be a non-negative integer")
    row["seed"] = int(seed)


def read_runs_json(path: str | Path) -> list[dict]:
    """The ``--runs-json`` file: a JSON list of run descriptions (see the module docstring)."""
    entries = read_json(path)
    if not isinstance(entries, list):
        raise InputError(f"{path}: expected a JSON list of run objects, got {type(entries).__name__}")
    return [validate_entry(e, f"{path}[{i}]") for i, e in enumerate(entries)]


def read_classes(path: str | Path) -> list[str]:
    obj = read_json(path)
    classes = obj.get("classes") if isinstance(obj, dict) else None
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise InputError(f"{path}: key 'classes' must be a non-empty list of strings")
    return classes


def collect_runs(entries: list[dict], f1_classes: str = "true") -> pd.DataFrame:
    """Metrics of every run, recomputed from its predictions CSV, as the tidy ``all_runs`` frame
    (columns :data:`ALL_RUNS_COLUMNS`, one row per run and metric in :data:`METRICS`).
    ``f1_classes`` picks the classes macro-F1 averages over (see ``evaluate.metrics``)."""
    from projection_probe.evaluate.metrics import metrics_from_predictions_csv

    # Check every description (and duplicates) before reading any file, so a bad run list fails fast.
    with_model = any(MODEL_COLUMN in e for e in entries if isinstance(e, dict))
    id_columns = [MODEL_COLUMN, *ID_COLUMNS] if with_model else ID_COLUMNS
    seen: dict[tuple, int] = {}
    checked = []
    for i, raw in enumerate(entries):
        entry = validate_entry(raw, f"run {i}")
        if with_model and MODEL_COLUMN not in entry:
            raise InputError(f"run {i}: other runs name their {MODEL_COLUMN!r}, this one does not")
        key = tuple(entry[k] for k in id_columns)
        if key in seen:
            raise InputError(f"run {i} ({dict(zip(id_columns, key))}) duplicates run {seen[key]}; "
                             f"each {'/'.join(id_columns)} must appear once")
        seen[key] = i
        checked.append((i, key, entry))

    classes_cache: dict[str, list[str]] = {}
    rows = []
    for i, key, entry in checked:
        if not Path(entry["predictions"]).exists():
            raise InputError(f"{entry['predictions']}: predictions file not found "
                             f"(run {i}, {dict(zip(id_columns, key))})")
        if entry["classes"] not in classes_cache:
            classes_cache[entry["classes"]] = read_classes(entry["classes"])
        metrics = metrics_from_predictions_csv(entry["predictions"], classes_cache[entry["classes"]],
                                               f1_classes=f1_classes)
        for metric in METRICS:
            rows.append({**dict(zip(id_columns, key)), "metric": metric, "value": float(metrics[metric])})
    return pd.DataFrame(rows, columns=[MODEL_COLUMN, *ALL_RUNS_COLUMNS] if with_model else ALL_RUNS_COLUMNS)


def read_all_runs(path: str | Path) -> pd.DataFrame:
    """Read and check an ``all_runs.csv``."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found; run the `aggregate` step first")
    # keep_default_na=False: the setting "-" and dataset names must stay strings, never NaN.
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in ALL_RUNS_COLUMNS if c not in frame.columns]
    if missing:
        raise InputError(f"{path}: columns {missing} missing; expected {ALL_RUNS_COLUMNS}")
    id_columns = [MODEL_COLUMN, *ID_COLUMNS] if MODEL_COLUMN in frame.columns else ID_COLUMNS
    frame = frame[[c for c in (MODEL_COLUMN, *ALL_RUNS_COLUMNS) if c in frame.columns]].copy()
    for i, row in enumerate(frame.to_dict("records")):
        _check_id_fields(row, f"{path} row {i + 2}")
    frame["seed"] = frame["seed"].astype(int)
    values = pd.to_numeric(frame["value"], errors="coerce")
    bad = frame.loc[values.isna() & (frame["value"].str.lower() != "nan"), "value"]
    if len(bad):
        raise InputError(f"{path}: column 'value' has non-numeric entries such as {bad.iloc[0]!r}")
    frame["value"] = values.astype(float)
    dup = frame.duplicated(id_columns + ["metric"], keep=False)
    if dup.any():
        first = frame.loc[dup].iloc[0].to_dict()
        raise InputError(f"{path}: duplicate rows for {first}; each run/metric must appear once")
    return frame


def summarize(all_runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample standard deviation (ddof=1) over seeds per dataset/setting/method/metric.

    With a single seed the standard deviation is reported as 0 (there is no spread to estimate);
    ``n_seeds`` says how many seeds a cell rests on. Columns:
    ``dataset, setting, method, metric, mean, std, n_seeds``.
    """
    cols = ["dataset", "setting", "method", "metric", "mean", "std", "n_seeds"]
    if all_runs.empty:
        return pd.DataFrame(columns=cols)
    finite = all_runs[all_runs["value"].map(lambda v: not math.isnan(v))]
    grouped = finite.groupby(["dataset", "setting", "method", "metric"], sort=False)["value"]
    out = grouped.agg(mean="mean", std=lambda v: float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                      n_seeds="count").reset_index()
    return out[cols]


def model_parts(all_runs: pd.DataFrame) -> list[tuple[str | None, pd.DataFrame]]:
    """(model, its runs) per model in the runs' order; [(None, all_runs)] for a study of one model."""
    if MODEL_COLUMN not in all_runs.columns:
        return [(None, all_runs)]
    return [(m, all_runs[all_runs[MODEL_COLUMN] == m].drop(columns=MODEL_COLUMN))
            for m in dict.fromkeys(all_runs[MODEL_COLUMN])]


def dataset_order(all_runs: pd.DataFrame) -> list[str]:
    """Datasets in order of first appearance (the run list follows the config's order)."""
    return list(dict.fromkeys(all_runs["dataset"]))
