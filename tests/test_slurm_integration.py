"""Integration tests: the workflow through a real (local, single-node) Slurm cluster.

    pytest -m slurm -s tests/test_slurm_integration.py      # as root; see tests/slurm_support.py

The cluster (.ci/slurm/start.sh) is started once per session; the tests skip only if the machine
cannot run it (not root, or the Slurm packages are absent and PP_INSTALL_SLURM!=1). Evidence of
what went through Slurm comes from sacct (see tests/slurm_support.py for why).
"""

from __future__ import annotations

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
    assert 'gpu=lambda wc: finetune_params(wc.setting)["num_gpus"]' in finetune_rule
    for rule in set(set_resources) - GPU_RULES:
        assert not set_resources[rule].get("gpu"), f"non-GPU rule {rule} requests a GPU in the profile"
    assert not LOCAL_RULES & set(set_resources), "local rules never reach Slurm: no resources for them"
    assert profile["executor"] == "slurm" and profile["slurm-status-command"] in {"sacct", "squeue"}
    local = yaml.safe_load(LOCAL_PROFILE.read_text())
    assert local["cores"] == "all" and local["rerun-incomplete"] is True


TOY_SNAKEFILE = textwrap.dedent(
    """
    # Toy workflow with the real rule names, so that the real profile's set-resources apply.
    localrules: all, make_tables

    rule all:
        input: "tables.txt"

    rule finetune:  # GPU rule: the count from here (as the real rule), gpu_model from the profile
        output: "finetune.txt"
        resources: gpu=1
        shell:
            "echo SLURM_JOB_ID=${{SLURM_JOB_ID:-none}} CUDA_VISIBLE_DEVICES=${{CUDA_VISIBLE_DEVICES:-unset}}"
            " > {output}"

    rule train_probe_post:  # CPU rule that goes to Slurm without a GPU
        output: "probe.txt"
        shell:
            "echo SLURM_JOB_ID=${{SLURM_JOB_ID:-none}} CUDA_VISIBLE_DEVICES=${{CUDA_VISIBLE_DEVICES:-unset}}"
            " > {output}"

    rule make_tables:  # local rule: runs inside the Snakemake process on the submitting node
        input: "finetune.txt", "probe.txt"
        output: "tables.txt"
        shell: "cat {input} > {output}; echo local SLURM_JOB_ID=${{SLURM_JOB_ID:-none}} >> {output}"
    """
)


@pytest.mark.slurm
@pytest.mark.slow  # it starts a Slurm cluster (tens of seconds), so the quick lane leaves it out
def test_slurm_runs_gpu_and_local_rules_of_a_toy_workflow(slurm_cluster, tmp_path):  # noqa: F811 (fixture)
    workdir = tmp_path / "toy"
    workdir.mkdir()
    (workdir / "Snakefile").write_text(TOY_SNAKEFILE)
    profile = make_test_profile(tmp_path)
    output = run_snakemake(
        ["--profile", str(profile), "-s", str(workdir / "Snakefile"), "--directory", str(workdir)],
        env=slurm_cluster.env, log_path=tmp_path / "snakemake_toy.log", timeout=600,
    )

    jobs = wait_for_accounting(workdir, slurm_cluster.env, {"finetune", "train_probe_post"})
    assert set(jobs) == {"finetune", "train_probe_post"}, f"rules seen by sacct: {jobs}"
    for rule, rule_jobs in jobs.items():
        assert len(rule_jobs) == 1 and rule_jobs[0].state in OK_STATES, f"{rule}: {rule_jobs}"
    # (a) the GPU rule asked for, and got, one typed GPU; the CPU rule none.
    gpu_jobs = jobs_submitted_with_gpu(workdir, slurm_cluster.env)
    assert set(gpu_jobs) == {"finetune"}, gpu_jobs
    (ft,) = gpu_jobs["finetune"]
    assert ft.gpus == 1 and ft.allocated_gpus == 1 and ft.gpu_types == {GPU_TYPE: 1}, ft
    assert jobs["train_probe_post"][0].gpus == 0
    ft_out = (workdir / "finetune.txt").read_text()
    assert f"SLURM_JOB_ID={ft.jobid} " in ft_out and "CUDA_VISIBLE_DEVICES=unset" not in ft_out, ft_out
    # (b) the local rule ran in the Snakemake process, outside any Slurm job.
    assert "make_tables" not in jobs
    assert "make_tables" in local_rules_in_log(output)
    assert "local SLURM_JOB_ID=none" in (workdir / "tables.txt").read_text()
    # The plugin's own logs agree with sacct.
    assert plugin_log_rules(workdir) == {"finetune", "train_probe_post"}
    write_summary([f"[slurm toy] jobs through Slurm: {sum(map(len, jobs.values()))} "
                   f"({', '.join(f'{r}={len(j)}' for r, j in sorted(jobs.items()))}); "
                   f"GPU jobs: {sum(map(len, gpu_jobs.values()))}"])


