"""What a config's sweep needs before it runs: parameters, gradient and optimizer bytes, peak GPU
memory per device, and disk, per job kind and for the whole sweep.

Parameter counts are exact: the model is built on the meta device from its config.json (no weight is
read) and the trainable set comes from `configure_trainable`, as in a fine-tune. Gradient and
optimizer bytes follow from them (AdamW keeps two moments in the parameter's dtype and a float32 step
per tensor). Activations, KV caches and overheads are estimates whose assumptions are listed in the
output (`ASSUMPTIONS`).
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from projection_probe.hyperparams import FinetuneHyperparams, FinetuneLaunch, LoraHyperparams, defaults
from projection_probe.io import InputError, read_json

GB = 1e9
# LLaVA-1.5-7B (llava-hf/llava-1.5-7b-hf) shapes, used when models.<name>.llava_hf has no config.json yet.
LLAVA_15_7B = {
    "vision_config": {"model_type": "clip_vision_model", "hidden_size": 1024, "num_hidden_layers": 24,
                      "num_attention_heads": 16, "intermediate_size": 4096, "image_size": 336, "patch_size": 14,
                      "projection_dim": 768},
    "text_config": {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
                    "num_key_value_heads": 32, "intermediate_size": 11008, "vocab_size": 32064},
    "image_token_id": 32000, "vision_feature_layer": -2, "vision_feature_select_strategy": "default",
}
# Images per dataset kind (docs/datasets.md), used when a dataset's manifest has not been built yet.
ASSUMED_IMAGES = {"plantdoc": 2578, "dtd": 3760, "dermnet": 19559, "crisismmd": 10461}
CHARS_PER_TOKEN = 3.5  # prompt length in tokens, estimated from its characters (Llama tokenizer, English)
PROMPT_OVERHEAD_CHARS = 400  # v1 system prompt, instruction and quotes around the class list
OVERHEAD_BYTES = 2 * GB  # CUDA context, cuBLAS workspaces and allocator slack per device
ASSUMPTIONS = [
    "Parameters, gradients and optimizer state: exact counts from the model's config.json, built on the "
    "meta device; AdamW keeps exp_avg and exp_avg_sq in the parameter's dtype plus a float32 step per "
    "tensor; 8-bit AdamW (bitsandbytes) 2 B per element plus float32 block scales, 32-bit for tensors "
    "under 4096 elements (estimate, not measured here).",
    "Fine-tunes load the facade without the vision tower (training reads cached X_v) in "
    "finetune.model_dtype; the projector always trains in float32.",
    "FSDP (accelerate config with distributed_type FSDP) shards parameters, gradients and optimizer "
    "state evenly over the processes; DDP keeps a full copy per GPU plus gradient buckets as large as "
    "the gradients.",
    "Activations per device: with gradient checkpointing, the residual stream of every layer "
    "(4 B per value under fp32 master weights, 2 B in bf16) plus one layer recomputed "
    "(34 x hidden bytes per token, Korthikanti et al. 2022, with fused attention); without it, the "
    "34 x hidden bytes per token of every layer; plus float32 logits and their gradient (8 B per "
    "token per vocabulary entry).",
    f"Tokens per example: the image tokens plus the prompt's characters / {CHARS_PER_TOKEN} "
    f"({PROMPT_OVERHEAD_CHARS} characters of template and instruction plus the class list).",
    "Inference (classify): weights in models.<name>.dtype plus a KV cache of batch x (prompt + max_new_tokens) "
    "tokens (`auto`: the longest class's characters / 3.5 + 5); `likelihood` adds one copy of an image's "
    "prompt cache per (image, class) pair of a chunk (`classify.label_chunk_size`).",
    f"Every device adds {OVERHEAD_BYTES / GB:.0f} GB for the CUDA context, workspaces and allocator slack.",
    "Disk: the vision cache holds X_v and the pooled vector in float16; a checkpoint holds the trainable "
    "parameters in their dtype and the optimizer state (FSDP: every parameter), and while the next one "
    "is written two exist; final FT-E2E language models are saved in bf16 when finetune.bf16.",
    "Image counts come from results/data/<dataset>/manifest.csv when it exists, else from "
    "docs/datasets.md for the paper's four datasets.",
]


# ---------------------------------------------------------------------------- config
def merge(base: dict, overlay: dict) -> dict:
    """Deep merge, as Snakemake combines several --configfile files."""
    out = dict(base)
    for key, value in overlay.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(paths: list[str | Path]) -> dict:
    config: dict = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: config file not found")
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise InputError(f"{path}: not a YAML mapping")
        config = merge(config, data)
    for key in ("datasets", "settings", "models", "seeds"):
        if key not in config:
            raise InputError(f"{', '.join(map(str, paths))}: no `{key}` key")
    return config


def finetune_cli_defaults() -> dict:
    """The fine-tune's defaults (those of the `finetune` subcommand and the workflow's launcher): what a
    setting gets for a key its config omits."""
    return {**defaults(FinetuneLaunch), **defaults(FinetuneHyperparams)}


def setting_options(config: dict, name: str, cli_defaults: dict) -> dict:
    options = dict(cli_defaults)
    options.update(config.get("finetune") or {})
    options.update(config["settings"][name])
    return options


def distributed_kind(options: dict, config_dir: Path) -> str:
    """single, ddp or fsdp, from num_gpus and the accelerate config the job launches with."""
    if options["num_gpus"] <= 1:
        return "single"
    path = options.get("accelerate_config")
    if not path:
        return "ddp"
    file = Path(path) if Path(path).is_absolute() else config_dir / path
    if not file.is_file():
        raise InputError(f"accelerate_config {path!r}: file not found (relative paths are read from {config_dir})")
    accel = yaml.safe_load(file.read_text()) or {}
    return "fsdp" if accel.get("distributed_type") == "FSDP" else "ddp"


# ---------------------------------------------------------------------------- the model, on meta
def planned_model(config: dict) -> dict:
    """The block of the config's one llava_hf model (`models.<name>`), the one that plan sizes."""
    llava = [name for name, model in config["models"].items() if (model or {}).get("loader") == "llava_hf"]
    if not llava:
        raise InputError(f"models {', '.join(config['models'])}: no loader is llava_hf; plan sizes llava_hf models "
                         "(the paper's); the demo's parts models fit any machine")
    if len(llava) > 1:
        raise InputError(f"models {', '.join(llava)}: plan sizes one llava_hf model at a time; give it a config "
                         "whose `models` names one of them")
    return config["models"][llava[0]]


