"""Chunk sampling for GEM-VLA training (gem_reference §9): one sample per step of every episode.

Sample t of an episode: images[t] of each configured camera (resized to what the policy expects, or kept at the
camera's native size), state[t], actions[t : t + chunk_len] padded with the episode's last action, one instruction
picked at random. Raw (un-normalised) values: the policy's normalizer does that, so train and serve share it.

Loading: actions/states of all episodes are read once (small); frames are read and decoded per item from
HDF5 files that each DataLoader worker opens itself (handles are never shared across processes).

Random draws (dropout, shift, colour jitter, corruptions, state noise, instruction) come from a generator seeded by
(seed, epoch, sample index) alone, never from state that accumulates: a run resumed after a kill -9, with any
num_workers or process count, sees the same augmented sample wherever and whenever it is loaded.
"""
from __future__ import annotations

import math

import os
import random
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from gem_ros.core.policy.config import CAMERA_DROPOUTS
from gem_train.data.augment import color_jitter, random_shift_offset, reference_augment, scale_offset, shift
from gem_train.data.depth import depth_target
from gem_train.data.episodes import EpisodeData, read_episode
from gem_train.grounding import episode_target

Size = tuple[int, int]
_AUGMENT_STREAM = 4      # keeps these seeds apart from the sampler's and the noise's (gem_train.checkpointing)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass
class ChunkDatasetConfig:
    camera_names: list[str]                      # policy camera order (IOSchema.camera_names)
    chunk_len: int = 32                          # actions per sample (IOSchema.chunk_len)
    image_size: Size | dict[str, Size] = (224, 224)   # (H, W) for every camera, or per camera
    state_names: list[str] = field(default_factory=list)    # if set, episodes that name theirs must match
    action_names: list[str] = field(default_factory=list)
    image_drop_prob: float = 0.0                 # per camera (GEM trains with 0.1); see camera_dropout
    # What a dropped camera becomes: "blank" a black image in its place (one image span per camera, always), or
    # "remove" no image at all, the prompt holds only the cameras kept (the reference: train/dataset.py).
    camera_dropout: str = "blank"
    instruction_drop_prob: float = 0.0           # instruction -> "" (GEM: 0.1, enables CFG-style dropout)
    color_jitter: bool = False                   # GEM: 50% of images get ColorJitter(0.3, 0.4, 0.5, 0.03)
    # The reference's noise / blur / JPEG corruptions (augment.image_corrupt); with color_jitter, half the images
    # get jitter, corruption or both, a third each, as the reference draws them.
    image_corruptions: bool = False
    # Frames go to the VLM processor at the camera's own size (image_size is that size): never resized here, and
    # a frame of another size is refused. The processor's smart resize (min/max pixels) is the only resize.
    native_resolution: bool = False
    # Gaussian noise (state units: rad, m) on the state the policy sees; the recorded actions stay as they are.
    # Without it a small policy copies the proprioceptive trajectory and ignores the cameras (copycat).
    state_noise_std: float = 0.0
    # Random translation of each image by up to this many px (edges replicated): the DrQ / Diffusion Policy
    # augmentation that makes a from-scratch vision encoder learn positions from fewer demonstrations.
    random_shift_px: int = 0
    depth_size: int = 0                          # square depth-target side (GEM 256); 0 = no depth targets
    max_depth_m: float = 4.0                     # metric depth beyond this is background
    seed: int = 0
    max_open_files: int = 32                     # per worker; least recently used files are closed
    # Keep every episode's camera frames decoded in RAM after first use (uint8; ~100 KB per 128 px frame pair):
    # a random-access sample then costs no file open or decompression. Per process, so meant for num_workers 0.
    cache_frames: bool = False
    # "delta_joint" policies: each action channel named like a state channel is stored as (target - state at the
    # observation), the executor's delta_reference "observation"; other channels (the gripper) stay absolute.
    relative_to_state: bool = False

    def __post_init__(self) -> None:
        self.camera_names = list(self.camera_names)
        _require(len(self.camera_names) > 0 and len(set(self.camera_names)) == len(self.camera_names),
                 f"camera_names must be non-empty and unique, got {self.camera_names}")
        _require(isinstance(self.chunk_len, int) and self.chunk_len > 0, f"chunk_len must be > 0, got {self.chunk_len}")
        sizes = self.image_size if isinstance(self.image_size, dict) \
            else {c: self.image_size for c in self.camera_names}
        missing = [c for c in self.camera_names if c not in sizes]
        _require(not missing, f"image_size has no entry for cameras {missing}")
        self.image_size = {c: tuple(int(v) for v in sizes[c]) for c in self.camera_names}
        for cam, size in self.image_size.items():
            _require(len(size) == 2 and min(size) >= 8, f"image_size['{cam}'] must be (H, W) >= 8 px, got {size}")
        for key in ("image_drop_prob", "instruction_drop_prob"):
            _require(0.0 <= getattr(self, key) < 1.0, f"{key} must be in [0, 1), got {getattr(self, key)}")
        _require(self.camera_dropout in CAMERA_DROPOUTS,
                 f"camera_dropout must be one of {CAMERA_DROPOUTS}, got {self.camera_dropout!r}")
        _require(isinstance(self.depth_size, int) and self.depth_size >= 0,
                 f"depth_size must be an int >= 0, got {self.depth_size!r}")
        _require(math.isfinite(self.state_noise_std) and self.state_noise_std >= 0.0,
                 f"state_noise_std must be finite and >= 0, got {self.state_noise_std}")
        _require(isinstance(self.random_shift_px, int) and self.random_shift_px >= 0,
                 f"random_shift_px must be an int >= 0, got {self.random_shift_px!r}")
        _require(self.max_depth_m > 0, f"max_depth_m must be > 0, got {self.max_depth_m}")
        _require(self.max_open_files >= 1, f"max_open_files must be >= 1, got {self.max_open_files}")
        _require(not self.relative_to_state or (self.state_names and self.action_names),
                 "relative_to_state needs state_names and action_names to pair action and state channels by name")

    @property
    def relative_pairs(self) -> list[tuple[int, int]]:
        """(action index, state index) of the channels stored relative to the observed state."""
        if not self.relative_to_state:
            return []
        return [(a, self.state_names.index(n)) for a, n in enumerate(self.action_names) if n in self.state_names]

    @classmethod
    def from_io_schema(cls, io, **overrides) -> ChunkDatasetConfig:
        """Cameras, sizes, chunk length and channel names from a policy's `IOSchema`."""
        values = dict(camera_names=io.camera_names, chunk_len=io.chunk_len,
                      image_size={c.name: (c.height, c.width) for c in io.cameras},
                      state_names=list(io.state_names), action_names=list(io.action_names),
                      relative_to_state=io.action_space == "delta_joint")
        return cls(**{**values, **overrides})


