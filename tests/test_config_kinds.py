"""Every config key says what a change to it does (`x-kind` in the schema): `result` keys change outputs
and rerun the jobs they affect (tests/test_rerun_table.py); `operational` keys change speed or memory
only, and each has a test that shows the outputs stay equal; `reference` keys reach no rule."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
KINDS = {"result", "operational", "reference"}

# The test that shows each operational key leaves the outputs equal ("file::function").
OPERATIONAL_EVIDENCE = {
    "classify.batch_size": ["tests/test_operational_keys.py::test_classify_batch_size_leaves_predictions_equal"],
    "classify.label_chunk_size": ["tests/test_facade.py::test_chunked_label_scores_equal_unchunked"],
    "features.batch_size": ["tests/test_operational_keys.py::test_vision_feature_batch_size_leaves_features_equal"],
    "features.num_workers": ["tests/test_operational_keys.py::test_vision_feature_workers_leave_features_equal",
                             "tests/test_operational_keys.py::test_data_loader_workers_leave_trained_weights_equal"],
    "finetune.checkpoint_every_steps":
        ["tests/test_operational_keys.py::test_checkpoint_interval_leaves_trained_weights_equal"],
    "resources.threads": ["tests/test_operational_keys.py::test_cpu_threads_leave_trained_weights_equal"],
    "resources.align_threads": ["tests/test_operational_keys.py::test_cpu_threads_leave_trained_weights_equal"],
    "baselines.encoder_zero_shot.batch_size": ["tests/test_baselines.py::test_batched_equals_per_image"],
    "analyses.layerwise.batch_size":
        ["tests/test_analysis.py::test_layer_states_count_pooling_and_batch_invariance"],
}


def schema_keys(schema: dict | None = None) -> dict[str, str | None]:
    """Every key the schema accepts, as a dotted path (`<name>` for the user's dataset and setting
    names), with its `x-kind` (None where it has none). An object whose keys are listed is a section:
    its keys carry the kinds, not the section."""
    schema = schema or yaml.safe_load(SCHEMA.read_text())

    def resolve(node):
        while isinstance(node, dict) and "$ref" in node:
            node = {**schema["$defs"][node["$ref"].rsplit("/", 1)[-1]],
                    **{k: v for k, v in node.items() if k != "$ref"}}
        return node

    found = {}

    def walk(node, prefix):
        node = resolve(node)
        for name, child in node.get("properties", {}).items():
            child = resolve(child)
            path = f"{prefix}{name}"
            section = child.get("properties") or isinstance(child.get("additionalProperties"), dict)
            if "x-kind" in child or not section:
                found[path] = child.get("x-kind")
                # A leaf may still list keys (a dataset's `source.kind`): those need kinds too.
                if child.get("properties"):
                    walk(child, f"{path}.")
            else:
                walk(child, f"{path}.")
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], f"{prefix}<name>.")

    walk(schema, "")
    return found


def test_every_schema_key_has_a_kind():
    keys = schema_keys()
    assert len(keys) > 80, sorted(keys)  # the walk reaches through $refs and name-keyed maps
    missing = sorted(k for k, kind in keys.items() if kind is None)
    assert not missing, f"{SCHEMA}: keys without `x-kind`: {missing}"
    unknown = sorted(f"{k}: {kind}" for k, kind in keys.items() if kind not in KINDS)
    assert not unknown, f"{SCHEMA}: `x-kind` must be one of {sorted(KINDS)}: {unknown}"


def test_the_walk_fails_on_a_key_without_a_kind():
    schema = yaml.safe_load(SCHEMA.read_text())
    del schema["$defs"]["probe"]["properties"]["lr"]["x-kind"]
    del schema["properties"]["classify"]["properties"]["modes"]["x-kind"]
    missing = {k for k, kind in schema_keys(schema).items() if kind is None}
    assert missing == {"probes.post.lr", "probes.image_only.lr", "classify.modes"}


def test_every_operational_key_has_a_test_showing_equal_outputs():
    operational = {k for k, kind in schema_keys().items() if kind == "operational"}
    assert operational == set(OPERATIONAL_EVIDENCE), (
        f"operational keys without evidence: {sorted(operational - set(OPERATIONAL_EVIDENCE))}; "
        f"evidence for keys that are not operational: {sorted(set(OPERATIONAL_EVIDENCE) - operational)}")
    for key, tests in OPERATIONAL_EVIDENCE.items():
        for test in tests:
            file, function = test.split("::")
            tree = ast.parse((REPO / file).read_text())
            names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
            assert function in names, f"{key}: {test} does not exist"


def test_every_operational_key_reaches_the_workflow_outside_params():
    """The shell commands read operational values from OPERATIONAL (or `threads:`); a key named there
    is never also turned into a param (the rerun table checks what a change does)."""
    common = (REPO / "workflow" / "rules" / "common.smk").read_text()
    block = common[common.index("OPERATIONAL = SimpleNamespace("):]
    block = block[:block.index("\n)\n")]
    for key in OPERATIONAL_EVIDENCE:
        if key.startswith("resources."):
            continue  # the `threads:` directive, which is no rerun trigger
        assert f'config_value("{key}"' in block, f"{key} is not read into OPERATIONAL"


def dry_run_demo(tmp_path: Path, overlay: dict) -> subprocess.CompletedProcess:
    (tmp_path / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run([str(bin_dir / "snakemake"), "-n", "--cores", "1", "--configfile",
                           str(REPO / "config" / "config.yaml"), str(tmp_path / "overlay.yaml")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("overlay, says", [
    ({"settings": {"ft-proj": {"per_device_batch": 3}}},
     "settings.ft-proj: effective_batch 4 is not a multiple of per_device_batch 3 × num_gpus 1"),
    ({"finetune": {"num_gpus": 3}},
     "settings.ft-proj: effective_batch 4 is not a multiple of per_device_batch 4 × num_gpus 3"),
    ({"align": {"per_device_batch": 5}}, "align: effective_batch 16 is not a multiple of per_device_batch 5"),
], ids=["per-device-batch", "num-gpus", "align"])
def test_a_batch_layout_that_would_change_the_effective_batch_is_refused_naming_the_key(tmp_path, overlay, says):
    result = dry_run_demo(tmp_path, overlay)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert says in output, output[-3000:]
    assert "Job stats" not in output, output[-3000:]


def test_the_cli_logs_its_whole_command_line(tmp_path, caplog):
    """Operational values reach no param, so each job's log is where they are recorded."""
    import logging

    from projection_probe.cli import main

    missing = tmp_path / "all_runs.csv"
    with caplog.at_level(logging.INFO, logger="projection_probe.cli"):
        main(["make-figure", "--all-runs", str(missing), "--out-png", "a b.png", "--out-pdf", "x.pdf"])
    assert f"projection-probe make-figure --all-runs {missing} --out-png 'a b.png' --out-pdf x.pdf" in caplog.text
