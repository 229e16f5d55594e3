"""What `ros2 launch gem_bringup gem.launch.py` starts, in plain Python: argument checks, parameters, names.

The launch file only turns `plan(arguments)` into launch_ros actions, so everything here runs in tests without
launch_ros. Rules:
- Every argument is checked before any node starts; all problems are reported at once (an unknown arm lists the
  known ones).
- `use_sim_time` follows `sim` for gem_policy and gem_executor (an arm's YAML must not set it): off the simulator
  nothing publishes /clock and ROS-time timers would never fire. gem_sim is the clock, so it stays on wall time.
- Each node's parameters (the arm's YAML section, then what the arguments decide) go into one generated YAML file
  keyed by the node's fully qualified name. Values keep their type: `checkpoint:=2024` stays the string '2024'
  (launch_ros would read a dict value as YAML, an int), and an empty urdf is left out rather than passed as
  `urdf_path:=`, which rcl refuses.
- `namespace:=` puts every node under one namespace; their topic names are relative, so the chain (chunks,
  status, action, joint_states, cameras, controller) moves with it and two arms run side by side.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gem_ros.core.realtime import check_priority, check_wakeup_latency

REPO = Path(__file__).resolve().parents[1]
EXECUTOR_KINDS = ("auto", "events", "single")   # gem_ros.nodes.spinning (not imported: it needs rclpy)
TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")

# name -> (default or None when required, description): the launch file declares exactly these.
ARGUMENTS: dict[str, tuple[str | None, str]] = {
    "arm": ("panda", "folder under gem_bringup/config holding the arm's gem.yaml"),
    "checkpoint": (None, "GEM-VLA checkpoint folder"),
    "sim": ("true", "true: start the embedded pybullet arm (it publishes /clock) and run on sim time; "
                    "false: a real arm's driver, wall time"),
    "namespace": ("", "ROS namespace of every node (e.g. left): two arms side by side"),
    "urdf": ("auto", "URDF whose limits gem_executor enforces: auto = the one gem_ros ships for arm:= if any, "
                     "else the URDF latched on robot_description; '' = robot_description; or a path"),
    "composed": ("false", "true: gem_policy + gem_executor in one process (gem_policy_executor)"),
    "executor": ("auto", "rclpy executor of gem_sim and gem_executor: auto|events|single"),
    "policy_executor": ("auto", "rclpy executor of gem_policy (or gem_policy_executor): auto|events|single"),
    "realtime_priority": ("0", "gem_executor: SCHED_FIFO priority 1-99 of its threads (0 = off)"),
    "cpu_dma_latency_us": ("-1", "gem_executor: hold CPU wake-up latency <= N us while it runs (-1 = off)"),
}


@dataclass(frozen=True)
class NodeSpec:
    """One process to start."""
    executable: str                    # a gem_ros console script
    name: str | None                   # None: gem_policy_executor (a name would rename both of its nodes)
    namespace: str                     # absolute; "/" = root
    parameters: dict[str, dict[str, Any]]   # node fully qualified name -> its parameters
    arguments: tuple[str, ...] = ()    # the process's own options (before --ros-args)
    managed: bool = False              # a lifecycle node the launch file configures and activates

    def params_yaml(self) -> str:
        """The ROS 2 parameter file of this process (`--params-file`)."""
        return yaml.safe_dump({fqn: {"ros__parameters": values} for fqn, values in self.parameters.items()},
                              sort_keys=False, default_flow_style=None, width=120)


@dataclass(frozen=True)
class Arguments:
    arm: str
    config: Path                       # the arm's gem.yaml
    checkpoint: str
    sim: bool
    namespace: str                     # absolute; "/" = root
    urdf: str                          # a file, or "" = robot_description
    composed: bool
    executor: str
    policy_executor: str
    realtime_priority: int
    cpu_dma_latency_us: int
    notes: list[str] = field(default_factory=list, compare=False)   # what `auto` chose, for the log
    sim_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)   # node -> its sim:=true wiring


def _share(package: str) -> Path | None:
    """A colcon-installed package's share folder; None outside a ROS environment (pip only, no AMENT_PREFIX_PATH)."""
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory(package))
    except (ImportError, LookupError, OSError):   # no ament_index / package not found / AMENT_PREFIX_PATH unset
        return None


def config_root() -> Path:
    """gem_bringup/config from the install (colcon) or the source tree."""
    share = _share("gem_bringup")
    return share / "config" if share else REPO / "gem_bringup" / "config"


def known_arms(root: Path | None = None) -> list[str]:
    root = root or config_root()
    return sorted(p.name for p in root.iterdir() if (p / "gem.yaml").is_file()) if root.is_dir() else []


def arm_config(arm: str, root: Path | None = None) -> Path:
    """The arm's gem.yaml; an unknown arm names the known ones."""
    root = root or config_root()
    path = root / arm / "gem.yaml"
    if not arm or "/" in arm or arm.startswith(".") or not path.is_file():
        raise ValueError(f"unknown arm {arm!r}: no {path}; known arms: {', '.join(known_arms(root)) or 'none'}")
    return path


