"""What a config edit reruns, for every key of the schema, on a finished micro run.

Each row changes one key in an overlay (`--configfile micro.yaml overlay.yaml`) and dry-runs
(`snakemake -n`): an operational key must give "Nothing to be done"; a result key exactly the rules it
affects (and, where the key belongs to one dataset, setting or mode, only that one's jobs). A test
checks that the rows cover every key the schema lists (tests/test_config_kinds.py walks it).

Keys that must give "Nothing to be done" are changed together, in two overlays: the operational keys,
and the result keys that the micro config does not use (its datasets have no download, it composes
parts from local folders, its analyses are off). This stays a per-key assertion: a dry run plans a
job when one of its params, inputs or code changed, so if no job changes with every key changed at
once, none changes with any one of them (each key feeds different params, so two changes cannot
cancel). Result keys that rerun something are changed one at a time, since a batch would hide a key
that reruns nothing.
"""
from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from test_config_kinds import schema_keys

from projection_probe.testing.micro import MICRO_MODEL, snakemake_command

pytestmark = pytest.mark.slow

REPORT = {"aggregate", "make_tables", "make_figure", "all"}
TRAINED = {"finetune", "classify", "extract_features", "train_probe_post"} | REPORT
BASE_MODEL = {"align_projector"} | TRAINED | {"train_probe_image_only"}
VISION = {"extract_vision_features"} | BASE_MODEL
DATASET = {"prepare_dataset", "build_prompts", "random_baseline", "encoder_zero_shot"} | VISION - {"align_projector"}
NOTHING = frozenset()


@dataclass
class Row:
    key: str
    overlay: dict | Callable[[dict], dict]  # or made from the micro run's config
    rules: set | frozenset  # NOTHING: "Nothing to be done"
    # Wildcards every planned job outside REPORT must have (one dataset's, setting's or mode's jobs).
    only: dict = field(default_factory=dict)
    # The overlay is the whole config, read instead of the micro run's (not over it).
    whole_config: bool = False


def setting(name, **keys):
    return {"settings": {name: keys}}


def model(**keys):
    return {"models": {MICRO_MODEL: keys}}


def probe(kind, **keys):
    return {"probes": {kind: keys}}


def zero_shot(**keys):
    return {"baselines": {"encoder_zero_shot": keys}}


# The rows that must rerun nothing, all at once (see the module docstring).
OPERATIONAL_OVERLAY = {
    "classify": {"batch_size": 3, "label_chunk_size": 2}, "features": {"batch_size": 5, "num_workers": 2},
    "finetune": {"checkpoint_every_steps": 40}, "resources": {"threads": 2, "align_threads": 2},
    "baselines": {"encoder_zero_shot": {"batch_size": 7}}, "analyses": {"layerwise": {"batch_size": 2}},
}
UNUSED_OVERLAY = {
    "datasets": {"fashion": {"paper_name": "Clothing", "download": {"url": "https://example.org/x.tgz",
                                                                     "sha256": "0" * 64}}},
    **model(llava_hf="/nowhere/llava", checkpoint="/nowhere/family", image_side=64,
            language_model={"gguf_package": "llm_other", "gguf_file": "other.gguf"}),
    "analyses": {"layerwise": {"enabled": False, "poolings": ["last_token"], "storage_dtype": "float32",
                               "mlp": True},
                 "linear_probe": {"C": 2.0, "max_iter": 50}, "matched_probes": {"enabled": False, "mlp": False},
                 "control_tasks": False, "similarity": {"enabled": False, "knn_k": 3}, "bootstrap": 10,
                 "permutations": 20, "confidence": 0.9},
}
NOTHING_KEYS = {
    "OPERATIONAL": ["classify.batch_size", "classify.label_chunk_size", "features.batch_size", "features.num_workers",
                    "finetune.checkpoint_every_steps", "resources.threads", "resources.align_threads",
                    "baselines.encoder_zero_shot.batch_size", "analyses.layerwise.batch_size"],
    # The micro datasets have no `source.root`, so no download rule; the parts loader reads neither
    # models.<name>.llava_hf, models.<name>.checkpoint, models.<name>.image_side nor the GGUF names of a
    # `source: path` language model;
    # analyses are off.
    "UNUSED": ["datasets.<name>.paper_name", "datasets.<name>.download.url", "datasets.<name>.download.sha256",
               "models.<name>.llava_hf", "models.<name>.checkpoint", "models.<name>.image_side",
               "models.<name>.language_model.gguf_package",
               "models.<name>.language_model.gguf_file",
               "analyses.layerwise.enabled", "analyses.layerwise.poolings", "analyses.layerwise.storage_dtype",
               "analyses.layerwise.mlp", "analyses.linear_probe.C", "analyses.linear_probe.max_iter",
               "analyses.matched_probes.enabled", "analyses.matched_probes.mlp", "analyses.control_tasks",
               "analyses.similarity.enabled", "analyses.similarity.knn_k", "analyses.bootstrap",
               "analyses.permutations", "analyses.confidence"],
}

