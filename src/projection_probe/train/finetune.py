"""Fine-tuning of the facade with the transformers Trainer: FT-Proj, FT-E2E and LoRA.

The three settings differ only in which parameters require gradients (`configure_trainable`) and in
what is saved (`write_trained_parts`); the loop, optimizer, schedule, mixed precision, gradient
accumulation, checkpointing and multi-GPU sharding are the Trainer's.

The paper's runs (LLaVA's scripts on 2 GPUs) had no gradient accumulation; here it is derived at run
time as effective_batch / (per_device_batch × world_size), so one config reproduces the paper's
effective batch on any number of GPUs.

Resumability: checkpoints go to `<out_dir>.work/checkpoints` every `checkpoint_every_steps` optimizer
steps (weights of the trainable parameters only, optimizer, scheduler, RNG states, trainer state); a
rerun resumes from the last complete one. The final folder is written beside `out_dir` and renamed
into place, so a killed job never leaves a complete-looking model folder.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel, Trainer, TrainingArguments

from projection_probe.hyperparams import FinetuneHyperparams, LoraHyperparams, TrainingHyperparams, with_fields
from projection_probe.io import InputError, atomic_dir, save_safetensors, write_json
from projection_probe.models.spec import FACADE_FILE, FacadeSpec
from projection_probe.names import FINETUNE_SETTINGS

log = logging.getLogger(__name__)

WORK_SUFFIX = ".work"
CHECKPOINT_WEIGHTS = "model.safetensors"  # transformers' SAFE_WEIGHTS_NAME
TRAINER_STATE = "trainer_state.json"  # written last in a checkpoint: its presence marks a complete one
RUN_CONFIG = "run_config.json"
MODEL_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


# ---------------------------------------------------------------------------- trainable parameters
def find_lora_target_modules(language_model: nn.Module) -> list[str]:
    """Leaf names of every nn.Linear in the LLM except the output head: LLaVA's
    `find_all_linear_names` (for Llama: q/k/v/o_proj, gate/up/down_proj)."""
    output_head = language_model.get_output_embeddings() if hasattr(language_model, "get_output_embeddings") else None
    names = set()
    for name, module in language_model.named_modules():
        if isinstance(module, nn.Linear) and module is not output_head:
            names.add(name.rsplit(".", 1)[-1])
    names.discard("lm_head")
    if not names:
        raise InputError(f"{type(language_model).__name__}: no nn.Linear layers to put LoRA adapters on")
    return sorted(names)


def configure_trainable(facade, setting: str, lora: LoraHyperparams | None = None, **lora_fields) -> list[str]:
    """Set `requires_grad` for a setting and return the trainable parameter names.

    ft-proj: the projector only. ft-e2e: projector and the whole LLM. ft-lora: LoRA adapters on all
    LLM linears (the LLM is wrapped in a peft model) and the projector, shaped by `lora` (or its
    fields as keywords). The vision tower is frozen in every setting."""
    if setting not in FINETUNE_SETTINGS:
        raise InputError(f"setting {setting!r} is unknown; use one of {FINETUNE_SETTINGS} "
                         "(the original setting needs no training)")
    facade.requires_grad_(False)
    facade.projector.requires_grad_(True)
    if setting == "ft-e2e":
        facade.language_model.requires_grad_(True)
    elif setting == "ft-lora":
        from peft import LoraConfig, get_peft_model

        lora = with_fields(LoraHyperparams, lora, lora_fields)
        config = LoraConfig(r=lora.lora_r, lora_alpha=lora.lora_alpha, lora_dropout=lora.lora_dropout, bias="none",
                            target_modules=find_lora_target_modules(facade.language_model), task_type="CAUSAL_LM")
        facade.language_model = get_peft_model(facade.language_model, config)
    return [name for name, p in facade.named_parameters() if p.requires_grad]


def enable_gradient_checkpointing(facade) -> None:
    """Recompute each LLM layer's activations in the backward pass instead of storing them.

    Non-reentrant checkpointing needs no input that requires grad, so it also works when only the
    projector (whose output feeds the LLM) or only adapters are trained."""
    facade.language_model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})


def prepare_for_training(facade, setting: str, hp: FinetuneHyperparams | None = None, **fields) -> list[str]:
    """Make a loaded facade ready for `train_facade` in one setting (`hp`'s model_dtype, template and
    LoRA shape, or those fields as keywords; the rest of `hp` is not read); returns the trainable names.

    Training reads cached X_v, so the frozen vision tower is dropped (it would only hold memory).
    The LLM is cast to `model_dtype`; the projector (21M parameters for 7B) always trains in float32,
    also when the LLM is bf16: bf16 would round away most of its small updates."""
    from projection_probe.models.templates import get_template

    if hp is None:  # only the fields read here matter: the schedule's required ones get placeholders
        hp = FinetuneHyperparams(lr=0.0, effective_batch=1, per_device_batch=1)
    hp = with_fields(FinetuneHyperparams, hp, fields)
    if hp.model_dtype not in MODEL_DTYPES:
        raise InputError(f"model_dtype {hp.model_dtype!r} is unknown; use one of {sorted(MODEL_DTYPES)}")
    facade.vision = None
    facade.to(MODEL_DTYPES[hp.model_dtype])
    facade.projector.float()
    if hp.template:
        facade.template = get_template(hp.template)
    return configure_trainable(facade, setting, hp)


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def gradient_accumulation_steps(effective_batch: int, per_device_batch: int, world_size: int) -> int:
    per_step = per_device_batch * world_size
    if effective_batch < 1 or per_device_batch < 1 or effective_batch % per_step:
        raise InputError(f"effective_batch={effective_batch} is not a positive multiple of per_device_batch "
                         f"({per_device_batch}) × number of processes ({world_size}); change one of them")
    return effective_batch // per_step


# ---------------------------------------------------------------------------- trainer
class FacadeTrainer(Trainer):
    """The Trainer with two changes for a partly frozen multimodal model:

    - `projector_lr`: the projector gets its own learning rate (LLaVA's `mm_projector_lr`, used by
      the LoRA script); other trainable parameters use `learning_rate`.
    - Checkpoints hold only the trainable parameters. Frozen weights are always reloaded from the
      base model, and an FT-Proj checkpoint of a 7B model is then 84 MB instead of 14 GB.
      Under FSDP the Trainer's own sharded checkpoints are used unchanged.
    """

    def __init__(self, *args, projector_lr: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.projector_lr = projector_lr

    def create_optimizer(self, model=None):
        if self.projector_lr is None or self.optimizer is not None:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        projector_ids = {id(p) for p in self.accelerator.unwrap_model(opt_model).projector.parameters()}
        decay = set(self.get_decay_parameter_names(opt_model))
        groups = []
        for in_projector in (False, True):
            for decays in (True, False):
                params = [p for n, p in opt_model.named_parameters()
                          if p.requires_grad and (id(p) in projector_ids) == in_projector and (n in decay) == decays]
                if params:
                    group = {"params": params, "weight_decay": self.args.weight_decay if decays else 0.0}
                    if in_projector:
                        group["lr"] = self.projector_lr
                    groups.append(group)
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def _trainable_names(self) -> set[str]:
        model = self.accelerator.unwrap_model(self.model)
        return {n for n, p in model.named_parameters() if p.requires_grad}

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            return super()._save(output_dir, state_dict)
        if not self.args.should_save:
            return
        from safetensors.torch import save_file

        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        if state_dict is None:
            state_dict = self.accelerator.unwrap_model(self.model).state_dict()
        trainable = self._trainable_names()
        tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items() if k in trainable}
        save_file(tensors, os.path.join(output_dir, CHECKPOINT_WEIGHTS), metadata={"format": "pt"})
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        from safetensors.torch import load_file

        model = self.accelerator.unwrap_model(model if model is not None else self.model)
        path = os.path.join(resume_from_checkpoint, CHECKPOINT_WEIGHTS)
        if not os.path.isfile(path):
            raise InputError(f"{path}: checkpoint weights missing; delete {resume_from_checkpoint} and rerun")
        state = load_file(path, device="cpu")
        trainable = self._trainable_names()
        if set(state) != trainable:
            raise InputError(f"{path}: holds {len(state)} tensors but the model has {len(trainable)} trainable "
                             f"parameters (e.g. missing {sorted(trainable - set(state))[:2]}, unexpected "
                             f"{sorted(set(state) - trainable)[:2]}); the checkpoint is from another setting: "
                             f"delete {Path(resume_from_checkpoint).parent.parent} and rerun")
        model.load_state_dict(state, strict=False)


def last_complete_checkpoint(checkpoint_dir: Path, delete_incomplete: bool = True) -> str | None:
    """The newest `checkpoint-N` that holds its trainer state (written last); partial ones, from a
    job killed while saving, are skipped and (by the main process) deleted."""
    if not checkpoint_dir.is_dir():
        return None
    found = sorted((int(p.name.split("-")[1]), p) for p in checkpoint_dir.glob("checkpoint-*")
                   if p.is_dir() and p.name.split("-")[1].isdigit())
    for _, path in reversed(found):
        try:
            # Readable JSON, not mere presence: transformers creates the file before writing it.
            json.loads((path / TRAINER_STATE).read_text())
            return str(path)
        except (OSError, ValueError):
            pass
        log.warning("%s: incomplete checkpoint (no readable %s), skipping it", path, TRAINER_STATE)
        if delete_incomplete:
            shutil.rmtree(path, ignore_errors=True)
    return None


def prepare_work_dir(work_dir: Path, run_config: dict, is_main: bool) -> None:
    """Create `work_dir`; stale checkpoints from a run with another configuration are
    discarded, so a changed hyperparameter never resumes the old run."""
    checkpoint_dir = work_dir / "checkpoints"
    config_file = work_dir / RUN_CONFIG
    if is_main:
        if config_file.exists() and json.loads(config_file.read_text()) != run_config:
            log.warning("%s: configuration changed since the checkpoints were written; starting afresh", work_dir)
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
        work_dir.mkdir(parents=True, exist_ok=True)
        write_json(config_file, run_config)


def _check_optimizer(optim: str) -> None:
    if "8bit" in optim or optim.startswith("paged_"):
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise InputError(f"optim={optim!r} needs bitsandbytes (`pip install bitsandbytes`, CUDA only); "
                             "use adamw_torch or adamw_torch_fused") from None


def training_arguments(hp: TrainingHyperparams, checkpoint_dir: Path) -> TrainingArguments:
    """The Trainer's arguments for the schedule `hp`, checkpointing into `checkpoint_dir`. The
    accumulation steps are set once the number of processes is known (see train_facade)."""
    save_steps = hp.checkpoint_every_steps if hp.checkpoint_every_steps and hp.checkpoint_every_steps > 0 else None
    return TrainingArguments(
        output_dir=str(checkpoint_dir),
        per_device_train_batch_size=hp.per_device_batch,
        gradient_accumulation_steps=1,
        learning_rate=hp.lr,
        num_train_epochs=hp.epochs,
        warmup_steps=hp.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        weight_decay=hp.weight_decay,
        lr_scheduler_type=hp.lr_scheduler,
        max_grad_norm=clipping(hp) or 0.0,  # 0 = no clipping (paper)
        optim=hp.optim,
        seed=hp.seed,
        data_seed=hp.seed,
        bf16=hp.bf16,
        logging_steps=1,
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        save_total_limit=1,
        report_to="none",
        remove_unused_columns=False,  # the collator needs the raw prompt/answer strings
        label_names=["labels"],
        dataloader_num_workers=hp.num_workers,
        dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=True,
        # Without CUDA, processes started by torchrun / accelerate launch form a CPU (gloo) group only
        # when told they are CPU processes.
        use_cpu=not torch.cuda.is_available(),
        ddp_find_unused_parameters=False,  # every trainable parameter is used in every forward pass
    )


def clipping(hp: TrainingHyperparams) -> float | None:
    """The gradient-norm bound, None when off: the run configuration (and facade.json) read the same for
    0 and None."""
    return hp.max_grad_norm if hp.max_grad_norm and hp.max_grad_norm > 0 else None


def schedule_config(hp: TrainingHyperparams, projector_lr: float | None, num_examples: int, world_size: int) -> dict:
    """The schedule's part of a run configuration: a checkpoint resumes only a run with the same one."""
    return dict(lr=hp.lr, effective_batch=hp.effective_batch, per_device_batch=hp.per_device_batch,
                epochs=hp.epochs, warmup_ratio=hp.warmup_ratio, weight_decay=hp.weight_decay,
                lr_scheduler=hp.lr_scheduler, max_grad_norm=clipping(hp), seed=hp.seed, bf16=hp.bf16,
                projector_lr=projector_lr, optim=hp.optim, num_examples=num_examples, world_size=world_size)


