"""Qwen2-VL and Qwen2.5-VL (the same code): ViT · 2×2 patch-merger MLP (`model.visual.merger`) · Qwen2 LM.

- Pixels: each image is P flattened patches (the family's own `patchify`), at one fixed square
  side (the preprocessor's `size`), so every image gives P / merge² image tokens; `image_grid_thw`
  is then the same [1, S/p, S/p] for every image.
- Positions: M-RoPE, 3×B×T, computed by the model's own `get_rope_index` from the image positions
  (`mm_token_type_ids`) and the grid, and passed explicitly: Qwen2.5-VL would otherwise fall back to
  1-D positions without a word when the token-type ids are missing.
- Qwen2.5-VL's tower runs in window order; the merger's input (X_v) is in that order, and H_v is put
  back into image order after the merger, as the family does.
"""
from __future__ import annotations

import torch

from projection_probe.models.families.hf import HFFamily, part_name


class Qwen2VL(HFFamily):
    name = "qwen2_vl"
    image_token = "<|image_pad|>"
    run_prefix = ("<|vision_start|>",)
    run_suffix = ("<|vision_end|>",)
    vision_prefixes = ("model.visual.patch_embed.", "model.visual.rotary_pos_emb.", "model.visual.blocks.")
    connector_prefixes = ("model.visual.merger.",)

    def image_side(self, config, preprocessor_side):
        unit = config.vision_config.patch_size * config.vision_config.spatial_merge_size
        if not preprocessor_side or preprocessor_side % unit:
            raise ValueError(f"{self.name}: the image side {preprocessor_side!r} (preprocessor_config.json size) "
                             f"must be a multiple of patch_size × spatial_merge_size = {unit}")
        return preprocessor_side

    @property
    def grid(self) -> torch.Tensor:
        side = self.side // self.model.config.vision_config.patch_size
        return torch.tensor([[1, side, side]])

    def to_pixels(self, image):
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        vision = self.model.config.vision_config
        return Qwen2VLImageProcessorPil.patchify(None, image, vision.patch_size, vision.spatial_merge_size,
                                                 vision.temporal_patch_size)[0]

    def x_v_shape(self, config):
        return self.patches(config), config.vision_config.embed_dim

    def num_image_tokens(self, config):
        return self.patches(config) // config.vision_config.spatial_merge_size ** 2

    def image_features(self, model, pixel_values):
        batch = pixel_values.shape[0]
        return model.get_image_features(pixel_values.flatten(0, 1), self.grid.repeat(batch, 1))

    def x_v_of(self, args, kwargs, batch):
        return args[0].view(batch, -1, args[0].shape[-1])  # the merger sees all images as one sequence

    def connect(self, modules, x_v):
        merged = modules[part_name(self.connector_prefixes[0])](x_v.flatten(0, 1))
        return merged.view(x_v.shape[0], -1, merged.shape[-1])

    def position_ids(self, input_ids, attention_mask, image_mask):
        grids = self.grid.repeat(input_ids.shape[0], 1).to(input_ids.device)  # one image per row
        positions, _ = self.model.model.get_rope_index(input_ids, mm_token_type_ids=image_mask.int(),
                                                       image_grid_thw=grids, attention_mask=attention_mask)
        return positions


class Qwen2_5_VL(Qwen2VL):  # noqa: N801 - the family's own name
    name = "qwen2_5_vl"

    def x_v_shape(self, config):
        return self.patches(config), config.vision_config.hidden_size

    def connect(self, modules, x_v):
        from transformers.vision_utils import get_vision_window_index

        vision = self.model.config.vision_config
        window_index, _ = get_vision_window_index(self.grid, vision.spatial_merge_size, vision.window_size,
                                                  vision.patch_size)
        merged = super().connect(modules, x_v)
        return merged[:, torch.argsort(window_index).to(merged.device)]


ADAPTERS = {"qwen2_vl": Qwen2VL(), "qwen2_5_vl": Qwen2_5_VL()}
