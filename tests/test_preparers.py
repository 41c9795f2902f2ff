"""The four paper-dataset preparers on tiny copies of the official layouts (tests/layout_fixtures.py)."""
from __future__ import annotations

import hashlib
import logging
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

from projection_probe.data.manifest import read_manifest, validate_manifest
from projection_probe.data.preparers.common import normalise_label
from projection_probe.data.sources import available_sources, bad_image_list_path, prepare_dataset, run_source
from projection_probe.io import InputError

from layout_fixtures import (
    DERMNET_FOLDERS,
    PLANTDOC_TRAIN_ONLY_CLASS,
    crisismmd_image,
    crisismmd_tsv,
    link_image,
    make_crisismmd,
    make_dermnet,
    make_dtd,
    make_plantdoc,
    make_zero_byte,
    nest_folder,
    put_tab_in_tweet,
    truncate_image,
    write_image,
)


def _counts(rows):
    return Counter((r.label, r.split) for r in rows)


def test_all_four_kinds_are_registered():
    assert {"plantdoc", "dtd", "dermnet", "crisismmd"} <= set(available_sources())


def test_normalise_label_ignores_case_underscores_and_spacing():
    assert normalise_label("Apple_Scab  Leaf") == normalise_label("apple scab leaf")
    assert normalise_label("apple scab leaf") != normalise_label("apple scab")


# PlantDoc ---------------------------------------------------------------------------------------

def test_plantdoc_rows_point_at_the_original_files(tmp_path):
    classes, cfg = make_plantdoc(tmp_path / "PlantDoc-Dataset")
    rows = run_source(cfg, tmp_path / "out", classes)
    assert _counts(rows) == {("Apple Scab Leaf", "train"): 3, ("Apple Scab Leaf", "test"): 1,
                             ("Corn leaf blight", "train"): 2, ("Corn leaf blight", "test"): 1,
                             (PLANTDOC_TRAIN_ONLY_CLASS, "train"): 2}
    for row in rows:
        path = Path(row.image_path)
        assert path.is_file()
        assert path.parent.name == row.label and path.parent.parent.name == row.split
    assert not (tmp_path / "out").exists()  # nothing is copied


def test_plantdoc_train_only_class_is_kept_and_warned(tmp_path, caplog):
    classes, cfg = make_plantdoc(tmp_path / "pd")
    with caplog.at_level(logging.WARNING):
        rows = run_source(cfg, tmp_path / "out", classes)
    assert PLANTDOC_TRAIN_ONLY_CLASS in caplog.text
    warnings = validate_manifest(rows, classes, "manifest.csv", allow_train_only_classes=True)
    assert any(PLANTDOC_TRAIN_ONLY_CLASS in w for w in warnings)
    assert classes[-1] == PLANTDOC_TRAIN_ONLY_CLASS


def test_plantdoc_normalised_identity_and_non_image_files(tmp_path):
    classes, cfg = make_plantdoc(tmp_path / "pd")
    # The folder differs from the class string only in case and underscores.
    shutil.move(tmp_path / "pd" / "test" / "Corn leaf blight", tmp_path / "pd" / "test" / "corn_leaf_blight")
    (tmp_path / "pd" / "train" / "Apple Scab Leaf" / "notes.txt").write_text("not an image")
    (tmp_path / "pd" / "train" / "Apple Scab Leaf" / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "pd" / "train" / ".ipynb_checkpoints").mkdir()
    rows = run_source(cfg, tmp_path / "out", classes)
    counts = _counts(rows)
    assert counts[("Corn leaf blight", "test")] == 1
    assert counts[("Apple Scab Leaf", "train")] == 3
    assert len(rows) == 9


@pytest.mark.parametrize("missing", ["train", "test"])
def test_plantdoc_missing_split_folder(tmp_path, missing):
    classes, cfg = make_plantdoc(tmp_path / "pd")
    shutil.rmtree(tmp_path / "pd" / missing)
    with pytest.raises(InputError, match=rf"pd/{missing}: folder missing.*train/<class>/<image> and test/<class>"):
        run_source(cfg, tmp_path / "out", classes)


def test_plantdoc_root_one_level_too_high_says_where_the_data_is(tmp_path):
    classes, cfg = make_plantdoc(tmp_path / "dl" / "PlantDoc-Dataset-master")
    cfg["root"] = str(tmp_path / "dl")
    with pytest.raises(InputError, match="PlantDoc-Dataset-master/train.*one level deeper"):
        run_source(cfg, tmp_path / "out", classes)


