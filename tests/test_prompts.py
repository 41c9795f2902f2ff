"""The prompt text, its seeded per-example shuffle, the JSONL records and the build-prompts CLI."""
from __future__ import annotations

import json
import random

import pytest

from projection_probe.cli import main
from projection_probe.data.manifest import ManifestRow, write_manifest
from projection_probe.data.prompts import build_human_turn, example_rng, prompt_records, write_prompts
from projection_probe.io import InputError, read_jsonl

CLASSES = [f"class {i}" for i in range(12)]


class _Identity(random.Random):
    def shuffle(self, x):  # keep the given order so the literal text can be checked
        return None


def test_human_turn_text_is_exact():
    text = build_human_turn("plant leaf diseases", ["Apple leaf", "Corn rust leaf"], _Identity(), output_cue=False)
    assert text == ('<image>\nClassify this image into one of the following categories relating to plant leaf '
                    'diseases: "Apple leaf", "Corn rust leaf". Only output a single final classification label '
                    'and NOTHING ELSE.')


def test_human_turn_with_output_cue_is_exact():
    text = build_human_turn("textures", ["banded"], _Identity(), output_cue=True)
    assert text == ('<image>\nClassify this image into one of the following categories relating to textures: '
                    '"banded". Only output a single final classification label and NOTHING ELSE.\n\nOutput:')


def test_shuffle_is_deterministic_per_seed_and_example():
    a = build_human_turn("t", CLASSES, example_rng(3, "img/x.png"))
    b = build_human_turn("t", CLASSES, example_rng(3, "img/x.png"))
    assert a == b


def test_shuffle_differs_across_seeds_and_examples():
    orders_by_seed = {tuple(r["classes_order"]) for seed in range(5)
                      for r in prompt_records([ManifestRow("img/x.png", "class 0", "train")], CLASSES, "t", seed)}
    assert len(orders_by_seed) == 5
    rows = [ManifestRow(f"img/{i}.png", "class 0", "train") for i in range(5)]
    orders_by_example = {tuple(r["classes_order"]) for r in prompt_records(rows, CLASSES, "t", 0)}
    assert len(orders_by_example) == 5


def test_every_order_is_a_permutation_of_the_classes():
    rows = [ManifestRow(f"img/{i}.png", "class 1", "test") for i in range(20)]
    for record in prompt_records(rows, CLASSES, "t", 7):
        assert sorted(record["classes_order"]) == sorted(CLASSES)


def test_record_shape(tmp_path):
    rows = [ManifestRow("img/a.png", "class 2", "train"), ManifestRow("img/b.png", "class 5", "test")]
    n = write_prompts(rows, CLASSES, "things", 1, True, tmp_path / "p.jsonl")
    records = read_jsonl(tmp_path / "p.jsonl")
    assert n == 2 and len(records) == 2
    first = records[0]
    assert set(first) == {"id", "image", "split", "label", "classes_order", "conversations"}
    assert (first["image"], first["split"], first["label"]) == ("img/a.png", "train", "class 2")
    assert len({r["id"] for r in records}) == 2
    human, gpt = first["conversations"]
    assert human["from"] == "human" and gpt == {"from": "gpt", "value": "class 2"}
    assert human["value"] == build_human_turn("things", CLASSES, example_rng(1, "img/a.png"), True)
    assert human["value"].startswith("<image>\n") and human["value"].endswith("\n\nOutput:")
    assert ", ".join(f'"{c}"' for c in first["classes_order"]) in human["value"]


def test_empty_task_is_an_error():
    with pytest.raises(InputError, match="task"):
        prompt_records([ManifestRow("a.png", "class 0", "train")], CLASSES, " ", 0)


def _write_inputs(tmp_path, labels=("class 0", "class 1")):
    rows = [ManifestRow(f"img/{i}.png", label, split) for i, (label, split) in
            enumerate((label, split) for split in ("train", "test") for label in labels)]
    write_manifest(tmp_path / "manifest.csv", rows)
    (tmp_path / "classes.json").write_text(json.dumps({"task": "toys", "classes": ["class 0", "class 1"]}))
    return rows


def test_build_prompts_cli(tmp_path):
    rows = _write_inputs(tmp_path)
    args = ["build-prompts", "--manifest", str(tmp_path / "manifest.csv"), "--classes",
            str(tmp_path / "classes.json"), "--seed", "2"]
    assert main(args + ["--out", str(tmp_path / "a.jsonl")]) == 0
    assert main(args + ["--output-cue", "--out", str(tmp_path / "b.jsonl")]) == 0
    plain, cued = read_jsonl(tmp_path / "a.jsonl"), read_jsonl(tmp_path / "b.jsonl")
    assert [r["image"] for r in plain] == [r.image_path for r in rows]
    assert not plain[0]["conversations"][0]["value"].endswith("Output:")
    assert cued[0]["conversations"][0]["value"] == plain[0]["conversations"][0]["value"] + "\n\nOutput:"


def test_build_prompts_cli_rejects_label_outside_classes(tmp_path, capsys):
    _write_inputs(tmp_path, labels=("class 0", "class 9"))
    code = main(["build-prompts", "--manifest", str(tmp_path / "manifest.csv"), "--classes",
                 str(tmp_path / "classes.json"), "--seed", "0", "--out", str(tmp_path / "p.jsonl")])
    assert code == 2
    assert "manifest.csv" in capsys.readouterr().err
    assert not (tmp_path / "p.jsonl").exists()


def test_build_prompts_cli_rejects_bad_classes_file(tmp_path, capsys):
    _write_inputs(tmp_path)
    (tmp_path / "classes.json").write_text(json.dumps({"classes": ["class 0"]}))
    code = main(["build-prompts", "--manifest", str(tmp_path / "manifest.csv"), "--classes",
                 str(tmp_path / "classes.json"), "--seed", "0", "--out", str(tmp_path / "p.jsonl")])
    assert code == 2
    assert "classes.json: key 'task'" in capsys.readouterr().err
