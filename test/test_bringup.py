"""gem_ros.bringup: the launch file's logic run directly (launch_ros is not installable here). The parameter files it
writes are read by rcl itself, into the real nodes, as `ros2 launch` would hand them over."""
from __future__ import annotations

import time
import types
from pathlib import Path

import pytest
import yaml

from gem_ros import bringup
from gem_ros.nodes.spinning import process_options

REPO = Path(__file__).resolve().parents[1]
PANDA_URDF = REPO / "urdf" / "panda" / "panda.urdf"


@pytest.fixture
def checkpoint(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    return str(folder)


def by_executable(specs):
    return {spec.executable: spec for spec in specs}


def only_values(spec):
    (values,) = spec.parameters.values()
    return values


def test_an_unknown_arm_fails_before_any_node_listing_the_known_arms(checkpoint):
    with pytest.raises(ValueError, match=r"unknown arm 'abb_gofa'.*known arms: .*panda") as error:
        bringup.plan({"arm": "abb_gofa", "checkpoint": checkpoint})
    assert "abb_gofa" in str(error.value)
    for bad in ("", "../panda", "panda/"):
        with pytest.raises(ValueError, match="unknown arm"):
            bringup.plan({"arm": bad, "checkpoint": checkpoint})


def test_every_bad_argument_is_named_at_once(tmp_path):
    raw = {"arm": "panda", "checkpoint": str(tmp_path / "missing"), "sim": "maybe", "executor": "fast",
           "realtime_priority": "200", "cpu_dma_latency_us": "x", "namespace": "two words", "urdf": "/no/such.urdf"}
    with pytest.raises(ValueError) as error:
        bringup.plan(raw)
    message = str(error.value)
    for part in ("checkpoint:=", "is not a folder", "sim:='maybe'", "executor:='fast'", "realtime_priority:='200'",
                 "cpu_dma_latency_us:='x'", "namespace:='two words'", "urdf:='/no/such.urdf'"):
        assert part in message, (part, message)
    with pytest.raises(ValueError, match="checkpoint:= is required"):
        bringup.plan({"arm": "panda"})


def test_use_sim_time_follows_sim_and_gem_sim_is_the_clock(checkpoint):
    on_sim = by_executable(bringup.plan({"checkpoint": checkpoint}))
    assert set(on_sim) == {"gem_sim", "gem_policy", "gem_executor"}
    assert only_values(on_sim["gem_policy"])["use_sim_time"] is True
    assert only_values(on_sim["gem_executor"])["use_sim_time"] is True
    assert "use_sim_time" not in only_values(on_sim["gem_sim"])   # it publishes /clock: its own timers are wall
    real = by_executable(bringup.plan({"checkpoint": checkpoint, "sim": "false"}))
    assert set(real) == {"gem_policy", "gem_executor"}
    assert only_values(real["gem_policy"])["use_sim_time"] is False
    assert only_values(real["gem_executor"])["use_sim_time"] is False
    composed = by_executable(bringup.plan({"checkpoint": checkpoint, "sim": "False", "composed": "true"}))
    assert [values["use_sim_time"] for values in composed["gem_policy_executor"].parameters.values()] == [False] * 2


def test_an_arm_yaml_that_sets_use_sim_time_is_refused(tmp_path, checkpoint):
    (tmp_path / "arm_x").mkdir()
    (tmp_path / "arm_x" / "gem.yaml").write_text("gem_executor:\n  ros__parameters:\n    use_sim_time: true\n")
    with pytest.raises(ValueError, match=r"gem_executor.ros__parameters.use_sim_time is set; remove it"):
        bringup.plan({"arm": "arm_x", "checkpoint": checkpoint, "sim": "false"}, root=tmp_path)


@pytest.mark.parametrize("arm", bringup.known_arms())
def test_every_shipped_arm_leaves_use_sim_time_to_the_launch(arm):
    config = bringup.arm_config(arm)
    for node in ("gem_sim", "gem_policy", "gem_executor"):
        bringup.node_section(config, node)   # raises if the YAML sets use_sim_time


def test_the_executor_gets_the_checkpoint_and_the_urdf_rules(checkpoint):
    from gem_ros.sim.arms import sim_arm, urdf_path

    executor = only_values(by_executable(bringup.plan({"checkpoint": checkpoint, "sim": "false"}))["gem_executor"])
    assert executor["checkpoint"] == checkpoint and executor["urdf_path"] == str(PANDA_URDF)   # auto: bundled
    on_sim = only_values(by_executable(bringup.plan({"checkpoint": checkpoint}))["gem_executor"])
    assert on_sim["urdf_path"] == str(urdf_path(sim_arm("panda")))   # auto on the simulator: the model's own
    given = only_values(by_executable(bringup.plan({"checkpoint": checkpoint, "urdf": str(PANDA_URDF)}))[
        "gem_executor"])
    assert given["urdf_path"] == str(PANDA_URDF)   # urdf:= wins
    for layout in ("false", "true"):
        specs = by_executable(bringup.plan({"checkpoint": checkpoint, "urdf": "", "composed": layout}))
        spec = specs["gem_policy_executor" if layout == "true" else "gem_executor"]
        executor = spec.parameters["/gem_executor"]
        assert "urdf_path" not in executor, "an empty urdf must be left out: rcl refuses `urdf_path:=`"
        assert "urdf_path" not in spec.params_yaml()
    notes = bringup.parse_arguments({"checkpoint": checkpoint, "arm": "panda", "sim": "false"}).notes
    assert notes == [f"urdf: {PANDA_URDF}"]


def test_sim_runs_a_real_arm_configuration_on_its_model_and_says_what_it_replaced(checkpoint):
    """arm:=ur5e sim:=true: the driver's FollowJointTrajectory action becomes gem_sim's JTC topic, the cameras
    gem_sim's, the URDF the model's (as gem_demo --arm ur5e); sim:=false keeps the YAML's."""
    args = bringup.parse_arguments({"arm": "ur5e", "checkpoint": checkpoint})
    assert any("backend follow_joint_trajectory -> topic" in note for note in args.notes), args.notes
    specs = by_executable(bringup.nodes_for(args))
    executor, policy = only_values(specs["gem_executor"]), only_values(specs["gem_policy"])
    sim = only_values(specs["gem_sim"])
    assert executor["backend"] == "topic" and sim["controller_name"] == executor["controller_name"]
    assert policy["camera_topics"] == ["camera/scene/image_raw", "camera/wrist/image_raw"]
    real = by_executable(bringup.plan({"arm": "ur5e", "checkpoint": checkpoint, "sim": "false"}))
    assert only_values(real["gem_executor"])["backend"] == "follow_joint_trajectory"
    assert "urdf_path" not in only_values(real["gem_executor"])   # no URDF shipped: robot_description
    with pytest.raises(ValueError, match="kinova_gen3"):   # no simulation model
        bringup.plan({"arm": "kinova_gen3", "checkpoint": checkpoint})


def test_process_arguments_are_what_each_command_line_accepts(checkpoint):
    specs = by_executable(bringup.plan({"checkpoint": checkpoint, "executor": "single", "policy_executor": "events",
                                        "realtime_priority": "20", "cpu_dma_latency_us": "0"}))
    executor = process_options(["gem_executor", *specs["gem_executor"].arguments], allow_realtime=True,
                               allow_managed=True)
    assert executor == ("single", 20, 0, True)   # --managed: the launch file's events bring it up
    assert process_options(["gem_policy", *specs["gem_policy"].arguments]) == ("events", 0, -1, False)
    assert process_options(["gem_sim", *specs["gem_sim"].arguments]).executor == "single"
    assert specs["gem_policy"].managed and specs["gem_executor"].managed and not specs["gem_sim"].managed
    composed = by_executable(bringup.plan({"checkpoint": checkpoint, "composed": "true", "sim": "false"}))
    spec = composed["gem_policy_executor"]
    assert spec.name is None and not spec.managed   # a name would rename both of its nodes; it starts itself
    assert process_options(["gem_policy_executor", *spec.arguments]).executor == "auto"
    assert spec.parameters["/gem_executor"]["subscribe_chunks"] is False
    with pytest.raises(ValueError, match="apply to gem_executor in its own process only"):
        bringup.plan({"checkpoint": checkpoint, "composed": "true", "realtime_priority": "10"})


def test_namespace_puts_every_node_under_it(checkpoint):
    for text, expected in (("", "/"), ("/", "/"), ("left", "/left"), ("/left/", "/left"), ("robots/left",
                                                                                           "/robots/left")):
        specs = bringup.plan({"checkpoint": checkpoint, "namespace": text})
        assert {spec.namespace for spec in specs} == {expected}
        assert {fqn for spec in specs for fqn in spec.parameters} == \
            {bringup.fully_qualified(expected, n) for n in ("gem_sim", "gem_policy", "gem_executor")}


def test_a_managed_node_is_activated_only_after_its_configure():
    """The launch handler's match against the transitions a real rclpy lifecycle node publishes: configure then
    activate matches once; a deactivate from the CLI (deactivating -> inactive) must not re-activate it."""
    rclpy = pytest.importorskip("rclpy")
    from lifecycle_msgs.msg import TransitionEvent
    from rclpy.context import Context
    from rclpy.lifecycle import LifecycleNode
    from rclpy.executors import SingleThreadedExecutor

    context = Context()
    rclpy.init(context=context)
    try:
        node = LifecycleNode("bringup_lifecycle_test", context=context)
        probe = rclpy.create_node("bringup_probe", context=context)
        events = []
        probe.create_subscription(TransitionEvent, "/bringup_lifecycle_test/transition_event", events.append, 50)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(probe)
        for _ in range(100):   # matched, so that no transition is missed
            if node.count_subscribers("/bringup_lifecycle_test/transition_event"):
                break
            executor.spin_once(timeout_sec=0.05)
        time.sleep(0.2)
        for trigger in (node.trigger_configure, node.trigger_activate, node.trigger_deactivate,
                        node.trigger_activate, node.trigger_deactivate, node.trigger_cleanup):
            trigger()
        for _ in range(100):
            if len(events) == 12:
                break
            executor.spin_once(timeout_sec=0.05)
        assert len(events) == 12, [(e.start_state.label, e.goal_state.label) for e in events]
        # launch_ros' OnStateTransition compares each given field with the event's state labels
        matches = [e for e in events if e.start_state.label == bringup.ACTIVATE_AFTER["start_state"]
                   and e.goal_state.label == bringup.ACTIVATE_AFTER["goal_state"]]
        assert len(matches) == 1
        assert sum(e.goal_state.label == "inactive" for e in events) == 3   # goal_state alone: 3 activations
        node.destroy_node()
        probe.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)


