"""Min-max normalization of actions (and optionally states) to [-1, 1], stored beside the weights.

a' = 2 (a - min) / max(max - min, floor) - 1, i.e. a' = a * scale + offset with
scale = 2 / max(range, floor) and offset = -1 - min * scale (gem_reference §8). The floor keeps a
constant channel (e.g. an unused gripper) from dividing by zero.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save_file

RANGE_FLOOR = 1e-3


@dataclass
class MinMaxNormalizer:
    minimum: np.ndarray   # (D,) float32
    maximum: np.ndarray   # (D,) float32
    range_floor: float = RANGE_FLOOR

    def __post_init__(self) -> None:
        self.minimum = np.asarray(self.minimum, dtype=np.float32).reshape(-1)
        self.maximum = np.asarray(self.maximum, dtype=np.float32).reshape(-1)
        if self.minimum.shape != self.maximum.shape:
            raise ValueError(f"normalizer min {self.minimum.shape} and max {self.maximum.shape} differ in shape")
        if not (np.all(np.isfinite(self.minimum)) and np.all(np.isfinite(self.maximum))):
            raise ValueError("normalizer statistics contain NaN or Inf")
        if np.any(self.maximum < self.minimum):
            raise ValueError(f"normalizer max < min at channels {np.nonzero(self.maximum < self.minimum)[0].tolist()}")
        if not self.range_floor > 0:
            raise ValueError(f"normalizer range_floor must be > 0, got {self.range_floor}")

    @classmethod
    def identity(cls, dim: int) -> MinMaxNormalizer:
        return cls(-np.ones(dim, np.float32), np.ones(dim, np.float32))

    @classmethod
    def fit(cls, data: np.ndarray) -> MinMaxNormalizer:
        """Statistics over all rows of `data` (..., D)."""
        flat = np.asarray(data, dtype=np.float64).reshape(-1, np.shape(data)[-1])
        return cls(flat.min(axis=0), flat.max(axis=0))

    @property
    def dim(self) -> int:
        return int(self.minimum.shape[0])

    @property
    def scale(self) -> np.ndarray:
        return (2.0 / np.maximum(self.maximum - self.minimum, self.range_floor)).astype(np.float32)

    @property
    def offset(self) -> np.ndarray:
        return (-1.0 - self.minimum * self.scale).astype(np.float32)

    # Written around `min` rather than as x * scale + offset: same map, but no float32 cancellation when a
    # floored channel has a huge scale.
    def normalize(self, x):
        return (x - self._like(self.minimum, x)) * self._like(self.scale, x) - 1

    def unnormalize(self, x):
        return (x + 1) / self._like(self.scale, x) + self._like(self.minimum, x)

    @staticmethod
    def _like(value: np.ndarray, x):
        if isinstance(x, torch.Tensor):
            return torch.as_tensor(value, device=x.device, dtype=x.dtype)
        return value

    def state_dict(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}.min": self.minimum, f"{prefix}.max": self.maximum}

    @classmethod
    def from_state_dict(cls, tensors: dict[str, np.ndarray], prefix: str, range_floor: float) -> MinMaxNormalizer:
        missing = [k for k in (f"{prefix}.min", f"{prefix}.max") if k not in tensors]
        if missing:
            raise ValueError(f"normalizer file lacks {missing}")
        return cls(tensors[f"{prefix}.min"], tensors[f"{prefix}.max"], range_floor)


def save_normalizers(path: Path, normalizers: dict[str, MinMaxNormalizer]) -> None:
    tensors: dict[str, np.ndarray] = {}
    for key, normalizer in normalizers.items():
        tensors.update(normalizer.state_dict(key))
    floors = {key: n.range_floor for key, n in normalizers.items()}
    save_file(tensors, str(path), metadata={"kind": "minmax", "range_floor": json.dumps(floors)})


def load_normalizers(path: Path) -> dict[str, MinMaxNormalizer]:
    """Every statistic of a normalizer file; any fault is a ValueError that names the file and the key."""
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, RuntimeError, ValueError) as error:
        raise ValueError(f"{path}: not a safetensors file, or corrupt or truncated ({error})") from error
    if metadata.get("kind") != "minmax":
        raise ValueError(f"{path} is not a min-max normalizer file (metadata kind={metadata.get('kind')!r})")
    try:
        floors = json.loads(metadata.get("range_floor", "{}"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: metadata range_floor is not JSON ({error})") from error
    if not isinstance(floors, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                               for v in floors.values()):
        raise ValueError(f"{path}: metadata range_floor must map each key to a number, got {floors!r}")
    normalizers = {}
    for key, floor in floors.items():
        for name in (f"{key}.min", f"{key}.max"):
            tensor = tensors.get(name)
            if tensor is not None and (tensor.ndim != 1 or not np.issubdtype(tensor.dtype, np.floating)):
                raise ValueError(f"{path}: '{name}' must be a 1-D float vector, got {tensor.dtype} {tensor.shape}")
        try:
            normalizers[key] = MinMaxNormalizer.from_state_dict(tensors, key, float(floor))
        except ValueError as error:
            raise ValueError(f"{path}: '{key}' statistics: {error}") from error
    return normalizers
