"""Atomic writers: every output is written to a temporary sibling and renamed into place.

A killed job therefore never leaves a file at its final path that looks complete.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class InputError(Exception):
    """Bad user input (file, key or value). The CLI prints the message without a stack trace."""


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success rename it onto ``final``."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=suffix + ".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``final``; on success it replaces ``final`` whole."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise InputError(f"{path}: file not found") from e
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON ({e})") from e
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 ({e}); re-save the file as UTF-8") from e


def write_csv(path: str | os.PathLike, frame) -> None:
    """Write a pandas DataFrame atomically."""
    with atomic_path(path, suffix=".csv") as tmp:
        frame.to_csv(tmp, index=False)


def write_jsonl(path: str | os.PathLike, records) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    out = []
    with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(f"{path}:{i}: not UTF-8 ({e}); re-save the file as UTF-8") from e
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise InputError(f"{path}:{i}: not valid JSON ({e})") from e
    return out


def save_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict | None = None) -> None:
    from safetensors.torch import save_file

    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def load_safetensors(path: str | os.PathLike, keys: list[str] | None = None, prefix: str | None = None) -> dict:
    """Read all tensors, or only ``keys``, or only those starting with ``prefix``; a truncated file
    raises InputError naming it."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    try:
        out = {}
        with safe_open(str(path), framework="pt") as f:
            for k in f.keys():
                if (keys is None or k in keys) and (prefix is None or k.startswith(prefix)):
                    out[k] = f.get_tensor(k)
        return out
    except (OSError, RuntimeError, ValueError) as e:  # safetensors raises SafetensorError (an Exception)
        raise InputError(f"{path}: unreadable or truncated safetensors file ({e}); delete it and rerun") from e
    except Exception as e:  # noqa: BLE001 - SafetensorError has no importable base besides Exception
        if type(e).__name__ == "SafetensorError":
            raise InputError(f"{path}: unreadable or truncated safetensors file ({e}); delete it and rerun") from e
        raise
