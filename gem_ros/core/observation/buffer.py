"""Latest camera frames and joint states, time-aligned and freshness-checked into one policy `Observation`.

One observation describes one instant: the newest time every camera has a frame for (cameras are the slow
sensors, e.g. 10-30 Hz against 50-1000 Hz joint states). Each camera contributes its frame nearest that
instant, and each joint its position interpolated there from a short history. Pairing a 10 Hz frame with the
newest joint state instead put the images up to 0.1 s behind the state, and a policy whose delta actions are
relative to the state then aimed from where the arm was not when it saw the scene.

Subscription callbacks call `add_image` / `add_joint_state`; the inference worker calls `assemble`. They
run on different threads, so every shared field is touched under one lock, and the lock is never held
while resizing or copying pixels. Times are seconds on the clock of the message stamps (ROS time: wall or
/clock under use_sim_time); `now_s` must come from the same clock.
"""
from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from gem_ros.core.observation.images import EncodedFrame, resize_to
from gem_ros.core.policy.config import IOSchema
from gem_ros.core.policy.observation import Observation


def _names(field_name: str, names) -> list[str]:
    names = list(names)
    if not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise ValueError(f"{field_name} must be a non-empty list of non-empty strings, got {names!r}")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{field_name} has duplicate names: {duplicates}")
    return names


