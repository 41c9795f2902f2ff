"""PlantDoc (github.com/pratikkayal/PlantDoc-Dataset): ``train/<class>/`` and ``test/<class>/``.

Folder names are the class strings (compared after ``normalise_label``) unless ``source.label_map``
renames them. The repository's train-only class (``Tomato two spotted spider mites leaf``: 2 train
images, no test folder) is returned like any other; the manifest validation warns about it.
"""
from __future__ import annotations

from pathlib import Path

from projection_probe.data.manifest import ManifestRow
from projection_probe.data.preparers.common import LabelResolver, class_folder_rows, read_label_map, source_root
from projection_probe.data.sources import register_source

KIND = "plantdoc"
TRAIN_FOLDER = "train"
TEST_FOLDER = "test"
LAYOUT = f"{TRAIN_FOLDER}/<class>/<image> and {TEST_FOLDER}/<class>/<image> (the PlantDoc-Dataset repository root)"


@register_source(KIND)
def plantdoc_source(source_cfg: dict, out_dir: Path, classes: list[str]) -> list[ManifestRow]:
    """Keys: ``root`` (required), ``label_map`` (optional, folder name -> class string)."""
    root = source_root(source_cfg, KIND, LAYOUT)
    resolver = LabelResolver(classes, read_label_map(source_cfg, classes))
    return class_folder_rows(root, {"train": TRAIN_FOLDER, "test": TEST_FOLDER}, resolver, KIND, LAYOUT)
