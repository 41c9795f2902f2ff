"""The shared names (projection_probe.names): the config schema's enums are these names, and the
module loads without torch, so that the workflow and `--help` can read it."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from projection_probe import names

SCHEMA = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"


def schema_enums(key: str) -> list[tuple[str, list]]:
    """(where, enum) for every property named `key` in the schema that lists its values (for an array,
    those of its items)."""
    found = []

    def walk(node, where):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == key and isinstance(v, dict):
                    values = v.get("enum", v.get("items", {}).get("enum"))
                    if values is not None:
                        found.append((f"{where}.{k}", values))
                walk(v, f"{where}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}[{i}]")

    walk(yaml.safe_load(SCHEMA.read_text()), "schema")
    return found


@pytest.mark.parametrize(("key", "expected", "least"), [
    ("template", names.TEMPLATES, 3),  # a setting's, the model's, alignment's
    ("projector", names.PROJECTOR_KINDS, 1),
    ("image_preprocessing", names.IMAGE_PREPROCESSINGS, 3),
    ("modes", names.MODES, 1),
    ("parser", names.PARSERS, 1),
    ("several_classes", names.SEVERAL_CLASSES, 1),
    ("poolings", names.LAYER_POOLINGS, 1),
])
def test_schema_enum_equals_the_shared_names(key, expected, least):
    enums = schema_enums(key)
    assert len(enums) >= least, f"expected {least} enums named {key!r} in the schema, found {enums}"
    for where, values in enums:
        assert tuple(values) == expected, f"{where}: {values} differs from projection_probe.names"


def test_schema_setting_kinds_are_none_and_the_fine_tuning_settings():
    # `none` is the kind of the base setting, which the workflow requires under this name.
    (where, kinds), = [(w, v) for w, v in schema_enums("kind") if w.endswith("setting.properties.kind")]
    assert tuple(kinds) == ("none", *names.FINETUNE_SETTINGS), where
    assert names.SETTINGS[0] == names.PAPER_SETTINGS[0] == names.BASE_SETTING
    assert names.PAPER_SETTINGS == (names.BASE_SETTING, "ft-proj", "ft-e2e")


def test_names_module_imports_nothing_heavy():
    code = ("import sys, projection_probe.names, projection_probe.hyperparams; "
            "print(sorted({'torch', 'numpy'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# What every job would pay before its work if imported at start-up: each Snakemake (a Slurm job starts
# two) parses the Snakefile, and `--help` builds the whole parser (docs/benchmarks.md, "Where a group
# member's time goes").
HEAVY = ("torch", "numpy", "pandas", "datasets", "transformers", "sklearn", "scipy", "PIL", "matplotlib")
REPO = SCHEMA.parents[2]


def workflow_imports() -> list[str]:
    """The project modules that the Snakefile and the rule files import."""
    import re

    files = [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]
    return sorted({m for f in files for m in re.findall(r"^(?:from|import) (projection_probe[\w.]*)", f.read_text(),
                                                        flags=re.MULTILINE)})


@pytest.mark.parametrize("what, code", [
    ("the workflow's imports", "import importlib; [importlib.import_module(m) for m in {modules}]"),
    ("the command line's parser", "from projection_probe.cli import build_parser; build_parser()"),
])
def test_snakefile_and_cli_parser_import_nothing_heavy(what, code):
    modules = workflow_imports()
    assert "projection_probe.data.hf_sources" in modules, modules
    code = f"import sys; {code.format(modules=modules)}; print(sorted(set({HEAVY}) & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", f"{what} import {out.stdout.strip()}"
