"""The paper's 2-GPU FT-E2E route, on CPU: two processes under `accelerate launch` (gloo) on the tiny
LLaVA, through a periodic checkpoint, a SIGKILL of both processes (as an out-of-memory kill), the
resume of the rerun job, the final model written by the main process, and its export.

FSDP itself cannot run here: accelerate 1.15 enables FSDP only for accelerator devices (in
`AcceleratorState`, the FSDP branch sits under MULTI_GPU/NPU/XPU/...), so a CPU launch of
config/accelerate/fsdp_2gpu.yaml becomes plain data parallel (MULTI_CPU) with its fsdp_config
ignored. The test therefore launches config/accelerate/ddp_2gpu.yaml on CPU: the same rule command,
CLI, Trainer, data-parallel world size, checkpoint/resume and publishing code. What only a 2-GPU run
exercises is listed in docs/training.md ("Multi-GPU"): the FSDP branches of FacadeTrainer
(`_save` / `_load_from_checkpoint` delegate to the Trainer's sharded checkpoints; `full_state_dict`
gathers the shards), FSDP2 wrapping of LlamaDecoderLayer, NCCL, bf16 autocast, and memory.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from test_train import make_llava_base, write_training_inputs

from projection_probe.io import load_safetensors, read_json
from projection_probe.models.loaders import load_facade

REPO = Path(__file__).resolve().parents[1]
DDP_CONFIG = REPO / "config" / "accelerate" / "ddp_2gpu.yaml"
# 8 train examples, per-device batch 2 on 2 processes, effective batch 4: 2 optimizer steps an epoch.
RUN = dict(lr=1e-3, effective_batch=4, per_device_batch=2, epochs=4, warmup_ratio=0.0, seed=0,
           checkpoint_every_steps=2)
KILL_AT_STEP = 6  # after checkpoints 2 and 4, before checkpoint 6

# Runs in each of the two processes: the fine-tune the rule runs, killed like an OOM kill (SIGKILL,
# no cleanup) once step KILL_AT_STEP is logged; rank 0 first writes the losses it has seen.
KILLED_RUN = """
import json, os, signal, sys, time
from transformers import TrainerCallback
from projection_probe.train.finetune import finetune

base, prompts, cache, out, losses_file, kill_at, run = sys.argv[1:]

class KillAfterLog(TrainerCallback):
    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.global_step == int(kill_at) and "loss" in (logs or {}):
            if state.is_world_process_zero:
                with open(losses_file + ".tmp", "w") as f:
                    json.dump({e["step"]: e["loss"] for e in state.log_history if "loss" in e}, f)
                os.replace(losses_file + ".tmp", losses_file)
            else:  # the launcher stops all processes when one dies: let rank 0 write first
                deadline = time.time() + 30
                while not os.path.exists(losses_file) and time.time() < deadline:
                    time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGKILL)

finetune(base, prompts, cache, out, "ft-e2e", gradient_checkpointing=True, callbacks=[KillAfterLog()],
         **json.loads(run))
