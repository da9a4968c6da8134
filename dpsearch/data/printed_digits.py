"""Printed digits, the default public dataset: the role SVHN plays for MNIST in DP-LDM.

Rendered deterministically from the TrueType fonts that ship inside matplotlib (a dependency,
so they are on every machine offline), with augmentation of size, stroke, rotation, position,
blur and noise, and centred by centre of mass in a 28×28 frame the way MNIST was made.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from tqdm import tqdm

from dpsearch.data.imageset import DataError, ImageSet

FONT_NAMES = [
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
    "cmr10.ttf", "cmss10.ttf", "cmtt10.ttf", "cmb10.ttf", "cmti10.ttf",
]
CANVAS = 96  # render large, then downsample: anti-aliased strokes like MNIST's


def font_files() -> list[Path]:
    import matplotlib

    d = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    found = [d / n for n in FONT_NAMES if (d / n).exists()]
    if not found:
        raise DataError(f"no fonts found in {d}; is matplotlib installed?")
    return found


@lru_cache(maxsize=256)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


def elastic_distort(img: np.ndarray, rng: np.random.Generator, alpha: float, sigma: float = 4.0) -> np.ndarray:
    """Simard et al. (2003)'s elastic distortion: a smoothed random displacement field, the augmentation that
    makes rigid glyphs wobble like pen strokes."""
    from scipy.ndimage import gaussian_filter, map_coordinates

    dy = gaussian_filter(rng.uniform(-1, 1, img.shape), sigma) * alpha
    dx = gaussian_filter(rng.uniform(-1, 1, img.shape), sigma) * alpha
    ys, xs = np.meshgrid(np.arange(img.shape[0]), np.arange(img.shape[1]), indexing="ij")
    return map_coordinates(img, [ys + dy, xs + dx], order=1, mode="constant")


def render_digit(digit: int, rng: np.random.Generator, fonts: list[Path], elastic: bool = False) -> np.ndarray:
    """One augmented 28×28 uint8 digit, white on black; `elastic` adds handwriting-like stroke wobble."""
    font = _font(str(fonts[rng.integers(len(fonts))]), int(rng.integers(44, 72)))
    img = Image.new("L", (CANVAS, CANVAS), 0)
    draw = ImageDraw.Draw(img)
    stroke = int(rng.integers(0, 5))
    draw.text((CANVAS / 2, CANVAS / 2), str(digit), fill=255, font=font, anchor="mm", stroke_width=stroke, stroke_fill=255)
    img = img.rotate(float(rng.uniform(-15, 15)), resample=Image.BILINEAR)
    # Shear a little: handwriting slants, fonts do not.
    shear = float(rng.uniform(-0.3, 0.3))
    img = img.transform(img.size, Image.AFFINE, (1, shear, -shear * CANVAS / 2, 0, 1, 0), resample=Image.BILINEAR)
    arr = np.asarray(img)
    ys, xs = np.nonzero(arr > 30)
    if len(ys) == 0:
        return np.zeros((28, 28), np.uint8)
    crop = Image.fromarray(arr[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1])
    # MNIST: the digit's box is fitted into 20×20 (here 16..22 for size variety), aspect kept.
    box = float(rng.uniform(16, 22))
    scale = box / max(crop.size)
    w, h = max(1, round(crop.size[0] * scale)), max(1, round(crop.size[1] * scale))
    crop = crop.resize((w, h), Image.LANCZOS)
    if rng.random() < 0.5:
        crop = crop.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.2, 0.8))))
    small = np.asarray(crop, np.float32)
    # Centre of mass at the frame's centre, plus a small random shift.
    cy, cx = np.array(np.nonzero(small > -1)).astype(np.float32) @ small.ravel() / max(small.sum(), 1.0)
    oy = int(round(14 - cy + rng.normal(0, 1.0)))
    ox = int(round(14 - cx + rng.normal(0, 1.0)))
    out = np.zeros((28, 28), np.float32)
    y0, x0 = max(0, oy), max(0, ox)
    y1, x1 = min(28, oy + h), min(28, ox + w)
    if y1 > y0 and x1 > x0:
        out[y0:y1, x0:x1] = small[y0 - oy: y1 - oy, x0 - ox: x1 - ox]
    if elastic and rng.random() < 0.8:
        out = elastic_distort(out, rng, alpha=float(rng.uniform(8, 34)))
    out += rng.normal(0, float(rng.uniform(0, 8)), out.shape)
    return np.clip(out, 0, 255).astype(np.uint8)


def printed_digits(n: int = 30000, seed: int = 0, progress: bool = True, elastic: bool = False) -> ImageSet:
    """n printed digits with balanced labels; the same (n, seed, elastic) always gives the same images."""
    if n < 10:
        raise DataError(f"printed digits: n must be at least 10 (one per class), got {n}")
    rng = np.random.default_rng(seed)
    fonts = font_files()
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    imgs = np.stack([render_digit(int(d), rng, fonts, elastic)
                     for d in tqdm(labels, desc="rendering printed digits", disable=not progress, leave=False)])
    return ImageSet(torch.from_numpy(imgs[:, None]), torch.from_numpy(labels.astype(np.int64)), 10,
                    f"printed-digits{'-elastic' if elastic else ''}-{seed}")
