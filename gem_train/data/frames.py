"""Lazy frame sequences: one image decoded per access, so a loader worker holds a frame, not an episode.

A "frame sequence" is anything with `len()` and `[i] -> np.ndarray`; a plain (N, H, W, ...) array qualifies.
The classes here wrap an HDF5 dataset (raw pixels or encoded JPEG/PNG bytes), a list of encoded bytes, or a
segment of a video file. All return RGB uint8 (H, W, 3) for colour images and the stored dtype for depth.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np

from gem_ros.core.lru import LRUCache


def decode_image_bytes(buffer: bytes, color: bool, swap_rb: bool) -> np.ndarray:
    """JPEG/PNG bytes -> array. `color` forces 3 channels; otherwise the stored depth (8/16 bit) is kept."""
    image = cv2.imdecode(np.frombuffer(buffer, np.uint8), cv2.IMREAD_COLOR if color else cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"cannot decode {len(buffer)} bytes as an image")
    if swap_rb and image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image


def _as_bytes(raw) -> bytes:
    # h5py gives numpy.bytes_ for fixed-length strings (|S40718, trailing NULs stripped), bytes for vlen
    # bytes, and a 1-D uint8 array for vlen uint8 or a zero-padded (N, L) uint8 dataset.
    return raw.tobytes() if isinstance(raw, np.ndarray) else bytes(raw)


def is_encoded(dtype: np.dtype, ndim: int) -> bool:
    """True for datasets that hold one encoded image per row rather than pixels."""
    return dtype.kind in "SOV" or (dtype == np.uint8 and ndim == 2)


class H5Frames:
    """Frames of an open h5py dataset: (N, H, W[, C]) pixels, or (N,) / (N, L) encoded images.

    swap_rb: convert decoded BGR to RGB. GEM/RDT/ALOHA pipelines encode RGB arrays with cv2.imencode and decode
    with cv2.imdecode without a swap, so for their files the bytes already decode to RGB (swap_rb=False).
    """

    def __init__(self, dataset, color: bool = True, swap_rb: bool = False) -> None:
        self.dataset, self.color, self.swap_rb = dataset, color, swap_rb
        self.encoded = is_encoded(dataset.dtype, dataset.ndim)

    def __len__(self) -> int:
        return int(self.dataset.shape[0])

    def __getitem__(self, index: int) -> np.ndarray:
        raw = self.dataset[index]
        if not self.encoded:
            return raw
        return decode_image_bytes(_as_bytes(raw), self.color, self.swap_rb)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        frames = self.dataset[()] if not self.encoded else np.stack([self[i] for i in range(len(self))])
        return frames if dtype is None else frames.astype(dtype)


class EncodedFrames:
    """A list of encoded images kept compressed in RAM (e.g. PNG bytes of a LeRobot `image` feature)."""

    def __init__(self, buffers: list[bytes], color: bool = True, swap_rb: bool = True) -> None:
        self.buffers, self.color, self.swap_rb = list(buffers), color, swap_rb

    def __len__(self) -> int:
        return len(self.buffers)

    def __getitem__(self, index: int) -> np.ndarray:
        return decode_image_bytes(self.buffers[index], self.color, self.swap_rb)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        frames = np.stack([self[i] for i in range(len(self))])
        return frames if dtype is None else frames.astype(dtype)


class SegmentCache(LRUCache):
    """LRU of decoded video segments shared by the `VideoFrames` of one dataset.

    Decoding a whole segment once is far cheaper than seeking per frame in a long-GOP video. Pickling (to a
    DataLoader worker) drops the decoded frames: each worker decodes what it needs.
    """

    def __init__(self, capacity: int = 8) -> None:
        super().__init__(capacity)

    def __getstate__(self) -> dict:
        return {"capacity": self.capacity, "_items": OrderedDict()}


class VideoFrames:
    """Frames [start, start + length) of a video file (e.g. a LeRobot v3 mp4 holding several episodes)."""

    def __init__(self, path: Path, start: int, length: int, cache: SegmentCache | None = None) -> None:
        if start < 0 or length < 1:
            raise ValueError(f"{path}: bad segment start={start} length={length}")
        self.path, self.start, self.length = Path(path), int(start), int(length)
        self.cache = cache or SegmentCache(1)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> np.ndarray:
        return self._segment()[index]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        frames = self._segment()
        return frames if dtype is None else frames.astype(dtype)

    def _segment(self) -> np.ndarray:
        return self.cache.get((str(self.path), self.start, self.length), self._decode)

    def _decode(self) -> np.ndarray:
        capture = cv2.VideoCapture(str(self.path))
        if not capture.isOpened():
            raise ValueError(f"cannot open video {self.path}")
        try:
            if self.start:
                capture.set(cv2.CAP_PROP_POS_FRAMES, self.start)
            frames = []
            for _ in range(self.length):
                ok, frame = capture.read()
                if not ok:
                    break
                frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        finally:
            capture.release()
        if len(frames) != self.length:
            raise ValueError(f"{self.path}: wanted frames {self.start}..{self.start + self.length - 1}, "
                             f"decoded only {len(frames)}")
        return np.stack(frames)
