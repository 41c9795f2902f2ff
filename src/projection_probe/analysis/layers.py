"""Per-layer hidden states of the MLLM, one forward pass per image.

For every LLM layer (the embeddings output, then each decoder layer) two vectors per image are kept:

- ``image_mean``: the hidden state averaged over the image-token positions;
- ``last_token``: the hidden state at the final prompt token (what the first answer token is
  predicted from; prompts are left-padded, so it is the last column).

``hidden_states[0]`` is the input embedding sequence, so ``image_mean[0]`` equals the mean-pooled
H_v of the features stage (up to the storage dtype). In HF Llama-style models the last entry has the
final RMSNorm applied, so the last layer's scale differs from the others; probes standardise.

File contract (``layers_{split}.safetensors``): ``image_mean`` and ``last_token`` L×N×D
(``L = num_hidden_layers + 1``), ``labels`` N int64 (index into classes.json); metadata
``image_paths`` (JSON list, the prompt records' order) and ``num_hidden_layers``.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from tqdm import tqdm

from projection_probe.io import InputError, load_safetensors, save_safetensors
from projection_probe.names import LAYER_POOLINGS

log = logging.getLogger(__name__)

POOLINGS = LAYER_POOLINGS
SPLITS = ("train", "test")


@torch.inference_mode()
def layer_states(facade, records: list[dict], cache, batch_size: int = 8) -> dict[str, torch.Tensor]:
    """``{"image_mean": L×N×D, "last_token": L×N×D}`` (float32) for the prompt ``records``."""
    means, lasts = [], []
    for start in tqdm(range(0, len(records), batch_size), desc="layer states", unit="batch"):
        batch = records[start:start + batch_size]
        x_v = cache.select([r["image"] for r in batch]).float()
        inputs = facade.build_inputs([r["conversations"][0]["value"] for r in batch], padding_side="left")
        # logits_to_keep=1: the logits are not needed, only the hidden states.
        out, moved = facade._lm_forward(inputs, x_v, output_hidden_states=True, use_cache=False, logits_to_keep=1)
        mask = moved.image_mask.float().unsqueeze(-1)  # B×T×1
        # One layer at a time and in float32: a 7B model's late-layer outliers summed over 576 image
        # tokens can overflow fp16, and stacking all L layers at once would hold L×B×T×D on the GPU.
        means.append(torch.stack([(h.float() * mask).sum(1) / mask.sum(1) for h in out.hidden_states]).cpu())
        lasts.append(torch.stack([h[:, -1].float() for h in out.hidden_states]).cpu())
    return {"image_mean": torch.cat(means, 1), "last_token": torch.cat(lasts, 1)}


def num_hidden_layers(facade) -> int:
    lm = facade.language_model
    config = getattr(lm, "config", None)
    if config is None or getattr(config, "num_hidden_layers", None) is None:
        config = lm.get_base_model().config  # a PEFT wrapper
    return int(getattr(config, "text_config", config).num_hidden_layers)


def extract_layer_features(model_dir, prompts_path, vision_cache_path, classes_path, out_dir,
                           device: str = "cpu", dtype: str = "float32", storage_dtype: str = "float16",
                           batch_size: int = 8, trust_remote_code: bool = False) -> None:
    """Write ``out_dir/layers_train.safetensors`` and ``out_dir/layers_test.safetensors``."""
    from projection_probe.data.prompts import read_classes_file
    from projection_probe.features.cache import load_vision_cache
    from projection_probe.io import read_jsonl
    from projection_probe.models.loaders import load_facade

    facade = load_facade(model_dir, device=device, dtype=getattr(torch, dtype),
                         trust_remote_code=trust_remote_code).eval()
    cache = load_vision_cache(vision_cache_path)
    _, classes = read_classes_file(classes_path)
    index = {c: i for i, c in enumerate(classes)}
    records = read_jsonl(prompts_path)
    n_layers = num_hidden_layers(facade)
    for split in SPLITS:
        split_records = [r for r in records if r.get("split") == split]
        if not split_records:
            raise InputError(f"{prompts_path}: no {split} records; check the dataset's manifest")
        unknown = sorted({r["label"] for r in split_records} - set(index))
        if unknown:
            raise InputError(f"{prompts_path}: labels {unknown[:3]} are not in {classes_path}; rerun build_prompts")
        states = layer_states(facade, split_records, cache, batch_size)
        if states["image_mean"].shape[0] != n_layers + 1:
            raise RuntimeError(f"model returned {states['image_mean'].shape[0]} hidden states for "
                               f"{n_layers} layers; expected num_hidden_layers + 1")
        tensors = {k: v.to(getattr(torch, storage_dtype)) for k, v in states.items()}
        tensors["labels"] = torch.tensor([index[r["label"]] for r in split_records], dtype=torch.long)
        save_safetensors(Path(out_dir) / f"layers_{split}.safetensors", tensors,
                         metadata={"image_paths": json.dumps([r["image"] for r in split_records]),
                                   "num_hidden_layers": str(n_layers)})
        log.info("%s %s: %d images, %d layers × %d dims", out_dir, split, len(split_records),
                 tensors["image_mean"].shape[0], tensors["image_mean"].shape[2])


def read_layer_file(path) -> tuple[dict[str, torch.Tensor], torch.Tensor, list[str]]:
    """``({pooling: L×N×D float32}, labels N, image_paths)``, checked against the file contract."""
    from safetensors import safe_open

    tensors = load_safetensors(path)
    missing = [k for k in (*POOLINGS, "labels") if k not in tensors]
    if missing:
        raise InputError(f"{path}: tensors {missing} missing; rerun extract_layer_features")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    paths = json.loads(meta.get("image_paths", "null") or "null")
    n = tensors["labels"].shape[0]
    if not isinstance(paths, list) or len(paths) != n:
        raise InputError(f"{path}: metadata image_paths missing or not {n} entries; rerun extract_layer_features")
    for k in POOLINGS:
        if tensors[k].ndim != 3 or tensors[k].shape[1] != n:
            raise InputError(f"{path}: {k} has shape {tuple(tensors[k].shape)}; expected L×{n}×D")
    return {k: tensors[k].float() for k in POOLINGS}, tensors["labels"].long(), [str(p) for p in paths]
