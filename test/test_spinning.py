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
                           allow_realtime=True) == ("auto", 50, -1)
    for bad in ("0.5", "-1", "100"):
        with pytest.raises(SystemExit):
            process_options(["gem_executor", "--realtime-priority", bad], allow_realtime=True)
    with pytest.raises(SystemExit):   # every other node: inference or busy work must not run real-time
        process_options(["gem_policy", "--realtime-priority", "50"])
    assert process_options(["gem_policy", "--realtime-priority", "0"]).realtime_priority == 0


def test_cpu_dma_latency_from_the_command_line_is_checked_and_only_for_gem_executor():
    assert process_options(["gem_executor"], allow_realtime=True).cpu_dma_latency_us == -1
    assert process_options(["gem_executor", "--cpu-dma-latency-us", "0", "--realtime-priority", "50"],
                           allow_realtime=True) == ("auto", 50, 0)
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


def test_every_launch_configuration_is_declared_and_passed_to_the_nodes():
    """launch_ros is not installable here: check the launch file's wiring statically."""
    tree = ast.parse((REPO / "gem_bringup" / "launch" / "gem.launch.py").read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    first_arg = lambda name: {c.args[0].value for c in calls if c.func.id == name and c.args}  # noqa: E731
    assert first_arg("LaunchConfiguration") <= first_arg("DeclareLaunchArgument")
    executor_default = next(kw.value.value for c in calls if c.func.id == "DeclareLaunchArgument"
                            and c.args[0].value == "executor" for kw in c.keywords if kw.arg == "default_value")
    assert executor_default in EXECUTOR_KINDS
    # Every node gets --executor: `arguments=<a list variable>` whose literal starts with "--executor".
    lists = {t.id: n.value for n in ast.walk(tree) if isinstance(n, ast.Assign) for t in n.targets
             if isinstance(t, ast.Name) and isinstance(n.value, ast.List)}
    nodes = [c for c in calls if c.func.id in ("Node", "LifecycleNode")]
    passed = [next((kw.value for kw in c.keywords if kw.arg == "arguments"), None) for c in nodes]
    assert len(nodes) == 4 and all(isinstance(v, ast.Name) and v.id in lists for v in passed), "arguments missing"
    assert all(lists[v.id].elts[0].value == "--executor" for v in passed)
    # gem_executor also gets the latency options, each from its launch argument (declared: checked above).
    executor_node = next(c for c in nodes if any(kw.arg == "name" and kw.value.value == "gem_executor"
                                                 for kw in c.keywords))
    control = lists[next(kw.value.id for kw in executor_node.keywords if kw.arg == "arguments")]
    for option, argument in (("--realtime-priority", "realtime_priority"),
                             ("--cpu-dma-latency-us", "cpu_dma_latency_us")):
        flag = next(i for i, e in enumerate(control.elts) if isinstance(e, ast.Constant) and e.value == option)
        assert control.elts[flag + 1].func.id == "LaunchConfiguration"
        assert control.elts[flag + 1].args[0].value == argument
    # and every launch default is one the node's command line accepts
    defaults = {c.args[0].value: kw.value.value for c in calls if c.func.id == "DeclareLaunchArgument"
                for kw in c.keywords if kw.arg == "default_value" and isinstance(kw.value, ast.Constant)}
    assert process_options(["gem_executor", "--realtime-priority", defaults["realtime_priority"],
                            "--cpu-dma-latency-us", defaults["cpu_dma_latency_us"]], allow_realtime=True) \
        == ("auto", 0, -1)


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


def test_composed_launch_replaces_policy_and_executor_with_gem_policy_executor():
    """composed:=true: one gem_policy_executor process with both nodes' parameters, the two separate nodes and the
    lifecycle events that drive gem_policy off (gem_policy_executor configures itself)."""
    tree = ast.parse((REPO / "gem_bringup" / "launch" / "gem.launch.py").read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    keyword = lambda call, name: next((kw.value for kw in call.keywords if kw.arg == name), None)  # noqa: E731
    declared = {c.args[0].value: keyword(c, "default_value") for c in calls if c.func.id == "DeclareLaunchArgument"}
    assert declared["composed"].value == "false"
    composed = {t.id for n in ast.walk(tree) if isinstance(n, ast.Assign) for t in n.targets
                if isinstance(n.value, ast.Call) and getattr(n.value.func, "id", "") == "LaunchConfiguration"
                and n.value.args[0].value == "composed"}

    def condition(call) -> str:
        cond = keyword(call, "condition")
        assert cond is not None and isinstance(cond.args[0], ast.Name) and cond.args[0].id in composed, \
            f"{ast.unparse(call)[:80]} has no composed condition"
        return cond.func.id

    by_executable = {keyword(c, "executable").value: c for c in calls if c.func.id in ("Node", "LifecycleNode")}
    assert condition(by_executable["gem_policy_executor"]) == "IfCondition"
    assert condition(by_executable["gem_policy"]) == condition(by_executable["gem_executor"]) == "UnlessCondition"
    assigned = {t.id: n.value for n in ast.walk(tree) if isinstance(n, ast.Assign) for t in n.targets
                if isinstance(t, ast.Name)}
    assert condition(assigned["configure"]) == condition(assigned["activate_when_configured"]) == "UnlessCondition"
    # The YAML first, then the node-scoped rules: rcl keeps the last value of a parameter (launch_ros would put a
    # `parameters=` file after them).
    rules = [ast.unparse(e) for e in keyword(by_executable["gem_policy_executor"], "ros_arguments").elts]
    assert rules == ["'--params-file'", "params", "'-p'", "['gem_policy:checkpoint:=', checkpoint]",
                     "'-p'", "['gem_executor:urdf_path:=', urdf]", "'-p'", "['gem_executor:checkpoint:=', checkpoint]"]
    assert keyword(by_executable["gem_policy_executor"], "parameters") is None
    assert keyword(by_executable["gem_policy_executor"], "name") is None   # a name would rename both nodes
    # urdf:= reaches both layouts' executor; its default is the bundled URDF of arm:=
    urdf = assigned["urdf"]
    assert ast.unparse(urdf) == "LaunchConfiguration('urdf')"
    assert "urdf_path" in ast.unparse(keyword(by_executable["gem_executor"], "parameters"))
    # and the checkpoint: its io decides the executor's action space (issue 16.8)
    assert "'checkpoint': checkpoint" in ast.unparse(keyword(by_executable["gem_executor"], "parameters"))
    assert "'urdf', arm, [arm, '.urdf']" in ast.unparse(declared["urdf"])


def test_the_robot_yaml_leaves_what_the_launch_file_sets_to_it():
    """gem.launch.py passes checkpoint and urdf_path per node; launch_ros puts `parameters=` files after them and
    rcl keeps the last value, so the YAML must not carry those keys (an empty urdf_path there overrode the launch
    file's and the executor refused to start)."""
    import yaml

    config = yaml.safe_load((REPO / "gem_bringup" / "config" / "panda" / "gem.yaml").read_text())
    assert "checkpoint" not in config["gem_policy"]["ros__parameters"]
    for key in ("checkpoint", "action_space", "chunk_dt_s"):   # the checkpoint decides these (issue 16.8)
        assert key not in config["gem_executor"]["ros__parameters"]
    assert "urdf_path" not in config["gem_executor"]["ros__parameters"]
    assert "robot_description" not in config["gem_executor"]["ros__parameters"]



def test_launch_description_builds_where_launch_ros_is_installed():
    """Where launch_ros exists (a ROS install, not this pip environment) the file must at least construct: a wrong
    keyword of a launch action fails here rather than at `ros2 launch`."""
    pytest.importorskip("launch_ros")
    import importlib.util

    spec = importlib.util.spec_from_file_location("gem_launch", REPO / "gem_bringup" / "launch" / "gem.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    assert len(description.entities) >= 10
