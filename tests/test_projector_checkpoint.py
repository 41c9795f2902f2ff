"""The projector comes from the checkpoint: its activation (`projector_hidden_act`) and bias
(`multimodal_projector_bias`) are honoured and its weights load strictly; a config the facade cannot
reproduce is refused, naming the key."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from projection_probe.io import InputError
from projection_probe.models.loaders import from_llava_hf, load_llava_hf_vision_and_projector
from projection_probe.testing.tiny import make_tiny_llava

PROMPT = '<image>\nClassify this image into one of the following categories relating to textures: "banded".'


@pytest.fixture(scope="module")
def relu_no_bias(tmp_path_factory):
    path = tmp_path_factory.mktemp("llava_relu_nobias")
    model, _ = make_tiny_llava(path, projector_hidden_act="relu", multimodal_projector_bias=False)
    return path, model


@pytest.mark.parametrize("act, bias", [("gelu", True), ("relu", False), ("quick_gelu", True)])
def test_projector_matches_the_checkpoint(tmp_path, act, bias):
    model, _ = make_tiny_llava(tmp_path, projector_hidden_act=act, multimodal_projector_bias=bias)
    theirs = model.model.multi_modal_projector
    x_v = torch.randn(2, 16, theirs.linear_1.in_features)
    for projector in (from_llava_hf(tmp_path).projector, load_llava_hf_vision_and_projector(tmp_path)[1]):
        assert projector.hidden_act == act
        assert (projector.linear_1.bias is not None) == bias and (projector.linear_2.bias is not None) == bias
        with torch.no_grad():
            assert torch.equal(projector(x_v), theirs(x_v))


def test_facade_logits_equal_llava_with_a_relu_projector_without_bias(relu_no_bias):
    path, hf_model = relu_no_bias
    facade = from_llava_hf(path).eval()
    pixels = torch.randn(1, 3, 32, 32)
    inputs = facade.build_inputs([PROMPT])
    with torch.no_grad():
        ours = facade.logits(inputs, facade.encode_images(pixels))
        theirs = hf_model(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask,
                          pixel_values=pixels).logits
    assert (ours - theirs).abs().max().item() <= 1e-4
    # An exact-GELU projector on the same weights (the former loader) computes something else.
    gelu = torch.nn.GELU()
    with torch.no_grad():
        x_v = facade.encode_images(pixels)
        as_gelu = facade.projector.linear_2(gelu(facade.projector.linear_1(x_v)))
    assert not torch.allclose(as_gelu, facade.project(x_v), atol=1e-4)


def edited_copy(src, dst, **changes):
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config.update(changes)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


@pytest.mark.parametrize("changes, key", [
    ({"projector_hidden_act": "swishy"}, "projector_hidden_act"),
    ({"vision_feature_layer": [-2, -1]}, "vision_feature_layer"),
    ({"model_type": "llava_next"}, "model_type"),
])
def test_unreproducible_configs_are_refused_naming_the_key(relu_no_bias, tmp_path, changes, key):
    path = edited_copy(relu_no_bias[0], tmp_path / "llava", **changes)
    for load in (from_llava_hf, load_llava_hf_vision_and_projector):
        with pytest.raises(InputError, match=rf"{path / 'config.json'}: {key} "):
            load(path)
