"""The rule files hold rules only, and each rule is named after the CLI subcommand it runs."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "workflow" / "rules"
RULE_FILES = [REPO / "Snakefile", *sorted(RULES.glob("*.smk"))]
# Rules that run no command, and the per-dataset download rules (`download_<name>`), which all run
# `download-dataset`. `extract_vision_features_variant` is a `use rule` copy of
# `extract_vision_features` with another output name, so it runs that rule's command.
NO_COMMAND = {"all", "study", "analysis_all"}
# Two rules, one command: the probe on post-projection features (Table 2) and the image-only probe
# (Table 3) are the same `train-probe` on different inputs; the suffix names the variant.
VARIANTS = {"train_probe_post": "train-probe", "train_probe_image_only": "train-probe"}


def rule_blocks(text: str) -> dict[str, str]:
    """rule name -> its text, for `rule name:` blocks (not the `use rule` copies)."""
    starts = list(re.finditer(r"^(\s*)rule (\w+):\n", text, flags=re.MULTILINE))
    blocks = {}
    for i, m in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(text)
        blocks[m.group(2)] = text[m.end():end]
    return blocks


def test_each_rule_runs_the_subcommand_of_its_name():
    checked, wrong = 0, []
    for path in RULE_FILES:
        for name, block in rule_blocks(path.read_text()).items():
            if name in NO_COMMAND:
                assert "shell:" not in block, name
                continue
            command = re.search(r'shell:\s*\n\s*f?"(?:\{params\.launcher\}|projection-probe) ([\w-]+)', block)
            assert command, f"{path.name}: rule {name} runs no projection-probe subcommand"
            checked += 1
            if command.group(1) != VARIANTS.get(name, name.replace("_", "-")):
                wrong.append(f"{path.name}: rule {name} runs `{command.group(1)}`")
    assert checked > 15 and not wrong, wrong
    download = (RULES / "download.smk").read_text()
    assert 'f"download_{_name}"' in download and '"projection-probe download-dataset ' in download


def test_rule_files_define_no_helpers_and_mark_local_rules_one_way():
    for path in RULE_FILES:
        text = path.read_text()
        assert "localrules:" not in text, f"{path.name}: mark a local rule with `localrule: True` in the rule"
        if path.name in ("common.smk", "Snakefile"):
            continue
        helpers = re.findall(r"^(?:def \w+|[A-Za-z_]\w* = )", text, flags=re.MULTILINE)
        assert not helpers, f"{path.name}: {helpers} belong in workflow/rules/common.smk"
