"""Manifest reading/validation, bad-image handling and the prepare-dataset CLI."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from projection_probe.cli import main
from projection_probe.data.images import load_rgb
from projection_probe.data.manifest import (
    BadImage,
    ManifestRow,
    bad_images_error,
    check_images,
    read_manifest,
    resolve_duplicates,
    validate_manifest,
    verify_image_hashes,
    write_manifest,
)
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
    rows = _rows() + [ManifestRow("g,with comma.png", "0", "train", "ab" * 32)]
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


@pytest.mark.parametrize("bad_bytes, reason", [(b"", "zero-byte file"), (b"this is not a PNG", "corrupt or "
                                                  "unreadable image (cannot identify image file)"), (None, "missing")],
                         ids=["zero-byte", "corrupt", "missing"])
def test_check_images_returns_every_bad_file_with_its_reason(tmp_path, bad_bytes, reason):
    good = _png(tmp_path / "good.png")
    bad = tmp_path / "bad.png"
    if bad_bytes is not None:
        bad.write_bytes(bad_bytes)
    rows = [ManifestRow(str(bad), "dog", "train"), ManifestRow(good, "cat", "train"),
            ManifestRow(str(bad), "dog", "test")]
    kept, found = check_images(rows, listed_at={str(bad): "list.txt:7"})
    assert [r.image_path for r in kept] == [good]
    assert kept[0].sha256 == hashlib.sha256((tmp_path / "good.png").read_bytes()).hexdigest()
    # Every bad image says where it was listed, inside the reason's parentheses when it has them.
    reason = f"{reason[:-1]}; listed in list.txt:7)" if reason.endswith(")") else f"{reason} (listed in list.txt:7)"
    assert found == [BadImage(str(bad), reason)] * 2


def test_bad_images_error_lists_twenty_and_counts_the_rest(tmp_path):
    bad = [BadImage(f"img/{i}.png", "zero-byte file") for i in range(23)] + [BadImage("img/x.png", "missing")]
    message = str(bad_images_error(bad, tmp_path / "out", tmp_path / "out.bad_images.txt"))
    lines = message.split("\n")
    assert lines[0] == (f"{tmp_path / 'out'}: 24 bad image file(s) (23 zero-byte file, 1 missing); full list in "
                        f"{tmp_path / 'out.bad_images.txt'}. Re-download them, or set data.on_bad_image: skip "
                        f"(--on-bad-image skip) to drop them and list them in {tmp_path / 'out' / 'bad_images.txt'}:")
    assert lines[1:21] == [f"  img/{i}.png: zero-byte file" for i in range(20)]
    assert lines[21:] == ["  ... and 4 more"]


def _hashed(path, label, split):
    return ManifestRow(str(path), label, split, hashlib.sha256(path.read_bytes()).hexdigest())


def test_duplicates_within_a_split_are_kept_once_across_splits_fail(tmp_path):
    a, b = Path(_png(tmp_path / "a.png", (1, 2, 3))), Path(_png(tmp_path / "b.png", (4, 5, 6)))
    copy_of_a = Path(_png(tmp_path / "copy_of_a.png", (1, 2, 3)))
    rows = [_hashed(a, "cat", "train"), _hashed(copy_of_a, "dog", "train"), _hashed(b, "cat", "test")]
    kept, warnings = resolve_duplicates(rows, "fail", "m.csv")
    assert kept == rows[::2]
    assert warnings == [f"{copy_of_a}: the same content as {a}, both in train; kept once; labels differ "
                        f"('cat' kept, 'dog' dropped)"]
    leaking = rows + [_hashed(copy_of_a, "cat", "test")]
    with pytest.raises(InputError, match=r"m\.csv: 2 image\(s\) in both train and test.*drop_from_train"):
        resolve_duplicates(leaking, "fail", "m.csv")
    kept, warnings = resolve_duplicates(leaking, "drop_from_train", "m.csv")
    assert kept == [rows[2], leaking[3]]
    assert len(warnings) == 2 and all("dropped from train" in w for w in warnings)
    with pytest.raises(InputError, match="data.cross_split_duplicates: unknown value 'keep'"):
        resolve_duplicates(rows, "keep", "m.csv")


def test_manifest_without_hash_column_still_reads(tmp_path):
    path = tmp_path / "manifest.csv"
    path.write_text("image_path,label,split\na.png,cat,train\n", encoding="utf-8")
    assert read_manifest(path) == [ManifestRow("a.png", "cat", "train", "")]


def test_verify_image_hashes_names_the_changed_image(tmp_path):
    a = Path(_png(tmp_path / "a.png", (1, 2, 3)))
    b = Path(_png(tmp_path / "b.png", (4, 5, 6)))
    rows = [_hashed(a, "cat", "train"), _hashed(b, "cat", "test"), ManifestRow("unhashed.png", "cat", "test")]
    verify_image_hashes(rows, "m.csv")  # unchanged; a row without a hash is not checked
    _png(b, (7, 8, 9))
    with pytest.raises(InputError, match=rf"^{re.escape(str(b))}: image changed since m\.csv was prepared "
                                         r"\(sha256 [0-9a-f]{12}\.\.\. differs from the manifest's"):
        verify_image_hashes(rows, "m.csv")
    a.unlink()
    with pytest.raises(InputError, match=rf"^{re.escape(str(a))}: image changed .*\(missing\) \(and 1 more\)"):
        verify_image_hashes(rows, "m.csv")


def test_exif_orientation_is_ignored_unless_asked_for(tmp_path):
    path = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.new("RGB", (20, 10), (200, 30, 30)).save(path, exif=exif)
    assert load_rgb(path).size == (20, 10)  # as LLaVA reads it
    assert load_rgb(path, exif_transpose=True).size == (10, 20)


def test_prepare_dataset_rejects_unknown_bad_image_policy(tmp_path):
    from projection_probe.data.sources import prepare_dataset

    with pytest.raises(InputError, match="data.on_bad_image: unknown value 'ignore'"):
        prepare_dataset("toy", {"kind": "_test_folder", "rows": []}, CLASSES, "animals", "ignore", True, tmp_path)


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
    assert (out / "warnings.txt").read_text() == (
        f"skipped 1 bad image(s) (1 corrupt or unreadable image) because data.on_bad_image is skip; they are "
        f"listed in {out / 'bad_images.txt'}\n")
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
