"""What gem_doctor expects (Setup: an arm's gem.yaml and a checkpoint) and what it observed (Facts), no ROS.

The collector (gem_ros.doctor.graph) fills Facts from the live graph; the checks (gem_ros.doctor.checks) judge a
Setup against Facts, so every verdict can be tested on hand-made facts. Times: `arrivals_s` are wall-clock
(time.time()) receipt times, `stamps_s` header stamps, both in seconds.
"""
from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gem_ros.core.executor_setup import PARAMETERS as EXECUTOR_DEFAULTS

# gem_policy's defaults for the parameters the doctor reads (declared in gem_ros.nodes.policy_node, which needs
# rclpy; test_doctor checks that these agree with it).
POLICY_DEFAULTS: dict[str, Any] = {
    "camera_names": ["scene", "wrist"],
    "camera_topics": ["camera/scene/image_raw", "camera/wrist/image_raw"],
    "camera_transports": ["raw", "raw"],
    "joint_state_topic": "joint_states",
    "state_joint_names": [""],
    "max_observation_age_s": 0.3,
    "max_skew_s": 0.1,
}
IMAGE_TYPES = {"raw": "sensor_msgs/msg/Image", "compressed": "sensor_msgs/msg/CompressedImage"}
JOINT_STATE_TYPE = "sensor_msgs/msg/JointState"
TRAJECTORY_TYPE = "trajectory_msgs/msg/JointTrajectory"


def names(values) -> list[str]:
    """A ROS string-list parameter without its "" placeholders ([""] is how an empty list is declared)."""
    return [n for n in (values or []) if n]


def resolve(namespace: str, name: str) -> str:
    """A topic / node name as the nodes under `namespace` resolve it (relative names follow the namespace)."""
    return name if name.startswith("/") else f"{namespace.rstrip('/')}/{name}"


@dataclass(frozen=True)
class Endpoint:
    """A controller interface the executor commands: a JTC topic or an action (and its type's short name)."""
    role: str          # "arm" | "gripper"
    kind: str          # "topic" | "action"
    name: str          # fully qualified topic or action name
    action_type: str = ""   # e.g. FollowJointTrajectory (actions only)


@dataclass
class Setup:
    """The configuration under test: gem_policy's and gem_executor's parameters as the launch file gives them."""
    config: str                                   # the arm's gem.yaml
    namespace: str                                # absolute; "/" = root
    policy: dict[str, Any]
    executor: dict[str, Any]
    checkpoint: str = ""
    urdf: str = ""                                # --urdf (as the launch's urdf:=); "" = executor parameter / topic
    camera_rate_hz: float | None = None           # --camera-rate-hz: the rate the cameras are expected to reach
    sim: bool = False                             # the chain runs on gem_sim (sim:=true)
    notes: list[str] = field(default_factory=list)   # what the sim wiring replaced

    def topic(self, name: str) -> str:
        return resolve(self.namespace, name)

    @property
    def joint_names(self) -> list[str]:
        return names(self.executor["joint_names"])

    @property
    def gripper_joint_names(self) -> list[str]:
        return names(self.executor["gripper_joint_names"])

    @property
    def arm_joint_names(self) -> list[str]:
        return names(self.executor["action_joint_names"]) or [
            n for n in self.joint_names if n not in self.gripper_joint_names]

    @property
    def state_joint_names(self) -> list[str]:
        return names(self.policy["state_joint_names"])

    @property
    def cameras(self) -> list[tuple[str, str, str]]:
        """(camera name, fully qualified topic, transport) of gem_policy's cameras."""
        p = self.policy
        return [(n, self.topic(t), tr) for n, t, tr in zip(p["camera_names"], p["camera_topics"],
                                                             p["camera_transports"])]

    @property
    def joint_state_topics(self) -> dict[str, list[str]]:
        """topic -> the joints expected on it: gem_executor reads `joint_states`, gem_policy its joint_state_topic."""
        topics: dict[str, list[str]] = {self.topic("joint_states"): self.joint_names}
        policy_topic = self.topic(self.policy["joint_state_topic"])
        wanted = topics.setdefault(policy_topic, [])
        wanted += [n for n in self.state_joint_names if n not in wanted]
        return topics

    @property
    def endpoints(self) -> list[Endpoint]:
        """What gem_executor commands (names as in gem_ros.nodes.backends)."""
        e = self.executor
        arm = (Endpoint("arm", "topic", self.topic(f"{e['controller_name']}/joint_trajectory"))
               if e["backend"] == "topic" else
               Endpoint("arm", "action", self.topic(f"{e['controller_name']}/follow_joint_trajectory"),
                        "FollowJointTrajectory"))
        gripper = e["gripper_controller_name"]
        if e["gripper_backend"] == "trajectory":
            return [arm, Endpoint("gripper", "topic", self.topic(f"{gripper}/joint_trajectory"))]
        if e["gripper_backend"] in ("gripper_command", "parallel_gripper_command"):
            action = e.get("gripper_action_name") or f"{gripper}/gripper_cmd"
            kind = "GripperCommand" if e["gripper_backend"] == "gripper_command" else "ParallelGripperCommand"
            return [arm, Endpoint("gripper", "action", self.topic(action), kind)]
        return [arm]

    def node(self, name: str) -> str:
        return resolve(self.namespace, name)

    @property
    def launch_line(self) -> str:
        """The command that starts gem's nodes for this setup."""
        arm = Path(self.config).parent.name if Path(self.config).name == "gem.yaml" else "ARM"
        namespace = f" namespace:={self.namespace.strip('/')}" if self.namespace != "/" else ""
        return (f"ros2 launch gem_bringup gem.launch.py arm:={arm} checkpoint:={self.checkpoint or 'FOLDER'} "
                f"sim:={str(self.sim).lower()}{namespace}")


