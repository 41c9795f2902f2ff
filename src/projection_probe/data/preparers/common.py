"""Helpers shared by the paper-dataset preparers: reading ``source:`` keys, mapping raw folder or
annotation labels to the pinned class strings, and listing images in ``<split>/<class>/`` trees.

Config error messages name keys as ``source.<key>``, the dataset's ``source:`` block in the config.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

from projection_probe.data.manifest import ManifestRow
from projection_probe.io import InputError

log = logging.getLogger(__name__)

# Suffixes of files treated as images when a class folder is listed; anything else (README, Thumbs.db,
# .DS_Store) is skipped with a warning, so a stray file never becomes a manifest row.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".jfif"})


def source_root(source_cfg: dict, kind: str, layout_hint: str) -> Path:
    """``source.root`` as a Path (kept relative when relative, so manifest paths stay relative to the
    working directory); missing key or missing folder raises InputError showing ``layout_hint``."""
    if not isinstance(source_cfg, dict) or not source_cfg.get("root"):
        raise InputError(f"source.root: missing for source kind {kind!r}; set it to the folder that holds "
                         f"the official download, laid out as {layout_hint}")
    root = Path(str(source_cfg["root"]))
    if not root.is_dir():
        raise InputError(f"source.root: folder {str(root)!r} does not exist (source kind {kind!r}); download "
                         f"the dataset there (see docs/datasets.md), laid out as {layout_hint}")
    return root


def require_dir(path: Path, kind: str, layout_hint: str) -> Path:
    """Raise InputError naming ``path`` when it is not a folder, with the expected layout."""
    if not path.is_dir():
        nested = _nested_candidate(path)
        extra = f" (found {str(nested)!r}: point source.root one level deeper)" if nested else ""
        raise InputError(f"{path}: folder missing for source kind {kind!r}{extra}; source.root must hold "
                         f"{layout_hint}")
    return path


def _nested_candidate(path: Path) -> Path | None:
    """An archive often extracts into one extra top folder (``dtd/``, ``PlantDoc-Dataset-master/``,
    ``crisismmd_datasplit_all/crisismmd_datasplit_all/``); find ``<parent>/<child>/<name>`` so the error
    can say where the data really is."""
    root = path.parent
    if not root.is_dir():
        return None
    for child in sorted(root.iterdir()):
        candidate = child / path.name
        if child.is_dir() and candidate.exists():
            return candidate
    return None


def nested_file_hint(path: Path) -> str:
    """For a missing index file (split TSV, split list) that sits one folder deeper, as when a zip of
    ``x/`` is unzipped into ``x/``: `` (found '<x>/<x>/<name>': the folder is one level deeper; ...)``.
    Otherwise an empty string."""
    nested = _nested_candidate(path)
    if nested is None:
        return ""
    return (f" (found {str(nested)!r}: the folder is one level deeper; move the files of {str(nested.parent)!r} "
            f"up into {str(path.parent)!r})")


def nested_split_folder(split_dir: Path) -> Path | None:
    """``train/train/<class>/``: a split folder unzipped into a folder of its own name."""
    inner = [p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if len(inner) == 1 and normalise_label(inner[0].name) == normalise_label(split_dir.name):
        return inner[0]
    return None


def normalise_label(text: str) -> str:
    """The identity mapping's comparison key: case-folded, ``_`` and ``-`` read as spaces, runs of
    whitespace collapsed. ``Apple_Scab_Leaf`` and ``apple scab leaf`` therefore name the same class."""
    return re.sub(r"\s+", " ", re.sub(r"[_\-]", " ", text)).strip().casefold()


def read_label_map(source_cfg: dict, classes: list[str], *, allow_null: bool = False) -> dict[str, str | None]:
    """``source.label_map`` (raw label -> class string) checked against the pinned classes.

    Values must be class strings from the pinned list; ``null`` values mean "drop" and are allowed
    only where ``allow_null`` (CrisisMMD)."""
    label_map = source_cfg.get("label_map")
    if label_map is None:
        return {}
    if not isinstance(label_map, dict):
        raise InputError(f"source.label_map: expected a mapping raw label -> class string, got "
                         f"{type(label_map).__name__}")
    pinned = set(classes)
    out: dict[str, str | None] = {}
    for raw, target in label_map.items():
        if target is None and allow_null:
            out[str(raw)] = None
            continue
        if not isinstance(target, str) or target not in pinned:
            raise InputError(f"source.label_map[{raw!r}]: value {target!r} is not in the pinned class list "
                             f"{classes}; map it to one of those strings"
                             + (" or to null to drop it" if allow_null else ""))
        out[str(raw)] = target
    return out


def drop_labels(source_cfg: dict, label_map: dict[str, str | None]) -> set[str]:
    """``source.drop_labels``: raw labels whose rows are left out; none may also map to a class."""
    value = source_cfg.get("drop_labels", [])
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise InputError(f"source.drop_labels: {value!r} must be a list of raw label strings")
    both = sorted(v for v in value if label_map.get(v) is not None)
    if both:
        raise InputError(f"source.drop_labels: {both} also map to a class in source.label_map; keep each raw "
                         f"label in only one of them")
    return set(value)


class LabelResolver:
    """Maps a raw label (a folder name or an annotation value) to a pinned class string.

    ``label_map`` wins; otherwise, unless ``strict``, the raw label is matched to the one class with
    the same ``normalise_label`` key. No match raises InputError naming ``where`` and the raw label."""

    def __init__(self, classes: list[str], label_map: dict[str, str | None], *, strict: bool = False):
        self.label_map = label_map
        self.strict = strict
        by_key: dict[str, list[str]] = {}
        for c in classes:
            by_key.setdefault(normalise_label(c), []).append(c)
        self._by_key = by_key

    def resolve(self, raw: str, where: str) -> str | None:
        if raw in self.label_map:
            return self.label_map[raw]
        if not self.strict:
            matches = self._by_key.get(normalise_label(raw), [])
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise InputError(f"{where}: label {raw!r} matches several classes {matches} after "
                                 f"normalisation; add it to source.label_map in the config")
        raise InputError(f"{where}: label {raw!r} has no class in the pinned class list; add "
                         f"{raw!r}: <class string> to source.label_map in the config")


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively), sorted; hidden entries are ignored and other files
    are skipped with one warning per folder. A broken symlink with an image suffix is listed, so that
    the image check reports it as missing instead of it vanishing."""
    images: list[Path] = []
    skipped: list[Path] = []
    for path in sorted(folder.rglob("*")):
        if any(part.startswith(".") for part in path.relative_to(folder).parts) or path.is_dir():
            continue
        (images if path.suffix.lower() in IMAGE_SUFFIXES else skipped).append(path)
    if skipped:
        log.warning("%s: skipped %d non-image file(s), e.g. %s", folder, len(skipped), skipped[0].name)
    return images


