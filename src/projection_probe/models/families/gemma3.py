"""Gemma3: SigLIP tower · average pool + RMSNorm + projection · Gemma3 LM.

The image tokens of one image attend to each other bidirectionally: the LM's `token_type_ids` are
1 at image positions. Each image's run is `<start_of_image>`, the image tokens, `<end_of_image>`.
"""
from __future__ import annotations

from projection_probe.models.families.hf import HFFamily


class Gemma3(HFFamily):
    name = "gemma3"
    image_token = "<image_soft_token>"
    run_prefix = ("<start_of_image>",)
    run_suffix = ("<end_of_image>",)

    def num_image_tokens(self, config) -> int:
        return config.mm_tokens_per_image

    def lm_inputs(self, input_ids, attention_mask, image_mask, labels):
        return {"token_type_ids": image_mask.long()}


ADAPTERS = {"gemma3": Gemma3()}
