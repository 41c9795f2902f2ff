"""The dataset manifest: one row per image (``image_path,label,split``), validated before any model
sees it, so a bad dataset fails at the data stage with a message that names the file and the fix."""
from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, NamedTuple

from projection_probe.io import InputError, atomic_path

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ("image_path", "label", "split")
SPLITS = ("train", "test")
BAD_IMAGE_POLICIES = ("fail", "skip")


class ManifestRow(NamedTuple):
    image_path: str
    label: str
    split: str


@dataclass(frozen=True)
class BadImage:
    image_path: str
    reason: str


def write_manifest(path: str | Path, rows: Iterable[ManifestRow]) -> None:
    """Write ``rows`` as ``manifest.csv`` atomically (UTF-8, header ``image_path,label,split``)."""
    with atomic_path(path, suffix=".csv") as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(MANIFEST_COLUMNS)
            for row in rows:
                writer.writerow([row.image_path, row.label, row.split])


def read_manifest(path: str | Path) -> list[ManifestRow]:
    """Read a manifest without checking classes (see ``validate_manifest``). Decoding is explicit so
    that a non-UTF-8 byte is reported with its line number instead of a bare UnicodeDecodeError."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError as e:
        raise InputError(f"{path}: manifest not found; run the prepare-dataset step first") from e
    text = _decode_utf8(path, raw)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    missing = [c for c in MANIFEST_COLUMNS if c not in header]
    if missing:
        raise InputError(f"{path}: missing column(s) {missing} (found {header}); the header must be "
                         f"{','.join(MANIFEST_COLUMNS)}")
    rows = []
    for line_number, record in enumerate(reader, start=2):
        values = [record.get(c) for c in MANIFEST_COLUMNS]
        if any(v is None or v == "" for v in values):
            raise InputError(f"{path}:{line_number}: empty or missing value in {dict(zip(MANIFEST_COLUMNS, values))}; "
                             f"every row needs image_path, label and split")
        rows.append(ManifestRow(*values))
    return rows


def _decode_utf8(path: Path, raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line_number = raw.count(b"\n", 0, e.start) + 1
        raise InputError(f"{path}:{line_number}: not UTF-8 (byte {raw[e.start:e.start + 1]!r} at offset "
                         f"{e.start}); re-save the file as UTF-8") from e
    return text.removeprefix("\ufeff")  # a BOM from spreadsheet exports is harmless


def validate_manifest(rows: list[ManifestRow], classes: list[str], source: str | Path,
                      allow_train_only_classes: bool = True) -> list[str]:
    """Check ``rows`` against the pinned ``classes``; raise InputError naming ``source`` on the first
    problem and return a list of warnings otherwise.

    A class seen in train but not in test is a warning when ``allow_train_only_classes`` (PlantDoc's
    real layout has one) and an error otherwise. A class in test but absent from train is always an
    error: no training-based method could predict it.
    """
    if not classes:
        raise InputError(f"{source}: the pinned class list is empty; list the classes in the config")
    duplicate_classes = sorted({c for c in classes if classes.count(c) > 1})
    if duplicate_classes:
        raise InputError(f"{source}: class list repeats {duplicate_classes}; each class must appear once")
    warnings: list[str] = []
    pinned = set(classes)
    seen_paths: dict[str, int] = {}
    labels_by_split: dict[str, set[str]] = {s: set() for s in SPLITS}
    counts_by_split = {s: 0 for s in SPLITS}
    for index, row in enumerate(rows):
        line_number = index + 2  # header is line 1
        if row.split not in SPLITS:
            raise InputError(f"{source}:{line_number}: split {row.split!r} is not one of {list(SPLITS)}; "
                             f"fix the dataset preparer")
        if row.label not in pinned:
            raise InputError(f"{source}:{line_number}: label {row.label!r} has no entry in the pinned class "
                             f"list; add it to the dataset's classes (or its label mapping) in the config")
        if row.image_path in seen_paths:
            raise InputError(f"{source}:{line_number}: duplicate image_path {row.image_path!r} (first on line "
                             f"{seen_paths[row.image_path]}); each image may appear once")
        seen_paths[row.image_path] = line_number
        labels_by_split[row.split].add(row.label)
        counts_by_split[row.split] += 1
    for split in SPLITS:
        if counts_by_split[split] == 0:
            raise InputError(f"{source}: split {split!r} has no images; the dataset needs both train and test rows")
    test_only = sorted(labels_by_split["test"] - labels_by_split["train"], key=classes.index)
    if test_only:
        raise InputError(f"{source}: test class(es) {test_only} have no train images; remove them from the "
                         f"class list or fix the source")
    train_only = sorted(labels_by_split["train"] - labels_by_split["test"], key=classes.index)
    if train_only:
        if not allow_train_only_classes:
            raise InputError(f"{source}: train class(es) {train_only} have no test images; set "
                             f"allow_train_only_classes: true (as for PlantDoc) or remove them from the class list")
        warnings.append(f"class(es) present in train but absent from test: {train_only}")
    unused = [c for c in classes if c not in labels_by_split["train"] and c not in labels_by_split["test"]]
    if unused:
        warnings.append(f"pinned class(es) with no images in either split: {unused}")
    for message in warnings:
        log.warning("%s: %s", source, message)
    return warnings


def check_images(rows: list[ManifestRow], on_bad_image: str = "fail",
                 report_path: str | Path | None = None) -> list[ManifestRow]:
    """Open every image with ``load_rgb``. With ``on_bad_image="fail"`` the first unreadable image
    raises InputError naming it; with ``"skip"`` bad images are dropped and listed (``path<TAB>reason``)
    in ``report_path``, which is written (possibly empty) whenever given."""
    from projection_probe.data.images import load_rgb

    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise InputError(f"on_bad_image: unknown value {on_bad_image!r}; use one of {list(BAD_IMAGE_POLICIES)}")
    kept: list[ManifestRow] = []
    bad: list[BadImage] = []
    for row in rows:
        try:
            load_rgb(row.image_path)
        except InputError as e:
            if on_bad_image == "fail":
                raise
            bad.append(BadImage(row.image_path, str(e)))
            continue
        kept.append(row)
    if bad:
        log.warning("skipped %d unreadable image(s); see %s", len(bad), report_path)
    if report_path is not None:
        write_bad_image_report(report_path, bad)
    return kept


def write_bad_image_report(path: str | Path, bad: list[BadImage]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for item in bad:
                reason = item.reason.replace("\n", " ").replace("\t", " ")
                f.write(f"{item.image_path}\t{reason}\n")
