"""Control tasks (Hewitt & Liang 2019) for image probes.

A control task keeps the inputs and replaces each image's label by one drawn at random, once per
seed: a probe that scores well on it is memorising, not reading class structure. Selectivity =
accuracy on the real task − accuracy on the control task.

The control labels are a fixed random permutation of the split's true labels over its images,
keyed by image id (path): the same seed gives every image the same control label whatever the
setting, layer, pooling or row order, and the class histogram of the split is preserved exactly.
"""
from __future__ import annotations

import hashlib

import numpy as np

from projection_probe.io import InputError

# Mixed into the RNG seed so that the control permutation is not correlated with any other use of
# the run seed (probe initialisation, validation split).
CONTROL_SALT = 0xC0_47_01


def _split_key(split: str) -> int:
    return int(hashlib.sha256(split.encode()).hexdigest()[:8], 16)


def control_labels(image_ids: list[str], labels, seed: int, split: str = "") -> np.ndarray:
    """Control labels for ``labels`` (aligned with ``image_ids``), fixed by ``seed`` and ``split``."""
    labels = np.asarray(labels)
    if len(image_ids) != len(labels):
        raise InputError(f"control_labels: {len(image_ids)} image ids but {len(labels)} labels")
    if len(set(image_ids)) != len(image_ids):
        raise InputError("control_labels: image ids must be unique")
    order = np.argsort(np.asarray(image_ids, dtype=object), kind="stable")  # canonical order: by id
    rng = np.random.default_rng([int(seed), CONTROL_SALT, _split_key(split)])
    permuted = labels[order][rng.permutation(len(labels))]
    out = np.empty_like(labels)
    out[order] = permuted
    return out
