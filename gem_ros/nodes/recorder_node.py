"""gem_recorder: record the robot's topics into one rosbag2 per episode, for `gem_record convert`.

    gem_recorder --ros-args -p out_dir:=bags \
        -p topics:="['/joint_states', '/camera/scene/image_raw', '/camera/wrist/image_raw/compressed']"
    ros2 service call /gem_recorder/start std_srvs/srv/Trigger       # ... demonstrate ...
    ros2 service call /gem_recorder/stop std_srvs/srv/Trigger        # -> bags/episode_<date>_<time>_<k>/
    ros2 topic pub --once /gem_recorder/instruction std_msgs/msg/String "{data: 'pick up the red cube'}"
        # ends the running episode and starts one with this instruction; an empty string just ends it

A topic is `/name` or `/name:pkg/msg/Type`; each is subscribed once it has a publisher (checked every 0.5 s),
reliable when all its publishers are, else best effort, like `ros2 bag record`. Messages stay raw (CDR bytes,
never deserialized) and are stamped with this node's clock on receipt (sim time under use_sim_time); the
converter aligns on header stamps. A bag is written as out_dir/.recording/<name> (MCAP when rosbags has it,
else sqlite3), its instruction in <name>/instruction.txt from the start, and renamed to out_dir/<name> on stop, so
a crash never leaves a half-written bag where converters look. Every flush_period_s (steady clock) the bag is
flushed to the OS, so a kill -9 loses at most that much; on start the recorder turns what a killed one left in
.recording into complete bags (gem_ros.nodes.bag_recovery; `gem_record recover` does the same by hand). On a PC
with ROS 2, `ros2 bag record` + an instruction.txt does the same job.
"""
from __future__ import annotations

import importlib
import math
import os
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore
from std_msgs.msg import String
from std_srvs.srv import Trigger
from gem_ros.nodes.bag_recovery import INSTRUCTION_FILE, STAGING_DIR, flush_bag, lock_recording, recover_recordings
from gem_ros.nodes.params import spin_node


@dataclass
class RecorderConfig:
    topics: list[str]                     # "/topic" or "/topic:pkg/msg/Type"
    out_dir: Path
    storage: str = "mcap"                 # "mcap" | "sqlite3"; mcap falls back to sqlite3 if rosbags lacks it
    name_prefix: str = "episode"
    instruction: str = ""                 # for episodes started by ~/start
    flush_period_s: float = 0.5           # a kill -9 loses at most this much (s, steady clock)

    def __post_init__(self) -> None:
        self.topics = [t for t in self.topics if t]
        if not self.topics or not all(t.startswith("/") for t in self.topics):
            raise ValueError(f"topics must be absolute topic names ('/name[:pkg/msg/Type]'), got {self.topics!r}")
        self.out_dir = Path(self.out_dir)
        if self.storage not in ("mcap", "sqlite3"):
            raise ValueError(f"storage must be 'mcap' or 'sqlite3', got {self.storage!r}")
        if not self.name_prefix or "/" in self.name_prefix:
            raise ValueError(f"name_prefix must be a non-empty file name, got {self.name_prefix!r}")
        if not (isinstance(self.flush_period_s, (int, float)) and math.isfinite(self.flush_period_s)
                and self.flush_period_s > 0):
            raise ValueError(f"flush_period_s must be a finite number > 0, got {self.flush_period_s!r}")

    @property
    def plugin(self) -> StoragePlugin:
        mcap = getattr(StoragePlugin, "MCAP", None)
        return mcap if self.storage == "mcap" and mcap in Writer.STORAGE_PLUGINS else StoragePlugin.SQLITE3


