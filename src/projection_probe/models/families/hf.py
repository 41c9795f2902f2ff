"""The adapter shape shared by the families that run through their own `AutoModelForImageTextToText`.

A family file subclasses `HFFamily` and says where its tower, connector and LM live (parameter
prefixes of the HF model: the connector's are what FT-Proj trains, connector + LM what FT-E2E
trains), what X_v is, how many image tokens an image gives, which ids make up its image run and
what its LM forward needs besides the embeddings.

Image-token counts are made constant per model: images are resized to the tower's own square
`image_size` and never tiled, so X_v is N×D_v and H_v N_h×D_lm for every image of a model
(docs/architecture.md, "Adding a family").
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch

from projection_probe.io import InputError
from projection_probe.models.families.base import (
    FamilyAdapter,
    FamilyConnector,
    FamilyLanguageModel,
    FamilyVision,
    check_covered,
    check_image_token,
    connector_input,
    image_processor_settings,
    parameter,
    submodule,
)


def part_name(prefix: str) -> str:
    """A parameter prefix as a module name inside a facade part (`model.multi_modal_projector.` →
    `model__multi_modal_projector`); `hf_parameter_name` inverts it."""
    return prefix.rstrip(".").replace(".", "__")


def hf_parameter_name(part_key: str) -> str:
    """The family model's name of a facade part's parameter (`model__multi_modal_projector.linear.weight`
    → `model.multi_modal_projector.linear.weight`): what a trained part is saved and exported under."""
    head, _, rest = part_key.partition(".")
    return head.replace("__", ".") + ("." + rest if rest else "")


class HFFamily(FamilyAdapter):
    vision_prefixes: tuple[str, ...] = ("model.vision_tower.",)
    connector_prefixes: tuple[str, ...] = ("model.multi_modal_projector.",)
    lm_prefixes: tuple[str, ...] = ("model.language_model.", "lm_head.")
    # Tokens the family's processor puts before and after the image tokens of one image.
    run_prefix: tuple[str, ...] = ()
    run_suffix: tuple[str, ...] = ()
    # Set by `bind` on the facade's own copy of the adapter.
    model = None
    side: int | None = None

    def bind(self, model, side: int) -> HFFamily:
        """This adapter for one model and image side (hooks that need the model, e.g. M-RoPE, read them)."""
        bound = copy.copy(self)
        bound.model, bound.side = model, side
        return bound

    def image_side(self, config, preprocessor_side: int | None) -> int:
        """The square side every image is resized to: the tower's own `image_size`."""
        size = config.vision_config.image_size
        return size if isinstance(size, int) else size[0]

    # A family whose model takes each image as flattened patches sets a method: C×S×S array → P×D array.
    to_pixels = None

    # ------------------------------------------------------------------ shapes
    def patches(self, config) -> int:
        patch = config.vision_config.patch_size
        return (self.side // (patch if isinstance(patch, int) else patch[0])) ** 2

    def x_v_shape(self, config) -> tuple[int, int]:
        """(tokens, width) of X_v, the connector's input, for one image."""
        return self.patches(config), config.vision_config.hidden_size

    def num_image_tokens(self, config) -> int:
        """H_v tokens per image: the image positions of a prompt."""
        return self.patches(config)

    def language_model_part(self, model, modules: dict):
        """The facade's LM: by default the family's whole forward over the LM's modules."""
        return FamilyLanguageModel(model, modules)

    def image_token_id(self, config) -> int:
        return config.image_token_id

    # ------------------------------------------------------------------ hooks
    def image_features(self, model, pixel_values: torch.Tensor):
        """Runs the family's own image-feature code (stopped at the connector by `connector_input`)."""
        return model.get_image_features(pixel_values)

    def x_v_of(self, args: tuple, kwargs: dict, batch: int) -> torch.Tensor:
        """B×N×D_v X_v from the arguments the family passes to its connector for `batch` images."""
        return args[0] if args else next(iter(kwargs.values()))

    def connect(self, modules: dict, x_v: torch.Tensor) -> torch.Tensor:
        """H_v from X_v, as the family calls its connector."""
        return modules[part_name(self.connector_prefixes[0])](x_v)

    def image_run(self, image_token_id, num_image_tokens, tokenizer):
        before = [tokenizer.convert_tokens_to_ids(t) for t in self.run_prefix]
        after = [tokenizer.convert_tokens_to_ids(t) for t in self.run_suffix]
        run = before + [image_token_id] * num_image_tokens + after
        return run, [False] * len(before) + [True] * num_image_tokens + [False] * len(after)

    # ------------------------------------------------------------------ building
    def facade_from_model(self, model, tokenizer, folder, template: str = "v1", image_preprocessing: str = "pad",
                          mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), side: int | None = None):
        """The facade over an in-memory HF model of this family (its modules, not copies); `side` is the
        preprocessor's image side, where the family's image size is a setting rather than its tower's."""
        from projection_probe.models.facade import MultimodalLM

        config = model.config
        adapter = self.bind(model, self.image_side(config, side))
        image_token_id = adapter.image_token_id(config)
        if tokenizer is not None:  # None: a meta-device facade for `plan`, which tokenizes nothing
            check_image_token(tokenizer, adapter, image_token_id, folder)

        def parts(prefixes):  # a prefix without a trailing dot names a parameter (BLIP-2's `query_tokens`)
            return {part_name(p): submodule(model, p, folder) if p.endswith(".") else parameter(model, p, folder)
                    for p in prefixes}

        tower, connector_modules = parts(adapter.vision_prefixes), parts(adapter.connector_prefixes)
        lm = parts(adapter.lm_prefixes)
        first_connector = connector_modules[part_name(adapter.connector_prefixes[0])]

        def encode(pixel_values):
            args, kwargs = connector_input(first_connector, lambda: adapter.image_features(model, pixel_values))
            return adapter.x_v_of(args, kwargs, pixel_values.shape[0])

        tokens, width = adapter.x_v_shape(config)
        vision = FamilyVision(model, tower, encode, adapter.side, mean, std, width, tokens, adapter.to_pixels)
        connector = FamilyConnector(connector_modules, lambda x_v: adapter.connect(connector_modules, x_v))
        language_model = adapter.language_model_part(model, lm)
        check_covered(model, [vision, connector, language_model])
        if tokenizer is not None and tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        return MultimodalLM(vision, connector, language_model, tokenizer, template=template,
                            image_token_id=image_token_id, image_preprocessing=image_preprocessing,
                            num_image_tokens=adapter.num_image_tokens(config), family=adapter)

    def meta_facade(self, config_json: dict, dtype: torch.dtype, side: int | None = None):
        """The facade `load` would build, on the meta device from a `config.json` (no weights, no
        tokenizer): what `plan` counts parameters and image tokens on."""
        from transformers import AutoConfig, AutoModelForImageTextToText

        settings = {k: v for k, v in config_json.items() if k not in ("architectures", "transformers_version")}
        config = AutoConfig.for_model(**settings)
        with torch.device("meta"):
            model = AutoModelForImageTextToText.from_config(config).to(dtype)
        return self.facade_from_model(model, None, f"config.json of {settings['model_type']}", side=side)

    def load(self, folder: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu",
             template: str = "v1", image_preprocessing: str = "pad", trust_remote_code: bool = False,
             image_side: int | None = None):
        """The facade of a checkpoint folder of this family (weights, tokenizer, preprocessor config).
        `image_side` (the config's `models.<name>.image_side`) replaces the preprocessor's side where the
        family's image size is a setting (Qwen2-VL); where the tower fixes it, another side is refused."""
        from transformers import AutoModelForImageTextToText, AutoTokenizer

        folder = Path(folder)
        model = AutoModelForImageTextToText.from_pretrained(folder, dtype=dtype, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
        side, mean, std = image_processor_settings(folder, 0)
        facade = self.facade_from_model(model.eval(), tokenizer, folder, template, image_preprocessing, mean, std,
                                        image_side or side or None)
        if image_side is not None and facade.family.side != image_side:
            raise InputError(f"{folder}: image_side {image_side}: a {self.name} model sees {facade.family.side}-px "
                             "images (its tower's image_size); image_side applies only to families whose image "
                             "size is a preprocessor setting")
        return facade.to(device=device, dtype=dtype)
