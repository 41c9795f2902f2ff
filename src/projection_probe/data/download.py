"""Fetching the paper's datasets: public archives are downloaded (checksummed, atomic) and extracted;
datasets behind a login get an exact description of what to download and where to put it.

CLI (wired in by ``data/commands.py`` through ``register_download_commands``)::

    projection-probe download-dataset --dataset dtd --sha256 HEX_OR_EMPTY --out-dir DIR [--url URL]
    projection-probe manual-download-help --dataset dermnet [--root DIR]

``download-dataset`` keeps the archive beside ``DIR`` (``DIR.tar.gz`` / ``DIR.zip``) and extracts it
into ``DIR``. When the archive holds a single top folder (``dtd/``, ``PlantDoc-Dataset-master/``) its
contents go straight into ``DIR``, so ``DIR`` is what the config's ``source.root`` points to.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import re
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from projection_probe.io import InputError, atomic_dir, atomic_path

log = logging.getLogger(__name__)

DATASETS = ("plantdoc", "dtd", "dermnet", "crisismmd")
# Archives anyone can fetch. Their sha256 is a config value: it could not be computed when this was
# written (no network), so it starts as null and a download without one logs a warning.
PUBLIC_ARCHIVE_URLS = {
    "dtd": "https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz",
    "plantdoc": "https://github.com/pratikkayal/PlantDoc-Dataset/archive/refs/heads/master.zip",
}
DERMNET_PAGE = "https://www.kaggle.com/datasets/shubhamgoel27/dermnet"
CRISISMMD_PAGE = "https://crisisnlp.qcri.org/crisismmd"
CRISISMMD_DATA_URL = "https://crisisnlp.qcri.org/data/crisismmd/CrisisMMD_v2.0.tar.gz"
CRISISMMD_SPLITS_URL = "https://crisisnlp.qcri.org/data/crisismmd/crisismmd_datasplit_all.zip"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60
# Archive-tool litter that must not count as a second top folder.
IGNORED_TOP_ENTRIES = frozenset({"__MACOSX", ".DS_Store"})


def _normalise_sha256(sha256: str | None) -> str | None:
    if sha256 is None or str(sha256).strip() == "":
        return None
    value = str(sha256).strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise InputError(f"sha256: {sha256!r} is not a 64-character hex digest; give the archive's sha256 "
                         f"or leave it empty (null) to skip the check")
    return value


def download_archive(url: str, sha256: str | None, out_path: str | Path) -> str:
    """Stream ``url`` to ``out_path`` through a temporary file, checking its sha256; return the digest.

    ``sha256`` None or empty skips the check with a warning. A mismatch raises InputError naming the
    URL and both digests, and leaves nothing at ``out_path``."""
    from tqdm import tqdm

    expected = _normalise_sha256(sha256)
    out_path = Path(out_path)
    digest = hashlib.sha256()
    with atomic_path(out_path, suffix=".part") as tmp:
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(tmp, "wb") as f:
                total = response.headers.get("Content-Length")
                with tqdm(total=int(total) if total and total.isdigit() else None, unit="B", unit_scale=True,
                          desc=out_path.name, disable=None) as bar:
                    while chunk := response.read(CHUNK_BYTES):
                        f.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise InputError(f"{url}: download failed ({e}); check the URL and the network, or download the "
                             f"file by hand to {out_path}") from e
        actual = digest.hexdigest()
        if expected is None:
            log.warning("%s: no sha256 given, integrity not checked; its sha256 is %s (put it in the config)",
                        url, actual)
        elif actual != expected:
            raise InputError(f"{url}: checksum mismatch: expected sha256 {expected}, got {actual}; the download "
                             f"is corrupt or the file changed upstream (fix the sha256 in the config only if you "
                             f"trust the new file)")
    return actual


def extract_archive(archive: str | Path, out_dir: str | Path, strip_single_top_folder: bool = True) -> Path:
    """Extract a .tar.gz/.tgz/.tar or .zip ``archive`` into ``out_dir`` atomically (``out_dir`` is
    replaced whole, and appears only once extraction succeeded). With ``strip_single_top_folder`` an
    archive holding one top folder has that folder's contents placed directly in ``out_dir``."""
    archive, out_dir = Path(archive), Path(out_dir)
    if not archive.is_file():
        raise InputError(f"{archive}: archive not found; download it first")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.extract.", dir=out_dir.parent) as staging_name:
        staging = Path(staging_name)
        _extract_into(archive, staging)
        content = staging
        top = [p for p in staging.iterdir() if p.name not in IGNORED_TOP_ENTRIES]
        if strip_single_top_folder and len(top) == 1 and top[0].is_dir():
            content = top[0]
        with atomic_dir(out_dir) as tmp:
            for entry in content.iterdir():
                if entry.name not in IGNORED_TOP_ENTRIES:
                    shutil.move(str(entry), str(tmp / entry.name))
    return out_dir