def training_log(trainer: FacadeTrainer, result, hp: TrainingHyperparams, num_examples: int,
                 resume: str | None) -> dict:
    """What train_log.json records of a finished run: sizes, steps, losses and throughput."""
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    return {
        "trainable_parameters": count_parameters(unwrapped),
        "total_parameters": count_parameters(unwrapped, trainable_only=False),
        "num_examples": num_examples,
        "world_size": trainer.args.world_size,
        "per_device_batch": hp.per_device_batch,
        "gradient_accumulation_steps": trainer.args.gradient_accumulation_steps,
        "effective_batch": hp.effective_batch,
        "optimizer_steps": trainer.state.global_step,
        "resumed_from": Path(resume).name if resume else None,
        # Runtime and throughput cover this process's part of the run only (after a resume, the rest).
        "train_runtime_s": result.metrics.get("train_runtime"),
        "train_samples_per_second": result.metrics.get("train_samples_per_second"),
        "train_loss": result.metrics.get("train_loss"),
        "steps": [{"step": e["step"], "loss": e["loss"], "learning_rate": e.get("learning_rate"),
                   "grad_norm": e.get("grad_norm")} for e in trainer.state.log_history if "loss" in e],
    }


def train_facade(facade, train_dataset, work_dir: str | Path, hp: TrainingHyperparams, *,
                 projector_lr: float | None = None,
                 run_config: dict | None = None, callbacks: list | None = None) -> tuple[FacadeTrainer, dict]:
    """Train the parameters of `facade` that require grad on `train_dataset` (items with prompt,
    answer, x_v) with the schedule `hp`, and return (trainer, train log). `projector_lr`: the
    projector's own learning rate (None: `hp.lr`). Resumes from the last complete checkpoint under
    `work_dir` when its run configuration matches."""
    from accelerate import PartialState

    from projection_probe.train.data import MultimodalCollator

    if not 0 <= hp.warmup_ratio < 1:
        raise InputError(f"warmup_ratio={hp.warmup_ratio}: must be in [0, 1)")
    _check_optimizer(hp.optim)
    work_dir = Path(work_dir)
    checkpoint_dir = work_dir / "checkpoints"
    args = training_arguments(hp, checkpoint_dir)
    # TrainingArguments sets up the process group (torchrun / accelerate launch), so the world size
    # is known only now; the Trainer reads the accumulation steps when it is constructed.
    args.gradient_accumulation_steps = gradient_accumulation_steps(hp.effective_batch, hp.per_device_batch,
                                                                   args.world_size)
    state = PartialState()
    run_config = {**(run_config or {}), **schedule_config(hp, projector_lr, len(train_dataset), args.world_size)}
    prepare_work_dir(work_dir, run_config, state.is_main_process)
    state.wait_for_everyone()

    if hp.gradient_checkpointing:
        enable_gradient_checkpointing(facade)
    facade.language_model.config.use_cache = False

    trainer = FacadeTrainer(model=facade, args=args, train_dataset=train_dataset,
                            data_collator=MultimodalCollator(facade, hp.model_max_length),
                            callbacks=callbacks, projector_lr=projector_lr)
    resume = last_complete_checkpoint(checkpoint_dir, delete_incomplete=state.is_main_process)
    if resume:
        log.info("resuming from %s", resume)
    result = trainer.train(resume_from_checkpoint=resume)
    return trainer, training_log(trainer, result, hp, len(train_dataset), resume)


