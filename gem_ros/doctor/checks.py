"""gem_doctor's verdicts: each check judges a Setup against observed Facts and says how to fix what fails (no ROS).

A Result is PASS, WARN (runs, but not as configured or intended) or FAIL (the chain will hold or refuse to start).
Thresholds come from the configuration itself: a camera slower than 1 / max_observation_age_s starves the policy,
joint states slower than 1 / joint_state_timeout_s hold the executor.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from gem_ros.core.execution import EE_DELTA_CHANNELS, GRIPPER_CHANNEL
from gem_ros.core.executor_setup import resolve_action_io
from gem_ros.core.kinematics import load_urdf_limits
from gem_ros.core.observation.images import COLOR_ENCODINGS, DEPTH_ENCODINGS, check_compressed, check_raw_layout
from gem_ros.core.policy.config import IOSchema
from gem_ros.doctor.facts import (IMAGE_TYPES, JOINT_STATE_TYPE, TRAJECTORY_TYPE, CameraFacts, EndpointFacts, Facts,
                                  JointStateFacts, Setup, median_lag_s, names, rate_hz)

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
_ORDER = {PASS: 0, WARN: 1, FAIL: 2}


@dataclass(frozen=True)
class Result:
    check: str
    status: str        # PASS | WARN | FAIL
    message: str       # what was found
    fix: str = ""      # what to do (empty on PASS)


def _worst(check: str, findings: list[tuple[str, str, str]], ok: str) -> Result:
    """One row from (status, message, fix) findings: the worst status, every problem's message and fix."""
    problems = [f for f in findings if f[0] != PASS]
    if not problems:
        return Result(check, PASS, ok)
    status = max((f[0] for f in problems), key=_ORDER.get)
    return Result(check, status, "; ".join(f[1] for f in problems),
                  " ".join(dict.fromkeys(f[2] for f in problems if f[2])))


def sim_time(setup: Setup, facts: Facts) -> bool:
    """Whether gem's nodes judge ages on /clock: their use_sim_time when known, else whether /clock runs."""
    flags = [n.parameters["use_sim_time"] for n in facts.nodes.values() if "use_sim_time" in n.parameters]
    return any(flags) if flags else bool(facts.clock.stamps_s)


def _silent(topic, what: str, publisher_types: list[str], expected_type: str, fix: str):
    """The finding for a topic nobody (or the wrong type) publishes, or None when it has the right publisher."""
    if not publisher_types:
        return FAIL, f"nobody publishes {topic}", fix
    wrong = sorted(set(publisher_types) - {expected_type})
    if wrong:
        return FAIL, f"{topic} carries {wrong}, not {expected_type}", \
            f"publish {expected_type} there or point {what} at the right topic."
    return None


def _timing(facts, window_s: float, fail_below_hz: float, want_hz: float, max_age_s: float, max_future_s: float,
            clock, sim: bool, why: str) -> list[tuple[str, str, str]]:
    """Rate and stamp-age findings of a stream the chain judges by its stamps (the last one: PASS, its rate)."""
    if sim and len(clock.stamps_s) > 1:   # the window in sim time, which a loaded simulator stretches
        window_s = max(clock.stamps_s[-1] - clock.stamps_s[0], 1e-3)
    rate, basis = rate_hz(facts, window_s)
    findings = [(PASS, f"{rate:.1f} Hz", "")]
    if rate < fail_below_hz:
        findings.insert(0, (FAIL, f"{rate:.1f} Hz ({basis}), below the {fail_below_hz:.1f} Hz {why}",
                         "raise the publisher's rate, or relax the limit in the arm's YAML."))
    elif rate < want_hz:
        findings.insert(0, (WARN, f"{rate:.1f} Hz ({basis}), below the {want_hz:.1f} Hz expected",
                         "raise the publisher's rate."))
    if facts.stamps_s and all(s == 0 for s in facts.stamps_s):
        findings.insert(0, (FAIL, "header.stamp is 0: gem_policy takes such data for stale",
                            "stamp the messages (the driver's header.stamp)."))
        return findings
    lag = median_lag_s(facts, clock, sim)
    clock_name = "/clock" if sim else "the wall clock"
    if lag is not None and lag > max_age_s:
        findings.insert(0, (FAIL, f"stamps arrive {lag:.2f} s old on {clock_name} (max {max_age_s:.2f} s)",
                         "sync the machines' clocks (chrony) or check use_sim_time (see the clock row)."))
    elif lag is not None and lag < -max_future_s:
        findings.insert(0, (FAIL, f"stamps are {-lag:.2f} s in the future on {clock_name}",
                         "sync the machines' clocks (chrony) or check use_sim_time (see the clock row)."))
    return findings


