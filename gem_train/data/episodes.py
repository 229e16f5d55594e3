"""Our episode format (GEM reference HDF5 layout + attributes), its writer, and one entry point for all readers.

`episode_<k>.hdf5`, one file per episode, readable by GEM's own loader (same dataset names):

    action                         (N, A) float32   absolute targets, row t is applied after observation t
    observations/state             (N, S) float32   robot state at step t (state_names order)
    observations/images/<cam>      (N, H, W, 3) uint8 RGB, chunked one frame per chunk, gzip/lzf
    observations/depth/<cam>       (N, H, W) float32 metres (optional; rendered or sensor depth)
    observations/depth_estimated/<cam>  (N, H, W) float32 (optional; gem_depth_targets), attr kind: "disparity"
                                   (relative inverse depth) or "metric"; read only for cameras without measured depth
    root attrs: format, format_version, instruction (str), instructions (json list), control_rate_hz,
                state_names, action_names, camera_names (json lists), action_space, extra (json dict)

Files are written as `<name>.tmp` and renamed on success (`os.replace`), so a crash never leaves a partial
`.hdf5`; readers only list `*.hdf5`. Other sources read into the same `EpisodeData`: GEM reference HDF5 task
dirs (`gem_hdf5`) and LeRobot v3 datasets (`lerobot`).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import h5py
import numpy as np

from gem_train.data.depth import DEPTH_KINDS
from gem_train.data.frames import H5Frames

FORMAT = "gem_ros.episode"
FORMAT_VERSION = 1
TMP_SUFFIX = ".tmp"
COMPRESSIONS = ("gzip", "lzf", "none")
_RESERVED_META = ("control_rate_hz", "state_names", "action_names", "action_space", "camera_names")


@dataclass(eq=False)
class EpisodeData:
    """One episode from any source. Frame sequences may be arrays or lazy readers (see `frames`)."""

    actions: np.ndarray                      # (N, A) float32
    states: np.ndarray                       # (N, S) float32
    images: Mapping[str, Any]                # camera -> (N, H, W, 3) uint8 frame sequence
    instructions: list[str]                  # >= 1; samplers pick one at random
    depth: Mapping[str, Any] | None = None   # camera -> (N, H, W) float metres or (N, H, W[, 3]) uint8/16
    meta: dict[str, Any] = field(default_factory=dict)   # control_rate_hz, state_names, action_names, ...
    depth_kind: dict[str, str] = field(default_factory=dict)  # camera -> DEPTH_KINDS entry of float depth; default metric
    _handles: list = field(default_factory=list, repr=False)  # open files, closed by close()

    def __post_init__(self) -> None:
        self.actions = np.asarray(self.actions, dtype=np.float32)
        self.states = np.asarray(self.states, dtype=np.float32)
        if self.actions.ndim != 2 or self.states.ndim != 2:
            raise ValueError(f"actions and states must be 2-D, got {self.actions.shape} and {self.states.shape}")
        n = self.actions.shape[0]
        if n < 1 or self.states.shape[0] != n:
            raise ValueError(f"actions ({n} rows) and states ({self.states.shape[0]} rows) must be equal and >= 1")
        if isinstance(self.instructions, str):
            self.instructions = [self.instructions]
        self.instructions = list(self.instructions)
        if not self.instructions or not all(isinstance(s, str) for s in self.instructions):
            raise ValueError(f"instructions must be a non-empty list of strings, got {self.instructions!r}")
        self.images = dict(self.images)
        self.depth = dict(self.depth) if self.depth else None
        for kind, frames in (("images", self.images), ("depth", self.depth or {})):
            for cam, seq in frames.items():
                if len(seq) != n:
                    raise ValueError(f"{kind}['{cam}'] has {len(seq)} frames but the episode has {n} steps")
        unknown = sorted(set(self.depth or {}) - set(self.images))
        if unknown:
            raise ValueError(f"depth cameras {unknown} have no colour images")
        self.depth_kind = dict(self.depth_kind or {})
        bad = {c: k for c, k in self.depth_kind.items() if c not in (self.depth or {}) or k not in DEPTH_KINDS}
        if bad:
            raise ValueError(f"depth_kind {bad}: cameras must have depth and kinds be one of {DEPTH_KINDS}")

    @property
    def instruction(self) -> str:
        return self.instructions[0]

    @property
    def num_steps(self) -> int:
        return int(self.actions.shape[0])

    @property
    def camera_names(self) -> list[str]:
        return list(self.images)

    def close(self) -> None:
        for handle in self._handles:
            handle.close()
        self._handles.clear()

    def __enter__(self) -> EpisodeData:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EpisodeWriter:
    """Streams one episode step by step into `<path>.tmp`; `close()` renames it to `path`.

    Used as a context manager, an exception inside the block deletes the scratch file (nothing is left). A
    hard crash (kill, power loss) leaves only `<path>.tmp`, which every reader ignores.
    """

    def __init__(self, path: Path | str, *, instructions: str | Sequence[str], control_rate_hz: float,
                 camera_names: Sequence[str], state_names: Sequence[str] = (), action_names: Sequence[str] = (),
                 action_space: str = "absolute_joint", extra: Mapping[str, Any] | None = None,
                 compression: str = "gzip", depth_kinds: Mapping[str, str] | None = None) -> None:
        self.path = Path(path)
        if self.path.suffix != ".hdf5":
            raise ValueError(f"path must end in .hdf5, got {self.path}")
        if self.path.exists():
            raise ValueError(f"{self.path} exists; episodes are never overwritten")
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
        if not (isinstance(control_rate_hz, (int, float)) and np.isfinite(control_rate_hz) and control_rate_hz > 0):
            raise ValueError(f"control_rate_hz must be a finite number > 0, got {control_rate_hz!r}")
        instructions = [instructions] if isinstance(instructions, str) else list(instructions)
        if not instructions:
            raise ValueError("instructions must not be empty")
        self.camera_names = list(camera_names)
        self.depth_kinds = dict(depth_kinds or {})   # camera -> kind; non-metric goes to observations/depth_estimated
        bad = {c: k for c, k in self.depth_kinds.items() if c not in self.camera_names or k not in DEPTH_KINDS}
        if bad:
            raise ValueError(f"depth_kinds {bad}: unknown cameras or kinds (one of {DEPTH_KINDS})")
        self._compression = None if compression == "none" else compression
        self._opts = {"compression_opts": 4} if compression == "gzip" else {}
        self.tmp_path = self.path.with_name(self.path.name + TMP_SUFFIX)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = h5py.File(self.tmp_path, "w")
        attrs = self._file.attrs
        attrs.update(format=FORMAT, format_version=FORMAT_VERSION, instruction=instructions[0],
                     instructions=json.dumps(instructions), control_rate_hz=float(control_rate_hz),
                     state_names=json.dumps(list(state_names)), action_names=json.dumps(list(action_names)),
                     camera_names=json.dumps(self.camera_names), action_space=action_space,
                     extra=json.dumps(dict(extra or {})))
        self.num_steps = 0
        self._datasets: dict[str, h5py.Dataset] = {}
        self._counts: dict[str, int] = {}          # rows written per dataset
        self.finished = False                      # closed or aborted

    def _append(self, name: str, value: np.ndarray, dtype, per_frame_chunks: bool) -> None:
        value = np.asarray(value, dtype=dtype)
        ds = self._datasets.get(name)
        if ds is None:
            # Frames: one chunk each, so a sample decodes exactly one frame. Low-dim rows: ~16 KB chunks.
            chunks = (1, *value.shape) if per_frame_chunks else (min(256, max(1, 4096 // max(1, value.size))),
                                                                  *value.shape)
            ds = self._file.create_dataset(name, shape=(0, *value.shape), maxshape=(None, *value.shape),
                                           dtype=dtype, chunks=chunks, compression=self._compression,
                                           shuffle=self._compression is not None and dtype == np.float32,
                                           **self._opts)
            self._datasets[name] = ds
            self._counts[name] = 0
        elif ds.shape[1:] != value.shape:
            raise ValueError(f"{name}: step {self.num_steps} has shape {value.shape}, earlier steps {ds.shape[1:]}")
        row = self._counts[name]
        if row != self.num_steps:
            raise ValueError(f"{name}: given at step {self.num_steps} but missing at earlier steps")
        if ds.shape[0] <= row:   # grow geometrically; trimmed to num_steps in close()
            ds.resize(max(16, 2 * ds.shape[0]), axis=0)
        ds[row] = value
        self._counts[name] = row + 1

    def add_step(self, images: Mapping[str, np.ndarray], state: np.ndarray, action: np.ndarray,
                 depth: Mapping[str, np.ndarray] | None = None) -> None:
        """One step: RGB (H, W, 3) uint8 per camera, state (S,), action (A,), optional depth (H, W) metres."""
        missing = [c for c in self.camera_names if c not in images]
        if missing:
            raise ValueError(f"step {self.num_steps} lacks images for cameras {missing}")
        rows = []   # validated before anything is written, so a rejected step leaves the file consistent
        for cam in self.camera_names:
            image = np.asarray(images[cam])
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"camera '{cam}' image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
            rows.append((f"observations/images/{cam}", image, np.uint8, True))
        for cam, frame in (depth or {}).items():
            if cam not in self.camera_names:
                raise ValueError(f"depth for unknown camera '{cam}'")
            kind = self.depth_kinds.get(cam, "metric")
            group = "depth" if kind == "metric" else "depth_estimated"
            rows.append((f"observations/{group}/{cam}", np.asarray(frame, np.float32), np.float32, True))
        rows.append(("observations/state", np.reshape(state, -1), np.float32, False))
        rows.append(("action", np.reshape(action, -1), np.float32, False))
        for name, value, dtype, per_frame in rows:
            self._append(name, value, dtype, per_frame)
        self.num_steps += 1

    def close(self) -> Path:
        """Finish: trim, flush to disk, rename into place. Returns the final path."""
        if self.num_steps == 0:
            self.abort()
            raise ValueError(f"{self.path}: an episode needs at least one step")
        short = sorted(name for name, count in self._counts.items() if count != self.num_steps)
        if short:
            self.abort()
            raise ValueError(f"{self.path}: {short} were not given at every one of the {self.num_steps} steps")
        for ds in self._datasets.values():
            ds.resize(self.num_steps, axis=0)
        for cam, kind in self.depth_kinds.items():
            ds = self._datasets.get(f"observations/{'depth' if kind == 'metric' else 'depth_estimated'}/{cam}")
            if ds is not None:
                ds.attrs["kind"] = kind
        self._file.close()
        with open(self.tmp_path, "rb+") as f:   # the rename must never publish data still in the page cache
            os.fsync(f.fileno())
        os.replace(self.tmp_path, self.path)
        self.finished = True
        return self.path

    def abort(self) -> None:
        """Drop the scratch file (no-op once the episode was published)."""
        if self.finished:
            return
        if self._file.id.valid:
            self._file.close()
        self.tmp_path.unlink(missing_ok=True)
        self.finished = True

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.finished:
            return
        if exc_type is not None:
            self.abort()
        else:
            self.close()


def write_episode(path: Path | str, episode: EpisodeData, compression: str = "gzip") -> Path:
    """Write any `EpisodeData` in our format (meta needs control_rate_hz; names/action_space are copied)."""
    meta = episode.meta
    if "control_rate_hz" not in meta or meta["control_rate_hz"] is None:
        raise ValueError("episode.meta['control_rate_hz'] is required to write an episode (set it for GEM data)")
    extra = {k: v for k, v in meta.items() if k not in _RESERVED_META and _json_ok(v)}
    depth = episode.depth or {}
    with EpisodeWriter(path, instructions=episode.instructions, control_rate_hz=meta["control_rate_hz"],
                       camera_names=episode.camera_names, state_names=meta.get("state_names") or (),
                       action_names=meta.get("action_names") or (),
                       action_space=meta.get("action_space") or "absolute_joint", extra=extra,
                       compression=compression, depth_kinds=episode.depth_kind) as writer:
        for t in range(episode.num_steps):
            writer.add_step({c: episode.images[c][t] for c in episode.camera_names}, episode.states[t],
                            episode.actions[t], {c: d[t] for c, d in depth.items()} or None)
    return writer.path


def _json_ok(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def read_episode(path: Path | str, lazy: bool = True, jpeg_swap_rb: bool = False) -> EpisodeData:
    """Read one HDF5 episode: ours (by its `format` attr) or a GEM reference file (instructions.json beside it).

    lazy=True keeps the file open and decodes frames on access (close the result, or use it as a context
    manager); lazy=False loads every frame into RAM and closes the file.
    """
    path = Path(path)
    if path.name.endswith(TMP_SUFFIX):
        raise ValueError(f"{path} is an unfinished episode (scratch file of a writer that did not finish)")
    handle = h5py.File(path, "r")
    try:
        if handle.attrs.get("format") == FORMAT:
            episode = _read_ours(handle, path)
        else:
            from gem_train.data.gem_hdf5 import episode_from_gem_file

            episode = episode_from_gem_file(handle, path, jpeg_swap_rb)
    except BaseException:
        handle.close()
        raise
    if not lazy:
        episode.images = {c: np.asarray(f) for c, f in episode.images.items()}
        episode.depth = {c: np.asarray(f) for c, f in episode.depth.items()} if episode.depth else None
        handle.close()
    else:
        episode._handles.append(handle)
    return episode


def _read_ours(f: h5py.File, path: Path) -> EpisodeData:
    version = int(f.attrs.get("format_version", 0))
    if version > FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {version} is newer than this reader ({FORMAT_VERSION})")
    attrs = f.attrs
    cameras = json.loads(attrs["camera_names"])
    depth, depth_kind = read_depth_groups(f, cameras, ("observations/depth", "observations/depth_estimated"))
    meta = {**json.loads(attrs.get("extra", "{}")), "control_rate_hz": float(attrs["control_rate_hz"]),
            "state_names": json.loads(attrs["state_names"]), "action_names": json.loads(attrs["action_names"]),
            "action_space": str(attrs["action_space"]), "camera_names": cameras, "source": str(path),
            "source_format": FORMAT}
    return EpisodeData(actions=f["action"][()], states=f["observations/state"][()],
                       images={c: H5Frames(f[f"observations/images/{c}"]) for c in cameras},
                       instructions=json.loads(attrs.get("instructions", json.dumps([str(attrs["instruction"])]))),
                       depth=depth or None, meta=meta, depth_kind=depth_kind)


def read_depth_groups(f: h5py.File, cameras: Sequence[str], groups: Sequence[str], color: bool = False,
                      swap_rb: bool = False) -> tuple[dict[str, H5Frames], dict[str, str]]:
    """Depth frames per camera from the first group that has the camera (measured before estimated), and
    the kind of each float one (dataset attr `kind`; absent = metric)."""
    depth, kind = {}, {}
    for name in groups:
        group = f.get(name)
        for cam in cameras:
            if group is not None and cam in group and cam not in depth:
                depth[cam] = H5Frames(group[cam], color=color, swap_rb=swap_rb)
                kind[cam] = str(group[cam].attrs.get("kind", "metric"))
    return depth, kind


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def find_episodes(source: Path | str) -> list[Path] | list[EpisodeData]:
    """Episodes under `source`: a LeRobot v3 root (meta/info.json) gives lazy `EpisodeData`s; otherwise every
    finished `*.hdf5` below it (ours or GEM reference), in natural order. `.tmp` scratch files are skipped."""
    source = Path(source)
    if (source / "meta" / "info.json").is_file():
        from gem_train.data.lerobot import read_lerobot_dataset

        return read_lerobot_dataset(source)
    if source.is_file():
        return [source]
    return sorted(source.rglob("*.hdf5"), key=_natural_key)


def convert_episodes(episodes: Iterable[Path | EpisodeData], out_dir: Path | str, control_rate_hz: float | None = None,
                     compression: str = "gzip") -> list[Path]:
    """Write episodes from any reader into our format as out_dir/episode_<k>.hdf5 (e.g. LeRobot -> fast HDF5)."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    written = []
    episodes = list(episodes)
    for k, item in enumerate(tqdm(episodes, desc="convert", unit="episode")):
        episode = read_episode(item) if isinstance(item, (str, Path)) else item
        try:
            if control_rate_hz is not None:
                episode.meta["control_rate_hz"] = control_rate_hz
            written.append(write_episode(out_dir / f"episode_{k:06d}.hdf5", episode, compression))
        finally:
            if isinstance(item, (str, Path)):
                episode.close()
    return written
