"""The dataset manifest: one row per image (``image_path,label,split,sha256``), validated before any
model sees it, so a bad dataset fails at the data stage with a message that names the file and the
fix. ``sha256`` is the image file's content hash, recorded so that later steps can tell that an image
changed after the dataset was prepared; a hand-written manifest may leave it out."""
from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from projection_probe.io import InputError, atomic_path

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ("image_path", "label", "split")  # required in every manifest
HASH_COLUMN = "sha256"  # written by prepare-dataset; optional when reading
SPLITS = ("train", "test")
BAD_IMAGE_POLICIES = ("fail", "skip")
CROSS_SPLIT_DUPLICATE_POLICIES = ("fail", "drop_from_train")
# How many bad files an error message lists; the full list goes to a file.
LISTED_IN_MESSAGE = 20


class ManifestRow(NamedTuple):
    image_path: str
    label: str
    split: str
    sha256: str = ""  # empty: not recorded (a hand-written manifest)


class SourceRows(list):
    """The rows a source lists (a list of ManifestRow), and for rows read from an index file (a TSV
    row, a split-list line) where they were listed, so that a missing image is reported there."""

    def __init__(self, rows: Iterable[ManifestRow] = (), listed_at: dict[str, str] | None = None):
        super().__init__(rows)
        self.listed_at: dict[str, str] = dict(listed_at or {})
        self.classes: list[str] | None = None  # set by a source that reads the class names from the dataset
        self.provenance: dict | None = None  # set by a source that knows where its data came from


@dataclass(frozen=True)
class BadImage:
    image_path: str
    reason: str  # starts with the kind: "missing", "zero-byte file", "corrupt or unreadable image", ...

    @property
    def kind(self) -> str:
        return self.reason.split(" (", 1)[0]


def write_manifest(path: str | Path, rows: Iterable[ManifestRow]) -> None:
    """Write ``rows`` as ``manifest.csv`` atomically (UTF-8, header ``image_path,label,split,sha256``)."""
    with atomic_path(path, suffix=".csv") as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(MANIFEST_COLUMNS + (HASH_COLUMN,))
            for row in rows:
                writer.writerow([row.image_path, row.label, row.split, row.sha256])


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
        rows.append(ManifestRow(*values, sha256=record.get(HASH_COLUMN) or ""))
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


def check_images(rows: list[ManifestRow],
                 listed_at: dict[str, str] | None = None) -> tuple[list[ManifestRow], list[BadImage]]:
    """Read every image once: hash its bytes and decode it as ``load_rgb`` would. Returns the good
    rows with ``sha256`` filled in, and every bad one (missing, empty, undecodable), so that all of
    them can be reported at once. ``listed_at`` (image_path -> "file:line", or a dataset's split and
    row) says where a bad image was listed."""
    from projection_probe.data.images import BadImageError, content_hash, decode_rgb, read_image_bytes

    listed_at = listed_at or {}
    kept: list[ManifestRow] = []
    bad: list[BadImage] = []
    for row in rows:
        try:
            data = read_image_bytes(row.image_path)
            decode_rgb(row.image_path, data)
        except BadImageError as e:
            reason = e.reason or str(e)
            if row.image_path in listed_at:
                where = f"listed in {listed_at[row.image_path]}"
                reason = f"{reason[:-1]}; {where})" if reason.endswith(")") else f"{reason} ({where})"
            bad.append(BadImage(row.image_path, reason))
            continue
        kept.append(row._replace(sha256=content_hash(data)))
    return kept, bad


def count_by_kind(bad: list[BadImage]) -> str:
    """``2 missing, 1 zero-byte file`` for a log line."""
    counts: dict[str, int] = {}
    for item in bad:
        counts[item.kind] = counts.get(item.kind, 0) + 1
    return ", ".join(f"{n} {kind}" for kind, n in counts.items())


def bad_images_error(bad: list[BadImage], out_dir: Path, full_list: Path) -> InputError:
    """The error for ``data.on_bad_image: fail``: the count, the first LISTED_IN_MESSAGE files with
    their reasons, where the full list is, and the key that skips them instead."""
    shown = "".join(f"\n  {item.image_path}: {item.reason}" for item in bad[:LISTED_IN_MESSAGE])
    more = f"\n  ... and {len(bad) - LISTED_IN_MESSAGE} more" if len(bad) > LISTED_IN_MESSAGE else ""
    return InputError(f"{out_dir}: {len(bad)} bad image file(s) ({count_by_kind(bad)}); full list in {full_list}. "
                      f"Re-download them, or set data.on_bad_image: skip (--on-bad-image skip) to drop them and "
                      f"list them in {out_dir / 'bad_images.txt'}:{shown}{more}")


