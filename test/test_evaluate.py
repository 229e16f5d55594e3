"""gem_eval offline on a checkpoint with the sim schema and a few recorded episodes written by the test."""
from __future__ import annotations

import json

import numpy as np
import pytest

from gem_ros.demo import ARM_JOINTS, FINGERS, make_random_sim_checkpoint
from gem_train.data.episodes import EpisodeWriter
from gem_train.evaluate import main


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
