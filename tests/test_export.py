"""export-llava: every fine-tuned folder becomes a LlavaForConditionalGeneration checkpoint whose logits
equal the facade's."""
from __future__ import annotations

import json

import pytest
import torch
from test_train import TINY, make_llava_base, write_training_inputs
from transformers import LlavaForConditionalGeneration

from projection_probe.io import InputError
from projection_probe.models.loaders import load_facade
from projection_probe.models.spec import FacadeSpec
from projection_probe.testing.tiny import make_tiny_parts
from projection_probe.train.export import export_llava_hf
from projection_probe.train.finetune import finetune

PROMPTS = ["<image>\nClassify this image: \"banded\", \"dotted\".",
           "<image>\nClassify this image into one of the following categories relating to textures: \"striped\"."]


def compare_logits(model_dir, exported_dir, seed=0):
    """Max |logit difference| between the facade of `model_dir` and the exported checkpoint on the
    same tokens and random pixels."""
    facade = load_facade(model_dir).eval()
    llava = LlavaForConditionalGeneration.from_pretrained(exported_dir).eval()
    size = facade.vision.image_size
    pixels = torch.randn(len(PROMPTS), 3, size, size, generator=torch.Generator().manual_seed(seed))
    inputs = facade.build_inputs(PROMPTS)
    # A parts-built facade marks image positions by place; LLaVA needs its image token there.
    input_ids = inputs.input_ids.masked_fill(inputs.image_mask, llava.config.image_token_id)
    with torch.no_grad():
        ours = facade.logits(inputs, facade.encode_images(pixels))
        theirs = llava(input_ids=input_ids, attention_mask=inputs.attention_mask, pixel_values=pixels).logits
    assert ours.shape == theirs.shape
    return (ours - theirs).abs().max().item(), theirs


@pytest.fixture(scope="module")
def tuned_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    base = make_llava_base(root)
    facade = load_facade(base)
    prompts, cache = write_training_inputs(root / "data", facade.num_image_tokens, facade.vision.hidden_size)
    models = {"original": base}
    for setting in ("ft-proj", "ft-e2e", "ft-lora"):
        models[setting] = root / setting
        finetune(base, prompts, cache, models[setting], setting, lr=1e-2, epochs=1, seed=0, **TINY)
    export_llava_hf(base, root / "original-llava")
    return root, models


@pytest.mark.parametrize("setting", ["original", "ft-proj", "ft-e2e", "ft-lora"])
def test_exported_llava_logits_equal_the_facade(tuned_models, setting):
    root, models = tuned_models
    exported = root / f"{setting}-llava"
    export_llava_hf(models[setting], exported)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"):
        assert (exported / name).exists(), name
    difference, logits = compare_logits(models[setting], exported)
    assert difference <= 1e-4
    if setting != "original":  # the fine-tune changed the exported model
        base_logits = compare_logits(models["original"], root / "original-llava")[1]
        assert (logits - base_logits).abs().max() > 1e-3


def test_parts_base_with_clip_vision_exports(tmp_path):
    from projection_probe.io import save_safetensors
    from projection_probe.models.projector import MLP2xGeluProjector

    vision_dir, llm_dir = make_tiny_parts(tmp_path / "parts")
    base = tmp_path / "base"
    save_safetensors(base / "projector.safetensors", MLP2xGeluProjector(32, 64).state_dict())
    FacadeSpec(vision={"kind": "clip", "path": str(vision_dir)},
               projector={"kind": "mlp2x_gelu", "in_features": 32, "out_features": 64,
                          "weights": "projector.safetensors"},
               language_model={"path": str(llm_dir)}, template="v1").to_json(base)
    exported = tmp_path / "exported"
    export_llava_hf(base, exported)
    config = json.loads((exported / "config.json").read_text())
    assert config["image_seq_length"] == 16 and config["vision_feature_layer"] == -2
    difference, _ = compare_logits(base, exported)
    assert difference <= 1e-4


def test_efficientnet_base_cannot_be_exported(tmp_path):
    base = tmp_path / "base"
    FacadeSpec(vision={"kind": "efficientnet_lite0"},
               projector={"kind": "mlp2x_gelu", "in_features": 1280, "out_features": 576},
               language_model={"path": "llm"}).to_json(base)
    with pytest.raises(InputError, match="efficientnet_lite0"):
        export_llava_hf(base, tmp_path / "exported")
    assert not (tmp_path / "exported").exists()
