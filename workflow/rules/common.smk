# Config validation, output paths, and every helper the rules use: the functions that turn config
# into params, inputs and targets. Rule files hold only rules.
import dataclasses
import json
import os
import shlex
from pathlib import Path
from types import SimpleNamespace

from snakemake.utils import validate

from projection_probe.data.hf_sources import source_fingerprint
from projection_probe.hyperparams import (
    ANALYSIS_DEFAULTS,
    AlignHyperparams,
    ClassifyHyperparams,
    FinetuneHyperparams,
    FinetuneLaunch,
    ProbeHyperparams,
    defaults,
    to_options,
)
from projection_probe.configfile import duplicate_keys
from projection_probe.io import InputError
from projection_probe.models.registry import check_family, model_type_of
from projection_probe.names import BASE_SETTING, IMAGE_PREPROCESSINGS, NO_SETTING

# PyYAML keeps the last of two equal keys without a word, so two models (or datasets, settings) of the
# same name would silently become one: each config file is read again, strictly, before anything else.
for _configfile in workflow.configfiles:
    if _duplicates := duplicate_keys(_configfile):
        raise ValueError(f"config: {_configfile} names {', '.join(_duplicates)} twice; give each its own name")
# `model:` (one MLLM) became `models:` (named MLLMs): say how to rewrite rather than "unknown key".
if "model" in config:
    raise ValueError(
        "config: `model:` is now `models:`, a map from a model name to the same block; rewrite "
        "`model: {loader: ...}` as `models: {<name>: {loader: ...}}` (the name goes into every result path)"
    )

# `--config 'seeds=[0,1]'` reaches the config as ['0', '1']: Snakemake parses command-line values with
# PyYAML's BaseLoader, which keeps every scalar a string. Digit strings become integers again so the
# command line means what the same list in a config file means; anything else is left for the schema
# to reject by name.
if isinstance(config.get("seeds"), list):
    config["seeds"] = [int(s) if isinstance(s, str) and s.isdigit() else s for s in config["seeds"]]

validate(config, schema="../schemas/config.schema.yaml")


def config_value(path, default=None):
    """The value at a dotted config path ("classify.batch_size"), or `default` where the config leaves
    it out: the one way the rules read optional keys."""
    node = config
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return node


RESULTS = "results"
# For `--sdm conda`: one environment for every rule, kept in sync with pyproject.toml by a test.
CONDA_ENV = "../../envs/projection-probe.yaml"
DATASETS = list(config["datasets"])
SEEDS = list(config["seeds"])
SETTINGS = list(config["settings"])
MODES = list(config["classify"]["modes"])
PRIMARY_MODE = MODES[0]
THREADS = config_value("resources.threads", 1)
# The `{model}` wildcard: each configured MLLM, studied on every dataset, setting and seed.
MODELS = config["models"]
MODEL_NAMES = list(MODELS)
PARTS_MODELS = [m for m in MODEL_NAMES if MODELS[m]["loader"] == "parts"]
LLAVA_HF_MODELS = [m for m in MODEL_NAMES if MODELS[m]["loader"] == "llava_hf"]
# Checkpoints of any supported MLLM family (models/registry.py), run through the family's adapter.
FAMILY_MODELS = [m for m in MODEL_NAMES if MODELS[m]["loader"] == "family"]


def model_value(model, key, default=None):
    """A key of one model's block (`models.<model>.<key>`, dotted), or `default` where it is left out."""
    return config_value(f"models.{model}.{key}", default)


def model_device(model):
    return model_value(model, "device", "cpu")


def model_dtype(model):
    return model_value(model, "dtype", "float32")


def model_template(model):
    return model_value(model, "template", "v1")


# Jobs that belong to no model (the encoder zero-shot baseline) run where the first model runs.
DEVICE = model_device(MODEL_NAMES[0])


def _fail(message):
    raise ValueError(f"config: {message}")