def bundled_urdf(arm: str) -> Path | None:
    """The URDF gem_ros ships for `arm` (share/gem_ros/urdf/<arm>/<arm>.urdf, or the source tree), if any."""
    share = _share("gem_ros")
    candidates = [folder / "urdf" / arm / f"{arm}.urdf" for folder in ([share] if share else []) + [REPO]]
    return next((c for c in candidates if c.is_file()), None)


def node_section(config: Path, node: str) -> dict[str, Any]:
    """`node: ros__parameters: {...}` of a parameter YAML ({} when absent); use_sim_time there is refused."""
    data = yaml.safe_load(Path(config).read_text()) or {}
    section = data.get(node, data.get(f"/{node}")) or {}
    values = dict(section.get("ros__parameters") or {})
    if "use_sim_time" in values:
        raise ValueError(f"{config}: {node}.ros__parameters.use_sim_time is set; remove it: it follows sim:= "
                         "(set by the launch file / gem_ros.bringup)")
    return values


def node_values(config: Path, node: str, sim: bool, **overrides) -> dict[str, Any]:
    """A gem node's parameters as the launch file gives them: its YAML section, use_sim_time = sim, overrides."""
    return {**node_section(config, node), "use_sim_time": bool(sim), **overrides}


def parse_arguments(raw: Mapping[str, str], root: Path | None = None) -> Arguments:
    """Launch arguments (strings, as `ros2 launch` gives them) -> checked Arguments; ValueError lists every
    problem."""
    problems, notes = [], []
    values = {name: raw.get(name, default) for name, (default, _) in ARGUMENTS.items()}

    def flag(name: str) -> bool:
        text = str(values[name]).strip().lower()
        if text not in TRUE + FALSE:
            problems.append(f"{name}:={values[name]!r} is not true or false")
        return text in TRUE

    def integer(name: str, check) -> int:
        try:
            return check(int(str(values[name]).strip()))
        except ValueError as error:
            problems.append(f"{name}:={values[name]!r}: {error}")
            return int(ARGUMENTS[name][0])

    config = None
    try:
        config = arm_config(str(values["arm"]), root)
    except ValueError as error:
        problems.append(str(error))
    checkpoint = str(values["checkpoint"] or "")
    if not checkpoint:
        problems.append("checkpoint:= is required: the GEM-VLA checkpoint folder gem_policy serves")
    elif not Path(checkpoint).is_dir():
        problems.append(f"checkpoint:={checkpoint!r} is not a folder")
    sim, composed = flag("sim"), flag("composed")
    for name in ("executor", "policy_executor"):
        if values[name] not in EXECUTOR_KINDS:
            problems.append(f"{name}:={values[name]!r}: choose one of {EXECUTOR_KINDS}")
    priority = integer("realtime_priority", check_priority)
    latency = integer("cpu_dma_latency_us", check_wakeup_latency)
    if composed and (priority != 0 or latency != -1):
        problems.append("realtime_priority / cpu_dma_latency_us apply to gem_executor in its own process only "
                        "(composed:=true plans chunks on the inference thread, which never runs real-time)")
    overrides = _sim_overrides(config, notes, problems) if config is not None and sim else {}
    urdf = str(values["urdf"])
    if urdf == "auto":   # on the simulator the model's own URDF, else the one gem_ros ships, else the topic
        bundled = overrides.get("gem_executor", {}).get("urdf_path") or bundled_urdf(str(values["arm"]))
        urdf = str(bundled) if bundled else ""
        notes.append(f"urdf: {urdf}" if bundled else "urdf: none shipped for this arm, gem_executor reads the one "
                                                     "latched on robot_description")
    elif urdf and not Path(urdf).is_file():
        problems.append(f"urdf:={urdf!r} is not a file ('' = the URDF latched on robot_description)")
    overrides.get("gem_executor", {}).pop("urdf_path", None)   # urdf:= decides
    namespace = _namespace(str(values["namespace"]), problems)
    if problems:
        raise ValueError("gem.launch.py: " + "; ".join(problems))
    return Arguments(str(values["arm"]), config, checkpoint, sim, namespace, urdf, composed, values["executor"],
                     values["policy_executor"], priority, latency, notes, overrides)


def _sim_overrides(config: Path, notes: list[str], problems: list[str]) -> dict[str, dict[str, Any]]:
    """sim:=true runs the arm's configuration on its simulation model, as gem_demo --arm does
    (gem_ros.sim.arm_wiring: JTC topic backend, the model's gripper, cameras and URDF); what it replaces is noted."""
    try:
        if not node_section(config, "gem_sim"):
            problems.append(f"sim:=true but {config} has no gem_sim section: the embedded simulator does not model "
                            "this arm; use sim:=false with the arm's driver")
            return {}
        from gem_ros.sim.arm_wiring import read_sections, sim_wiring

        wiring = sim_wiring(read_sections(config), str(config))
    except ValueError as error:
        problems.append(str(error))
        return {}
    notes += [f"sim: {note}" for note in wiring.notes]
    return {"gem_sim": dict(wiring.sim), "gem_policy": dict(wiring.policy), "gem_executor": dict(wiring.executor)}


