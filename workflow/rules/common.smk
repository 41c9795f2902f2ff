# Config validation, output paths, and the small functions that turn config into rule params.
import json
import shlex
from pathlib import Path

from snakemake.utils import validate

# `--config 'seeds=[0,1]'` reaches the config as ['0', '1']: Snakemake parses command-line values with
# PyYAML's BaseLoader, which keeps every scalar a string. Digit strings become integers again so the
# command line means what the same list in a config file means; anything else is left for the schema
# to reject by name.
if isinstance(config.get("seeds"), list):
    config["seeds"] = [int(s) if isinstance(s, str) and s.isdigit() else s for s in config["seeds"]]

validate(config, schema="../schemas/config.schema.yaml")

RESULTS = "results"
# For `--sdm conda`: one environment for every rule, kept in sync with pyproject.toml by a test.
CONDA_ENV = "../../envs/projection-probe.yaml"
DATASETS = list(config["datasets"])
SEEDS = list(config["seeds"])
SETTINGS = list(config["settings"])
MODES = list(config["classify"]["modes"])
PRIMARY_MODE = MODES[0]
THREADS = config.get("resources", {}).get("threads", 1)
MODEL = config["model"]
# A memory knob, so it reaches `classify` through its shell line, not `params`: changing it must not
# rerun jobs (Snakemake's code trigger compares the unformatted line). Unset: the CLI's default.
LABEL_CHUNK_OPTION = (f"--label-chunk-size {config['classify']['label_chunk_size']}"
                      if "label_chunk_size" in config["classify"] else "")


def _fail(message):
    raise ValueError(f"config: {message}")


if "original" not in config["settings"] or config["settings"]["original"]["kind"] != "none":
    _fail("settings must contain `original: {kind: none}` (the zero-shot base MLLM that Table 2 compares against)")
if MODEL["loader"] == "llava_hf" and not MODEL.get("llava_hf"):
    _fail("model.loader is llava_hf, so model.llava_hf must name a local llava-hf checkpoint folder")
if MODEL["loader"] == "parts":
    for name in config.get("align", {}).get("datasets", []):
        if name not in config["datasets"]:
            _fail(f"align.datasets names {name!r}, which is not under datasets")

wildcard_constraints:
    dataset="|".join(DATASETS) or "NONE",
    setting="|".join(SETTINGS),
    seed=r"\d+",
    mode="|".join(MODES),


def as_json(value):
    """A config value as one shell-safe argument (sorted keys, so reruns trigger only on real change)."""
    return shlex.quote(json.dumps(value, sort_keys=True))


def trained(setting):
    return config["settings"][setting]["kind"] != "none"


def model_dir(wildcards):
    if trained(wildcards.setting):
        return f"{RESULTS}/models/{wildcards.dataset}/{wildcards.setting}/seed{wildcards.seed}"
    return f"{RESULTS}/models/base"


def model_spec(wildcards):
    return f"{model_dir(wildcards)}/facade.json"


def finetune_params(setting):
    """One setting's hyperparameters merged over the shared finetune defaults."""
    merged = {"epochs": 1, "warmup_ratio": 0.03, "weight_decay": 0.0, "lr_scheduler": "cosine",
              "max_grad_norm": 0.0, "bf16": False, "gradient_checkpointing": False,
              "checkpoint_every_steps": 50, "num_gpus": 1, "optim": "adamw_torch", "accelerate_config": None,
              "max_examples": None, "model_dtype": "float32", "projector_lr": 2e-5, "lora_r": 128, "lora_alpha": 256, "lora_dropout": 0.05}
    merged.update(config.get("finetune", {}))
    merged.update(config["settings"][setting])
    return merged


def vision_spec():
    if MODEL["loader"] == "llava_hf":
        return {"kind": "llava_hf", "path": MODEL["llava_hf"]}
    return MODEL["vision"]


def llm_dir():
    lm = MODEL["language_model"]
    return f"{RESULTS}/models/llm" if lm["source"] == "gguf" else lm["path"]


def data_file(dataset, name):
    return f"{RESULTS}/data/{dataset}/{name}"


def classify_max_new_tokens():
    """A number, or `auto`: the classify CLI then derives it from the dataset's tokenized classes."""
    return config["classify"].get("max_new_tokens", "auto")


def default_preprocessing():
    return MODEL.get("image_preprocessing", "pad")


# The two data switches below ride on an existing param and only when set, so that configs without
# them keep their recorded params (Snakemake compares param values, not names).
def exif_transpose_flag():
    return " --exif-transpose" if config.get("data", {}).get("exif_transpose", False) else ""


def cross_split_duplicates_flag():
    policy = config.get("data", {}).get("cross_split_duplicates", "fail")
    return f" --cross-split-duplicates {policy}" if policy != "fail" else ""


def setting_preprocessing(setting):
    """A setting's image preprocessing: its own key, else the model's (config `model.image_preprocessing`)."""
    return config["settings"][setting].get("image_preprocessing", default_preprocessing())


def vision_cache(dataset, preprocessing=None):
    """X_v of a dataset under one image preprocessing. The model's own preprocessing keeps the plain
    name, so that configs without per-setting preprocessing keep their paths."""
    preprocessing = preprocessing or default_preprocessing()
    if preprocessing == default_preprocessing():
        return f"{RESULTS}/features/{dataset}/vision.safetensors"
    return f"{RESULTS}/features/{dataset}/vision_{preprocessing}.safetensors"


def setting_vision_cache(wildcards):
    return vision_cache(wildcards.dataset, setting_preprocessing(wildcards.setting))


def predictions(dataset, setting, seed, mode):
    return f"{RESULTS}/predictions/{dataset}/{setting}/{mode}/seed{seed}.csv"


def probe_predictions(dataset, kind, setting, seed):
    if kind == "image_only":
        return f"{RESULTS}/probes/{dataset}/image_only/seed{seed}.csv"
    return f"{RESULTS}/probes/{dataset}/post/{setting}/seed{seed}.csv"


def encoder_zero_shot_enabled():
    return config.get("baselines", {}).get("encoder_zero_shot", {}).get("enabled", False)


def all_runs():
    """Every per-image predictions file that feeds the tables, with what it is."""
    runs = []
    for d in DATASETS:
        classes = data_file(d, "classes.json")
        for s in SEEDS:
            if config.get("baselines", {}).get("random", True):
                runs.append(dict(dataset=d, setting="-", seed=s, method="random", classes=classes,
                                 predictions=f"{RESULTS}/baselines/{d}/random/seed{s}.csv"))
            for setting in SETTINGS:
                for mode in MODES:
                    method = "mllm" if mode == PRIMARY_MODE else f"mllm-{mode}"
                    runs.append(dict(dataset=d, setting=setting, seed=s, method=method, classes=classes,
                                     predictions=predictions(d, setting, s, mode)))
                runs.append(dict(dataset=d, setting=setting, seed=s, method="probe_post", classes=classes,
                                 predictions=probe_predictions(d, "post", setting, s)))
            runs.append(dict(dataset=d, setting="-", seed=s, method="probe_image_only", classes=classes,
                             predictions=probe_predictions(d, "image_only", None, s)))
            if encoder_zero_shot_enabled():
                # Deterministic: one run, repeated per seed so that mean ± std has the same shape.
                runs.append(dict(dataset=d, setting="-", seed=s, method="encoder_zero_shot", classes=classes,
                                 predictions=f"{RESULTS}/baselines/{d}/encoder_zero_shot.csv"))
    return runs


def log_path(rule_name, *parts):
    return f"{RESULTS}/logs/{rule_name}/" + "_".join(parts) + ".log"
