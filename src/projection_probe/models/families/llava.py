"""LLaVA (llava-hf checkpoints) and the demo's `parts` model: the facade's own vision encoder and
projector and the default family hooks (`FamilyAdapter`), i.e. today's LLaVA-1.5 code path."""
from __future__ import annotations

from projection_probe.models.families.base import LLAVA


class Llava:
    adapter = LLAVA

    @staticmethod
    def load(folder, dtype=None, device: str = "cpu", template: str = "v1", image_preprocessing: str = "pad",
             trust_remote_code: bool = False):
        import torch

        from projection_probe.models.loaders import from_llava_hf

        return from_llava_hf(folder, dtype=dtype or torch.float32, device=device, template=template,
                             image_preprocessing=image_preprocessing, trust_remote_code=trust_remote_code)


ADAPTERS = {"llava": Llava()}
