"""Camera bytes -> numpy: raw ROS image layouts, JPEG/PNG, metric depth, resizing. ROS-free (numpy + cv2).

The functions take the fields of a `sensor_msgs/Image` (encoding, height, width, step, data, is_bigendian)
rather than the message, so the core never imports ROS; `gem_ros.nodes.conversions` passes them through.
Colour results are always (H, W, 3) uint8 RGB, the layout the policy's `Observation` expects.
Depth follows REP 118: 16UC1 is millimetres with 0 = no reading, 32FC1 is metres with NaN = no reading.
"""
from __future__ import annotations

import threading

import cv2
import numpy as np

# encoding -> (channels, numpy dtype of one channel)
COLOR_ENCODINGS: dict[str, tuple[int, str]] = {
    "rgb8": (3, "u1"), "bgr8": (3, "u1"), "rgba8": (4, "u1"), "bgra8": (4, "u1"), "mono8": (1, "u1"),
}
DEPTH_ENCODINGS: dict[str, tuple[int, str]] = {"16UC1": (1, "u2"), "32FC1": (1, "f4")}
_DEPTH_SCALE_M = {"16UC1": 0.001, "32FC1": 1.0}   # metres per stored unit
# cv2 conversion into RGB; rgb8 has none because it is returned as a view
_TO_RGB = {"bgr8": cv2.COLOR_BGR2RGB, "rgba8": cv2.COLOR_RGBA2RGB, "bgra8": cv2.COLOR_BGRA2RGB,
           "mono8": cv2.COLOR_GRAY2RGB}


def check_raw_layout(encoding: str, height: int, width: int, step: int, nbytes: int,
                     kinds: dict[str, tuple[int, str]] = COLOR_ENCODINGS) -> tuple[int, np.dtype]:
    """Validate an image's geometry against its byte count; return (channels, channel dtype).

    Shared by the numpy decoder and the cv_bridge path in the nodes, so both reject the same inputs
    with the same ValueError.
    """
    if encoding not in kinds:
        hint = ""
        if kinds is COLOR_ENCODINGS and encoding in DEPTH_ENCODINGS:
            hint = " (a depth encoding: use decode_depth)"
        elif kinds is DEPTH_ENCODINGS and encoding in COLOR_ENCODINGS:
            hint = " (a colour encoding: use decode_raw)"
        raise ValueError(f"unsupported image encoding {encoding!r}{hint}; supported: {sorted(kinds)}")
    channels, code = kinds[encoding]
    dtype = np.dtype(code)
    for name, value in (("height", height), ("width", width), ("step", step)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"image {name} must be a positive integer, got {value!r}")
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise ValueError(f"image step {step} B is shorter than one row of {width} px {encoding} ({row_bytes} B)")
    if step % dtype.itemsize:
        raise ValueError(f"image step {step} B is not a multiple of the {dtype.itemsize}-byte {encoding} channel")
    if nbytes != step * height:
        raise ValueError(f"{encoding} image data has {nbytes} B, expected step*height = {step}*{height} "
                         f"= {step * height} B")
    return channels, dtype


def _pixels(encoding: str, height: int, width: int, step: int, data, is_bigendian: bool,
            kinds: dict[str, tuple[int, str]]) -> np.ndarray:
    """Zero-copy (H, W, C) or (H, W) view of `data`; padding bytes at the end of each row are skipped by striding."""
    flat = np.frombuffer(data, dtype=np.uint8)
    channels, dtype = check_raw_layout(encoding, height, width, step, flat.size, kinds)
    if dtype.itemsize > 1:
        dtype = dtype.newbyteorder(">" if is_bigendian else "<")
    row_bytes = width * channels * dtype.itemsize
    rows = flat.reshape(height, step)[:, :row_bytes]          # strides (step, 1): no copy
    pixels = rows.view(dtype)                                   # legal: the last axis is contiguous
    return pixels.reshape(height, width) if channels == 1 else pixels.reshape(height, width, channels)


def decode_raw(encoding: str, height: int, width: int, step: int, data: bytes | memoryview,
               is_bigendian: bool = False) -> np.ndarray:
    """Raw colour image bytes -> (H, W, 3) uint8 RGB.

    rgb8 comes back as a read-only view of `data` (strided when rows are padded); every other encoding
    needs a channel conversion and returns one fresh contiguous array. mono8 is replicated to 3 channels,
    alpha is dropped. `is_bigendian` is irrelevant for 8-bit channels and accepted for a uniform call.
    """
    pixels = _pixels(encoding, height, width, step, data, is_bigendian, COLOR_ENCODINGS)
    if encoding == "rgb8":
        return pixels
    return cv2.cvtColor(pixels, _TO_RGB[encoding])