def _extract_into(archive: Path, target: Path) -> None:
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for name in zf.namelist():
                    # zipfile already sanitises '..' and absolute names; reject them anyway so a
                    # hostile archive fails loudly instead of being silently rewritten.
                    if name.startswith(("/", "\\")) or ".." in Path(name).parts:
                        raise InputError(f"{archive}: member {name!r} escapes the output folder; refusing to "
                                         f"extract")
                zf.extractall(target)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                # The "data" filter refuses absolute paths, '..', device files and links out of target.
                tf.extractall(target, filter="data")
        else:
            raise InputError(f"{archive}: not a zip or tar archive (expected one of {list(ARCHIVE_SUFFIXES)}); "
                             f"delete it and download again")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
        raise InputError(f"{archive}: corrupt, truncated or unsafe archive ({e}); delete it and download again") from e


def archive_path_for(url: str, out_dir: str | Path) -> Path:
    """Where ``download-dataset`` keeps the archive: beside ``out_dir``, named after it, with the
    URL's archive suffix (``.archive`` when the URL has none; the content decides how to extract)."""
    out_dir = Path(out_dir)
    name = Path(urllib.parse.urlparse(url).path).name.lower()
    suffix = next((s for s in ARCHIVE_SUFFIXES if name.endswith(s)), ".archive")
    return out_dir.parent / f"{out_dir.name}{suffix}"


def download_dataset(dataset: str, url: str | None, sha256: str | None, out_dir: str | Path) -> Path:
    """Download ``dataset``'s archive (``url``, or its known public URL) and extract it into ``out_dir``.
    Datasets behind a login without a ``url`` raise InputError carrying the manual instructions."""
    _check_dataset(dataset)
    url = url or PUBLIC_ARCHIVE_URLS.get(dataset)
    if not url:
        raise InputError(manual_download_message(dataset, out_dir))
    archive = archive_path_for(url, out_dir)
    download_archive(url, sha256, archive)
    return extract_archive(archive, out_dir)


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise InputError(f"--dataset: unknown dataset {dataset!r}; use one of {list(DATASETS)}")


def manual_download_message(dataset: str, root: str | Path | None = None) -> str:
    """Exactly where to get ``dataset``'s files and where to put them. ``root`` is the folder the
    config's ``source.root`` points to (named as such when not given)."""
    _check_dataset(dataset)
    where = f"{root}" if root is not None else "the folder that the dataset's source.root (in the config) points to"
    if dataset == "dermnet":
        return (f"DermNet is on Kaggle, behind a login. Sign in at {DERMNET_PAGE} and download the dataset "
                f"(archive.zip; or run `kaggle datasets download -d shubhamgoel27/dermnet`). Unzip it into "
                f"{where} so that it holds train/<class>/<image> and test/<class>/<image>, 23 class folders "
                f"each, named like 'train/Acne and Rosacea Photos/'.")
    if dataset == "crisismmd":
        return (f"CrisisMMD v2.0 is distributed by CrisisNLP under terms you accept at {CRISISMMD_PAGE}. "
                f"Download CrisisMMD_v2.0.tar.gz ({CRISISMMD_DATA_URL}) and the official splits "
                f"crisismmd_datasplit_all.zip ({CRISISMMD_SPLITS_URL}). Extract the tarball's CrisisMMD_v2.0/ "
                f"folder as {where}, then unzip the splits inside it, so that it holds "
                f"data_image/<event>/<date>/<tweet_id>_<n>.jpg and "
                f"crisismmd_datasplit_all/task_humanitarian_text_img_{{train,dev,test}}.tsv.")
    url = PUBLIC_ARCHIVE_URLS[dataset]
    layout = ("images/<class>/<image>.jpg and labels/train1.txt, labels/test1.txt" if dataset == "dtd"
              else "train/<class>/<image> and test/<class>/<image>")
    return (f"{dataset} is public: run `projection-probe download-dataset --dataset {dataset} --out-dir "
            f"{root if root is not None else 'ROOT'}` (archive {url}), or download it by hand and extract it "
            f"into {where} so that it holds {layout}.")


def register_download_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``download-dataset`` and ``manual-download-help``."""
    p = subparsers.add_parser("download-dataset", help="download and extract a public dataset archive")
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--url", default="", help="archive URL (default: the dataset's known public URL)")
    p.add_argument("--sha256", default="", help="expected sha256 of the archive; empty skips the check")
    p.add_argument("--out-dir", required=True, help="folder to extract into (the config's source.root)")
    p.set_defaults(handler=_download_dataset_command)

    p = subparsers.add_parser("manual-download-help", help="print where to get a dataset behind a login")
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--root", default=None, help="the folder source.root points to, to name it in the message")
    p.set_defaults(handler=_manual_download_help_command)


def _download_dataset_command(args: argparse.Namespace) -> int:
    out_dir = download_dataset(args.dataset, args.url or None, args.sha256 or None, args.out_dir)
    log.info("%s extracted into %s", args.dataset, out_dir)
    return 0


def _manual_download_help_command(args: argparse.Namespace) -> int:
    # Exit code 2: a workflow step that needs manual data stops here, with the instructions as its error.
    print(manual_download_message(args.dataset, args.root), file=sys.stderr)
    return 2
