"""What the policy consumes, and the checks that turn bad input into a clear ValueError."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gem_ros.core.policy.config import IOSchema


@dataclass
class Observation:
    images: dict[str, np.ndarray]   # camera name -> (H, W, 3) uint8 RGB
    state: np.ndarray               # (state_dim,) float, raw units (rad, m)
    instruction: str


def validate_observation(obs: Observation, schema: IOSchema) -> None:
    """Raise ValueError naming the first problem; the caller holds the robot still."""
    expected, given = schema.camera_names, sorted(obs.images)
    missing = [name for name in expected if name not in obs.images]
    extra = [name for name in given if name not in expected]
    if missing or extra:
        raise ValueError(f"camera names do not match the checkpoint: missing {missing}, unexpected {extra} "
                         f"(expected {expected})")
    for cam in schema.cameras:
        image = obs.images[cam.name]
        if not isinstance(image, np.ndarray):
            raise ValueError(f"camera '{cam.name}': image must be a numpy array, got {type(image).__name__}")
        if image.dtype != np.uint8:
            raise ValueError(f"camera '{cam.name}': image dtype must be uint8 RGB, got {image.dtype}")
        if image.shape != (cam.height, cam.width, 3):
            raise ValueError(f"camera '{cam.name}': image shape {image.shape} != expected "
                             f"{(cam.height, cam.width, 3)} (H, W, 3)")
    state = np.asarray(obs.state)
    if state.ndim != 1 or state.shape[0] != schema.state_dim:
        raise ValueError(f"state must be a vector of length {schema.state_dim}, got shape {state.shape}")
    if not np.issubdtype(state.dtype, np.number):
        raise ValueError(f"state must be numeric, got dtype {state.dtype}")
    if not np.all(np.isfinite(state)):
        bad = np.nonzero(~np.isfinite(state))[0].tolist()
        names = [schema.state_names[i] for i in bad] if schema.state_names else bad
        raise ValueError(f"state contains NaN/Inf at {names}")
    if not isinstance(obs.instruction, str) or not obs.instruction.strip():
        raise ValueError("instruction is empty: the policy needs a language instruction")
