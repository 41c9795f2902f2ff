"""The paper's precision flags on the tiny LLaVA, on CPU: bf16 autocast and gradient checkpointing in
FT-Proj, FT-E2E and LoRA, and FT-E2E with bfloat16 weights (`model_dtype: bfloat16`). CPU autocast
supports bfloat16, so the same Trainer and facade code runs as on a GPU."""
from __future__ import annotations

import math

import pytest
import torch
from test_export import compare_logits
from test_train import TINY, KillAfterStep, llava_training_setup
from transformers import TrainerCallback

from projection_probe.features.cache import load_vision_cache
from projection_probe.io import load_safetensors
from projection_probe.models.loaders import load_facade
from projection_probe.train.data import CachedFeatureDataset, MultimodalCollator, read_train_examples
from projection_probe.train.export import export_llava_hf
from projection_probe.train.finetune import enable_gradient_checkpointing, finetune, prepare_for_training

# run name: (setting, model_dtype, learning rate); 3 epochs of 8 examples at batch 4 = 6 optimizer steps.
RUNS = {
    "ft-proj": ("ft-proj", "float32", 1e-2),
    "ft-e2e": ("ft-e2e", "float32", 3e-3),
    "ft-e2e-bf16-weights": ("ft-e2e", "bfloat16", 3e-3),
    "ft-lora": ("ft-lora", "float32", 3e-3),
}
PAPER_FLAGS = dict(bf16=True, gradient_checkpointing=True, epochs=3, seed=0, checkpoint_every_steps=2, **TINY)


class RecordPrecision(TrainerCallback):
    """What the training forward pass really ran with: the dtype of an attention projection's output
    (bf16 under autocast), whether autocast was on, the weights' dtypes and checkpointing."""

    def __init__(self):
        self.seen = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        q_proj = next(m for n, m in model.language_model.named_modules() if n.endswith("q_proj"))
        base_layer = getattr(q_proj, "base_layer", q_proj)  # a LoRA-wrapped linear keeps the original inside

        def hook(module, inputs, output):
            self.seen.setdefault("q_proj_output", output.dtype)
            self.seen.setdefault("autocast", torch.is_autocast_enabled("cpu"))

        q_proj.register_forward_hook(hook)
        self.seen.update(llm_weight=base_layer.weight.dtype, projector_weight=model.projector.linear_1.weight.dtype,
                         checkpointing=model.language_model.is_activation_checkpointing)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return llava_training_setup(tmp_path_factory.mktemp("precision"))


@pytest.fixture(scope="module")
def runs(setup):
    """runs[name] = (model folder, train log, what RecordPrecision saw); each run trains on first use,
    so that the quick lane pays only for the one it checks."""
    root, base, prompts, cache = setup

    class Runs(dict):
        def __missing__(self, name):
            setting, model_dtype, lr = RUNS[name]
            recorder = RecordPrecision()
            log = finetune(base, prompts, cache, root / name, setting, lr=lr, model_dtype=model_dtype,
                           callbacks=[recorder], **PAPER_FLAGS)
            self[name] = (root / name, log, recorder.seen)
            return self[name]

    return Runs()


# The quick lane trains the most demanding combination (bf16 weights, autocast, checkpointing); the
# other settings run in the full suite.
RUN_PARAMS = [name if name == "ft-e2e-bf16-weights" else pytest.param(name, marks=pytest.mark.slow)
              for name in RUNS]


@pytest.mark.parametrize("name", RUN_PARAMS)
def test_paper_precision_flags_train(runs, name):
    _, model_dtype, _ = RUNS[name]
    out, log, seen = runs[name]
    assert seen == {"llm_weight": getattr(torch, model_dtype), "projector_weight": torch.float32,
                    "checkpointing": True, "q_proj_output": torch.bfloat16, "autocast": True}
    losses = [s["loss"] for s in log["steps"]]
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-2:]) / 2 < losses[0] - 0.05, losses
    assert (out / "facade.json").exists()


