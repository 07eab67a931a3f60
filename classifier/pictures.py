"""Tensors as small pictures, for the studio's pages, the notebook and explain's figures.

    photos(inputs, mean, std)   a normalized batch -> uint8 [N, h, w, 3], as the network saw it
    weight_images(weights)      [n, c, h, w] weights -> [n, h, w, 3 or 1] in [0, 1], zero at gray
    map_images(maps)            [channels, h, w] feature maps -> uint8 [channels, h, w, 3], one colour scale
    png(image), data_url(image) an image ([h, w, 3] or [h, w], uint8 or float in [0, 1]) -> PNG
    png_url(data)               PNG bytes -> a data URL for an <img>

No matplotlib, and numpy rather than torch for the arithmetic: a page asks for dozens of these a
second, and on a busy machine each small torch operation can wait milliseconds for its threads.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import torch
from PIL import Image

# viridis at nine evenly spaced points (dark blue: weak, yellow: strong), interpolated in between
VIRIDIS = torch.tensor([[68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
                        [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]], dtype=torch.float32)


def photos(inputs: torch.Tensor, mean, std) -> torch.Tensor:
    """Normalized images [N, 3, h, w] back to uint8 pixels [N, h, w, 3]."""
    shape = (1, 3, 1, 1)
    pixels = inputs.detach().float().cpu().numpy() * np.reshape(std, shape) + np.reshape(mean, shape)
    return torch.from_numpy((np.clip(pixels, 0, 1) * 255).round().astype(np.uint8).transpose(0, 2, 3, 1).copy())


def weight_images(weights: torch.Tensor) -> torch.Tensor:
    """[n, c, h, w] weights -> [n, h, w, 3 or 1] images in [0, 1], zero at gray: each image is
    scaled by its own largest magnitude, so its sign pattern (light vs dark) shows."""
    weights = weights.detach().float().cpu().numpy()
    if weights.shape[1] != 3:
        weights = weights[:, :1]  # not RGB (say, a grouped convolution): its first input channel
    scale = np.maximum(np.abs(weights).max(axis=(1, 2, 3), keepdims=True), 1e-12)
    return torch.from_numpy((0.5 + 0.5 * weights / scale).transpose(0, 2, 3, 1).copy())


def colour(values: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Values in [0, 1] (any shape) -> uint8 viridis colours (shape + [3]). In numpy, as below."""
    values = values.detach().float().cpu().numpy() if isinstance(values, torch.Tensor) else values
    position = np.clip(values, 0, 1) * (len(VIRIDIS) - 1)
    low = np.minimum(np.floor(position).astype(np.int64), len(VIRIDIS) - 2)
    share = (position - low)[..., None]
    anchors = VIRIDIS.numpy()
    return torch.from_numpy((anchors[low] * (1 - share) + anchors[low + 1] * share).round().astype(np.uint8))


def map_images(maps: torch.Tensor, low: float | None = None, high: float | None = None) -> torch.Tensor:
    """Feature maps [channels, h, w] -> uint8 [channels, h, w, 3] on one colour scale for all
    channels (from the smallest value, or 0, to the largest), so brighter is stronger across them."""
    maps = maps.detach().float().cpu().numpy()
    low = min(0.0, float(maps.min())) if low is None else low
    high = float(maps.max()) if high is None else high
    return colour((maps - low) / max(high - low, 1e-12))


def png(image: torch.Tensor) -> bytes:
    """[h, w, 3], [h, w, 1] or [h, w], uint8 or float in [0, 1] -> PNG bytes."""
    pixels = image.detach().cpu().numpy()
    if pixels.dtype != np.uint8:
        pixels = (np.clip(pixels, 0, 1) * 255).round().astype(np.uint8)
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def data_url(image: torch.Tensor) -> str:
    """The image as a PNG data URL, for an <img> on a page."""
    return png_url(png(image))


def png_url(data: bytes) -> str:
    """PNG bytes as a data URL."""
    return "data:image/png;base64," + base64.b64encode(data).decode()