@pytest.mark.slurm
@pytest.mark.slow
def test_micro_workflow_on_slurm_matches_local_run(slurm_cluster, tiny_models, tmp_path, request):  # noqa: F811 (fixture)
    """The micro config through Slurm; its tables are compared with the session's shared local micro
    run (tests/conftest.py), which used the same tiny models. The local run is asked for only once
    the Slurm run is done, so that under pytest-xdist the two run side by side on the two workers."""
    from projection_probe.testing.micro import make_micro_workdir

    snakefile = REPO / "Snakefile"
    slurm_wd = Path(make_micro_workdir(tmp_path / "slurm", models_dir=tiny_models)).resolve()
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

    # (a) every GPU rule that ran went through sbatch, each job with a GPU request and allocation.
    ran_gpu_rules = GPU_RULES & (set(jobs) | local_rules_in_log(slurm_out))
    assert ran_gpu_rules, f"no GPU rule ran at all; rules through Slurm: {sorted(jobs)}"
    for rule in ran_gpu_rules:
        assert rule in jobs, f"GPU rule {rule} did not go through Slurm"
        assert len(gpu_jobs.get(rule, [])) == len(jobs[rule]), f"{rule}: jobs without a GPU: {jobs[rule]}"
        assert all(j.allocated_gpus >= 1 for j in jobs[rule]), jobs[rule]
    assert not set(gpu_jobs) - GPU_RULES, f"non-GPU rules requested GPUs: {sorted(set(gpu_jobs) - GPU_RULES)}"
    # (b) local rules ran, and never through Slurm.
    assert not LOCAL_RULES & set(jobs), f"local rules went through Slurm: {sorted(LOCAL_RULES & set(jobs))}"
    assert {"make_tables"} <= local_rules_in_log(slurm_out)
    assert plugin_log_rules(slurm_wd) == set(jobs)
    # (c) same config, same tables with and without Slurm.
    micro_run = request.getfixturevalue("micro_run")
    assert (slurm_wd / "micro.yaml").read_text() == (micro_run / "micro.yaml").read_text()
    for name in TABLES:
        a, b = slurm_wd / "results" / "tables" / name, micro_run / "results" / "tables" / name
        assert a.exists() and b.exists(), f"missing {a if not a.exists() else b}"
        assert a.read_bytes() == b.read_bytes(), f"{name} differs between the Slurm and the local run"

    write_summary([
        f"[slurm micro] jobs through Slurm: {sum(map(len, jobs.values()))}, "
        f"with a GPU: {sum(map(len, gpu_jobs.values()))}",
        "  by rule: " + ", ".join(f"{r}={len(js)}{' (gpu)' if r in gpu_jobs else ''}"
                                  for r, js in sorted(jobs.items())),
        f"  local rules: {', '.join(sorted(local_rules_in_log(slurm_out)))}",
    ])
