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


# Largest frame a CompressedImage may declare, px: 4096x4096 (16.7 Mpx, ~50 MB as RGB) holds 4K UHD cameras
# (8.3 Mpx). The declared size is read from the header and refused above this *before* decoding: a 1 MB PNG can
# declare 20000x20000 px (1.2 GB decoded), and OpenCV raises its own error type on larger declarations.
MAX_DECODE_PIXELS = 4096 * 4096
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (SOF0-SOF15) carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) are not frames
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_NO_LENGTH = frozenset(range(0xD0, 0xD8)) | {0x01}   # RSTn and TEM stand alone


def _jpeg_size(view: memoryview) -> tuple[int, int]:
    """(height, width) from the first SOFn segment; the segments before it (APPn, DQT, DHT, ...) are skipped by
    their length fields, so the scan costs one step per segment, not per byte."""
    at = 2
    while at + 4 <= len(view):
        if view[at] != 0xFF:
            raise ValueError(f"JPEG header is corrupt: expected a marker at byte {at}, found 0x{view[at]:02x}")
        marker = view[at + 1]
        if marker == 0xFF:   # a fill byte before a marker
            at += 1
            continue
        if marker in _JPEG_NO_LENGTH:
            at += 2
            continue
        if marker in (0xD9, 0xDA):   # end of image / start of scan before any frame header
            break
        length = int.from_bytes(view[at + 2:at + 4], "big")   # counts its own 2 bytes
        if marker in _JPEG_SOF:
            if length < 8 or at + 9 > len(view):
                raise ValueError(f"JPEG header is truncated: frame header at byte {at} of {len(view)} B")
            return int.from_bytes(view[at + 5:at + 7], "big"), int.from_bytes(view[at + 7:at + 9], "big")
        if length < 2:
            raise ValueError(f"JPEG header is corrupt: segment 0x{marker:02x} at byte {at} has length {length}")
        at += 2 + length
    raise ValueError(f"JPEG header has no frame size (no SOF marker in {len(view)} B)")


def compressed_size(data: bytes | memoryview) -> tuple[int, int]:
    """(height, width) px that PNG or JPEG bytes declare, read from the header alone (PNG IHDR, JPEG SOFn).

    Raises ValueError for any other codec, a truncated or corrupt header, or a zero size.
    """
    view = memoryview(data).cast("B")   # no copy; bytes, array.array('B') (rclpy's uint8[]) and numpy alike
    if view[:8] == _PNG_SIGNATURE:
        # the IHDR chunk comes first: length (4) "IHDR" (4) width (4) height (4) ...
        if len(view) < 24 or view[12:16] != b"IHDR":
            raise ValueError(f"PNG header is truncated or corrupt (no IHDR chunk in {len(view)} B)")
        height, width = int.from_bytes(view[20:24], "big"), int.from_bytes(view[16:20], "big")
    elif view[:2] == b"\xff\xd8":
        height, width = _jpeg_size(view)
    else:
        raise ValueError(f"compressed image is neither PNG nor JPEG (starts with {bytes(view[:8])!r})")
    if height == 0 or width == 0:
        raise ValueError(f"compressed image declares {width}x{height} px (zero size)")
    return height, width


def check_compressed(format: str, data: bytes | memoryview,  # noqa: A002 (ROS field name)
                     max_pixels: int = MAX_DECODE_PIXELS) -> tuple[int, int]:
    """The arrival checks of a CompressedImage, without decoding: format, bytes present, header readable and its
    declared size at most `max_pixels`. Returns the declared (height, width) px; raises ValueError."""
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) or max_pixels <= 0:
        raise ValueError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    check_compressed_format(format)
    if len(data) == 0:
        raise ValueError(f"compressed image ({format!r}) has no data")
    height, width = compressed_size(data)
    if height * width > max_pixels:
        raise ValueError(f"compressed image declares {width}x{height} px ({height * width / 1e6:.1f} Mpx), above "
                         f"the {max_pixels / 1e6:.1f} Mpx limit; refused without decoding")
    return height, width


