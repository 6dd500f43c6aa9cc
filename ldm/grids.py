"""Sample grids as PNG images: plain (torchvision's layout) or with each image's class written above it.
Written atomically (`ldm.io.atomic_write`)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor
from torchvision.utils import make_grid

from ldm.io import atomic_write


def save_png(path: Path, image: Image.Image, hint: str = "") -> Path:
    # The temp file ends in .tmp, so PIL cannot infer the format from the name.
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"), hint)


def grid_image(images: Tensor, nrow: int) -> Image.Image:
    """A grid of (N, C, H, W) images, uint8 or floats in [0, 1], as torchvision's `save_image` draws it."""
    x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    grid = make_grid(x.cpu(), nrow=nrow)
    return Image.fromarray(grid.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to(torch.uint8).numpy())


def labelled_grid(images: Tensor, labels: Tensor, nrow: int) -> Image.Image:
    """A grid of uint8 (N, C, H, W) images with each image's class written in a strip above it."""
    cell, strip = images.shape[-1] + 2, 12
    rows = math.ceil(len(images) / nrow)
    canvas = Image.new("L", (nrow * cell, rows * (cell + strip)), 0)
    draw_ = ImageDraw.Draw(canvas)
    for i, (image, label) in enumerate(zip(images.numpy(), labels.tolist())):
        x, y = (i % nrow) * cell, (i // nrow) * (cell + strip)
        draw_.text((x + cell // 2 - 3, y), str(label), fill=255)
        pixels = image[0] if image.shape[0] == 1 else np.ascontiguousarray(image.transpose(1, 2, 0))
        canvas.paste(Image.fromarray(pixels).convert("L"), (x + 1, y + strip))
    return canvas
