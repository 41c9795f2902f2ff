"""Manifest reading/validation, bad-image handling and the prepare-dataset CLI."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from projection_probe.cli import main
from projection_probe.data.manifest import (ManifestRow, check_images, read_manifest, validate_manifest,
                                            write_manifest)
from projection_probe.data.sources import get_source, register_source
from projection_probe.io import InputError

CLASSES = ["cat", "dog", "bird"]


def _rows():
    return [ManifestRow("a.png", "cat", "train"), ManifestRow("b.png", "dog", "train"),
            ManifestRow("c.png", "bird", "train"), ManifestRow("d.png", "cat", "test"),
            ManifestRow("e.png", "dog", "test"), ManifestRow("f.png", "bird", "test")]


def _png(path, color=(10, 20, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), color).save(path)
    return str(path)


def test_write_then_read_round_trips_labels_as_strings(tmp_path):
    rows = _rows() + [ManifestRow("g,with comma.png", "0", "train")]
    write_manifest(tmp_path / "manifest.csv", rows)
    assert read_manifest(tmp_path / "manifest.csv") == rows


def test_valid_manifest_has_no_warnings():
    assert validate_manifest(_rows(), CLASSES, "m.csv") == []


def test_missing_column_names_file(tmp_path):
    path = tmp_path / "manifest.csv"
    path.write_text("image_path,label\na.png,cat\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"manifest\.csv.*missing column.*split"):
        read_manifest(path)


def test_non_utf8_reports_file_and_line(tmp_path):
    path = tmp_path / "manifest.csv"
    path.write_bytes(b"image_path,label,split\na.png,cat,train\nb.png,caf\xe9,test\n")
    with pytest.raises(InputError, match=r"manifest\.csv:3: not UTF-8"):
        read_manifest(path)


def test_empty_value_names_line(tmp_path):
    path = tmp_path / "manifest.csv"
    path.write_text("image_path,label,split\na.png,,train\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"manifest\.csv:2: empty"):
        read_manifest(path)


def test_empty_split_is_an_error():
    rows = [r for r in _rows() if r.split == "train"]
    with pytest.raises(InputError, match=r"m\.csv: split 'test' has no images"):
        validate_manifest(rows, CLASSES, "m.csv")


def test_unknown_split_is_an_error():
    rows = _rows() + [ManifestRow("z.png", "cat", "val")]
    with pytest.raises(InputError, match=r"m\.csv:8: split 'val'"):
        validate_manifest(rows, CLASSES, "m.csv")


def test_test_class_without_train_images_is_an_error():
    rows = [r for r in _rows() if not (r.label == "bird" and r.split == "train")]
    with pytest.raises(InputError, match=r"m\.csv: test class\(es\) \['bird'\] have no train images"):
        validate_manifest(rows, CLASSES, "m.csv")


def test_train_only_class_warns_or_fails_by_flag():
    rows = [r for r in _rows() if not (r.label == "bird" and r.split == "test")]
    warnings = validate_manifest(rows, CLASSES, "m.csv", allow_train_only_classes=True)
    assert len(warnings) == 1 and "'bird'" in warnings[0]
    with pytest.raises(InputError, match=r"m\.csv: train class\(es\) \['bird'\].*allow_train_only_classes"):
        validate_manifest(rows, CLASSES, "m.csv", allow_train_only_classes=False)


def test_label_without_pinned_class_is_an_error():
    rows = _rows() + [ManifestRow("z.png", "fish", "train")]
    with pytest.raises(InputError, match=r"m\.csv:8: label 'fish' has no entry in the pinned class list"):
        validate_manifest(rows, CLASSES, "m.csv")


def test_duplicate_image_path_is_an_error():
    rows = _rows() + [ManifestRow("a.png", "dog", "test")]
    with pytest.raises(InputError, match=r"m\.csv:8: duplicate image_path 'a\.png' \(first on line 2\)"):
        validate_manifest(rows, CLASSES, "m.csv")


@pytest.mark.parametrize("bad_bytes", [b"", b"this is not a PNG"], ids=["zero-byte", "corrupt"])
def test_check_images_fail_names_the_bad_file(tmp_path, bad_bytes):
    good = _png(tmp_path / "good.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(bad_bytes)
    rows = [ManifestRow(good, "cat", "train"), ManifestRow(str(bad), "dog", "train")]
    with pytest.raises(InputError, match=r"bad\.png"):
        check_images(rows, "fail", tmp_path / "report.txt")


@pytest.mark.parametrize("bad_bytes", [b"", b"this is not a PNG"], ids=["zero-byte", "corrupt"])
def test_check_images_skip_drops_and_reports(tmp_path, bad_bytes):
    good = _png(tmp_path / "good.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(bad_bytes)
    rows = [ManifestRow(good, "cat", "train"), ManifestRow(str(bad), "dog", "train")]
    kept = check_images(rows, "skip", tmp_path / "report.txt")
    assert kept == [rows[0]]
    lines = (tmp_path / "report.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1
    path, reason = lines[0].split("\t")
    assert path == str(bad) and reason


def test_check_images_rejects_unknown_policy(tmp_path):
    with pytest.raises(InputError, match="on_bad_image"):
        check_images([], "ignore", None)


def test_get_source_unknown_kind_lists_known():
    with pytest.raises(InputError, match=r"unknown value 'nope'.*sklearn_digits"):
        get_source("nope")


# A source registered only by this test, pointing at images the test writes, so that the CLI's
# validation and bad-image paths can be exercised without the demo data.
@register_source("_test_folder")
def _folder_source(source_cfg, out_dir, classes):
    return [ManifestRow(p, label, split) for p, label, split in source_cfg["rows"]]


def _prepare_args(tmp_path, rows, *extra):
    return ["prepare-dataset", "--dataset", "toy",
            "--source-json", json.dumps({"kind": "_test_folder", "rows": rows}),
            "--classes-json", json.dumps(CLASSES), "--task", "animals", "--out-dir", str(tmp_path / "out"),
            *extra]


def _toy_rows(tmp_path):
    return [[_png(tmp_path / f"img/{s}_{c}.png", (i, 0, 0)), c, s]
            for i, (s, c) in enumerate((s, c) for s in ("train", "test") for c in CLASSES)]


def test_prepare_dataset_cli_writes_all_outputs(tmp_path):
    rows = _toy_rows(tmp_path)
    corrupt = tmp_path / "img/corrupt.png"
    corrupt.write_bytes(b"junk")
    rows.append([str(corrupt), "cat", "train"])
    assert main(_prepare_args(tmp_path, rows, "--on-bad-image", "skip")) == 0
    out = tmp_path / "out"
    assert len(read_manifest(out / "manifest.csv")) == 6
    assert json.loads((out / "classes.json").read_text()) == {"task": "animals", "classes": CLASSES}
    assert (out / "bad_images.txt").read_text().startswith(str(corrupt) + "\t")
    assert (out / "warnings.txt").read_text() == ""
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_prepare_dataset_cli_failure_leaves_no_manifest(tmp_path, capsys):
    rows = _toy_rows(tmp_path)
    assert main(_prepare_args(tmp_path, rows)) == 0
    assert (tmp_path / "out/manifest.csv").exists()
    corrupt = tmp_path / "img/corrupt.png"
    corrupt.write_bytes(b"")
    rows.append([str(corrupt), "cat", "train"])
    assert main(_prepare_args(tmp_path, rows, "--on-bad-image", "fail")) == 2
    assert "corrupt.png" in capsys.readouterr().err
    assert not (tmp_path / "out/manifest.csv").exists()


def test_prepare_dataset_cli_train_only_flag(tmp_path):
    rows = [r for r in _toy_rows(tmp_path) if not (r[1] == "bird" and r[2] == "test")]
    assert main(_prepare_args(tmp_path, rows, "--no-allow-train-only-classes")) == 2
    assert not (tmp_path / "out/manifest.csv").exists()
    assert main(_prepare_args(tmp_path, rows, "--allow-train-only-classes")) == 0
    assert "'bird'" in (tmp_path / "out/warnings.txt").read_text()


@pytest.mark.parametrize("classes", [[], ["cat", "cat"], ['say "hi"'], "cat"])
def test_prepare_dataset_rejects_bad_class_lists(tmp_path, capsys, classes):
    args = _prepare_args(tmp_path, _toy_rows(tmp_path))
    args[args.index("--classes-json") + 1] = json.dumps(classes)
    assert main(args) == 2
    assert "--classes-json" in capsys.readouterr().err


def test_prepare_dataset_rejects_invalid_source_json(tmp_path, capsys):
    args = _prepare_args(tmp_path, [])
    args[args.index("--source-json") + 1] = "{kind: oops"
    assert main(args) == 2
    assert "--source-json: not valid JSON" in capsys.readouterr().err
