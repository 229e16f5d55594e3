"""README command 1 end to end (short): gem_demo runs an episode and leaves its pictures and numbers behind."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def test_gem_demo_runs_one_episode_and_writes_outputs(tmp_path):
    cmd = [sys.executable, "-m", "gem_ros.demo", "--episodes", "1", "--episode-timeout", "3", "--out", str(tmp_path)]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "ep 0:" in run.stdout and "success rate" in run.stdout
    row = json.loads((tmp_path / "episode_00.json").read_text())
    assert row["outcome"] in ("SUCCEEDED", "TIMEOUT") and row["steps"] >= 1
    assert row["latency_p50_ms"] > 0 and row["control_hz"] > 0
    with Image.open(tmp_path / "episode_00.gif") as gif:
        assert gif.n_frames >= 3
    with Image.open(tmp_path / "episode_00.png") as panel:
        assert panel.size[0] > 300
    # Trajectories per second of sim time (on wall time it read ~0.45 x at the default real-time factor 0.5).
    assert row["trajectories_per_s"] > 0.6 * row["control_hz"], row


def test_untrained_baseline_runs_in_the_trained_checkpoints_scene(tmp_path):
    """`gem_eval sim --random-policy`: the number the trained policy is compared with, on the same task."""
    shipped = REPO / "checkpoints" / "sim_pick_tiny"
    cmd = [sys.executable, "-m", "gem_train.evaluate", "sim", "--random-policy", "--checkpoint", str(shipped),
           "--episodes", "1", "--episode-timeout", "1.5", "--out", str(tmp_path)]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "RANDOMLY INITIALISED" in run.stdout
    assert "'object_colors': ['red']" in run.stdout     # the shipped checkpoint's one-red-cube scene
    assert json.loads((tmp_path / "summary.json").read_text())["checkpoint"] != str(shipped)


@pytest.mark.parametrize("arm, said", [("ur5e", "scaled_joint_trajectory_controller/joint_trajectory"),
                                       ("xarm7", "['drive_joint'] (gripper_command) left out")])
def test_gem_demo_dry_runs_a_real_arms_configuration_on_its_model(arm, said, tmp_path):
    """`gem_demo --arm ur5e|xarm7`: the vendor driver's configuration (controller, joint names, real-arm safety)
    drives example-robot-data's model with an untrained policy of the arm's I/O schema, and says what the sim
    replaced."""
    cmd = [sys.executable, "-m", "gem_ros.demo", "--arm", arm, "--episodes", "1", "--episode-timeout", "2",
           "--out", str(tmp_path)]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "RANDOMLY INITIALISED" in run.stdout and "DRY RUN" in run.stdout and said in run.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["dry_run"] and summary["sim_model"] == arm and summary["success_rate"] is None
    row = summary["episodes"][0]
    assert row["steps"] >= 1 and row["trajectories_per_s"] > 0       # chunks planned, trajectories on the UR topic


def test_gem_demo_refuses_an_arm_without_a_model_before_starting_anything(tmp_path):
    cmd = [sys.executable, "-m", "gem_ros.demo", "--arm", "kinova_gen3", "--out", str(tmp_path / "out")]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert "no simulation model for arm 'kinova_gen3'" in run.stderr and "ur5e" in run.stderr
    assert not (tmp_path / "out").exists()
