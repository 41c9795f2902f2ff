"""Idefics3 and SmolVLM (the same code): SigLIP-style tower · pixel shuffle + Linear · Llama-style LM.

Images are not split into tiles (one global image per prompt, the run
`<fake_token_around_image><global-img>` + image tokens + `<fake_token_around_image>`), so every
image gives (patches / scale_factor²) tokens.
"""
from __future__ import annotations

from projection_probe.models.families.hf import HFFamily


class Idefics3(HFFamily):
    name = "idefics3"
    vision_prefixes = ("model.vision_model.",)
    connector_prefixes = ("model.connector.",)
    lm_prefixes = ("model.text_model.", "lm_head.")
    run_prefix = ("<fake_token_around_image>", "<global-img>")
    run_suffix = ("<fake_token_around_image>",)

    def num_image_tokens(self, config) -> int:
        return self.patches(config) // config.scale_factor ** 2

    def image_features(self, model, pixel_values):
        return model.get_image_features(pixel_values.unsqueeze(1))  # B images of one tile each


class SmolVLM(Idefics3):
    name = "smolvlm"



# `plan`'s shapes for a folder named after this hub repository that has no config.json yet (see llava.py).
# SmolVLM (v1) is an Idefics3 model: SigLIP-so400m at 384 px, pixel shuffle 3, SmolLM2-1.7B.
ASSUMED_CONFIGS = {
    "HuggingFaceTB/SmolVLM-Instruct": {
        "model_type": "idefics3",
        "vision_config": {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
                          "num_attention_heads": 16, "image_size": 384, "patch_size": 14},
        "text_config": {"model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192,
                        "num_hidden_layers": 24, "num_attention_heads": 32, "num_key_value_heads": 32,
                        "vocab_size": 49155, "max_position_embeddings": 16384, "tie_word_embeddings": False},
        "scale_factor": 3, "image_token_id": 49153,
    },
}

ADAPTERS = {"idefics3": Idefics3(), "smolvlm": SmolVLM()}