@pytest.mark.slow
def test_bf16_runs_save_the_llm_in_bf16(runs):
    for name in ("ft-e2e", "ft-e2e-bf16-weights"):
        weights = load_safetensors(runs[name][0] / "language_model" / "model.safetensors")
        assert {t.dtype for t in weights.values()} == {torch.bfloat16}, name
    assert {t.dtype for t in load_safetensors(runs["ft-proj"][0] / "projector.safetensors").values()} == {torch.float32}


@pytest.mark.parametrize("name", RUN_PARAMS)
def test_precision_runs_export(runs, setup, name):
    root = setup[0]
    exported = root / f"{name}-llava"
    export_llava_hf(runs[name][0], exported)
    difference, _ = compare_logits(runs[name][0], exported)
    assert difference <= 1e-4


@pytest.mark.slow
def test_resume_with_precision_flags_equals_the_uninterrupted_run(runs, setup):
    """bf16 weights, bf16 Adam state and checkpointing survive a kill and a resume unchanged."""
    root, base, prompts, cache = setup
    setting, model_dtype, lr = RUNS["ft-e2e-bf16-weights"]
    reference, reference_log, _ = runs["ft-e2e-bf16-weights"]
    out = root / "resumed"
    with pytest.raises(KeyboardInterrupt):
        finetune(base, prompts, cache, out, setting, lr=lr, model_dtype=model_dtype,
                 callbacks=[KillAfterStep(3)], **PAPER_FLAGS)
    assert not out.exists()
    log = finetune(base, prompts, cache, out, setting, lr=lr, model_dtype=model_dtype, **PAPER_FLAGS)
    assert log["resumed_from"] == "checkpoint-2"
    assert [s["loss"] for s in log["steps"]] == pytest.approx([s["loss"] for s in reference_log["steps"]], abs=1e-6)
    for name in ("projector.safetensors", "language_model/model.safetensors"):
        a, b = load_safetensors(reference / name), load_safetensors(out / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name


def _gradients(base, prompts, cache_path, setting, checkpointing: bool, autocast: bool) -> tuple[dict, int]:
    """Gradients of the loss on one batch, and how many times the first decoder layer's MLP ran forward
    (counted by wrapping its `forward`: module hooks do not fire in checkpointing's recomputation)."""
    torch.manual_seed(0)  # the same LoRA initialisation in both runs
    facade = load_facade(base)
    prepare_for_training(facade, setting, lora_r=4, lora_alpha=8)
    for name, parameter in facade.named_parameters():
        if ".lora_B." in name:  # LoRA starts B at zero, which would leave A without a gradient to compare
            torch.nn.init.normal_(parameter, std=0.1)
    facade.train()
    if checkpointing:
        enable_gradient_checkpointing(facade)
    examples = read_train_examples(prompts)[:3]
    dataset = CachedFeatureDataset(examples, load_vision_cache(cache_path))
    batch = MultimodalCollator(facade)([dataset[i] for i in range(len(examples))])
    mlp = next(m for n, m in facade.language_model.named_modules() if n.endswith("layers.0.mlp"))
    calls, forward = [], mlp.forward

    def counted_forward(*args, **kwargs):
        calls.append(1)
        return forward(*args, **kwargs)

    mlp.forward = counted_forward
    torch.manual_seed(1)  # the same dropout masks (LoRA); checkpointing replays the RNG state
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = facade(**batch)["loss"]
    loss.backward()
    return {n: p.grad.clone() for n, p in facade.named_parameters() if p.requires_grad}, len(calls)


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
@pytest.mark.parametrize("setting", ["ft-proj", "ft-e2e", "ft-lora"])
def test_gradient_checkpointing_gives_the_same_gradients(setup, setting, autocast):
    _, base, prompts, cache = setup
    plain, plain_calls = _gradients(base, prompts, cache, setting, checkpointing=False, autocast=autocast)
    checkpointed, checkpointed_calls = _gradients(base, prompts, cache, setting, checkpointing=True, autocast=autocast)
    # Checkpointing is really on: the layer runs again in the backward pass.
    assert (plain_calls, checkpointed_calls) == (1, 2)
    assert plain.keys() == checkpointed.keys() and plain
    for name, grad in plain.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-7, msg=name)
