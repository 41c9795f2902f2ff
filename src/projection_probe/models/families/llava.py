"""LLaVA (llava-hf checkpoints) and the demo's `parts` model: the facade's own vision encoder and
projector and the default family hooks (`FamilyAdapter`), i.e. today's LLaVA-1.5 code path."""
from __future__ import annotations

from projection_probe.models.families.base import LLAVA

# What `plan` sizes a checkpoint folder of these names on while it has no config.json yet (no
# download): the published config.json's shapes, keyed by the hub repository the folder is named after.
ASSUMED_CONFIGS = {
    "llava-hf/llava-1.5-7b-hf": {
        "model_type": "llava",
        "vision_config": {"model_type": "clip_vision_model", "hidden_size": 1024, "num_hidden_layers": 24,
                          "num_attention_heads": 16, "intermediate_size": 4096, "image_size": 336, "patch_size": 14,
                          "projection_dim": 768},
        "text_config": {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32,
                        "num_attention_heads": 32, "num_key_value_heads": 32, "intermediate_size": 11008,
                        "vocab_size": 32064},
        "image_token_id": 32000, "vision_feature_layer": -2, "vision_feature_select_strategy": "default",
    },
}


class Llava:
    adapter = LLAVA

    @staticmethod
    def load(folder, dtype=None, device: str = "cpu", template: str = "v1", image_preprocessing: str = "pad",
             trust_remote_code: bool = False, image_side: int | None = None):
        import torch

        from projection_probe.io import InputError
        from projection_probe.models.loaders import from_llava_hf

        if image_side is not None:
            raise InputError(f"{folder}: image_side {image_side}: a llava model's tower fixes its image size")

        return from_llava_hf(folder, dtype=dtype or torch.float32, device=device, template=template,
                             image_preprocessing=image_preprocessing, trust_remote_code=trust_remote_code)


ADAPTERS = {"llava": Llava()}
