"""Dry runs of the real Snakefile on the micro config: the fidelity switches that are flags on a rule's
command line reach exactly the jobs they concern, and leave the others' params (and results) alone."""
from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from projection_probe.testing.micro import MICRO_CONFIG, REPO_ROOT, make_micro_workdir, snakemake_command


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_models):
    return make_micro_workdir(tmp_path_factory.mktemp("switches"), models_dir=tiny_models)


def dry_run_commands(workdir, tmp_path, edit=None) -> dict[str, list[str]]:
    """rule name -> shell commands of a dry run of `all`, for the micro config changed by `edit`."""
    config = yaml.safe_load((workdir / "micro.yaml").read_text())
    if edit:
        edit(config)
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    cmd = snakemake_command(workdir, "-n", "-p", "--forceall", "--nolock")
    cmd[cmd.index("--configfile") + 1] = str(path)
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    commands: dict[str, list[str]] = {}
    for block in re.split(r"\n(?=\[[^\]]+\]\n(?:local)?rule )", out.stdout):
        rule = re.search(r"^(?:local)?rule (\w+):", block, flags=re.M)
        shell = (re.search(r"^Shell command: (.*)$", block, flags=re.M)
                 or re.search(r"^    (projection-probe .*)$", block, flags=re.M))
        if rule and shell:
            commands.setdefault(rule.group(1), []).append(shell.group(1))
    return commands


def test_defaults_have_no_variant_cache_and_no_switch_flags(workdir, tmp_path):
    commands = dry_run_commands(workdir, tmp_path)
    assert "extract_vision_features_variant" not in commands
    joined = "\n".join(c for cs in commands.values() for c in cs)
    assert "--parser" not in joined and "--label-set" not in joined and "--last-epoch" not in joined
    assert "--several-classes" not in joined
    assert "--label-chunk-size" not in joined  # unset: the CLI's default
    assert all("vision.safetensors" in c for c in commands["classify"])
    # the micro config sets max_new_tokens: only generation reads it
    for c in commands["classify"]:
        assert ("--max-new-tokens 6" in c) == ("--mode generate" in c), c


def test_per_setting_preprocessing_gets_its_own_cache(workdir, tmp_path):
    def edit(config):
        config["settings"]["ft-proj"]["image_preprocessing"] = "square"

    commands = dry_run_commands(workdir, tmp_path, edit)
    variant = commands["extract_vision_features_variant"]
    # once per dataset and vision tower (the two micro models have their own), shared by seeds
    assert len(variant) == len(MICRO_CONFIG["datasets"]) * len(MICRO_CONFIG["models"])
    assert all("--image-preprocessing square" in c and "vision_square.safetensors" in c for c in variant)
    for rule in ("classify", "finetune", "extract_features"):
        for c in commands[rule]:
            uses_square = "vision_square.safetensors" in c
            assert uses_square == ("/ft-proj/" in c or "--setting ft-proj" in c), (rule, c)


def test_parser_label_set_and_last_epoch_switches(workdir, tmp_path):
    def edit(config):
        config["classify"]["parser"] = "exact"
        config["classify"]["several_classes"] = "first"
        config["classify"]["max_new_tokens"] = "auto"
        config["baselines"]["encoder_zero_shot"]["label_set"] = "test"
        config["probes"]["post"]["restore_best"] = False

    commands = dry_run_commands(workdir, tmp_path, edit)
    for c in commands["classify"]:
        # Only free generation reads text, so only its jobs get the switch.
        assert ("--parser exact --no-stop-at-newline" in c) == ("--mode generate" in c), c
        assert ("--several-classes first" in c) == ("--mode generate" in c), c
        assert "--max-new-tokens" not in c, c  # auto: the CLI derives it
    assert all("--label-set test" in c for c in commands["encoder_zero_shot"])
    assert all("--last-epoch" in c for c in commands["train_probe_post"])
    assert not any("--last-epoch" in c for c in commands["train_probe_image_only"])


def test_label_chunk_size_reaches_classify_lines_not_params(workdir, tmp_path):
    """A memory knob: on the command line of every classify job, and absent from the rule's params
    (which would rerun finished jobs when it changes)."""
    def edit(config):
        config["classify"]["label_chunk_size"] = 5

    commands = dry_run_commands(workdir, tmp_path, edit)
    assert commands["classify"] and all("--label-chunk-size 5 " in c for c in commands["classify"])
    assert "label_chunk" not in (REPO_ROOT / "workflow" / "rules" / "classify.smk").read_text().split("shell:")[0]
