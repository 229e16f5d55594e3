"""The demo listens, through ROS: a goal's instruction re-targets gem_sim (so gem/task_success answers for the cube
named), `gem_demo --instruction` runs that instruction, without it the colours take turns, and
`gem_demo --interactive` reads instructions from stdin until EOF (quit: test_lang_task.py)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy")
from rclpy.node import Node  # noqa: E402

from gem_msgs.msg import PolicyStatus  # noqa: E402
from gem_ros.nodes.sim_node import SimNode  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# The untrained policy keeps these short: what is tested is which instruction ran and how it was scored.
# The three-cube scene of checkpoints/sim_pick_lang (--random-policy takes the scene of --checkpoint).
DEMO = [sys.executable, "-m", "gem_ros.demo", "--random-policy", "--episode-timeout", "1.0",
        "--checkpoint", str(REPO / "checkpoints" / "sim_pick_lang")]


def test_an_instruction_on_the_policy_status_retargets_the_sim_once(ros):
    sim = ros.add(SimNode(context=ros.context, parameter_overrides=[rclpy.parameter.Parameter("seed", value=2)]))
    probe = ros.add(Node("probe", context=ros.context))
    pub = probe.create_publisher(PolicyStatus, "/gem/policy_status", 10)
    ros.wait_for(lambda: pub.get_subscription_count() >= 1, 10, "gem_sim to subscribe to the policy status")
    pub.publish(PolicyStatus(instruction="grab the green block"))
    ros.wait_for(lambda: sim.sim.target_object == "green_cube", 10, "the goal's cube to become the target")
    assert sim.instruction == "grab the green block"
    # A new episode picks its own target; the status still repeating the old goal must not undo that.
    sim.reset_episode(7)
    sim.set_instruction("pick up the blue cube")
    for _ in range(3):
        pub.publish(PolicyStatus(instruction="grab the green block"))
    pub.publish(PolicyStatus(instruction="pick up the cube"))          # names no cube: target kept
    pub.publish(PolicyStatus(instruction="lift the red cube"))
    ros.wait_for(lambda: sim.sim.target_object == "red_cube", 10, "the next goal's cube")
    assert sim.outcome() == "failure"


def _episodes(out: Path) -> list[dict]:
    return json.loads((out / "summary.json").read_text())["episodes"]


def test_gem_demo_runs_the_given_instruction_and_otherwise_cycles_the_colours(tmp_path):
    run = subprocess.run(DEMO + ["--episodes", "1", "--instruction", "grab the blue block", "--out",
                                 str(tmp_path / "given")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    row = _episodes(tmp_path / "given")[0]
    assert (row["instruction"], row["target"]) == ("grab the blue block", "blue_cube")
    assert row["task"] in ("success", "wrong object", "failure") and "95 % CI" in run.stdout

    refused = subprocess.run(DEMO + ["--instruction", "pick up the cube", "--out", str(tmp_path / "bad")],
                             cwd=REPO, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "names no cube" in refused.stderr

    run = subprocess.run(DEMO + ["--episodes", "3", "--seed", "40", "--out", str(tmp_path / "cycle")], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = _episodes(tmp_path / "cycle")
    assert [r["target"] for r in rows] == ["red_cube", "green_cube", "blue_cube"]
    assert [r["seed"] for r in rows] == [40, 41, 42]
    summary = json.loads((tmp_path / "cycle" / "summary.json").read_text())["outcomes"]
    assert summary["seeds"] == [40, 41, 42] and set(summary["by_target"]) == {"red_cube", "green_cube", "blue_cube"}


def test_gem_demo_interactive_runs_each_typed_instruction_until_eof(tmp_path):
    typed = "lift the green cube\npick up the cube\n\ngrab the red block"     # EOF ends it (no quit, no newline)
    run = subprocess.run(DEMO + ["--interactive", "--out", str(tmp_path)], input=typed, cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert [r["instruction"] for r in _episodes(tmp_path)] == ["lift the green cube", "grab the red block"]
    assert [r["target"] for r in _episodes(tmp_path)] == ["green_cube", "red_cube"]
    assert "refused: instruction 'pick up the cube' names no cube" in run.stdout
    assert run.stdout.count("instruction> ") == 5             # the first, then one after each of the 4 lines