# Not a key but a new name under `models`: the axis grows by one model.
NEW_MODEL = "models.<a new name>"

PROBE_CHANGES = {"feature": {"post": "pre", "image_only": "pre"}, "hidden": [24], "lr": 2.0e-3, "batch_size": 8,
                 "max_epochs": 9, "patience": 2, "val_fraction": 0.25, "val_source": "test", "standardize": True,
                 "restore_best": False}

ROWS = [
    Row("seeds", {"seeds": [0, 1, 2]},
        {"build_prompts", "random_baseline", "finetune", "classify", "extract_features", "train_probe_post",
         "train_probe_image_only"} | REPORT, {"seed": "2"}),
    # fashion is not among align.datasets, so its changes stay with its own jobs.
    Row("datasets.<name>.task", {"datasets": {"fashion": {"task": "garments"}}}, DATASET, {"dataset": "fashion"}),
    Row("datasets.<name>.classes", {"datasets": {"fashion": {"classes": [
        "tee", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]}}},
        DATASET, {"dataset": "fashion"}),
    Row("datasets.<name>.source.kind", {"datasets": {"fashion": {"source": {"kind": "sklearn_digits"}}}},
        DATASET, {"dataset": "fashion"}),
    Row("data.on_bad_image", {"data": {"on_bad_image": "skip"}}, DATASET | {"align_projector"}),
    Row("data.allow_train_only_classes", {"data": {"allow_train_only_classes": False}},
        DATASET | {"align_projector"}),
    Row("data.cross_split_duplicates", {"data": {"cross_split_duplicates": "drop_from_train"}},
        DATASET | {"align_projector"}),
    Row("data.exif_transpose", {"data": {"exif_transpose": True}}, VISION),
    # The prompts feed training and classification, not the features of the base model.
    Row("data.prompt_output_cue", {"data": {"prompt_output_cue": True}}, {"build_prompts"} | TRAINED),
    Row("models.<name>.loader", model(loader="llava_hf", llava_hf="/nowhere/llava"),
        {"build_base_model"} | VISION - {"align_projector"}),
    *[Row(f"models.<name>.vision.{k}", model(vision={k: v}), VISION)
      for k, v in {"kind": "efficientnet_lite0", "path": "/elsewhere/vision", "feature_layer": -1,
                   "select_strategy": "full", "grid": 3}.items()],
    Row("models.<name>.language_model.source", model(language_model={"source": "gguf"}), {"convert_llm"} | BASE_MODEL),
    # Another folder that exists (the run's vision tower): a dry run does not look at the inputs of a
    # job it has no reason to run, so a missing folder would plan nothing.
    Row("models.<name>.language_model.path",
        lambda base: model(language_model={"path": base["models"][MICRO_MODEL]["vision"]["path"]}), BASE_MODEL),
    Row("models.<name>.projector", model(projector="linear"), BASE_MODEL),
    Row("models.<name>.template", model(template="chatml"), BASE_MODEL),
    Row("models.<name>.image_preprocessing", model(image_preprocessing="square"), VISION),
    Row("models.<name>.dtype", model(dtype="bfloat16"), {"classify"} | REPORT),
    Row("models.<name>.device", model(device="auto"), VISION | {"encoder_zero_shot"}),
    Row("models.<name>.trust_remote_code", model(trust_remote_code=True), TRAINED),
    # A second model on the same frozen parts: its own base model and what follows from it, nothing
    # of the first model's, and neither X_v nor the image-only probe again (it reads the first one's).
    Row(NEW_MODEL, lambda base: {"models": {"second": {**base["models"][MICRO_MODEL], "projector": "resampler"}}},
        {"align_projector"} | TRAINED, {"model": "second"}),
    *[Row(f"align.{k}", {"align": {k: v}}, BASE_MODEL)
      for k, v in {"datasets": ["digits", "fashion"], "caption_source": "imagenet_top1", "template": "v1",
                   "lr": 2.0e-3, "epochs": 2, "effective_batch": 16, "per_device_batch": 4,
                   "max_examples": 16}.items()],
    # One setting's keys rerun that setting's jobs only.
    *[Row(f"settings.<name>.{k}", setting(name, **{k: v}), TRAINED, {"setting": name})
      for name, k, v in [("ft-e2e", "kind", "ft-lora"), ("ft-proj", "lr", 2.0e-3), ("ft-lora", "projector_lr", 1.0e-4),
                         ("ft-proj", "effective_batch", 4), ("ft-proj", "per_device_batch", 2),
                         ("ft-proj", "max_examples", 10), ("ft-proj", "template", "plain"), ("ft-lora", "lora_r", 8),
                         ("ft-lora", "lora_alpha", 16), ("ft-lora", "lora_dropout", 0.1), ("ft-proj", "num_gpus", 2),
                         ("ft-proj", "accelerate_config", "config/accelerate/ddp_2gpu.yaml"),
                         ("ft-proj", "optim", "adamw_torch_fused"), ("ft-proj", "model_dtype", "bfloat16")]],
    # A new image preprocessing adds its vision cache (one per dataset), which has no setting wildcard.
    Row("settings.<name>.image_preprocessing", setting("ft-proj", image_preprocessing="square"),
        TRAINED | {"extract_vision_features_variant"}),
    *[Row(f"finetune.{k}", {"finetune": {k: v}}, TRAINED)
      for k, v in {"epochs": 2, "warmup_ratio": 0.1, "weight_decay": 0.01, "lr_scheduler": "linear",
                   "max_grad_norm": 1.0, "bf16": True, "gradient_checkpointing": True, "num_gpus": 2,
                   "optim": "adamw_torch_fused", "accelerate_config": "config/accelerate/ddp_2gpu.yaml",
                   "model_dtype": "bfloat16"}.items()],
    Row("classify.modes", {"classify": {"modes": ["generate", "constrained"]}}, REPORT),
    *[Row(f"classify.{k}", {"classify": {k: v}}, {"classify"} | REPORT, {"mode": "generate"})
      for k, v in {"max_new_tokens": 4, "temperature": 0.2, "parser": "exact", "several_classes": "first"}.items()],
    *[Row(f"probes.{kind}.{k}", probe(kind, **{k: v[kind] if isinstance(v, dict) else v}),
          {f"train_probe_{kind}"} | REPORT)
      for kind in ("post", "image_only") for k, v in PROBE_CHANGES.items()],
    Row("metrics.f1_classes", {"metrics": {"f1_classes": "all"}},
        {"train_probe_post", "train_probe_image_only"} | REPORT),
    Row("baselines.random", {"baselines": {"random": False}}, REPORT),
    Row("baselines.encoder_zero_shot.enabled", zero_shot(enabled=False), REPORT),
    *[Row(f"baselines.encoder_zero_shot.{k}", zero_shot(**{k: v}), {"encoder_zero_shot"} | REPORT)
      for k, v in {"model": "/elsewhere/clip", "templates": ["a photo of {}."], "lowercase_labels": False,
                   "image_preprocessing": "pad", "label_set": "test"}.items()],
    *[Row(f"report.{k}", {"report": {k: v}}, {"make_tables", "all"})
      for k, v in {"encoder_name": "CLIP-tiny", "mllm_name": "MLLM-tiny", "paper_map": {"digits": "dtd"}}.items()],
    # The analyses take one model, and an overlay cannot remove the micro run's second one: this row's
    # config is the whole micro config less that model. Dropping it reruns the report (its tables lose
    # the model column); the analyses add their own rules and nothing else.
    Row("analyses.enabled",
        lambda base: {**base, "models": {MICRO_MODEL: base["models"][MICRO_MODEL]}, "analyses": {"enabled": True}},
        {"extract_layer_features", "analysis_probe", "analysis_similarity", "analysis_layerwise_report",
         "analysis_matched_report", "analysis_selectivity_report", "analysis_similarity_report",
         "analysis_claims"} | REPORT, whole_config=True),
]


