"""Integration tests: the workflow through a real (local, single-node) Slurm cluster.

    pytest -m slurm -s tests/test_slurm_integration.py      # as root; see tests/slurm_support.py

The cluster (.ci/slurm/start.sh) is started once per session; the tests skip only if the machine
cannot run it (not root, or the Slurm packages are absent and PP_INSTALL_SLURM!=1). Evidence of
what went through Slurm comes from sacct (see tests/slurm_support.py for why).
"""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path

import pytest
import yaml

from slurm_support import (
    GPU_TYPE,
    LOCAL_PROFILE,
    OK_STATES,
    REPO,
    SLURM_PROFILE,
    jobs_submitted,
    jobs_submitted_with_gpu,
    local_rules_in_log,
    make_test_profile,
    plugin_log_rules,
    run_snakemake,
    slurm_cluster,  # noqa: F401  (pytest fixture)
    wait_for_accounting,
    write_summary,
)

# The workflow's rules by where they must run (docs/cluster.md; `localrule: True` in each local rule).
GPU_RULES = {"align_projector", "finetune", "classify", "extract_vision_features", "extract_vision_features_variant",
             "extract_features", "encoder_zero_shot", "extract_layer_features"}
LOCAL_RULES = {"prepare_dataset", "build_prompts", "random_baseline", "aggregate", "make_tables",
               "make_figure"}
TABLES = ("table1.csv", "table2.csv", "table3.csv")


def _workflow_rule_names() -> set[str]:
    names = set()
    for smk in [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]:
        if smk.exists():
            text = smk.read_text()
            names |= set(re.findall(r"^\s*rule\s+(\w+)\s*:", text, flags=re.MULTILINE))
            names |= set(re.findall(r"^\s*use rule\s+\w+\s+as\s+(\w+)", text, flags=re.MULTILINE))
    return names


def test_slurm_profile_matches_the_workflow_rules():
    """No Slurm needed: the profile names real rules, gives every GPU rule a GPU, none to others."""
    profile = yaml.safe_load(SLURM_PROFILE.read_text())
    rules = _workflow_rule_names()
    assert rules, "no `rule X:` found in Snakefile or workflow/rules/*.smk"
    set_resources = profile["set-resources"]
    unknown = (set(set_resources) | set(profile.get("set-threads", {}))) - rules
    assert not unknown, f"{SLURM_PROFILE} configures rules the workflow does not have: {sorted(unknown)}"
    for rule in (GPU_RULES & rules) - {"finetune"}:
        assert set_resources.get(rule, {}).get("gpu", 0) >= 1, f"GPU rule {rule} requests no GPU in the profile"
    # finetune's GPU count is the config's num_gpus, declared by the rule itself (the same number goes
    # to `accelerate launch --num_processes`): a profile value would override it.
    assert "gpu" not in set_resources.get("finetune", {}), "the profile must not set finetune's GPU count"
    finetune_rule = (REPO / "workflow" / "rules" / "finetune.smk").read_text()
    assert 'gpu=lambda wc: finetune_params(wc.setting, wc.model)["num_gpus"]' in finetune_rule
    for rule in set(set_resources) - GPU_RULES:
        assert not set_resources[rule].get("gpu"), f"non-GPU rule {rule} requests a GPU in the profile"
    assert not LOCAL_RULES & set(set_resources), "local rules never reach Slurm: no resources for them"
    assert profile["executor"] == "slurm" and profile["slurm-status-command"] in {"sacct", "squeue"}
    # The group patterns the profile switches on are the workflow's (workflow/rules/common.smk), and every
    # grouped rule takes the one `serial` slot that sizes a group as its members in series.
    common = (REPO / "workflow" / "rules" / "common.smk").read_text()
    patterns = dict(re.findall(r'^(MODEL_GROUP|CPU_GROUP) = "(.+)"$', common, flags=re.MULTILINE))
    assert sorted(c.split("=")[0] for c in profile["group-components"]) == sorted(patterns.values())
    assert profile["resources"] == ["serial=1"] and profile["set-resource-scopes"] == ["serial=local"]
    for rule in ("classify", "extract_features", "train_probe_post", "train_probe_image_only"):
        assert set_resources[rule]["serial"] == 1, rule
    local = yaml.safe_load(LOCAL_PROFILE.read_text())
    assert local["cores"] == "all" and local["rerun-incomplete"] is True