class RecorderNode(Node):
    def __init__(self, **kwargs):
        super().__init__("gem_recorder", **kwargs)
        defaults = {"topics": ["/joint_states"], "out_dir": "bags", "storage": "mcap", "name_prefix": "episode",
                    "instruction": "", "flush_period_s": 0.5}
        self.cfg = RecorderConfig(**{k: self.declare_parameter(k, v).value for k, v in defaults.items()})
        self.typestore = get_typestore(getattr(Stores, "ROS2_KILTED", Stores.LATEST))
        self.types = dict(t.split(":", 1) if ":" in t else (t, None) for t in self.cfg.topics)
        self.received = dict.fromkeys(self.types, 0)          # messages seen per topic (recording or not)
        self.written = dict.fromkeys(self.types, 0)           # messages in the current bag
        self.instruction = self.cfg.instruction
        self._lock = threading.Lock()                         # callbacks may run on several executor threads
        self._raw_subs: dict[str, object] = {}
        self._writer: Writer | None = None
        self._connections: dict[str, object] = {}
        self._staging: Path | None = None
        self._staging_lock: int | None = None                 # fd holding the staging folder's lock
        self._episodes = 0
        for summary in recover_recordings(self.cfg.out_dir):  # what a killed recorder left
            (self.get_logger().error if summary.error else self.get_logger().warning)(summary.report())
        self.create_service(Trigger, "~/start", self._on_start)
        self.create_service(Trigger, "~/stop", self._on_stop)
        self.create_subscription(String, "~/instruction", self._on_instruction, 10)
        self._discovery = self.create_timer(0.5, self._subscribe_known)
        self.create_timer(self.cfg.flush_period_s, self._flush, clock=Clock(clock_type=ClockType.STEADY_TIME))
        self._subscribe_known()

    @property
    def recording(self) -> bool:
        return self._writer is not None

    @property
    def subscribed_topics(self) -> list[str]:
        return [topic for topic, subscription in self._raw_subs.items() if subscription is not None]

    def _subscribe_known(self) -> None:
        """Subscribe each configured topic once it has a publisher, with QoS that matches them all (as ros2 bag)."""
        for topic, msgtype in self.types.items():
            publishers = [] if topic in self._raw_subs else self.get_publishers_info_by_topic(topic)
            if not publishers:
                continue
            msgtype = self.types[topic] = msgtype or publishers[0].topic_type
            if msgtype not in self.typestore.types:    # rosbags needs the definition to write the connection
                self.get_logger().error(f"{topic}: type {msgtype} is unknown to rosbags; not recorded")
                self._raw_subs[topic] = None
                continue
            package, kind, name = msgtype.split("/")
            msg_class = getattr(importlib.import_module(f"{package}.{kind}"), name)
            reliable = all(p.qos_profile.reliability == ReliabilityPolicy.RELIABLE for p in publishers)
            qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE if reliable
                             else ReliabilityPolicy.BEST_EFFORT)   # best effort also hears reliable publishers
            self._raw_subs[topic] = self.create_subscription(
                msg_class, topic, lambda data, topic=topic: self._on_message(topic, data), qos, raw=True)
            with self._lock:
                if self._writer is not None:
                    self._add_connection(topic)
        if len(self._raw_subs) == len(self.types):
            self._discovery.cancel()

    def _add_connection(self, topic: str) -> None:
        self._connections[topic] = self._writer.add_connection(topic, self.types[topic], typestore=self.typestore)

    def _on_message(self, topic: str, data: bytes) -> None:
        stamp_ns = self.get_clock().now().nanoseconds
        with self._lock:
            self.received[topic] += 1
            if self._writer is not None:
                self._writer.write(self._connections[topic], stamp_ns, data)
                self.written[topic] += 1

    def _flush(self) -> None:
        with self._lock:
            if self._writer is not None:
                flush_bag(self._writer)

    def start_recording(self, instruction: str | None = None) -> Path:
        """Open a new bag in the staging folder; returns the path it will have once stopped."""
        with self._lock:
            if self._writer is not None:
                raise RuntimeError(f"already recording {self._staging.name}")
            self._episodes += 1
            name = f"{self.cfg.name_prefix}_{datetime.now():%Y%m%d_%H%M%S}_{self._episodes:03d}"
            self._staging = self.cfg.out_dir / STAGING_DIR / name
            self._staging.parent.mkdir(parents=True, exist_ok=True)
            self._writer = Writer(self._staging, version=9, storage_plugin=self.cfg.plugin)
            self._writer.open()
            self._staging_lock = lock_recording(self._staging)   # recovery by another process keeps off
            self._connections = {}
            for topic in self.subscribed_topics:
                self._add_connection(topic)
            self.written = dict.fromkeys(self.types, 0)
            self.instruction = self.instruction if instruction is None else instruction
            (self._staging / INSTRUCTION_FILE).write_text(self.instruction + "\n")   # recovered bags keep it
        self.get_logger().info(f"recording {name} ({self.cfg.plugin.name.lower()})")
        return self.cfg.out_dir / name

    def stop_recording(self) -> Path | None:
        """Close the bag, write its instruction, move it into out_dir; None when nothing was recording."""
        with self._lock:     # held until the bag is in place: `recording` turns False only then
            if self._writer is None:
                return None
            try:
                self._writer.close()
                final = self.cfg.out_dir / self._staging.name
                os.replace(self._staging, final)
            finally:
                self._writer = None
                os.close(self._staging_lock)
        self.get_logger().info(f"saved {final}: {self.written}")
        return final

    def _on_start(self, request, response):
        try:
            response.message, response.success = str(self.start_recording()), True
        except (RuntimeError, OSError) as exc:
            response.message, response.success = str(exc), False
        return response

    def _on_stop(self, request, response):
        path = self.stop_recording()
        response.success, response.message = path is not None, str(path) if path else "not recording"
        return response

    def _on_instruction(self, msg: String) -> None:
        self.stop_recording()
        if msg.data.strip():
            self.start_recording(msg.data.strip())

    def destroy_node(self):
        self.stop_recording()        # never lose what was recorded
        return super().destroy_node()


def main(args=None) -> None:
    spin_node(RecorderNode, args)


if __name__ == "__main__":
    main()
