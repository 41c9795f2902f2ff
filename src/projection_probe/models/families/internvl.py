"""InternVL: InternViT tower · pixel shuffle (in the model, before the connector) + LN-MLP · Qwen2 LM.

X_v is the connector's input, i.e. after the pixel shuffle: (patches × r²) tokens of width
D_v / r² with r = `downsample_ratio`. Each image's run is `<img>`, the image tokens, `</img>`.
"""
from __future__ import annotations

from projection_probe.models.families.hf import HFFamily


class InternVL(HFFamily):
    name = "internvl"
    image_token = "<IMG_CONTEXT>"
    run_prefix = ("<img>",)
    run_suffix = ("</img>",)

    def x_v_shape(self, config) -> tuple[int, int]:
        ratio = config.downsample_ratio
        return round(self.patches(config) * ratio ** 2), round(config.vision_config.hidden_size / ratio ** 2)

    def num_image_tokens(self, config) -> int:
        return self.x_v_shape(config)[0]

    def image_features(self, model, pixel_values):
        return model.get_image_features(pixel_values, vision_feature_layer=model.config.vision_feature_layer,
                                        vision_feature_select_strategy=model.config.vision_feature_select_strategy)


ADAPTERS = {"internvl": InternVL()}
