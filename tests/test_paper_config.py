"""config/paper.yaml: the paper's choices are pinned, every switch in docs/fidelity.md is a real key,
`snakemake -n` lists the full sweep, and the real workflow runs to completion on this config (tiny
random models and copies of the four datasets' official layouts, on CPU).
"""
from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from projection_probe.data.preparers.crisismmd import (
    PAPER_FIGURE3_CLASSES,
    PAPER_FIGURE3_DROP_LABELS,
    PAPER_FIGURE3_LABEL_MAP,
)

from layout_fixtures import make_crisismmd, make_dermnet, make_dtd, make_plantdoc

REPO = Path(__file__).resolve().parents[1]
PAPER_CONFIG = REPO / "config" / "paper.yaml"
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
FIDELITY = REPO / "docs" / "fidelity.md"
FIXTURES = {"plantdoc": make_plantdoc, "dtd": make_dtd, "dermnet": make_dermnet, "crisismmd": make_crisismmd}


def paper_config() -> dict:
    return yaml.safe_load(PAPER_CONFIG.read_text(encoding="utf-8"))


def snakemake_env() -> dict:
    # The rules call `projection-probe`, which lives beside this interpreter in the venv.
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def snakemake_exe() -> str:
    return str(Path(sys.executable).parent / "snakemake")


# ---------------------------------------------------------------- the config itself


def test_paper_config_validates_and_pins_the_papers_choices():
    from snakemake.utils import validate

    config = paper_config()
    validate(copy.deepcopy(config), str(SCHEMA))
    datasets = config["datasets"]
    assert list(datasets) == ["plantdoc", "dtd", "dermnet", "crisismmd"]
    assert {n: d["task"] for n, d in datasets.items()} == {
        "plantdoc": "plant leaf diseases", "dtd": "textures", "dermnet": "skin diseases",
        "crisismmd": "humanitarian categories"}
    assert {n: d["source"]["kind"] for n, d in datasets.items()} == {n: n for n in datasets}
    assert {n: d["source"]["root"] for n, d in datasets.items()} == {n: f"data/raw/{n}" for n in datasets}
    # PlantDoc: all 28 train folders (not the paper's 17), with the train-only class.
    plantdoc = datasets["plantdoc"]["classes"]
    assert len(plantdoc) == 28 and "Tomato two spotted spider mites leaf" in plantdoc
    assert len(datasets["dtd"]["classes"]) == 47 and "polka-dotted" in datasets["dtd"]["classes"]
    assert len(datasets["dermnet"]["classes"]) == 23 and "Acne and Rosacea Photos" in datasets["dermnet"]["classes"]
    # CrisisMMD: the Figure 3 construction, exactly the preparer's documented constants.
    crisis = datasets["crisismmd"]
    assert crisis["classes"] == list(PAPER_FIGURE3_CLASSES)
    assert crisis["source"]["label_map"] == PAPER_FIGURE3_LABEL_MAP
    assert crisis["source"]["drop_labels"] == list(PAPER_FIGURE3_DROP_LABELS)
    assert config["seeds"] == [0, 1, 2, 3, 4]
    settings = config["settings"]
    assert settings["original"] == {"kind": "none"}
    assert (settings["ft-proj"]["lr"], settings["ft-proj"]["effective_batch"], settings["ft-proj"]["per_device_batch"],
            settings["ft-proj"]["template"]) == (1e-3, 64, 32, "v1")
    assert (settings["ft-e2e"]["lr"], settings["ft-e2e"]["effective_batch"],
            settings["ft-e2e"]["per_device_batch"]) == (2e-5, 32, 16)
    # FT-E2E as the paper ran it: 2 GPUs, FSDP full shard, no gradient accumulation.
    assert (settings["ft-e2e"]["num_gpus"], settings["ft-e2e"]["accelerate_config"]) == (
        2, "config/accelerate/fsdp_2gpu.yaml")
    assert (REPO / settings["ft-e2e"]["accelerate_config"]).is_file()
    assert config["finetune"]["max_grad_norm"] == 0.0
    model = config["models"]["llava15-7b"]
    assert (model["loader"], model["template"], model["image_preprocessing"]) == (
        "llava_hf", "v1", "pad")
    assert config["classify"]["temperature"] == 0.0 and config["data"]["prompt_output_cue"] is False
    for kind in ("post", "image_only"):
        probe = config["probes"][kind]
        assert (probe["lr"], probe["batch_size"], probe["val_source"]) == (1e-4, 128, "split")
    assert config["probes"]["post"]["hidden"] == [2048, 1536, 1024, 512, 256]
    assert config["probes"]["image_only"]["hidden"] == [2000, 3600, 1024, 600, 256]
    assert config["report"]["paper_map"] == {n: n for n in datasets}


