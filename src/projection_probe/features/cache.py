"""The per-dataset cache of vision features X_v.

The vision tower is frozen in every setting, so X_v depends only on the dataset, the encoder and the
preprocessing. It is computed once and reused by alignment, every fine-tune, classification and the
pooled pre/post-projection features of every setting and seed.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from projection_probe.data.images import load_rgb, worker_errors_as_input_errors
from projection_probe.io import InputError, load_safetensors, save_safetensors

log = logging.getLogger(__name__)


@dataclass
class VisionCache:
    x_v: torch.Tensor  # N_img×N_patch×D_v
    pooled: torch.Tensor  # N_img×D_v: the encoder's own pooled vector
    image_paths: list[str]
    image_preprocessing: str | None = None  # from the file's metadata; None for caches that lack it

    def __post_init__(self):
        self.row_of = {p: i for i, p in enumerate(self.image_paths)}

    def rows(self, image_paths: list[str]) -> torch.Tensor:
        missing = [p for p in image_paths if p not in self.row_of]
        if missing:
            raise InputError(f"{len(missing)} images are not in the vision-feature cache (first: {missing[0]}); "
                             "the manifest changed after the cache was built: rerun extract_vision_features")
        return torch.tensor([self.row_of[p] for p in image_paths], dtype=torch.long)

    def select(self, image_paths: list[str]) -> torch.Tensor:
        return self.x_v[self.rows(image_paths)]


def load_vision_cache(path: str | Path) -> VisionCache:
    from safetensors import safe_open

    tensors = load_safetensors(path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "x_v" not in tensors or "image_paths" not in meta:
        raise InputError(f"{path}: not a vision-feature cache (needs tensor x_v and metadata image_paths)")
    return VisionCache(tensors["x_v"], tensors["pooled"], json.loads(meta["image_paths"]),
                       meta.get("image_preprocessing"))


class _ImageDataset(Dataset):
    def __init__(self, paths, vision, mode, exif_transpose=False):
        self.paths, self.vision, self.mode, self.exif_transpose = paths, vision, mode, exif_transpose

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return self.vision.preprocess_images([load_rgb(self.paths[i], self.exif_transpose)], self.mode)[0]


def build_vision_cache(vision, image_paths: list[str], out_path: str | Path, image_preprocessing: str,
                       batch_size: int = 32, num_workers: int = 0, dtype: torch.dtype = torch.float16,
                       device: str = "cpu", exif_transpose: bool = False) -> None:
    """Encode every image once and save X_v and the pooled vector. Image decoding runs in
    DataLoader workers so that the vision tower is not starved on a GPU."""
    loader = DataLoader(_ImageDataset(image_paths, vision, image_preprocessing, exif_transpose),
                        batch_size=batch_size, num_workers=num_workers, shuffle=False)
    x_chunks, pooled_chunks = [], []
    vision = vision.to(device).eval()
    with torch.inference_mode(), worker_errors_as_input_errors():
        for pixels in tqdm(loader, desc="vision features", unit="batch"):
            pixels = pixels.to(device)
            x_v, pooled = vision.encode_with_pooled(pixels)
            x_chunks.append(x_v.to("cpu", dtype))
            pooled_chunks.append(pooled.to("cpu", dtype))
    save_safetensors(out_path, {"x_v": torch.cat(x_chunks), "pooled": torch.cat(pooled_chunks)},
                     metadata={"image_paths": json.dumps(image_paths), "image_preprocessing": image_preprocessing})
