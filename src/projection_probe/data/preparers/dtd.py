"""DTD, the Describable Textures Dataset (robots.ox.ac.uk/~vgg/data/dtd, ``dtd-r1.0.1.tar.gz``).

Layout: ``images/<class>/<class>_NNNN.jpg`` and the split lists ``labels/train{k}.txt`` and
``labels/test{k}.txt`` (k = 1..10), one image per line relative to ``images/``, e.g.
``banded/banded_0002.jpg``. The paper uses split 1 (1,880 train and 1,880 test images); ``val{k}`` is
unused. The class is the line's folder, which is the class string itself (``banded``) unless
``source.label_map`` renames it.
"""
from __future__ import annotations

from pathlib import Path

from projection_probe.data.manifest import ManifestRow, SourceRows
from projection_probe.data.preparers.common import (
    LabelResolver,
    nested_file_hint,
    read_label_map,
    require_dir,
    source_root,
)
from projection_probe.data.sources import register_source
from projection_probe.io import InputError

KIND = "dtd"
IMAGES_FOLDER = "images"
LABELS_FOLDER = "labels"
# Manifest split -> list file name pattern in labels/, formatted with the split index.
SPLIT_LIST_PATTERNS = {"train": "train{k}.txt", "test": "test{k}.txt"}
DEFAULT_SPLIT_INDEX = 1
SPLIT_INDICES = range(1, 11)  # DTD ships ten train/val/test splits
LAYOUT = (f"{IMAGES_FOLDER}/<class>/<image>.jpg and {LABELS_FOLDER}/train<k>.txt, {LABELS_FOLDER}/test<k>.txt "
          f"(the folder the tarball extracts to, 'dtd/')")


def split_index(source_cfg: dict) -> int:
    value = source_cfg.get("split_index", DEFAULT_SPLIT_INDEX)
    if isinstance(value, bool) or not isinstance(value, int) or value not in SPLIT_INDICES:
        raise InputError(f"source.split_index: {value!r} is not one of DTD's splits "
                         f"{SPLIT_INDICES.start}..{SPLIT_INDICES.stop - 1}; the paper uses 1")
    return value


@register_source(KIND)
def dtd_source(source_cfg: dict, out_dir: Path, classes: list[str]) -> SourceRows:
    """Keys: ``root`` (required), ``split_index`` (default 1), ``label_map`` (optional, folder -> class)."""
    root = source_root(source_cfg, KIND, LAYOUT)
    k = split_index(source_cfg)
    images_dir = require_dir(root / IMAGES_FOLDER, KIND, LAYOUT)
    labels_dir = require_dir(root / LABELS_FOLDER, KIND, LAYOUT)
    resolver = LabelResolver(classes, read_label_map(source_cfg, classes))
    rows = SourceRows()
    for split, pattern in SPLIT_LIST_PATTERNS.items():
        list_file = labels_dir / pattern.format(k=k)
        _add_rows_from_list(rows, list_file, images_dir, split, resolver)
    return rows


def _add_rows_from_list(rows: SourceRows, list_file: Path, images_dir: Path, split: str,
                        resolver: LabelResolver) -> None:
    """Append one row per line of ``list_file``; a listed file that is missing stays a row (with the
    line it came from) for ``prepare_dataset``'s image check to report."""
    if not list_file.is_file():
        raise InputError(f"{list_file}: split list missing{nested_file_hint(list_file)}; source.root must hold "
                         f"{LAYOUT} (or set source.split_index to a split that exists)")
    count = len(rows)
    for line_number, line in enumerate(list_file.read_text(encoding="utf-8").splitlines(), start=1):
        entry = line.strip()
        if not entry:
            continue
        parts = entry.split("/")
        where = f"{list_file}:{line_number}"
        if len(parts) != 2 or not all(parts):
            raise InputError(f"{where}: entry {entry!r} is not '<class>/<file>' like 'banded/banded_0002.jpg'; "
                             f"re-extract the official archive")
        image_path = str(images_dir / entry)
        rows.append(ManifestRow(image_path, resolver.resolve(parts[0], where=where), split))
        rows.listed_at[image_path] = where
    if len(rows) == count:
        raise InputError(f"{list_file}: split list is empty; re-extract the official archive")
