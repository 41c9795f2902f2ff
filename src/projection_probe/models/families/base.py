"""What a model family adapter says, and the thin modules that hand a family's own HF model to the facade.

The facade (`facade.py`) holds the one code path: prompts, loss, decoding, label scoring and pooled
features. A family adapter answers the questions on which families differ: which ids make up the
image run of a prompt, which positions the LM reads, which extra inputs its forward takes (Gemma's
token-type ids, Qwen2-VL's M-RoPE ids), where X_v is taken and what the connector is. `FamilyAdapter`
answers them as LLaVA-1.5 does, so the LLaVA path and the demo's `parts` model keep today's code.

For the other families the facade's three parts are wrappers over submodules of the family's own
`AutoModelForImageTextToText` (no weight is copied): `FamilyVision` (pixels → X_v, the connector's
input), `FamilyConnector` (X_v → H_v, the family's connector) and `FamilyLanguageModel`, whose
forward is the family's own HF forward fed with `inputs_embeds`, so its masks, positions and
scaling are the family's. Each wrapper registers only its own part's modules: freezing by part
(`train/finetune.py`'s `configure_trainable`) then freezes exactly the family's tower, connector or LM.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from projection_probe.io import InputError, read_json
from projection_probe.models.vision import VisionEncoder


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    # Left padding must not shift positions: each row counts from its first real token.
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class FamilyAdapter:
    """The family hooks of the facade, answered as LLaVA-1.5 does: one run of `n` image ids spliced
    at `<image>`, every run position an image position, 1-D positions from the attention mask and no
    extra LM inputs. Family adapters override what differs."""

    name = "llava"
    # The token the family's tokenizer must hold for its image positions (`image_token_id` in config).
    image_token = "<image>"

    def image_run(self, image_token_id: int, num_image_tokens: int, tokenizer) -> tuple[list[int], list[bool]]:
        """The ids spliced in place of `<image>` and, per id, whether it is an image position (where
        H_v goes). LLaVA's run is all image positions; a parts-built model's placeholder id is an
        ordinary vocabulary id, so positions cannot be found from the id."""
        return [image_token_id] * num_image_tokens, [True] * num_image_tokens

    def position_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_mask: torch.Tensor):
        """Prefill positions: B×T, or A×B×T for multi-axis (M-RoPE) positions. Decoding continues from
        the last prompt position + 1 on every axis."""
        return position_ids_from_mask(attention_mask)

    def lm_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_mask: torch.Tensor,
                  labels: torch.Tensor | None) -> dict:
        """Extra keyword inputs of the LM's prefill forward (token-type ids and the like)."""
        return {}


LLAVA = FamilyAdapter()


# ---------------------------------------------------------------------------- HF family wrappers
class _ConnectorInput(Exception):  # noqa: N818 - a signal, not an error
    def __init__(self, args, kwargs):
        self.args, self.kwargs = args, kwargs


def connector_input(connector: nn.Module, run: Callable[[], object]):
    """The (args, kwargs) the family's own code passes to `connector` when `run` runs: X_v as the
    family itself computes it. The connector does not run (a pre-hook stops the call), so taking X_v
    costs the tower only."""

    def stop(module, args, kwargs):
        raise _ConnectorInput(args, kwargs)

    handle = connector.register_forward_pre_hook(stop, with_kwargs=True)
    try:
        run()
    except _ConnectorInput as captured:
        return captured.args, captured.kwargs
    finally:
        handle.remove()
    raise RuntimeError(f"{type(connector).__name__} did not run while computing image features")


class FamilyVision(VisionEncoder):
    """Pixels → X_v (B×N×D_v) through the family's own image-feature code, stopped at its connector.
    Registers the tower (and any other frozen image-side module) only."""

    def __init__(self, model: nn.Module, modules: dict[str, nn.Module], encode: Callable[[torch.Tensor], torch.Tensor],
                 image_size: int, mean, std, hidden_size: int, num_patches: int,
                 to_pixels: Callable[[np.ndarray], np.ndarray | None] | None = None):
        super().__init__()
        self._to_pixels = to_pixels
        for name, module in modules.items():
            self.add_module(name, module)
        self.__dict__["hf_model"] = model  # not registered: its other parts belong to the other wrappers
        self._encode = encode
        self.image_size, self.mean, self.std = image_size, tuple(mean), tuple(std)
        self.hidden_size, self.num_patches = hidden_size, num_patches
        self.requires_grad_(False)

    def preprocess_images(self, images, mode: str) -> torch.Tensor:
        """B×C×S×S, or B×P×D where the family's model takes each image as P flattened patches."""
        pixels = super().preprocess_images(images, mode)
        if self._to_pixels is None:
            return pixels
        return torch.from_numpy(np.stack([self._to_pixels(image.numpy()) for image in pixels]))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self._encode(pixel_values.to(self.hf_model.dtype))


