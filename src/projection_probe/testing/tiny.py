"""Tiny, randomly initialised models built offline, for tests and the micro config.

Nothing here downloads: the tokenizer is a byte-level BPE trained on a few sentences, and the
models are built from small configs and saved with `save_pretrained`.
"""
from __future__ import annotations

from pathlib import Path

import torch

from projection_probe.io import write_json
from projection_probe.models.templates import LLAVA_V1_SYSTEM
from projection_probe.models.vision import CLIP_MEAN, CLIP_STD

TINY_CORPUS = [
    LLAVA_V1_SYSTEM,
    "USER: ASSISTANT: Classify this image into one of the following categories relating to",
    "Only output a single final classification label and NOTHING ELSE. Output:",
    "zero one two three four five six seven eight nine ten red green blue shirt T-shirt trouser",
    "banded dotted striped leaf rust blight healthy acne eczema damage rescue vehicle affected",
    "clothing items handwritten digits textures plant leaf diseases skin diseases humanitarian categories",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 \" , . : - / ( ) '",
]
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]


def make_tiny_tokenizer(out_dir: str | Path | None = None, vocab_size: int = 400, extra_corpus: list[str] = ()):
    """A byte-level BPE tokenizer with Llama-style `<s>`/`</s>` specials and an `<image>` token.

    With a larger `vocab_size` (and `extra_corpus`) whole words of the corpus become single tokens, so
    that prompts have about as many tokens as with Llama's tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator((TINY_CORPUS + list(extra_corpus)) * 4, trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", bos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", additional_special_tokens=["<image>"])
    if out_dir is not None:
        fast.save_pretrained(out_dir)
    return fast


def tiny_llama_config(vocab_size: int, hidden: int = 64, layers: int = 2, tokenizer=None):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2,
                       num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=1024, tie_word_embeddings=False,
                       bos_token_id=getattr(tokenizer, "bos_token_id", 1),
                       eos_token_id=getattr(tokenizer, "eos_token_id", 2),
                       pad_token_id=getattr(tokenizer, "pad_token_id", 3))


def tiny_clip_vision_config(image_size: int = 32, patch_size: int = 8, hidden: int = 32):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(image_size=image_size, patch_size=patch_size, hidden_size=hidden,
                            intermediate_size=hidden * 2, num_hidden_layers=3, num_attention_heads=4,
                            projection_dim=hidden)


def _write_preprocessor_config(out_dir: Path, image_size: int) -> None:
    write_json(out_dir / "preprocessor_config.json", {
        "image_processor_type": "CLIPImageProcessor", "crop_size": {"height": image_size, "width": image_size},
        "size": {"shortest_edge": image_size}, "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD)})


def make_tiny_llava(out_dir: str | Path, seed: int = 0, image_size: int = 32, patch_size: int = 8,
                    tokenizer=None, **llava_config):
    """A random `LlavaForConditionalGeneration` (CLIP vision + Llama) with tokenizer, saved to out_dir.
    `tokenizer` replaces the tiny BPE one (it must hold `<image>`); `llava_config` overrides
    `LlavaConfig` keys (`projector_hidden_act`, `multimodal_projector_bias`, ...)."""
    tokenizer = tokenizer if tokenizer is not None else make_tiny_tokenizer()
    return make_random_llava(out_dir, tiny_clip_vision_config(image_size, patch_size),
                             tiny_llama_config(len(tokenizer), tokenizer=tokenizer), tokenizer, seed=seed,
                             **llava_config)


def llava_1_5_7b_configs(tokenizer=None):
    """(vision, text) configs with LLaVA-1.5-7B's exact shapes: CLIP ViT-L/14 at 336 px (576 patches of
    1024-d) and Vicuna-7B, i.e. Llama-2-7B with LLaVA's 32,064-token vocabulary."""
    from transformers import CLIPVisionConfig, LlamaConfig

    vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                              image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu")
    text = LlamaConfig(vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                       rms_norm_eps=1e-5, tie_word_embeddings=False,
                       bos_token_id=getattr(tokenizer, "bos_token_id", 1),
                       eos_token_id=getattr(tokenizer, "eos_token_id", 2),
                       pad_token_id=getattr(tokenizer, "pad_token_id", 0))
    return vision, text


def make_random_llava(out_dir: str | Path, vision_config, text_config, tokenizer, seed: int = 0,
                      dtype: torch.dtype = torch.float32, device: str = "cpu", **llava_config):
    """A randomly initialised `LlavaForConditionalGeneration` of the given configs with `tokenizer` (whose
    `<image>` token becomes the image token), saved to out_dir. `dtype` and `device` are where the
    weights are created: a 7B model is initialised in bf16 on a GPU in seconds, in fp32 on a CPU in
    minutes. `llava_config` overrides `LlavaConfig` keys."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    settings = dict(image_token_id=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_layer=-2,
                    vision_feature_select_strategy="default", projector_hidden_act="gelu")
    config = LlavaConfig(vision_config=vision_config, text_config=text_config, **{**settings, **llava_config})
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlavaForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(default_dtype)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    _write_preprocessor_config(out_dir, vision_config.image_size)
    return model, tokenizer


def make_tiny_clip(out_dir: str | Path, seed: int = 0, image_size: int = 32, patch_size: int = 8):
    """A random `CLIPModel` (text + vision) with tokenizer, for encoder zero-shot tests."""
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    tokenizer = make_tiny_tokenizer(out_dir)
    text = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=128, projection_dim=32,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id)
    config = CLIPConfig(text_config=text.to_dict(),
                        vision_config=tiny_clip_vision_config(image_size, patch_size).to_dict(), projection_dim=32)
    model = CLIPModel(config).eval()
    model.save_pretrained(out_dir)
    _write_preprocessor_config(out_dir, image_size)
    return model, tokenizer


def make_tiny_parts(out_dir: str | Path, seed: int = 0, image_size: int = 32, patch_size: int = 8):
    """Separate parts for a parts-built facade: a random CLIP vision tower folder (`vision/`) and a random
    Llama causal LM folder with tokenizer (`llm/`). Returns (vision_dir, llm_dir)."""
    from transformers import CLIPVisionModel, LlamaForCausalLM

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    vision_dir, llm_dir = out_dir / "vision", out_dir / "llm"
    CLIPVisionModel(tiny_clip_vision_config(image_size, patch_size)).save_pretrained(vision_dir)
    _write_preprocessor_config(vision_dir, image_size)
    tokenizer = make_tiny_tokenizer(llm_dir)
    lm = LlamaForCausalLM(tiny_llama_config(len(tokenizer), tokenizer=tokenizer))
    lm.generation_config.eos_token_id = tokenizer.eos_token_id
    lm.save_pretrained(llm_dir)
    return vision_dir, llm_dir