def class_folder_rows(root: Path, split_folders: dict[str, str], resolver: LabelResolver, kind: str,
                      layout_hint: str) -> list[ManifestRow]:
    """Rows for a ``<split folder>/<class folder>/<image>`` tree. ``split_folders`` maps the manifest
    split (``train``/``test``) to its folder name under ``root``. Every class folder must map to a
    class; a class folder present in train but not in test is logged (PlantDoc has one)."""
    rows: list[ManifestRow] = []
    classes_by_split: dict[str, set[str]] = {}
    for split, folder_name in split_folders.items():
        split_dir = require_dir(root / folder_name, kind, layout_hint)
        nested = nested_split_folder(split_dir)
        if nested is not None:
            raise InputError(f"{split_dir}: holds only the folder {nested.name!r}: the split folder is one level "
                             f"deeper; move the class folders of {str(nested)!r} up into {str(split_dir)!r} "
                             f"(source.root must hold {layout_hint})")
        found: set[str] = set()
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            label = resolver.resolve(class_dir.name, where=str(class_dir))
            images = list_images(class_dir)
            if not images:
                log.warning("%s: class folder has no images", class_dir)
                continue
            found.add(label)
            rows.extend(ManifestRow(str(path), label, split) for path in images)
        if not found:
            raise InputError(f"{split_dir}: no class folders with images; expected {layout_hint}")
        classes_by_split[split] = found
    if "train" in classes_by_split and "test" in classes_by_split:
        train_only = sorted(classes_by_split["train"] - classes_by_split["test"])
        if train_only:
            log.warning("%s: class(es) with train images but no test folder: %s (kept in the class list)",
                        root, train_only)
    return rows