def check_joint_states(setup: Setup, facts: Facts) -> list[Result]:
    results = []
    timeout = float(setup.executor["joint_state_timeout_s"])
    for topic, wanted in setup.joint_state_topics.items():
        js = facts.joint_states.get(topic) or JointStateFacts(topic)
        check = f"joint_states {topic}"
        silent = _silent(topic, "joint_states", js.publisher_types, JOINT_STATE_TYPE,
                         "start the arm's driver (its joint_state_broadcaster), or remap joint_states / set "
                         "gem_policy joint_state_topic.")
        if silent:
            results.append(Result(check, *silent))
            continue
        if not js.arrivals_s:
            results.append(Result(check, FAIL, f"{topic} has a publisher but sent nothing in {facts.window_s:.1f} s",
                                  "check the driver is running and its QoS; a stopped controller manager?"))
            continue
        findings = []
        if js.duplicated:
            findings.append((FAIL, f"names {js.duplicated} appear twice in one message (refused)",
                             "fix the driver's joint names (tf_prefix?)."))
        if js.malformed:
            findings.append((FAIL, f"malformed message: {js.malformed}", "fix the publisher."))
        missing = [n for n in wanted if n not in js.names_seen]
        if missing:
            findings.append((FAIL, f"missing joints {missing} (published: {js.names_seen})",
                             f"make {setup.config}'s joint names match the driver's (tf_prefix?)."))
        bad = [n for n in wanted if n in js.non_finite]
        if bad:
            findings.append((FAIL, f"non-finite positions for {bad}", "check the driver / encoders."))
        findings += _timing(js, facts.window_s, 1.0 / timeout, 2.0 / timeout, timeout,
                            float(setup.policy["max_skew_s"]), facts.clock, sim_time(setup, facts),
                            f"gem_executor needs (joint_state_timeout_s {timeout:g} s)")
        rate = findings[-1][1]
        results.append(_worst(check, findings, f"{len(wanted)} joints present, {rate}"))
    return results


def _frame_findings(cam: CameraFacts, expected_hw: tuple[int, int] | None) -> list[tuple[str, str, str]]:
    frame = cam.frame
    try:
        if cam.transport == "compressed":
            height, width = check_compressed(frame.get("format", ""), frame.get("data", b""))
            kind = frame.get("format", "")
        else:
            encoding = frame.get("encoding", "")
            if encoding in DEPTH_ENCODINGS:
                raise ValueError(f"encoding {encoding!r} is depth, not colour")
            check_raw_layout(encoding, frame.get("height", 0), frame.get("width", 0), frame.get("step", 0),
                             frame.get("nbytes", 0))
            height, width, kind = frame["height"], frame["width"], encoding
    except (ValueError, KeyError) as error:
        supported = "jpeg or png" if cam.transport == "compressed" else ", ".join(COLOR_ENCODINGS)
        return [(FAIL, f"frames refused: {error}", f"publish {supported} colour frames on {cam.topic}.")]
    findings = [(PASS, f"{kind} {width}x{height}", "")]
    if expected_hw and abs(width / height - expected_hw[1] / expected_hw[0]) > 0.05 * expected_hw[1] / expected_hw[0]:
        findings.insert(0, (WARN, f"{width}x{height} frames are stretched to the checkpoint's "
                                  f"{expected_hw[1]}x{expected_hw[0]}",
                            "set the camera's resolution to the aspect ratio the policy was trained with."))
    return findings


def check_cameras(setup: Setup, facts: Facts) -> list[Result]:
    results = []
    max_age = float(setup.policy["max_observation_age_s"])
    want = 0.8 * setup.camera_rate_hz if setup.camera_rate_hz else 2.0 / max_age
    io, _ = read_io(setup.checkpoint)
    sizes = {c.name: (c.height, c.width) for c in io.cameras} if io else {}
    for name, topic, transport in setup.cameras:
        cam = facts.cameras.get(name) or CameraFacts(topic, name=name, transport=transport)
        check = f"camera {name}"
        if transport not in IMAGE_TYPES:
            results.append(Result(check, FAIL, f"transport {transport!r}", "camera_transports: raw or compressed."))
            continue
        silent = _silent(topic, f"gem_policy camera_topics[{name}]", cam.publisher_types, IMAGE_TYPES[transport],
                         f"start the camera driver, or fix gem_policy camera_topics in "
                                         f"{setup.config} (relative names follow the namespace).")
        if silent:
            results.append(Result(check, *silent))
            continue
        if not cam.arrivals_s:
            results.append(Result(check, FAIL, f"{topic} is silent ({facts.window_s:.1f} s)",
                                  "check the camera driver (streaming? QoS?)."))
            continue
        findings = _frame_findings(cam, sizes.get(name))
        findings += _timing(cam, facts.window_s, 1.0 / max_age, want, max_age, float(setup.policy["max_skew_s"]),
                            facts.clock, sim_time(setup, facts),
                            f"gem_policy needs (max_observation_age_s {max_age:g} s)")
        ok = ", ".join(f[1] for f in findings if f[0] == PASS)
        results.append(_worst(check, findings, f"{topic}: {ok}"))
    return results