def _error_name(error: BaseException) -> str:
    """'cv2.error', 'MemoryError': OpenCV's exception type is called plain 'error'."""
    kind = type(error)
    return kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"


def decode_compressed(format: str, data: bytes | memoryview,  # noqa: A002 (ROS field name)
                      max_pixels: int = MAX_DECODE_PIXELS) -> np.ndarray:
    """JPEG/PNG bytes (a `sensor_msgs/CompressedImage`) -> (H, W, 3) uint8 RGB; raises ValueError only.

    `format` is the message's field, e.g. "jpeg", "png" or image_transport's "bgr8; jpeg compressed bgr8".
    The codec is detected from the bytes, and standard JPEG/PNG files store colours in the usual order,
    so the result is RGB whatever the "<encoding>;" prefix says. compressedDepth (a custom header + PNG)
    is rejected rather than misread. EXIF orientation is ignored, as cv_bridge does. The declared size is
    checked against `max_pixels` before decoding (`check_compressed`), and any decoder error, of whatever
    type OpenCV raises, becomes a ValueError naming it.
    """
    height, width = check_compressed(format, data, max_pixels)
    buffer = np.frombuffer(data, dtype=np.uint8)
    try:
        bgr = cv2.imdecode(buffer, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    except Exception as error:   # cv2.error, MemoryError, ...: a bad frame, never a dead inference thread
        raise ValueError(f"could not decode {buffer.size} B as a {width}x{height} px {format or 'jpeg/png'} image: "
                         f"{_error_name(error)}: {str(error).strip()}") from None
    if bgr is None:
        raise ValueError(f"could not decode {buffer.size} B as a {width}x{height} px {format or 'jpeg/png'} image")
    if bgr.shape[:2] != (height, width):   # the size checked is the size decoded, or the check proved nothing
        raise ValueError(f"compressed image declares {width}x{height} px but decoded to "
                         f"{bgr.shape[1]}x{bgr.shape[0]} px")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def decode_frame(format: str, data: bytes | memoryview,  # noqa: A002 (ROS field name)
                 max_pixels: int = MAX_DECODE_PIXELS) -> np.ndarray:
    """What the policy node does with a CompressedImage's bytes: the arrival checks of `EncodedFrame`, then its
    decode. (H, W, 3) uint8 RGB or a ValueError saying why the frame is refused; any other exception is a bug
    (a fuzz target)."""
    return EncodedFrame(format, data, max_pixels).decode()


class EncodedFrame:
    """A JPEG/PNG frame kept encoded until a policy uses it. Cameras publish at 10-60 Hz but the policy reads a
    frame per chunk (a few per second): decoding only those saves most of the decode work (`bench/ros_overhead.py
    --cameras raw jpeg-eager jpeg`), and it runs on the inference thread instead of the subscription callbacks.
    The header is checked on arrival (`check_compressed`: format, codec, declared size at most `max_pixels`), so
    an oversized or unreadable frame never reaches the buffer; a corrupt body surfaces when the frame is decoded
    (`decode` raises ValueError, and ObservationBuffer.assemble drops the frame)."""

    def __init__(self, format: str, data: bytes | memoryview,  # noqa: A002 (ROS field name)
                 max_pixels: int = MAX_DECODE_PIXELS):
        self.height, self.width = check_compressed(format, data, max_pixels)   # declared, px
        self.format, self.data, self.max_pixels = format, data, max_pixels
        self._lock = threading.Lock()
        self._rgb: np.ndarray | None = None
        self._error = ""

    def decode(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB, decoded once (read-only: every use shares it); a corrupt frame raises every time."""
        with self._lock:
            if self._rgb is None and not self._error:
                try:
                    self._rgb = decode_compressed(self.format, self.data, self.max_pixels)
                    self._rgb.flags.writeable = False
                except Exception as error:   # ValueError by contract; anything else drops the frame as well
                    self._error = str(error) if isinstance(error, ValueError) else f"{_error_name(error)}: {error}"
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