def _namespace(text: str, problems: list[str]) -> str:
    """'' or '/' -> '/'; 'left' or '/left/' -> '/left'; an invalid ROS namespace is a problem."""
    namespace = "/" + text.strip().strip("/") if text.strip().strip("/") else "/"
    try:
        from rclpy.exceptions import InvalidNamespaceException
        from rclpy.validate_namespace import validate_namespace
    except ImportError:   # checked by the node at start-up instead
        return namespace
    try:
        validate_namespace(namespace)
    except InvalidNamespaceException as error:
        problems.append(f"namespace:={text!r} is not a valid ROS namespace: {error}")
    return namespace


def fully_qualified(namespace: str, name: str) -> str:
    return f"{namespace.rstrip('/')}/{name}"


def plan(raw: Mapping[str, str], root: Path | None = None) -> list[NodeSpec]:
    """The processes `gem.launch.py` starts for these launch arguments (ValueError before any starts)."""
    return nodes_for(parse_arguments(raw, root))


def nodes_for(args: Arguments) -> list[NodeSpec]:
    ns, sim, wired = args.namespace, args.sim, args.sim_overrides
    policy = node_values(args.config, "gem_policy", sim, **wired.get("gem_policy", {}), checkpoint=args.checkpoint)
    executor = node_values(args.config, "gem_executor", sim, **wired.get("gem_executor", {}),
                           checkpoint=args.checkpoint, **({"urdf_path": args.urdf} if args.urdf else {}))
    specs = []
    if sim:   # the clock itself: wall time
        specs.append(NodeSpec("gem_sim", "gem_sim", ns, {fully_qualified(ns, "gem_sim"): {
            **node_section(args.config, "gem_sim"), **wired.get("gem_sim", {})}}, ("--executor", args.executor)))
    if args.composed:   # one process configures and activates both of its nodes itself
        specs.append(NodeSpec("gem_policy_executor", None, ns, {
            fully_qualified(ns, "gem_policy"): policy,
            fully_qualified(ns, "gem_executor"): {**executor, "subscribe_chunks": False}},
            ("--executor", args.policy_executor)))
        return specs
    specs.append(NodeSpec("gem_executor", "gem_executor", ns, {fully_qualified(ns, "gem_executor"): executor},
                          ("--executor", args.executor, "--realtime-priority", str(args.realtime_priority),
                           "--cpu-dma-latency-us", str(args.cpu_dma_latency_us), "--managed"), managed=True))
    specs.append(NodeSpec("gem_policy", "gem_policy", ns, {fully_qualified(ns, "gem_policy"): policy},
                          ("--executor", args.policy_executor), managed=True))
    return specs


# A managed node is activated after this transition only: configuring -> inactive. Matching the goal state alone
# also caught deactivating -> inactive and undid every `ros2 lifecycle set <node> deactivate`.
ACTIVATE_AFTER = {"start_state": "configuring", "goal_state": "inactive"}


def launch_actions(raw: Mapping[str, str], api, params_folder: str | None = None) -> list:
    """The launch entities for `plan(raw)`: every process, then for each managed node a handler that activates
    it once configured and the event that configures it. `api` holds the launch classes (the launch file passes
    launch_ros' Node, LifecycleNode, OnStateTransition, ChangeState, launch's EmitEvent, RegisterEventHandler,
    LogInfo and lifecycle_msgs' Transition), so that this composition runs in tests without launch_ros."""
    args = parse_arguments(raw)   # ValueError here: nothing has started
    specs = nodes_for(args)
    logs, nodes, events = [api.LogInfo(msg=f"gem.launch.py: {note}") for note in args.notes], [], []
    for spec in specs:
        kind = api.LifecycleNode if spec.managed else api.Node
        node = kind(package="gem_ros", executable=spec.executable, name=spec.name, namespace=spec.namespace,
                    parameters=[write_params_file(spec, params_folder)], arguments=list(spec.arguments),
                    output="screen")
        nodes.append(node)
        if spec.managed:
            def change(transition: int, target=node):
                return api.EmitEvent(event=api.ChangeState(lifecycle_node_matcher=lambda action: action is target,
                                                           transition_id=transition))
            events.append(api.RegisterEventHandler(api.OnStateTransition(
                target_lifecycle_node=node, **ACTIVATE_AFTER,
                entities=[change(api.Transition.TRANSITION_ACTIVATE)])))
            events.append(change(api.Transition.TRANSITION_CONFIGURE))
    return logs + nodes + events


def write_params_file(spec: NodeSpec, folder: str | os.PathLike | None = None) -> str:
    """`spec`'s parameter file in a fresh temporary file (kept: the process reads it when it starts)."""
    with tempfile.NamedTemporaryFile("w", prefix=f"gem_{spec.executable}_", suffix=".yaml", dir=folder,
                                     delete=False) as file:
        file.write(spec.params_yaml())
    return file.name
