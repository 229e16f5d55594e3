"""gem_record: rosbag2 recordings of a real robot -> training episodes in our format (one per bag).

Recording, either way gives a rosbag2 folder (MCAP or sqlite3):
    gem_record record --ros-args -p out_dir:=bags -p topics:="['/joint_states', '/camera/scene/image_raw']"
        the gem_recorder node (gem_ros/nodes/recorder_node.py): one bag per episode, ~/start + ~/stop
        (std_srvs/Trigger) or ~/instruction (std_msgs/String); it writes <bag>/instruction.txt.
    ros2 bag record -s mcap -o bags/ep_001 /joint_states /camera/scene/image_raw /camera/wrist/image_raw/compressed
        any robot PC with ROS 2; then `echo "pick up the red cube" > bags/ep_001/instruction.txt`.
Recovering what a killed recorder left in bags/.recording (gem_recorder also does this when it starts):
    gem_record recover bags          # -> bags/<episode>/ with every message up to the last flush (~0.5 s)
Converting (no ROS needed: the pure-Python `rosbags` reads the bag):
    gem_record convert bags/* --out data/real --config robot.yaml
    gem_record convert bags/ep_001 --out data/real --camera scene=/camera/scene/image_raw \
        --joints panda_joint1 ... panda_joint7 panda_finger_joint1 panda_finger_joint2 \
        --gripper-joints panda_finger_joint1 panda_finger_joint2 --instruction "pick up the red cube"

Every topic is resampled onto one uniform grid at control_rate_hz spanning the time all required topics overlap
(header stamps, or bag receive time when a stamp is zero or time_source=receive). Per topic, a grid time takes the
nearest sample or the last one at or before it (`alignment`); a step whose sample on any topic is more than
max_age_s away is dropped and counted. Joints are matched by name, so partial or shuffled JointStates are fine.
state[t] = state_joint_names at t; action[t] = the action joints at t+1 (next_state: GEM's absolute next-step
target) or the latest command at t+1 (command_topic: JointTrajectory first point or JointState, by name), then
the gripper: one width channel (sum of the finger joints, as the sim data) or one channel per finger joint.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from collections import Counter
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from gem_train.collect_sim import GRIPPER_CHANNEL
from gem_train.data.bag import (COMPRESSED, IMAGE, JOINT_STATE, TRAJECTORY, JointSeries, align, bag_dir, decode_image,
                                error_stats, open_bag, stamp_ns, typestore)
from gem_train.data.episodes import COMPRESSIONS, EpisodeWriter

ACTION_SOURCES = ("next_state", "command_topic")
ALIGNMENTS = ("nearest", "hold_last")
TIME_SOURCES = ("header", "receive")
INSTRUCTION_FILE = "instruction.txt"        # per-bag task sentence; wins over the config's `instruction`
_CHOICES = {"action_source": ACTION_SOURCES, "alignment": ALIGNMENTS, "time_source": TIME_SOURCES,
            "compression": COMPRESSIONS}


def _names(value: Any, key: str, allow_empty: bool = True) -> list[str]:
    value = list(value or [])
    if not all(isinstance(v, str) and v for v in value) or len(set(value)) != len(value):
        raise ValueError(f"{key} must be unique non-empty strings, got {value!r}")
    if not value and not allow_empty:
        raise ValueError(f"{key} must not be empty")
    return value


@dataclass
class BagConversionConfig:
    camera_topics: dict[str, str]               # camera name -> sensor_msgs/Image or CompressedImage topic
    state_joint_names: list[str]                # state row, matched by name in the JointState messages
    joint_state_topic: str = "/joint_states"
    action_source: str = "next_state"           # see ACTION_SOURCES
    command_topic: str | None = None            # JointTrajectory or JointState; required for command_topic
    action_joint_names: list[str] = field(default_factory=list)   # [] -> state joints minus gripper joints
    gripper_joint_names: list[str] = field(default_factory=list)
    gripper_as_width: bool = True               # one channel = sum of the finger positions (m)
    control_rate_hz: float = 10.0
    alignment: str = "nearest"                  # see ALIGNMENTS
    max_age_s: float = 0.1                      # |sample time - grid time| above this drops the step
    command_max_age_s: float = 1.0              # a held command older than this drops the step
    time_source: str = "header"                 # see TIME_SOURCES
    image_size: int | None = None               # square side in px (INTER_AREA), None keeps the camera's size
    instruction: str = ""                       # used when a bag has no instruction.txt
    split_on_gap_s: float | None = None         # kept steps further apart than this (s) start a new episode
    min_episode_steps: int = 1                  # shorter pieces (after a split) are skipped
    compression: str = "gzip"

    def __post_init__(self) -> None:
        cams = self.camera_topics
        if not isinstance(cams, dict) or not cams or not all(
                isinstance(n, str) and n and "/" not in n and isinstance(t, str) and t for n, t in cams.items()):
            raise ValueError(f"camera_topics must map camera names (without '/') to topics, got {cams!r}")
        topics = [*cams.values(), self.joint_state_topic, *filter(None, [self.command_topic])]
        if len(set(topics)) != len(topics):
            raise ValueError(f"camera_topics, joint_state_topic and command_topic must all differ, got {topics}")
        self.state_joint_names = _names(self.state_joint_names, "state_joint_names", allow_empty=False)
        self.gripper_joint_names = _names(self.gripper_joint_names, "gripper_joint_names")
        self.action_joint_names = _names(self.action_joint_names, "action_joint_names") or [
            j for j in self.state_joint_names if j not in self.gripper_joint_names]
        if set(self.action_joint_names) & set(self.gripper_joint_names) or not self.action_names:
            raise ValueError(f"action_joint_names {self.action_joint_names} and gripper_joint_names "
                             f"{self.gripper_joint_names} must not overlap and not both be empty")
        for key, allowed in _CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} must be one of {allowed}, got {getattr(self, key)!r}")
        if (self.action_source == "command_topic") != bool(self.command_topic):
            raise ValueError("command_topic must be set exactly when action_source is 'command_topic', "
                             f"got action_source={self.action_source!r} command_topic={self.command_topic!r}")
        for key, low, kind, optional in (("control_rate_hz", 0, float, False), ("max_age_s", 0, float, False),
                                         ("command_max_age_s", 0, float, False), ("split_on_gap_s", 0, float, True),
                                         ("image_size", 7, int, True), ("min_episode_steps", 0, int, False)):
            value = getattr(self, key)
            if optional and value is None:
                continue
            if (isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int)
                    or not math.isfinite(value) or value <= low):
                raise ValueError(f"{key} must be {'a finite number' if kind is float else 'an int'} > {low}"
                                 f"{' or None' if optional else ''}, got {value!r}")
        if not isinstance(self.instruction, str) or not isinstance(self.gripper_as_width, bool):
            raise ValueError("instruction must be a str and gripper_as_width a bool")

    @property
    def action_names(self) -> list[str]:
        gripper = [GRIPPER_CHANNEL] if self.gripper_as_width and self.gripper_joint_names else self.gripper_joint_names
        return [*self.action_joint_names, *gripper]

    @classmethod
    def from_yaml(cls, path: Path | str, **overrides: Any) -> BagConversionConfig:
        """Plain mapping of these fields, top level or under `gem_record:`; `overrides` (not None) win."""
        import yaml

        data = yaml.safe_load(Path(path).read_text()) or {}
        data = data.get("gem_record", data)
        data = dict(data.get("ros__parameters", data))
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"{path}: unknown gem_record settings {unknown}")
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)


@dataclass
class ConversionSummary:
    bag: Path
    episodes: list[Path]
    frames: int                                 # steps written, all episodes
    grid_steps: int
    dropped_steps: int
    dropped_by: dict[str, int]                  # topic (or "short_segment") -> steps it dropped
    alignment_ms: dict[str, dict[str, float]]   # topic -> {mean, p95, max} |sample - grid time| of kept steps
    bag_duration_s: float
    seconds: float

    def report(self) -> str:
        lines = [f"{self.bag}: {len(self.episodes)} episode(s), {self.frames} frames of {self.grid_steps} grid steps, "
                 f"{self.dropped_steps} dropped {dict(self.dropped_by) or ''}; {self.bag_duration_s:.1f} s of bag "
                 f"in {self.seconds:.1f} s"]
        lines += [f"  {topic:<40} alignment error ms: mean {s['mean']:.1f}  p95 {s['p95']:.1f}  max {s['max']:.1f}"
                  for topic, s in self.alignment_ms.items()]
        return "\n".join(lines)


@dataclass
class _Plan:
    """What to write: grid-aligned state/action rows and, per camera topic, which message each step shows."""

    state: np.ndarray                           # (N, S) float32 at t_k
    actions: np.ndarray                         # (N, A) float32 for t_{k+1}
    cam_index: dict[str, np.ndarray]            # topic -> (N,) index of the chosen message in bag order
    pieces: list[np.ndarray]                    # kept grid step indices, one array per episode
    dropped_by: dict[str, int]
    errors_ns: dict[str, np.ndarray]            # topic -> (N,) alignment error
    grid_start_ns: int
    gripper_from: str                           # where the gripper action channel(s) came from


def _wanted_topics(cfg: BagConversionConfig) -> dict[str, tuple[str, ...]]:
    wanted = {**{t: (IMAGE, COMPRESSED) for t in cfg.camera_topics.values()}, cfg.joint_state_topic: (JOINT_STATE,)}
    if cfg.command_topic:
        wanted[cfg.command_topic] = (TRAJECTORY, JOINT_STATE)
    return wanted


def _read_samples(bag: Path, cfg: BagConversionConfig, store) -> tuple[JointSeries, JointSeries, dict[str, list[int]], float]:
    """Pass 1: every stamp, and joint positions by name (images are decoded only in pass 2)."""
    wanted = _wanted_topics(cfg)
    joint_names = list(dict.fromkeys([*cfg.state_joint_names, *cfg.action_joint_names, *cfg.gripper_joint_names]))
    joints, commands = JointSeries(joint_names), JointSeries(joint_names)
    cam_stamps: dict[str, list[int]] = {t: [] for t in cfg.camera_topics.values()}
    with open_bag(bag) as reader:
        available = {c.topic: c.msgtype for c in reader.connections}
        missing = [t for t in wanted if t not in available]
        if missing:
            raise ValueError(f"{bag}: topics {missing} are not in the bag; it has "
                             f"{ {t: available[t] for t in sorted(available)} }")
        wrong = {t: available[t] for t, types in wanted.items() if available[t] not in types}
        if wrong:
            raise ValueError(f"{bag}: unsupported message types {wrong}; expected {wanted}")
        use_header = cfg.time_source == "header"
        for conn, log_ns, raw in reader.messages(connections=[c for c in reader.connections if c.topic in wanted]):
            msg = store.deserialize_cdr(raw, conn.msgtype)     # image data stays a view of `raw`: cheap
            t_ns = stamp_ns(msg, log_ns, use_header)
            if conn.topic in cam_stamps:
                cam_stamps[conn.topic].append(t_ns)
            elif conn.msgtype == TRAJECTORY:
                if msg.points:
                    commands.add(t_ns, msg.joint_names, msg.points[0].positions)
            else:
                (joints if conn.topic == cfg.joint_state_topic else commands).add(t_ns, msg.name, msg.position)
        duration_s = reader.duration / 1e9
    empty = [t for t, stamps in cam_stamps.items() if not stamps]
    if empty:
        raise ValueError(f"{bag}: camera topics {empty} have no messages")
    return joints, commands, cam_stamps, duration_s


def _plan(bag: Path, cfg: BagConversionConfig, joints: JointSeries, commands: JointSeries,
          cam_stamps: dict[str, list[int]]) -> _Plan:
    """Build the grid over the overlap of all required series, align each, and decide which steps survive."""
    gripper_from = cfg.action_source
    if cfg.command_topic and not all(commands.samples.get(j) for j in cfg.gripper_joint_names):
        gripper_from = "next_state"               # e.g. a gripper driven by an action server, not this topic
    next_joints = [*cfg.action_joint_names] if cfg.action_source == "next_state" else []   # read at t_{k+1}
    next_joints += cfg.gripper_joint_names if gripper_from == "next_state" else []
    joint_series = joints.series(cfg.joint_state_topic, list(dict.fromkeys([*cfg.state_joint_names, *next_joints])))
    command_series = commands.series(cfg.command_topic, cfg.action_joint_names + (
        cfg.gripper_joint_names if gripper_from == "command_topic" else [])) if cfg.command_topic else {}
    cam_order = {t: np.argsort(np.asarray(s, np.int64), kind="stable") for t, s in cam_stamps.items()}
    cam_series = {t: np.asarray(cam_stamps[t], np.int64)[order] for t, order in cam_order.items()}
    all_stamps = [s for s, _ in [*joint_series.values(), *command_series.values()]] + list(cam_series.values())
    start, end = max(s[0] for s in all_stamps), min(s[-1] for s in all_stamps)
    dt_ns = 1e9 / cfg.control_rate_hz
    num_steps = int((end - start) // dt_ns)          # grid t_0..t_N; step k also needs t_{k+1}
    if num_steps < 1:
        raise ValueError(f"{bag}: the required topics overlap for {(end - start) / 1e9:.3f} s, less than one "
                         f"control period ({1 / cfg.control_rate_hz:.3f} s)")
    grid = start + np.round(np.arange(num_steps + 1) * dt_ns).astype(np.int64)
    max_age_ns = cfg.max_age_s * 1e9

    # A step is kept when its observation (t_k) and its action (t_{k+1}) are fresh on every topic.
    ok_by: dict[str, np.ndarray] = {}
    err_by: dict[str, np.ndarray] = {}
    at_grid: dict[str, np.ndarray] = {}          # joint -> position at every grid time
    joint_ok, joint_err = np.ones(num_steps, bool), np.zeros(num_steps, np.int64)
    for name, (stamps, positions) in joint_series.items():
        index, err, ok = align(stamps, grid, cfg.alignment, max_age_ns)
        at_grid[name] = positions[index]
        if name in cfg.state_joint_names:
            joint_ok, joint_err = joint_ok & ok[:-1], np.maximum(joint_err, err[:-1])
        if name in next_joints:
            joint_ok &= ok[1:]
    ok_by[cfg.joint_state_topic], err_by[cfg.joint_state_topic] = joint_ok, joint_err
    cam_index = {}
    for topic, stamps in cam_series.items():
        index, err_by[topic], ok_by[topic] = align(stamps, grid[:-1], cfg.alignment, max_age_ns)
        cam_index[topic] = cam_order[topic][index]                # sorted position -> message order in the bag
    action_values = {j: at_grid[j][1:] for j in next_joints}
    if command_series:   # the command in force at t_{k+1}: the last one sent before the next observation
        cmd_ok, cmd_err = np.ones(num_steps, bool), np.zeros(num_steps, np.int64)
        for name, (stamps, positions) in command_series.items():
            index, err, ok = align(stamps, grid[1:], "hold_last", cfg.command_max_age_s * 1e9)
            action_values[name], cmd_ok, cmd_err = positions[index], cmd_ok & ok, np.maximum(cmd_err, err)
        ok_by[cfg.command_topic], err_by[cfg.command_topic] = cmd_ok, cmd_err
    fingers = [action_values[j] for j in cfg.gripper_joint_names]
    gripper = ([np.sum(fingers, axis=0)] if fingers else []) if cfg.gripper_as_width else fingers
    actions = np.stack([*(action_values[j] for j in cfg.action_joint_names), *gripper], axis=1)

    dropped_by = Counter({t: int((~ok).sum()) for t, ok in ok_by.items() if not ok.all()})
    kept = np.flatnonzero(np.logical_and.reduce(list(ok_by.values())))
    pieces = [kept]
    if cfg.split_on_gap_s is not None and len(kept) > 1:
        pieces = np.split(kept, np.flatnonzero(np.diff(kept) * dt_ns > cfg.split_on_gap_s * 1e9) + 1)
    short = [p for p in pieces if len(p) < cfg.min_episode_steps]
    if short:
        dropped_by["short_segment"] = sum(len(p) for p in short)
    pieces = [p for p in pieces if len(p) >= cfg.min_episode_steps]
    if not pieces:
        raise ValueError(f"{bag}: no episode left: {len(kept)} of {num_steps} steps passed alignment "
                         f"(dropped by topic: {dict(dropped_by)}); check max_age_s and the topics' rates")
    state = np.stack([at_grid[j][:-1] for j in cfg.state_joint_names], axis=1)
    return _Plan(state.astype(np.float32), actions.astype(np.float32), cam_index, pieces, dict(dropped_by), err_by,
                 int(grid[0]), gripper_from)


def _write(bag: Path, paths: list[Path], plan: _Plan, cfg: BagConversionConfig, instruction: str, store,
           progress: bool) -> list[Path]:
    """Pass 2: decode only the chosen frames, in bag order, and stream each step out once all its cameras came."""
    from tqdm import tqdm

    cam_of = {topic: name for name, topic in cfg.camera_topics.items()}
    written = np.concatenate(plan.pieces)
    uses = {t: Counter(plan.cam_index[t][written].tolist()) for t in cam_of}    # frame -> steps still to show it
    frames: dict[tuple[str, int], np.ndarray] = {}
    seen = Counter()
    steps = iter([(p, int(k)) for p, piece in enumerate(plan.pieces) for k in piece])
    current, writer, episodes = next(steps), None, []
    extra = {"source_bag": str(bag), "alignment": cfg.alignment, "max_age_s": cfg.max_age_s,
             "time_source": cfg.time_source, "action_source": cfg.action_source,
             "gripper_action_source": plan.gripper_from, "grid_start_ns": plan.grid_start_ns,
             "camera_topics": dict(cfg.camera_topics)}
    bar = tqdm(total=len(written), desc=bag.name, unit="step", disable=not progress)
    try:
        with open_bag(bag) as reader:
            wanted = _wanted_topics(cfg)    # same connections as pass 1, so per-topic message order matches
            for conn, _, raw in reader.messages(connections=[c for c in reader.connections if c.topic in wanted]):
                if conn.topic not in cam_of:
                    continue
                i, seen[conn.topic] = seen[conn.topic], seen[conn.topic] + 1
                if i in uses[conn.topic]:
                    frames[conn.topic, i] = decode_image(store.deserialize_cdr(raw, conn.msgtype), conn.msgtype,
                                                    cfg.image_size)
                while current is not None and all((t, plan.cam_index[t][current[1]]) in frames for t in cam_of):
                    piece, k = current
                    if writer is None:
                        writer = EpisodeWriter(
                            paths[piece], instructions=instruction, control_rate_hz=cfg.control_rate_hz,
                            camera_names=list(cfg.camera_topics), state_names=cfg.state_joint_names,
                            action_names=cfg.action_names, compression=cfg.compression,
                            extra={**extra, "piece": piece, "grid_runs": _runs(plan.pieces[piece])})
                    writer.add_step({cam_of[t]: frames[t, plan.cam_index[t][k]] for t in cam_of}, plan.state[k],
                                    plan.actions[k])
                    bar.update()
                    for t in cam_of:   # free each frame after the last step that shows it
                        i = int(plan.cam_index[t][k])
                        uses[t][i] -= 1
                        if uses[t][i] == 0:
                            del frames[t, i]
                    current = next(steps, None)
                    if current is None or current[0] != piece:
                        episodes.append(writer.close())
                        writer = None
        if current is not None:
            raise ValueError(f"{bag}: the bag changed while converting (frames for step {current[1]} never came)")
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        bar.close()
    return episodes


def convert_bag(bag_path: Path | str, out_path: Path | str, cfg: BagConversionConfig,
                progress: bool = True) -> ConversionSummary:
    """One rosbag2 folder -> out_path/<bag name>.hdf5 (or <bag name>_<k>.hdf5 per piece with split_on_gap_s)."""
    t_start, bag, out_dir = time.perf_counter(), bag_dir(bag_path), Path(out_path)
    instruction_file = bag / INSTRUCTION_FILE
    instruction = instruction_file.read_text().strip() if instruction_file.is_file() else cfg.instruction
    if not instruction:
        raise ValueError(f"{bag}: no instruction (give one in the config / --instruction or in {instruction_file})")
    store = typestore()
    joints, commands, cam_stamps, duration_s = _read_samples(bag, cfg, store)
    plan = _plan(bag, cfg, joints, commands, cam_stamps)
    names = [f"{bag.name}.hdf5"] if len(plan.pieces) == 1 else [f"{bag.name}_{k:03d}.hdf5"
                                                                 for k in range(len(plan.pieces))]
    exists = [str(out_dir / n) for n in names if (out_dir / n).exists()]
    if exists:
        raise ValueError(f"{exists} exist; episodes are never overwritten, choose a new --out")
    episodes = _write(bag, [out_dir / n for n in names], plan, cfg, instruction, store, progress)
    written = np.concatenate(plan.pieces)
    num_steps = len(plan.state)
    return ConversionSummary(bag=bag, episodes=episodes, frames=len(written), grid_steps=num_steps,
                             dropped_steps=num_steps - len(written), dropped_by=plan.dropped_by,
                             alignment_ms={t: error_stats(e[written]) for t, e in plan.errors_ns.items()},
                             bag_duration_s=duration_s, seconds=time.perf_counter() - t_start)


def _runs(indices: np.ndarray) -> list[list[int]]:
    """Grid step indices as inclusive [first, last] runs (a piece's dropped steps are the holes)."""
    breaks = np.flatnonzero(np.diff(indices) != 1) + 1
    return [[int(run[0]), int(run[-1])] for run in np.split(indices, breaks)]


def recover(paths: list[Path]) -> int:
    """`gem_record recover`: print what each recovery got back; 1 when any recording could not be recovered."""
    from gem_ros.nodes.bag_recovery import STAGING_DIR, RecoverySummary, recover_recording, recover_recordings

    summaries = []
    for path in paths:
        path = path.parent if path.is_file() else path
        if not path.is_dir():
            summaries.append(RecoverySummary(path, error="no such folder"))
        elif (path / STAGING_DIR).is_dir() or path.name == STAGING_DIR:
            found = recover_recordings(path.parent if path.name == STAGING_DIR else path)
            summaries += found
            if not found:
                print(f"{path}: nothing to recover")
        else:
            try:
                summaries.append(recover_recording(path))
            except (ValueError, OSError) as exc:
                summaries.append(RecoverySummary(path, error=str(exc)))
    for summary in summaries:
        print(summary.report(), file=sys.stderr if summary.error else sys.stdout)
    return 1 if any(s.error for s in summaries) else 0


def _parse_cameras(items: list[str] | None) -> dict[str, str] | None:
    pairs = [item.split("=", 1) for item in items or []]
    if any(len(pair) != 2 for pair in pairs):
        raise ValueError(f"--camera takes name=topic, got {items}")
    return dict(pairs) or None


_FLAGS = {"state_joint_names": "--joints", "action_joint_names": "--action-joints",
          "gripper_joint_names": "--gripper-joints", "control_rate_hz": "--rate"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gem_record", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help="rosbag2 folders -> episodes (one per bag)")
    conv.add_argument("bags", nargs="+", type=Path)
    conv.add_argument("--out", type=Path, required=True, help="episode folder")
    conv.add_argument("--config", type=Path, help="YAML of BagConversionConfig fields (top level or gem_record:)")
    conv.add_argument("--camera", action="append", metavar="NAME=TOPIC", help="repeat per camera")
    conv.add_argument("--gripper-per-joint", action="store_const", const=False, dest="gripper_as_width",
                      help="one action channel per finger joint instead of one width channel")
    for f in fields(BagConversionConfig):     # one flag per setting; defaults and meaning live in the dataclass
        if f.name not in ("camera_topics", "gripper_as_width"):
            kind = {"list[str]": {"nargs": "+"}, "float": {"type": float}, "float | None": {"type": float},
                    "int": {"type": int}, "int | None": {"type": int}}.get(str(f.type), {})
            conv.add_argument(_FLAGS.get(f.name, "--" + f.name.replace("_", "-")), dest=f.name,
                              choices=_CHOICES.get(f.name), help=None if f.default is MISSING else
                              f"default {f.default}", **kind)
    sub.add_parser("record", help="start the gem_recorder node; ROS arguments (--ros-args ...) are passed on")
    rec = sub.add_parser("recover", help="unfinished recordings (a killed recorder) -> complete bags")
    rec.add_argument("paths", nargs="+", type=Path,
                     help="a recorder's out_dir (recovers all of out_dir/.recording/*) or one unfinished bag folder")
    args, rest = parser.parse_known_args(argv)
    if args.command == "record":
        from gem_ros.nodes.recorder_node import main as recorder_main   # lazy: gem_train itself stays ROS-free

        recorder_main(["gem_recorder", *rest])
        return 0
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "recover":
        return recover(args.paths)
    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "bags", "out", "config", "camera")}
    try:
        overrides["camera_topics"] = _parse_cameras(args.camera)
        cfg = (BagConversionConfig.from_yaml(args.config, **overrides) if args.config else
               BagConversionConfig(**{k: v for k, v in overrides.items() if v is not None}))
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    failed, total = [], 0
    for bag in args.bags:
        try:
            summary = convert_bag(bag, args.out, cfg)
        except ValueError as exc:
            failed.append(bag)
            print(f"FAILED {bag}: {exc}", file=sys.stderr)
            continue
        total += summary.frames
        print(summary.report())
    print(f"{len(args.bags) - len(failed)}/{len(args.bags)} bags converted, {total} frames -> {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
