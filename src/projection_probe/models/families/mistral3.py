"""Mistral3 (Pixtral tower · RMSNorm + 2×2 patch merger + MLP · Mistral LM).

Its connector takes `image_sizes` besides the features. Every image is resized to the tower's square
side S, so `image_sizes` is [S, S] for all and each image gives (S / patch / merge)² tokens. Its run
is the processor's: one row of `[IMG]` tokens per merged patch row, `[IMG_BREAK]` after each row but
the last, `[IMG_END]` after it.
"""
from __future__ import annotations

import torch

from projection_probe.models.families.hf import HFFamily, part_name


class Mistral3(HFFamily):
    name = "mistral3"
    image_token = "[IMG]"

    def columns(self, config) -> int:
        return self.side // config.vision_config.patch_size // config.spatial_merge_size

    def num_image_tokens(self, config):
        return self.columns(config) ** 2

    def image_sizes(self, batch: int) -> torch.Tensor:
        return torch.tensor([[self.side, self.side]] * batch)

    def image_features(self, model, pixel_values):
        return model.get_image_features(pixel_values, self.image_sizes(len(pixel_values)),
                                        vision_feature_layer=model.config.vision_feature_layer)

    def x_v_of(self, args, kwargs, batch):
        return args[0].reshape(batch, -1, args[0].shape[-1])  # all images' patches arrive as one sequence

    def connect(self, modules, x_v):
        batch = x_v.shape[0]
        connector = modules[part_name(self.connector_prefixes[0])]
        merged = connector(x_v.reshape(-1, x_v.shape[-1]), self.image_sizes(batch))
        return merged.view(batch, -1, merged.shape[-1])

    def image_run(self, image_token_id, num_image_tokens, tokenizer):
        columns = self.columns(self.model.config)
        row_break, end = tokenizer.convert_tokens_to_ids("[IMG_BREAK]"), tokenizer.convert_tokens_to_ids("[IMG_END]")
        run, is_image = [], []
        for row in range(num_image_tokens // columns):
            run += [image_token_id] * columns + [end if row == num_image_tokens // columns - 1 else row_break]
            is_image += [True] * columns + [False]
        return run, is_image


ADAPTERS = {"mistral3": Mistral3()}