if BASE_SETTING not in config["settings"] or config["settings"][BASE_SETTING]["kind"] != "none":
    _fail(
        f"settings must contain `{BASE_SETTING}: {{kind: none}}` (the zero-shot base MLLM that Table 2 compares against)"
    )
for _model in LLAVA_HF_MODELS:
    if not model_value(_model, "llava_hf"):
        _fail(
            f"models.{_model}.loader is llava_hf, so models.{_model}.llava_hf must name a local llava-hf checkpoint folder"
        )
# A family checkpoint's model_type is checked before planning, through the registry (no torch). A folder
# that is not there yet is left to build_family_base_model, which names it when it runs.
for _model in FAMILY_MODELS:
    _checkpoint = model_value(_model, "checkpoint")
    if Path(_checkpoint, "config.json").exists():
        try:
            check_family(model_type_of(_checkpoint), _checkpoint)
        except InputError as error:
            _fail(f"models.{_model}.checkpoint: {error}")
if PARTS_MODELS:
    for name in config_value("align.datasets", []):
        if name not in config["datasets"]:
            _fail(f"align.datasets names {name!r}, which is not under datasets")


# The defaults of a fine-tune's options: those of src/projection_probe/hyperparams.py (and the model's
# template, see finetune_params).
FINETUNE_DEFAULTS = {**defaults(FinetuneHyperparams), **defaults(FinetuneLaunch)}


def finetune_params(setting, model):
    """One setting's training options for one model: the setting's own keys over the `finetune` section
    over the model's template over the defaults. Training keeps float32 master weights by default (bf16
    autocast via --bf16), as LLaVA's DeepSpeed runs do; pure-bf16 weights lose most updates at lr 2e-5."""
    return {
        **FINETUNE_DEFAULTS,
        "template": model_template(model),
        **config_value("finetune", {}),
        **config["settings"][setting],
    }


# A setting's examples per optimizer step must split exactly into per-device batches on its GPUs;
# otherwise the trainer would round the accumulation and train on another effective batch.
for _setting in SETTINGS:
    if config["settings"][_setting]["kind"] != "none":
        _hp = finetune_params(_setting, MODEL_NAMES[0])
        if _hp["effective_batch"] % (_hp["per_device_batch"] * _hp["num_gpus"]):
            _fail(
                f"settings.{_setting}: effective_batch {_hp['effective_batch']} is not a multiple of "
                f"per_device_batch {_hp['per_device_batch']} × num_gpus {_hp['num_gpus']}; change one of them"
            )
if PARTS_MODELS and config_value("align.effective_batch", 0) % config_value("align.per_device_batch", 1):
    _fail(
        f"align: effective_batch {config_value('align.effective_batch')} is not a multiple of "
        f"per_device_batch {config_value('align.per_device_batch')}; change one of them"
    )


# Operational keys (schema `x-kind: operational`): speed and memory only; tests/test_config_kinds.py
# names the test that shows each one leaves the outputs equal. Shell commands read them from here,
# not from params, so that changing one reruns nothing; every CLI writes its command line, and with it
# these values, into the job's log.
OPERATIONAL = SimpleNamespace(
    classify_batch_size=config_value("classify.batch_size", ClassifyHyperparams.batch_size),
    # Unset: the CLI's default.
    label_chunk_option=(
        f"--label-chunk-size {config_value('classify.label_chunk_size')}"
        if config_value("classify.label_chunk_size")
        else ""
    ),
    features_batch_size=config_value("features.batch_size", 32),
    num_workers=config_value("features.num_workers", 0),
    checkpoint_every_steps=config_value("finetune.checkpoint_every_steps", FINETUNE_DEFAULTS["checkpoint_every_steps"]),
    zero_shot_batch_size=config_value("baselines.encoder_zero_shot.batch_size", 32),
    layer_batch_size=config_value("analyses.layerwise.batch_size", ANALYSIS_DEFAULTS.layer_batch_size),
)
OPERATIONAL.finetune_options = to_options(
    FinetuneHyperparams,
    {"checkpoint_every_steps": OPERATIONAL.checkpoint_every_steps, "num_workers": OPERATIONAL.num_workers},
)