TOY_SNAKEFILE = textwrap.dedent(
    """
    # Toy workflow with the real rule names, so that the real profile's set-resources apply, and the
    # workflow's group patterns (workflow/rules/common.smk), so that the profile's group-components apply.
    localrules: all, make_tables
    wildcard_constraints:
        model="m", dataset="toy", setting="ft", seed=r"\\d+", mode="a|b"

    rule all:
        input: "tables.txt"

    rule finetune:  # GPU rule on its own: the count from here (as the real rule), gpu_model from the profile
        output: "finetune.txt"
        resources: gpu=1
        shell:
            "echo SLURM_JOB_ID=${{SLURM_JOB_ID:-none}} CUDA_VISIBLE_DEVICES=${{CUDA_VISIBLE_DEVICES:-unset}}"
            " > {output}"

    # One trained model's GPU jobs: one group job on one GPU.
    rule classify:
        input: "finetune.txt"
        output: "{model}/{dataset}/{setting}/seed{seed}/classify_{mode}.txt"
        group: "model_{model}_{dataset}_{setting}_seed{seed}"
        resources: gpu=1
        shell: "echo $SLURM_JOB_ID {rule} >> runs.txt; echo CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES > {output}"

    rule extract_features:
        input: "finetune.txt"
        output: "{model}/{dataset}/{setting}/seed{seed}/features.txt"
        group: "model_{model}_{dataset}_{setting}_seed{seed}"
        resources: gpu=1
        shell: "echo $SLURM_JOB_ID {rule} >> runs.txt; echo CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES > {output}"

    # One (dataset, seed)'s CPU probes: one group job without a GPU. The image-only probe runs after
    # the post probe and fails on its first try, so the group job is retried.
    rule train_probe_post:
        input: "m/{dataset}/{setting}/seed{seed}/features.txt"
        output: "{dataset}/{setting}/seed{seed}/probe_post.txt"
        group: "cpu_{dataset}_seed{seed}"
        shell: "echo $SLURM_JOB_ID {rule} >> runs.txt; echo post > {output}"

    rule train_probe_image_only:
        input: "{dataset}/ft/seed{seed}/probe_post.txt"
        output: "{dataset}/seed{seed}/probe_image_only.txt"
        group: "cpu_{dataset}_seed{seed}"
        shell:
            "echo $SLURM_JOB_ID {rule} >> runs.txt;"
            " if [ ! -e failed_once ]; then touch failed_once; exit 1; fi; echo image_only > {output}"

    rule make_tables:  # local rule: runs inside the Snakemake process on the submitting node
        input:
            "finetune.txt", "m/toy/ft/seed0/classify_a.txt", "m/toy/ft/seed0/classify_b.txt",
            "toy/seed0/probe_image_only.txt"
        output: "tables.txt"
        shell: "cat {input} > {output}; echo local SLURM_JOB_ID=${{SLURM_JOB_ID:-none}} >> {output}"
    """
)
TOY_RULES = {"finetune", "classify", "extract_features", "train_probe_post", "train_probe_image_only"}