"""


def cpu_accelerate_config(folder: Path) -> Path:
    """The repository's 2-process config, unchanged but for what a CPU run needs: CPU processes
    (gloo) and no bf16 autocast."""
    config = yaml.safe_load(DDP_CONFIG.read_text())
    assert config["num_processes"] == 2
    config.update(use_cpu=True, mixed_precision="no")
    config.pop("gpu_ids", None)
    path = folder / "ddp_cpu.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def launch(accelerate_config: Path, args: list[str], log: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file", str(accelerate_config),
           "--num_processes", "2", *args]
    with open(log, "w") as f:
        return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=300)


@pytest.mark.slow  # two 2-process launches: 45-80 s here, depending on the load
def test_two_process_fine_tune_survives_a_kill_resumes_and_exports(tmp_path):
    from transformers import LlavaForConditionalGeneration

    from projection_probe.train.export import export_llava_hf

    base = make_llava_base(tmp_path)
    facade = load_facade(base)
    prompts, cache = write_training_inputs(tmp_path / "data", facade.num_image_tokens, facade.vision.hidden_size)
    accelerate_config = cpu_accelerate_config(tmp_path)
    out = tmp_path / "models" / "ft-e2e"
    checkpoints = Path(f"{out}.work") / "checkpoints"

    # 1. Killed at step 6: nothing complete-looking, and only the newest checkpoint (4) is kept.
    driver = tmp_path / "killed_run.py"
    driver.write_text(KILLED_RUN)
    losses_file = tmp_path / "losses_before_kill.json"
    killed = launch(accelerate_config, [str(driver), str(base), str(prompts), str(cache), str(out),
                                        str(losses_file), str(KILL_AT_STEP), json.dumps(RUN)], tmp_path / "killed.log")
    log_text = (tmp_path / "killed.log").read_text()
    assert killed.returncode != 0, log_text[-3000:]
    assert not out.exists()
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-4"], log_text[-3000:]
    # The trainable weights (projector and LLM), AdamW state and one RNG state per process.
    saved_names = set(load_safetensors(checkpoints / "checkpoint-4" / "model.safetensors"))
    assert saved_names == {f"projector.{n}" for n in facade.projector.state_dict()} | {
        f"language_model.{n}" for n in facade.language_model.state_dict()}
    assert {"optimizer.pt", "scheduler.pt", "rng_state_0.pth", "rng_state_1.pth"} <= {
        p.name for p in (checkpoints / "checkpoint-4").iterdir()}
    before_kill = {int(k): v for k, v in json.loads(losses_file.read_text()).items()}
    assert sorted(before_kill) == list(range(1, KILL_AT_STEP + 1))

    # 2. The retry: the command the finetune rule runs, on the same folders.
    resumed = launch(accelerate_config, [
        "-m", "projection_probe.cli", "finetune", "--base-model", str(base), "--prompts", str(prompts),
        "--vision-cache", str(cache), "--setting", "ft-e2e", "--lr", str(RUN["lr"]),
        "--effective-batch", str(RUN["effective_batch"]), "--per-device-batch", str(RUN["per_device_batch"]),
        "--epochs", str(RUN["epochs"]), "--warmup-ratio", "0", "--seed", str(RUN["seed"]), "--no-bf16",
        "--gradient-checkpointing", "--checkpoint-every-steps", str(RUN["checkpoint_every_steps"]),
        "--threads", "1", "--out-dir", str(out)], tmp_path / "resumed.log")
    assert resumed.returncode == 0, (tmp_path / "resumed.log").read_text()[-3000:]
    log = read_json(out / "train_log.json")
    assert (log["world_size"], log["gradient_accumulation_steps"], log["optimizer_steps"]) == (2, 1, 8)
    assert log["resumed_from"] == "checkpoint-4"
    # Steps 5 and 6 recomputed from checkpoint 4 (weights, AdamW state, schedule, data order) give the
    # losses the killed run had.
    after = {s["step"]: s["loss"] for s in log["steps"]}
    for step in (5, 6):
        assert after[step] == pytest.approx(before_kill[step], abs=1e-5), step
    assert not Path(f"{out}.work").exists()

    # 3. The gathered model is whole: it loads, it differs from the base, and it exports to a
    # LlavaForConditionalGeneration whose language model holds exactly the saved weights.
    spec = read_json(out / "facade.json")
    assert spec["language_model"] == {"path": "language_model"} and spec["setting"] == "ft-e2e"
    saved = load_safetensors(out / "language_model" / "model.safetensors")
    tuned, original = load_facade(out), load_facade(base)
    assert not torch.equal(tuned.language_model.lm_head.weight, original.language_model.lm_head.weight)
    exported_dir = export_llava_hf(out, tmp_path / "exported")
    exported = LlavaForConditionalGeneration.from_pretrained(exported_dir)
    assert torch.equal(exported.lm_head.weight, saved["lm_head.weight"])
    embed = next(k for k in saved if k.endswith("embed_tokens.weight"))
    assert torch.equal(exported.model.language_model.embed_tokens.weight, saved[embed])
