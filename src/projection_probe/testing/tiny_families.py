"""Tiny, randomly initialised models of each supported MLLM family, built offline from their config
classes (`AutoModelForImageTextToText.from_config`), with a tokenizer that holds the family's image
tokens, saved as folders that the family's own HF class and `from_pretrained` load.

Every model sees 32×32 images in 8×8 patches (16 patches) through 2-layer towers and a 2-layer LM of
width 64; each builds in milliseconds on a CPU.
"""
from __future__ import annotations

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


def family_tokenizer(family: str, out_dir: str | Path | None = None):
    """The tiny BPE tokenizer (`testing/tiny.py`) with the family's image tokens added as special tokens."""
    tokenizer = make_tiny_tokenizer()
    extra = [t for t in FAMILY_TOKENS[family] if t != "<image>"]
    if extra:
        tokenizer.add_tokens(extra, special_tokens=True)
    if out_dir is not None:
        tokenizer.save_pretrained(out_dir)
    return tokenizer


def _text(tokenizer, model_type: str = "llama", **overrides) -> dict:
    return dict(model_type=model_type, vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                max_position_embeddings=1024, tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **overrides)


def _vision(**overrides) -> dict:
    return {**dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   image_size=IMAGE_SIZE, patch_size=PATCH_SIZE), **overrides}


def family_config(family: str, tokenizer):
    """The tiny config of `family`, its token ids taken from `tokenizer`."""
    from transformers import AutoConfig

    ids = [tokenizer.convert_tokens_to_ids(t) for t in FAMILY_TOKENS[family]]
    image = ids[0]
    if family == "llava":
        return AutoConfig.for_model("llava", vision_config=_vision(model_type="clip_vision_model", projection_dim=32),
                                    text_config=_text(tokenizer), image_token_id=image, image_seq_length=16)
    if family == "paligemma":
        return AutoConfig.for_model(
            "paligemma", vision_config=_vision(model_type="siglip_vision_model", projection_dim=64),
            text_config=_text(tokenizer, "gemma", num_image_tokens=16), image_token_id=image, projection_dim=64,
            hidden_size=64, vocab_size=len(tokenizer))
    if family == "gemma3":
        return AutoConfig.for_model(
            "gemma3", vision_config=_vision(model_type="siglip_vision_model"),
            text_config=_text(tokenizer, "gemma3_text", sliding_window=64, query_pre_attn_scalar=16,
                              layer_types=["sliding_attention", "full_attention"]),
            mm_tokens_per_image=4, image_token_id=image, boi_token_id=ids[1], eoi_token_id=ids[2])
    if family in ("idefics3", "smolvlm"):
        return AutoConfig.for_model(family, vision_config=_vision(), text_config=_text(tokenizer),
                                    image_token_id=image, scale_factor=2, pad_token_id=tokenizer.pad_token_id)
    if family == "internvl":
        return AutoConfig.for_model(
            "internvl", vision_config=_vision(image_size=[IMAGE_SIZE] * 2, patch_size=[PATCH_SIZE] * 2),
            text_config=_text(tokenizer, "qwen2"), image_token_id=image, image_seq_length=4)
    if family in ("qwen2_vl", "qwen2_5_vl"):
        # 32×32 images in 4×4 patches: 64 patches, merged 2×2 into 16 image tokens. M-RoPE over 16 rotary dims.
        text = _text(tokenizer, "qwen2_vl_text" if family == "qwen2_vl" else "qwen2_5_vl_text",
                     rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
        shared = dict(num_heads=4, patch_size=4, temporal_patch_size=2, spatial_merge_size=2, depth=2)
        vision = (dict(embed_dim=32, hidden_size=64, **shared) if family == "qwen2_vl" else
                  dict(hidden_size=32, intermediate_size=64, window_size=16, out_hidden_size=64,
                       fullatt_block_indexes=[1], **shared))
        return AutoConfig.for_model(family, vision_config=vision, text_config=text, image_token_id=image,
                                    vision_start_token_id=ids[1], vision_end_token_id=ids[2], video_token_id=ids[3])
    if family == "blip-2":  # 4 learned queries; an OPT LM
        text = dict(model_type="opt", vocab_size=len(tokenizer), hidden_size=64, ffn_dim=128, num_hidden_layers=2,
                    num_attention_heads=4, word_embed_proj_dim=64, max_position_embeddings=1024,
                    bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id)
        qformer = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                       encoder_hidden_size=32, vocab_size=len(tokenizer))
        return AutoConfig.for_model("blip-2", vision_config=_vision(), qformer_config=qformer, text_config=text,
                                    num_query_tokens=4, image_token_id=image)
    if family == "llava_next":  # a 32×32 image fits the 32×64 pinpoint best: itself and 2 crops
        return AutoConfig.for_model(
            "llava_next", vision_config=_vision(model_type="clip_vision_model", projection_dim=32),
            text_config=_text(tokenizer), image_token_id=image, image_grid_pinpoints=PINPOINTS)
    if family == "llava_onevision":
        return AutoConfig.for_model(
            "llava_onevision", vision_config=_vision(model_type="siglip_vision_model"),
            text_config=_text(tokenizer, "qwen2"), image_token_id=image, video_token_id=ids[1],
            image_grid_pinpoints=PINPOINTS)
    if family == "mistral3":  # Pixtral: 4×4 patches, merged 2×2 into 2 rows of 2 image tokens
        return AutoConfig.for_model(
            "mistral3", vision_config=_vision(model_type="pixtral", head_dim=8),
            text_config=_text(tokenizer, "mistral"), image_token_id=image, spatial_merge_size=2)
    raise KeyError(f"no tiny config for family {family!r}; families: {FAMILIES}")


def make_tiny_family(family: str, out_dir: str | Path | None = None, seed: int = 0):
    """A random model of `family` (fp32, eval mode) and its tokenizer; saved with a
    `preprocessor_config.json` (size, mean, std) to `out_dir` when given. Returns (model, tokenizer)."""
    from transformers import AutoModelForImageTextToText

    tokenizer = family_tokenizer(family)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(family_config(family, tokenizer)).eval()
    if family == "gemma3":
        # Initialised to zeros: H_v would be 0 and no gradient would reach the connector.
        torch.nn.init.normal_(model.model.multi_modal_projector.mm_input_projection_weight, std=0.02)
    if family == "blip-2":  # zeros too: every query would give the same H_v token
        torch.nn.init.normal_(model.query_tokens, std=0.02)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    if out_dir is not None:
        out_dir = Path(out_dir)
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
        write_json(out_dir / "preprocessor_config.json", {
            "size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE}, "image_mean": [0.5] * 3, "image_std": [0.5] * 3})
    return model, tokenizer