class _Recorded:
    """Stands in for a launch class in `api`: keeps its constructor's arguments."""
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


def recording_api():
    kinds = {name: type(name, (_Recorded,), {}) for name in ("Node", "LifecycleNode", "OnStateTransition",
                                                             "ChangeState", "EmitEvent", "RegisterEventHandler",
                                                             "LogInfo")}
    transition = types.SimpleNamespace(TRANSITION_CONFIGURE=1, TRANSITION_ACTIVATE=3)
    return types.SimpleNamespace(**kinds, Transition=transition)


def test_launch_actions_start_every_node_then_configure_and_activate_each_managed_one(checkpoint, tmp_path):
    api = recording_api()
    actions = bringup.launch_actions({"checkpoint": checkpoint, "sim": "false", "namespace": "left"}, api,
                                     params_folder=str(tmp_path))
    logs = [a for a in actions if isinstance(a, api.LogInfo)]
    nodes = [a for a in actions if isinstance(a, (api.Node, api.LifecycleNode))]
    events = [a for a in actions if not isinstance(a, (api.Node, api.LifecycleNode, api.LogInfo))]
    assert actions.index(nodes[-1]) < min(actions.index(e) for e in events)   # handlers need the nodes executed
    assert "urdf" in logs[0].kwargs["msg"]
    assert [type(n).__name__ for n in nodes] == ["LifecycleNode", "LifecycleNode"]
    for node in nodes:
        kwargs = node.kwargs
        assert kwargs["package"] == "gem_ros" and kwargs["namespace"] == "/left" and kwargs["output"] == "screen"
        params = yaml.safe_load(Path(kwargs["parameters"][0]).read_text())
        assert list(params) == [f"/left/{kwargs['name']}"]
        assert params[f"/left/{kwargs['name']}"]["ros__parameters"]["use_sim_time"] is False
    handlers = [e for e in events if isinstance(e, api.RegisterEventHandler)]
    configures = [e for e in events if isinstance(e, api.EmitEvent)]
    assert len(handlers) == len(configures) == 2
    for node, handler, configure in zip(nodes, handlers, configures):
        (on_transition,) = handler.args
        assert on_transition.kwargs["target_lifecycle_node"] is node
        assert on_transition.kwargs["start_state"] == "configuring" and on_transition.kwargs["goal_state"] == "inactive"
        (activate,) = on_transition.kwargs["entities"]
        change = activate.kwargs["event"].kwargs
        assert change["transition_id"] == api.Transition.TRANSITION_ACTIVATE
        assert [change["lifecycle_node_matcher"](n) for n in nodes] == [n is node for n in nodes]
        change = configure.kwargs["event"].kwargs
        assert change["transition_id"] == api.Transition.TRANSITION_CONFIGURE
        assert [change["lifecycle_node_matcher"](n) for n in nodes] == [n is node for n in nodes]
    composed = bringup.launch_actions({"checkpoint": checkpoint, "composed": "true"}, api, str(tmp_path))
    assert [type(a).__name__ for a in composed] == ["LogInfo", "Node", "Node"]   # gem_sim, gem_policy_executor
    assert composed[2].kwargs["name"] is None


