"""Every supported model family through the one facade, against the family's own HF model.

One row per family, each on a tiny random model built offline (`testing/tiny_families.py`, fp32).
The reference side is the family's own `AutoModelForImageTextToText` fed as its processor feeds it;
the project side is the facade loaded from the saved folder through the family registry.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from projection_probe.io import InputError, write_json
from projection_probe.models.families.hf import hf_parameter_name
from projection_probe.models.registry import FAMILIES, REFUSED, family_adapter, load_family
from projection_probe.testing.tiny import make_tiny_tokenizer
from projection_probe.testing.tiny_families import FAMILIES as TINY_FAMILIES
from projection_probe.testing.tiny_families import make_tiny_family
from projection_probe.train.finetune import configure_trainable

PROMPT = ('<image>\nClassify this image into one of the following categories relating to textures: '
          '"banded", "dotted", "striped". Only output a single final classification label and NOTHING ELSE.')
LABELS = ["banded", "dotted", "striped"]
SHORT_PROMPT = "<image>\nClassify this texture."  # a training step needs no long prompt
# The llava row's connector and LM as its HF model names them (the facade holds its own modules there).
# Families whose H_v is the connector's output packed with newline tokens (what the LM reads).
ANYRES = ("llava_next", "llava_onevision")
LLAVA_PREFIXES = {"connector": ("model.multi_modal_projector.",), "lm": ("model.language_model.", "lm_head.")}


def random_images(n, size=40, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (size, size + 7 * i, 3), dtype=np.uint8)) for i in range(n)]


def prefixes(family: str, part: str) -> tuple[str, ...]:
    if family == "llava":
        return LLAVA_PREFIXES[part]
    return getattr(family_adapter(family), f"{part}_prefixes")


def hf_connector_output_module(hf_model, family: str):
    """The connector's last module, whose output is H_v (BLIP-2: `language_projection`)."""
    last_module = [p for p in prefixes(family, "connector") if p.endswith(".")][-1]
    return hf_model.get_submodule(last_module.rstrip("."))


def hf_pixel_inputs(family: str, pixels: torch.Tensor) -> dict:
    """Pixels as the family's processor hands them to its model (Idefics3: images × tiles; Qwen2-VL: all
    images' patches in one sequence and each image's grid)."""
    if family in ("qwen2_vl", "qwen2_5_vl"):
        side = int((pixels.shape[1]) ** 0.5)
        return {"pixel_values": pixels.flatten(0, 1), "image_grid_thw": torch.tensor([[1, side, side]] * len(pixels))}
    if family in (*ANYRES, "mistral3"):
        return {"pixel_values": pixels, "image_sizes": torch.tensor([list(pixels.shape[-2:])] * len(pixels))}
    return {"pixel_values": pixels.unsqueeze(1) if family in ("idefics3", "smolvlm") else pixels}


def hf_text_inputs(family: str, hf_model, input_ids: torch.Tensor) -> dict:
    """The token-type ids the family's processor returns with a prompt (no answer)."""
    if family == "gemma3":
        return {"token_type_ids": (input_ids == hf_model.config.image_token_id).long()}
    if family == "paligemma":
        return {"token_type_ids": torch.zeros_like(input_ids)}
    if family in ("qwen2_vl", "qwen2_5_vl"):
        return {"mm_token_type_ids": (input_ids == hf_model.config.image_token_id).int()}
    return {}


def hf_image_features(family: str, hf_model, pixels: torch.Tensor):
    kwargs = {}
    if family in ("internvl", *ANYRES):
        kwargs = dict(vision_feature_layer=hf_model.config.vision_feature_layer,
                      vision_feature_select_strategy=hf_model.config.vision_feature_select_strategy)
    return hf_model.get_image_features(**hf_pixel_inputs(family, pixels), **kwargs)


@pytest.fixture(scope="module", params=TINY_FAMILIES)
def family_case(request, tmp_path_factory):
    """(family, folder, the family's own HF model, the facade loaded from the folder)."""
    family = request.param
    folder = tmp_path_factory.mktemp(family)
    hf_model, _ = make_tiny_family(family, folder)
    return family, folder, hf_model, load_family(folder).eval()


def prompt_batch(facade, family, hf_model, seed=0):
    pixels = facade.vision.preprocess_images(random_images(1, seed=seed), "pad")
    inputs = facade.build_inputs([PROMPT])
    return pixels, inputs, {"input_ids": inputs.input_ids, "attention_mask": inputs.attention_mask,
                            **hf_pixel_inputs(family, pixels), **hf_text_inputs(family, hf_model, inputs.input_ids)}


