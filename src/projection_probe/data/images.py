"""Image loading and LLaVA's two preprocessing choices (`pad` and `square`)."""
from __future__ import annotations

import contextlib
import hashlib
import io
import re
import traceback
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from projection_probe.io import InputError

# What a user can do about an unreadable image, wherever it is met: prepare_dataset checks every
# image, so one met later was changed after that check.
BAD_IMAGE_ADVICE = ("re-download it, or set data.on_bad_image: skip so that prepare_dataset drops it "
                    "and lists it in bad_images.txt")


class BadImageError(InputError):
    """An image that cannot be used. ``path`` and ``reason`` (e.g. ``zero-byte file``) are kept apart
    so that the dataset check can list many of them; the message joins them with the advice."""

    def __init__(self, message: str, path: str | None = None, reason: str | None = None):
        super().__init__(message)
        self.path, self.reason = path, reason

    @classmethod
    def of(cls, path: str | Path, reason: str) -> BadImageError:
        return cls(f"{path}: {reason}; {BAD_IMAGE_ADVICE}", str(path), reason)


def read_image_bytes(path: str | Path) -> bytes:
    """The file's bytes; a missing or empty file raises BadImageError naming it."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise BadImageError.of(path, "missing") from None
    except OSError as e:
        raise BadImageError.of(path, f"unreadable file ({e.strerror or e})") from None
    if not data:
        raise BadImageError.of(path, "zero-byte file")
    return data


def content_hash(data: bytes) -> str:
    """The manifest's ``sha256`` of an image file's bytes."""
    return hashlib.sha256(data).hexdigest()


def decode_rgb(path: str | Path, data: bytes, exif_transpose: bool = False) -> Image.Image:
    """Decode ``data`` (the bytes of ``path``) as 8-bit RGB; see ``load_rgb``."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if exif_transpose:
                im = ImageOps.exif_transpose(im)
            return to_rgb(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise BadImageError.of(path, f"corrupt or unreadable image ({_describe(e)})") from None


def _describe(error: Exception) -> str:
    # PIL names the BytesIO object ("<_io.BytesIO object at 0x...>"); the message already names the file.
    return re.sub(r" '?<_io\.BytesIO object at 0x[0-9a-f]+>'?", "", str(error)) or type(error).__name__


def load_rgb(path: str | Path, exif_transpose: bool = False) -> Image.Image:
    """Open an image as 8-bit RGB. Grey, palette, RGBA (composited on white), CMYK and 16-bit
    images are converted, not rejected; a missing, empty or undecodable file raises BadImageError
    naming it. ``exif_transpose`` applies the EXIF orientation tag; LLaVA does not (its processors
    open the file with ``Image.open(...).convert("RGB")``), so the default is off."""
    return decode_rgb(path, read_image_bytes(path), exif_transpose)


@contextlib.contextmanager
def worker_errors_as_input_errors() -> Iterator[None]:
    """Around a DataLoader loop: an InputError raised in a worker process reaches the main process
    wrapped in the worker's whole traceback ("Caught BadImageError in DataLoader worker process 0.
    Original Traceback ..."); re-raise it with its own message, as with ``num_workers=0``."""
    try:
        yield
    except InputError as e:
        original = _worker_message(str(e), type(e).__name__)
        if original is None:
            raise
        # Free the DataLoader iterator that the traceback's frames hold: shut down later by the
        # garbage collector, torch waits 5 s for each worker to exit; now, they exit at once.
        traceback.clear_frames(e.__traceback__)
        raise type(e)(original) from None


_WORKER_HEADER = re.compile(r"Caught (\w+) in DataLoader worker process \d+\.\nOriginal Traceback")


def _worker_message(text: str, name: str) -> str | None:
    if not _WORKER_HEADER.match(text):
        return None
    # The formatted traceback ends with "<module>.<Name>: <message>".
    matches = list(re.finditer(rf"^(?:[\w.]+\.)?{re.escape(name)}: ", text, re.M))
    return text[matches[-1].end():].rstrip("\n") if matches else None


def to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grey: scale the real range to 8 bits instead of clipping at 255.
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
        return Image.fromarray(arr.round().astype(np.uint8), mode="L").convert("RGB")
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def expand_to_square(im: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """LLaVA's `expand2square`: pad the short side symmetrically with ``fill`` (the processor mean)."""
    w, h = im.size
    if w == h:
        return im
    side = max(w, h)
    out = Image.new(im.mode, (side, side), fill)
    out.paste(im, ((side - w) // 2, (side - h) // 2))
    return out


def resize_center_crop(im: Image.Image, size: int, resample=Image.BICUBIC) -> Image.Image:
    """CLIP's processor: resize the shortest side to ``size``, then centre-crop ``size``×``size``."""
    w, h = im.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    im = im.resize((nw, nh), resample=resample)
    left, top = (nw - size) // 2, (nh - size) // 2
    return im.crop((left, top, left + size, top + size))


def preprocess(im: Image.Image, size: int, mean: tuple[float, float, float], std: tuple[float, float, float],
               mode: str) -> np.ndarray:
    """Return a 3×size×size float32 array. ``mode`` is `pad` (expand2square with the mean colour,
    LLaVA-1.5's fine-tuning default) or `square` (resize + centre-crop, the pretrain script's)."""
    if mode == "pad":
        im = expand_to_square(im, tuple(int(m * 255) for m in mean))
    elif mode != "square":
        raise InputError(f"image_preprocessing: unknown value {mode!r}; use 'pad' or 'square'")
    im = resize_center_crop(im, size)
    arr = np.asarray(im, dtype=np.float32) / 255.0
    arr = (arr - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return arr.transpose(2, 0, 1).copy()
