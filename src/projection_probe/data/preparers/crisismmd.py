"""CrisisMMD v2.0, humanitarian task, image labels (crisisnlp.qcri.org/crisismmd).

Layout under ``source.root`` (the ``CrisisMMD_v2.0/`` folder, with the split archive
``crisismmd_datasplit_all.zip`` unzipped inside it)::

    data_image/<event>/<date>/<tweet_id>_<n>.jpg
    crisismmd_datasplit_all/task_humanitarian_text_img_{train,dev,test}.tsv

The TSVs have the columns ``event_name, tweet_id, image_id, tweet_text, image, label, label_text,
label_image, label_text_image``; ``image`` is the image path relative to the CrisisMMD_v2.0 folder and
``label_image`` is the image's humanitarian label. One TSV row is one (tweet, image) pair.

The paper's 4-class, 10,461-image construction is not in any released code, so the mapping from raw
labels to classes is explicit config: every raw label must be in ``source.label_map`` (value: a
class string, or null to drop it) or in ``source.drop_labels``.
"""
from __future__ import annotations

import csv
import logging
from collections import Counter
from pathlib import Path

from projection_probe.data.manifest import LISTED_IN_MESSAGE, ManifestRow, SourceRows
from projection_probe.data.preparers.common import (
    LabelResolver,
    drop_labels,
    nested_file_hint,
    read_label_map,
    require_dir,
    source_root,
)
from projection_probe.data.sources import register_source
from projection_probe.io import InputError

log = logging.getLogger(__name__)

KIND = "crisismmd"
IMAGES_FOLDER = "data_image"
DEFAULT_SPLIT_FILE_PATTERN = "crisismmd_datasplit_all/task_humanitarian_text_img_{split}.tsv"
# Every column of the official humanitarian split TSVs, in file order.
TSV_COLUMNS = ("event_name", "tweet_id", "image_id", "tweet_text", "image", "label", "label_text",
               "label_image", "label_text_image")
IMAGE_COLUMN = "image"
DEFAULT_LABEL_COLUMN = "label_image"
OFFICIAL_SPLITS = ("train", "dev", "test")
DEFAULT_TRAIN_SPLITS = ("train",)
TEST_SPLIT = "test"

# The raw image labels of the humanitarian task and our default mapping onto the paper's Figure 3
# classes. Copy them into the config (source.label_map / source.drop_labels) to use them; the
# preparer itself never falls back to them, so the construction is always visible in the config.
RAW_HUMANITARIAN_LABELS = ("affected_individuals", "infrastructure_and_utility_damage",
                           "injured_or_dead_people", "missing_or_found_people", "not_humanitarian",
                           "other_relevant_information", "rescue_volunteering_or_donation_effort",
                           "vehicle_damage")
PAPER_FIGURE3_CLASSES = ("affected individuals", "infrastructure and utility damage",
                         "rescue volunteering or donation effort", "vehicle damage")
PAPER_FIGURE3_LABEL_MAP = {
    "affected_individuals": "affected individuals",
    # Ofli et al. (CrisisMMD's multimodal baseline) fold people-centred labels into affected individuals.
    "injured_or_dead_people": "affected individuals",
    "missing_or_found_people": "affected individuals",
    "infrastructure_and_utility_damage": "infrastructure and utility damage",
    "rescue_volunteering_or_donation_effort": "rescue volunteering or donation effort",
    "vehicle_damage": "vehicle damage",
}
PAPER_FIGURE3_DROP_LABELS = ("not_humanitarian", "other_relevant_information")

LAYOUT = (f"{IMAGES_FOLDER}/<event>/<date>/<image>.jpg and "
          f"{DEFAULT_SPLIT_FILE_PATTERN.format(split='{train,dev,test}')} (the CrisisMMD_v2.0 folder with "
          f"crisismmd_datasplit_all.zip unzipped inside it)")


def train_splits(source_cfg: dict) -> tuple[str, ...]:
    value = source_cfg.get("train_splits", list(DEFAULT_TRAIN_SPLITS))
    allowed = [s for s in OFFICIAL_SPLITS if s != TEST_SPLIT]
    if (not isinstance(value, (list, tuple)) or not value or len(set(value)) != len(value)
            or any(s not in allowed for s in value)):
        raise InputError(f"source.train_splits: {value!r} must be a non-empty list of distinct official "
                         f"splits from {allowed}, e.g. ['train'] or ['train', 'dev']")
    return tuple(value)