# ---------------------------------------------------------------------------- saving
def full_state_dict(trainer: FacadeTrainer) -> dict:
    """The trained model's full state dict, gathered from all ranks under FSDP (collective: every
    process must call it)."""
    if trainer.is_fsdp_enabled:
        return trainer.accelerator.get_state_dict(trainer.model)
    return trainer.accelerator.unwrap_model(trainer.model).state_dict()


def work_dir_of(out_dir: str | Path) -> Path:
    """Where a training run that publishes `out_dir` keeps its checkpoints until then."""
    return Path(str(out_dir) + WORK_SUFFIX)


def publish_model_folder(out_dir: Path, spec: FacadeSpec, train_log: dict,
                         write_weights: Callable[[Path], dict]) -> None:
    """Publish the model folder `out_dir` at once: `write_weights(folder)` saves the trained weights
    there and returns the facade.json entries that point at them, which complete those of `spec`
    (one level deep: a projector's weights join its kind and sizes); then facade.json and
    train_log.json, and the run's checkpoints are deleted. The main process writes; every process
    must call it, and returns once the folder is there."""
    from accelerate import PartialState

    partial = PartialState()
    if partial.is_main_process:
        with atomic_dir(out_dir) as tmp:
            spec.with_entries(write_weights(tmp)).to_json(tmp)
            write_json(tmp / "train_log.json", train_log)
        # The published folder is complete; the checkpoints are no longer needed.
        shutil.rmtree(work_dir_of(out_dir), ignore_errors=True)
    partial.wait_for_everyone()