# The resources of a job that runs a model on one GPU (Slurm: --gpus=1). Locally the resource is
# unbounded unless --resources gpu=N.
ONE_GPU = {"gpu": 1}


wildcard_constraints:
    model="|".join(MODEL_NAMES),
    dataset="|".join(DATASETS) or "NONE",
    setting="|".join(SETTINGS),
    seed=r"\d+",
    mode="|".join(MODES),


# Slurm group jobs (docs/cluster.md). On a cluster the jobs of one group id run one after another in one
# Slurm job: every classify mode and the feature extraction of one trained model, and the CPU probes of
# one (dataset, seed). A group exists only where the profile's `group-components` names its pattern, so
# that one profile line turns grouping off (and job arrays on). Locally, Snakemake ignores groups.
MODEL_GROUP = "model_{model}_{dataset}_{setting}_seed{seed}"
CPU_GROUP = "cpu_{dataset}_seed{seed}"


def slurm_group(pattern):
    """The group of a job (a function of its wildcards), or none where the profile does not name `pattern`.
    The group settings are known only once the jobs are built, hence a function; it registers the pattern
    as Snakemake does for a group written as a pattern, so that `group-components` finds it."""

    def group_id(wildcards):
        if pattern not in workflow.group_settings.group_components:
            return None
        resolved = pattern.format(**dict(wildcards.items()))
        workflow.parent_groupids[resolved] = pattern
        return resolved

    return group_id


def field_options(cls, values):
    """The options of the stage dataclass `cls` that give the keys of `values` that are its fields, in
    field order (the other keys, e.g. a setting's `kind`, reach the command otherwise)."""
    return to_options(cls, {f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values})


def as_json(value):
    """A config value as one shell-safe argument (sorted keys, so reruns trigger only on real change)."""
    return shlex.quote(json.dumps(value, sort_keys=True))


def trained(setting):
    return config["settings"][setting]["kind"] != "none"


# A model's base MLLM (its "original" setting), built or aligned once; its fine-tunes start from it.
BASE_MODEL_SPEC = f"{RESULTS}/models/{{model}}/base/facade.json"


def base_model_spec(wildcards):
    return BASE_MODEL_SPEC.format(model=wildcards.model)


def model_dir(wildcards):
    if trained(wildcards.setting):
        return f"{RESULTS}/models/{wildcards.model}/{wildcards.dataset}/{wildcards.setting}/seed{wildcards.seed}"
    return os.path.dirname(base_model_spec(wildcards))


def model_spec(wildcards):
    return f"{model_dir(wildcards)}/facade.json"


def vision_spec(model):
    if MODELS[model]["loader"] == "llava_hf":
        return {"kind": "llava_hf", "path": MODELS[model]["llava_hf"]}
    if MODELS[model]["loader"] == "family":
        side = model_value(model, "image_side")
        return {
            "kind": "family_checkpoint",
            "path": MODELS[model]["checkpoint"],
            **({"image_side": side} if side else {}),
        }
    return MODELS[model]["vision"]


def image_side_option(model):
    """A family checkpoint's image side where the config sets one; else its preprocessor's."""
    side = model_value(model, "image_side")
    return f"--image-side {side}" if side else ""


def first_model_alike(model, key):
    """The first configured model whose `key(name)` equals this model's: models that share a frozen
    part share the files built from it, under that model's name."""
    return next(m for m in MODEL_NAMES if key(m) == key(model))


def vision_owner(model):
    """The model whose X_v caches (and image-only probes) this model reads: the first one with the same
    vision tower and image preprocessing, since the tower is frozen in every setting."""
    return first_model_alike(model, lambda m: (vision_spec(m), default_preprocessing(m)))


def gguf_spec(model):
    lm = MODELS[model].get("language_model", {})
    return (lm.get("gguf_package"), lm.get("gguf_file")) if lm.get("source") == "gguf" else None