def test_launch_actions_raise_before_building_any_node(tmp_path):
    api = recording_api()
    with pytest.raises(ValueError, match="unknown arm 'abb_gofa'"):
        bringup.launch_actions({"arm": "abb_gofa", "checkpoint": str(tmp_path)}, api, params_folder=str(tmp_path))
    assert list(tmp_path.iterdir()) == []   # not even a parameter file was written


# ---- the parameter files, read by rcl into the real nodes -----------------------------------------------------------
def ros_arguments(spec, params_file: str) -> list[str]:
    """The ROS arguments launch_ros gives a Node action's process (its `execute`: name, namespace, params file)."""
    args = ["--ros-args"]
    if spec.name:
        args += ["-r", f"__node:={spec.name}"]
    return args + ["-r", f"__ns:={spec.namespace}", "--params-file", params_file]


def nodes_started_from(spec, params_file):
    """rclpy.init with the process's arguments, then the nodes its executable builds (not configured)."""
    rclpy = pytest.importorskip("rclpy")
    from rclpy.context import Context

    from gem_ros.nodes.executor_node import ExecutorNode
    from gem_ros.nodes.policy_node import PolicyNode

    context = Context()
    rclpy.init(context=context, args=["gem", *ros_arguments(spec, params_file)])   # rcl refuses a bad rule here
    made = {"gem_policy_executor": (PolicyNode, ExecutorNode), "gem_policy": (PolicyNode,),
            "gem_executor": (ExecutorNode,)}[spec.executable]
    return context, [kind(context=context) for kind in made]


