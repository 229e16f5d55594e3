"""Image augmentation without torchvision: a cv2/numpy ColorJitter with GEM's ranges (gem_reference §9).

GEM uses torchvision ColorJitter(brightness=0.3, contrast=0.4, saturation=0.5, hue=0.03) in random order; here
the order is fixed (brightness, contrast, saturation, hue), which gives the same distribution of factors.
"""
from __future__ import annotations

import cv2
import numpy as np

BRIGHTNESS, CONTRAST, SATURATION, HUE = 0.3, 0.4, 0.5, 0.03
_GRAY = np.array([0.299, 0.587, 0.114], np.float32)   # ITU-R 601 luma, as torchvision's rgb_to_grayscale


def color_jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> jittered copy."""
    x = image.astype(np.float32)
    x *= rng.uniform(1 - BRIGHTNESS, 1 + BRIGHTNESS)
    gray = x @ _GRAY
    x = (x - gray.mean()) * rng.uniform(1 - CONTRAST, 1 + CONTRAST) + gray.mean()
    gray = (np.clip(x, 0, 255) @ _GRAY)[..., None]
    x = (x - gray) * rng.uniform(1 - SATURATION, 1 + SATURATION) + gray
    out = np.clip(x, 0, 255).astype(np.uint8)
    shift = rng.uniform(-HUE, HUE) * 180.0          # OpenCV 8-bit hue spans [0, 180)
    if abs(shift) >= 0.5:
        hsv = cv2.cvtColor(out, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = ((hsv[..., 0].astype(np.int16) + int(round(shift))) % 180).astype(np.uint8)
        out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    return out


def random_shift(image: np.ndarray, max_px: int, rng: np.random.Generator) -> np.ndarray:
    """Translate by a random (dy, dx) in [-max_px, max_px]^2, replicating the edges (same shape, same dtype)."""
    return shift(image, random_shift_offset(max_px, rng))


def random_shift_offset(max_px: int, rng: np.random.Generator) -> tuple[int, int]:
    """(dy, dx), each uniform in [-max_px, max_px]."""
    dy, dx = (int(v) - max_px for v in rng.integers(0, 2 * max_px + 1, size=2))
    return dy, dx


def shift(image: np.ndarray, offset: tuple[int, int]) -> np.ndarray:
    """Content moves by -offset (crop window moves by +offset); edges replicated; same shape and dtype."""
    dy, dx = offset
    pad = max(abs(dy), abs(dx))
    if pad == 0:
        return image
    h, w = image.shape[:2]
    padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    return np.ascontiguousarray(padded[pad + dy:pad + dy + h, pad + dx:pad + dx + w])


def scale_offset(offset: tuple[int, int], image_shape, other_shape) -> tuple[int, int]:
    """The same translation in a frame of another size (e.g. a depth map stored at another resolution)."""
    return (int(round(offset[0] * other_shape[0] / image_shape[0])),
            int(round(offset[1] * other_shape[1] / image_shape[1])))