def load_setup(config: str | Path, checkpoint: str = "", namespace: str = "/", sim: bool = False, urdf: str = "",
               camera_rate_hz: float | None = None) -> Setup:
    """Setup from an arm's gem.yaml; `sim` applies what `sim:=true` changes (gem_ros.sim.arm_wiring).
    ValueError names the file when it is not a ROS 2 parameter file."""
    from gem_ros.sim.arm_wiring import read_sections   # yaml only; the sim package loads no physics at import

    sections = read_sections(Path(config))
    policy = {**POLICY_DEFAULTS, **sections.get("gem_policy", {})}
    executor = {**EXECUTOR_DEFAULTS, **sections.get("gem_executor", {})}
    notes: list[str] = []
    if sim:
        from gem_ros.sim.arm_wiring import sim_wiring

        wiring = sim_wiring(sections, str(config))
        policy.update(wiring.policy)
        executor.update(wiring.executor)
        urdf = urdf or executor.pop("urdf_path")   # the model's URDF, as the launch file's urdf:=auto on sim:=true
        notes = list(wiring.notes)
    namespace = "/" + namespace.strip().strip("/") if namespace.strip().strip("/") else "/"
    return Setup(str(config), namespace, policy, executor, str(checkpoint or ""), urdf, camera_rate_hz, sim, notes)


# ---------------------------------------------------------------------------------------------------------- facts
@dataclass
class TopicFacts:
    topic: str
    publisher_types: list[str] = field(default_factory=list)   # one entry per publisher in the graph
    arrivals_s: list[float] = field(default_factory=list)      # wall-clock receipt times
    stamps_s: list[float] = field(default_factory=list)        # header stamps (0 = unstamped)


@dataclass
class JointStateFacts(TopicFacts):
    names_seen: list[str] = field(default_factory=list)        # union over the messages, first-seen order
    duplicated: list[str] = field(default_factory=list)        # names repeated within one message
    non_finite: list[str] = field(default_factory=list)        # names with a NaN / Inf position
    malformed: str = ""                                        # e.g. "3 names but 2 positions"


@dataclass
class CameraFacts(TopicFacts):
    name: str = ""
    transport: str = "raw"
    # The last frame's fields: raw {encoding, height, width, step, nbytes}; compressed {format, data (bytes)}.
    frame: dict[str, Any] = field(default_factory=dict)


@dataclass
class EndpointFacts:
    endpoint: Endpoint
    nodes: list[str] = field(default_factory=list)   # topic: subscribing nodes; action: nodes serving send_goal
    types: list[str] = field(default_factory=list)   # their topic types / send_goal service types


@dataclass
class UrdfFacts:
    source: str = ""   # where the URDF came from, for the table; "" = nowhere
    text: str = ""     # XML, or a path
    error: str = ""    # reading it failed (e.g. the file does not exist)


@dataclass
class ClockFacts:
    publishers: int = 0
    arrivals_s: list[float] = field(default_factory=list)
    stamps_s: list[float] = field(default_factory=list)   # /clock values

    def at(self, wall_s: float) -> float | None:
        """The last /clock value received at or before `wall_s` (None before the first)."""
        i = bisect_right(self.arrivals_s, wall_s)
        return self.stamps_s[i - 1] if i else None


@dataclass
class NodeFacts:
    name: str                    # fully qualified
    count: int = 0               # nodes of this name in the graph (0 = not running)
    lifecycle: bool = False      # it offers <name>/get_state
    state: str = ""              # lifecycle state label ("active", ...); "" = not asked or no answer
    error: str = ""              # why a service call failed
    parameters: dict[str, Any] = field(default_factory=dict)   # use_sim_time, checkpoint, urdf_path, ...


@dataclass
class Facts:
    window_s: float                                   # how long topics were sampled
    joint_states: dict[str, JointStateFacts] = field(default_factory=dict)   # by topic
    cameras: dict[str, CameraFacts] = field(default_factory=dict)            # by camera name
    endpoints: list[EndpointFacts] = field(default_factory=list)
    urdf: UrdfFacts = field(default_factory=UrdfFacts)
    robot_description: str = ""                       # what the latched robot_description topic carried
    clock: ClockFacts = field(default_factory=ClockFacts)
    nodes: dict[str, NodeFacts] = field(default_factory=dict)   # "gem_policy" / "gem_executor"


def rate_hz(facts: TopicFacts, window_s: float) -> tuple[float, str]:
    """(messages per second, basis). Header stamps are the time base the nodes judge ages in (sim time on the
    simulator, which may run slower than the wall), so they are used when they increase; else receipt times."""
    count, stamps = len(facts.arrivals_s), facts.stamps_s
    if count < 2:
        return count / window_s, "count"
    increasing = len(stamps) == count and stamps[0] > 0 and all(b > a for a, b in zip(stamps, stamps[1:]))
    times = stamps if increasing else facts.arrivals_s
    span = times[-1] - times[0]
    return ((count - 1) / span if span > 0 else math.inf), ("stamps" if increasing else "arrivals")


def median_lag_s(facts: TopicFacts, clock: ClockFacts, sim_time: bool) -> float | None:
    """Median age of the stamps when they arrived, on the nodes' clock (/clock or the wall); None if unknown."""
    lags = []
    for arrival, stamp in zip(facts.arrivals_s, facts.stamps_s):
        now = clock.at(arrival) if sim_time else arrival
        if now is not None:
            lags.append(now - stamp)
    if not lags:
        return None
    lags.sort()
    return lags[len(lags) // 2]
