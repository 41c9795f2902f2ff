"""The config schema: the shipped configs pass, bad configs are rejected with a message that names the
offending key or value, a bad config stops `snakemake -n` before any job is planned, and
config/README.md documents every key the schema accepts."""
from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from snakemake.utils import validate

from projection_probe.testing.micro import micro_config

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
DEMO_CONFIG = REPO / "config" / "config.yaml"
CONFIG_README = REPO / "config" / "README.md"


def demo_config() -> dict:
    return yaml.safe_load(DEMO_CONFIG.read_text())


def rejection(config: dict) -> tuple[str, jsonschema.ValidationError]:
    """Validate as the workflow does; return the message Snakemake prints and the schema error."""
    with pytest.raises(Exception) as info:
        validate(copy.deepcopy(config), str(SCHEMA))
    # WorkflowError keeps only the text; the jsonschema error it was raised from is the context.
    cause = info.value.__context__
    assert isinstance(cause, jsonschema.ValidationError), f"not a schema rejection: {info.value!r}"
    return str(info.value), cause


def with_change(path: tuple, value) -> dict:
    """The demo config with the value at `path` (keys and list indices) set to `value`."""
    config = demo_config()
    node = config
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return config


# --- (a) the shipped configs validate -----------------------------------------------------------

def test_demo_config_validates():
    validate(demo_config(), str(SCHEMA))


@pytest.mark.parametrize("overlay", ["analyses.yaml", "longer_finetunes.yaml", "two_seeds.yaml", "gpu_demo.yaml"])
def test_demo_config_with_each_shipped_overlay_validates(overlay):
    """The overlays are given after config.yaml; Snakemake merges nested mappings key by key."""
    from snakemake.utils import update_config

    config = demo_config()
    update_config(config, yaml.safe_load((REPO / "config" / overlay).read_text()))
    validate(config, str(SCHEMA))


def test_gpu_demo_stack_gives_learning_fine_tunes_three_seeds_and_auto_device():
    """config.yaml, longer_finetunes.yaml, gpu_demo.yaml: the command that benchmarks/gpu_check.py runs."""
    from snakemake.utils import update_config

    config = demo_config()
    for overlay in ("longer_finetunes.yaml", "gpu_demo.yaml"):
        update_config(config, yaml.safe_load((REPO / "config" / overlay).read_text()))
    validate(config, str(SCHEMA))
    longer = yaml.safe_load((REPO / "config" / "longer_finetunes.yaml").read_text())
    assert config["seeds"] == [0, 1, 2] and config["models"]["effnet-smollm2"]["device"] == "auto"
    assert config["settings"] == longer["settings"] and config["finetune"]["epochs"] == longer["finetune"]["epochs"]


def test_micro_config_validates():
    validate(micro_config(Path("/tmp/x")), str(SCHEMA))


def test_validation_adds_no_keys():
    """The schema declares no defaults (rule defaults live in the .smk files and config/README.md), so
    validation must leave the config as written; a `default:` added to the schema would silently
    change what a --configfile user gets."""
    config = demo_config()
    validate(config, str(SCHEMA))
    assert config == demo_config()


# --- (b) bad values are rejected, naming the key or value ----------------------------------------

@pytest.mark.parametrize("path, value, where, says", [
    (("seeds",), "0", ["seeds"], "is not of type 'array'"),
    (("probes", "post", "val_fraction"), 0.9, ["probes", "post", "val_fraction"], "0.9"),
    (("probes", "image_only", "val_fraction"), 0.0, ["probes", "image_only", "val_fraction"], "0.0"),
    (("classify", "batch_size"), 0, ["classify", "batch_size"], "less than the minimum of 1"),
    (("models", "effnet-smollm2", "device"), "gpu", ["models", "effnet-smollm2", "device"], "'gpu'"),
    (("metrics", "f1_classes"), True, ["metrics", "f1_classes"], "True"),
], ids=["seeds-string", "val-fraction-high", "val-fraction-zero", "batch-size-zero", "device", "f1-unquoted"])
def test_wrong_type_or_range_is_rejected_at_its_path(path, value, where, says):
    message, error = rejection(with_change(path, value))
    assert list(error.absolute_path) == where
    # Snakemake prints the instance path as instance['a']['b']: that is what the user reads.
    assert "".join(f"[{k!r}]" for k in where) in message, message
    assert says in message, message


@pytest.mark.parametrize("path, key", [
    (("seedz",), "seedz"),
    (("probes", "post", "lrr"), "lrr"),
    (("models", "effnet-smollm2", "language_model", "gguf_filee"), "gguf_filee"),
    (("settings", "ft-proj", "learning_rate"), "learning_rate"),
    (("datasets", "digits", "classses"), "classses"),
])
def test_unknown_key_is_rejected_and_named(path, key):
    message, error = rejection(with_change(path, 1))
    assert error.validator == "additionalProperties", error.validator
    assert f"'{key}' was unexpected" in message, message
    assert list(error.absolute_path) == list(path[:-1])


@pytest.mark.parametrize("name", ["my data", "it's", 'say"hi', "-leading-dash", "dot.name"])
@pytest.mark.parametrize("section", ["models", "datasets", "settings"])
def test_bad_model_dataset_or_setting_name_is_rejected_and_named(section, name):
    """A name is a path component of results (and a wildcard value): the schema refuses any other."""
    config = demo_config()
    first = next(iter(config[section]))
    config[section][name] = config[section].pop(first) if section != "settings" else {"kind": "ft-proj"}
    message, error = rejection(config)
    assert error.validator in ("propertyNames", "pattern"), error.validator
    assert repr(name) in message, message
    assert f"['{section}']" in message, message


