"""Builders of the one facade: from a llava-hf checkpoint, or from separate parts.

`load_facade(model_dir)` rebuilds a facade from the `facade.json` that every model folder of the
workflow holds. Fine-tuned folders hold only what changed (a projector, an LLM, an adapter) plus a
pointer to their base, so the spec is resolved by merging along the `base` chain.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from projection_probe.io import InputError, load_safetensors, read_json
from projection_probe.models.facade import MultimodalLM
from projection_probe.models.projector import MLP2xGeluProjector, build_projector, projected_tokens
from projection_probe.models.spec import FacadeSpec
from projection_probe.models.templates import IMAGE_PLACEHOLDER
from projection_probe.models.vision import CLIP_MEAN, CLIP_STD, ClipVisionEncoder, EfficientNetLiteEncoder

log = logging.getLogger(__name__)

# transformers >= 4.52 saves `model.vision_tower.*`; the llava-hf hub checkpoints use `vision_tower.*`.
LLAVA_VISION_PREFIXES = ("model.vision_tower.", "vision_tower.")
LLAVA_PROJECTOR_PREFIXES = ("model.multi_modal_projector.", "multi_modal_projector.")


def resolve_device(device: str) -> str:
    """`auto` means the first GPU when there is one, else the CPU."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


# ---------------------------------------------------------------------------- llava-hf
def from_llava_hf(path: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu",
                  template: str = "v1", image_preprocessing: str = "pad",
                  trust_remote_code: bool = False) -> MultimodalLM:
    """Take vision tower, projector and LLM out of a `LlavaForConditionalGeneration` checkpoint.

    transformers' Llava keeps the decoder (`model.language_model`) and `lm_head` apart; they are
    hung onto a causal-LM shell of the text config's class so that the facade sees an ordinary HF
    causal LM. No weight is copied."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlavaForConditionalGeneration

    path = Path(path)
    if not (path / "config.json").exists():
        raise InputError(f"{path}: no config.json; model.llava_hf must point to a llava-hf checkpoint folder")
    config = _reproducible_llava_config(path, trust_remote_code)
    llava = LlavaForConditionalGeneration.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        causal_lm = AutoModelForCausalLM.from_config(config.text_config, trust_remote_code=trust_remote_code)
    setattr(causal_lm, causal_lm.base_model_prefix, llava.model.language_model)
    causal_lm.lm_head = llava.lm_head
    leftover = [n for n, p in causal_lm.named_parameters() if p.is_meta]
    if leftover:
        raise RuntimeError(f"LLM shell kept uninitialised parameters {leftover[:3]}")
    causal_lm.generation_config = llava.generation_config
    mean, std = _processor_mean_std(path)
    vision = ClipVisionEncoder(llava.model.vision_tower, config.vision_feature_layer,
                               config.vision_feature_select_strategy, mean, std)
    projector = projector_from_llava_config(config)
    projector.load_state_dict(llava.model.multi_modal_projector.state_dict(), strict=True)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    _check_image_token(tokenizer, config.image_token_id, path)
    facade = MultimodalLM(vision, projector, causal_lm, tokenizer, template=template,
                          image_token_id=config.image_token_id, image_preprocessing=image_preprocessing)
    return facade.to(device=device, dtype=dtype)


def _check_image_token(tokenizer, image_token_id: int, path: Path) -> None:
    """LLaVA-hf's tokenizer has `<image>` as a token of its own, with the config's `image_token_id`
    (what transformers' processor and an exported checkpoint put at the image positions)."""
    found = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    if found is None or found == tokenizer.unk_token_id or found != image_token_id:
        raise InputError(f"{path}: the tokenizer in this folder has no {IMAGE_PLACEHOLDER} token with the "
                         f"config's image_token_id {image_token_id} (it maps {IMAGE_PLACEHOLDER} to {found}); "
                         f"add it as llava-hf does (an added special token)")


def _reproducible_llava_config(path: Path, trust_remote_code: bool = False):
    """The checkpoint's `LlavaConfig`, refused where the facade would compute something else than
    transformers' Llava: the facade's vision encoder reads one hidden layer, and its projector is
    Linear-activation-Linear."""
    from transformers import AutoConfig
    from transformers.activations import ACT2FN

    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    where = path / "config.json"
    if config.model_type != "llava":
        raise InputError(f"{where}: model_type {config.model_type!r} is not 'llava'; the facade reproduces "
                         "LlavaForConditionalGeneration only")
    if not isinstance(config.vision_feature_layer, int):
        raise InputError(f"{where}: vision_feature_layer {config.vision_feature_layer!r} concatenates several "
                         "layers; the facade reads a single layer (an integer)")
    if config.projector_hidden_act not in ACT2FN:
        raise InputError(f"{where}: projector_hidden_act {config.projector_hidden_act!r} is not a transformers "
                         "activation; the facade's projector is Linear, that activation, Linear")
    if config.vision_feature_select_strategy not in ("default", "full"):
        raise InputError(f"{where}: vision_feature_select_strategy {config.vision_feature_select_strategy!r} "
                         "is unknown; the facade reproduces 'default' and 'full'")
    return config


def projector_from_llava_config(config) -> MLP2xGeluProjector:
    """An empty projector of the checkpoint's shape, activation (`projector_hidden_act`) and bias
    (`multimodal_projector_bias`), for a strict load of its weights. `config` has passed
    `_reproducible_llava_config`."""
    return MLP2xGeluProjector(config.vision_config.hidden_size, config.text_config.hidden_size,
                              bias=config.multimodal_projector_bias, hidden_act=config.projector_hidden_act)


def _processor_mean_std(path: Path):
    cfg_file = path / "preprocessor_config.json"
    if cfg_file.exists():
        cfg = read_json(cfg_file)
        return tuple(cfg.get("image_mean", CLIP_MEAN)), tuple(cfg.get("image_std", CLIP_STD))
    return CLIP_MEAN, CLIP_STD


def llava_hf_weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        return sorted({path / f for f in read_json(index)["weight_map"].values()})
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise InputError(f"{path}: no *.safetensors weights found")
    return files


def load_llava_hf_vision_and_projector(path: str | Path, dtype=torch.float32):
    """Vision tower and projector of a llava-hf checkpoint, reading only their tensors from the
    safetensors files: the LLM's weights are never read."""
    from transformers import CLIPVisionModel

    path = Path(path)
    config = _reproducible_llava_config(path)
    vision_state, projector_state = {}, {}
    for file in llava_hf_weight_files(path):
        from safetensors import safe_open
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                for prefix in LLAVA_VISION_PREFIXES:
                    if key.startswith(prefix):
                        vision_state[key[len(prefix):]] = f.get_tensor(key)
                for prefix in LLAVA_PROJECTOR_PREFIXES:
                    if key.startswith(prefix):
                        projector_state[key[len(prefix):]] = f.get_tensor(key)
    if not vision_state or not projector_state:
        raise InputError(f"{path}: no vision-tower or projector tensors found under {LLAVA_VISION_PREFIXES}")
    # Built on CPU rather than the meta device: non-persistent buffers (position ids) are not in the
    # checkpoint and must be initialised by the constructor.
    vision_model = CLIPVisionModel(config.vision_config)
    vision_model.load_state_dict(vision_state, strict=True)
    mean, std = _processor_mean_std(path)
    vision = ClipVisionEncoder(vision_model.to(dtype), config.vision_feature_layer,
                               config.vision_feature_select_strategy, mean, std)
    projector = projector_from_llava_config(config)
    projector.load_state_dict(projector_state, strict=True)
    return vision, projector.to(dtype), config


# ---------------------------------------------------------------------------- parts
def build_vision(spec: dict, dtype=torch.float32):
    kind = spec.get("kind")
    if kind == "efficientnet_lite0":
        return EfficientNetLiteEncoder(grid=spec.get("grid", 7)).to(dtype)
    if kind == "clip":
        from transformers import CLIPVisionModel

        path = Path(spec["path"])
        model = CLIPVisionModel.from_pretrained(path, dtype=dtype)
        mean, std = _processor_mean_std(path)
        return ClipVisionEncoder(model, spec.get("feature_layer", -2), spec.get("select_strategy", "default"),
                                 mean, std)
    if kind == "llava_hf":
        return load_llava_hf_vision_and_projector(spec["path"], dtype)[0]
    if kind == "family_checkpoint":  # the tower of any supported family, through its adapter
        from projection_probe.models.registry import load_family

        return load_family(spec["path"], dtype=dtype, image_side=spec.get("image_side")).vision
    raise InputError(f"vision kind {kind!r} is unknown; use efficientnet_lite0, clip, or a llava_hf or "
                     "family_checkpoint checkpoint")


def load_causal_lm(path: str | Path, dtype=torch.float32, trust_remote_code: bool = False):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").exists():
        raise InputError(f"{path}: no config.json; the language model folder is missing or incomplete")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


# ---------------------------------------------------------------------------- facade.json
def resolve_spec(model_dir: str | Path) -> dict:
    """The full spec of a model folder: its `facade.json` merged over its base's, with every path
    made absolute."""
    model_dir = Path(model_dir).resolve()
    spec = _absolute_paths(FacadeSpec.from_json(model_dir).as_dict(), model_dir)
    base = spec.pop("base", None)
    if base:
        merged = resolve_spec(base)
        for key, value in spec.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
        return merged
    return spec


_PATH_KEYS = ("path", "weights", "llava_hf", "family_checkpoint", "adapter", "base")


def _absolute_paths(obj, root: Path):
    if isinstance(obj, dict):
        return {k: (str((root / v).resolve()) if k in _PATH_KEYS and isinstance(v, str) else _absolute_paths(v, root))
                for k, v in obj.items()}
    return obj


def load_facade(model_dir: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32,
                with_language_model: bool = True, trust_remote_code: bool = False) -> MultimodalLM:
    """Rebuild the facade of a workflow model folder. With `with_language_model=False` only the
    vision tower and projector are loaded (feature extraction never reads LLM weights)."""
    device = resolve_device(device)
    spec = resolve_spec(model_dir)
    llava_path = spec.get("llava_hf")
    template = spec.get("template", "v1")
    preprocessing = spec.get("image_preprocessing", "pad")
    lm_spec = spec.get("language_model") or {}
    projector_spec = spec.get("projector") or {}

    if spec.get("family_checkpoint"):  # any supported family, through its adapter (models/registry.py)
        from projection_probe.models.registry import load_family

        if lm_spec.get("path"):  # finetune saves a family's fine-tuned LM as `weights` (write_trained_parts)
            raise InputError(f"{model_dir}: a language model folder ({lm_spec['path']}) over the family "
                             f"checkpoint {spec['family_checkpoint']} cannot be loaded; a fine-tuned family LM is "
                             "language_model.weights, its part's weights")

        facade = load_family(spec["family_checkpoint"], dtype=dtype, template=template,
                             image_preprocessing=preprocessing, trust_remote_code=trust_remote_code,
                             image_side=spec.get("image_side"))
    elif llava_path and with_language_model and not lm_spec.get("path"):
        facade = from_llava_hf(llava_path, dtype=dtype, template=template, image_preprocessing=preprocessing,
                               trust_remote_code=trust_remote_code)
    else:
        if llava_path:
            vision, projector, _ = load_llava_hf_vision_and_projector(llava_path, dtype)
        else:
            vision = build_vision(spec["vision"], dtype)
            projector = build_projector(projector_spec.get("kind", "mlp2x_gelu"), projector_spec["in_features"],
                                        projector_spec["out_features"])
        language_model = tokenizer = None
        if with_language_model:
            lm_path = lm_spec.get("path")
            if lm_path is None:
                raise InputError(f"{model_dir}: facade.json names no language_model.path")
            language_model, tokenizer = load_causal_lm(lm_path, dtype, trust_remote_code)
        elif llava_path or lm_spec.get("path"):
            tokenizer = None
        image_token_id = None
        if llava_path and with_language_model:
            from transformers import LlavaConfig

            image_token_id = LlavaConfig.from_pretrained(llava_path).image_token_id
        facade = MultimodalLM(vision, projector, language_model, tokenizer, template=template,
                              image_token_id=image_token_id, image_preprocessing=preprocessing,
                              num_image_tokens=projected_tokens(projector, vision.num_patches))
    if projector_spec.get("weights"):
        load_part_weights(facade.projector, projector_spec["weights"], "projector")
    if lm_spec.get("weights"):  # a family's fine-tuned LM (FT-E2E), over its checkpoint's
        load_part_weights(facade.language_model, lm_spec["weights"], "language model")
    if spec.get("lora") and with_language_model:
        from peft import PeftModel

        facade.language_model = PeftModel.from_pretrained(facade.language_model, spec["lora"]["adapter"])
    return facade.to(device=device, dtype=dtype)


def load_part_weights(part: torch.nn.Module, weights: str | Path, what: str) -> None:
    """A facade part's trained weights, refused naming the file where they do not fit the part."""
    missing, unexpected = part.load_state_dict(load_safetensors(weights), strict=False)
    if missing or unexpected:
        raise InputError(f"{weights}: {what} weights do not fit (missing {missing}, unexpected {unexpected})")


def save_projector(facade: MultimodalLM, path: str | Path) -> None:
    from projection_probe.io import save_safetensors

    save_safetensors(path, {k: v.detach().cpu() for k, v in facade.projector.state_dict().items()})

