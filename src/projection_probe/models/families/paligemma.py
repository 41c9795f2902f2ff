"""PaliGemma: SigLIP tower · Linear connector · Gemma LM.

Its prefix (image and prompt) is one bidirectional block and only the answer (suffix) is causal:
the LM's `token_type_ids` are 0 on the prefix and 1 on answer tokens. Positions start at 1.
"""
from __future__ import annotations

from projection_probe.models.facade import IGNORE_INDEX
from projection_probe.models.families.base import position_ids_from_mask
from projection_probe.models.families.hf import HFFamily


class PaliGemma(HFFamily):
    name = "paligemma"

    def position_ids(self, input_ids, attention_mask, image_mask):
        return position_ids_from_mask(attention_mask) + 1

    def lm_inputs(self, input_ids, attention_mask, image_mask, labels):
        suffix = labels != IGNORE_INDEX if labels is not None else input_ids.new_zeros(input_ids.shape, dtype=bool)
        return {"token_type_ids": suffix.long()}



# `plan`'s shapes for a folder named after these hub repositories that has no config.json yet (see llava.py).
_PALIGEMMA_3B_224 = {
    "model_type": "paligemma",
    "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 1152, "intermediate_size": 4304,
                      "num_hidden_layers": 27, "num_attention_heads": 16, "image_size": 224, "patch_size": 14,
                      "projection_dim": 2048},
    "text_config": {"model_type": "gemma", "hidden_size": 2048, "intermediate_size": 16384, "num_hidden_layers": 18,
                    "num_attention_heads": 8, "num_key_value_heads": 1, "head_dim": 256, "vocab_size": 257216,
                    "num_image_tokens": 256},
    "image_token_id": 257152, "projection_dim": 2048, "hidden_size": 2048, "vocab_size": 257216,
}
ASSUMED_CONFIGS = {"google/paligemma-3b-pt-224": _PALIGEMMA_3B_224, "google/paligemma-3b-mix-224": _PALIGEMMA_3B_224}

ADAPTERS = {"paligemma": PaliGemma()}