def llava_config(config: dict) -> tuple[dict, str]:
    """The llava-hf config.json as a dict, and where it came from."""
    model = planned_model(config)
    path = Path(model["llava_hf"]) / "config.json"
    if path.is_file():
        return read_json(path), str(path)
    return LLAVA_15_7B, f"{path} absent: LLaVA-1.5-7B's shapes assumed"


def meta_facade(llava_json: dict, dtype, image_side: int | None = None):
    """The facade that load_facade would build, on the meta device (no memory, no weights); a
    config.json of another model family is built by its adapter (models/registry.py), at
    `image_side` where the family's image size is a preprocessor setting (Qwen2-VL)."""
    import torch

    model_type = llava_json.get("model_type", "llava")
    if model_type != "llava":
        from projection_probe.models.registry import family_adapter

        return family_adapter(model_type, "config.json").meta_facade(llava_json, dtype, image_side)
    from transformers import AutoModelForCausalLM, LlavaConfig, LlavaForConditionalGeneration

    from projection_probe.models.facade import MultimodalLM
    from projection_probe.models.projector import MLP2xGeluProjector
    from projection_probe.models.vision import ClipVisionEncoder

    config = LlavaConfig(**{k: v for k, v in llava_json.items() if k not in ("architectures", "transformers_version")})
    with torch.device("meta"):
        llava = LlavaForConditionalGeneration(config).to(dtype)
        causal_lm = AutoModelForCausalLM.from_config(config.text_config).to(dtype)
        hf_projector = llava.model.multi_modal_projector
        projector = MLP2xGeluProjector(hf_projector.linear_1.in_features, hf_projector.linear_1.out_features,
                                       bias=hf_projector.linear_1.bias is not None).to(dtype)
    setattr(causal_lm, causal_lm.base_model_prefix, llava.model.language_model)
    causal_lm.lm_head = llava.lm_head
    vision = ClipVisionEncoder(llava.model.vision_tower, config.vision_feature_layer,
                               config.vision_feature_select_strategy)
    return MultimodalLM(vision, projector, causal_lm, None, image_token_id=config.image_token_id)


def dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


@dataclass
class TrainingState:
    """Bytes a fine-tune holds for its parameters, gradients and optimizer (whole model, one copy)."""
    parameters: dict[str, int] = field(default_factory=dict)  # dtype -> count, every loaded parameter
    trainable: dict[str, int] = field(default_factory=dict)  # dtype -> count
    parameter_bytes: int = 0
    trainable_bytes: int = 0
    gradient_bytes: int = 0
    optimizer_bytes: int = 0


def optimizer_state_bytes(tensors: list, optim: str) -> int:
    """Bytes of the optimizer's state for these trainable tensors (see ASSUMPTIONS)."""
    if optim in ("adamw_torch", "adamw_torch_fused", "adamw_hf", "adamw"):
        return sum(2 * t.numel() * t.element_size() + 4 for t in tensors)
    if "8bit" in optim:
        return sum(2 * t.numel() + 2 * 4 * math.ceil(t.numel() / 256) + 4 if t.numel() >= 4096
                   else 2 * t.numel() * 4 + 4 for t in tensors)
    raise InputError(f"finetune.optim {optim!r}: plan knows adamw_torch, adamw_torch_fused and the 8-bit AdamW "
                     "optimizers (adamw_8bit, paged_adamw_8bit)")


def training_state(llava_json: dict, setting: str, options: dict) -> TrainingState:
    """Exact parameter, gradient and optimizer bytes of one fine-tune, as finetune() sets it up."""
    from projection_probe.train.finetune import MODEL_DTYPES, configure_trainable

    facade = meta_facade(llava_json, MODEL_DTYPES[options["model_dtype"]])
    facade.vision = None
    facade.projector.float()
    configure_trainable(facade, setting, **{k: options[k] for k in defaults(LoraHyperparams)})
    state = TrainingState()
    trainable = []
    for p in facade.parameters():
        name = dtype_name(p.dtype)
        state.parameters[name] = state.parameters.get(name, 0) + p.numel()
        state.parameter_bytes += p.numel() * p.element_size()
        if p.requires_grad:
            trainable.append(p)
            state.trainable[name] = state.trainable.get(name, 0) + p.numel()
            state.trainable_bytes += p.numel() * p.element_size()
    state.gradient_bytes = state.trainable_bytes
    state.optimizer_bytes = optimizer_state_bytes(trainable, options["optim"])
    return state


# ---------------------------------------------------------------------------- data
def dataset_images(config: dict, name: str, results: Path) -> tuple[int, str]:
    manifest = results / "data" / name / "manifest.csv"
    if manifest.is_file():
        with open(manifest, newline="", encoding="utf-8") as f:
            return sum(1 for _ in csv.DictReader(f)), str(manifest)
    kind = config["datasets"][name].get("source", {}).get("kind")
    if kind in ASSUMED_IMAGES:
        return ASSUMED_IMAGES[kind], f"{manifest} absent: {ASSUMED_IMAGES[kind]} images assumed (docs/datasets.md)"
    raise InputError(f"datasets.{name}: {manifest} does not exist and source.kind {kind!r} has no known image "
                     "count; run `snakemake <that manifest>` first")


