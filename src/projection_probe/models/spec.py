"""facade.json, the file that says what a model folder is. `FacadeSpec.to_json` writes it and
`FacadeSpec.from_json` reads it; nothing else does either.

A folder is a base model (a llava-hf checkpoint, `llava_hf`, a checkpoint of any supported model
family, `family_checkpoint` (models/registry.py), or separate `vision`, `projector` and
`language_model` parts) or a fine-tune over one (`base`: the base folder, relative to this one, and
the parts the setting changed). Paths are relative to the folder, except `llava_hf`. Imports no torch.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from projection_probe.io import InputError, read_json, write_json

FACADE_FILE = "facade.json"
FORMAT_VERSION = 1
# A base model built from parts names all three.
PARTS = ("vision", "projector", "language_model")


@dataclass(frozen=True, kw_only=True)
class FacadeSpec:
    format_version: int = FORMAT_VERSION
    base: str | None = None
    llava_hf: str | None = None
    family_checkpoint: str | None = None
    vision: dict | None = None
    projector: dict | None = None
    language_model: dict | None = None
    lora: dict | None = None
    setting: str | None = None
    template: str | None = None
    image_side: int | None = None  # a family checkpoint's image side, where it is a setting
    image_preprocessing: str | None = None
    training: dict | None = None  # a fine-tune's training options
    align: dict | None = None  # how an aligned base's projector was trained

    def as_dict(self) -> dict:
        """The keys that are set, in field order."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def with_entries(self, entries: dict) -> FacadeSpec:
        """This spec with `entries` added, one level deep: a projector's weights join its kind and sizes."""
        merged = {k: {**(getattr(self, k) or {}), **v} if isinstance(v, dict) else v for k, v in entries.items()}
        return dataclasses.replace(self, **merged)

    def to_json(self, model_dir: str | Path) -> None:
        write_json(Path(model_dir) / FACADE_FILE, self.as_dict())

    @classmethod
    def from_json(cls, model_dir: str | Path) -> FacadeSpec:
        """The folder's facade.json; one of another format version, with an unknown key or without the
        keys that say what the folder is, is refused naming the folder and the key."""
        spec_file = Path(model_dir) / FACADE_FILE
        if not spec_file.exists():
            raise InputError(f"{spec_file}: not found; is {model_dir} a finished model folder?")
        data = read_json(spec_file)
        if not isinstance(data, dict):
            raise InputError(f"{spec_file}: expected a JSON object, got {type(data).__name__}")
        if "format_version" not in data:
            raise InputError(f"{spec_file}: missing key 'format_version' (this version reads {FORMAT_VERSION})")
        if data["format_version"] != FORMAT_VERSION:
            raise InputError(f"{spec_file}: format_version {data['format_version']!r} is unknown; this version "
                             f"of projection-probe reads format_version {FORMAT_VERSION}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = [k for k in data if k not in known]
        if unknown:
            raise InputError(f"{spec_file}: unknown key {unknown[0]!r}; a facade.json has {sorted(known)}")
        if not data.get("base") and not data.get("llava_hf") and not data.get("family_checkpoint"):
            missing = [k for k in PARTS if not data.get(k)]
            if missing:
                raise InputError(f"{spec_file}: missing key {missing[0]!r}: a model folder names its 'base', a "
                                 f"'llava_hf' or 'family_checkpoint' checkpoint, or all of {list(PARTS)}")
        return cls(**data)