def llm_dir(model):
    """The LLM folder of a parts model: the converted GGUF (shared by the models that name the same
    file), or the configured path."""
    if gguf_spec(model) is None:
        return MODELS[model]["language_model"]["path"]
    return f"{RESULTS}/models/{first_model_alike(model, gguf_spec)}/llm"


def data_file(dataset, name):
    return f"{RESULTS}/data/{dataset}/{name}"


def classes_file(dataset):
    """A dataset's classes.json, as prepare_dataset writes it (`"{dataset}"`: the rules' pattern)."""
    return data_file(dataset, "classes.json")


def classify_max_new_tokens():
    """A number, or `auto`: the classify CLI then derives it from the dataset's tokenized classes."""
    return config_value("classify.max_new_tokens", "auto")


def default_preprocessing(model):
    return model_value(model, "image_preprocessing", "pad")


# The two data switches below ride on an existing param and only when set, so that configs without
# them keep their recorded params (Snakemake compares param values, not names).
def exif_transpose_flag():
    return " --exif-transpose" if config_value("data.exif_transpose", False) else ""


def cross_split_duplicates_flag():
    policy = config_value("data.cross_split_duplicates", "fail")
    return f" --cross-split-duplicates {policy}" if policy != "fail" else ""


def source_args(dataset):
    """The dataset's `source:` as JSON and, for a local 🤗 datasets folder, its fingerprint: a changed
    file re-prepares that dataset (it rides on this param for the reason above)."""
    source = config["datasets"][dataset]["source"]
    fingerprint = source_fingerprint(source)
    return as_json(source) + (f" --source-fingerprint {fingerprint}" if fingerprint else "")


def setting_preprocessing(setting, model):
    """A setting's image preprocessing: its own key, else the model's (`models.<model>.image_preprocessing`)."""
    return config["settings"][setting].get("image_preprocessing", default_preprocessing(model))


def vision_cache(model, dataset, preprocessing=None):
    """X_v of a dataset under one image preprocessing, for one model: the file of its vision owner. The
    owner's own preprocessing keeps the plain name, so that configs without per-setting preprocessing
    keep their paths."""
    owner = vision_owner(model)
    preprocessing = preprocessing or default_preprocessing(owner)
    if preprocessing == default_preprocessing(owner):
        return f"{RESULTS}/features/{owner}/{dataset}/vision.safetensors"
    return f"{RESULTS}/features/{owner}/{dataset}/vision_{preprocessing}.safetensors"


def setting_vision_cache(wildcards):
    return vision_cache(wildcards.model, wildcards.dataset, setting_preprocessing(wildcards.setting, wildcards.model))


def predictions(model, dataset, setting, seed, mode):
    return f"{RESULTS}/predictions/{model}/{dataset}/{setting}/{mode}/seed{seed}.csv"


def probe_predictions(model, dataset, kind, setting, seed):
    if kind == "image_only":
        return f"{RESULTS}/probes/{vision_owner(model)}/{dataset}/image_only/seed{seed}.csv"
    return f"{RESULTS}/probes/{model}/{dataset}/post/{setting}/seed{seed}.csv"


def encoder_zero_shot_enabled():
    return config_value("baselines.encoder_zero_shot.enabled", False)


def runs_of(model, dataset, seed):
    """(setting, method, predictions file) of every run of one model, dataset and seed, in the tables'
    order. The baselines belong to no model: each model's rows repeat them."""
    if config_value("baselines.random", True):
        yield NO_SETTING, "random", f"{RESULTS}/baselines/{dataset}/random/seed{seed}.csv"
    for setting in SETTINGS:
        for mode in MODES:
            method = "mllm" if mode == PRIMARY_MODE else f"mllm-{mode}"
            yield setting, method, predictions(model, dataset, setting, seed, mode)
        yield setting, "probe_post", probe_predictions(model, dataset, "post", setting, seed)
    yield NO_SETTING, "probe_image_only", probe_predictions(model, dataset, "image_only", None, seed)
    if encoder_zero_shot_enabled():
        # Deterministic: one run, repeated per seed so that mean ± std has the same shape.
        yield NO_SETTING, "encoder_zero_shot", f"{RESULTS}/baselines/{dataset}/encoder_zero_shot.csv"