def test_plantdoc_missing_root(tmp_path):
    classes, cfg = make_plantdoc(tmp_path / "pd")
    cfg["root"] = str(tmp_path / "nowhere")
    with pytest.raises(InputError, match="source.root: folder .*nowhere.* does not exist"):
        run_source(cfg, tmp_path / "out", classes)
    del cfg["root"]
    with pytest.raises(InputError, match="source.root: missing"):
        run_source(cfg, tmp_path / "out", classes)


def test_plantdoc_unmapped_folder_names_it_and_label_map(tmp_path):
    classes, cfg = make_plantdoc(tmp_path / "pd")
    write_image(tmp_path / "pd" / "train" / "Grape leaf black rot" / "0.jpg", 1)
    with pytest.raises(InputError, match=r"Grape leaf black rot.*add 'Grape leaf black rot': <class string> "
                                         r"to source.label_map"):
        run_source(cfg, tmp_path / "out", classes)


def test_plantdoc_label_map_renames_and_rejects_unknown_targets(tmp_path):
    classes, cfg = make_plantdoc(tmp_path / "pd")
    classes = ["apple scab", "Corn leaf blight", PLANTDOC_TRAIN_ONLY_CLASS]
    cfg["label_map"] = {"Apple Scab Leaf": "apple scab"}
    assert _counts(run_source(cfg, tmp_path / "out", classes))[("apple scab", "train")] == 3
    cfg["label_map"] = {"Apple Scab Leaf": "apple scabs"}
    with pytest.raises(InputError, match=r"source.label_map\['Apple Scab Leaf'\]: value 'apple scabs' is not in"):
        run_source(cfg, tmp_path / "out", classes)


# DTD --------------------------------------------------------------------------------------------

def test_dtd_split_one(tmp_path):
    classes, cfg = make_dtd(tmp_path / "dtd")
    rows = run_source(cfg, tmp_path / "out", classes)
    assert _counts(rows) == {(c, s): n for c in classes for s, n in (("train", 2), ("test", 1))}
    assert Path(rows[0].image_path) == tmp_path / "dtd" / "images" / "banded" / "banded_0001.jpg"
    test_names = sorted(Path(r.image_path).name for r in rows if r.split == "test")
    assert test_names == ["banded_0004.jpg", "blotchy_0004.jpg", "braided_0004.jpg"]  # val1 unused


def test_dtd_split_index_picks_the_lists(tmp_path):
    classes, cfg = make_dtd(tmp_path / "dtd")
    cfg["split_index"] = 2
    rows = run_source(cfg, tmp_path / "out", classes)
    assert sorted(Path(r.image_path).name for r in rows if r.split == "test") == [
        "banded_0002.jpg", "blotchy_0002.jpg", "braided_0002.jpg"]
    cfg["split_index"] = 3
    with pytest.raises(InputError, match=r"labels/train3.txt: split list missing"):
        run_source(cfg, tmp_path / "out", classes)
    cfg["split_index"] = 11
    with pytest.raises(InputError, match=r"source.split_index: 11"):
        run_source(cfg, tmp_path / "out", classes)


def test_dtd_listed_file_missing_stays_a_row_with_its_list_line(tmp_path):
    classes, cfg = make_dtd(tmp_path / "dtd")
    missing = tmp_path / "dtd" / "images" / "blotchy" / "blotchy_0002.jpg"
    missing.unlink()
    rows = run_source(cfg, tmp_path / "out", classes)
    # train1.txt lists banded 1, 2 then blotchy 1, 2: the missing file is on line 4. The image check
    # of prepare_dataset reports it there (see the messy-download tests below).
    assert str(missing) in [r.image_path for r in rows]
    assert rows.listed_at[str(missing)] == f"{tmp_path / 'dtd' / 'labels' / 'train1.txt'}:4"


def test_dtd_unmapped_folder_and_missing_images_folder(tmp_path):
    classes, cfg = make_dtd(tmp_path / "dtd")
    with pytest.raises(InputError, match=r"train1.txt:5: label 'braided' has no class.*source.label_map"):
        run_source(cfg, tmp_path / "out", classes[:2])
    shutil.rmtree(tmp_path / "dtd" / "images")
    with pytest.raises(InputError, match=r"dtd/images: folder missing.*labels/train<k>.txt"):
        run_source(cfg, tmp_path / "out", classes)


# DermNet ----------------------------------------------------------------------------------------

def test_dermnet_label_map_and_identity(tmp_path):
    classes, cfg = make_dermnet(tmp_path / "dermnet")
    rows = run_source(cfg, tmp_path / "out", classes)
    assert _counts(rows) == {(c, s): n for c in classes for s, n in (("train", 2), ("test", 1))}
    folders = {Path(r.image_path).parent.name: r.label for r in rows}
    assert folders == DERMNET_FOLDERS