def resolve_duplicates(rows: list[ManifestRow], policy: str, source: str | Path) -> tuple[list[ManifestRow], list[str]]:
    """Find images listed more than once: the same file (through a symlink or a repeated entry) or
    the same bytes under another name (``sha256``). Within a split the first is kept and the others
    dropped with a warning. An image in both train and test would leak the test set: with
    ``policy="fail"`` that is an error naming every such pair, with ``"drop_from_train"`` its train
    rows are dropped with a warning. Returns the kept rows and the warnings."""
    if policy not in CROSS_SPLIT_DUPLICATE_POLICIES:
        raise InputError(f"data.cross_split_duplicates: unknown value {policy!r}; use one of "
                         f"{list(CROSS_SPLIT_DUPLICATE_POLICIES)}")
    groups: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        groups.setdefault(row.sha256 or f"path:{Path(row.image_path).resolve()}", []).append(index)
    drop: set[int] = set()
    warnings: list[str] = []
    leaks: list[str] = []
    for indices in groups.values():
        if len(indices) < 2:
            continue
        test = [i for i in indices if rows[i].split == "test"]
        train = [i for i in indices if rows[i].split == "train"]
        if test and train:
            pairs = [f"{rows[i].image_path} (train) and {rows[test[0]].image_path} (test): "
                     f"{_sameness(rows[i], rows[test[0]])}" for i in train]
            if policy == "fail":
                leaks.extend(pairs)
                continue
            drop.update(train)
            warnings.extend(f"{pair}; dropped from train (data.cross_split_duplicates: drop_from_train)"
                            for pair in pairs)
            train = []
        for same_split in (train, test):
            first = same_split[0] if same_split else None
            for i in same_split[1:]:
                labels = (f"; labels differ ({rows[first].label!r} kept, {rows[i].label!r} dropped)"
                          if rows[i].label != rows[first].label else "")
                warnings.append(f"{rows[i].image_path}: {_sameness(rows[i], rows[first])} as "
                                f"{rows[first].image_path}, both in {rows[i].split}; kept once{labels}")
                drop.add(i)
    if leaks:
        shown = "".join(f"\n  {pair}" for pair in leaks[:LISTED_IN_MESSAGE])
        more = f"\n  ... and {len(leaks) - LISTED_IN_MESSAGE} more" if len(leaks) > LISTED_IN_MESSAGE else ""
        raise InputError(f"{source}: {len(leaks)} image(s) in both train and test, which leaks the test set; "
                         f"remove the copies from the download, or set data.cross_split_duplicates: "
                         f"drop_from_train (--cross-split-duplicates drop_from_train) to drop them from train:"
                         f"{shown}{more}")
    if warnings:
        log.warning("%s: %d duplicate image(s) dropped; see warnings.txt", source, len(drop))
    return [row for i, row in enumerate(rows) if i not in drop], warnings


def _sameness(row: ManifestRow, other: ManifestRow) -> str:
    same_file = Path(row.image_path).resolve() == Path(other.image_path).resolve()
    return "the same file (a symlink or a repeated entry)" if same_file else "the same content"


def write_bad_image_report(path: str | Path, bad: list[BadImage]) -> None:
    """``path<TAB>reason`` per bad image (an empty file when there is none)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for item in bad:
                reason = item.reason.replace("\n", " ").replace("\t", " ")
                f.write(f"{item.image_path}\t{reason}\n")


def verify_image_hashes(rows: list[ManifestRow], manifest: str | Path) -> None:
    """Refuse images whose bytes changed since ``prepare-dataset`` hashed them (rows without a
    ``sha256`` are not checked). Reads every image; names the first changed one and the count."""
    from projection_probe.data.images import BadImageError, content_hash, read_image_bytes

    changed: list[tuple[str, str]] = []
    for row in rows:
        if not row.sha256:
            continue
        try:
            actual = content_hash(read_image_bytes(row.image_path))
        except BadImageError as e:
            changed.append((row.image_path, e.reason or str(e)))
            continue
        if actual != row.sha256:
            changed.append((row.image_path,
                            f"sha256 {actual[:12]}... differs from the manifest's {row.sha256[:12]}..."))
    if changed:
        path, what = changed[0]
        others = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        raise InputError(f"{path}: image changed since {manifest} was prepared ({what}){others}; rerun "
                         f"prepare_dataset (snakemake --forcerun prepare_dataset) to check and hash the images again")
