"""Pooled pre- and post-projection vectors of a model, from the cached X_v.

Only the projector is applied: no vision tower pass and no LLM weights are loaded.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from projection_probe.features.cache import load_vision_cache
from projection_probe.io import save_safetensors

log = logging.getLogger(__name__)


def extract_pooled_features(facade, cache, image_paths: list[str], labels: list[int],
                            batch_size: int = 256) -> dict[str, torch.Tensor]:
    """`pre`: mean of X_v over patches; `pooled`: the encoder's own pooled vector (CLIP's pooler
    output, Table 3's input); `post`: mean of H_v = projector(X_v) over patches."""
    rows = cache.rows(image_paths)
    pre, post = [], []
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            x_v = cache.x_v[rows[start:start + batch_size]].to(facade.device).float()
            p, q = facade.pooled_features(x_v)
            pre.append(p.cpu())
            post.append(q.cpu())
    return {"pre": torch.cat(pre), "post": torch.cat(post), "pooled": cache.pooled[rows].float(),
            "labels": torch.tensor(labels, dtype=torch.long)}


def write_split_features(path: str | Path, tensors: dict, image_paths: list[str]) -> None:
    save_safetensors(path, tensors, metadata={"image_paths": json.dumps(image_paths)})


def extract_model_features(model_dir, vision_cache_path, manifest_path, classes_path, out_dir,
                           device: str = "cpu") -> None:
    from projection_probe.data.manifest import read_manifest
    from projection_probe.data.prompts import read_classes_file
    from projection_probe.models.loaders import load_facade

    facade = load_facade(model_dir, device=device, with_language_model=False)
    cache = load_vision_cache(vision_cache_path)
    _, classes = read_classes_file(classes_path)
    index = {c: i for i, c in enumerate(classes)}
    rows = read_manifest(manifest_path)
    for split in ("train", "test"):
        split_rows = [r for r in rows if r.split == split]
        paths = [r.image_path for r in split_rows]
        tensors = extract_pooled_features(facade, cache, paths, [index[r.label] for r in split_rows])
        write_split_features(Path(out_dir) / f"{split}.safetensors", tensors, paths)
        log.info("%s: %d %s images, post dim %d", out_dir, len(paths), split, tensors["post"].shape[1])
