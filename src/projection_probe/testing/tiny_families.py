"""Tiny, randomly initialised models of each supported MLLM family, built offline from their config
classes (`AutoModelForImageTextToText.from_config`), with a tokenizer that holds the family's image
tokens, saved as folders that the family's own HF class and `from_pretrained` load.

Every model sees 32×32 images in 8×8 patches (16 patches) through 2-layer towers and a 2-layer LM of
width 64; each builds in milliseconds on a CPU. A `TinySize` builds them larger, with one LM width and
depth and (as far as each family allows) one image-token count for all: what `bench_classify.py
--family` compares families on.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from projection_probe.io import write_json
from projection_probe.testing.tiny import make_tiny_tokenizer

IMAGE_SIZE = 32
PATCH_SIZE = 8
# The tokens each family's processor puts around and at the image positions (image token first).
FAMILY_TOKENS = {
    "llava": ["<image>"],
    "paligemma": ["<image>"],
    "gemma3": ["<image_soft_token>", "<start_of_image>", "<end_of_image>"],
    "idefics3": ["<image>", "<fake_token_around_image>", "<global-img>"],
    "smolvlm": ["<image>", "<fake_token_around_image>", "<global-img>"],
    "internvl": ["<IMG_CONTEXT>", "<img>", "</img>"],
    "qwen2_vl": ["<|image_pad|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>"],
    "qwen2_5_vl": ["<|image_pad|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>"],
    "blip-2": ["<image>"],
    "llava_next": ["<image>"],
    "llava_onevision": ["<image>", "<video>"],
    "mistral3": ["[IMG]", "[IMG_BREAK]", "[IMG_END]"],
}
FAMILIES = tuple(FAMILY_TOKENS)
# LLaVA-NeXT's anyres grid, without the image's own square so that images are cut into crops.
PINPOINTS = [[32, 64], [64, 32], [64, 64]]


@dataclass(frozen=True)
class TinySize:
    """The LM's width and depth, and the image tokens per image, of a tiny model. The default is the
    tests' models, whose image-token counts differ by family (4 to 16). With `image_tokens` (a square
    number) every family gives that many H_v tokens per image, by its image side or its query/token
    count, except LLaVA-NeXT/OneVision, whose tiles and newline tokens give more."""
    lm_width: int = 64
    lm_layers: int = 2
    image_tokens: int | None = None


DEFAULT_SIZE = TinySize()
# Families whose connector merges 2×2 patches into one image token: their side is twice the others'.
MERGING_2X2 = ("idefics3", "smolvlm", "internvl", "mistral3")


def family_tokenizer(family: str, out_dir: str | Path | None = None):
    """The tiny BPE tokenizer (`testing/tiny.py`) with the family's image tokens added as special tokens."""
    tokenizer = make_tiny_tokenizer()
    extra = [t for t in FAMILY_TOKENS[family] if t != "<image>"]
    if extra:
        tokenizer.add_tokens(extra, special_tokens=True)
    if out_dir is not None:
        tokenizer.save_pretrained(out_dir)
    return tokenizer


def _text(tokenizer, model_type: str = "llama", size: TinySize = DEFAULT_SIZE, **overrides) -> dict:
    width = size.lm_width  # heads of 16 dimensions, half as many KV heads
    return dict(model_type=model_type, vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width,
                num_hidden_layers=size.lm_layers, num_attention_heads=width // 16, num_key_value_heads=width // 32,
                head_dim=16,
                max_position_embeddings=1024, tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **overrides)


def _vision(**overrides) -> dict:
    return {**dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   image_size=IMAGE_SIZE, patch_size=PATCH_SIZE), **overrides}


def image_side(family: str, size: TinySize = DEFAULT_SIZE) -> int:
    """The square image side of a tiny model: 32, or the side that gives `size.image_tokens` H_v tokens
    (8-pixel patches, or 4-pixel ones merged 2×2 for Qwen2-VL; twice the side where the connector merges
    2×2 patches). Gemma3 pools to and BLIP-2 queries its token count, so its side does not matter."""
    if size.image_tokens is None or family == "blip-2":
        return IMAGE_SIZE
    per_side = math.isqrt(size.image_tokens)
    if per_side ** 2 != size.image_tokens:
        raise ValueError(f"image_tokens {size.image_tokens}: a tiny model's image tokens are a square number")
    return PATCH_SIZE * per_side * (2 if family in MERGING_2X2 else 1)


