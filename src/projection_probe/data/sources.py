"""Registry of dataset sources: a source kind turns a config's ``source:`` dict into manifest rows.

Sources register with ``@register_source("kind")``. The demo sources live in ``demo_sources``; the
paper's datasets in the optional package ``projection_probe.data.preparers``, imported on first lookup
so that its modules can register themselves without this module importing them eagerly.
"""
from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from pathlib import Path

from projection_probe.data.manifest import ManifestRow, SourceRows
from projection_probe.io import InputError

SourceFunction = Callable[[dict, Path, list[str]], list[ManifestRow]]

_SOURCES: dict[str, SourceFunction] = {}
_NAMING_CLASSES: set[str] = set()

log = logging.getLogger(__name__)

# Beside the manifest, for sources that report it: where the data came from.
PROVENANCE_FILE = "provenance.json"

# Modules whose import registers more kinds; a missing one is skipped (the real-dataset preparers
# are optional).
_PLUGIN_MODULES = ("projection_probe.data.demo_sources", "projection_probe.data.hf_sources",
                   "projection_probe.data.preparers")


def register_source(kind: str, names_classes: bool = False) -> Callable[[SourceFunction], SourceFunction]:
    """Decorator: register ``fn(source_cfg, out_dir, classes) -> list[ManifestRow]`` under ``kind``.
    A kind that ``names_classes`` may be given ``classes=None`` and then returns SourceRows whose
    ``classes`` it read from the dataset."""
    def decorate(fn: SourceFunction) -> SourceFunction:
        existing = _SOURCES.get(kind)
        if existing is not None and existing is not fn and (
                existing.__module__, existing.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(f"source kind {kind!r} is already registered by "
                             f"{existing.__module__}.{existing.__qualname__}")
        _SOURCES[kind] = fn
        if names_classes:
            _NAMING_CLASSES.add(kind)
        return fn
    return decorate


def _load_plugins() -> None:
    for name in _PLUGIN_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:  # a broken import inside the plugin is a real bug
                raise


def get_source(kind: str) -> SourceFunction:
    """The source function registered as ``kind``; unknown kinds raise InputError listing the known ones."""
    _load_plugins()
    try:
        return _SOURCES[kind]
    except KeyError:
        raise InputError(f"source.kind: unknown value {kind!r}; use one of {sorted(_SOURCES)}") from None


def available_sources() -> list[str]:
    _load_plugins()
    return sorted(_SOURCES)


def run_source(source_cfg: dict, out_dir: Path, classes: list[str] | None) -> SourceRows:
    """Dispatch ``source_cfg["kind"]`` and return its rows. Rows whose image is missing are returned
    too: ``prepare_dataset`` reports them with the other bad images. ``classes`` may be None only for
    a kind that reads the class names from the dataset."""
    if not isinstance(source_cfg, dict) or "kind" not in source_cfg:
        raise InputError(f"source: {source_cfg!r} needs a 'kind' key naming one of {available_sources()}")
    source = get_source(source_cfg["kind"])
    if classes is None and source_cfg["kind"] not in _NAMING_CLASSES:
        raise InputError(f"classes: required for source kind {source_cfg['kind']!r}; list the class names")
    rows = source(source_cfg, Path(out_dir), None if classes is None else list(classes))
    return rows if isinstance(rows, SourceRows) else SourceRows(rows)


def check_class_list(classes, where: str = "--classes-json") -> list[str]:
    """The pinned class list must be unique non-empty strings that fit inside the prompt's quotes."""
    if not isinstance(classes, list) or not classes:
        raise InputError(f"{where}: expected a non-empty JSON list of class names, got {classes!r}")
    for c in classes:
        if not isinstance(c, str) or not c.strip():
            raise InputError(f"{where}: class {c!r} is not a non-empty string")
        if '"' in c or "\n" in c or c != c.strip():
            raise InputError(f"{where}: class {c!r} contains a double quote, a newline or surrounding spaces, "
                             f"which would corrupt the prompt or the answer; rename it in the config")
    repeated = sorted({c for c in classes if classes.count(c) > 1})
    if repeated:
        raise InputError(f"{where}: class(es) {repeated} listed more than once; list each class once")
    return list(classes)


def bad_image_list_path(out_dir: Path) -> Path:
    """Where a failed ``prepare-dataset`` lists every bad image: beside the output folder, because a
    failed job's outputs (``bad_images.txt`` among them) are deleted by Snakemake."""
    return out_dir.parent / f"{out_dir.name}.bad_images.txt"


def prepare_dataset(dataset: str, source_cfg: dict, classes: list[str] | None, task: str, on_bad_image: str,
                    allow_train_only_classes: bool, out_dir: str | Path,
                    cross_split_duplicates: str = "fail", source_fingerprint: str | None = None) -> list[ManifestRow]:
    """Run the source, check and hash every image, drop duplicates, validate the rows and write
    ``manifest.csv``, ``classes.json``, ``bad_images.txt`` and ``warnings.txt`` into ``out_dir``,
    and ``provenance.json`` for a source that reports where its data came from (a Hub commit, a local
    dataset's fingerprint). ``classes`` None: the source names them (a ClassLabel feature).
    ``source_fingerprint``: the local dataset's fingerprint the workflow planned with; data that
    changed since then is refused, so that provenance.json records what the workflow saw.

    Every bad image (missing, empty, undecodable) is found before anything fails: with
    ``on_bad_image="fail"`` the error lists them and the full list goes to ``bad_image_list_path``;
    with ``"skip"`` they are dropped, listed in ``bad_images.txt`` and counted in ``warnings.txt``.

    The four files are staged in a temporary folder and moved in only after everything passed,
    ``manifest.csv`` last, and an older ``manifest.csv`` is removed first: a failed run leaves no
    manifest, so nothing downstream mistakes a half-built dataset for a finished one. Messages name
    the final paths, never the staging folder.
    """
    import os
    import shutil
    import tempfile

    from projection_probe.data.manifest import (
        BAD_IMAGE_POLICIES,
        bad_images_error,
        check_images,
        count_by_kind,
        resolve_duplicates,
        validate_manifest,
        write_bad_image_report,
        write_manifest,
    )
    from projection_probe.io import write_json, write_text

    if classes is not None:
        classes = check_class_list(classes)
    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise InputError(f"data.on_bad_image: unknown value {on_bad_image!r}; use one of {list(BAD_IMAGE_POLICIES)}")
    root = source_cfg.get("root") if isinstance(source_cfg, dict) else None
    if root is not None and not Path(root).exists():
        # A missing download is the commonest first-run error: say where the files come from.
        from projection_probe.data.download import DATASETS as DOWNLOADABLE
        from projection_probe.data.download import manual_download_message

        if source_cfg.get("kind") in DOWNLOADABLE:
            raise InputError(f"datasets.{dataset}.source.root = {root}: folder not found.\n"
                             + manual_download_message(source_cfg["kind"], root))
        raise InputError(f"datasets.{dataset}.source.root = {root}: folder not found")
    if not isinstance(task, str) or not task.strip():
        raise InputError(f"--task: empty for dataset {dataset!r}; give the phrase completing "
                         f"'categories relating to ...'")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / "manifest.csv"
    manifest_path.unlink(missing_ok=True)
    full_bad_list = bad_image_list_path(out_dir)
    full_bad_list.unlink(missing_ok=True)
    where = f"{manifest_path} (dataset {dataset!r}, source kind {source_cfg.get('kind')!r})"
    staging = Path(tempfile.mkdtemp(prefix=".prepare.", suffix=".tmp", dir=out_dir))
    try:
        listed = run_source(source_cfg, out_dir, classes)
        if classes is None:
            classes = check_class_list(listed.classes, f"datasets.{dataset}.classes (read from the source)")
        provenance = listed.provenance
        if source_fingerprint and provenance and provenance.get("fingerprint") != source_fingerprint:
            raise InputError(f"datasets.{dataset}.source.path: the files changed after the workflow started "
                             f"(fingerprint {provenance.get('fingerprint')} is not the planned {source_fingerprint}); "
                             f"run the workflow again")
        rows, bad = check_images(listed, listed.listed_at)
        warnings: list[str] = []
        if bad and on_bad_image == "fail":
            write_bad_image_report(full_bad_list, bad)
            raise bad_images_error(bad, out_dir, full_bad_list)
        if bad:
            message = (f"skipped {len(bad)} bad image(s) ({count_by_kind(bad)}) because data.on_bad_image is "
                       f"skip; they are listed in {out_dir / 'bad_images.txt'}")
            log.warning("%s: %s", where, message)
            warnings.append(message)
        rows, duplicate_warnings = resolve_duplicates(rows, cross_split_duplicates, where)
        warnings += duplicate_warnings
        warnings += validate_manifest(rows, classes, where, allow_train_only_classes)
        write_bad_image_report(staging / "bad_images.txt", bad)
        write_json(staging / "classes.json", {"task": task, "classes": classes})
        write_text(staging / "warnings.txt", "".join(f"{w}\n" for w in warnings))
        write_manifest(staging / "manifest.csv", rows)
        names = ["classes.json", "bad_images.txt", "warnings.txt", "manifest.csv"]
        (out_dir / PROVENANCE_FILE).unlink(missing_ok=True)
        if provenance:
            write_json(staging / PROVENANCE_FILE, provenance)
            names.insert(0, PROVENANCE_FILE)
        for name in names:
            os.replace(staging / name, out_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return rows