def decode_depth(encoding: str, height: int, width: int, step: int, data: bytes | memoryview,
                 is_bigendian: bool = False) -> np.ndarray:
    """Raw depth bytes -> (H, W) float32 metres, NaN where the sensor had no reading.

    16UC1 (mm) is scaled to metres and its 0 "no reading" becomes NaN, so both encodings share one
    invalid marker. Native-order, unpadded 32FC1 is returned as a view of `data` without copying.
    """
    pixels = _pixels(encoding, height, width, step, data, is_bigendian, DEPTH_ENCODINGS)
    if encoding == "32FC1":
        return pixels.astype(np.float32, copy=False)
    depth = pixels.astype(np.float32) * np.float32(_DEPTH_SCALE_M[encoding])
    depth[pixels == 0] = np.nan
    return depth


def check_compressed_format(format: str) -> None:  # noqa: A002 (ROS field name)
    """Refuse a CompressedImage format that decode_compressed cannot read (before any bytes are decoded)."""
    lowered = (format or "").lower()
    if "compresseddepth" in lowered:
        raise ValueError(f"compressed format {format!r} is compressedDepth, which is not supported; "
                         f"publish raw 16UC1/32FC1 depth instead")
    if lowered and not any(codec in lowered for codec in ("jpeg", "jpg", "png")):
        raise ValueError(f"unsupported compressed format {format!r}; supported: jpeg, png")


def decode_compressed(format: str, data: bytes | memoryview) -> np.ndarray:  # noqa: A002 (ROS field name)
    """JPEG/PNG bytes (a `sensor_msgs/CompressedImage`) -> (H, W, 3) uint8 RGB.

    `format` is the message's field, e.g. "jpeg", "png" or image_transport's "bgr8; jpeg compressed bgr8".
    The codec is detected from the bytes, and standard JPEG/PNG files store colours in the usual order,
    so the result is RGB whatever the "<encoding>;" prefix says. compressedDepth (a custom header + PNG)
    is rejected rather than misread. EXIF orientation is ignored, as cv_bridge does.
    """
    check_compressed_format(format)
    buffer = np.frombuffer(data, dtype=np.uint8)
    if buffer.size == 0:
        raise ValueError(f"compressed image ({format!r}) has no data")
    bgr = cv2.imdecode(buffer, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if bgr is None:
        raise ValueError(f"could not decode {buffer.size} B as a {format or 'jpeg/png'} image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class EncodedFrame:
    """A JPEG/PNG frame kept encoded until a policy uses it. Cameras publish at 10-60 Hz but the policy reads a
    frame per chunk (a few per second): decoding only those saves most of the decode work (`bench/ros_overhead.py
    --cameras raw jpeg-eager jpeg`), and it runs on the inference thread instead of the subscription callbacks. The
    format is checked on arrival; corrupt bytes surface when the frame is decoded (`decode` raises ValueError, and
    ObservationBuffer.assemble drops the frame)."""

    def __init__(self, format: str, data: bytes | memoryview):  # noqa: A002 (ROS field name)
        check_compressed_format(format)
        if len(data) == 0:
            raise ValueError(f"compressed image ({format!r}) has no data")
        self.format, self.data = format, data
        self._lock = threading.Lock()
        self._rgb: np.ndarray | None = None
        self._error = ""

    def decode(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB, decoded once (read-only: every use shares it); a corrupt frame raises every time."""
        with self._lock:
            if self._rgb is None and not self._error:
                try:
                    self._rgb = decode_compressed(self.format, self.data)
                    self._rgb.flags.writeable = False
                except ValueError as error:
                    self._error = str(error)
                self.data = b""   # decoded or not, the bytes are not needed any more
            if self._error:
                raise ValueError(self._error)
            return self._rgb


def resize_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize (H, W[, C]) to (height, width); returns `image` itself when it already has that size.

    INTER_AREA when neither side grows (it averages, so shrinking does not alias); INTER_LINEAR otherwise.
    """
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"resize {name} must be a positive integer, got {value!r}")
    in_h, in_w = image.shape[:2]
    if (in_h, in_w) == (height, width):
        return image
    shrinking = height <= in_h and width <= in_w
    # cv2 takes dsize as (width, height)
    return cv2.resize(image, (int(width), int(height)),
                      interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