def test_logits_equal_the_family_forward(family_case):
    family, _, hf_model, facade = family_case
    pixels, inputs, hf_inputs = prompt_batch(facade, family, hf_model)
    # The family's own image token is at the image positions, as its processor puts it there.
    assert bool((inputs.input_ids[inputs.image_mask] == facade.image_token_id).all())
    with torch.no_grad():
        ours = facade.logits(inputs, facade.encode_images(pixels))
        theirs = hf_model(**hf_inputs).logits
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() <= 1e-5


def test_greedy_answers_equal_the_family_generate(family_case):
    family, _, hf_model, facade = family_case
    pixels, inputs, hf_inputs = prompt_batch(facade, family, hf_model, seed=3)
    ours = facade._greedy(inputs, facade.encode_images(pixels), max_new_tokens=6, stop_at_newline=False)[0]
    theirs = hf_model.generate(**hf_inputs, max_new_tokens=6, do_sample=False)[0, inputs.input_ids.shape[1]:]
    theirs = [t for t in theirs.tolist() if t != facade.tokenizer.eos_token_id]
    assert ours == theirs[:len(ours)] and len(ours) == len(theirs)


def test_pooled_h_v_equals_the_pooled_connector_output(family_case):
    family, _, hf_model, facade = family_case
    pixels = facade.vision.preprocess_images(random_images(2, seed=4), "pad")
    seen = []
    handle = hf_connector_output_module(hf_model, family).register_forward_hook(lambda m, args, out: seen.append(out))
    try:
        with torch.no_grad():
            features = hf_image_features(family, hf_model, pixels)
    finally:
        handle.remove()
    if family in ANYRES:  # the projector's output, unpadded and with newlines: the family's own packing
        seen = [torch.stack(list(features.pooler_output)) if isinstance(features.pooler_output, (list, tuple))
                else features.pooler_output.view(2, -1, features.pooler_output.shape[-1])]
    with torch.no_grad():
        x_v = facade.encode_images(pixels)
        pre, post = facade.pooled_features(x_v)
    assert tuple(x_v.shape) == (2, facade.vision.num_patches, facade.vision.hidden_size)
    h_v = seen[0].float().reshape(2, -1, seen[0].shape[-1])  # Qwen2-VL's merger sees all images as one sequence
    assert post.shape[0] == 2 and (post - h_v.mean(1)).abs().max().item() <= 1e-6


def _one_step(facade, setting):
    trainable = configure_trainable(facade, setting)
    pixels = facade.vision.preprocess_images(random_images(2, seed=6), "pad")
    x_v = facade.encode_images(pixels)
    inputs = facade.build_inputs([SHORT_PROMPT, SHORT_PROMPT], answers=["dotted", "banded"])
    optimizer = torch.optim.SGD([p for p in facade.parameters() if p.requires_grad], lr=0.5)
    facade.loss(inputs, x_v).backward()
    optimizer.step()
    return trainable


def _hf_state(facade, family):
    """The parameters of the family's HF model behind the facade, by HF name."""
    if family == "llava":  # the facade's own parts, named as in LlavaForConditionalGeneration
        named = [("model.vision_tower.vision_model." + n.removeprefix("model.vision_model."), p)
                 for n, p in facade.vision.named_parameters()]
        named += [("model.multi_modal_projector." + n, p) for n, p in facade.projector.named_parameters()]
        lm = [(n.removeprefix("base_model.model."), p) for n, p in facade.language_model.named_parameters()]
        named += [(n.replace("model.", "model.language_model.", 1) if n.startswith("model.") else n, p) for n, p in lm]
    else:
        named = facade.vision.hf_model.named_parameters()
    # A LoRA-wrapped layer keeps its own weight as `base_layer`; its adapters are new parameters.
    return {n.replace(".base_layer", ""): p.detach().clone() for n, p in named if "lora_" not in n}


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_ft_proj_trains_the_connector_only_ft_e2e_the_lm_and_lora_adapters(family, tmp_path):
    make_tiny_family(family, tmp_path)
    connector, lm = prefixes(family, "connector"), prefixes(family, "lm")
    facade = load_family(tmp_path).eval()
    before = _hf_state(facade, family)
    _one_step(facade, "ft-proj")
    after = _hf_state(facade, family)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all(n.startswith(connector) for n in changed), sorted(changed)[:5]

    facade = load_family(tmp_path).eval()
    before = _hf_state(facade, family)
    _one_step(facade, "ft-e2e")
    after = _hf_state(facade, family)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert any(n.startswith(lm) for n in changed)
    assert all(n.startswith(connector + lm) for n in changed), sorted(changed)[:5]

    facade = load_family(tmp_path).eval()
    before = _hf_state(facade, family)
    trainable = _one_step(facade, "ft-lora")
    after = _hf_state(facade, family)
    assert set(after) == set(before)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all(n.startswith(connector) for n in changed), sorted(changed)[:5]  # the LM's own: untouched
    adapters = [p for n, p in facade.language_model.named_parameters() if "lora_B" in n]
    assert any("lora_" in n for n in trainable) and any(bool(p.abs().max() > 0) for p in adapters)


