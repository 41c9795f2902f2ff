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


ADAPTERS = {"idefics3": Idefics3(), "smolvlm": SmolVLM()}