def _strip(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def write_trained_parts(facade, state: dict, setting: str, folder: Path, lm_dtype: torch.dtype | None = None) -> dict:
    """Save what a setting changed into `folder` and return the facade.json entries that point to it."""
    projector_state = _strip(state, "projector.")
    save_safetensors(folder / "projector.safetensors", {k: v.detach().cpu() for k, v in projector_state.items()})
    spec = {"projector": {"weights": "projector.safetensors"}}
    lm_state = _strip(state, "language_model.")
    if setting == "ft-e2e":
        if lm_dtype is not None:  # bf16 runs save the LLM in bf16, as LLaVA does
            lm_state = {k: v.to(lm_dtype) if v.is_floating_point() else v for k, v in lm_state.items()}
        if not isinstance(facade.language_model, PreTrainedModel):
            # A family's LM part is modules of its HF model, not a model of its own: its weights are
            # saved under the part's names, and load_facade puts them back over the family checkpoint.
            save_safetensors(folder / "language_model.safetensors", {k: v.detach().cpu() for k, v in lm_state.items()})
            spec["language_model"] = {"weights": "language_model.safetensors"}
            return spec
        facade.language_model.config.use_cache = True
        facade.language_model.save_pretrained(folder / "language_model", state_dict=lm_state)
        facade.tokenizer.save_pretrained(folder / "language_model")
        spec["language_model"] = {"path": "language_model"}
    elif setting == "ft-lora":
        facade.language_model.save_pretrained(folder / "lora_adapter", state_dict=lm_state)
        spec["lora"] = {"adapter": "lora_adapter"}
    return spec


# ---------------------------------------------------------------------------- entry point
def finetune(base_model_dir: str | Path, prompts_jsonl: str | Path, vision_cache: str | Path, out_dir: str | Path,
             setting: str, hp: FinetuneHyperparams | None = None, *, callbacks: list | None = None,
             trust_remote_code: bool = False, **fields) -> dict:
    """Fine-tune the base model folder `base_model_dir` in one setting and publish `out_dir`
    (facade.json pointing at the base, projector.safetensors, and `language_model/` for ft-e2e or
    `lora_adapter/` for ft-lora, plus train_log.json) with the hyperparameters `hp` (or its fields as
    keywords: `lr`, `effective_batch` and `per_device_batch` have no default). `hp.projector_lr`
    applies to ft-lora only. Returns the train log."""
    from transformers import set_seed

    from projection_probe.features.cache import load_vision_cache
    from projection_probe.models.loaders import load_facade
    from projection_probe.train.data import CachedFeatureDataset, read_train_examples, stratified_subset

    hp = with_fields(FinetuneHyperparams, hp, fields)
    if setting not in FINETUNE_SETTINGS:
        raise InputError(f"setting {setting!r} is unknown; use one of {FINETUNE_SETTINGS}")
    if hp.model_dtype not in MODEL_DTYPES:
        raise InputError(f"model_dtype {hp.model_dtype!r} is unknown; use one of {sorted(MODEL_DTYPES)}")
    base_model_dir, out_dir = Path(base_model_dir).resolve(), Path(out_dir).resolve()
    if not (base_model_dir / FACADE_FILE).exists():
        raise InputError(f"{base_model_dir}: no {FACADE_FILE}; --base-model must be a built base model folder")
    examples = stratified_subset(read_train_examples(prompts_jsonl), hp.max_examples, hp.seed)
    cache = load_vision_cache(vision_cache)
    dataset = CachedFeatureDataset(examples, cache, source=str(vision_cache))

    # Seed before LoRA adapters are initialised, so that a resumed run rebuilds the same model.
    set_seed(hp.seed)
    facade = load_facade(base_model_dir, dtype=MODEL_DTYPES[hp.model_dtype], trust_remote_code=trust_remote_code)
    trainable = prepare_for_training(facade, setting, hp)
    log.info("%s: %d trainable tensors, %d parameters, on %d examples", setting, len(trainable),
             count_parameters(facade), len(dataset))

    work_dir = work_dir_of(out_dir)
    run_config = {"base_model": str(base_model_dir), "prompts": str(Path(prompts_jsonl).resolve()),
                  "vision_cache": str(Path(vision_cache).resolve()), "setting": setting, "template": hp.template,
                  "max_examples": hp.max_examples, "lora": [hp.lora_r, hp.lora_alpha, hp.lora_dropout],
                  "model_dtype": hp.model_dtype, "gradient_checkpointing": hp.gradient_checkpointing}
    trainer, train_log = train_facade(
        facade, dataset, work_dir, hp, projector_lr=hp.projector_lr if setting == "ft-lora" else None,
        run_config=run_config, callbacks=callbacks)
    train_log.update(setting=setting, seed=hp.seed, lr=hp.lr, max_examples=hp.max_examples)

    state = full_state_dict(trainer)
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    # The training template (e.g. the authors' `plain` FT-Proj) is recorded under "training" only:
    # evaluation keeps the base's conversation template, as the authors' cli.py did.
    # The images this model was trained on were preprocessed this way (a setting may differ from
    # the base: the authors' FT-Proj used `square`), so its evaluation and probes use it too.
    training = {k: v for k, v in run_config.items() if k not in ("base_model", "prompts", "vision_cache")}
    spec = FacadeSpec(base=os.path.relpath(base_model_dir, out_dir), setting=setting,
                      image_preprocessing=cache.image_preprocessing or None,
                      training={**training, "lr": hp.lr, "effective_batch": hp.effective_batch, "seed": hp.seed,
                                "epochs": hp.epochs})
    publish_model_folder(out_dir, spec, train_log, lambda folder: write_trained_parts(
        unwrapped, state, setting, folder, lm_dtype=torch.bfloat16 if hp.bf16 else None))
    return train_log