def all_runs():
    """Every per-image predictions file that feeds the tables, with what it is. `model` only where more
    than one model is configured, so that one-model studies keep their tables and params."""
    several = len(MODEL_NAMES) > 1
    return [
        dict(
            **({"model": m} if several else {}),
            dataset=d,
            setting=setting,
            seed=s,
            method=method,
            classes=classes_file(d),
            predictions=file,
        )
        for m in MODEL_NAMES
        for d in DATASETS
        for s in SEEDS
        for setting, method, file in runs_of(m, d, s)
    ]


def log_path(rule_name, *parts):
    return f"{RESULTS}/logs/{rule_name}/" + "_".join(parts) + ".log"


def remote_code_flag(model):
    return "--trust-remote-code" if model_value(model, "trust_remote_code", False) else ""


# ---------------------------------------------------------------- download
def downloaded_root(wildcards):
    """The dataset's source root when the workflow downloads it, so prepare_dataset waits for it."""
    dataset = config["datasets"][wildcards.dataset]
    if "download" in dataset and "root" in dataset.get("source", {}):
        return dataset["source"]["root"]
    return []


def download_targets():
    return {
        name: d["source"]["root"]
        for name, d in config["datasets"].items()
        if "download" in d and "root" in d.get("source", {})
    }


# ---------------------------------------------------------------- models
def align_options(model):
    """align-projector's options, generated from AlignHyperparams' fields: the `align` section, the
    model's projector and template, and the first seed."""
    values = {
        **config_value("align", {}),
        "projector": model_value(model, "projector", AlignHyperparams.projector),
        "output_template": model_template(model),
        "seed": SEEDS[0],
    }
    return field_options(AlignHyperparams, values)


# ---------------------------------------------------------------- finetune
# The result keys of a fine-tune: every training option except the operational ones, which reach the
# command through OPERATIONAL, and the seed, which is the job's. The launcher carries num_gpus and
# accelerate_config.
FINETUNE_NOT_RESULTS = {"checkpoint_every_steps", "num_workers", "seed"}


def finetune_hyperparameters(setting, model):
    return {k: v for k, v in finetune_params(setting, model).items() if k not in FINETUNE_NOT_RESULTS}


def finetune_options(setting, model, seed):
    """The `finetune` options of one setting, model and seed, generated from FinetuneHyperparams' fields."""
    return field_options(FinetuneHyperparams, {**finetune_hyperparameters(setting, model), "seed": seed})


def finetune_launcher(setting, model):
    params = finetune_params(setting, model)
    if params["num_gpus"] > 1:
        config_arg = f" --config_file {shlex.quote(params['accelerate_config'])}" if params["accelerate_config"] else ""
        return f"accelerate launch --num_processes {params['num_gpus']}{config_arg} -m projection_probe.cli"
    return "projection-probe"


# ---------------------------------------------------------------- classify
def classify_temperature():
    return config_value("classify.temperature", ClassifyHyperparams.temperature)


def generation_args(mode):
    """The options only free-text generation reads, so that only `generate` jobs rerun when they
    change. `exact` reads the whole answer as the authors did, so it does not stop at a newline."""
    if mode != "generate":
        return ""
    args = []
    # `auto`: the CLI derives the bound from the dataset's tokenized classes.
    if classify_max_new_tokens() != "auto":
        args.append(f"--max-new-tokens {classify_max_new_tokens()}")
    args.append(f"--temperature {classify_temperature()}")
    if config_value("classify.parser", ClassifyHyperparams.parser) == "exact":
        args.append("--parser exact --no-stop-at-newline")
    if config_value("classify.several_classes", ClassifyHyperparams.several_classes) == "first":
        args.append("--several-classes first")
    return " ".join(args)


