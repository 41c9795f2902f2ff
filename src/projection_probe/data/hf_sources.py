"""Image-classification datasets read through 🤗 ``datasets``.

``kind: hf`` takes a Hub id, or a local dataset folder (parquet/arrow files, or a ``save_to_disk``
folder); ``kind: imagefolder`` a local ``<split>/<class>/<image>`` tree, read by ``datasets``'
imagefolder builder. Each image's original encoded bytes are written once, as a file under the
dataset's results folder, so that everything downstream (the image check, the sha256 in the manifest,
the vision cache) takes the same path as for every other source (docs/datasets.md says why).

The module imports ``datasets`` only inside the functions that load data: the workflow imports
``source_fingerprint`` when it builds the DAG.
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from pathlib import Path

from projection_probe.data.manifest import LISTED_IN_MESSAGE, ManifestRow, SourceRows
from projection_probe.data.preparers.common import LabelResolver, drop_labels, read_label_map
from projection_probe.data.sources import register_source
from projection_probe.io import InputError, atomic_dir

log = logging.getLogger(__name__)

HF_KIND = "hf"
IMAGEFOLDER_KIND = "imagefolder"
KINDS = (HF_KIND, IMAGEFOLDER_KIND)
SHARED_KEYS = {"path", "splits", "test_fraction", "split_seed", "label_map", "drop_labels", "train_per_class",
               "test_per_class"}
KEYS = {HF_KIND: SHARED_KEYS | {"name", "revision", "image_column", "label_column"},
        IMAGEFOLDER_KIND: SHARED_KEYS}
DEFAULT_IMAGE_COLUMN = "image"
DEFAULT_LABEL_COLUMN = "label"
# The test_fraction split must not move when the study seed changes, so it has its own seed.
DEFAULT_SPLIT_SEED = 0
ROLES = ("train", "test")
# Images copied per Arrow slice: a few MB in memory at a time, whatever the dataset's size.
IMAGES_PER_SLICE = 256
# What to do when a dataset cannot be reached, said once, in every such error.
UNREACHABLE_ADVICE = ("pre-download it on a machine with network (docs/datasets.md, 'Bring your own dataset') "
                      "or point source.path at a local copy")
# A raw label that no class, label_map entry or drop_labels entry accounts for.
UNKNOWN = object()
# The leading bytes of the image formats PIL reads, for the written file's suffix.
MAGIC_SUFFIXES = ((b"\x89PNG", ".png"), (b"\xff\xd8", ".jpg"), (b"GIF8", ".gif"), (b"BM", ".bmp"),
                  (b"II*\x00", ".tif"), (b"MM\x00*", ".tif"), (b"RIFF", ".webp"))


def source_fingerprint(source_cfg: dict) -> str | None:
    """The fingerprint of a local ``hf`` or ``imagefolder`` dataset (None for any other source): a
    change to it re-prepares the dataset. Computed from every file's relative path, size and
    modification time, as Snakemake judges its inputs, so that it is cheap at every workflow start."""
    if not isinstance(source_cfg, dict) or source_cfg.get("kind") not in KINDS or not source_cfg.get("path"):
        return None
    path = Path(str(source_cfg["path"]))
    return local_fingerprint(path) if path.exists() else None


def local_fingerprint(path: Path) -> str:
    """sha256 over (relative path, size, mtime) of every non-hidden file under ``path`` (or of ``path``)."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        name = file.name if file == path else file.relative_to(path).as_posix()
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


@register_source(HF_KIND, names_classes=True)
def hf_source(source_cfg: dict, out_dir: Path, classes: list[str] | None) -> SourceRows:
    """Keys: ``path`` (a Hub id or a local dataset folder), ``name`` and ``revision`` (Hub datasets),
    ``splits`` ({train: <split>, test: <split>}), ``test_fraction`` and ``split_seed`` (a seeded
    stratified test split of a one-split dataset), ``image_column``, ``label_column``, ``label_map``,
    ``drop_labels``, ``train_per_class`` and ``test_per_class`` (the first N of each class)."""
    return _dataset_rows(source_cfg, out_dir, classes, HF_KIND)


@register_source(IMAGEFOLDER_KIND, names_classes=True)
def imagefolder_source(source_cfg: dict, out_dir: Path, classes: list[str] | None) -> SourceRows:
    """The keys of ``hf`` less ``name``, ``revision`` and the column names: ``path`` is a local
    folder of ``<split>/<class>/<image>`` (or ``<class>/<image>``, one split)."""
    return _dataset_rows(source_cfg, out_dir, classes, IMAGEFOLDER_KIND)


