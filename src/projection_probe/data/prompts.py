"""The authors' classification prompt and the LLaVA-format conversation records built from it.

The class order in each prompt is reshuffled per example, as in the authors' code; unlike their code
it is seeded, from (seed, image_path), so a rerun reproduces every prompt exactly.
"""
from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path

from projection_probe.data.manifest import ManifestRow
from projection_probe.io import InputError, read_json, write_jsonl

PROMPT_PREFIX = "<image>\nClassify this image into one of the following categories relating to {task}: "
PROMPT_SUFFIX = ". Only output a single final classification label and NOTHING ELSE."
# The authors' code appends this cue; the paper's printed prompt does not.
OUTPUT_CUE = "\n\nOutput:"


def example_rng(seed: int, image_path: str) -> random.Random:
    """An RNG fixed by (seed, image_path). Seeding ``random.Random`` with a str hashes it with SHA-512,
    which, unlike ``hash()``, is the same in every process."""
    return random.Random(f"{seed}|{image_path}")


def shuffled_classes(classes: list[str], rng: random.Random) -> list[str]:
    order = list(classes)
    rng.shuffle(order)
    return order


def build_human_turn(task: str, classes: list[str], rng: random.Random, output_cue: bool = False) -> str:
    """The human turn for one example, with ``classes`` shuffled by ``rng``."""
    order = shuffled_classes(classes, rng)
    return format_human_turn(task, order, output_cue)


def format_human_turn(task: str, ordered_classes: list[str], output_cue: bool = False) -> str:
    """The human turn with the classes in exactly the given order."""
    text = (PROMPT_PREFIX.format(task=task) + ", ".join(f'"{c}"' for c in ordered_classes) + PROMPT_SUFFIX)
    return text + OUTPUT_CUE if output_cue else text


def prompt_records(manifest_rows: Iterable[ManifestRow], classes: list[str], task: str, seed: int,
                   output_cue: bool = False) -> list[dict]:
    """One LLaVA conversation record per manifest row: the human turn and the bare label as answer."""
    if not task or not task.strip():
        raise InputError("task: empty; give the phrase that completes 'categories relating to ...'")
    records = []
    for index, row in enumerate(manifest_rows):
        order = shuffled_classes(classes, example_rng(seed, row.image_path))
        records.append({
            "id": f"{row.split}-{index:06d}",
            "image": row.image_path,
            "split": row.split,
            "label": row.label,
            "classes_order": order,
            "conversations": [
                {"from": "human", "value": format_human_turn(task, order, output_cue)},
                {"from": "gpt", "value": row.label},
            ],
        })
    return records


def write_prompts(manifest_rows: Iterable[ManifestRow], classes: list[str], task: str, seed: int,
                  output_cue: bool, path: str | Path) -> int:
    """Write ``prompt_records`` as JSONL (atomically); return the number of records."""
    records = prompt_records(manifest_rows, classes, task, seed, output_cue)
    write_jsonl(path, records)
    return len(records)


def read_classes_file(path: str | Path) -> tuple[str, list[str]]:
    """Read ``classes.json`` (``{"task": str, "classes": [str, ...]}``) and return (task, classes)."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected an object with keys 'task' and 'classes'; rerun prepare-dataset")
    task, classes = data.get("task"), data.get("classes")
    if not isinstance(task, str) or not task.strip():
        raise InputError(f"{path}: key 'task' must be a non-empty string, got {task!r}; rerun prepare-dataset")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c for c in classes):
        raise InputError(f"{path}: key 'classes' must be a non-empty list of non-empty strings, got {classes!r}")
    return task, classes
