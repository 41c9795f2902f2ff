"""Evidence for the operational config keys (schema `x-kind: operational`): changing one leaves the
outputs equal, to float tolerance on CPU, so the workflow may change it without rerunning anything.
tests/test_config_kinds.py maps every operational key to the test here (or elsewhere) that shows it.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from projection_probe.io import load_safetensors, save_safetensors, write_jsonl

LABELS = ["banded", "dotted", "striped"]


def write_prompts_and_cache(folder: Path, num_patches: int, dim: int, n_train: int = 8, n_test: int = 6):
    """A LLaVA-format prompts file (train and test records) and a vision cache of random X_v."""
    folder.mkdir(parents=True, exist_ok=True)
    records, paths = [], []
    for i in range(n_train + n_test):
        path, label = f"images/img{i:03d}.png", LABELS[i % len(LABELS)]
        paths.append(path)
        # Prompts of different lengths, so that batches are left-padded.
        prompt = ("<image>\n" + "Look closely. " * (i % 3) + "Classify this texture: "
                  + ", ".join(f'"{c}"' for c in LABELS) + ". Only output a single final classification label.")
        records.append({"id": str(i), "image": path, "split": "train" if i < n_train else "test", "label": label,
                        "classes_order": LABELS,
                        "conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": label}]})
    write_jsonl(folder / "prompts_seed0.jsonl", records)
    x_v = torch.randn(len(paths), num_patches, dim, generator=torch.Generator().manual_seed(0)).half()
    save_safetensors(folder / "vision.safetensors", {"x_v": x_v, "pooled": x_v.float().mean(1).half()},
                     metadata={"image_paths": json.dumps(paths), "image_preprocessing": "pad"})
    return folder / "prompts_seed0.jsonl", folder / "vision.safetensors"


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    from projection_probe.models.loaders import load_facade
    from projection_probe.models.spec import FacadeSpec
    from projection_probe.testing.tiny import make_tiny_llava

    root = tmp_path_factory.mktemp("operational")
    make_tiny_llava(root / "llava")
    FacadeSpec(llava_hf=str(root / "llava"), template="v1").to_json(root / "base")
    facade = load_facade(root / "base")
    prompts, cache = write_prompts_and_cache(root / "data", facade.num_image_tokens, facade.vision.hidden_size)
    return root, root / "base", prompts, cache


# ---------------------------------------------------------------- classify.batch_size
@pytest.mark.parametrize("mode", ["generate", "constrained", "likelihood"])
def test_classify_batch_size_leaves_predictions_equal(tiny_setup, mode):
    """Greedy answers (temperature 0, the default); sampled ones depend on the batching, so with
    temperature > 0 the workflow makes the batch size a param of `generate` jobs."""
    from projection_probe.evaluate.classify import classify_records, test_records
    from projection_probe.features.cache import load_vision_cache
    from projection_probe.models.loaders import load_facade

    _, base, prompts, cache_path = tiny_setup
    facade, records, cache = load_facade(base).eval(), test_records(prompts), load_vision_cache(cache_path)
    frames = [classify_records(facade, records, cache, LABELS, mode=mode, batch_size=b, max_new_tokens=4)
              for b in (2, 8)]
    columns = ["image_path", "raw", "parsed", "valid"]
    assert frames[0][columns].equals(frames[1][columns]), (frames[0][columns], frames[1][columns])


# ---------------------------------------------------------------- features.batch_size, features.num_workers
@pytest.fixture(scope="module")
def images_and_vision(tmp_path_factory):
    from projection_probe.models.loaders import build_vision
    from projection_probe.testing.tiny import make_tiny_parts

    root = tmp_path_factory.mktemp("vision")
    make_tiny_parts(root / "parts")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(7):
        # Different sizes, so that the pad preprocessing has work to do.
        pixels = rng.integers(0, 256, size=(20 + 3 * i, 28, 3), dtype=np.uint8)
        paths.append(str(root / f"img{i}.png"))
        Image.fromarray(pixels).save(paths[-1])
    return root, paths, build_vision({"kind": "clip", "path": str(root / "parts" / "vision")})


def vision_cache_with(images_and_vision, name, **options):
    from projection_probe.features.cache import build_vision_cache

    root, paths, vision = images_and_vision
    build_vision_cache(vision, paths, root / f"{name}.safetensors", "pad", **options)
    return load_safetensors(root / f"{name}.safetensors")


def assert_same_tensors(a: dict, b: dict, atol: float):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].shape == b[k].shape, k
        assert torch.allclose(a[k].float(), b[k].float(), atol=atol), (k, (a[k].float() - b[k].float()).abs().max())


def test_vision_feature_batch_size_leaves_features_equal(images_and_vision):
    assert_same_tensors(vision_cache_with(images_and_vision, "b3", batch_size=3),
                        vision_cache_with(images_and_vision, "b16", batch_size=16), atol=1e-3)


def test_vision_feature_workers_leave_features_equal(images_and_vision):
    assert_same_tensors(vision_cache_with(images_and_vision, "w0", batch_size=4, num_workers=0),
                        vision_cache_with(images_and_vision, "w2", batch_size=4, num_workers=2), atol=0)


# ---------------------------------------------------------------- finetune: checkpoint interval, workers, threads
TRAINING = dict(setting="ft-proj", lr=1e-3, effective_batch=4, per_device_batch=2, epochs=2, warmup_ratio=0.0,
                seed=3)


def trained_projector(tiny_setup, name, **options):
    from projection_probe.train.finetune import finetune

    root, base, prompts, cache = tiny_setup
    finetune(base, prompts, cache, root / "models" / name, **TRAINING, **options)
    return load_safetensors(root / "models" / name / "projector.safetensors")


@pytest.fixture(scope="module")
def reference_projector(tiny_setup):
    return trained_projector(tiny_setup, "reference")


@pytest.mark.slow
def test_checkpoint_interval_leaves_trained_weights_equal(tiny_setup, reference_projector):
    """A checkpoint after every optimizer step (the reference writes none)."""
    assert_same_tensors(reference_projector, trained_projector(tiny_setup, "every_step", checkpoint_every_steps=1),
                        atol=1e-6)


@pytest.mark.slow
def test_data_loader_workers_leave_trained_weights_equal(tiny_setup, reference_projector):
    assert_same_tensors(reference_projector, trained_projector(tiny_setup, "workers", num_workers=2), atol=1e-6)


@pytest.mark.slow
def test_cpu_threads_leave_trained_weights_equal(tiny_setup, reference_projector):
    """Training is where rounding differences of parallel reductions would add up. Alignment runs the
    same training loop (train_facade), so this covers `resources.align_threads` as well."""
    from projection_probe.cli import set_threads

    before = torch.get_num_threads()
    try:
        set_threads(2 if before == 1 else 1)
        other = trained_projector(tiny_setup, "threads")
    finally:
        torch.set_num_threads(before)
    assert_same_tensors(reference_projector, other, atol=1e-5)