def _dataset_rows(source_cfg: dict, out_dir: Path, classes: list[str] | None, kind: str) -> SourceRows:
    unknown = sorted(set(source_cfg) - KEYS[kind] - {"kind"})
    if unknown:
        raise InputError(f"source: unknown key(s) {unknown} for kind {kind!r}; allowed: {sorted(KEYS[kind])}")
    if not source_cfg.get("path"):
        raise InputError(f"source.path: missing for kind {kind!r}; set it to "
                         + ("a Hub dataset id or a local dataset folder" if kind == HF_KIND
                            else "a folder of <split>/<class>/<image>"))
    path = str(source_cfg["path"])
    fingerprint = source_fingerprint(source_cfg)
    splits = _load_splits(source_cfg, kind, path)
    plan = _split_plan(source_cfg, sorted(splits), path)
    image_column = source_cfg.get("image_column", DEFAULT_IMAGE_COLUMN)
    label_column = source_cfg.get("label_column", DEFAULT_LABEL_COLUMN)
    raw_labels, class_names = {}, None
    for split_name in dict.fromkeys(plan.values()):
        ds = splits[split_name]
        _check_columns(ds, split_name, path, image_column, label_column)
        raw_labels[split_name], names = _raw_labels(ds, label_column)
        class_names = class_names or names
    raw_values = {raw for values in raw_labels.values() for raw in values}
    classes, resolved = _label_resolution(source_cfg, classes, class_names, label_column, raw_values)
    labels = {name: [resolved[raw] for raw in values] for name, values in raw_labels.items()}
    _refuse_unknown_labels(raw_labels, labels, label_column, path)
    picks = _assign_roles(source_cfg, plan, labels, classes, path)
    rows = _write_images(splits, picks, image_column, classes, Path(out_dir), path)
    rows.classes = classes
    rows.provenance = {
        "kind": kind, "path": path, "name": source_cfg.get("name"), "revision": source_cfg.get("revision"),
        "resolved_revision": None if fingerprint else _hub_commit(path, source_cfg.get("revision")),
        "fingerprint": fingerprint, "splits": plan, "datasets_version": _datasets_version(),
    }
    return rows


def _load_splits(source_cfg: dict, kind: str, path: str) -> dict:
    """split name -> Dataset; every way the loading can fail becomes one InputError line."""
    import datasets

    local = Path(path)
    name, revision = source_cfg.get("name"), source_cfg.get("revision")
    if kind == IMAGEFOLDER_KIND:
        if not local.is_dir():
            raise InputError(f"source.path: folder {path!r} not found (source kind 'imagefolder'); point it at a "
                             f"folder laid out as <split>/<class>/<image>")
        load = lambda: datasets.load_dataset("imagefolder", data_dir=path)  # noqa: E731
    elif local.is_dir() and ((local / "dataset_dict.json").is_file() or (local / "state.json").is_file()):
        for key in ("name", "revision"):
            if source_cfg.get(key) is not None:
                raise InputError(f"source.{key}: {path!r} is a save_to_disk folder, which has no {key}s; remove "
                                 f"source.{key}")
        load = lambda: datasets.load_from_disk(path)  # noqa: E731
    else:
        if local.exists() and revision is not None:
            raise InputError(f"source.revision: {path!r} is a local folder, which has no revisions (its "
                             f"fingerprint is recorded instead); remove source.revision")
        if not local.exists() and revision is None:
            log.warning("source.path %r: no source.revision, so the Hub dataset can change underneath the results; "
                        "pin it to the commit recorded in provenance.json", path)
        load = lambda: datasets.load_dataset(path, name=name, revision=revision)  # noqa: E731
    try:
        loaded = load()
    except ValueError as e:
        text = str(e)
        if "BuilderConfig" in text or "Config name is missing" in text:
            what = f"{name!r} is not a config of" if name is not None else "required: there are several configs in"
            raise InputError(f"source.name: {what} dataset {path!r}; it has {_config_names(path, text)}") from None
        raise
    except (OSError, _hub_http_error()) as e:
        reason = " ".join(str(e).split())[:300] or type(e).__name__
        raise InputError(f"source.path: cannot load dataset {path!r} ({type(e).__name__}: {reason}); "
                         f"{UNREACHABLE_ADVICE}") from None
    if isinstance(loaded, datasets.Dataset):  # a save_to_disk of one split
        return {"train": loaded}
    return dict(loaded)


def _hub_http_error() -> type[BaseException]:
    from huggingface_hub.errors import HfHubHTTPError

    return HfHubHTTPError


def _config_names(path: str, fallback: str) -> str:
    import datasets

    try:
        return repr(datasets.get_dataset_config_names(path))
    except Exception:  # the names are a hint; datasets' own message still says what went wrong
        return f"({' '.join(fallback.split())[:300]})"


