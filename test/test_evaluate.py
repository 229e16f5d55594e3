"""gem_eval offline on a checkpoint with the sim schema and a few recorded episodes written by the test."""
from __future__ import annotations

import json

import numpy as np
import pytest

from gem_ros.demo import ARM_JOINTS, FINGERS, make_random_sim_checkpoint
from gem_train.data.episodes import EpisodeWriter
from gem_train.evaluate import main
from gem_train.rollout import rollout, sensitivity


@pytest.fixture(scope="module")
def sim_checkpoint(tmp_path_factory):
    return make_random_sim_checkpoint(tmp_path_factory.mktemp("eval_ckpt"))


def write_episodes(folder, count=3, steps=10):
    rng = np.random.default_rng(0)
    for k in range(count):
        writer = EpisodeWriter(folder / f"episode_{k}.hdf5", instructions="pick up the red cube",
                               control_rate_hz=10.0, camera_names=["scene", "wrist"],
                               state_names=ARM_JOINTS + FINGERS, action_names=ARM_JOINTS + ["gripper"])
        for _ in range(steps):
            writer.add_step({c: rng.integers(0, 256, (96, 96, 3), dtype=np.uint8) for c in ("scene", "wrist")},
                            rng.normal(size=9).astype(np.float32), rng.normal(size=8).astype(np.float32))
        writer.close()


def test_offline_eval_reports_per_joint_error_and_plots(tmp_path, sim_checkpoint):
    write_episodes(tmp_path / "data")
    out = tmp_path / "eval"
    assert main(["offline", "--checkpoint", str(sim_checkpoint), "--data", str(tmp_path / "data"), "--out", str(out),
                 "--val-fraction", "0.5", "--stride", "5"]) == 0
    report = json.loads((out / "offline_eval.json").read_text())
    assert list(report["mae_chunk"]) == ARM_JOINTS + ["gripper"]
    assert all(v > 0 for v in report["mae_chunk"].values()) and report["chunks"] >= 2
    assert (out / "offline_eval.png").stat().st_size > 10_000


def test_offline_eval_without_held_out_episodes_is_a_clear_error(tmp_path, sim_checkpoint):
    write_episodes(tmp_path / "data", count=1)
    with pytest.raises(ValueError, match="no held-out episodes"):
        main(["offline", "--checkpoint", str(sim_checkpoint), "--data", str(tmp_path / "data"),
              "--out", str(tmp_path / "eval"), "--val-fraction", "0.0"])


def test_rollout_runs_seeded_episodes_without_ros(tmp_path, sim_checkpoint):
    out = tmp_path / "rollout"
    assert main(["rollout", "--checkpoint", str(sim_checkpoint), "--episodes", "2", "--episode-timeout", "0.8",
                 "--out", str(out)]) == 0
    report = json.loads((out / "rollout.json").read_text())
    assert report["episodes"] == 2 and report["execute_per_chunk"] == 4 and report["success_rate"] == 0.0
    first, second = report["rows"]
    assert first["seconds"] == pytest.approx(0.8) and first["final_ee_to_target_xy_m"] > 0
    # the colours take turns; each row says what happened to which cube, the report sums it up with the seeds
    assert (first["instruction"], second["instruction"]) == ("pick up the red cube", "pick up the green cube")
    assert first["target"] == "red_cube" and first["task"] == "failure" and first["seed"] == 0
    assert report["outcomes"]["seeds"] == [0, 1] and report["outcomes"]["success"]["count"] == 0
    again = rollout(sim_checkpoint, 1, max_s=0.8)   # seeded: the same episode replays identically
    assert again["rows"][0] == first


def test_sensitivity_tells_images_from_state(tmp_path, sim_checkpoint):
    import torch

    from gem_ros.core.policy.gem_vla import GemVLAPolicy

    write_episodes(tmp_path / "data", count=4, steps=12)
    policy = GemVLAPolicy.from_pretrained(sim_checkpoint, device="cpu", for_training=True)
    torch.manual_seed(0)
    with torch.no_grad():   # leave adaLN-Zero's identity init so that the inputs reach the output
        for weight in policy.action_expert.parameters():
            weight.add_(0.3 * torch.randn_like(weight))
    policy.config.io.state_input = False      # a vision-only policy: the state cannot matter
    checkpoint = policy.save_pretrained(tmp_path / "vision_only")
    report = sensitivity(checkpoint, tmp_path / "data", steps=(0, 11), val_fraction=0.5)
    assert set(report) == {"step_0", "step_11"}
    for row in report.values():
        assert row["recorded_spread_across_episodes"] > 0 and row["error"] > 0
        assert row["change_when_images_swapped"] > 1e-3 and row["change_when_state_swapped"] == 0.0
        # "red" -> "green" in the same words reaches the chunk; a second sampler seed is the yardstick
        assert row["change_when_instruction_swapped"] > 1e-4 and row["change_between_samples_same_instruction"] > 0
    with pytest.raises(ValueError, match="held-out"):
        sensitivity(sim_checkpoint, tmp_path / "data", val_fraction=0.01)


def test_rollout_through_the_executor_core_runs_the_demo_execution_path(tmp_path, sim_checkpoint):
    """--executor: chunks go through the ExecutionController built from the robot YAML and the JTC follower."""
    out = tmp_path / "rollout_executor"
    assert main(["rollout", "--checkpoint", str(sim_checkpoint), "--episodes", "1", "--episode-timeout", "1.0",
                 "--executor", "--latency", "0.05", "--out", str(out)]) == 0
    report = json.loads((out / "rollout.json").read_text())
    assert report["executor"] is True and report["latency_s"] == 0.05 and report["grasp_went_for_target"] is None
    counts = report["rows"][0]["executor"]
    # 50 Hz ticks over 1 s: a first chunk arrives after the latency, then trajectories every tick
    assert 45 <= counts["trajectory"] + counts["hold"] + counts["idle"] <= 52
    assert counts["chunks"] >= 1 and counts["trajectory"] >= 40
    assert report["rows"][0]["seconds"] == pytest.approx(1.0, abs=0.1)
