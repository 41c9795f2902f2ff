"""CLIP zero-shot classification (Table 1, "CLIP zero-shot").

The authors ran the HF ``zero-shot-image-classification`` pipeline with
``openai/clip-vit-large-patch14-336``: hypothesis template ``"This is a photo of {}."`` over the
lowercased labels, softmax over the class list, one image per call. This module computes the same
thing in batches: each label text is encoded once (the pipeline re-encodes every label for every
image), images go through a DataLoader, and the scores are ``logit_scale * cos(image, text)`` followed
by a softmax, as in ``CLIPModel.forward``. With several templates the text embeddings are averaged
after normalisation and renormalised (CLIP's prompt-ensemble recipe).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from projection_probe.baselines.random_baseline import predictions_frame
from projection_probe.data.images import load_rgb, preprocess, worker_errors_as_input_errors
from projection_probe.io import InputError
from projection_probe.names import CLIP_MEAN, CLIP_STD

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "This is a photo of {}."
IMAGE_PREPROCESSING_MODES = ("square", "pad")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present; anything else is passed to torch."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise InputError(f"device: {device!r} is not a torch device ({e}); use e.g. cpu, cuda, cuda:0 or auto") from e


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise InputError(f"dtype: unknown value {dtype!r}; use one of {list(DTYPES)}")
    return DTYPES[dtype]


def load_clip(model_path: str | Path, device: torch.device, dtype: torch.dtype):
    """``(CLIPModel, tokenizer)`` from a local folder (no hub access), in eval mode on ``device``."""
    from transformers import AutoTokenizer, CLIPModel

    model_path = Path(model_path)
    if not (model_path / "config.json").exists():
        raise InputError(f"{model_path}: no config.json; pass the folder of a saved CLIPModel "
                         f"(e.g. a local copy of openai/clip-vit-large-patch14-336)")
    try:
        model = CLIPModel.from_pretrained(str(model_path), dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    except (OSError, ValueError) as e:
        raise InputError(f"{model_path}: cannot load a CLIPModel and its tokenizer ({e})") from e
    return model.to(device).eval(), tokenizer


def image_settings(model_path: str | Path, model) -> tuple[int, tuple[float, float, float], tuple[float, float, float]]:
    """``(size, mean, std)`` for :func:`projection_probe.data.images.preprocess`: from the folder's
    ``preprocessor_config.json`` when present, else the vision config's image size and CLIP's mean/std."""
    config_path = Path(model_path) / "preprocessor_config.json"
    size = int(model.config.vision_config.image_size)
    mean, std = CLIP_MEAN, CLIP_STD
    if config_path.exists():
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise InputError(f"{config_path}: not valid JSON ({e})") from e
        crop = config.get("crop_size", size)
        crop = crop.get("height", size) if isinstance(crop, dict) else crop
        shortest = config.get("size", crop)
        shortest = shortest.get("shortest_edge", crop) if isinstance(shortest, dict) else shortest
        if int(crop) != int(shortest):
            # preprocess() resizes the short side and crops to one size, as CLIP's processor does
            # whenever the two agree (they do for every released CLIP).
            raise InputError(f"{config_path}: size {shortest} differs from crop_size {crop}; "
                             f"only equal sizes are supported")
        size = int(crop)
        mean = tuple(float(x) for x in config.get("image_mean", mean))
        std = tuple(float(x) for x in config.get("image_std", std))
    return size, mean, std


class ManifestImages(Dataset):
    """Preprocessed pixel arrays for a list of image paths (module level so workers can pickle it)."""

    def __init__(self, image_paths: Sequence[str], size: int, mean, std, mode: str):
        self.image_paths = list(image_paths)
        self.size, self.mean, self.std, self.mode = size, tuple(mean), tuple(std), mode

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        image = load_rgb(self.image_paths[i])
        return torch.from_numpy(preprocess(image, self.size, self.mean, self.std, self.mode))


def projected_features(output) -> torch.Tensor:
    """transformers 5 returns a model output whose ``pooler_output`` is the projected embedding;
    older versions returned the tensor itself."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def label_texts(classes: Sequence[str], template: str, lowercase_labels: bool) -> list[str]:
    if template.count("{}") != 1:
        raise InputError(f"template {template!r}: must contain exactly one '{{}}' where the label goes")
    return [template.format(c.lower() if lowercase_labels else c) for c in classes]