def snakemake_main(argv: list[str]) -> tuple[int, str]:
    """Snakemake's command line run in this process: exit code and output."""
    import snakemake.cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            snakemake.cli.main(argv)
        except SystemExit as e:
            return e.code or 0, out.getvalue()
    return 0, out.getvalue()


def dry_runs(workdir: Path, overlays: Path, changes: dict[str, dict],
             whole_configs: frozenset = frozenset()) -> dict[str, tuple[str, list]]:
    """name -> (output, [(rule, wildcards)] of every job planned) of `snakemake -n` with each overlay
    (for a name in `whole_configs`: with that config alone).
    The shared micro run is read only: the overlays live elsewhere, and a dry run without a lock
    writes nothing. Each dry run is a fork of this process, which has imported Snakemake already:
    a third of the cost of a new `snakemake` process, and no state carried from one run to the next."""
    import snakemake.cli  # noqa: F401  (imported once, before the forks)

    commands = []
    for name, overlay in changes.items():
        path = overlays / (re.sub(r"\W", "_", name) + ".yaml")
        path.write_text(yaml.safe_dump(overlay, sort_keys=False))
        argv = snakemake_command(workdir, "-n", "--nolock")[1:]
        at = argv.index("--configfile") + 2
        commands.append(argv[:at - 1] + [str(path)] + argv[at:] if name in whole_configs
                        else argv[:at] + [str(path)] + argv[at:])
    with multiprocessing.get_context("fork").Pool(2, maxtasksperchild=1) as pool:
        outputs = pool.map(snakemake_main, commands)
    results = {}
    for name, (code, text) in zip(changes, outputs):
        assert code == 0, f"{name}: {text[-3000:]}"
        jobs = []
        for block in re.split(r"\n(?=(?:local)?rule \w+:)", text)[1:]:
            wildcards = re.search(r"^\s+wildcards: (.*)$", block, flags=re.MULTILINE)
            jobs.append((re.match(r"(?:local)?rule (\w+):", block).group(1),
                         dict(kv.split("=", 1) for kv in wildcards.group(1).split(", ")) if wildcards else {}))
        results[name] = (text, jobs)
    return results


