"""Representation similarity on the same images: linear CKA and mutual k-NN overlap.

- Linear CKA (Kornblith et al. 2019): ``<K, L>_F / (||K||_F ||L||_F)`` with ``K = Xc Xc^T`` and
  ``L = Yc Yc^T`` the Gram matrices of the column-centred representations. It is 1 for a
  representation and itself, and invariant to orthogonal transforms and isotropic scaling of either
  side; the two sides may have different widths (X_v vs H_v).
- Mutual k-NN overlap (Huh et al. 2024): for each image, the fraction of its k nearest neighbours
  (cosine similarity, itself excluded) that are shared between the two representations, averaged
  over images. 1 means identical neighbourhoods; about k/(N-1) is chance.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from projection_probe.io import InputError
from projection_probe.names import SETTINGS

if TYPE_CHECKING:
    import pandas as pd


def _as_matrix(name: str, x) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise InputError(f"{name}: expected an N×D matrix, got shape {a.shape}")
    return a


def linear_cka(x, y) -> float:
    x, y = _as_matrix("x", x), _as_matrix("y", y)
    if x.shape[0] != y.shape[0]:
        raise InputError(f"CKA needs the same images on both sides: {x.shape[0]} vs {y.shape[0]} rows")
    x = x - x.mean(0, keepdims=True)
    y = y - y.mean(0, keepdims=True)
    gram_x, gram_y = x @ x.T, y @ y.T  # N×N: cheaper than D×D when the width exceeds the image count
    denom = np.linalg.norm(gram_x) * np.linalg.norm(gram_y)
    if denom == 0:
        return float("nan")  # a constant representation has no similarity structure to compare
    return float(np.sum(gram_x * gram_y) / denom)


def knn_indices(x: np.ndarray, k: int) -> np.ndarray:
    """N×k indices of each row's k nearest other rows by cosine similarity (stable order on ties)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    unit = x / np.where(norms > 0, norms, 1.0)
    sim = unit @ unit.T
    np.fill_diagonal(sim, -np.inf)
    return np.argsort(-sim, axis=1, kind="stable")[:, :k]


def mutual_knn(x, y, k: int = 10) -> float:
    x, y = _as_matrix("x", x), _as_matrix("y", y)
    n = x.shape[0]
    if n != y.shape[0]:
        raise InputError(f"mutual k-NN needs the same images on both sides: {n} vs {y.shape[0]} rows")
    if n < 2:
        raise InputError("mutual k-NN needs at least 2 images")
    if k < 1:
        raise InputError(f"k={k}: must be at least 1")
    k = min(k, n - 1)
    a, b = knn_indices(x, k), knn_indices(y, k)
    shared = [len(set(ra.tolist()) & set(rb.tolist())) for ra, rb in zip(a, b)]
    return float(np.mean(shared) / k)


def setting_rank(setting: str) -> tuple:
    """The paper's settings first, in its order, then any other name alphabetically."""
    base = setting.split(":")[0]
    return (SETTINGS.index(base) if base in SETTINGS else len(SETTINGS), setting)


def order_settings(settings) -> list[str]:
    return sorted(dict.fromkeys(settings), key=setting_rank)


SIMILARITY_COLUMNS = ["dataset", "seed", "comparison", "pooling", "layer", "a", "b", "metric", "value"]


def _align(ids: list[str], reference: list[str], where: str) -> np.ndarray:
    """Row indices that put ``ids`` in ``reference``'s order (the same images must be on both sides)."""
    if sorted(ids) != sorted(reference):
        raise InputError(f"{where}: the image sets differ; similarities need the same images in every file")
    pos = {p: i for i, p in enumerate(ids)}
    return np.array([pos[p] for p in reference])


def similarity_rows(dataset: str, seed: int, layer_sets: dict, pooled: dict, k: int = 10) -> pd.DataFrame:
    """Similarity of the same (test) images' representations.

    ``layer_sets``: ``{setting: ({pooling: L×N×D}, labels, ids)}``: every pair of settings at every
    layer and pooling (``comparison = "settings"``). ``pooled``: ``{setting: (pre, post, ids)}``: X_v
    vs H_v per setting (``comparison = "pre_post"``, pooling ``patch_mean``, layer -1)."""
    import pandas as pd

    rows = []
    settings = order_settings(layer_sets)  # canonical pairs whatever order the files came in
    reference = layer_sets[settings[0]][2] if settings else None
    aligned = {}
    for s in settings:
        states, _, ids = layer_sets[s]
        order = _align(ids, reference, f"layers of {s}")
        aligned[s] = {p: t[:, order].numpy() for p, t in states.items()}
    for i, a in enumerate(settings):
        for b in settings[i + 1:]:
            for pooling in aligned[a]:
                n_layers = min(aligned[a][pooling].shape[0], aligned[b][pooling].shape[0])
                for layer in range(n_layers):
                    x, y = aligned[a][pooling][layer], aligned[b][pooling][layer]
                    base = dict(dataset=dataset, seed=int(seed), comparison="settings", pooling=pooling,
                                layer=layer, a=a, b=b)
                    rows.append({**base, "metric": "cka", "value": linear_cka(x, y)})
                    rows.append({**base, "metric": "mknn", "value": mutual_knn(x, y, k)})
    for s in order_settings(pooled):
        pre, post, ids = pooled[s]
        base = dict(dataset=dataset, seed=int(seed), comparison="pre_post", pooling="patch_mean", layer=-1,
                    a=f"{s}:pre", b=f"{s}:post")
        x, y = np.asarray(pre, dtype=np.float64), np.asarray(post, dtype=np.float64)
        rows.append({**base, "metric": "cka", "value": linear_cka(x, y)})
        rows.append({**base, "metric": "mknn", "value": mutual_knn(x, y, k)})
    return pd.DataFrame(rows, columns=SIMILARITY_COLUMNS)