def test_dermnet_unmapped_folder(tmp_path):
    classes, cfg = make_dermnet(tmp_path / "dermnet")
    write_image(tmp_path / "dermnet" / "test" / "Psoriasis pictures Lichen Planus and related diseases" / "a.jpg", 3)
    with pytest.raises(InputError, match=r"test/Psoriasis pictures.*source.label_map"):
        run_source(cfg, tmp_path / "out", classes)


# CrisisMMD --------------------------------------------------------------------------------------

def test_crisismmd_paper_mapping(tmp_path):
    classes, cfg = make_crisismmd(tmp_path / "CrisisMMD_v2.0")
    rows = run_source(cfg, tmp_path / "out", classes)
    counts = _counts(rows)
    assert counts == {
        ("affected individuals", "train"): 2,  # affected_individuals + injured_or_dead_people
        ("infrastructure and utility damage", "train"): 1,
        ("rescue volunteering or donation effort", "train"): 1,
        ("vehicle damage", "train"): 1,
        ("affected individuals", "test"): 2,  # affected_individuals + missing_or_found_people
        ("infrastructure and utility damage", "test"): 1,
        ("rescue volunteering or donation effort", "test"): 1,
        ("vehicle damage", "test"): 1,
    }
    first = rows[0]
    # Row 0's text label says not_humanitarian; the image label (affected_individuals) must win.
    assert first.label == "affected individuals"
    assert Path(first.image_path).is_file()
    assert Path(first.image_path).relative_to(tmp_path / "CrisisMMD_v2.0").parts[0] == "data_image"


def test_crisismmd_train_and_dev(tmp_path):
    classes, cfg = make_crisismmd(tmp_path / "c")
    cfg["train_splits"] = ["train", "dev"]
    counts = _counts(run_source(cfg, tmp_path / "out", classes))
    assert counts[("vehicle damage", "train")] == 2
    cfg["train_splits"] = ["train", "test"]
    with pytest.raises(InputError, match=r"source.train_splits"):
        run_source(cfg, tmp_path / "out", classes)


def test_crisismmd_label_in_neither_map_nor_drop_list(tmp_path):
    classes, cfg = make_crisismmd(tmp_path / "c")
    cfg["drop_labels"] = ["not_humanitarian"]
    with pytest.raises(InputError, match=r"task_humanitarian_text_img_train.tsv: raw label "
                                         r"'other_relevant_information' is in neither"):
        run_source(cfg, tmp_path / "out", classes)
    # A null value in label_map drops the label just as drop_labels does.
    cfg["label_map"]["other_relevant_information"] = None
    assert len(run_source(cfg, tmp_path / "out", classes)) == 10


def test_crisismmd_config_errors(tmp_path):
    classes, cfg = make_crisismmd(tmp_path / "c")
    no_map = {k: v for k, v in cfg.items() if k != "label_map"}
    with pytest.raises(InputError, match=r"source.label_map: required"):
        run_source(no_map, tmp_path / "out", classes)
    clash = dict(cfg, drop_labels=["vehicle_damage"])
    with pytest.raises(InputError, match=r"source.drop_labels: \['vehicle_damage'\] also map"):
        run_source(clash, tmp_path / "out", classes)


def test_crisismmd_missing_column(tmp_path):
    classes, cfg = make_crisismmd(tmp_path / "c")
    test_tsv = tmp_path / "c" / "crisismmd_datasplit_all" / "task_humanitarian_text_img_test.tsv"
    lines = test_tsv.read_text().splitlines()
    test_tsv.write_text("\n".join([lines[0].replace("label_image", "label_img")] + lines[1:]) + "\n")
    with pytest.raises(InputError, match=r"missing column\(s\) \['label_image'\]"):
        run_source(cfg, tmp_path / "out", classes)


def test_crisismmd_missing_split_tsv(tmp_path):
    classes, cfg = make_crisismmd(tmp_path / "c")
    (tmp_path / "c" / "crisismmd_datasplit_all" / "task_humanitarian_text_img_train.tsv").unlink()
    with pytest.raises(InputError, match=r"task_humanitarian_text_img_train.tsv: split TSV missing"):
        run_source(cfg, tmp_path / "out", classes)


# Messy downloads: the gotchas of real copies, through prepare_dataset ------------------------------

