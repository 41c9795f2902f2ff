"""The "micro" study: the real workflow on tiny random models and a few real images, in minutes on
CPU. Used by the end-to-end test, the Slurm integration test and the determinism/rerun tests."""
from __future__ import annotations

import copy
import shutil
from pathlib import Path

import yaml

from projection_probe.testing.tiny import make_tiny_clip, make_tiny_parts
from projection_probe.testing.tiny_families import make_tiny_family

REPO_ROOT = Path(__file__).resolve().parents[3]
# The shipped Fashion-MNIST subset as a local 🤗 datasets folder.
FASHION_DATASET = REPO_ROOT / "resources" / "fashion_mnist_subset"

# The micro study's models, each a folder of its results (results/predictions/tiny/...): the tiny LLaVA-style
# parts model, and a tiny checkpoint of another MLLM family run through its adapter (models/registry.py).
MICRO_MODEL = "tiny"
MICRO_FAMILY = "idefics3"
MICRO_FAMILY_MODEL = f"tiny-{MICRO_FAMILY}"
MICRO_CONFIG = {
    "seeds": [0, 1],
    "datasets": {
        "digits": {
            "task": "handwritten digits",
            "classes": ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"],
            "source": {"kind": "sklearn_digits", "train_per_class": 6, "test_per_class": 3},
        },
        "fashion": {
            "task": "clothing items",
            "classes": ["T-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                        "ankle boot"],
            "source": {"kind": "hf", "path": None, "label_map": {"T-shirt/top": "T-shirt"}, "train_per_class": 6,
                       "test_per_class": 3},
        },
    },
    "data": {"on_bad_image": "fail", "allow_train_only_classes": True, "prompt_output_cue": False},
    "models": {MICRO_MODEL: {"loader": "parts", "vision": {"kind": "clip", "path": None},
                             "language_model": {"source": "path", "path": None}, "projector": "mlp2x_gelu",
                             "template": "v1", "image_preprocessing": "pad", "dtype": "float32", "device": "cpu",
                             "trust_remote_code": False},
               MICRO_FAMILY_MODEL: {"loader": "family", "checkpoint": None, "template": "v1",
                                    "image_preprocessing": "pad", "dtype": "float32", "device": "cpu",
                                    "trust_remote_code": False}},
    "align": {"datasets": ["digits"], "caption_source": "none-fixed", "template": "plain", "lr": 1.0e-3, "epochs": 1,
              "effective_batch": 8, "per_device_batch": 8, "max_examples": 32},
    "settings": {
        "original": {"kind": "none"},
        "ft-proj": {"kind": "ft-proj", "lr": 1.0e-3, "effective_batch": 8, "per_device_batch": 4},
        "ft-e2e": {"kind": "ft-e2e", "lr": 1.0e-4, "effective_batch": 8, "per_device_batch": 4},
        "ft-lora": {"kind": "ft-lora", "lr": 2.0e-4, "projector_lr": 2.0e-5, "effective_batch": 8,
                    "per_device_batch": 4, "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.05},
    },
    "finetune": {"epochs": 1, "warmup_ratio": 0.03, "weight_decay": 0.0, "lr_scheduler": "cosine",
                 "max_grad_norm": 0.0, "bf16": False, "gradient_checkpointing": False,
                 "checkpoint_every_steps": 4, "num_gpus": 1},
    "classify": {"modes": ["generate", "constrained", "likelihood"], "batch_size": 8, "max_new_tokens": 6,
                 "temperature": 0.0},
    "features": {"batch_size": 16, "num_workers": 0},
    "probes": {
        "post": {"hidden": [32, 16], "lr": 1.0e-3, "batch_size": 16, "max_epochs": 15, "patience": 3,
                 "val_fraction": 0.2, "val_source": "split"},
        "image_only": {"feature": "pooled", "hidden": [32, 16], "lr": 1.0e-3, "batch_size": 16, "max_epochs": 15,
                       "patience": 3, "val_fraction": 0.2, "val_source": "split"},
    },
    "metrics": {"f1_classes": "true"},
    "baselines": {"random": True, "encoder_zero_shot": {"enabled": True, "model": None,
                                                        "templates": ["This is a photo of {}."],
                                                        "lowercase_labels": True, "image_preprocessing": "square",
                                                        "batch_size": 16}},
    "report": {"encoder_name": "tiny CLIP", "mllm_name": "tiny MLLM", "paper_map": {}},
    "resources": {"threads": 1},
}


# One dataset, Original + FT-Proj, one classification mode, two seeds: the smallest study on which
# every analysis (including the paired claims statistics) has something to compute, and the first of
# the two same-seed runs that the determinism test compares.
ANALYSES = {"enabled": True, "layerwise": {"enabled": True, "poolings": ["image_mean", "last_token"],
                                           "batch_size": 8, "storage_dtype": "float16", "mlp": False},
            "linear_probe": {"C": 1.0, "max_iter": 200}, "matched_probes": {"enabled": True, "mlp": True},
            "control_tasks": True, "similarity": {"enabled": True, "knn_k": 5}, "bootstrap": 200,
            "permutations": 10000, "confidence": 0.95}
# The analyses compare the settings of one model.
ANALYSIS_OVERRIDES = dict(
    models={MICRO_MODEL: MICRO_CONFIG["models"][MICRO_MODEL]},
    datasets={"digits": MICRO_CONFIG["datasets"]["digits"]},
    settings={k: MICRO_CONFIG["settings"][k] for k in ("original", "ft-proj")},
    classify={**MICRO_CONFIG["classify"], "modes": ["generate"]},
    baselines={"random": True, "encoder_zero_shot": {"enabled": False}},
    analyses=ANALYSES,
)


def micro_config(models_dir: Path, **overrides) -> dict:
    """The micro config over the tiny models in `models_dir`; top-level keys in `overrides` replace its own
    (a `models` override names blocks of MICRO_CONFIG's models, whose folders are filled in here)."""
    config = copy.deepcopy({**MICRO_CONFIG, **overrides})
    models = config["models"]
    if MICRO_MODEL in models:
        models[MICRO_MODEL]["vision"]["path"] = str(models_dir / "vision")
        models[MICRO_MODEL]["language_model"]["path"] = str(models_dir / "llm")
    if MICRO_FAMILY_MODEL in models:
        models[MICRO_FAMILY_MODEL]["checkpoint"] = str(models_dir / MICRO_FAMILY)
    if config["datasets"].get("fashion", {}).get("source", {}).get("kind") == "hf":
        config["datasets"]["fashion"]["source"]["path"] = str(FASHION_DATASET)
    if config["baselines"]["encoder_zero_shot"].get("enabled"):
        config["baselines"]["encoder_zero_shot"]["model"] = str(models_dir / "clip")
    return config


def make_micro_models(models_dir: str | Path) -> Path:
    models_dir = Path(models_dir)
    if not (models_dir / "llm" / "config.json").exists():
        make_tiny_parts(models_dir)
    if not (models_dir / "clip" / "config.json").exists():
        make_tiny_clip(models_dir / "clip")
    if not (models_dir / MICRO_FAMILY / "config.json").exists():
        make_tiny_family(MICRO_FAMILY, models_dir / MICRO_FAMILY)
    return models_dir


def make_micro_workdir(tmp_path: str | Path, models_dir: str | Path | None = None, **overrides) -> Path:
    """A working directory with `micro.yaml` for
    `snakemake -s <repo>/Snakefile --directory <workdir> --configfile <workdir>/micro.yaml`.
    Top-level keys in `overrides` replace the micro config's."""
    workdir = Path(tmp_path)
    workdir.mkdir(parents=True, exist_ok=True)
    models = make_micro_models(models_dir or workdir / "tiny_models")
    config = micro_config(models, **overrides)
    # The run's own copy of the fashion dataset: a test may touch it to change its fingerprint.
    if config["datasets"].get("fashion", {}).get("source", {}).get("kind") == "hf":
        fashion = workdir / "fashion_dataset"
        if not fashion.exists():
            shutil.copytree(FASHION_DATASET, fashion)
        config["datasets"]["fashion"]["source"]["path"] = str(fashion)
    (workdir / "micro.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return workdir


def snakemake_command(workdir: Path, *extra: str, cores: int = 2) -> list[str]:
    import sys

    snakemake = shutil.which("snakemake") or str(Path(sys.executable).parent / "snakemake")
    return [snakemake, "-s", str(REPO_ROOT / "Snakefile"), "--directory", str(workdir),
            "--configfile", str(workdir / "micro.yaml"), "--cores", str(cores), *extra]