class ChunkDataset(Dataset):
    """`episodes`: HDF5 paths (ours or GEM reference) and/or `EpisodeData` (LeRobot, in-memory arrays).

    Give HDF5 episodes as paths: each worker then opens its own handles. An `EpisodeData` from
    `read_episode(lazy=True)` holds an open h5py file, which cannot be sent to spawned workers.

    `dataset[index]` draws as epoch 0; `dataset[(index, epoch)]` draws afresh per epoch, which is what
    `EpochBatchSampler(..., with_epoch=True)` asks for in training.
    """

    draws_by_epoch = True    # __getitem__ takes (index, epoch) keys

    def __init__(self, episodes: Sequence[Path | str | EpisodeData], cfg: ChunkDatasetConfig) -> None:
        self.cfg = cfg
        self._sources: list[Path | EpisodeData] = []
        self._actions: list[np.ndarray] = []
        self._states: list[np.ndarray] = []
        self._instructions: list[list[str]] = []
        self.episode_meta: list[dict] = []         # per episode, as its reader gives it (source, recording extras)
        self.episode_targets: list[np.ndarray | None] = []   # named object xy per episode (gem_train.grounding)
        for item in episodes:
            if isinstance(item, EpisodeData):
                self._add(item, item)
            else:
                with read_episode(item) as episode:
                    self._add(Path(item), episode)
        _require(len(self._sources) > 0, "ChunkDataset needs at least one episode")
        self._ends = np.cumsum([a.shape[0] for a in self._actions])
        self._reset_process_state()

    def _add(self, source: Path | EpisodeData, episode: EpisodeData) -> None:
        where = source if isinstance(source, Path) else episode.meta.get("source", f"episode #{len(self._sources)}")
        missing = [c for c in self.cfg.camera_names if c not in episode.images]
        _require(not missing, f"{where}: no images for cameras {missing} (has {episode.camera_names})")
        for key, wanted in (("state_names", self.cfg.state_names), ("action_names", self.cfg.action_names)):
            have = list(episode.meta.get(key) or [])
            _require(not wanted or not have or have == list(wanted), f"{where}: {key} {have} != configured {wanted}")
        if self._actions:
            _require(episode.actions.shape[1] == self._actions[0].shape[1] and
                     episode.states.shape[1] == self._states[0].shape[1],
                     f"{where}: action/state dims {episode.actions.shape[1]}/{episode.states.shape[1]} differ from "
                     f"the first episode's {self._actions[0].shape[1]}/{self._states[0].shape[1]}")
        self._sources.append(source)
        self._actions.append(episode.actions)
        self._states.append(episode.states)
        self._instructions.append(list(episode.instructions))
        self.episode_meta.append(dict(episode.meta))
        self.episode_targets.append(episode_target(episode.meta, str(where)))

    # ------------------------------------------------------------------ per-process state (workers)
    def _reset_process_state(self) -> None:
        self._pid = os.getpid()
        self._open: OrderedDict[int, EpisodeData] = OrderedDict()
        self._frames: dict[tuple[int, str], np.ndarray] = {}

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_open=OrderedDict(), _pid=-1, _frames={})
        return state

    def _episode(self, k: int) -> EpisodeData:
        if self._pid != os.getpid():    # forked worker: inherited handles belong to the parent
            self._reset_process_state()
        source = self._sources[k]
        if isinstance(source, EpisodeData):
            return source
        if k in self._open:
            self._open.move_to_end(k)
            return self._open[k]
        self._open[k] = read_episode(source)
        while len(self._open) > self.cfg.max_open_files:
            self._open.popitem(last=False)[1].close()
        return self._open[k]

    def sample_rng(self, index: int, epoch: int) -> np.random.Generator:
        """The generator of every random draw of sample `index` in `epoch`: a pure function of its arguments."""
        return np.random.default_rng([self.cfg.seed, _AUGMENT_STREAM, epoch, index])

    # ------------------------------------------------------------------ sampling
    def __len__(self) -> int:
        return int(self._ends[-1])

    def episode_span(self, k: int) -> tuple[int, int]:
        """(first sample index, number of samples) of episode k."""
        start = int(self._ends[k - 1]) if k else 0
        return start, int(self._ends[k]) - start

    def locate(self, index: int) -> tuple[int, int]:
        """(episode number, step) of a sample index."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        k = int(np.searchsorted(self._ends, index, side="right"))
        return k, index - (int(self._ends[k - 1]) if k else 0)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, epoch = (int(key[0]), int(key[1])) if isinstance(key, tuple) else (int(key), 0)
        k, t = self.locate(index)
        cfg, rng = self.cfg, self.sample_rng(index, epoch)
        actions = self._actions[k]
        chunk = actions[t:t + cfg.chunk_len]
        if chunk.shape[0] < cfg.chunk_len:       # past the end the robot holds the last target
            chunk = np.concatenate([chunk, np.repeat(actions[-1:], cfg.chunk_len - chunk.shape[0], axis=0)])
        images, kept, dropped, shifts = [], [], [], []
        for cam in cfg.camera_names:
            h, w = cfg.image_size[cam]
            image = self._frame(k, cam, t)
            if image.shape[:2] != (h, w):
                _require(not cfg.native_resolution,
                         f"{self._where(k)}: camera '{cam}' frame {t} is {image.shape[1]} x {image.shape[0]} px, not "
                         f"the configured native {w} x {h} (native resolution never resizes in training)")
                image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
            drop = cfg.image_drop_prob > 0 and rng.random() < cfg.image_drop_prob
            offset = (0, 0)
            # A blanked image keeps the prompt layout (one image span per camera), so depth targets stay aligned.
            if drop:
                image = np.zeros_like(image)
            else:
                if cfg.random_shift_px:
                    offset = random_shift_offset(cfg.random_shift_px, rng)
                    image = shift(image, offset)
                if cfg.image_corruptions:
                    image = reference_augment(image, rng, color=cfg.color_jitter, corrupt=True)
                elif cfg.color_jitter and rng.random() < 0.5:
                    image = color_jitter(image, rng)
            if not (drop and cfg.camera_dropout == "remove"):
                images.append(np.ascontiguousarray(image))
                kept.append(cam)
            dropped.append(drop)
            shifts.append((offset, (h, w)))
        instructions = self._instructions[k]
        instruction = instructions[int(rng.integers(len(instructions)))]
        if cfg.instruction_drop_prob > 0 and rng.random() < cfg.instruction_drop_prob:
            instruction = ""
        state = self._states[k][t].astype(np.float32)
        if cfg.state_noise_std > 0:
            state = state + rng.normal(0.0, cfg.state_noise_std, state.shape).astype(np.float32)
        sample = {"images": images, "image_cameras": kept, "state": state, "actions": self._relative(chunk, k, t),
                  "instruction": instruction, "episode": k, "step": t}
        if self.episode_targets[k] is not None:   # a dropped instruction names no object: nothing to ground
            sample["target_xy"], sample["target_valid"] = self.episode_targets[k], bool(instruction)
        if cfg.depth_size:
            episode = self._episode(k)
            targets, valid = [], []
            for cam, drop, (offset, image_shape) in zip(cfg.camera_names, dropped, shifts):
                frames = (episode.depth or {}).get(cam)
                if frames is None or drop:
                    targets.append(np.zeros((3, cfg.depth_size, cfg.depth_size), np.float32))
                    valid.append(False)
                    continue
                frame = np.asarray(frames[t])
                # The depth the policy must generate is of the image it saw: the same random shift.
                frame = shift(frame, scale_offset(offset, image_shape, frame.shape[:2]))
                target, ok = depth_target(frame, cfg.depth_size, cfg.max_depth_m,
                                          episode.depth_kind.get(cam, "metric"))
                targets.append(target)
                valid.append(ok)
            if cfg.camera_dropout == "remove":   # target i belongs to image span i: kept cameras first, in order
                order = [i for i, d in enumerate(dropped) if not d] + [i for i, d in enumerate(dropped) if d]
                targets, valid = [targets[i] for i in order], [valid[i] for i in order]
            sample["depth"], sample["depth_valid"] = np.stack(targets), np.array(valid)
        return sample

    def _where(self, k: int) -> str:
        source = self._sources[k]
        return str(source) if isinstance(source, Path) else str(self.episode_meta[k].get("source", f"episode #{k}"))

    def _frame(self, k: int, cam: str, t: int) -> np.ndarray:
        if not self.cfg.cache_frames:
            return np.asarray(self._episode(k).images[cam][t])
        # A cached episode is not opened again: with more episodes than max_open_files, reopening the HDF5 file
        # for every sample cost more than the rest of the sample (2.6 ms).
        frames = self._frames.get((k, cam))
        if frames is None:
            frames = self._frames[(k, cam)] = np.asarray(self._episode(k).images[cam][:])
        return frames[t]

    def _relative(self, chunk: np.ndarray, k: int, t: int) -> np.ndarray:
        chunk = np.array(chunk, dtype=np.float32)
        for a, s in self.cfg.relative_pairs:
            chunk[:, a] -= self._states[k][t, s]
        return chunk

    def episode_arrays(self):
        """(actions, states) per episode as the policy sees them; used by `compute_stats`. With relative actions
        every (step, chunk offset) pair is one action row, so the normalizer covers the whole chunk."""
        if not self.cfg.relative_pairs:
            return list(zip(self._actions, self._states))
        arrays = []
        for k, (actions, states) in enumerate(zip(self._actions, self._states)):
            rows = [self._relative(np.take(actions, np.arange(t, t + self.cfg.chunk_len), axis=0, mode="clip"), k, t)
                    for t in range(len(actions))]
            arrays.append((np.concatenate(rows), states))
        return arrays

    @property
    def num_episodes(self) -> int:
        return len(self._sources)


def collate_batch(samples: list[dict[str, Any]]):
    """List of samples -> `TrainingBatch` (images stay uint8 numpy: the VLM processor resizes/patches them)."""
    from gem_ros.core.policy.gem_vla import TrainingBatch   # heavy import (transformers), paid once per process

    depth = depth_valid = None
    if samples and all("depth" in s for s in samples):
        depth = torch.from_numpy(np.stack([s["depth"] for s in samples]))
        depth_valid = torch.from_numpy(np.stack([s["depth_valid"] for s in samples]))
    target_xy = target_valid = None
    if samples and all("target_xy" in s for s in samples):
        target_xy = torch.from_numpy(np.stack([s["target_xy"] for s in samples]))
        target_valid = torch.tensor([s["target_valid"] for s in samples], dtype=torch.bool)
    return TrainingBatch(images=[s["images"] for s in samples], instructions=[s["instruction"] for s in samples],
                         state=torch.from_numpy(np.stack([s["state"] for s in samples])),
                         actions=torch.from_numpy(np.stack([s["actions"] for s in samples])),
                         depth=depth, depth_valid=depth_valid, target_xy=target_xy, target_valid=target_valid)


def split_episodes(paths: Sequence[Any], val_fraction: float, seed: int = 0) -> tuple[list, list]:
    """Deterministic held-out split by episode (never by step: neighbouring steps are near duplicates).
    At least one validation episode when val_fraction > 0 and there are two or more episodes."""
    _require(0.0 <= val_fraction < 1.0, f"val_fraction must be in [0, 1), got {val_fraction}")
    items = list(paths)
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_val = int(round(val_fraction * len(items)))
    if val_fraction > 0 and len(items) >= 2:
        n_val = min(max(n_val, 1), len(items) - 1)
    val_ids = set(order[:n_val])
    return ([x for i, x in enumerate(items) if i not in val_ids], [x for i, x in enumerate(items) if i in val_ids])
