"""gem_ros.nodes.spinning: executor choice on the command line and in the launch file, and the events executor
spun so that other Python threads (inference, publishers) keep running and shutdown is bounded."""
from __future__ import annotations

import ast
import multiprocessing
import threading
import time
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy")

from gem_ros import bringup  # noqa: E402
from gem_ros.nodes.spinning import (EXECUTOR_KINDS, EventsSpinner, events_executor_available,  # noqa: E402
                                    make_executor, process_options, resolve_kind)


REPO = Path(__file__).resolve().parents[1]


def test_executor_from_the_command_line_leaves_ros_arguments_to_rclpy():
    assert process_options(["gem_policy"]).executor == "auto"
    options = process_options(["gem_policy", "--executor", "single", "--ros-args", "-p", "checkpoint:=/x"])
    assert options.executor == "single"
    with pytest.raises(SystemExit):
        process_options(["gem_policy", "--executor", "fastest"]).executor
    with pytest.raises(SystemExit):   # a typo is refused, not ignored
        process_options(["gem_policy", "--executr", "single"]).executor


def test_realtime_priority_from_the_command_line_is_checked_and_refused_where_inference_runs():
    assert process_options(["gem_executor"], allow_realtime=True).realtime_priority == 0
    assert process_options(["gem_executor", "--realtime-priority", "50", "--ros-args", "-p", "x:=1"],
                           allow_realtime=True) == ("auto", 50, -1, False)
    for bad in ("0.5", "-1", "100"):
        with pytest.raises(SystemExit):
            process_options(["gem_executor", "--realtime-priority", bad], allow_realtime=True)
    with pytest.raises(SystemExit):   # every other node: inference or busy work must not run real-time
        process_options(["gem_policy", "--realtime-priority", "50"])
    assert process_options(["gem_policy", "--realtime-priority", "0"]).realtime_priority == 0


def test_cpu_dma_latency_from_the_command_line_is_checked_and_only_for_gem_executor():
    assert process_options(["gem_executor"], allow_realtime=True).cpu_dma_latency_us == -1
    assert process_options(["gem_executor", "--cpu-dma-latency-us", "0", "--realtime-priority", "50"],
                           allow_realtime=True) == ("auto", 50, 0, False)
    for bad in ("0.5", "-2", "1000001", "x"):
        with pytest.raises(SystemExit):
            process_options(["gem_executor", "--cpu-dma-latency-us", bad], allow_realtime=True)
    with pytest.raises(SystemExit):
        process_options(["gem_policy", "--cpu-dma-latency-us", "0"])
    assert process_options(["gem_sim", "--cpu-dma-latency-us", "-1"]).cpu_dma_latency_us == -1


def test_an_abbreviated_or_unavailable_executor_is_refused_on_the_command_line(monkeypatch):
    with pytest.raises(SystemExit):
        process_options(["gem_policy", "--exec", "single"]).executor
    monkeypatch.setattr("gem_ros.nodes.spinning.events_executor_available", lambda: False)
    with pytest.raises(SystemExit):
        process_options(["gem_policy", "--executor", "events"]).executor
    assert resolve_kind("auto") == "single"


def test_unknown_kind_is_refused_and_auto_keeps_inference_processes_on_the_single_executor():
    with pytest.raises(ValueError, match="unknown executor"):
        make_executor("multi")
    assert resolve_kind("single") == "single" and resolve_kind("events", runs_inference=True) == "events"
    assert resolve_kind("auto") == ("events" if events_executor_available() else "single")
    assert resolve_kind("auto", runs_inference=True) == "single"


def _spin_publish_and_stop(result) -> None:
    """In a child process: a GIL-holding spin (rclpy 9.1.2's EventsExecutor.spin) hangs it instead of the suite."""
    from std_msgs.msg import Header

    context = rclpy.context.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("spinning_test", context=context)
    received, ticks = [], []
    node.create_subscription(Header, "/spinning_test", received.append, 100)
    node.create_timer(0.02, lambda: ticks.append(time.monotonic()))
    publisher = node.create_publisher(Header, "/spinning_test", 100)
    spinner = make_executor("events", context)
    spinner.add_node(node)
    thread = threading.Thread(target=spinner.spin, daemon=True)
    thread.start()
    for i in range(50):   # this (main) thread must keep running while the executor spins
        publisher.publish(Header(frame_id=str(i)))
        time.sleep(0.005)
    deadline = time.monotonic() + 5.0
    while len(received) < 50 and time.monotonic() < deadline:
        time.sleep(0.01)
    start = time.monotonic()
    stopped = spinner.shutdown(timeout_sec=2.0)
    thread.join(2.0)
    result.update(received=[m.frame_id for m in received], ticks=len(ticks), stopped=stopped,
                  joined=not thread.is_alive(), stop_s=time.monotonic() - start,
                  kind=type(spinner).__name__)
    node.destroy_node()
    rclpy.shutdown(context=context)


@pytest.mark.skipif(not events_executor_available(), reason="rclpy has no EventsExecutor (before Kilted)")
def test_events_spinner_delivers_while_other_threads_publish_and_stops_promptly():
    spawn = multiprocessing.get_context("spawn")
    with spawn.Manager() as manager:
        result = manager.dict()
        child = spawn.Process(target=_spin_publish_and_stop, args=(result,))
        child.start()
        child.join(30.0)
        if child.is_alive():
            child.kill()
            pytest.fail("the events executor starved the other threads (no result within 30 s)")
        result = dict(result)
    assert child.exitcode == 0
    assert result["kind"] == EventsSpinner.__name__
    assert result["received"] == [str(i) for i in range(50)]
    assert result["ticks"] >= 5, "the timer did not fire"
    assert result["stopped"] and result["joined"] and result["stop_s"] < 1.0