@pytest.mark.slurm
@pytest.mark.slow  # it starts a Slurm cluster (tens of seconds), so the quick lane leaves it out
def test_slurm_runs_gpu_groups_and_local_rules_of_a_toy_workflow(slurm_cluster, tmp_path):  # noqa: F811 (fixture)
    """The profile's grouping on a real cluster: one Slurm job with one GPU for a model's classify
    and extract_features jobs, one without a GPU for the probes; a probe that fails once makes its
    group job run again. Retries are on here (the test profile has none) to show that."""
    workdir = tmp_path / "toy"
    workdir.mkdir()
    (workdir / "Snakefile").write_text(TOY_SNAKEFILE)
    profile = make_test_profile(tmp_path)
    settings = yaml.safe_load((profile / "config.yaml").read_text())
    (profile / "config.yaml").write_text(yaml.safe_dump({**settings, "retries": 1}, sort_keys=False))
    output = run_snakemake(
        ["--profile", str(profile), "-s", str(workdir / "Snakefile"), "--directory", str(workdir)],
        env=slurm_cluster.env, log_path=tmp_path / "snakemake_toy.log", timeout=600,
    )

    model_group = "model_m_toy_ft_seed0_classify_extract_features"
    cpu_group = "cpu_toy_seed0_train_probe_image_only_train_probe_post"
    jobs = wait_for_accounting(workdir, slurm_cluster.env, {"finetune", model_group, cpu_group})
    assert set(jobs) == {"finetune", model_group, cpu_group}, f"jobs seen by sacct: {jobs}"
    assert jobs[model_group][0].member_rules(TOY_RULES) == {"classify", "extract_features"}
    # (a) the GPU rule and the GPU group each asked for, and got, one typed GPU; the CPU group none.
    gpu_jobs = jobs_submitted_with_gpu(workdir, slurm_cluster.env)
    assert set(gpu_jobs) == {"finetune", model_group}, gpu_jobs
    for name in ("finetune", model_group):
        (job,) = gpu_jobs[name]
        assert job.state in OK_STATES and job.gpus == 1 and job.allocated_gpus == 1, job
        assert job.gpu_types == {GPU_TYPE: 1}, job
    ft = gpu_jobs["finetune"][0]
    ft_out = (workdir / "finetune.txt").read_text()
    assert f"SLURM_JOB_ID={ft.jobid} " in ft_out and "CUDA_VISIBLE_DEVICES=unset" not in ft_out, ft_out
    # The three members ran in the group's one allocation, one after another, on its GPU.
    runs = [line.split() for line in (workdir / "runs.txt").read_text().splitlines()]
    model_job = gpu_jobs[model_group][0].jobid
    assert sorted(rule for jobid, rule in runs if jobid == model_job) == ["classify", "classify", "extract_features"]
    # (b) the failing probe's group job ran twice: first FAILED, then COMPLETED. The retry runs every
    # member again, the one that had finished too (docs/cluster.md, "Group jobs"): after the failure
    # Snakemake 9.27 deletes the outputs of every member, and it resubmits the whole group, whose job
    # step builds the members with --force.
    attempts = sorted(jobs[cpu_group], key=lambda j: int(j.jobid))
    assert [j.state for j in attempts] == ["FAILED", "COMPLETED"] and all(j.gpus == 0 for j in attempts), attempts
    ran = {(jobid, rule) for jobid, rule in runs if rule.startswith("train_probe")}
    assert ran == {(a.jobid, rule) for a in attempts for rule in ("train_probe_post", "train_probe_image_only")}, ran
    assert re.search(r"Removing output files of failed job train_probe_post\b.*\n.*toy/ft/seed0/probe_post\.txt",
                     output), "the finished member's output was not deleted after its group failed"
    assert (workdir / "toy" / "seed0" / "probe_image_only.txt").read_text() == "image_only\n"
    # (c) the local rule ran in the Snakemake process, outside any Slurm job.
    assert "make_tables" in local_rules_in_log(output)
    assert "local SLURM_JOB_ID=none" in (workdir / "tables.txt").read_text()
    # The plugin's own logs agree with sacct.
    assert plugin_log_rules(workdir) == set(jobs)
    write_summary([f"[slurm toy] jobs through Slurm: {sum(map(len, jobs.values()))} "
                   f"({', '.join(f'{r}={len(j)}' for r, j in sorted(jobs.items()))}); "
                   f"GPU jobs: {sum(map(len, gpu_jobs.values()))}; runs of the probes: {sorted(ran)}"])


ARRAY_SNAKEFILE = textwrap.dedent(
    """
    # Toy GPU jobs under the real rule names, without groups: with the profile's grouping off, the
    # jobs of a rule listed in slurm-array-jobs go to Slurm as one job array.
    localrules: all

    rule all:
        input: expand("classify_{mode}.txt", mode=["a", "b", "c"]), expand("features_{seed}.txt", seed=[0, 1])

    rule classify:
        output: "classify_{mode}.txt"
        resources: gpu=1
        shell: "echo array=${{SLURM_ARRAY_JOB_ID:-none}} > {output}"

    rule extract_features:
        output: "features_{seed}.txt"
        resources: gpu=1
        shell: "echo array=${{SLURM_ARRAY_JOB_ID:-none}} > {output}"
    """
)