@register_source(KIND)
def crisismmd_source(source_cfg: dict, out_dir: Path, classes: list[str]) -> SourceRows:
    """Keys: ``root`` (required), ``label_map`` (required: raw label -> class string or null),
    ``drop_labels`` (default []), ``train_splits`` (default ["train"]), ``label_column`` (default
    "label_image"), ``split_file_pattern`` (default
    "crisismmd_datasplit_all/task_humanitarian_text_img_{split}.tsv", relative to root)."""
    root = source_root(source_cfg, KIND, LAYOUT)
    if not source_cfg.get("label_map"):
        raise InputError("source.label_map: required for source kind 'crisismmd' (raw label_image value -> "
                         "class string, or null to drop); see docs/datasets.md for the default mapping")
    label_map = read_label_map(source_cfg, classes, allow_null=True)
    for raw in drop_labels(source_cfg, label_map):
        label_map.setdefault(raw, None)
    resolver = LabelResolver(classes, label_map, strict=True)
    label_column = source_cfg.get("label_column", DEFAULT_LABEL_COLUMN)
    if label_column not in ("label", "label_text", "label_image", "label_text_image"):
        raise InputError(f"source.label_column: {label_column!r} is not a label column of the TSVs; use "
                         f"'label_image' (the image's label, as in the paper)")
    pattern = str(source_cfg.get("split_file_pattern", DEFAULT_SPLIT_FILE_PATTERN))
    if "{split}" not in pattern:
        raise InputError(f"source.split_file_pattern: {pattern!r} must contain '{{split}}'")
    require_dir(root / IMAGES_FOLDER, KIND, LAYOUT)

    rows = SourceRows()
    plan = [(official, "train") for official in train_splits(source_cfg)] + [(TEST_SPLIT, "test")]
    for official, split in plan:
        tsv = root / pattern.format(split=official)
        _add_rows_from_tsv(rows, tsv, root, split, label_column, resolver)
    return rows


def _add_rows_from_tsv(rows: SourceRows, tsv: Path, root: Path, split: str, label_column: str,
                       resolver: LabelResolver) -> None:
    """Append one row per kept TSV row; a listed image that is missing stays a row (with the line it
    came from) for ``prepare_dataset``'s image check to report."""
    if not tsv.is_file():
        raise InputError(f"{tsv}: split TSV missing{nested_file_hint(tsv)}; source.root must hold {LAYOUT}")
    dropped: Counter[str] = Counter()
    wrong_width: list[str] = []
    # Tweet texts contain quote characters, so quoting is off: a field ends only at a tab.
    with open(tsv, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = reader.fieldnames or []
        missing = [c for c in (IMAGE_COLUMN, label_column) if c not in header]
        if missing:
            raise InputError(f"{tsv}: missing column(s) {missing} (found {header}); expected the official "
                             f"CrisisMMD v2.0 columns {list(TSV_COLUMNS)}")
        for record in reader:
            where = f"{tsv}:{reader.line_num}"
            # A tab inside a tweet adds a field and shifts every later column: label_image would be
            # read from another column, so such a row is an error, never a guess.
            if None in record or None in record.values():
                fields = len(header) + len(record.get(None, [])) - sum(v is None for v in record.values())
                wrong_width.append(f"{reader.line_num} ({fields} fields)")
                continue
            image = (record.get(IMAGE_COLUMN) or "").strip()
            raw = (record.get(label_column) or "").strip()
            if not image or not raw:
                raise InputError(f"{where}: empty {IMAGE_COLUMN!r} or {label_column!r} value; re-download the "
                                 f"official split TSVs")
            label = _resolve(resolver, raw, tsv)
            if label is None:
                dropped[raw] += 1
                continue
            image_path = str(root / image)
            rows.append(ManifestRow(image_path, label, split))
            rows.listed_at[image_path] = where
    if wrong_width:
        shown = ", ".join(wrong_width[:LISTED_IN_MESSAGE])
        if len(wrong_width) > LISTED_IN_MESSAGE:
            shown += f" and {len(wrong_width) - LISTED_IN_MESSAGE} more"
        raise InputError(f"{tsv}:{wrong_width[0].split()[0]}: {len(wrong_width)} row(s) without the header's "
                         f"{len(header)} tab-separated fields, on line(s) {shown}; a tab inside a tweet text "
                         f"shifts the columns: replace it with a space, or re-download the official split TSVs")
    if dropped:
        log.info("%s: dropped %d row(s) by label: %s", tsv, sum(dropped.values()), dict(sorted(dropped.items())))


def _resolve(resolver: LabelResolver, raw: str, tsv: Path) -> str | None:
    try:
        return resolver.resolve(raw, where=str(tsv))
    except InputError:
        raise InputError(f"{tsv}: raw label {raw!r} is in neither source.label_map nor source.drop_labels; "
                         f"map it to a class string or list it in drop_labels") from None
