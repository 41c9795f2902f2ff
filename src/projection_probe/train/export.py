"""Export a model folder (base, ft-proj, ft-e2e or ft-lora) as one `LlavaForConditionalGeneration`
checkpoint: config, safetensors, tokenizer and image-processor config, loadable with
`LlavaForConditionalGeneration.from_pretrained` and no code from this project.

LoRA adapters are merged into the LLM weights. A parts-based model can be exported only when its
vision tower is CLIP, because a `LlavaConfig` can describe no other encoder. A model folder over a
checkpoint of another family (`family_checkpoint`) is exported as a checkpoint of that family
(`export_family_checkpoint`), loadable with its own HF class.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch

from projection_probe.io import InputError, atomic_dir
from projection_probe.names import IMAGE_PLACEHOLDER

log = logging.getLogger(__name__)

# Image-processor and processor files that a llava-hf (or CLIP) folder may hold, copied unchanged.
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json", "chat_template.json", "chat_template.jinja")


def _ensure_image_token(tokenizer, language_model) -> int:
    """The id of `<image>`, added to the tokenizer (and the LLM's embeddings resized) if missing.

    A parts-built facade fills image positions with an ordinary id because it splices H_v by
    position; LLaVA finds them by id, so it needs a token of its own. The new output row is zeroed:
    its logit is then 0, and the new token is never an input embedding that matters (LLaVA overwrites
    it with H_v)."""
    if IMAGE_PLACEHOLDER in tokenizer.get_vocab():
        token_id = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    else:
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_PLACEHOLDER]})
        token_id = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    if token_id >= language_model.get_input_embeddings().num_embeddings:
        language_model.resize_token_embeddings(len(tokenizer))
        with torch.no_grad():
            head = language_model.get_output_embeddings()
            if head is not language_model.get_input_embeddings():
                head.weight[token_id:].zero_()
    return token_id


def _processor_source(spec: dict) -> Path | None:
    if spec.get("llava_hf"):
        return Path(spec["llava_hf"])
    vision = spec.get("vision") or {}
    return Path(vision["path"]) if vision.get("path") else None


def export_llava_hf(model_dir: str | Path, out_dir: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write `out_dir` as a LlavaForConditionalGeneration folder equivalent to the facade of
    `model_dir`. `dtype` defaults to float32."""
    from peft import PeftModel
    from transformers import LlavaConfig, LlavaForConditionalGeneration
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    from projection_probe.models.loaders import load_facade, resolve_spec
    from projection_probe.models.projector import MLP2xGeluProjector
    from projection_probe.models.vision import ClipVisionEncoder

    spec = resolve_spec(model_dir)
    if spec.get("family_checkpoint"):
        from projection_probe.models.registry import model_type_of

        if model_type_of(spec["family_checkpoint"]) != "llava":
            return export_family_checkpoint(model_dir, out_dir, dtype)
        spec["llava_hf"] = spec["family_checkpoint"]  # a llava-hf checkpoint named as a family one
    vision_kind = (spec.get("vision") or {}).get("kind")
    if not spec.get("llava_hf") and vision_kind not in ("clip", "llava_hf"):
        raise InputError(f"{model_dir}: vision kind {vision_kind!r} cannot be described by a LlavaConfig; "
                         "export-llava supports llava_hf bases and parts bases whose vision is CLIP")
    dtype = dtype or torch.float32
    facade = load_facade(model_dir, dtype=dtype)
    if not isinstance(facade.vision, ClipVisionEncoder):
        raise InputError(f"{model_dir}: the vision tower is {type(facade.vision).__name__}, not CLIP; cannot export")
    if not isinstance(facade.projector, MLP2xGeluProjector):
        raise InputError(f"{model_dir}: projector {type(facade.projector).__name__} is not LLaVA-1.5's mlp2x_gelu")
    language_model = facade.language_model
    if isinstance(language_model, PeftModel):
        language_model = language_model.merge_and_unload()
    tokenizer = facade.tokenizer

    if spec.get("llava_hf"):
        config = LlavaConfig.from_pretrained(spec["llava_hf"])
        config.text_config = language_model.config
    else:
        image_token_id = _ensure_image_token(tokenizer, language_model)
        vision = facade.vision
        config = LlavaConfig(vision_config=vision.model.config.to_dict(), text_config=language_model.config.to_dict(),
                             image_token_id=image_token_id, image_seq_length=vision.num_patches,
                             vision_feature_layer=vision.feature_layer,
                             vision_feature_select_strategy=vision.select_strategy,
                             projector_hidden_act=facade.projector.hidden_act,
                             multimodal_projector_bias=facade.projector.linear_1.bias is not None)

    # Built empty, then the facade's own modules are hung in: no weight is copied.
    with torch.device("meta"):
        llava = LlavaForConditionalGeneration(config)
    llava.model.vision_tower = facade.vision.model
    llava.model.language_model = getattr(language_model, language_model.base_model_prefix)
    llava.lm_head = language_model.get_output_embeddings()
    projector = LlavaMultiModalProjector(config)
    projector.load_state_dict(facade.projector.state_dict(), strict=True)
    llava.model.multi_modal_projector = projector.to(dtype)
    left_on_meta = [n for n, t in [*llava.named_parameters(), *llava.named_buffers()] if t.is_meta]
    if left_on_meta:
        raise RuntimeError(f"export left uninitialised tensors {left_on_meta[:3]}")
    llava.generation_config = language_model.generation_config
    llava.config.dtype = dtype

    source = _processor_source(spec)
    with atomic_dir(out_dir) as tmp:
        llava.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if source is not None:
            for name in PROCESSOR_FILES:
                if (source / name).exists():
                    shutil.copyfile(source / name, tmp / name)
    log.info("exported %s to %s", model_dir, out_dir)
    return Path(out_dir)


def export_family_checkpoint(model_dir: str | Path, out_dir: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write `out_dir` as a checkpoint of the family of `model_dir`'s `family_checkpoint`, with its trained
    parts (connector weights, merged LoRA): the facade's parts are modules of the family's own HF
    model, which is saved as it is. A llava checkpoint goes through `export_llava_hf`."""
    from peft import PeftModel

    from projection_probe.models.loaders import load_facade, resolve_spec

    spec = resolve_spec(model_dir)
    facade = load_facade(model_dir, dtype=dtype or torch.float32)
    if isinstance(facade.language_model, PeftModel):
        facade.language_model = facade.language_model.merge_and_unload()  # merges in place, inside the HF model
    hf_model = getattr(facade.vision, "hf_model", None)
    if hf_model is None:
        raise InputError(f"{model_dir}: its facade's parts are not modules of a family's HF model; use export_llava_hf")
    source = Path(spec["family_checkpoint"])
    with atomic_dir(out_dir) as tmp:
        hf_model.save_pretrained(tmp)
        facade.tokenizer.save_pretrained(tmp)
        for name in PROCESSOR_FILES:
            if (source / name).exists():
                shutil.copyfile(source / name, tmp / name)
    log.info("exported %s to %s", model_dir, out_dir)
    return Path(out_dir)