def check_controllers(setup: Setup, facts: Facts) -> list[Result]:
    observed = {f.endpoint: f for f in facts.endpoints}
    results = []
    for endpoint in setup.endpoints:
        seen = observed.get(endpoint) or EndpointFacts(endpoint)
        check = f"{endpoint.role} controller"
        controller = endpoint.name.rsplit("/", 1)[0]
        fix = (f"load and activate {controller} (ros2 control list_controllers; the driver's launch), or fix "
               f"controller_name / backend in {setup.config}.")
        if endpoint.kind == "topic":
            if not seen.nodes:
                results.append(Result(check, FAIL, f"nobody subscribes {endpoint.name}", fix))
            elif set(seen.types) - {TRAJECTORY_TYPE}:
                results.append(Result(check, FAIL, f"{endpoint.name} is subscribed as {sorted(set(seen.types))}",
                                      fix))
            else:
                results.append(Result(check, PASS, f"{endpoint.name} subscribed by {seen.nodes}"))
            continue
        expected = f"{endpoint.action_type}_SendGoal"
        if not seen.nodes:
            results.append(Result(check, FAIL, f"no action server {endpoint.name}", fix))
        elif not all(t.endswith(expected) for t in seen.types):
            results.append(Result(check, FAIL, f"{endpoint.name} serves {sorted(set(seen.types))}, not "
                                               f"control_msgs/action/{endpoint.action_type}", fix))
        else:
            results.append(Result(check, PASS, f"action {endpoint.name} served by {seen.nodes}"))
    return results


def check_urdf(setup: Setup, facts: Facts) -> Result:
    urdf = facts.urdf
    if not urdf.text:
        return Result("URDF", FAIL, urdf.error or "no urdf_path, no robot_description parameter and nothing "
                                                  "latched on robot_description",
                      "start robot_state_publisher (the driver's launch does), or pass urdf:=PATH "
                      "(gem_doctor --urdf PATH).")
    try:
        limits = load_urdf_limits(urdf.text)
    except (ValueError, OSError) as error:
        return Result("URDF", FAIL, f"{urdf.source}: {error}", "fix the URDF (its <limit> tags).")
    missing = [n for n in setup.joint_names if n not in limits]
    unbounded = [n for n in setup.joint_names if n in limits and not math.isfinite(limits[n].max_velocity)]
    findings = []
    if missing:
        findings.append((FAIL, f"joints {missing} are not in the URDF ({urdf.source})",
                         f"use the arm's URDF, or fix the joint names in {setup.config}."))
    if unbounded:
        findings.append((FAIL, f"joints {unbounded} have no velocity limit", "add <limit velocity=...> to them."))
    continuous = [n for n in setup.joint_names if n in limits and not math.isfinite(limits[n].lower)]
    note = f" ({len(continuous)} continuous: velocity-limited only)" if continuous else ""
    return _worst("URDF", findings, f"{len(setup.joint_names)} joints limited{note}, from {urdf.source}")


def check_clock(setup: Setup, facts: Facts) -> Result:
    flags = {name: bool(n.parameters["use_sim_time"]) for name, n in facts.nodes.items()
             if "use_sim_time" in n.parameters}
    ticking = bool(facts.clock.stamps_s)
    relaunch = "relaunch gem with sim:=true (simulator) or sim:=false (real arm)."
    if len(set(flags.values())) > 1:
        return Result("clock", FAIL, f"use_sim_time differs: {flags}", relaunch)
    if not flags:
        if ticking:
            return Result("clock", WARN, "/clock is published (sim time); no gem node to compare with",
                          "launch gem with sim:=true.")
        return Result("clock", PASS, "wall time (no /clock); no gem node running to compare with")
    on_sim = next(iter(flags.values()))
    if on_sim and not ticking:
        silent = f" ({facts.clock.publishers} silent publisher(s): paused?)" if facts.clock.publishers else ""
        return Result("clock", FAIL, f"use_sim_time is true but no /clock arrived in {facts.window_s:.1f} s{silent}: "
                                     "their timers never fire",
                      "on a real arm relaunch gem with sim:=false; on a simulator start (or unpause) it.")
    if not on_sim and ticking:
        return Result("clock", FAIL, "/clock is published but gem runs on wall time: simulated stamps look stale",
                      "relaunch gem with sim:=true, or stop what publishes /clock (rosbag play --clock?).")
    return Result("clock", PASS, f"{'sim time, /clock ticking' if on_sim else 'wall time, no /clock'} "
                                 f"({', '.join(flags)})")


