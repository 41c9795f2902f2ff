"""The per-dataset cache of vision features X_v.

The vision tower is frozen in every setting, so X_v depends only on the dataset, the encoder and the
preprocessing. It is computed once and reused by alignment, every fine-tune, classification and the
pooled pre/post-projection features of every setting and seed.

At the paper's scale it is larger than a job's memory (DermNet: about 19.5k images × 576 × 1024 in
fp16, 23 GB), so it is written as it is computed and read by rows (`safetensors_rows`).
"""
from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from projection_probe.data.images import load_rgb, worker_errors_as_input_errors
from projection_probe.features.safetensors_rows import RowReader, open_rows, write_rows
from projection_probe.io import InputError

log = logging.getLogger(__name__)


@dataclass
class VisionCache:
    """X_v and the pooled vectors of a dataset, indexed by image path. Read from a file, both are
    `RowReader`s: indexing reads only the rows asked for, so no reader holds the whole cache."""
    x_v: RowReader | torch.Tensor  # N_img×N_patch×D_v
    pooled: RowReader | torch.Tensor  # N_img×D_v: the encoder's own pooled vector
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
    """Open a cache without reading its tensors: the header is checked against the file's size
    (a truncated or half-written file is refused, naming it) and rows are read on demand."""
    readers, meta = open_rows(path)
    if "x_v" not in readers or "pooled" not in readers or "image_paths" not in meta:
        raise InputError(f"{path}: not a vision-feature cache (needs tensors x_v and pooled and metadata image_paths)")
    try:
        image_paths = json.loads(meta["image_paths"])
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: metadata image_paths is not valid JSON ({e})") from e
    x_v, pooled = readers["x_v"], readers["pooled"]
    if not len(image_paths) == len(x_v) == len(pooled):
        raise InputError(f"{path}: {len(image_paths)} image paths but {len(x_v)} rows of x_v "
                         f"and {len(pooled)} of pooled")
    return VisionCache(x_v, pooled, image_paths, meta.get("image_preprocessing"))


class _ImageDataset(Dataset):
    def __init__(self, paths, vision, mode, exif_transpose=False):
        self.paths, self.vision, self.mode, self.exif_transpose = paths, vision, mode, exif_transpose

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return self.vision.preprocess_images([load_rgb(self.paths[i], self.exif_transpose)], self.mode)[0]


def write_vision_cache(out_path: str | Path, image_paths: list[str],
                       batches: Iterable[tuple[torch.Tensor, torch.Tensor]], image_preprocessing: str,
                       dtype: torch.dtype = torch.float16) -> None:
    """Write the (X_v, pooled) `batches` of `image_paths`, in order, to `out_path` as they come: the
    header is written once the first batch gives the shapes, and memory holds one batch at a time.
    The file appears at `out_path` only when every image's row has been written."""
    batches = iter(batches)
    first = next(batches, None)
    if first is None:
        raise InputError(f"{out_path}: no images to encode; the manifest has no rows")
    n = len(image_paths)
    x_v, pooled = first
    layout = {"x_v": (dtype, [n, *x_v.shape[1:]]), "pooled": (dtype, [n, *pooled.shape[1:]])}
    metadata = {"image_paths": json.dumps(image_paths), "image_preprocessing": image_preprocessing}
    with write_rows(out_path, layout, metadata) as writer:
        for x_v, pooled in itertools.chain([first], batches):
            writer.append({"x_v": x_v.to("cpu", dtype), "pooled": pooled.to("cpu", dtype)})


def build_vision_cache(vision, image_paths: list[str], out_path: str | Path, image_preprocessing: str,
                       batch_size: int = 32, num_workers: int = 0, dtype: torch.dtype = torch.float16,
                       device: str = "cpu", exif_transpose: bool = False) -> None:
    """Encode every image once and save X_v and the pooled vector, batch by batch. Image decoding
    runs in DataLoader workers so that the vision tower is not starved on a GPU."""
    loader = DataLoader(_ImageDataset(image_paths, vision, image_preprocessing, exif_transpose),
                        batch_size=batch_size, num_workers=num_workers, shuffle=False)
    vision = vision.to(device).eval()

    def encoded():
        with torch.inference_mode(), worker_errors_as_input_errors():
            for pixels in tqdm(loader, desc="vision features", unit="batch"):
                yield vision.encode_with_pooled(pixels.to(device))

    write_vision_cache(out_path, image_paths, encoded(), image_preprocessing, dtype)
