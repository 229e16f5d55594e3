"""Image augmentation without torchvision: a cv2/numpy ColorJitter with GEM's ranges and the reference's
corruptions (noise, blur, JPEG; gem_reference §9).

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


# The reference's corruption augmentation (GEM-VLA train/image_corrupt.py, an imgaug Sequential in random order):
# always one additive noise (Gaussian / Laplace / Poisson, scale up to 0.02 * 255, per channel for half the images);
# with p 0.168 one blur (Gaussian sigma 0-1.5, mean 3-5 px, median 3 or 5 px, or motion 5-9 px); with p 0.168 JPEG
# at compression 0-50. Written with cv2/numpy after imgaug's definitions (imgaug 0.4 does not run on numpy 2),
# every draw from the sample's generator so that a resumed run corrupts exactly as the first one did.
CORRUPT_NOISE_SCALE = 0.02 * 255
CORRUPT_BLUR_PROB = 0.168
CORRUPT_JPEG_PROB = 0.168
CORRUPT_MAX_COMPRESSION = 50


def image_corrupt(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> corrupted copy: noise, and sometimes blur and JPEG, in a random order."""
    steps = [_additive_noise]
    if rng.random() < CORRUPT_BLUR_PROB:
        steps.append(_blur)
    if rng.random() < CORRUPT_JPEG_PROB:
        steps.append(_jpeg)
    out = image
    for k in rng.permutation(len(steps)):
        out = steps[int(k)](out, rng)
    return np.ascontiguousarray(out)


def _additive_noise(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """imgaug AddElementwise of a Normal(0, s) / Laplace(0, s) / RandomSign(Poisson(s)) with s ~ U(0, 0.02*255)
    per image; one value per pixel shared by the channels, or one per channel (p 0.5)."""
    kind = int(rng.integers(3))
    scale = rng.uniform(0.0, CORRUPT_NOISE_SCALE)
    shape = image.shape[:2] + ((image.shape[2] if rng.random() < 0.5 else 1),)
    if kind == 0:
        noise = rng.normal(0.0, scale, shape)
    elif kind == 1:
        noise = rng.laplace(0.0, scale, shape) if scale > 0 else np.zeros(shape)
    else:
        noise = rng.poisson(scale, shape) * rng.choice([-1.0, 1.0], shape)
    return np.clip(np.rint(image.astype(np.float64) + noise), 0, 255).astype(np.uint8)


def _blur(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One of {one of {Gaussian, mean, median}, motion}, as the reference's nested OneOf picks them."""
    if rng.random() < 0.5:
        kind = int(rng.integers(3))
        if kind == 0:
            sigma = rng.uniform(0.0, 1.5)   # imgaug: kernel int(max(3.3 sigma, 5)) made odd, skipped below 1e-3
            return image if sigma <= 1e-3 else cv2.GaussianBlur(image, (5, 5), sigmaX=sigma, sigmaY=sigma,
                                                                borderType=cv2.BORDER_REFLECT_101)
        if kind == 1:
            k = int(rng.integers(3, 6))
            return cv2.blur(image, (k, k))
        k = int(rng.integers(3, 6))
        return cv2.medianBlur(image, k + 1 if k % 2 == 0 else k)
    return _motion_blur(image, int(rng.integers(5, 10)), rng.uniform(0.0, 360.0), rng.uniform(-1.0, 1.0))


def _motion_blur(image: np.ndarray, k: int, angle_deg: float, direction: float) -> np.ndarray:
    """imgaug MotionBlur: a k x k kernel holding a line weighted from one end to the other by `direction`
    (-1..1, 0 = even), rotated by `angle_deg`, normalised to sum 1."""
    start = (direction + 1.0) / 2.0
    kernel = np.zeros((k, k), np.float32)
    kernel[:, k // 2] = np.linspace(start, 1.0 - start, num=k)
    rotation = cv2.getRotationMatrix2D(((k - 1) / 2.0, (k - 1) / 2.0), angle_deg, 1.0)
    kernel = cv2.warpAffine(kernel, rotation, (k, k), flags=cv2.INTER_LINEAR)
    total = float(kernel.sum())
    if total <= 0:
        return image
    return cv2.filter2D(image, -1, kernel / total, borderType=cv2.BORDER_REFLECT_101)


def _jpeg(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """imgaug JpegCompression: compression c ~ U(0, 50) -> quality round(1 + 99 (1 - c / 101))."""
    compression = rng.uniform(0.0, CORRUPT_MAX_COMPRESSION)
    quality = int(np.clip(np.round(1 + 99 * (1.0 - compression / 101)), 1, 100))
    ok, buffer = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"JPEG encoding of a {image.shape} image failed")
    return cv2.cvtColor(cv2.imdecode(buffer, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def reference_augment(image: np.ndarray, rng: np.random.Generator, color: bool, corrupt: bool) -> np.ndarray:
    """The reference's per-image augmentation (train/dataset.py): half the images are augmented, each by colour
    jitter only, corruption only or both (a third each) when both are on; by the one that is on otherwise."""
    if rng.random() >= 0.5:
        return image
    kind = int(rng.integers(3)) if color and corrupt else (1 if color else 0)   # 0 corrupt, 1 colour, 2 both
    if kind != 0:
        image = color_jitter(image, rng)
    if kind != 1:
        image = image_corrupt(image, rng)
    return image