def prepare(tmp_path, classes, cfg, **options):
    """prepare_dataset into ``<tmp>/data/<kind>``; returns the output folder and the kept rows."""
    out = tmp_path / "data" / cfg["kind"]
    options = {"on_bad_image": "fail", "allow_train_only_classes": True, **options}
    return out, prepare_dataset(cfg["kind"], cfg, classes, "things", out_dir=out, **options)


def prepare_error(tmp_path, classes, cfg, **options) -> str:
    with pytest.raises(InputError) as caught:
        prepare(tmp_path, classes, cfg, **options)
    assert not (tmp_path / "data" / cfg["kind"] / "manifest.csv").exists()
    return str(caught.value)


@pytest.mark.parametrize("kind", ["crisismmd", "dtd"])
def test_missing_listed_image_is_skippable_and_reported_where_listed(tmp_path, kind):
    if kind == "crisismmd":
        classes, cfg = make_crisismmd(tmp_path / "CrisisMMD_v2.0")
        missing = crisismmd_image(tmp_path / "CrisisMMD_v2.0", "test", 0)
        where = f"{crisismmd_tsv(tmp_path / 'CrisisMMD_v2.0', 'test')}:2"
    else:
        classes, cfg = make_dtd(tmp_path / "dtd")
        missing = tmp_path / "dtd" / "images" / "blotchy" / "blotchy_0002.jpg"
        where = f"{tmp_path / 'dtd' / 'labels' / 'train1.txt'}:4"
    missing.unlink()
    assert f"{missing}: missing (listed in {where})" in prepare_error(tmp_path, classes, cfg)

    out, rows = prepare(tmp_path, classes, cfg, on_bad_image="skip")
    assert str(missing) not in [r.image_path for r in rows]
    assert (out / "bad_images.txt").read_text() == f"{missing}\tmissing (listed in {where})\n"
    assert f"skipped 1 bad image(s) (1 missing) because data.on_bad_image is skip; they are listed in " \
           f"{out / 'bad_images.txt'}" in (out / "warnings.txt").read_text()


def test_zero_byte_image_message_offers_the_skip_key(tmp_path):
    classes, cfg = make_crisismmd(tmp_path / "c")
    image = make_zero_byte(crisismmd_image(tmp_path / "c", "train", 0))
    message = prepare_error(tmp_path, classes, cfg)
    assert f"{image}: zero-byte file" in message
    assert "data.on_bad_image: skip" in message and "remove it" not in message


def test_messages_name_the_output_folder_never_the_staging_folder(tmp_path, caplog):
    classes, cfg = make_crisismmd(tmp_path / "c")
    truncate_image(crisismmd_image(tmp_path / "c", "train", 0))
    out = tmp_path / "data" / "crisismmd"
    message = prepare_error(tmp_path, classes, cfg)
    assert str(out / "bad_images.txt") in message and ".prepare." not in message
    with caplog.at_level(logging.WARNING):
        prepare(tmp_path, classes, cfg, on_bad_image="skip")
    assert f"they are listed in {out / 'bad_images.txt'}" in caplog.text
    assert ".prepare." not in caplog.text + (out / "warnings.txt").read_text()


def test_fail_finds_every_bad_file_before_failing(tmp_path):
    classes, cfg = make_crisismmd(tmp_path / "c")
    cfg["train_splits"] = ["train", "dev"]  # so that every class keeps a train image when skipping
    zero = make_zero_byte(crisismmd_image(tmp_path / "c", "train", 0))
    cut = truncate_image(crisismmd_image(tmp_path / "c", "train", 4))
    gone = crisismmd_image(tmp_path / "c", "test", 0)
    gone.unlink()
    out = tmp_path / "data" / "crisismmd"
    message = prepare_error(tmp_path, classes, cfg)
    full_list = bad_image_list_path(out)
    assert message.startswith(f"{out}: 3 bad image file(s) (1 zero-byte file, 1 corrupt or unreadable image, "
                              f"1 missing); full list in {full_list}.")
    for path in (zero, cut, gone):
        assert f"\n  {path}: " in message
    assert full_list == tmp_path / "data" / "crisismmd.bad_images.txt"  # beside the folder: a failed job's
    assert [line.split("\t")[0] for line in full_list.read_text().splitlines()] == [str(zero), str(cut), str(gone)]
    # Once the files are dealt with, a successful run removes the stale list.
    out, rows = prepare(tmp_path, classes, cfg, on_bad_image="skip")
    assert not full_list.exists() and len((out / "bad_images.txt").read_text().splitlines()) == 3


