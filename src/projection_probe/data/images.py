"""Image loading and LLaVA's two preprocessing choices (`pad` and `square`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from projection_probe.io import InputError


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image as 8-bit RGB. Grey, palette, RGBA (composited on white), CMYK and 16-bit
    images are converted, not rejected; unreadable files raise InputError naming the file."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise InputError(f"{path}: zero-byte image file; remove it or re-download the dataset")
        with Image.open(path) as im:
            im.load()
            return to_rgb(im)
    except FileNotFoundError as e:
        raise InputError(f"{path}: image file not found; re-run the dataset preparation") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise InputError(f"{path}: corrupt or unreadable image ({e}); remove it or set "
                         f"data.on_bad_image: skip") from e


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