def test_tower_runs_once_per_image_and_labels_share_one_prefill(family_case):
    family, _, hf_model, facade = family_case
    tower = facade.vision
    images_seen = []
    handle = tower.register_forward_hook(lambda m, args, out: images_seen.append(args[0].shape[0]))
    try:
        pixels = facade.vision.preprocess_images(random_images(3, seed=8), "pad")
        x_v = facade.encode_images(pixels)
        facade.pooled_features(x_v)
    finally:
        handle.remove()
    assert sum(images_seen) == 3  # each image through the tower once, whatever the batching

    lm_calls = []
    handle = facade.language_model.register_forward_pre_hook(
        lambda m, args, kwargs: lm_calls.append(kwargs.get("inputs_embeds") is not None), with_kwargs=True)
    try:
        inputs = facade.build_inputs([PROMPT, PROMPT.replace("textures", "surface textures")])
        facade.score_labels(inputs, x_v[:2], LABELS)
        assert lm_calls.count(True) == 1  # one prefill for both images and all three labels
        lm_calls.clear()
        facade.constrained_generate(inputs, x_v[:2], LABELS)
        assert lm_calls.count(True) == 1
    finally:
        handle.remove()


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_m_rope_positions_are_three_axes_at_the_image(family, tmp_path):
    """Qwen2.5-VL would silently run 1-D positions if its M-RoPE ids were not passed: the facade's
    positions must differ across the height and width axes inside the image."""
    make_tiny_family(family, tmp_path)
    facade = load_family(tmp_path)
    inputs = facade.build_inputs([PROMPT, PROMPT.replace("textures", "surface textures")])
    positions = facade._position_ids(inputs)
    assert positions.shape == (3, *inputs.input_ids.shape)
    image = inputs.image_mask[0]
    assert not torch.equal(positions[1, 0, image], positions[2, 0, image])
    # After the image, text positions advance by one on all axes.
    last = positions[:, :, -1]
    assert torch.equal(last[0], last[1]) and torch.equal(last[1], last[2])


def test_image_side_sets_a_qwen2_vl_image_size_and_is_refused_where_the_tower_fixes_it(tmp_path):
    """`models.<name>.image_side` replaces the preprocessor's side where the family's image size is a
    setting (Qwen2-VL: 4-px patches merged 2x2, so a 48-px side gives (48/4)^2/4 = 36 tokens, 32 px 16);
    a family whose tower fixes the side refuses another one, naming it."""
    make_tiny_family("qwen2_vl", tmp_path / "qwen2_vl")
    assert load_family(tmp_path / "qwen2_vl").num_image_tokens == 16
    wider = load_family(tmp_path / "qwen2_vl", image_side=48)
    assert wider.num_image_tokens == 36
    pixels = wider.vision.preprocess_images(random_images(1), "pad")
    assert wider.vision.image_size == 48 and wider.encode_images(pixels).shape[1] == 144  # the merger's input
    make_tiny_family("idefics3", tmp_path / "idefics3")
    with pytest.raises(InputError, match="image_side 64"):
        load_family(tmp_path / "idefics3", image_side=64)