LAUNCH_FILE = REPO / "gem_bringup" / "launch" / "gem.launch.py"


def test_the_launch_file_only_composes_what_gem_ros_bringup_decides():
    """launch_ros is not installable here: check statically that the launch file is the thin shell over
    gem_ros.bringup (whose logic test_bringup runs): its arguments come from bringup.ARGUMENTS, its actions from
    bringup.launch_actions, and the launch classes it hands over are every one launch_actions uses."""
    from gem_ros import bringup

    tree = ast.parse(LAUNCH_FILE.read_text())
    modules = {n.module for n in tree.body if isinstance(n, ast.ImportFrom)}
    assert modules <= {"launch", "launch.actions", "launch_ros.actions", "launch_ros.event_handlers",
                       "launch_ros.events.lifecycle", "lifecycle_msgs.msg", "gem_ros"}, modules
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    # Substitutions are resolved in Python (bringup), not by the launch release: the nested-list
    # PathJoinSubstitution older Jazzy releases reject, and LaunchConfiguration, are gone.
    assert not names & {"PathJoinSubstitution", "LaunchConfiguration", "FindPackageShare", "IfCondition"}
    source = ast.unparse(tree)
    assert "bringup.ARGUMENTS.items()" in source and "DeclareLaunchArgument(name" in source
    assert "OpaqueFunction(function=lambda context: bringup.launch_actions(context.launch_configurations, _Api))" \
        in source
    api = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "_Api")
    given = {t.id for a in api.body if isinstance(a, ast.Assign) for t in a.targets[0].elts}
    used = {n.attr for n in ast.walk(ast.parse(Path(bringup.__file__).read_text()))
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "api"}
    assert used == given, (used, given)


def test_launch_argument_defaults_are_what_the_nodes_command_lines_accept():
    assert bringup.EXECUTOR_KINDS == EXECUTOR_KINDS   # bringup keeps a copy: it must not import rclpy
    defaults = {name: default for name, (default, _) in bringup.ARGUMENTS.items()}
    assert defaults["checkpoint"] is None   # required: `ros2 launch` refuses to start without it
    assert process_options(["gem_executor", "--executor", defaults["executor"], "--realtime-priority",
                            defaults["realtime_priority"], "--cpu-dma-latency-us", defaults["cpu_dma_latency_us"],
                            "--managed"], allow_realtime=True, allow_managed=True) == ("auto", 0, -1, True)
    assert process_options(["gem_policy", "--executor", defaults["policy_executor"]]).executor == "auto"
    with pytest.raises(SystemExit):   # only gem_executor starts itself; the policy is always managed
        process_options(["gem_policy", "--managed"])


@pytest.mark.skipif(not events_executor_available(), reason="rclpy has no EventsExecutor (before Kilted)")
def test_events_spinner_returns_quietly_when_the_context_shuts_down_first():
    context = rclpy.context.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("spinning_shutdown_test", context=context)
    spinner = make_executor("events", context)
    spinner.add_node(node)
    errors = []
    thread = threading.Thread(target=lambda: _record_errors(spinner.spin, errors), daemon=True)
    thread.start()
    time.sleep(0.2)
    node.destroy_node()
    rclpy.shutdown(context=context)
    thread.join(2.0)
    assert not thread.is_alive() and errors == []
    spinner.shutdown(timeout_sec=1.0)


def _record_errors(fn, errors: list) -> None:
    try:
        fn()
    except Exception as error:  # noqa: BLE001 - the test asserts there is none
        errors.append(error)


@pytest.mark.parametrize("arm", bringup.known_arms())
def test_an_arm_yaml_leaves_what_the_launch_file_sets_to_it(arm):
    """The launch file (gem_ros.bringup) sets checkpoint, urdf_path and use_sim_time per node; a value in the arm's
    YAML would be a second source (an empty urdf_path there once overrode the launch file's and the executor refused
    to start), and use_sim_time must follow sim:= (a real arm has no /clock)."""
    import yaml

    config = yaml.safe_load(bringup.arm_config(arm).read_text())
    for node in ("gem_sim", "gem_policy", "gem_executor"):
        assert "use_sim_time" not in ((config.get(node) or {}).get("ros__parameters") or {}), node
    assert "checkpoint" not in config["gem_policy"]["ros__parameters"]
    for key in ("checkpoint", "action_space", "chunk_dt_s", "urdf_path", "robot_description"):
        assert key not in config["gem_executor"]["ros__parameters"], key   # the checkpoint decides (issue 16.8)


def test_launch_description_builds_where_launch_ros_is_installed(tmp_path):
    """Where launch_ros exists (a ROS install, not this pip environment) the file must at least construct: a wrong
    keyword of a launch action fails here rather than at `ros2 launch`."""
    pytest.importorskip("launch_ros")
    import importlib.util

    spec = importlib.util.spec_from_file_location("gem_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    assert len(description.entities) == len(bringup.ARGUMENTS) + 1
    # and the actions gem_ros.bringup composes, with the real launch classes (wrong keywords fail here)
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    for layout in ("false", "true"):
        actions = bringup.launch_actions({"checkpoint": str(checkpoint), "composed": layout, "namespace": "left"},
                                         module._Api, params_folder=str(tmp_path))
        assert len(actions) >= 2
