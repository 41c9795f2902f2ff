"""profiles/slurm sizes each job by its data: a dry run of config/paper.yaml through the real profile
(only the EDIT fields filled in, no Slurm daemon) shows FT-E2E fine-tunes asking for 2 GPUs and the
vision-cache jobs asking for memory that grows with the dataset; retries ask for more.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from slurm_support import ACCOUNT, PARTITION, SLURM_PROFILE

REPO = Path(__file__).resolve().parents[1]
PAPER_CONFIG = REPO / "config" / "paper.yaml"
# Images per dataset at the paper's scale (docs/datasets.md); only the manifests' row counts matter.
PAPER_IMAGES = {"plantdoc": 2578, "dtd": 3760, "crisismmd": 10461, "dermnet": 19559}
DATA_DEPENDENT = ("finetune", "classify", "extract_vision_features", "extract_vision_features_variant",
                  "extract_features", "extract_layer_features")


def filled_profile(tmp: Path) -> Path:
    """profiles/slurm/config.yaml with its two EDIT fields filled in and nothing else changed.
    (slurm_support.make_test_profile also replaces every mem_mb and runtime with small constants, which
    is what this test must not do.)"""
    text = SLURM_PROFILE.read_text()
    assert text.count("EDIT_ME_partition") == 1 and text.count("EDIT_ME_account") == 1
    folder = tmp / "profile"
    folder.mkdir()
    (folder / "config.yaml").write_text(text.replace("EDIT_ME_partition", PARTITION)
                                        .replace("EDIT_ME_account", ACCOUNT))
    return folder


def write_prepared_datasets(workdir: Path) -> None:
    """What prepare_dataset leaves behind, with the paper's image counts: the manifests exist, so
    the jobs downstream of them are sized in the dry run."""
    for name in ("plantdoc", "dtd"):  # download targets; they must be older than the manifests
        (workdir / "data" / "raw" / name).mkdir(parents=True)
    for name, rows in PAPER_IMAGES.items():
        folder = workdir / "results" / "data" / name
        folder.mkdir(parents=True)
        lines = "".join(f"images/{i}.jpg,a,train\n" for i in range(rows))
        (folder / "manifest.csv").write_text("image_path,label,split\n" + lines)
        (folder / "classes.json").write_text('["a"]')
        (folder / "bad_images.txt").write_text("")
        (folder / "warnings.txt").write_text("")


def dry_run_jobs(output: str) -> list[dict]:
    """(rule, wildcards, resources) of every job block that `snakemake -n` printed."""
    jobs = []
    for block in re.split(r"\n(?=rule \w+:)", output):
        head = re.match(r"rule (\w+):", block)
        resources = re.search(r"^\s+resources: (.*)$", block, re.M)
        if not head or not resources:
            continue
        wildcards = re.search(r"^\s+wildcards: (.*)$", block, re.M)
        jobs.append({"rule": head.group(1),
                     "wildcards": dict(kv.split("=", 1) for kv in wildcards.group(1).split(", ")) if wildcards else {},
                     "resources": dict(kv.split("=", 1) for kv in resources.group(1).split(", "))})
    return jobs


@pytest.mark.slow  # one Snakemake dry run of the full sweep: about 11 s here
def test_paper_dry_run_sizes_jobs_by_their_data(tmp_path):
    profile = filled_profile(tmp_path)
    workdir = tmp_path / "work"
    write_prepared_datasets(workdir)
    cmd = [sys.executable, "-m", "snakemake", "-n", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--profile", str(profile), "--configfile", str(PAPER_CONFIG)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    jobs = dry_run_jobs(done.stdout + done.stderr)

    finetunes = [j for j in jobs if j["rule"] == "finetune"]
    assert len(finetunes) == 3 * 4 * 5  # three trained settings, four datasets, five seeds
    for job in finetunes:
        expected = "2" if job["wildcards"]["setting"] == "ft-e2e" else "1"
        assert job["resources"]["gpu"] == expected, job

    vision = {j["wildcards"]["dataset"]: j["resources"] for j in jobs if j["rule"] == "extract_vision_features"}
    assert set(vision) == set(PAPER_IMAGES)
    by_size = sorted(PAPER_IMAGES, key=PAPER_IMAGES.get)
    memory = [int(vision[name]["mem_mb"]) for name in by_size]
    runtime = [int(vision[name]["runtime"]) for name in by_size]
    assert memory == sorted(memory) and len(set(memory)) == 4, dict(zip(by_size, memory))
    assert runtime == sorted(runtime) and runtime[0] < runtime[-1], dict(zip(by_size, runtime))
    # DermNet's cache (about 23 GB) is built with room for it, not with the old flat 32 GB.
    assert memory[-1] > 3 * 23_000


def evaluate(expression: str, attempt: int, **inputs) -> int:
    """A profile resource expression evaluated as Snakemake does (names: input, attempt)."""
    return eval(expression, {"input": SimpleNamespace(**inputs), "attempt": attempt})


def test_retries_ask_for_more_memory_and_time(tmp_path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("image_path,label,split\n" + "x.jpg,a,train\n" * 1000)
    profile = yaml.safe_load(SLURM_PROFILE.read_text())
    for rule in DATA_DEPENDENT:
        resources = profile["set-resources"][rule]
        for key in ("mem_mb", "runtime"):
            first, second = (evaluate(resources[key], attempt, manifest=str(manifest), size_mb=5000.0)
                             for attempt in (1, 2))
            assert isinstance(first, int) and second > first, (rule, key, first, second)