def _split_plan(source_cfg: dict, available: list[str], path: str) -> dict[str, str]:
    """role (train/test) -> the dataset's split name; with ``test_fraction`` only train."""
    splits = source_cfg.get("splits")
    fraction = source_cfg.get("test_fraction")
    if splits is not None and (not isinstance(splits, dict) or set(splits) - set(ROLES)
                               or not all(isinstance(v, str) for v in splits.values())):
        raise InputError(f"source.splits: {splits!r} must map train and test to split names of the dataset, "
                         f"e.g. {{train: train, test: validation}}")
    plan = dict(splits or {})
    if fraction is not None:
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
            raise InputError(f"source.test_fraction: {fraction!r} must be a number between 0 and 1")
        if "test" in plan:
            raise InputError("source.test_fraction: set together with source.splits.test; keep one: the dataset's "
                             "test split, or a fraction of its train split")
        plan.setdefault("train", available[0] if len(available) == 1 else "train")
    else:
        plan.setdefault("train", "train")
        plan.setdefault("test", "test")
    for role, split_name in plan.items():
        if split_name not in available:
            hint = ("; set source.test_fraction to split its one split" if len(available) == 1 and fraction is None
                    else "")
            raise InputError(f"source.splits.{role}: split {split_name!r} is not in dataset {path!r}; it has "
                             f"{available}{hint}")
    if plan.get("test") == plan["train"]:
        raise InputError(f"source.splits: train and test are both split {plan['train']!r}; name two splits, or "
                         f"set source.test_fraction")
    return plan


def _check_columns(ds, split_name: str, path: str, image_column: str, label_column: str) -> None:
    import datasets

    for key, column in (("image_column", image_column), ("label_column", label_column)):
        if column not in ds.column_names:
            raise InputError(f"source.{key}: column {column!r} is not in split {split_name!r} of dataset {path!r}; "
                             f"it has {ds.column_names}")
    if not isinstance(ds.features[image_column], datasets.Image):
        raise InputError(f"source.image_column: column {image_column!r} of dataset {path!r} is "
                         f"{ds.features[image_column]}, not an Image feature; name the column that holds the images")


def _raw_labels(ds, label_column: str) -> tuple[list[str | None], list[str] | None]:
    """Every row's raw label (None where it has none) and the ClassLabel names (None for strings)."""
    import datasets

    feature = ds.features[label_column]
    values = ds.with_format("arrow")[label_column].to_pylist()
    if isinstance(feature, datasets.ClassLabel):
        return [feature.names[v] if v is not None and v >= 0 else None for v in values], list(feature.names)
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        return values, None
    raise InputError(f"source.label_column: column {label_column!r} is {feature}; it must be a ClassLabel or hold "
                     f"strings")


def _label_resolution(source_cfg: dict, classes: list[str] | None, class_names: list[str] | None,
                      label_column: str, raw_values: set) -> tuple[list[str], dict]:
    """The class list, and each raw label's class: a class string, None (dropped) or UNKNOWN."""
    if classes is None:
        if class_names is None:
            raise InputError(f"classes: required for this dataset: source.label_column {label_column!r} holds "
                             f"strings, not a ClassLabel, so list the class names in the dataset's classes:")
        label_map = _raw_label_map(source_cfg)
        dropped = drop_labels(source_cfg, label_map)
        classes = list(dict.fromkeys(label_map.get(n, n) for n in class_names
                                     if n not in dropped and label_map.get(n, n) is not None))
    else:
        label_map = read_label_map(source_cfg, classes, allow_null=True)
        dropped = drop_labels(source_cfg, label_map)
    resolver = LabelResolver(classes, label_map)
    resolved: dict = {}
    for raw in raw_values:
        try:
            resolved[raw] = None if raw in dropped else UNKNOWN if raw is None else resolver.resolve(raw, "")
        except InputError:
            resolved[raw] = UNKNOWN
    return classes, resolved


def _raw_label_map(source_cfg: dict) -> dict[str, str | None]:
    label_map = source_cfg.get("label_map") or {}
    if not isinstance(label_map, dict) or not all(v is None or isinstance(v, str) for v in label_map.values()):
        raise InputError(f"source.label_map: {label_map!r} must map raw labels to class strings (or null to drop)")
    return {str(k): v for k, v in label_map.items()}


def _refuse_unknown_labels(raw_labels: dict, labels: dict, label_column: str, path: str) -> None:
    unknown = Counter(raw for name in raw_labels for raw, label in zip(raw_labels[name], labels[name])
                      if label is UNKNOWN)
    if not unknown:
        return
    shown = ", ".join(f"{value!r} ({n} rows)" for value, n in unknown.most_common(LISTED_IN_MESSAGE))
    more = f" and {len(unknown) - LISTED_IN_MESSAGE} more" if len(unknown) > LISTED_IN_MESSAGE else ""
    raise InputError(f"source.label_column {label_column!r} of dataset {path!r}: {len(unknown)} value(s) not in "
                     f"classes (after source.label_map): {shown}{more}; add them to classes, map them in "
                     f"source.label_map, or list them in source.drop_labels")