def _resolve(config: dict, dotted: str):
    """`a.b.c` in the config; setting and dataset names contain '-', never '.'."""
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def test_every_switch_in_fidelity_md_is_a_key_of_paper_yaml():
    """The 'config key' column of docs/fidelity.md's switch table names keys that exist in
    config/paper.yaml, so the document cannot drift from the config."""
    config = paper_config()
    rows = [line for line in FIDELITY.read_text(encoding="utf-8").splitlines()
            if line.startswith("|") and not set(line) <= set("|-: ")]
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    key_col = header.index("config key")
    keys = []
    for row in rows[1:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        # A stray '|' inside a cell would shift the key column; fail rather than skip the row.
        assert len(cells) == len(header), f"{FIDELITY}: row has {len(cells)} cells, header {len(header)}: {row[:80]}"
        keys += re.findall(r"`([a-z_][\w.-]*)`", cells[key_col])
    assert len(keys) >= 15, f"expected the switch table in {FIDELITY}, found keys {keys}"
    missing = []
    for key in keys:
        try:
            _resolve(config, key)
        except KeyError:
            missing.append(key)
    assert not missing, f"{FIDELITY} names keys that config/paper.yaml lacks: {missing}"


# ---------------------------------------------------------------- the sweep


def job_stats(output: str) -> dict[str, int]:
    """The 'Job stats' table of `snakemake -n` as {rule: count}, with 'total'."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "Job stats:")
    stats = {}
    for line in lines[start + 1:]:
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            stats[parts[0]] = int(parts[1])
            if parts[0] == "total":
                break
    return stats


def expected_jobs(config: dict) -> dict[str, int]:
    d, s = len(config["datasets"]), len(config["seeds"])
    settings = config["settings"]
    n_settings = len(settings)
    n_trained = sum(1 for v in settings.values() if v["kind"] != "none")
    counts = {
        "prepare_dataset": d, "build_prompts": d * s, "build_base_model": 1, "extract_vision_features": d,
        "finetune": d * s * n_trained, "classify": d * s * n_settings * len(config["classify"]["modes"]),
        "extract_features": d * s * n_settings, "train_probe_post": d * s * n_settings,
        "train_probe_image_only": d * s, "random_baseline": d * s, "encoder_zero_shot": d,
        "aggregate": 1, "make_tables": 1, "make_figure": 1, "all": 1,
    }
    # One download rule per dataset with a public URL (DTD, PlantDoc); the others need a login.
    counts.update({f"download_{name}": 1 for name, entry in config["datasets"].items() if "download" in entry})
    counts["total"] = sum(counts.values())
    return counts


def test_dry_run_lists_the_full_sweep():
    config = paper_config()
    # --forceall: the count must not depend on what a previous (demo) run left in results/.
    cmd = [snakemake_exe(), "-n", "--forceall", "--configfile", "config/paper.yaml"]
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=snakemake_env())
    elapsed = time.perf_counter() - started
    print(f"snakemake -n --configfile config/paper.yaml: {elapsed:.2f} s")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    stats = job_stats(done.stdout + done.stderr)
    # 4 datasets x 5 seeds x (original, ft-proj, ft-e2e, ft-lora), 3 of them fine-tuned, and 2
    # downloads: 379 jobs.
    assert expected_jobs(config)["total"] == 379
    assert stats == expected_jobs(config)


def test_families_overlay_plans_the_paper_study_once_per_model():
    """config/families.yaml over the paper config: every model of it plans the paper's study under its
    own name (the checkpoints are not here, so the config check of their model_type waits for them)."""
    families = yaml.safe_load((REPO / "config" / "families.yaml").read_text())["models"]
    cmd = [snakemake_exe(), "-n", "--forceall", "--configfile", "config/paper.yaml", "config/families.yaml"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=snakemake_env())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    stats = job_stats(done.stdout + done.stderr)
    one_model = expected_jobs(paper_config())
    n_models = 1 + len(families)  # paper.yaml's LLaVA-1.5-7B and the overlay's models
    assert stats["build_family_base_model"] == len(families)
    for rule in ("classify", "extract_features", "finetune", "train_probe_post", "train_probe_image_only"):
        assert stats[rule] == n_models * one_model[rule], rule


# ---------------------------------------------------------------- end to end on CPU


def e2e_config(tmp: Path) -> dict:
    """config/paper.yaml with data, models and sizes made tiny; everything else (settings, switches,
    CrisisMMD mapping, paper_map) as in the paper config."""
    from projection_probe.testing.tiny import make_tiny_clip, make_tiny_llava

    config = paper_config()
    for name, make in FIXTURES.items():
        classes, fixture_source = make(tmp / "data" / "raw" / name)
        entry = config["datasets"][name]
        # The paper's source block with the fixture's root (and DermNet's label_map); the fixtures
        # hold 3-4 of the real classes.
        entry["source"] = {**entry["source"], **fixture_source}
        entry["classes"] = classes
        # No network in tests: without a `download` block no download rule exists for the fixture root.
        entry.pop("download", None)
    make_tiny_llava(tmp / "models" / "tiny-llava")
    make_tiny_clip(tmp / "models" / "tiny-clip")
    config["seeds"] = [0]
    config["models"]["llava15-7b"].update(llava_hf=str(tmp / "models" / "tiny-llava"), device="cpu", dtype="float32")
    for setting in config["settings"].values():
        if setting["kind"] != "none":
            # One process per fine-tune: the 2-process FSDP route of ft-e2e has its own CPU test
            # (tests/test_train_distributed.py).
            setting.update(effective_batch=4, per_device_batch=2, num_gpus=1, accelerate_config=None)
        if setting["kind"] == "ft-lora":
            setting.update(lora_r=4, lora_alpha=8)
    config["finetune"].update(bf16=False, gradient_checkpointing=False, checkpoint_every_steps=2)
    config["classify"].update(batch_size=4, max_new_tokens=8)
    config["features"].update(batch_size=8, num_workers=0)
    for kind in ("post", "image_only"):
        config["probes"][kind].update(hidden=[16], batch_size=4, max_epochs=5, patience=2, val_fraction=0.3)
    config["baselines"]["encoder_zero_shot"].update(model=str(tmp / "models" / "tiny-clip"), batch_size=8)
    config["resources"]["threads"] = 1
    return config


@pytest.mark.slow
def test_paper_config_runs_end_to_end_on_cpu(tmp_path):
    config = e2e_config(tmp_path)
    config_path = tmp_path / "paper_test.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    cmd = [snakemake_exe(), "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
           "--configfile", str(config_path), "--cores", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=snakemake_env())
    if done.returncode != 0:
        logs = "".join(f"\n--- {p}\n{p.read_text(errors='replace')[-1500:]}"
                       for p in sorted((tmp_path / "results" / "logs").rglob("*.log"))
                       if "Error" in p.read_text(errors="replace"))
        pytest.fail(f"snakemake failed:\n{done.stderr[-4000:]}\n{logs}")

    results = tmp_path / "results"
    for n in (1, 2, 3):
        for ext in ("csv", "md", "tex"):
            assert (results / "tables" / f"table{n}.{ext}").stat().st_size > 0
    assert (results / "figures" / "richness_vs_f1.png").read_bytes()[:4] == b"\x89PNG"

    table1 = pd.read_csv(results / "tables" / "table1.csv")
    assert {"paper_macro_f1", "paper_accuracy", "delta_macro_f1"} <= set(table1.columns)
    assert set(table1["dataset"]) == set(FIXTURES)
    assert {"original", "ft-proj", "ft-e2e", "ft-lora"} <= set(table1.loc[table1["method"] == "mllm", "setting"])
    # paper_map joined the paper's numbers: the random row of PlantDoc is the paper's 0.0309 (0.0339),
    # and Δ is our mean minus it.
    random_plantdoc = table1[(table1["method"] == "random") & (table1["dataset"] == "plantdoc")].iloc[0]
    assert (random_plantdoc["paper_macro_f1"], random_plantdoc["paper_accuracy"]) == (0.0309, 0.0339)
    assert random_plantdoc["delta_macro_f1"] == pytest.approx(random_plantdoc["macro_f1_mean"] - 0.0309)
    assert "paper" in (results / "tables" / "table1.md").read_text(encoding="utf-8")
    # The CrisisMMD mapping from paper.yaml produced the Figure 3 classes (the fixture's dropped
    # labels are gone, the folded ones are kept).
    manifest = pd.read_csv(results / "data" / "crisismmd" / "manifest.csv")
    assert set(manifest["label"]) == set(PAPER_FIGURE3_CLASSES)