def sampling_batch_size(mode):
    """Sampled answers (temperature > 0) depend on how the records are batched, one random generator
    per batch, so the batch size is then a result of `generate` jobs; greedy answers do not."""
    if mode == "generate" and classify_temperature() > 0:
        return OPERATIONAL.classify_batch_size
    return None


# ---------------------------------------------------------------- probes
def probe_args(kind):
    """A probe's options, generated from ProbeHyperparams' fields (the seed is the job's)."""
    return field_options(ProbeHyperparams, config["probes"][kind])


# ---------------------------------------------------------------- baselines
def zero_shot_args():
    z = config_value("baselines.encoder_zero_shot", {})
    templates = " ".join(f"--template {shlex.quote(t)}" for t in z.get("templates", ["This is a photo of {}."]))
    case = "--lowercase-labels" if z.get("lowercase_labels", True) else "--no-lowercase-labels"
    # `--label-set test` only when set, so that configs without the key keep their params.
    label_set = " --label-set test" if z.get("label_set", "pinned") == "test" else ""
    return (
        f"--model {shlex.quote(str(z.get('model')))} {templates} {case}"
        f" --image-preprocessing {z.get('image_preprocessing', 'square')}{label_set}"
    )


# ---------------------------------------------------------------- report
PAPER_RESULTS = str(Path(workflow.basedir) / "resources" / "paper_results.csv")


def paper_args():
    paper_map = config_value("report.paper_map", {})
    if not paper_map:
        return ""
    return f"--paper-results {shlex.quote(PAPER_RESULTS)} --paper-map {as_json(paper_map)}"


# ---------------------------------------------------------------- analyses (docs/analysis.md)
LAYERWISE = {
    "enabled": True,
    "poolings": list(ANALYSIS_DEFAULTS.poolings),
    "storage_dtype": ANALYSIS_DEFAULTS.storage_dtype,
    "mlp": False,
    **config_value("analyses.layerwise", {}),
}
LINEAR_PROBE = {
    "C": ANALYSIS_DEFAULTS.linear_c,
    "max_iter": ANALYSIS_DEFAULTS.linear_max_iter,
    **config_value("analyses.linear_probe", {}),
}
MATCHED_PROBES = {"enabled": True, "mlp": True, **config_value("analyses.matched_probes", {})}
SIMILARITY = {"enabled": True, "knn_k": ANALYSIS_DEFAULTS.knn_k, **config_value("analyses.similarity", {})}
CONTROL_TASKS = bool(config_value("analyses.control_tasks", True))
BOOTSTRAP = int(config_value("analyses.bootstrap", ANALYSIS_DEFAULTS.bootstrap))
PERMUTATIONS = int(config_value("analyses.permutations", ANALYSIS_DEFAULTS.permutations))
CONFIDENCE = float(config_value("analyses.confidence", ANALYSIS_DEFAULTS.confidence))
ANALYSIS = f"{RESULTS}/analysis"


def analyses_enabled():
    return bool(config_value("analyses.enabled", False))


# The analyses' reports compare settings within one model; across models they have no layout yet.
if analyses_enabled() and len(MODEL_NAMES) > 1:
    _fail(f"analyses.enabled takes one model, and models names {len(MODEL_NAMES)}: {', '.join(MODEL_NAMES)}")


def analysis_probes_wanted():
    return LAYERWISE["enabled"] or MATCHED_PROBES["enabled"]


def analysis_mlp_json():
    """The paper's post-projection MLP probe hyperparameters (config `probes.post`), reused by the
    matched and the optional per-layer MLP probes so that they are the same probe family."""
    if not (MATCHED_PROBES["enabled"] and MATCHED_PROBES["mlp"]) and not LAYERWISE["mlp"]:
        return ""
    spec = {k: v for k, v in config["probes"]["post"].items() if k != "feature"}
    return f"--mlp {as_json(spec)}"