def _assign_roles(source_cfg: dict, plan: dict[str, str], labels: dict, classes: list[str],
                  path: str) -> dict[str, tuple[str, list[tuple[int, str]]]]:
    """role -> (split name, [(row index, class)]) in stored order, after test_fraction and per-class limits."""
    import numpy as np

    picks = {role: (split_name, [(i, label) for i, label in enumerate(labels[split_name]) if isinstance(label, str)])
             for role, split_name in plan.items()}
    fraction = source_cfg.get("test_fraction")
    if fraction is not None:
        split_name, kept = picks["train"]
        seed = source_cfg.get("split_seed", DEFAULT_SPLIT_SEED)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise InputError(f"source.split_seed: {seed!r} is not a non-negative integer")
        rng = np.random.default_rng(seed)
        test: set[int] = set()
        for c in classes:
            members = [i for i, label in kept if label == c]
            if len(members) >= 2:
                n_test = min(len(members) - 1, max(1, round(fraction * len(members))))
                test.update(int(i) for i in rng.permutation(members)[:n_test])
        picks = {"train": (split_name, [(i, c) for i, c in kept if i not in test]),
                 "test": (split_name, [(i, c) for i, c in kept if i in test])}
    for role in ROLES:
        key = f"{role}_per_class"
        if key not in source_cfg:
            continue
        limit = source_cfg[key]
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InputError(f"source.{key}: {limit!r} is not a positive integer")
        split_name, kept = picks[role]
        counts = Counter(c for _, c in kept)
        short = {c: counts[c] for c in classes if 0 < counts[c] < limit}
        if short:
            raise InputError(f"source.{key}: {limit} requested but dataset {path!r} has fewer {role} images of "
                             f"{short}; lower source.{key}")
        taken: Counter[str] = Counter()
        chosen = []
        for i, c in kept:
            if taken[c] < limit:
                taken[c] += 1
                chosen.append((i, c))
        picks[role] = (split_name, chosen)
    return picks


def _write_images(splits: dict, picks: dict, image_column: str, classes: list[str], out_dir: Path,
                  path: str) -> SourceRows:
    """Write each picked image's encoded bytes to ``images/<role>/<class index>_<n><suffix>`` (the
    demo sources' names). A row without bytes gets no file: the image check reports it as missing,
    with the split and row index it came from."""
    final_images = out_dir / "images"
    index_of = {c: i for i, c in enumerate(classes)}
    rows = SourceRows()
    with atomic_dir(final_images) as staging:
        for role in ROLES:
            split_name, chosen = picks[role]
            (staging / role).mkdir(parents=True)
            table = splits[split_name].select_columns([image_column]).with_format("arrow")
            counters: Counter[str] = Counter()
            for start in range(0, len(chosen), IMAGES_PER_SLICE):
                part = chosen[start:start + IMAGES_PER_SLICE]
                values = table.select([i for i, _ in part])[:].column(image_column).to_pylist()
                for (index, label), value in zip(part, values):
                    data = _image_bytes(value)
                    stem = f"{index_of[label]}_{counters[label]}"
                    counters[label] += 1
                    suffix = _suffix(data, value)
                    if data is not None:
                        (staging / role / f"{stem}{suffix}").write_bytes(data)
                    image_path = str(final_images / role / f"{stem}{suffix}")
                    rows.append(ManifestRow(image_path, label, role))
                    rows.listed_at[image_path] = f"{path} [split {split_name!r} row {index}]"
    return rows


def _image_bytes(value) -> bytes | None:
    """The encoded bytes of an Image value ({"bytes", "path"}), read from its file when it holds a path."""
    if not value:
        return None
    if value.get("bytes") is not None:
        return value["bytes"]
    file = value.get("path")
    return Path(file).read_bytes() if file and os.path.isfile(file) else None


def _suffix(data: bytes | None, value) -> str:
    for magic, suffix in MAGIC_SUFFIXES:
        if data and data.startswith(magic):
            return suffix
    original = Path((value or {}).get("path") or "").suffix.lower()
    return original or ".img"


def _hub_commit(path: str, revision: str | None) -> str | None:
    """The commit of a Hub dataset that ``datasets`` loaded, read from the Hub cache's refs."""
    from huggingface_hub import constants

    if revision and len(revision) == 40 and all(ch in "0123456789abcdef" for ch in revision):
        return revision
    ref = Path(constants.HF_HUB_CACHE) / f"datasets--{path.replace('/', '--')}" / "refs" / (revision or "main")
    return ref.read_text().strip() if ref.is_file() else None


def _datasets_version() -> str:
    import datasets

    return datasets.__version__