def _positive_finite(field_name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{field_name} must be a positive finite number of seconds, got {value!r}")
    return float(value)


@dataclass
class ObservationConfig:
    camera_names: list[str]
    joint_names: list[str]            # state vector order; matched BY NAME against incoming joint states
    max_age_s: float = 0.2            # refuse any input older than this relative to `now`, s
    max_skew_s: float = 0.05          # max distance of a frame or joint sample from the observation instant, s
    history: int = 5                  # frames kept per camera for time alignment
    # (height, width) px the policy wants per camera; cameras not listed keep their native size
    camera_sizes: dict[str, tuple[int, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.camera_names = _names("camera_names", self.camera_names)
        self.joint_names = _names("joint_names", self.joint_names)
        self.max_age_s = _positive_finite("max_age_s", self.max_age_s)
        self.max_skew_s = _positive_finite("max_skew_s", self.max_skew_s)
        if isinstance(self.history, bool) or not isinstance(self.history, int) or self.history <= 0:
            raise ValueError(f"history must be a positive integer, got {self.history!r}")
        sizes = {}
        for name, size in dict(self.camera_sizes).items():
            if name not in self.camera_names:
                raise ValueError(f"camera_sizes names unknown camera {name!r} (cameras: {self.camera_names})")
            size = tuple(size)
            if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
                raise ValueError(f"camera_sizes[{name!r}] must be (height, width) positive ints, got {size!r}")
            sizes[name] = size
        self.camera_sizes = sizes

    @classmethod
    def for_schema(cls, io: IOSchema, joint_names: Sequence[str] | None = None, **overrides) -> ObservationConfig:
        """Cameras and their sizes from a checkpoint's I/O schema; joints from `joint_names` or its state_names."""
        joints = list(joint_names) if joint_names is not None else list(io.state_names)
        if len(joints) != io.state_dim:
            raise ValueError(f"joint_names has {len(joints)} names but the checkpoint's state_dim is {io.state_dim}")
        return cls(camera_names=io.camera_names, joint_names=joints,
                   camera_sizes={c.name: (c.height, c.width) for c in io.cameras}, **overrides)


class StaleObservation(ValueError):
    """Inputs are missing, too old, out of sync or not finite; `.reasons` lists every problem found."""

    def __init__(self, reasons: Sequence[str]):
        self.reasons = list(reasons)
        super().__init__("stale observation: " + "; ".join(self.reasons))


@dataclass
class TimedObservation:
    observation: Observation
    stamp_s: float                    # the instant the observation describes (see the module docstring), s
    image_stamps: dict[str, float]    # stamp of the frame used per camera, s
    skew_s: float                     # max |image stamp - stamp_s| over cameras, and the joints' nearest sample, s


class ObservationBuffer:
    def __init__(self, config: ObservationConfig):
        self.config = config
        self._lock = threading.Lock()
        self._frames = {name: deque(maxlen=config.history) for name in config.camera_names}  # (stamp_s, image)
        self._joint_index = {name: i for i, name in enumerate(config.joint_names)}
        self._positions = np.full(len(config.joint_names), np.nan)     # rad or m, in joint_names order
        self._joint_stamps = np.full(len(config.joint_names), -np.inf)  # s; -inf = never received
        # per joint (stamp, position), oldest first: covers max_age_s + max_skew_s behind the newest sample
        self._joint_history = [deque() for _ in config.joint_names]
        self._joint_messages = 0
        self._unknown_joints: set[str] = set()   # names seen but not configured: a hint when one is missing
        self.undecodable_frames = 0              # EncodedFrames dropped because they would not decode
        self.last_decode_error = ""

    def add_image(self, camera: str, stamp_s: float, image: np.ndarray | EncodedFrame) -> None:
        """Keep a (H, W, 3) uint8 RGB frame, or an EncodedFrame that `assemble` decodes if it picks it. The buffer
        holds a reference: do not modify `image` afterwards."""
        if camera not in self._frames:
            raise ValueError(f"unknown camera {camera!r}; configured cameras: {self.config.camera_names}")
        rgb = isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        if not (rgb or isinstance(image, EncodedFrame)):
            shape = getattr(image, "shape", None)
            raise ValueError(f"camera {camera!r}: image must be (H, W, 3) uint8 RGB, got "
                             f"{type(image).__name__} {shape} {getattr(image, 'dtype', '')}")
        if not math.isfinite(stamp_s):
            raise ValueError(f"camera {camera!r}: stamp must be finite, got {stamp_s!r}")
        with self._lock:
            self._frames[camera].append((float(stamp_s), image))

    def add_joint_state(self, stamp_s: float, names: Sequence[str], positions: Sequence[float]) -> None:
        """Store positions by joint name. Extra names are ignored; NaN is stored and refused by `assemble`."""
        names = list(names)
        if len(names) != len(positions):
            raise ValueError(f"joint state has {len(names)} names but {len(positions)} positions")
        if len(set(names)) != len(names):
            raise ValueError(f"joint state repeats names: {sorted({n for n in names if names.count(n) > 1})}")
        if not math.isfinite(stamp_s):
            raise ValueError(f"joint state stamp must be finite, got {stamp_s!r}")
        values = [float(p) for p in positions]
        with self._lock:
            self._joint_messages += 1
            for name, value in zip(names, values):
                index = self._joint_index.get(name)
                if index is None:
                    if len(self._unknown_joints) < 64:   # bounded: a bad publisher must not grow memory
                        self._unknown_joints.add(name)
                elif stamp_s >= self._joint_stamps[index]:   # a late, older message never overwrites a newer one
                    self._positions[index], self._joint_stamps[index] = value, stamp_s
                    history = self._joint_history[index]
                    history.append((float(stamp_s), value))
                    while history[0][0] < stamp_s - self.config.max_age_s - self.config.max_skew_s:
                        history.popleft()

    def clear(self) -> None:
        """Forget all inputs (episode reset, time jump after a sim restart)."""
        with self._lock:
            for frames in self._frames.values():
                frames.clear()
            self._positions[:], self._joint_stamps[:] = np.nan, -np.inf
            for history in self._joint_history:
                history.clear()
            self._joint_messages = 0
            self._unknown_joints.clear()

    def health(self, now_s: float) -> dict[str, float]:
        """Age (s) of the newest input per source ("camera/<name>", "joint_states"); inf when none yet."""
        with self._lock:
            newest = {f"camera/{n}": max((s for s, _ in f), default=-math.inf) for n, f in self._frames.items()}
            newest["joint_states"] = float(self._joint_stamps.max())
        return {source: now_s - stamp if math.isfinite(stamp) else math.inf for source, stamp in newest.items()}

    def depths(self) -> dict[str, int]:
        """How many samples each source holds now ("camera/<name>" frames, "joint_states" history), for
        /diagnostics: a camera stuck at 0 or 1 is not delivering."""
        with self._lock:
            held = {f"camera/{n}": len(f) for n, f in self._frames.items()}
            held["joint_states"] = max((len(h) for h in self._joint_history), default=0)
        return held

    def assemble(self, now_s: float, instruction: str, camera_sizes: dict[str, tuple[int, int]] | None = None,
                 not_before_s: float = -math.inf) -> TimedObservation:
        """The observation at the newest instant all cameras cover (module docstring); raises StaleObservation.

        `camera_sizes` ((height, width) per camera) overrides `config.camera_sizes` for this call.
        `not_before_s`: frames older than this are not used (e.g. the start of a goal: a frame from before an
        episode reset shows the old scene, and a chunk planned from it sends the arm back there).
        """
        sizes = dict(self.config.camera_sizes if camera_sizes is None else camera_sizes)
        unknown = sorted(set(sizes) - set(self._frames))
        if unknown:
            raise ValueError(f"camera_sizes names unknown cameras {unknown}; configured: {self.config.camera_names}")
        # An undecodable frame is dropped and the choice made again, as if it had never arrived; each pass drops
        # one, so the loop ends (bounded anyway).
        dropped: list[str] = []
        for _ in range(self.config.history * len(self._frames) + 1):
            try:
                stamp_s, positions, chosen, joint_skew = self._select(now_s, not_before_s)
            except StaleObservation as stale:   # say why the camera has no usable frame
                raise StaleObservation(stale.reasons + dropped) from None
            decoded = {name: self._decoded(name, entry, dropped) for name, entry in chosen.items()}
            if all(image is not None for image in decoded.values()):
                break
        else:
            raise StaleObservation(dropped)
        images = {}
        for name, image in decoded.items():
            resized = resize_to(image, *sizes[name]) if name in sizes else image
            # the policy gets its own contiguous array: a consumer writing into it cannot corrupt the buffer
            images[name] = resized.copy() if resized is image else np.ascontiguousarray(resized)
        image_stamps = {name: s for name, (s, _) in chosen.items()}
        skew = max([abs(s - stamp_s) for s in image_stamps.values()] + [joint_skew])
        return TimedObservation(Observation(images=images, state=positions, instruction=instruction),
                                stamp_s, image_stamps, skew)

    def decode_newest(self) -> None:
        """Decode each camera's newest frame now if it is still encoded (the inference worker calls this just
        before an observation is due, so `assemble` finds it decoded; a dropped frame is counted as usual)."""
        with self._lock:
            newest = {name: frames[-1] for name, frames in self._frames.items() if frames}
        for name, entry in newest.items():
            self._decoded(name, entry, [])

    def _decoded(self, camera: str, entry: tuple[float, np.ndarray | EncodedFrame],
                 dropped: list[str]) -> np.ndarray | None:
        """The frame's RGB pixels; None after dropping an EncodedFrame that does not decode (why: to `dropped`)."""
        image = entry[1]
        if not isinstance(image, EncodedFrame):
            return image
        try:
            return image.decode()
        except ValueError as error:
            dropped.append(f"camera '{camera}' frame at {entry[0]:.3f} s dropped: {error}")
            with self._lock:
                frames = self._frames[camera]
                index = next((i for i, kept in enumerate(frames) if kept is entry), None)
                if index is not None:   # (else a newer frame already pushed it out)
                    del frames[index]
                    self.undecodable_frames += 1
                    self.last_decode_error = f"camera '{camera}': {error}"
            return None

    def check_fresh(self, now_s: float, not_before_s: float = -math.inf) -> None:
        """The freshness and alignment checks of `assemble` without building images; raises StaleObservation."""
        self._select(now_s, not_before_s)

    def _select(self, now_s: float, not_before_s: float):
        """(instant, positions there, {camera: (stamp, frame)}, joint skew) at now_s, or StaleObservation."""
        with self._lock:
            frames = {name: list(f) for name, f in self._frames.items()}
            older = {name: bool(f) and all(s < not_before_s for s, _ in f) for name, f in frames.items()}
            frames = {name: [x for x in f if x[0] >= not_before_s] for name, f in frames.items()}
            positions, joint_stamps = self._positions.copy(), self._joint_stamps.copy()
            histories = [list(h) for h in self._joint_history]
            joint_messages, unknown_joints = self._joint_messages, sorted(self._unknown_joints)
        reasons: list[str] = []
        newest_joint_s = self._check_joints(now_s, positions, joint_stamps, joint_messages, unknown_joints, reasons)
        for name in [n for n, only_older in older.items() if only_older]:
            reasons.append(f"camera '{name}': no frame taken since {not_before_s:.3f} s (goal start) yet")
            del frames[name]
        if reasons:   # the frame checks below still run, so that every problem is reported at once
            for name in frames:
                self._pick_frame(name, frames[name], now_s, newest_joint_s, reasons)
            raise StaleObservation(reasons)
        fresh_newest = [max((s for s, _ in f if -self.config.max_skew_s <= now_s - s <= self.config.max_age_s),
                            default=math.nan) for f in frames.values()]
        # the newest instant every camera covers; a camera without a fresh frame is reported by _pick_frame
        instant = min((s for s in fresh_newest if math.isfinite(s)), default=newest_joint_s)
        chosen = {name: self._pick_frame(name, frames[name], now_s, instant, reasons) for name in frames}
        positions, joint_skew = self._joints_at(instant, histories, reasons)
        if reasons:
            raise StaleObservation(reasons)
        return instant, positions, chosen, joint_skew

    def _joints_at(self, instant: float, histories, reasons) -> tuple[np.ndarray, float]:
        """Each joint's position at `instant`: linear between the samples around it, else the nearest sample
        (within max_skew_s); and the largest distance from `instant` to a sample used."""
        positions = np.empty(len(histories))
        skew = 0.0
        for i, history in enumerate(histories):
            stamps = np.array([s for s, _ in history])
            values = np.array([v for _, v in history])
            k = int(np.searchsorted(stamps, instant))
            if 0 < k < len(stamps):   # bracketed: the samples around it are as close as the joint rate allows
                before, after = k - 1, k
                span = stamps[after] - stamps[before]
                w = (instant - stamps[before]) / span if span > 0 else 1.0
                positions[i] = values[before] + w * (values[after] - values[before])
                skew = max(skew, min(instant - stamps[before], stamps[after] - instant))
                continue
            nearest = min(range(len(stamps)), key=lambda j: abs(stamps[j] - instant))
            gap = abs(stamps[nearest] - instant)
            if gap > self.config.max_skew_s:
                reasons.append(f"joint '{self.config.joint_names[i]}' nearest sample is {gap:.3f} s from the camera "
                               f"frames (max skew {self.config.max_skew_s:.3f} s)")
            positions[i], skew = values[nearest], max(skew, gap)
        for i in np.flatnonzero(~np.isfinite(positions)):
            reasons.append(f"joint '{self.config.joint_names[i]}' position at the observation instant is "
                           f"{positions[i]} (not finite)")
        return positions, skew

    def _check_joints(self, now_s, positions, stamps, joint_messages, unknown_joints, reasons) -> float:
        """Append joint problems to `reasons`; return the newest configured joint stamp (nan if none)."""
        names, max_age, max_skew = self.config.joint_names, self.config.max_age_s, self.config.max_skew_s
        present = np.isfinite(stamps)
        if joint_messages == 0:
            reasons.append("no joint state yet")
            return math.nan
        for i in np.flatnonzero(~present):
            reasons.append(f"joint '{names[i]}' missing from joint states")
        if not present.all() and unknown_joints:
            reasons.append(f"joint states carry other names {unknown_joints} (check joint_names)")
        if not present.any():
            return math.nan
        ages = now_s - stamps
        stale = [names[i] for i in np.flatnonzero(present & (ages > max_age))]
        if stale:
            reasons.append(f"joint state for {stale} {ages[present].max():.2f} s old (max {max_age:.2f} s)")
        future = [names[i] for i in np.flatnonzero(present & (ages < -max_skew))]
        if future:
            reasons.append(f"joint state for {future} stamped {-ages[present].min():.2f} s after now "
                           f"(clock mismatch? check use_sim_time)")
        for i in np.flatnonzero(present & ~np.isfinite(positions)):
            reasons.append(f"joint '{names[i]}' position is {positions[i]} (not finite)")
        return float(stamps[present].max())

    def _pick_frame(self, camera, frames, now_s, stamp_s, reasons):
        """The fresh frame nearest `stamp_s` (newest fresh one without a joint state); None after a problem."""
        max_age, max_skew = self.config.max_age_s, self.config.max_skew_s
        if not frames:
            reasons.append(f"no frame from camera '{camera}' yet")
            return None
        fresh = [f for f in frames if -max_skew <= now_s - f[0] <= max_age]
        if not fresh:
            newest_age = now_s - max(s for s, _ in frames)
            if newest_age > max_age:
                reasons.append(f"camera '{camera}' last frame {newest_age:.2f} s old (max {max_age:.2f} s)")
            else:
                reasons.append(f"camera '{camera}' frames stamped {-newest_age:.2f} s after now "
                               f"(clock mismatch? check use_sim_time)")
            return None
        if math.isnan(stamp_s):
            return max(fresh, key=lambda f: f[0])
        best = min(fresh, key=lambda f: abs(f[0] - stamp_s))
        skew = abs(best[0] - stamp_s)
        if skew > max_skew:
            reasons.append(f"camera '{camera}' nearest frame is {skew:.3f} s from the observation instant "
                           f"(max skew {max_skew:.3f} s)")
        return best