@pytest.fixture(scope="module")
def table(micro_run, tmp_path_factory):
    base = yaml.safe_load((micro_run / "micro.yaml").read_text())
    return dry_runs(micro_run, tmp_path_factory.mktemp("overlays"),
                    {"unchanged": {}, "OPERATIONAL": OPERATIONAL_OVERLAY, "UNUSED": UNUSED_OVERLAY,
                     **{row.key: row.overlay(base) if callable(row.overlay) else row.overlay for row in ROWS}},
                    frozenset(row.key for row in ROWS if row.whole_config))


def test_the_table_covers_every_schema_key():
    covered = [row.key for row in ROWS if row.key != NEW_MODEL] + [k for keys in NOTHING_KEYS.values() for k in keys]
    assert len(covered) == len(set(covered)), sorted(k for k in covered if covered.count(k) > 1)
    keys = schema_keys()
    assert set(covered) == set(keys), (f"not in the table: {sorted(set(keys) - set(covered))}; "
                                       f"not in the schema: {sorted(set(covered) - set(keys))}")
    operational = {k for k, kind in keys.items() if kind == "operational"}
    assert set(NOTHING_KEYS["OPERATIONAL"]) == operational


def test_an_unchanged_config_does_nothing(table):
    text, jobs = table["unchanged"]
    assert "Nothing to be done" in text and not jobs, text[-3000:]


@pytest.mark.parametrize("batch", sorted(NOTHING_KEYS))
def test_operational_and_unused_keys_rerun_nothing(table, batch):
    text, jobs = table[batch]
    assert "Nothing to be done" in text and not jobs, (NOTHING_KEYS[batch], sorted({r for r, _ in jobs}), text[-3000:])


@pytest.mark.parametrize("row", ROWS, ids=[row.key for row in ROWS])
def test_a_result_key_reruns_exactly_the_jobs_it_affects(table, row):
    text, jobs = table[row.key]
    assert {rule for rule, _ in jobs} == set(row.rules), (row.key, text[-3000:])
    for rule, wildcards in jobs:
        for name, value in row.only.items():
            if rule not in REPORT and name in wildcards:
                assert wildcards[name] == value, (row.key, rule, wildcards)


def test_a_new_revision_or_fingerprint_of_a_datasets_source_reruns_exactly_its_jobs(micro_run, tmp_path):
    """The micro run's fashion dataset is a local 🤗 datasets folder (its own copy): a `revision` in
    the config, or a rewritten file (a new mtime, so a new fingerprint), re-prepares that dataset and
    what depends on it, and nothing else. The file's mtime is put back before any other test reads it."""
    changed = micro_run / "fashion_dataset" / "test.parquet"
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    try:
        fingerprint = dry_runs(micro_run, tmp_path, {"fingerprint": {}})
    finally:
        os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    revision = dry_runs(micro_run, tmp_path, {"revision": {"datasets": {"fashion": {"source": {"revision": "v2"}}}}})
    for name, (text, jobs) in {**fingerprint, **revision}.items():
        assert {rule for rule, _ in jobs} == DATASET, (name, text[-3000:])
        assert all(wildcards.get("dataset", "fashion") == "fashion" for rule, wildcards in jobs if rule not in REPORT)