@pytest.mark.parametrize("bad_class", ['T-"shirt"', '"coat"', "coat ", "two\nlines", ""])
def test_bad_class_string_is_rejected_and_named(bad_class):
    message, error = rejection(with_change(("datasets", "fashion", "classes", 1), bad_class))
    assert list(error.absolute_path) == ["datasets", "fashion", "classes", 1]
    assert repr(bad_class) in message, message


def test_missing_required_section_is_named():
    config = demo_config()
    del config["probes"]
    message, _ = rejection(config)
    assert "'probes' is a required property" in message, message


# --- (c) snakemake -n stops on a bad config before planning any job -----------------------------

def dry_run(tmp_path: Path, config: dict, *extra: str) -> subprocess.CompletedProcess:
    """`snakemake -n` in the repository with `config` as --configfile. -F plans every job even when
    results/ is complete, so a valid config always prints the job table; --ignore-incomplete keeps a
    demo that is running in this checkout from failing the dry run. A dry run never executes jobs."""
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(
        [str(bin_dir / "snakemake"), "-n", "-F", "--ignore-incomplete", "--cores", "1",
         "--configfile", str(config_file), *extra],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_dry_run_plans_jobs_for_a_valid_changed_config(tmp_path):
    """The positive control for the test below: same command, valid config, reaches job planning."""
    result = dry_run(tmp_path, with_change(("seeds",), [0, 1, 2]))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Building DAG of jobs" in output and "Job stats" in output, output[-3000:]
    # Three seeds: 2 datasets x 3 seeds prompts files (the demo's one seed would give 2).
    assert re.search(r"^build_prompts\s+6$", output, re.MULTILINE), output[-3000:]


def test_seeds_given_on_the_command_line_are_integers(tmp_path):
    """Snakemake hands `--config 'seeds=[0,1,2]'` over as strings; the workflow must still plan three
    seeds rather than fail validation with "'0' is not of type 'integer'"."""
    result = dry_run(tmp_path, demo_config(), "--config", "seeds=[0,1,2]")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert re.search(r"^build_prompts\s+6$", output, re.MULTILINE), output[-3000:]


def test_dry_run_with_bad_config_fails_naming_the_key_before_planning(tmp_path):
    result = dry_run(tmp_path, with_change(("probes", "post", "val_fraction"), 0.9))
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert "Error validating config file" in output, output[-3000:]
    assert "['probes']['post']['val_fraction']" in output, output[-3000:]
    assert "Building DAG of jobs" not in output and "Job stats" not in output, output[-3000:]


# --- config/README.md documents every schema key -------------------------------------------------

def _resolve(node: dict, schema: dict) -> dict:
    while isinstance(node, dict) and "$ref" in node:
        node = schema["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    return node


def _nested_keys(node: dict, schema: dict) -> set[str]:
    """Every property name below `node`, through $refs and name-keyed maps (additionalProperties)."""
    node = _resolve(node, schema)
    if not isinstance(node, dict):
        return set()
    keys = set()
    for name, child in node.get("properties", {}).items():
        keys.add(name)
        keys |= _nested_keys(child, schema)
    if isinstance(node.get("additionalProperties"), dict):
        keys |= _nested_keys(node["additionalProperties"], schema)
    return keys


def _readme_sections() -> dict[str, str]:
    """`## `key`` heading -> that section's text."""
    text = CONFIG_README.read_text()
    sections = {}
    for block in re.split(r"^## ", text, flags=re.MULTILINE)[1:]:
        heading, _, body = block.partition("\n")
        for key in re.findall(r"`([A-Za-z_]+)`", heading):
            sections[key] = body
    return sections


def test_config_readme_documents_every_schema_key():
    schema = yaml.safe_load(SCHEMA.read_text())
    sections = _readme_sections()
    missing = []
    for top, node in schema["properties"].items():
        if top not in sections:
            missing.append(f"no '## `{top}`' section")
            continue
        for key in sorted(_nested_keys(node, schema)):
            # The key in backticks, alone or as the last part of a dotted path (`model.vision.path`).
            if not re.search(rf"`(?:[^`\n]*\.)?{re.escape(key)}`", sections[top]):
                missing.append(f"{top}: `{key}`")
    assert not missing, f"{CONFIG_README} does not document: {missing}"


def test_config_readme_documents_every_demo_config_key():
    """The demo's per-dataset `source` keys are not in the schema (each source checks its own)."""
    sections = _readme_sections()
    missing = []

    def walk(top: str, node):
        if isinstance(node, dict):
            for key, child in node.items():
                # Dataset and setting names are the user's, not keys to document.
                if not (top in ("datasets", "settings") and node is demo[top]):
                    if not re.search(rf"`(?:[^`\n]*\.)?{re.escape(str(key))}`", sections.get(top, "")):
                        missing.append(f"{top}: `{key}`")
                walk(top, child)

    demo = demo_config()
    for top, node in demo.items():
        if top not in sections:
            missing.append(f"no '## `{top}`' section")
        walk(top, node)
    assert not missing, f"{CONFIG_README} does not document: {sorted(set(missing))}"