def test_registry_imports_no_torch_and_refuses_before_loading(tmp_path):
    """The config check and `plan` read the registry without torch; a family is checked by name alone."""
    code = ("import sys; from projection_probe.models.registry import FAMILIES, check_family; "
            "check_family('qwen2_vl', 'x'); print(sorted({'torch', 'transformers'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_tiny_family_is_registered():
    assert set(TINY_FAMILIES) <= set(FAMILIES)


# ---------------------------------------------------------------------------- refusals
def test_unsupported_model_type_is_refused_naming_folder_type_and_supported(tmp_path):
    write_json(tmp_path / "config.json", {"model_type": "bert"})
    with pytest.raises(InputError) as error:
        load_family(tmp_path)
    message = str(error.value)
    assert str(tmp_path) in message and "'bert'" in message and all(f in message for f in FAMILIES)


@pytest.mark.parametrize("model_type", ["mllama", "chameleon", "pix2struct"])
def test_families_without_an_h_v_sequence_are_refused_with_the_reason(tmp_path, model_type):
    write_json(tmp_path / "config.json", {"model_type": model_type})
    with pytest.raises(InputError, match=model_type) as error:
        load_family(tmp_path)
    assert REFUSED[model_type] in str(error.value)
    if model_type == "mllama":
        assert "cross-attention" in str(error.value)


def test_checkpoint_without_the_connector_is_refused_naming_the_prefix():
    model, tokenizer = make_tiny_family("paligemma")
    del model.model.multi_modal_projector
    with pytest.raises(InputError, match="'model.multi_modal_projector.'"):
        family_adapter("paligemma").facade_from_model(model, tokenizer, "tiny-paligemma")


def test_tokenizer_without_the_family_image_token_is_refused_naming_the_folder(tmp_path):
    make_tiny_family("gemma3", tmp_path)
    make_tiny_tokenizer(tmp_path)  # overwrites the tokenizer with one lacking <image_soft_token>
    with pytest.raises(InputError, match="image_soft_token") as error:
        load_family(tmp_path)
    assert str(tmp_path) in str(error.value)


@pytest.mark.parametrize("family", [f for f in TINY_FAMILIES if f != "llava"])
def test_part_parameters_map_back_to_the_family_names(family):
    """A trained part is saved under the family model's own names (what export writes). The llava row's
    parts are the facade's own modules, which train/export.py maps."""
    model, tokenizer = make_tiny_family(family)
    facade = family_adapter(family).facade_from_model(model, tokenizer, f"tiny-{family}", side=32)
    hf_params = dict(model.named_parameters(remove_duplicate=False))
    for part in (facade.vision, facade.projector):
        for name, p in part.named_parameters():
            assert hf_params[hf_parameter_name(name)] is p


# ---------------------------------------------------------------------------- model folders and export
@pytest.mark.parametrize("family", ["llava", "idefics3", "qwen2_vl"])
def test_an_ft_proj_folder_over_a_family_checkpoint_loads_and_exports_to_the_family_class(family, tmp_path):
    """facade.json's `family_checkpoint` names the family checkpoint; a fine-tuned connector saved by
    the project's own writer loads over it, and the export loads with the family's own HF class and
    gives the fine-tuned facade's logits."""
    from transformers import AutoModelForImageTextToText

    from projection_probe.models.loaders import load_facade, save_projector
    from projection_probe.models.spec import FacadeSpec
    from projection_probe.train.export import export_llava_hf

    checkpoint, base, tuned = tmp_path / "checkpoint", tmp_path / "base", tmp_path / "tuned"
    hf_model, _ = make_tiny_family(family, checkpoint)
    base.mkdir()
    FacadeSpec(family_checkpoint="../checkpoint").to_json(base)
    facade = load_facade(base).eval()
    _one_step(facade, "ft-proj")
    tuned.mkdir()
    save_projector(facade, tuned / "projector.safetensors")
    FacadeSpec(base="../base", projector={"weights": "projector.safetensors"}).to_json(tuned)
    reloaded = load_facade(tuned).eval()
    for (name, ours), theirs in zip(facade.projector.state_dict().items(), reloaded.projector.state_dict().values()):
        assert torch.equal(ours, theirs), name

    exported = export_llava_hf(tuned, tmp_path / "export")
    family_model = AutoModelForImageTextToText.from_pretrained(exported).eval()
    assert type(family_model) is type(hf_model)
    pixels, inputs, hf_inputs = prompt_batch(reloaded, family, family_model)
    with torch.no_grad():
        ours = reloaded.logits(inputs, reloaded.encode_images(pixels))
        theirs = family_model(**hf_inputs).logits
    assert (ours - theirs).abs().max().item() <= 1e-5
    assert not torch.equal(theirs, hf_model(**hf_inputs).logits)  # the fine-tuned connector, not the base's


def test_a_language_model_folder_over_a_family_checkpoint_is_refused_naming_the_folder(tmp_path):
    from projection_probe.models.loaders import load_facade
    from projection_probe.models.spec import FacadeSpec

    make_tiny_family("paligemma", tmp_path / "checkpoint")
    (tmp_path / "tuned").mkdir()
    FacadeSpec(family_checkpoint="../checkpoint", language_model={"path": "language_model"}).to_json(tmp_path / "tuned")
    with pytest.raises(InputError, match="cannot be loaded") as error:
        load_facade(tmp_path / "tuned")
    assert str(tmp_path / "tuned") in str(error.value)


# ---------------------------------------------------------------------------- plan
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_plan_sizes_a_family_from_its_config_json(family, tmp_path):
    """`plan`'s meta-device facade of a family's config.json has the real model's parameters and image
    tokens, and FT-Proj trains exactly the connector's parameters."""
    from projection_probe.plan.estimate import meta_facade
    from projection_probe.train.finetune import MODEL_DTYPES

    model, _ = make_tiny_family(family, tmp_path)
    real = load_family(tmp_path)
    meta = meta_facade(model.config.to_dict(), MODEL_DTYPES["float32"], image_side=32)
    assert meta.num_image_tokens == real.num_image_tokens
    assert (meta.vision.num_patches, meta.vision.hidden_size) == (real.vision.num_patches, real.vision.hidden_size)
    assert sum(p.numel() for p in meta.parameters()) == sum(p.numel() for p in model.parameters())
    configure_trainable(meta, "ft-proj")
    connector = prefixes(family, "connector")
    expected = sum(p.numel() for n, p in model.named_parameters() if n.startswith(connector))
    assert sum(p.numel() for p in meta.parameters() if p.requires_grad) == expected


def test_layer_states_cover_every_lm_layer_and_start_from_the_spliced_embeddings(family_case):
    """The analyses overlay's per-layer pass (`analysis/layers.py`) through the family's own forward."""
    from projection_probe.analysis.layers import num_hidden_layers

    family, _, _, facade = family_case
    pixels = facade.vision.preprocess_images(random_images(2, seed=9), "pad")
    inputs = facade.build_inputs([PROMPT, PROMPT.replace("textures", "surface textures")])
    with torch.no_grad():
        x_v = facade.encode_images(pixels)
        out, moved = facade._lm_forward(inputs, x_v, output_hidden_states=True, use_cache=False, logits_to_keep=1)
        embeds = facade.embed(moved, facade.project(x_v))
    assert len(out.hidden_states) == num_hidden_layers(facade) + 1
    assert out.hidden_states[0].shape == embeds.shape
    if family != "blip-2":  # BLIP-2's OPT adds its learned position embeddings before the first layer
        assert torch.equal(out.hidden_states[0], embeds)


@pytest.mark.parametrize("family", ["idefics3", "qwen2_vl"])
def test_an_ft_e2e_folder_over_a_family_checkpoint_loads_its_fine_tuned_lm_back(family, tmp_path):
    """finetune's writer saves a family's fine-tuned LM as its part's weights; the folder loads with that
    LM (every weight equal to the trained one, so the same logits), over the unchanged checkpoint."""
    from projection_probe.models.loaders import load_facade
    from projection_probe.models.spec import FacadeSpec
    from projection_probe.train.finetune import write_trained_parts

    checkpoint, base, tuned = tmp_path / "checkpoint", tmp_path / "base", tmp_path / "tuned"
    make_tiny_family(family, checkpoint)
    base.mkdir()
    FacadeSpec(family_checkpoint="../checkpoint").to_json(base)
    facade = load_facade(base).eval()
    _one_step(facade, "ft-e2e")
    tuned.mkdir()
    entries = write_trained_parts(facade, facade.state_dict(), "ft-e2e", tuned)
    FacadeSpec(base="../base").with_entries(entries).to_json(tuned)
    reloaded, untouched = load_facade(tuned).eval(), load_facade(base).eval()
    trained = dict(facade.language_model.named_parameters())
    changed = 0
    for name, p in reloaded.language_model.named_parameters():
        assert torch.equal(p, trained[name]), name
        changed += not torch.equal(p, dict(untouched.language_model.named_parameters())[name])
    assert changed  # the fine-tuned LM, not the checkpoint's
    pixels = facade.vision.preprocess_images(random_images(2, seed=3), "pad")
    inputs = facade.build_inputs([PROMPT, PROMPT])
    with torch.no_grad():
        assert torch.equal(reloaded.logits(inputs, reloaded.encode_images(pixels)),
                           facade.logits(inputs, facade.encode_images(pixels)))
