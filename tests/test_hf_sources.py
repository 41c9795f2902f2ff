"""Source kinds `hf` and `imagefolder`, on datasets built here with 🤗 `datasets` itself: a parquet
folder, a `save_to_disk` folder and an imagefolder tree. Each image is a flat grey square whose value
names its row, so a manifest row's image says which dataset row it came from."""
from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from projection_probe.data.hf_sources import local_fingerprint, source_fingerprint
from projection_probe.data.manifest import read_manifest
from projection_probe.data.sources import available_sources, bad_image_list_path, prepare_dataset
from projection_probe.io import InputError

NAMES = ["cat", "dog", "fish"]
# (grey value, class index) per split: 4 train and 2 test images per class, every value distinct.
ROWS = {"train": [(10 + i, i % 3) for i in range(12)], "test": [(100 + i, i % 3) for i in range(6)]}


def png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((6, 6), value, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def build(rows: dict, string_labels: bool = False, bad: dict | None = None):
    """A DatasetDict from ``rows`` (split -> [(value, class index)]); ``bad`` (split -> row index)
    replaces that row's image with bytes that are no image."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value

    features = Features({"image": Image(), "label": Value("string") if string_labels else ClassLabel(names=NAMES)})
    splits = {}
    for split, items in rows.items():
        images = [{"bytes": b"not an image" if (bad or {}).get(split) == i else png(v), "path": None}
                  for i, (v, _) in enumerate(items)]
        labels = [NAMES[c] if string_labels else c for _, c in items]
        splits[split] = Dataset.from_dict({"image": images, "label": labels}, features=features)
    return DatasetDict(splits)


def as_parquet(dataset_dict, folder: Path) -> Path:
    folder.mkdir(parents=True)
    for split, ds in dataset_dict.items():
        ds.to_parquet(folder / f"{split}.parquet")
    return folder


def as_imagefolder(rows: dict, folder: Path) -> Path:
    for split, items in rows.items():
        for value, c in items:
            (folder / split / NAMES[c]).mkdir(parents=True, exist_ok=True)
            (folder / split / NAMES[c] / f"{value}.png").write_bytes(png(value))
    return folder


@pytest.fixture(params=["parquet", "save_to_disk", "imagefolder"])
def source(request, tmp_path):
    """The same six-class-row dataset in each of the three layouts, as a `source:` block."""
    folder = tmp_path / request.param
    if request.param == "imagefolder":
        return {"kind": "imagefolder", "path": str(as_imagefolder(ROWS, folder))}
    if request.param == "parquet":
        return {"kind": "hf", "path": str(as_parquet(build(ROWS), folder))}
    build(ROWS).save_to_disk(str(folder))
    return {"kind": "hf", "path": str(folder)}


def prepare(tmp_path, source, classes=None, **options):
    out = tmp_path / "out"
    prepare_dataset("toy", source, classes, "animals", options.pop("on_bad_image", "fail"), True, out, **options)
    return out


def prepare_error(tmp_path, source, classes=None, **options) -> str:
    with pytest.raises(InputError) as e:
        prepare(tmp_path, source, classes, **options)
    return str(e.value)


def grey_value(path: str) -> int:
    values = np.unique(np.asarray(Image.open(path)))
    assert len(values) == 1, path
    return int(values[0])


def test_both_kinds_are_registered():
    assert {"hf", "imagefolder"} <= set(available_sources())


def test_every_good_row_is_listed_once_with_its_label_and_split(tmp_path, source):
    out = prepare(tmp_path, source)
    listed = Counter((r.split, grey_value(r.image_path), r.label) for r in read_manifest(out / "manifest.csv"))
    expected = Counter((split, v, NAMES[c]) for split, items in ROWS.items() for v, c in items)
    assert listed == expected
    assert json.loads((out / "classes.json").read_text()) == {"task": "animals", "classes": NAMES}
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["fingerprint"] == local_fingerprint(Path(source["path"]))
    assert provenance["splits"] == {"train": "train", "test": "test"}


def test_image_files_keep_the_original_encoded_bytes(tmp_path):
    source = {"kind": "hf", "path": str(as_parquet(build(ROWS), tmp_path / "parquet"))}
    rows = read_manifest(prepare(tmp_path, source) / "manifest.csv")
    assert {Path(r.image_path).read_bytes() for r in rows} == {png(v) for items in ROWS.values() for v, _ in items}


def test_string_labels_need_the_classes_key(tmp_path):
    source = {"kind": "hf", "path": str(as_parquet(build(ROWS, string_labels=True), tmp_path / "parquet"))}
    assert "classes: required" in prepare_error(tmp_path, source)
    rows = read_manifest(prepare(tmp_path, source, ["fish", "dog", "cat"]) / "manifest.csv")
    assert Counter(r.label for r in rows) == {"cat": 6, "dog": 6, "fish": 6}


def test_label_values_not_in_classes_are_named_with_counts(tmp_path):
    many = {"train": [(i, 0) for i in range(25)] + [(30, 1)], "test": [(40, 1)]}
    dataset = build(many, string_labels=True)
    dataset["train"] = dataset["train"].map(lambda row, i: {"label": f"odd{i}" if i < 25 else "dog"},
                                            with_indices=True)
    source = {"kind": "hf", "path": str(as_parquet(dataset, tmp_path / "parquet"))}
    message = prepare_error(tmp_path, source, ["cat", "dog"])
    assert "25 value(s) not in classes" in message and "'odd0' (1 rows)" in message
    assert "and 5 more" in message and message.count("rows)") == 20
    assert "source.drop_labels" in message


def test_label_map_and_drop_labels(tmp_path, source):
    source = {**source, "label_map": {"cat": "kitten"}, "drop_labels": ["fish"]}
    out = prepare(tmp_path, source)
    assert json.loads((out / "classes.json").read_text())["classes"] == ["kitten", "dog"]
    rows = read_manifest(out / "manifest.csv")
    assert Counter((r.split, r.label) for r in rows) == {("train", "kitten"): 4, ("train", "dog"): 4,
                                                         ("test", "kitten"): 2, ("test", "dog"): 2}
    # With classes pinned in the config, the label map targets pinned strings.
    pinned = prepare(tmp_path, {**source, "label_map": {"cat": "Kitten"}}, ["Kitten", "dog"])
    assert {r.label for r in read_manifest(pinned / "manifest.csv")} == {"Kitten", "dog"}


def test_one_split_is_split_by_test_fraction_the_same_for_the_same_seed(tmp_path):
    only_train = {"train": [(v, c) for v, c in ROWS["train"] + ROWS["test"]]}
    source = {"kind": "hf", "path": str(as_parquet(build(only_train), tmp_path / "parquet"))}
    assert "set source.test_fraction" in prepare_error(tmp_path, source)

    def split_of(seed):
        out = prepare(tmp_path, {**source, "test_fraction": 0.34, "split_seed": seed})
        return {grey_value(r.image_path): (r.split, r.label) for r in read_manifest(out / "manifest.csv")}

    first = split_of(0)
    assert Counter(split for split, _ in first.values()) == {"train": 12, "test": 6}
    assert Counter(first.values())[("test", "cat")] == 2  # stratified: two of each class's six
    assert split_of(0) == first
    assert split_of(1) != first


def test_undecodable_bytes_are_reported_by_split_and_row(tmp_path):
    path = as_parquet(build(ROWS, bad={"test": 3}), tmp_path / "parquet")
    message = prepare_error(tmp_path, {"kind": "hf", "path": str(path)})
    assert "1 bad image file(s) (1 corrupt or unreadable image)" in message
    assert f"listed in {path} [split 'test' row 3]" in message
    assert bad_image_list_path(tmp_path / "out").is_file()
    out = prepare(tmp_path, {"kind": "hf", "path": str(path)}, on_bad_image="skip")
    [line] = (out / "bad_images.txt").read_text().splitlines()
    assert line.startswith(str(out / "images" / "test")) and "[split 'test' row 3]" in line
    assert len(read_manifest(out / "manifest.csv")) == 17


def test_unknown_split_column_and_config_names_list_the_existing_ones(tmp_path):
    path = as_parquet(build(ROWS), tmp_path / "parquet")
    source = {"kind": "hf", "path": str(path)}
    message = prepare_error(tmp_path, {**source, "splits": {"train": "train", "test": "validation"}})
    assert "source.splits.test: split 'validation'" in message and "['test', 'train']" in message
    message = prepare_error(tmp_path, {**source, "label_column": "class"})
    assert "source.label_column: column 'class'" in message and "['image', 'label']" in message
    message = prepare_error(tmp_path, {**source, "image_column": "label"})
    assert "not an Image feature" in message

    configs = tmp_path / "configs"
    for name in ("small", "large"):
        as_parquet(build(ROWS), configs / name)
    (configs / "README.md").write_text("---\nconfigs:\n" + "".join(
        f"- config_name: {name}\n  data_files:\n  - split: train\n    path: {name}/train.parquet\n"
        f"  - split: test\n    path: {name}/test.parquet\n" for name in ("small", "large")) + "---\n")
    message = prepare_error(tmp_path, {"kind": "hf", "path": str(configs), "name": "medium"})
    assert "source.name: 'medium' is not a config of" in message and "'small'" in message and "'large'" in message
    out = prepare(tmp_path, {"kind": "hf", "path": str(configs), "name": "large"})
    assert len(read_manifest(out / "manifest.csv")) == 18


def test_unknown_keys_and_local_revision_are_refused(tmp_path):
    path = str(as_parquet(build(ROWS), tmp_path / "parquet"))
    assert "unknown key(s) ['root']" in prepare_error(tmp_path, {"kind": "hf", "path": path, "root": path})
    assert "source.revision" in prepare_error(tmp_path, {"kind": "hf", "path": path, "revision": "v1"})
    assert "unknown key(s) ['label_column']" in prepare_error(
        tmp_path, {"kind": "imagefolder", "path": path, "label_column": "x"})


def test_per_class_limits_take_the_first_images_in_stored_order(tmp_path, source):
    rows = read_manifest(prepare(tmp_path, {**source, "train_per_class": 2, "test_per_class": 1}) / "manifest.csv")
    by_split = {split: sorted(grey_value(r.image_path) for r in rows if r.split == split)
                for split in ("train", "test")}
    assert by_split == {"train": list(range(10, 16)), "test": [100, 101, 102]}


def test_the_fingerprint_follows_the_files_and_a_change_after_planning_is_refused(tmp_path):
    path = as_parquet(build(ROWS), tmp_path / "parquet")
    source = {"kind": "hf", "path": str(path)}
    planned = source_fingerprint(source)
    assert planned == source_fingerprint(source)
    assert source_fingerprint({"kind": "hf", "path": "someone/on-the-hub"}) is None
    prepare(tmp_path, source, source_fingerprint=planned)
    os.utime(path / "test.parquet", ns=(0, 0))
    assert source_fingerprint(source) != planned
    assert "the files changed after the workflow started" in prepare_error(tmp_path, source,
                                                                           source_fingerprint=planned)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_hub_gives_one_line_naming_the_dataset(tmp_path):
    """Through the CLI, as the workflow runs it: the Hub endpoint is a closed port on the loopback
    (huggingface_hub retries for about 20 s before giving up)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}", HF_HOME=str(tmp_path / "hf"))
    result = subprocess.run(
        [sys.executable, "-m", "projection_probe.cli", "prepare-dataset", "--dataset", "remote",
         "--source-json", json.dumps({"kind": "hf", "path": "someone/not-here", "revision": "main"}),
         "--classes-json", "null", "--task", "things", "--out-dir", str(tmp_path / "out")],
        env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "cannot load dataset 'someone/not-here'" in errors[0]
    assert "pre-download it on a machine with network" in errors[0] and "local copy" in errors[0]