def analysis_probe_inputs(wildcards):
    base = f"{ANALYSIS}/{wildcards.model}/{wildcards.dataset}/{wildcards.setting}/seed{wildcards.seed}"
    feats = f"{RESULTS}/features/{wildcards.model}/{wildcards.dataset}/{wildcards.setting}/seed{wildcards.seed}"
    out = {"classes": classes_file(wildcards.dataset)}
    if LAYERWISE["enabled"]:
        out.update(layers_train=f"{base}/layers_train.safetensors", layers_test=f"{base}/layers_test.safetensors")
    if MATCHED_PROBES["enabled"]:
        out.update(features_train=f"{feats}/train.safetensors", features_test=f"{feats}/test.safetensors")
    return out


def analysis_probe_file_args(wildcards, input):
    args = [
        f"--{k.replace('_', '-')} {getattr(input, k)}"
        for k in ("layers_train", "layers_test", "features_train", "features_test")
        if hasattr(input, k)
    ]
    return " ".join(args)


def analysis_similarity_inputs(wildcards):
    out = {}
    where = f"{wildcards.model}/{wildcards.dataset}"
    for s in SETTINGS:
        if LAYERWISE["enabled"]:
            out[f"layers_{s}"] = f"{ANALYSIS}/{where}/{s}/seed{wildcards.seed}/layers_test.safetensors"
        out[f"features_{s}"] = f"{RESULTS}/features/{where}/{s}/seed{wildcards.seed}/test.safetensors"
    return out


def analysis_similarity_file_args(wildcards, input):
    layers = [f"{s}={getattr(input, f'layers_{s}')}" for s in SETTINGS if hasattr(input, f"layers_{s}")]
    feats = [f"{s}={getattr(input, f'features_{s}')}" for s in SETTINGS]
    return f"--layers {' '.join(layers)} --features {' '.join(feats)}"


def probe_tables():
    return expand(
        f"{ANALYSIS}/{{model}}/{{dataset}}/{{setting}}/seed{{seed}}/probes.csv",
        model=MODEL_NAMES,
        dataset=DATASETS,
        setting=SETTINGS,
        seed=SEEDS,
    )


def similarity_tables():
    return expand(
        f"{ANALYSIS}/{{model}}/{{dataset}}/seed{{seed}}/similarity.csv", model=MODEL_NAMES, dataset=DATASETS, seed=SEEDS
    )


def analysis_report_files(name, figure):
    return {
        "csv": f"{RESULTS}/tables/analysis_{name}.csv",
        "md": f"{RESULTS}/tables/analysis_{name}.md",
        "png": f"{RESULTS}/figures/analysis_{figure}.png",
        "pdf": f"{RESULTS}/figures/analysis_{figure}.pdf",
    }


def analysis_report_outputs(name, figure, title):
    f = analysis_report_files(name, figure)
    caption = f"../report/analysis_{name}.rst"
    labels = {"analysis": title}
    return dict(
        csv=report(
            f["csv"],
            caption=caption,
            category="Beyond the paper",
            subcategory=title,
            labels={**labels, "file": "table (CSV)"},
        ),
        md=f["md"],
        png=report(
            f["png"],
            caption=caption,
            category="Beyond the paper",
            subcategory=title,
            labels={**labels, "file": "figure"},
        ),
        pdf=f["pdf"],
    )


def analysis_targets():
    """Final outputs of the enabled analyses (for `rule all`); [] when `analyses.enabled` is false."""
    if not analyses_enabled():
        return []
    names = [("claims", "claims")]
    if LAYERWISE["enabled"]:
        names.append(("layerwise", "layerwise_f1"))
    if MATCHED_PROBES["enabled"]:
        names.append(("matched", "matched"))
    if CONTROL_TASKS and analysis_probes_wanted():
        names.append(("selectivity", "selectivity"))
    if SIMILARITY["enabled"]:
        names.append(("similarity", "similarity"))
    targets = [f for name, fig in names for f in analysis_report_files(name, fig).values()]
    targets += [f"{RESULTS}/tables/analysis_seed_stats.csv", f"{RESULTS}/tables/analysis_seed_stats.md"]
    return targets