def prompt_tokens(config: dict, name: str, image_tokens: int) -> int:
    classes = config["datasets"][name].get("classes") or []
    chars = PROMPT_OVERHEAD_CHARS + sum(len(c) + 4 for c in classes) + max((len(c) for c in classes), default=0)
    return image_tokens + math.ceil(chars / CHARS_PER_TOKEN)


# ---------------------------------------------------------------------------- the plan
@dataclass
class Job:
    """One row of the plan: `count` jobs of one rule, setting and dataset."""
    rule: str
    setting: str
    dataset: str
    count: int
    gpus: int
    gpu_bytes: float  # estimated peak per device
    disk_bytes: float  # kept after the job, per job
    seeds: list = field(default_factory=list)
    note: str = ""

    def names(self) -> str:
        seeds = f" seeds {','.join(map(str, self.seeds))}" if self.seeds else ""
        setting = f" {self.setting}" if self.setting else ""
        return f"{self.rule}{setting} {self.dataset}{seeds}"


@dataclass
class SettingPlan:
    name: str
    kind: str
    options: dict
    distributed: str
    state: TrainingState
    checkpoint_bytes: int
    final_bytes: int


@dataclass
class Plan:
    model_source: str
    datasets: dict  # name -> (images, source)
    settings: list
    jobs: list
    caches: dict  # (dataset, preprocessing) -> bytes
    assumptions: list


def training_activation_bytes(text: dict, batch: int, tokens: int, options: dict) -> float:
    hidden, layers, vocab = text["hidden_size"], text["num_hidden_layers"], text["vocab_size"]
    per_token_layer = 34 * hidden  # bytes, half-precision activations of one layer (fused attention)
    if options["gradient_checkpointing"]:
        residual = 4 if options["model_dtype"] == "float32" else 2
        layer_bytes = layers * batch * tokens * hidden * residual + batch * tokens * per_token_layer
    else:
        layer_bytes = layers * batch * tokens * per_token_layer
    return layer_bytes + batch * tokens * vocab * 8


def fine_tune_gpu_bytes(setting: SettingPlan, text: dict, tokens: int) -> float:
    state, options, kind = setting.state, setting.options, setting.distributed
    shards = options["num_gpus"] if kind == "fsdp" else 1
    static = (state.parameter_bytes + state.gradient_bytes + state.optimizer_bytes) / shards
    if kind == "ddp":
        static += state.gradient_bytes  # DDP's gradient buckets
    if kind == "fsdp":
        static += 2 * state.parameter_bytes / text["num_hidden_layers"]  # two layers gathered at a time
    return static + training_activation_bytes(text, options["per_device_batch"], tokens, options) + OVERHEAD_BYTES


