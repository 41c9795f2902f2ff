"""LLaVA-NeXT and LLaVA-OneVision (the same code): CLIP/SigLIP tower per tile · MLP connector, then the
family's own unpad + `image_newline` packing · Llama/Qwen2 LM.

Each image is resized to the tower's square side S and tiled as "anyres" does for an S×S image: the
whole image, then the crops of the grid pinpoint that fits it best. Every image then has the same
tiles and `image_sizes` = [S, S], so X_v (all tiles' patches) and H_v (the packed tokens, newlines
included; what the LM reads) have one length per model. The connector is the projector and
`image_newline`; H_v is the packed sequence the family splices in.
"""
from __future__ import annotations

import numpy as np
import torch

from projection_probe.models.families.hf import HFFamily, part_name


class LlavaNext(HFFamily):
    name = "llava_next"
    connector_prefixes = ("model.multi_modal_projector.", "model.image_newline")

    # ------------------------------------------------------------------ tiles
    def grid(self) -> tuple[int, int]:
        """(rows, columns) of S-tiles of the pinpoint an S×S image is fitted into."""
        from transformers.image_processing_utils import select_best_resolution

        height, width = select_best_resolution((self.side, self.side), self.model.config.image_grid_pinpoints)
        return height // self.side, width // self.side

    @property
    def tiles(self) -> int:
        rows, columns = self.grid()
        return 1 + rows * columns

    def to_pixels(self, image):
        """C×S×S → tiles×C×S×S: the image, then its resized, centred and cut pinpoint canvas."""
        rows, columns = self.grid()
        scale = min(rows, columns)
        resized = torch.nn.functional.interpolate(torch.from_numpy(image)[None], scale_factor=scale,
                                                  mode="bilinear", align_corners=False)[0]
        canvas = torch.zeros(image.shape[0], rows * self.side, columns * self.side)
        top, left = (canvas.shape[1] - resized.shape[1]) // 2, (canvas.shape[2] - resized.shape[2]) // 2
        canvas[:, top:top + resized.shape[1], left:left + resized.shape[2]] = resized
        crops = [canvas[:, r * self.side:(r + 1) * self.side, c * self.side:(c + 1) * self.side]
                 for r in range(rows) for c in range(columns)]
        return np.stack([image, *(crop.numpy() for crop in crops)])

    # ------------------------------------------------------------------ shapes
    def tile_tokens(self, config) -> int:
        """X_v tokens per tile: the patches, and CLIP's CLS token where the strategy keeps it (SigLIP has none)."""
        has_cls = config.vision_config.model_type == "clip_vision_model"
        return self.patches(config) + (has_cls and config.vision_feature_select_strategy != "default")

    def x_v_shape(self, config):
        return self.tiles * self.tile_tokens(config), config.vision_config.hidden_size

    def num_image_tokens(self, config):
        tiles = torch.zeros(self.tiles, self.tile_tokens(config), config.text_config.hidden_size)
        return int(self.pack([tiles], torch.zeros(config.text_config.hidden_size))[1][0])  # shapes only

    # ------------------------------------------------------------------ hooks
    def image_sizes(self, batch: int) -> torch.Tensor:
        return torch.tensor([[self.side, self.side]] * batch)

    def feature_options(self, config) -> dict:
        return dict(vision_feature_layer=config.vision_feature_layer,
                    vision_feature_select_strategy=config.vision_feature_select_strategy)

    def image_features(self, model, pixel_values):
        return model.get_image_features(pixel_values, self.image_sizes(len(pixel_values)),
                                        **self.feature_options(model.config))

    def x_v_of(self, args, kwargs, batch):
        return args[0].reshape(batch, -1, args[0].shape[-1])  # all tiles of an image in one row

    def pack(self, features: list, newline):
        config = self.model.config
        return self.model.model.pack_image_features(features, self.image_sizes(len(features)),
                                                    config.vision_feature_select_strategy, image_newline=newline)

    def connect(self, modules, x_v):
        batch, width = x_v.shape[0], x_v.shape[-1]
        projected = modules[part_name(self.connector_prefixes[0])](x_v.reshape(batch * self.tiles, -1, width))
        packed, _ = self.pack(list(projected.split(self.tiles)), modules[part_name(self.connector_prefixes[1])])
        if isinstance(packed, (list, tuple)):  # OneVision packs a list, LLaVA-NeXT one tensor
            return torch.stack(list(packed))
        return packed.view(batch, -1, packed.shape[-1])


class LlavaOnevision(LlavaNext):
    name = "llava_onevision"

    def feature_options(self, config):
        return {**super().feature_options(config), "vision_aspect_ratio": config.vision_aspect_ratio}

    def pack(self, features, newline):
        return self.model.model.pack_image_features(features, self.image_sizes(len(features)), image_newline=newline,
                                                    vision_aspect_ratio=self.model.config.vision_aspect_ratio)


ADAPTERS = {"llava_next": LlavaNext(), "llava_onevision": LlavaOnevision()}