def family_config(family: str, tokenizer, size: TinySize = DEFAULT_SIZE):
    """The tiny config of `family` at `size`, its token ids taken from `tokenizer`."""
    from transformers import AutoConfig

    ids = [tokenizer.convert_tokens_to_ids(t) for t in FAMILY_TOKENS[family]]
    image = ids[0]
    side, width = image_side(family, size), size.lm_width
    patches = (side // PATCH_SIZE) ** 2
    tokens = size.image_tokens
    scale = side // IMAGE_SIZE
    pinpoints = [[scale * h, scale * w] for h, w in PINPOINTS]

    def vision(**overrides):
        return _vision(image_size=side, **overrides)

    def text(model_type: str = "llama", **overrides):
        return _text(tokenizer, model_type, size, **overrides)

    if family == "llava":
        return AutoConfig.for_model("llava", vision_config=vision(model_type="clip_vision_model", projection_dim=32),
                                    text_config=text(), image_token_id=image, image_seq_length=patches)
    if family == "paligemma":
        return AutoConfig.for_model(
            "paligemma", vision_config=vision(model_type="siglip_vision_model", projection_dim=width),
            text_config=text("gemma", num_image_tokens=patches), image_token_id=image, projection_dim=width,
            hidden_size=width, vocab_size=len(tokenizer))
    if family == "gemma3":
        return AutoConfig.for_model(
            "gemma3", vision_config=vision(model_type="siglip_vision_model"),
            text_config=text("gemma3_text", sliding_window=64, query_pre_attn_scalar=16,
                             layer_types=["sliding_attention", "full_attention"] * (size.lm_layers // 2)),
            mm_tokens_per_image=tokens or 4, image_token_id=image, boi_token_id=ids[1], eoi_token_id=ids[2])
    if family in ("idefics3", "smolvlm"):
        return AutoConfig.for_model(family, vision_config=vision(), text_config=text(),
                                    image_token_id=image, scale_factor=2, pad_token_id=tokenizer.pad_token_id)
    if family == "internvl":
        return AutoConfig.for_model(
            "internvl", vision_config=_vision(image_size=[side] * 2, patch_size=[PATCH_SIZE] * 2),
            text_config=text("qwen2"), image_token_id=image, image_seq_length=patches // 4)
    if family in ("qwen2_vl", "qwen2_5_vl"):
        # 32×32 images in 4×4 patches: 64 patches, merged 2×2 into 16 image tokens. M-RoPE over 16 rotary dims.
        lm = text("qwen2_vl_text" if family == "qwen2_vl" else "qwen2_5_vl_text",
                  rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
        shared = dict(num_heads=4, patch_size=4, temporal_patch_size=2, spatial_merge_size=2, depth=2)
        tower = (dict(embed_dim=32, hidden_size=width, **shared) if family == "qwen2_vl" else
                 dict(hidden_size=32, intermediate_size=64, window_size=16, out_hidden_size=width,
                      fullatt_block_indexes=[1], **shared))
        return AutoConfig.for_model(family, vision_config=tower, text_config=lm, image_token_id=image,
                                    vision_start_token_id=ids[1], vision_end_token_id=ids[2], video_token_id=ids[3])
    if family == "blip-2":  # 4 learned queries; an OPT LM
        lm = dict(model_type="opt", vocab_size=len(tokenizer), hidden_size=width, ffn_dim=2 * width,
                  num_hidden_layers=size.lm_layers, num_attention_heads=width // 16, word_embed_proj_dim=width,
                  max_position_embeddings=1024, bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        qformer = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                       encoder_hidden_size=32, vocab_size=len(tokenizer))
        return AutoConfig.for_model("blip-2", vision_config=vision(), qformer_config=qformer, text_config=lm,
                                    num_query_tokens=tokens or 4, image_token_id=image)
    if family == "llava_next":  # a 32×32 image fits the 32×64 pinpoint best: itself and 2 crops
        return AutoConfig.for_model(
            "llava_next", vision_config=vision(model_type="clip_vision_model", projection_dim=32),
            text_config=text(), image_token_id=image, image_grid_pinpoints=pinpoints)
    if family == "llava_onevision":
        return AutoConfig.for_model(
            "llava_onevision", vision_config=vision(model_type="siglip_vision_model"),
            text_config=text("qwen2"), image_token_id=image, video_token_id=ids[1],
            image_grid_pinpoints=pinpoints)
    if family == "mistral3":  # Pixtral: 4×4 patches, merged 2×2 into 2 rows of 2 image tokens
        return AutoConfig.for_model(
            "mistral3", vision_config=vision(model_type="pixtral", head_dim=8),
            text_config=text("mistral"), image_token_id=image, spatial_merge_size=2)
    raise KeyError(f"no tiny config for family {family!r}; families: {FAMILIES}")


def make_tiny_family(family: str, out_dir: str | Path | None = None, seed: int = 0, size: TinySize = DEFAULT_SIZE):
    """A random model of `family` at `size` (fp32, eval mode) and its tokenizer; saved with a
    `preprocessor_config.json` (size, mean, std) to `out_dir` when given. Returns (model, tokenizer)."""
    from transformers import AutoModelForImageTextToText

    tokenizer = family_tokenizer(family)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(family_config(family, tokenizer, size)).eval()
    if family == "gemma3":
        # Initialised to zeros: H_v would be 0 and no gradient would reach the connector.
        torch.nn.init.normal_(model.model.multi_modal_projector.mm_input_projection_weight, std=0.02)
    if family == "blip-2":  # zeros too: every query would give the same H_v token
        torch.nn.init.normal_(model.query_tokens, std=0.02)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    if out_dir is not None:
        out_dir, side = Path(out_dir), image_side(family, size)
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
        write_json(out_dir / "preprocessor_config.json", {
            "size": {"height": side, "width": side}, "image_mean": [0.5] * 3, "image_std": [0.5] * 3})
    return model, tokenizer