@pytest.mark.slurm
@pytest.mark.slow
def test_slurm_array_switch_submits_one_array_per_rule(slurm_cluster, tmp_path):  # noqa: F811 (fixture)
    """The profile's other way (docs/cluster.md, "Job arrays"): grouping off, `slurm-array-jobs` on
    for classify and extract_features, as the profile's comment says."""
    workdir = tmp_path / "arrays"
    workdir.mkdir()
    (workdir / "Snakefile").write_text(ARRAY_SNAKEFILE)
    profile = make_test_profile(tmp_path)
    settings = yaml.safe_load((profile / "config.yaml").read_text())
    switch = re.search(r"^# (slurm-array-jobs: .+)$", SLURM_PROFILE.read_text(), flags=re.MULTILINE)
    assert switch and "group-components" in settings, "the profile's array switch or grouping line is gone"
    del settings["group-components"]
    settings.update(yaml.safe_load(switch.group(1)))
    # Snakemake hands the plugin at most `jobs` ready jobs at a time, and an array holds only those:
    # room for all five here, so that each rule's jobs are one array.
    settings["jobs"] = 10
    (profile / "config.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    run_snakemake(["--profile", str(profile), "-s", str(workdir / "Snakefile"), "--directory", str(workdir)],
                  env=slurm_cluster.env, log_path=tmp_path / "snakemake_arrays.log", timeout=600)

    jobs = wait_for_accounting(workdir, slurm_cluster.env, {"classify", "extract_features"})
    assert {r: len(js) for r, js in jobs.items()} == {"classify": 3, "extract_features": 2}, jobs
    for rule, js in jobs.items():
        assert all(j.state in OK_STATES and j.gpus == 1 and j.allocated_gpus == 1 for j in js), js
        # One array per rule: every task of the rule names the same array job id.
        prefix = {"classify": "classify_", "extract_features": "features_"}[rule]
        arrays = {(workdir / name).read_text().strip() for name in os.listdir(workdir) if name.startswith(prefix)}
        assert len(arrays) == 1 and arrays != {"array=none"}, (rule, arrays)
    write_summary([f"[slurm arrays] tasks through Slurm: {sum(map(len, jobs.values()))} in "
                   f"{len(jobs)} arrays (classify, extract_features)"])


def run_config(workdir: Path) -> dict:
    """A micro run's config, less the path of the run's own copy of the fashion dataset (each run has
    one, so that a test may touch it): what must be equal between two runs of the same study."""
    config = yaml.safe_load((workdir / "micro.yaml").read_text())
    fashion = Path(config["datasets"]["fashion"]["source"].pop("path"))
    assert fashion.resolve() == (workdir / "fashion_dataset").resolve(), fashion
    return config


def table_cells(path: Path) -> list[list[str]]:
    import csv

    with open(path, newline="") as f:
        return list(csv.reader(f))


def model_rows(cells: list[list[str]], model: str) -> list[list[str]]:
    """A several-model table's rows of one model, without the model column: that model's one-model table."""
    header, *rows = cells
    assert header[0] == "model", header
    return [header[1:], *(row[1:] for row in rows if row[0] == model)]