@torch.inference_mode()
def encode_label_texts(model, tokenizer, classes: Sequence[str], templates: Sequence[str],
                       lowercase_labels: bool) -> torch.Tensor:
    """C×D unit-norm text embeddings: one text-encoder call per template, each label encoded once;
    with several templates, the unit embeddings are averaged over templates and renormalised."""
    if not templates:
        raise InputError("templates: empty list; pass at least one hypothesis template")
    device = next(model.parameters()).device
    max_length = int(model.config.text_config.max_position_embeddings)
    total = None
    for template in templates:
        batch = tokenizer(label_texts(classes, template, lowercase_labels), padding=True, truncation=True,
                          max_length=max_length, return_tensors="pt")
        batch = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        embedding = projected_features(model.get_text_features(**batch)).float()
        embedding = embedding / embedding.norm(dim=-1, keepdim=True)
        total = embedding if total is None else total + embedding
    mean = total / len(templates)
    return mean / mean.norm(dim=-1, keepdim=True)


@torch.inference_mode()
def zero_shot_probabilities(model, text_embeddings: torch.Tensor, loader: DataLoader) -> np.ndarray:
    """N×C softmax over the classes of ``logit_scale * cos(image, text)`` for every image in ``loader``."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    logit_scale = model.logit_scale.exp().float()
    rows = []
    for pixel_values in tqdm(loader, desc="clip zero-shot", unit="batch"):
        image = projected_features(model.get_image_features(pixel_values=pixel_values.to(device, dtype))).float()
        image = image / image.norm(dim=-1, keepdim=True)
        logits = logit_scale * image @ text_embeddings.T
        rows.append(logits.softmax(dim=-1).cpu())
    return torch.cat(rows).numpy()


def clip_zero_shot_predictions(test: pd.DataFrame, classes: list[str], model_path: str | Path,
                               templates: Sequence[str] = (DEFAULT_TEMPLATE,), lowercase_labels: bool = True,
                               image_preprocessing: str = "square", batch_size: int = 32, num_workers: int = 0,
                               device: str = "auto", dtype: str | torch.dtype = "float32",
                               ) -> tuple[pd.DataFrame, np.ndarray]:
    """Classify the ``test`` rows (``image_path,label``) with CLIP; return the predictions table
    (mode ``clip_zero_shot``, raw = parsed = top class) and the N×C probabilities."""
    if image_preprocessing not in IMAGE_PREPROCESSING_MODES:
        raise InputError(f"image_preprocessing: unknown value {image_preprocessing!r}; "
                         f"use one of {list(IMAGE_PREPROCESSING_MODES)}")
    if batch_size < 1:
        raise InputError(f"batch_size: {batch_size} must be at least 1")
    if num_workers < 0:
        raise InputError(f"num_workers: {num_workers} must be 0 or more")
    torch_device = resolve_device(device)
    model, tokenizer = load_clip(model_path, torch_device, resolve_dtype(dtype))
    size, mean, std = image_settings(model_path, model)
    text_embeddings = encode_label_texts(model, tokenizer, classes, templates, lowercase_labels)
    images = ManifestImages(test["image_path"].to_list(), size, mean, std, image_preprocessing)
    loader = DataLoader(images, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=torch_device.type == "cuda")
    log.info("CLIP zero-shot: %d images, %d classes, %d template(s), %s preprocessing at %d px",
             len(images), len(classes), len(templates), image_preprocessing, size)
    with worker_errors_as_input_errors():
        probabilities = zero_shot_probabilities(model, text_embeddings, loader)
    top = probabilities.argmax(axis=1)
    return predictions_frame(test, [classes[i] for i in top], mode="clip_zero_shot"), probabilities