@pytest.mark.parametrize("composed", ["false", "true"])
def test_a_number_like_checkpoint_and_an_empty_urdf_reach_the_nodes_as_strings(composed, tmp_path, monkeypatch):
    """`checkpoint:=2024` (a folder named 2024) stays the string '2024'; `urdf:=''` leaves urdf_path '' without a
    rule rcl refuses; every value of the arm's YAML arrives, under a namespace too."""
    rclpy = pytest.importorskip("rclpy")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "2024").mkdir()
    specs = bringup.plan({"checkpoint": "2024", "urdf": "", "sim": "false", "composed": composed,
                          "namespace": "left"})
    for spec in specs:
        context, nodes = nodes_started_from(spec, bringup.write_params_file(spec, tmp_path))
        try:
            for node in nodes:
                assert node.get_fully_qualified_name() in spec.parameters
                expected = spec.parameters[node.get_fully_qualified_name()]
                assert node.get_parameter("checkpoint").value == "2024"
                assert node.get_parameter("use_sim_time").value is False
                if node.get_name() == "gem_executor":
                    assert node.get_parameter("urdf_path").value == ""
                    assert node.get_parameter("joint_names").value == expected["joint_names"]
                    assert node.get_parameter("control_rate_hz").value == expected["control_rate_hz"]
                    assert node.get_parameter("subscribe_chunks").value is (composed == "false")
                else:
                    assert node.get_parameter("camera_topics").value == expected["camera_topics"]
                node.destroy_node()
        finally:
            rclpy.try_shutdown(context=context)


@pytest.mark.parametrize("arm", bringup.known_arms())
def test_every_arm_launches_nodes_that_accept_its_parameters(arm, checkpoint, tmp_path):
    """rcl parses each generated file and every value fits the type the node declares (a string for a list, or a
    list for a number, would stop the node at start-up), in both layouts, on the simulator where it has a model."""
    rclpy = pytest.importorskip("rclpy")
    layouts = [{"sim": "false"}, {"sim": "false", "composed": "true"}]
    try:
        bringup.parse_arguments({"arm": arm, "checkpoint": checkpoint})
        layouts.append({"sim": "true"})
    except ValueError:   # no simulation model for this arm
        pass
    for layout in layouts:
        for spec in bringup.plan({"arm": arm, "checkpoint": checkpoint, "namespace": arm, **layout}):
            if spec.executable == "gem_sim":
                continue   # building gem_sim loads the physics model; its parameters are the arms' tests' concern
            context, nodes = nodes_started_from(spec, bringup.write_params_file(spec, tmp_path))
            try:
                for node in nodes:
                    expected = spec.parameters[node.get_fully_qualified_name()]
                    for name, value in expected.items():
                        if node.has_parameter(name):
                            assert node.get_parameter(name).value == value, (spec.executable, name)
                    node.destroy_node()
            finally:
                rclpy.try_shutdown(context=context)