def read_io(checkpoint: str) -> tuple[IOSchema | None, str]:
    """The checkpoint's io from config.json only (no weights, no torch); (None, why) when unreadable."""
    if not checkpoint:
        return None, "no checkpoint given"
    path = Path(checkpoint) / "config.json"
    try:
        io = json.loads(path.read_text(encoding="utf-8"))["io"]
        return IOSchema(**io), ""
    except (OSError, ValueError, KeyError, TypeError) as error:
        return None, f"{path}: {type(error).__name__}: {error}"


def check_checkpoint(setup: Setup, facts: Facts) -> Result:
    io, error = read_io(setup.checkpoint)
    if io is None:
        return Result("checkpoint", FAIL, error, "gem_doctor --checkpoint FOLDER (a GEM-VLA checkpoint).")
    p, e = setup.policy, setup.executor
    findings = []
    if io.camera_names != list(p["camera_names"]):
        findings.append((FAIL, f"cameras: checkpoint {io.camera_names}, gem_policy camera_names "
                               f"{list(p['camera_names'])}", f"list the checkpoint's cameras in {setup.config}."))
    state = setup.state_joint_names or list(io.state_names)
    if (io.state_names and state != list(io.state_names)) or len(state) != io.state_dim:
        findings.append((FAIL, f"state joints: checkpoint {list(io.state_names) or io.state_dim}, "
                               f"gem_policy state_joint_names {state}",
                         "state_joint_names must be the checkpoint's io.state_names, in order."))
    try:
        served = resolve_action_io({**e, "checkpoint": setup.checkpoint})
    except ValueError as mismatch:
        findings.append((FAIL, str(mismatch), ""))
        served = {"action_space": io.action_space}
    gripper = [GRIPPER_CHANNEL] if setup.gripper_joint_names else []
    arm = list(EE_DELTA_CHANNELS) if served["action_space"] == "ee_delta" else setup.arm_joint_names
    expected = names(e["action_channel_names"]) or arm + gripper
    channels = list(io.action_names) or [f"action_{i}" for i in range(io.action_dim)]
    if sorted(channels) != sorted(expected):
        findings.append((FAIL, f"action channels: checkpoint {channels}, gem_executor expects {expected}",
                         f"match action_joint_names / gripper_joint_names (or action_channel_names) in "
                         f"{setup.config} to the checkpoint's io.action_names."))
    if served["action_space"] == "ee_delta" and not e["ee_link"]:
        findings.append((FAIL, "ee_delta actions but gem_executor ee_link is empty", "set ee_link."))
    if io.control_rate_hz > float(e["control_rate_hz"]):
        findings.append((WARN, f"checkpoint acts at {io.control_rate_hz:g} Hz, above gem_executor's "
                               f"{float(e['control_rate_hz']):g} Hz control rate", "raise control_rate_hz."))
    for node in facts.nodes.values():
        live = node.parameters.get("checkpoint")
        if live and Path(live).resolve() != Path(setup.checkpoint).resolve():
            findings.append((WARN, f"{node.name} runs {live}, not the checkpoint checked",
                             f"gem_doctor --checkpoint {live}."))
    return _worst("checkpoint", findings, f"{io.camera_names}, {io.state_dim} state / {io.action_dim} action "
                                          f"channels, {io.action_space} at {io.control_rate_hz:g} Hz match")


_STATE_FIX = {"unconfigured": "ros2 lifecycle set {n} configure, then activate (a failed configure logs why).",
              "inactive": "ros2 lifecycle set {n} activate.",
              "finalized": "restart it (ros2 launch gem_bringup gem.launch.py ...)."}


def check_node(setup: Setup, facts: Facts, short: str) -> Result:
    name = setup.node(short)
    node = facts.nodes.get(short)
    check = f"node {short}"
    if node is None or node.count == 0:
        return Result(check, FAIL, f"{name} is not running", f"{setup.launch_line}.")
    if node.count > 1:
        return Result(check, FAIL, f"{node.count} nodes are named {name}", "stop the extra one.")
    if not node.lifecycle:
        return Result(check, PASS, "running (not a managed node: running means active)")
    if not node.state:
        return Result(check, WARN, f"{name}/get_state did not answer: {node.error or 'no reply'}",
                      "is the node's executor blocked?")
    if node.state != "active":
        return Result(check, FAIL, f"{name} is {node.state}, expected active",
                      _STATE_FIX.get(node.state, "wait for the transition to end.").format(n=name))
    return Result(check, PASS, "active")


def run_checks(setup: Setup, facts: Facts) -> list[Result]:
    return [*check_joint_states(setup, facts), *check_cameras(setup, facts), *check_controllers(setup, facts),
            check_urdf(setup, facts), check_clock(setup, facts), check_checkpoint(setup, facts),
            check_node(setup, facts, "gem_policy"), check_node(setup, facts, "gem_executor")]
