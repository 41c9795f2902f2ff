"""Downloads (through file:// URLs, no network), extraction and the manual-download messages."""
from __future__ import annotations

import argparse
import hashlib
import io
import logging
import tarfile
import zipfile
from pathlib import Path

import pytest

from projection_probe.data.download import (
    archive_path_for,
    download_archive,
    download_dataset,
    extract_archive,
    manual_download_message,
    register_download_commands,
)
from projection_probe.io import InputError


def _make_tar_gz(path: Path, top: str = "dtd") -> Path:
    """A tar.gz holding one top folder, as the DTD tarball does."""
    with tarfile.open(path, "w:gz") as tf:
        for name, data in ((f"{top}/labels/train1.txt", b"banded/banded_0001.jpg\n"),
                           (f"{top}/images/banded/banded_0001.jpg", b"not really a jpeg")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    register_download_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def test_download_archive_good_checksum(tmp_path):
    source = _make_tar_gz(tmp_path / "src.tar.gz")
    out = tmp_path / "dl" / "dtd.tar.gz"
    digest = download_archive(source.as_uri(), _sha256(source).upper(), out)
    assert digest == _sha256(source)
    assert out.read_bytes() == source.read_bytes()
    assert [p.name for p in out.parent.iterdir()] == ["dtd.tar.gz"]  # no temp file left


def test_download_archive_bad_checksum_leaves_nothing(tmp_path):
    source = _make_tar_gz(tmp_path / "src.tar.gz")
    out = tmp_path / "dl" / "dtd.tar.gz"
    wrong = "0" * 64
    with pytest.raises(InputError) as excinfo:
        download_archive(source.as_uri(), wrong, out)
    message = str(excinfo.value)
    assert source.as_uri() in message and wrong in message and _sha256(source) in message
    assert list(out.parent.iterdir()) == []


def test_download_archive_without_checksum_warns(tmp_path, caplog):
    source = _make_tar_gz(tmp_path / "src.tar.gz")
    with caplog.at_level(logging.WARNING):
        download_archive(source.as_uri(), None, tmp_path / "a.tar.gz")
    assert "no sha256 given" in caplog.text and _sha256(source) in caplog.text


def test_download_archive_bad_inputs(tmp_path):
    source = _make_tar_gz(tmp_path / "src.tar.gz")
    with pytest.raises(InputError, match="sha256: 'abc' is not a 64-character hex digest"):
        download_archive(source.as_uri(), "abc", tmp_path / "a.tar.gz")
    missing = (tmp_path / "missing.tar.gz").as_uri()
    with pytest.raises(InputError, match=rf"{missing}: download failed"):
        download_archive(missing, None, tmp_path / "a.tar.gz")
    assert not (tmp_path / "a.tar.gz").exists()


def test_extract_tar_gz_strips_single_top_folder_and_replaces_old_output(tmp_path):
    archive = _make_tar_gz(tmp_path / "dtd.tar.gz")
    out = tmp_path / "data" / "dtd"
    (out / "stale").mkdir(parents=True)
    extract_archive(archive, out)
    assert (out / "labels" / "train1.txt").read_text() == "banded/banded_0001.jpg\n"
    assert (out / "images" / "banded" / "banded_0001.jpg").is_file()
    assert not (out / "stale").exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["dtd"]  # staging folders removed
    extract_archive(archive, tmp_path / "kept", strip_single_top_folder=False)
    assert (tmp_path / "kept" / "dtd" / "labels" / "train1.txt").is_file()


def test_extract_zip_with_several_top_folders(tmp_path):
    archive = tmp_path / "archive.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("train/Acne and Rosacea Photos/a.jpg", b"x")
        zf.writestr("test/Acne and Rosacea Photos/b.jpg", b"y")
        zf.writestr("__MACOSX/._a.jpg", b"z")
    out = extract_archive(archive, tmp_path / "dermnet")
    assert sorted(p.name for p in out.iterdir()) == ["test", "train"]
    assert (out / "train" / "Acne and Rosacea Photos" / "a.jpg").read_bytes() == b"x"


def test_extract_rejects_corrupt_and_unsafe_archives(tmp_path):
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"this is not an archive")
    with pytest.raises(InputError, match=r"junk.tar.gz: not a zip or tar archive"):
        extract_archive(junk, tmp_path / "out")
    truncated = tmp_path / "trunc.tar.gz"
    truncated.write_bytes(_make_tar_gz(tmp_path / "full.tar.gz").read_bytes()[:40])
    with pytest.raises(InputError, match=r"trunc.tar.gz: (corrupt|not a zip or tar)"):
        extract_archive(truncated, tmp_path / "out")
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tf:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"!"))
    with pytest.raises(InputError, match=r"evil.tar: corrupt, truncated or unsafe"):
        extract_archive(evil, tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "out").exists()


def test_archive_path_for_keeps_the_url_suffix(tmp_path):
    assert archive_path_for("https://x/dtd-r1.0.1.tar.gz", tmp_path / "dtd") == tmp_path / "dtd.tar.gz"
    assert archive_path_for("https://x/archive/refs/heads/master.zip", tmp_path / "pd") == tmp_path / "pd.zip"
    assert archive_path_for("https://x/download?id=3", tmp_path / "y") == tmp_path / "y.archive"


def test_download_dataset_command_end_to_end(tmp_path):
    source = _make_tar_gz(tmp_path / "dtd-r1.0.1.tar.gz")
    out = tmp_path / "resources" / "dtd"
    args = _parser().parse_args(["download-dataset", "--dataset", "dtd", "--url", source.as_uri(),
                                 "--sha256", _sha256(source), "--out-dir", str(out)])
    assert args.handler(args) == 0
    assert (out / "labels" / "train1.txt").is_file()
    assert (tmp_path / "resources" / "dtd.tar.gz").is_file()


def test_login_datasets_need_manual_download(tmp_path):
    with pytest.raises(InputError, match=r"kaggle.com/datasets/shubhamgoel27/dermnet"):
        download_dataset("dermnet", None, None, tmp_path / "dermnet")
    with pytest.raises(InputError, match=r"--dataset: unknown dataset 'imagenet'"):
        manual_download_message("imagenet")


def test_manual_download_messages_name_the_folder_and_layout(tmp_path):
    dermnet = manual_download_message("dermnet", tmp_path / "dermnet")
    assert str(tmp_path / "dermnet") in dermnet and "train/<class>/<image> and test/<class>/<image>" in dermnet
    crisis = manual_download_message("crisismmd")
    assert "source.root" in crisis
    assert "crisismmd_datasplit_all/task_humanitarian_text_img_{train,dev,test}.tsv" in crisis
    assert "data_image/" in crisis and "CrisisMMD_v2.0.tar.gz" in crisis
    assert "dtd-r1.0.1.tar.gz" in manual_download_message("dtd")


def test_manual_download_help_exits_2_with_the_message(capsys):
    args = _parser().parse_args(["manual-download-help", "--dataset", "crisismmd", "--root", "data/crisismmd"])
    assert args.handler(args) == 2
    assert capsys.readouterr().err.strip() == manual_download_message("crisismmd", "data/crisismmd")