@pytest.mark.slurm
@pytest.mark.slow
def test_micro_workflow_on_slurm_matches_local_run(slurm_cluster, tiny_models, tmp_path, request):  # noqa: F811 (fixture)
    """The micro config's LLaVA-style model through Slurm; its tables are compared with that model's
    rows of the session's shared local micro run (tests/conftest.py), which used the same tiny models.
    The family model stays out of the Slurm run: it goes through the same rules and profile, and would
    double the run's Slurm time, which the suite's time budget cannot pay. The local run is asked for
    only once the Slurm run is done, so that under pytest-xdist the two run side by side."""
    from projection_probe.testing.micro import MICRO_CONFIG, MICRO_MODEL, make_micro_workdir

    snakefile = REPO / "Snakefile"
    one_model = {MICRO_MODEL: MICRO_CONFIG["models"][MICRO_MODEL]}
    slurm_wd = Path(make_micro_workdir(tmp_path / "slurm", models_dir=tiny_models, models=one_model)).resolve()
    profile = make_test_profile(tmp_path / "profiles")
    slurm_out = run_snakemake(
        ["--profile", str(profile), "-s", str(snakefile), "--directory", str(slurm_wd),
         "--configfile", str(slurm_wd / "micro.yaml")],
        env=slurm_cluster.env, log_path=tmp_path / "snakemake_slurm.log", timeout=3600,
    )

    jobs = jobs_submitted(slurm_wd, slurm_cluster.env)
    gpu_jobs = jobs_submitted_with_gpu(slurm_wd, slurm_cluster.env)
    failed = {r: [j for j in js if j.state not in OK_STATES] for r, js in jobs.items()}
    assert not any(failed.values()), f"Slurm jobs not COMPLETED: {failed}"
    rules = _workflow_rule_names()
    members = {name: js[0].member_rules(rules) for name, js in jobs.items()}
    ran_on_slurm = set().union(*members.values())

    # (a) every GPU rule that ran went through sbatch, each job with a GPU request and allocation.
    ran_gpu_rules = GPU_RULES & (ran_on_slurm | local_rules_in_log(slurm_out))
    assert ran_gpu_rules, f"no GPU rule ran at all; jobs through Slurm: {sorted(jobs)}"
    assert ran_gpu_rules <= ran_on_slurm, f"GPU rules not through Slurm: {sorted(ran_gpu_rules - ran_on_slurm)}"
    for name, js in jobs.items():
        if members[name] & GPU_RULES:
            assert len(gpu_jobs.get(name, [])) == len(js), f"{name}: jobs without a GPU: {js}"
            assert all(j.allocated_gpus >= 1 for j in js), js
    assert all(members[name] & GPU_RULES for name in gpu_jobs), f"non-GPU jobs requested GPUs: {sorted(gpu_jobs)}"
    # The profile's groups: one job per trained model (every classify mode and extract_features, on one
    # GPU) and one per (dataset, seed) for the CPU probes; fine-tunes and vision caches on their own.
    model_groups = {n for n in jobs if n.startswith("model_")}
    cpu_groups = {n for n in jobs if n.startswith("cpu_")}
    config = yaml.safe_load((slurm_wd / "micro.yaml").read_text())
    n_models = len(config["models"]) * len(config["datasets"]) * len(config["settings"]) * len(config["seeds"])
    assert len(model_groups) == n_models and len(cpu_groups) == len(config["datasets"]) * len(config["seeds"])
    assert all(members[n] == {"classify", "extract_features"} for n in model_groups), members
    assert all(j.gpus == 1 for n in model_groups for j in jobs[n]), [jobs[n] for n in model_groups]
    assert all(members[n] == {"train_probe_post", "train_probe_image_only"} for n in cpu_groups), members
    assert not {"classify", "extract_features", "train_probe_post", "train_probe_image_only"} & set(jobs)
    # (b) local rules ran, and never through Slurm.
    assert not LOCAL_RULES & ran_on_slurm, f"local rules went through Slurm: {sorted(LOCAL_RULES & ran_on_slurm)}"
    assert {"make_tables"} <= local_rules_in_log(slurm_out)
    assert plugin_log_rules(slurm_wd) == set(jobs)
    # (c) same config, same tables with and without Slurm.
    micro_run = request.getfixturevalue("micro_run")
    local_config = run_config(micro_run)
    local_config["models"] = {MICRO_MODEL: local_config["models"][MICRO_MODEL]}
    assert run_config(slurm_wd) == local_config
    for name in TABLES:
        a, b = slurm_wd / "results" / "tables" / name, micro_run / "results" / "tables" / name
        assert a.exists() and b.exists(), f"missing {a if not a.exists() else b}"
        assert table_cells(a) == model_rows(table_cells(b), MICRO_MODEL), f"{name}: the Slurm and the local run differ"

    all_jobs = [j for js in jobs.values() for j in js]
    write_summary([
        f"[slurm micro] jobs through Slurm: {len(all_jobs)}, with a GPU: {sum(map(len, gpu_jobs.values()))}, "
        f"Slurm job-seconds (sacct ElapsedRaw): {sum(j.elapsed_s for j in all_jobs)}",
        f"  group jobs: {len(model_groups)} per trained model (classify + extract_features, 1 GPU each), "
        f"{len(cpu_groups)} per (dataset, seed) (probes)",
        "  by rule: " + ", ".join(f"{r}={len(js)}{' (gpu)' if r in gpu_jobs else ''}"
                                  for r, js in sorted(jobs.items()) if r in rules),
        f"  local rules: {', '.join(sorted(local_rules_in_log(slurm_out)))}",
    ])