class FamilyConnector(nn.Module):
    """X_v → H_v: the family's own connector module, called as the family calls it (`call`)."""

    def __init__(self, modules: dict[str, nn.Module | nn.Parameter], call: Callable[..., torch.Tensor]):
        super().__init__()
        for name, part in modules.items():
            if isinstance(part, nn.Parameter):
                self.register_parameter(name, part)
            else:
                self.add_module(name, part)
        self._call = call

    def forward(self, x_v: torch.Tensor) -> torch.Tensor:
        return self._call(x_v)


class FamilyLanguageModel(nn.Module):
    """The family's LM as the facade calls a causal LM: its forward is the family's whole HF forward
    with `inputs_embeds` (prefill, H_v already spliced in) or `input_ids` (decoding steps) and no
    pixels. Registers the LM's modules only (decoder and head)."""

    def __init__(self, model: nn.Module, modules: dict[str, nn.Module]):
        super().__init__()
        for name, module in modules.items():
            self.add_module(name, module)
        self.__dict__["hf_model"] = model
        self.generation_config = model.generation_config
        self.config = model.config.get_text_config()  # what a causal LM's config says (layers, widths)

    def get_input_embeddings(self):
        return self.hf_model.get_input_embeddings()

    def get_output_embeddings(self):
        return self.hf_model.get_output_embeddings()

    # What peft's causal-LM wrapper (LoRA) and gradient checkpointing ask of the LM: the family model's own.
    def prepare_inputs_for_generation(self, *args, **kwargs):
        return self.hf_model.prepare_inputs_for_generation(*args, **kwargs)

    def activation_checkpointing_enable(self, **kwargs):
        self.hf_model.activation_checkpointing_enable(**kwargs)

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, position_ids=None,
                past_key_values=None, use_cache=None, labels=None, logits_to_keep=0, **kwargs):
        return self.hf_model(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                             position_ids=position_ids, past_key_values=past_key_values, use_cache=use_cache,
                             labels=labels, logits_to_keep=logits_to_keep, **kwargs)


def submodule(model: nn.Module, prefix: str, folder) -> nn.Module:
    """The module at a dotted parameter prefix (`model.multi_modal_projector.`), refused naming the
    prefix when the checkpoint has nothing there."""
    path = prefix.rstrip(".")
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise InputError(f"{folder}: the checkpoint has no {prefix!r} (its {type(model).__name__} lacks it), where "
                         "its family adapter expects that part; is this a checkpoint of that family?") from None


def parameter(model: nn.Module, name: str, folder) -> nn.Parameter:
    """The parameter `name` (a connector's learned queries), refused naming it when absent."""
    try:
        return model.get_parameter(name)
    except AttributeError:
        raise InputError(f"{folder}: the checkpoint has no {name!r} (its {type(model).__name__} lacks it), where "
                         "its family adapter expects that part; is this a checkpoint of that family?") from None


def check_covered(model: nn.Module, parts: list[nn.Module]) -> None:
    """Every parameter of the family's model belongs to exactly one facade part: a parameter outside
    them would train in no setting, and one in two would be frozen and trained at once."""
    owner = {}
    for part in parts:
        for p in part.parameters():
            if id(p) in owner and owner[id(p)] is not part:
                raise RuntimeError(f"{type(model).__name__}: a parameter belongs to two facade parts")
            owner[id(p)] = part
        owner.update((id(b), part) for b in part.buffers())
    # Buffers too: the facade moves its parts between devices, and a buffer outside them would stay.
    leftover = [n for n, p in [*model.named_parameters(), *model.named_buffers()] if id(p) not in owner]
    if leftover:
        raise RuntimeError(f"{type(model).__name__}: parameters or buffers {leftover[:3]} belong to no facade part")


def image_processor_settings(folder: Path, default_size: int) -> tuple[int, tuple, tuple]:
    """(square side, mean, std) from the folder's `preprocessor_config.json`. Images are resized to one
    fixed square side, so every image of a model gives the same number of image tokens."""
    config_file = Path(folder) / "preprocessor_config.json"
    config = read_json(config_file) if config_file.exists() else {}
    size = config.get("size") or {}
    side = size.get("height") or size.get("longest_edge") or size.get("shortest_edge") or default_size
    return int(side), tuple(config.get("image_mean", (0.5, 0.5, 0.5))), tuple(config.get("image_std", (0.5, 0.5, 0.5)))


def check_image_token(tokenizer, adapter: FamilyAdapter, image_token_id: int, folder) -> None:
    """The tokenizer must map the family's image token to the config's `image_token_id` (what the
    family's processor and an exported checkpoint put at the image positions)."""
    found = tokenizer.convert_tokens_to_ids(adapter.image_token)
    if found is None or found == tokenizer.unk_token_id or found != image_token_id:
        raise InputError(f"{folder}: the tokenizer in this folder has no {adapter.image_token} token with the "
                         f"config's image_token_id {image_token_id} (it maps {adapter.image_token} to {found}); "
                         f"a {adapter.name} checkpoint's tokenizer holds it as an added special token")