def build_plan(config: dict, results: str | Path = "results", config_dir: str | Path = ".") -> Plan:
    import torch

    from projection_probe.evaluate.classify import LABEL_CHUNK_SIZE

    results, config_dir = Path(results), Path(config_dir)
    llava_json, model_source = llava_config(config)
    infer_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[
        planned_model(config).get("dtype", "float32")]
    infer_bytes = torch.tensor([], dtype=infer_dtype).element_size()
    inference = meta_facade(llava_json, infer_dtype)
    # The shapes as transformers completes them (a config.json may leave keys at the class defaults).
    lm_config = inference.language_model.config
    text = {k: getattr(lm_config, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                "vocab_size")}
    text["num_key_value_heads"] = getattr(lm_config, "num_key_value_heads", None) or text["num_attention_heads"]
    patches, width = inference.num_image_tokens, inference.vision.hidden_size
    vision_params = sum(p.numel() for p in inference.vision.parameters())
    all_params = sum(p.numel() for p in inference.parameters())
    projector_params = sum(p.numel() for p in inference.projector.parameters())

    datasets = {name: dataset_images(config, name, results) for name in config["datasets"]}
    seeds = list(config["seeds"])
    cli_defaults = finetune_cli_defaults()
    default_pre = planned_model(config).get("image_preprocessing", "pad")
    caches, jobs, settings = {}, [], []
    cache_per_image = (patches * width + width) * 2  # float16 X_v and pooled vector
    for name, (images, _) in datasets.items():
        caches[(name, default_pre)] = images * cache_per_image

    for sname, raw in config["settings"].items():
        kind = raw["kind"]
        pre = raw.get("image_preprocessing", default_pre)
        for name, (images, _) in datasets.items():
            caches.setdefault((name, pre), images * cache_per_image)
        if kind == "none":
            continue
        options = setting_options(config, sname, cli_defaults)
        state = training_state(llava_json, kind, options)
        distributed = distributed_kind(options, config_dir)
        checkpoint = (state.parameter_bytes if distributed == "fsdp" else state.trainable_bytes) + state.optimizer_bytes
        projector_bytes = projector_params * 4
        if kind == "ft-proj":
            final = projector_bytes
        elif kind == "ft-e2e":
            lm_bytes = 2 if options["bf16"] else (4 if options["model_dtype"] == "float32" else 2)
            final = projector_bytes + (all_params - vision_params - projector_params) * lm_bytes
        else:
            final = state.trainable_bytes - projector_bytes
        settings.append(SettingPlan(sname, kind, options, distributed, state, checkpoint, final + projector_bytes
                                    if kind == "ft-lora" else final))

    classify = config.get("classify", {})
    modes = classify.get("modes", ["generate"])
    batch = classify.get("batch_size", 32)
    kv_per_token = text["num_hidden_layers"] * 2 * text["num_key_value_heads"] * (
        text["hidden_size"] // text["num_attention_heads"]) * infer_bytes
    features_batch = (config.get("features") or {}).get("batch_size", 32)
    for name, (images, _) in datasets.items():
        tokens = prompt_tokens(config, name, patches)
        n_classes = len(config["datasets"][name].get("classes") or [])
        vision_activations = features_batch * (patches + 1) * width * 34
        for (dataset, pre), size in caches.items():
            if dataset == name:
                rule = "extract_vision_features" if pre == default_pre else "extract_vision_features_variant"
                jobs.append(Job(rule, "", f"{name} ({pre})", 1, 1,
                                vision_params * infer_bytes + vision_activations + OVERHEAD_BYTES, size))
        for setting in settings:
            jobs.append(Job("finetune", setting.name, name, len(seeds), setting.options["num_gpus"],
                            fine_tune_gpu_bytes(setting, text, tokens), setting.final_bytes, seeds,
                            note=f"{setting.distributed}, checkpoint {setting.checkpoint_bytes / GB:.1f} GB"))
        # Classification and pooled features cost the same for every setting: one row each, all settings.
        runs = sum(1 if raw["kind"] == "none" else len(seeds) for raw in config["settings"].values())
        every_setting = f"all {len(config['settings'])}"
        new_tokens = classify.get("max_new_tokens", 16)
        if not isinstance(new_tokens, int):  # `auto`: the longest class's answer tokens + EOS + 4
            new_tokens = math.ceil(max((len(c) for c in config["datasets"][name].get("classes") or []),
                                       default=0) / CHARS_PER_TOKEN) + 5
        for mode in modes:
            kv = batch * (tokens + new_tokens) * kv_per_token
            if mode == "likelihood":
                # One prefill per image, then `label_chunk_size` (image, class) continuations at a time,
                # each on its own copy of its image's prompt cache.
                chunk = min(classify.get("label_chunk_size", LABEL_CHUNK_SIZE), batch * n_classes)
                kv = (batch * tokens + chunk * (tokens + new_tokens)) * kv_per_token
            jobs.append(Job("classify", f"{every_setting}, {mode}", name, runs, 1,
                            all_params * infer_bytes + kv + OVERHEAD_BYTES, 0))
        features = images * (2 * width + text["hidden_size"]) * 4
        jobs.append(Job("extract_features", every_setting, name, runs, 1,
                        projector_params * infer_bytes + features_batch * patches * text["hidden_size"] * 4
                        + OVERHEAD_BYTES, features))
    return Plan(model_source, datasets, settings, jobs, caches, ASSUMPTIONS)


# ---------------------------------------------------------------------------- output
def gb(n: float) -> str:
    return f"{n / GB:.1f}"


def by_dtype(counts: dict) -> str:
    return ", ".join(f"{n / 1e6:,.1f}M {d}" for d, n in sorted(counts.items()))


def render(plan: Plan, gpu_memory_gb: float | None = None) -> tuple[str, list[Job]]:
    lines = [f"Model: {plan.model_source}", ""]
    lines.append("Datasets: " + "; ".join(f"{n}: {images:,} images ({src})" if "absent" in src else
                                          f"{n}: {images:,} images" for n, (images, src) in plan.datasets.items()))
    lines += ["", "### Fine-tunes: model state (whole model, before sharding)", "",
              "| setting | GPUs | parameters loaded | trainable | gradients GB | optimizer GB | checkpoint GB "
              "(2 while the next is written) | final model GB |",
              "|---|---|---|---|---|---|---|---|"]
    for s in plan.settings:
        lines.append(f"| {s.name} | {s.options['num_gpus']} ({s.distributed}) | {by_dtype(s.state.parameters)} "
                     f"| {by_dtype(s.state.trainable)} | {gb(s.state.gradient_bytes)} | {gb(s.state.optimizer_bytes)} "
                     f"| {gb(s.checkpoint_bytes)} | {gb(s.final_bytes)} |")
    lines += ["", "### Jobs", "", "| rule | setting | dataset | jobs | GPUs each | peak GPU memory per device GB "
              "| disk per job GB | note |", "|---|---|---|---|---|---|---|---|"]
    for j in plan.jobs:
        lines.append(f"| {j.rule} | {j.setting} | {j.dataset} | {j.count} | {j.gpus} | {gb(j.gpu_bytes)} "
                     f"| {gb(j.disk_bytes)} | {j.note} |")
    caches = sum(plan.caches.values())
    models = sum(j.disk_bytes * j.count for j in plan.jobs if j.rule == "finetune")
    features = sum(j.disk_bytes * j.count for j in plan.jobs if j.rule == "extract_features")
    checkpoints = {s.name: 2 * s.checkpoint_bytes for s in plan.settings}
    n_finetunes = {s.name: sum(j.count for j in plan.jobs if j.rule == "finetune" and j.setting == s.name)
                   for s in plan.settings}
    all_at_once = sum(checkpoints[n] * n_finetunes[n] for n in checkpoints)
    gpu_hours_jobs = sum(j.count * j.gpus for j in plan.jobs)
    lines += ["", "### Whole sweep", "",
              "| what | GB |", "|---|---|",
              f"| vision caches ({len(plan.caches)}) | {gb(caches)} |",
              f"| final fine-tuned models ({sum(n_finetunes.values())}) | {gb(models)} |",
              f"| pooled features | {gb(features)} |",
              f"| **kept after the sweep** | **{gb(caches + models + features)}** |"]
    for name, size in checkpoints.items():
        lines.append(f"| checkpoints of one running {name} fine-tune (deleted when it publishes) | {gb(size)} |")
    lines += [f"| checkpoints if every fine-tune ran at once (upper bound) | {gb(all_at_once)} |",
              f"| **peak, upper bound** | **{gb(caches + models + features + all_at_once)}** |",
              "", f"GPU jobs: {sum(j.count for j in plan.jobs)} ({gpu_hours_jobs} GPU allocations).",
              "", "Assumptions:"] + [f"- {a}" for a in plan.assumptions]
    too_big = []
    if gpu_memory_gb is not None:
        too_big = [j for j in plan.jobs if j.gpu_bytes > gpu_memory_gb * GB]
        lines += ["", f"GPU memory per device: {gpu_memory_gb:g} GB."]
        if too_big:
            lines.append(f"{sum(j.count for j in too_big)} jobs do not fit:")
            lines += [f"- {j.names()}: {gb(j.gpu_bytes)} GB per device" for j in too_big]
        else:
            lines.append("Every job fits.")
    return "\n".join(lines), too_big