def test_every_manifest_row_records_its_content_hash(tmp_path):
    classes, cfg = make_dtd(tmp_path / "dtd")
    out, rows = prepare(tmp_path, classes, cfg)
    stored = read_manifest(out / "manifest.csv")
    assert stored == rows and len(stored) == 9
    for row in stored:
        assert row.sha256 == hashlib.sha256(Path(row.image_path).read_bytes()).hexdigest()


def test_symlink_within_a_split_is_kept_once_with_a_warning(tmp_path):
    classes, cfg = make_plantdoc(tmp_path / "pd")
    folder = tmp_path / "pd" / "train" / "Apple Scab Leaf"
    link = link_image(folder / "apple_0.jpg", folder / "same_leaf.jpg")
    out, rows = prepare(tmp_path, classes, cfg)
    assert len(rows) == 9 and str(link) not in [r.image_path for r in rows]
    assert (f"{link}: the same file (a symlink or a repeated entry) as {folder / 'apple_0.jpg'}, both in train; "
            f"kept once") in (out / "warnings.txt").read_text()


@pytest.mark.parametrize("how", ["symlink", "copy"])
def test_image_in_train_and_test_is_an_error_or_dropped_from_train(tmp_path, how):
    classes, cfg = make_plantdoc(tmp_path / "pd")
    train_image = tmp_path / "pd" / "train" / "Apple Scab Leaf" / "apple_0.jpg"
    leak = tmp_path / "pd" / "test" / "Apple Scab Leaf" / "leaked.jpg"
    link_image(train_image, leak) if how == "symlink" else shutil.copy(train_image, leak)
    sameness = "the same file (a symlink or a repeated entry)" if how == "symlink" else "the same content"
    message = prepare_error(tmp_path, classes, cfg)
    assert "1 image(s) in both train and test, which leaks the test set" in message
    assert "data.cross_split_duplicates: drop_from_train" in message
    assert f"\n  {train_image} (train) and {leak} (test): {sameness}" in message

    out, rows = prepare(tmp_path, classes, cfg, cross_split_duplicates="drop_from_train")
    paths = [r.image_path for r in rows]
    assert str(train_image) not in paths and str(leak) in paths
    assert "dropped from train" in (out / "warnings.txt").read_text()


def test_tab_inside_a_tweet_is_an_error_naming_tsv_and_line(tmp_path):
    classes, cfg = make_crisismmd(tmp_path / "c")
    line = put_tab_in_tweet(tmp_path / "c", "train", 2)
    tsv = crisismmd_tsv(tmp_path / "c", "train")
    with pytest.raises(InputError, match=rf"{re.escape(str(tsv))}:{line}: 1 row\(s\) without the header's 9 "
                                         rf"tab-separated fields, on line\(s\) {line} \(10 fields\); a tab inside"):
        run_source(cfg, tmp_path / "out", classes)


def test_crlf_tsvs_read_like_lf_ones(tmp_path):
    classes, cfg = make_crisismmd(tmp_path / "c")
    expected = run_source(cfg, tmp_path / "out", classes)
    for split in ("train", "dev", "test"):
        tsv = crisismmd_tsv(tmp_path / "c", split)
        tsv.write_bytes(tsv.read_bytes().replace(b"\n", b"\r\n"))
    assert run_source(cfg, tmp_path / "out", classes) == expected


def test_nested_split_folder_is_spotted(tmp_path):
    classes, cfg = make_crisismmd(tmp_path / "c")
    inner = nest_folder(tmp_path / "c" / "crisismmd_datasplit_all")
    with pytest.raises(InputError, match=rf"found '{re.escape(str(inner))}/task_humanitarian_text_img_train.tsv': "
                                         r"the folder is one level deeper; move the files of"):
        run_source(cfg, tmp_path / "out", classes)


def test_nested_list_folder_is_spotted(tmp_path):
    classes, cfg = make_dtd(tmp_path / "dtd")
    inner = nest_folder(tmp_path / "dtd" / "labels")
    with pytest.raises(InputError, match=rf"labels/train1.txt: split list missing \(found "
                                         rf"'{re.escape(str(inner))}/train1.txt': the folder is one level deeper"):
        run_source(cfg, tmp_path / "out", classes)


@pytest.mark.parametrize("make", [make_plantdoc, make_dermnet])
def test_nested_class_tree_split_folder_is_spotted(tmp_path, make):
    classes, cfg = make(tmp_path / "root")
    nest_folder(tmp_path / "root" / "test")
    with pytest.raises(InputError, match=r"root/test: holds only the folder 'test': the split folder is one "
                                         r"level deeper"):
        run_source(cfg, tmp_path / "out", classes)
