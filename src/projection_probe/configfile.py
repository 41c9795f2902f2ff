"""Strict reading of config files, for what Snakemake's loader lets pass.

Snakemake reads YAML with PyYAML, which keeps the last of two equal keys in a mapping without a word:
two `models:` (or datasets, settings) of one name would silently become one. Imports only PyYAML.
"""
from __future__ import annotations

from pathlib import Path


def duplicate_keys(path: str | Path) -> list[str]:
    """Every key that a mapping of the YAML (or JSON) file `path` holds twice, as a dotted path
    (`models.demo`), in file order; [] when there is none."""
    import yaml

    found: list[str] = []

    def walk(node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, value_node in node.value:
                key = str(key_node.value)
                if key in seen:
                    found.append(prefix + key)
                seen.add(key)
                walk(value_node, f"{prefix}{key}.")
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, f"{prefix}{i}.")

    with open(path, encoding="utf-8") as f:
        walk(yaml.compose(f, Loader=yaml.SafeLoader), "")
    return found
