"""Probes per LLM layer and matched pre/post-projection probes, each with its control task.

- Layer-wise: for every layer and pooling of ``layers_{split}.safetensors``, a standardised
  multinomial logistic regression (scikit-learn, ``max_iter`` bounded) and, optionally, the paper's
  MLP (``probes.mlp.train_probe``).
- Matched pre/post: the same pooling (mean over patches) and the same probe family on X_v (``pre``)
  and H_v (``post``) of the features stage, linear and MLP, so that the only difference between the
  two numbers is the projector.
- Every probe is trained a second time on the control labels of :mod:`.control`.

Scores follow ``evaluate.metrics``' default (``f1_classes: "true"``): macro-F1 over the classes
present in the test labels, zero_division=0, and accuracy.

Output (``probes.csv``), one row per probe: ``dataset, setting, seed, analysis (layerwise|matched),
family (linear|mlp), representation (llm|pre|post), pooling (image_mean|last_token|patch_mean),
layer (-1 for pre/post), task (real|control), macro_f1, accuracy, n_train, n_test``.
"""
from __future__ import annotations

import dataclasses
import logging
import warnings

import numpy as np
import pandas as pd

from projection_probe.analysis.control import control_labels
from projection_probe.hyperparams import ProbeHyperparams
from projection_probe.io import InputError

log = logging.getLogger(__name__)

PROBE_COLUMNS = ["dataset", "setting", "seed", "analysis", "family", "representation", "pooling", "layer", "task",
                 "macro_f1", "accuracy", "n_train", "n_test"]
# The MLP probe's hyperparameters that an --mlp spec may set; the seed is the analysis's own.
MLP_KEYS = tuple(f.name for f in dataclasses.fields(ProbeHyperparams) if f.name != "seed")


def score(y_true, y_pred) -> dict:
    from sklearn.metrics import f1_score

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    labels = sorted(set(y_true.tolist()))
    return {"macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
            "accuracy": float(np.mean(y_true == y_pred))}


def linear_probe(x_train, y_train, x_test, c: float = 1.0, max_iter: int = 500, seed: int = 0) -> np.ndarray:
    """Predictions of a standardised multinomial logistic regression (lbfgs)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter, random_state=seed))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(np.asarray(x_train, dtype=np.float64), np.asarray(y_train))
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        # Bounded on purpose (the probe's budget is part of its definition); said, not hidden.
        log.info("logistic regression stopped at max_iter=%d before converging", max_iter)
    return model.predict(np.asarray(x_test, dtype=np.float64))


def mlp_probe(x_train, y_train, x_test, y_test, n_classes: int, mlp: dict, seed: int, device: str = "cpu"):
    from projection_probe.probes.mlp import train_probe

    kwargs = {k: mlp[k] for k in MLP_KEYS if k in mlp}
    return train_probe(x_train, y_train, x_test, y_test, n_classes=n_classes, seed=seed, device=device,
                       **kwargs).predictions


def check_mlp_spec(mlp: dict | None) -> dict | None:
    if mlp is None:
        return None
    unknown = sorted(set(mlp) - set(MLP_KEYS) - {"feature"})
    if unknown or "hidden" not in mlp:
        raise InputError(f"--mlp: keys {unknown} unknown or 'hidden' missing; use {list(MLP_KEYS)}")
    return mlp


def _fit(family, x_tr, y_tr, x_te, y_te, n_classes, linear, mlp, seed, device):
    if family == "linear":
        return linear_probe(x_tr, y_tr, x_te, seed=seed, **linear)
    return mlp_probe(x_tr, y_tr, x_te, y_te, n_classes, mlp, seed, device)


def probe_both_tasks(x_tr, y_tr, ids_tr, x_te, y_te, ids_te, family, n_classes, seed, linear, mlp, device,
                     controls: bool) -> list[dict]:
    """Scores on the real task and (optionally) the control task, as two partial rows."""
    rows = []
    tasks = [("real", y_tr, y_te)]
    if controls:
        tasks.append(("control", control_labels(ids_tr, y_tr, seed, "train"),
                      control_labels(ids_te, y_te, seed, "test")))
    for task, ytr, yte in tasks:
        pred = _fit(family, x_tr, ytr, x_te, yte, n_classes, linear, mlp, seed, device)
        rows.append({"task": task, **score(yte, pred), "n_train": len(ytr), "n_test": len(yte)})
    return rows


def run_probes(dataset: str, setting: str, seed: int, n_classes: int, layers: dict | None = None,
               features: dict | None = None, linear: dict | None = None, mlp: dict | None = None,
               layer_mlp: bool = False, poolings=None, controls: bool = True, device: str = "cpu",
               matched_mlp: bool = True) -> pd.DataFrame:
    """All probes of one (dataset, setting, seed).

    ``layers``: ``{"train": (states, labels, ids), "test": ...}`` from ``layers.read_layer_file``;
    ``features``: ``{"train": (pre, post, labels, ids), "test": ...}`` from the features stage.
    Either may be None to skip that analysis. ``mlp`` holds the MLP probe's hyperparameters; it is
    used per layer with ``layer_mlp`` and on pre/post with ``matched_mlp``."""
    linear = dict(linear or {})
    mlp = check_mlp_spec(mlp)
    if layer_mlp and mlp is None:
        raise InputError("--layer-mlp needs --mlp (the MLP probe's hyperparameters)")
    base = {"dataset": dataset, "setting": setting, "seed": int(seed)}
    rows = []
    if layers is not None:
        (s_tr, y_tr, id_tr), (s_te, y_te, id_te) = layers["train"], layers["test"]
        families = ["linear"] + (["mlp"] if layer_mlp else [])
        for pooling in poolings or list(s_tr):
            if pooling not in s_tr:
                raise InputError(f"pooling {pooling!r} not in the layer files (have {sorted(s_tr)})")
            for layer in range(s_tr[pooling].shape[0]):
                for family in families:
                    for r in probe_both_tasks(s_tr[pooling][layer].numpy(), y_tr.numpy(), id_tr,
                                              s_te[pooling][layer].numpy(), y_te.numpy(), id_te, family,
                                              n_classes, seed, linear, mlp, device, controls):
                        rows.append({**base, "analysis": "layerwise", "family": family, "representation": "llm",
                                     "pooling": pooling, "layer": layer, **r})
            log.info("%s/%s/seed%s: %s probes done", dataset, setting, seed, pooling)
    if features is not None:
        (pre_tr, post_tr, y_tr, id_tr), (pre_te, post_te, y_te, id_te) = features["train"], features["test"]
        families = ["linear"] + (["mlp"] if mlp is not None and matched_mlp else [])
        for rep, x_tr, x_te in (("pre", pre_tr, pre_te), ("post", post_tr, post_te)):
            for family in families:
                for r in probe_both_tasks(x_tr.numpy(), y_tr.numpy(), id_tr, x_te.numpy(), y_te.numpy(), id_te,
                                          family, n_classes, seed, linear, mlp, device, controls):
                    rows.append({**base, "analysis": "matched", "family": family, "representation": rep,
                                 "pooling": "patch_mean", "layer": -1, **r})
    return pd.DataFrame(rows, columns=PROBE_COLUMNS)


def read_features_file(path, n_classes: int):
    """``(pre, post, labels, image_paths)`` of a features-stage file."""
    from projection_probe.probes.commands import load_features

    pre, labels, paths = load_features(path, "pre", n_classes)
    post, _, _ = load_features(path, "post", n_classes)
    return pre, post, labels, paths
