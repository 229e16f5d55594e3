"""gem_collect_sim: scripted-expert episodes from the embedded sim, written in our format and readable for training."""
from __future__ import annotations

import json
import re

import h5py
import numpy as np
import pytest

from gem_ros.sim.language import phrasings
from gem_train.collect_sim import CollectConfig, episode_seed, main
from gem_train.data import ChunkDataset, ChunkDatasetConfig, find_episodes, read_action_stats, read_episode

ARM = [f"panda_joint{i}" for i in range(1, 8)]


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim_data")
    # Coarse meshes and 32 px keep this ~5 s on a 2-core CI machine.
    code = main(["--episodes", "2", "--out", str(out), "--seed", "3", "--image-size", "32", "--coarse-meshes"])
    assert code == 0
    return out


def test_collects_successful_episodes_in_our_format(collected, capsys):
    paths = find_episodes(collected)
    assert len(paths) == 2 and not list(collected.glob("*.tmp"))
    stats = read_action_stats(collected)
    assert stats["action"]["count"] == stats["state"]["count"] == 120    # 2 x 60 control steps at 10 Hz
    with read_episode(paths[0]) as episode:
        assert re.fullmatch(r"(pick up|grab|lift) the (red|green|blue) (cube|block)", episode.instruction)
        color = episode.instruction.split()[-2]      # every phrasing of the target, the sim's own first
        assert episode.instructions == [episode.instruction, *[t for t in phrasings(color) if t != episode.instruction]]
        assert episode.meta["target_object"] == f"{color}_cube"
        assert episode.meta["control_rate_hz"] == 10.0 and episode.meta["action_space"] == "absolute_joint"
        assert episode.meta["action_names"] == [*ARM, "gripper"]
        assert episode.meta["state_names"] == [*ARM, "panda_finger_joint1", "panda_finger_joint2"]
        assert episode.camera_names == ["scene", "wrist"]
        assert episode.images["scene"][0].shape == (32, 32, 3)
        depth = np.asarray(episode.depth["wrist"])
        assert depth.shape == (60, 32, 32) and depth.dtype == np.float32 and 0.0 < depth.min() < depth.max() < 6.0
        assert episode.meta["episode_seed"] == episode_seed(3, 0)
    with h5py.File(paths[0]) as f:
        assert json.loads(f.attrs["camera_names"]) == ["scene", "wrist"]


def test_dataset_reads_collected_episodes_with_sensible_gripper(collected):
    cfg = ChunkDatasetConfig(["scene", "wrist"], chunk_len=8, image_size=(32, 32), depth_size=32,
                             action_names=[*ARM, "gripper"])
    ds = ChunkDataset(find_episodes(collected), cfg)
    assert len(ds) == 120
    first, last = ds[0], ds[59]
    assert first["actions"].shape == (8, 8) and first["state"].shape == (9,)
    gripper = np.concatenate([a for a, _ in ds.episode_arrays()])[:, 7]
    assert gripper.min() >= 0.0 and gripper.max() <= 0.08 + 1e-6
    assert first["actions"][0, 7] == pytest.approx(0.08)       # starts open: width = 2 x 0.04 m
    assert last["actions"][-1, 7] == pytest.approx(0.0)        # ends commanded closed
    finger_width = last["state"][7] + last["state"][8]
    assert 0.03 < finger_width < 0.07                          # fingers stopped by the ~5 cm cube in hand
    assert first["depth_valid"].all() and -1.0 <= first["depth"].min() and first["depth"].max() <= 1.0


def test_refuses_to_overwrite_recorded_episodes(collected, capsys):
    assert main(["--episodes", "1", "--out", str(collected)]) == 2
    assert "never overwritten" in capsys.readouterr().err
    assert len(find_episodes(collected)) == 2


def test_config_validation_names_the_field(tmp_path):
    with pytest.raises(ValueError, match="episodes"):
        CollectConfig(episodes=0, out_dir=tmp_path)
    with pytest.raises(ValueError, match="image_size"):
        CollectConfig(episodes=1, out_dir=tmp_path, image_size=4)
    with pytest.raises(ValueError, match="compression"):
        CollectConfig(episodes=1, out_dir=tmp_path, compression="zstd")
    assert CollectConfig(episodes=3, out_dir=tmp_path).max_attempts == 16
    assert episode_seed(0, 1) == episode_seed(0, 1) != episode_seed(0, 2)
    for colors in (("purple",), ("red", "red"), ()):
        with pytest.raises(ValueError, match="colors"):
            CollectConfig(episodes=1, out_dir=tmp_path, colors=colors)


def test_colors_choose_the_cubes_on_the_table(tmp_path):
    from gem_train.collect_sim import record_attempt

    cfg = CollectConfig(episodes=1, out_dir=tmp_path, image_size=16, coarse_meshes=True, colors=("blue",))
    attempt = record_attempt(cfg, 0)
    assert attempt.success
    with read_episode(attempt.path) as episode:
        assert episode.meta["object_colors"] == ["blue"] and episode.meta["target_object"] == "blue_cube"
        assert "blue" in episode.instructions[0]
        meta = episode.meta
    # the grounding loss's target is where the named cube starts: the layout of the episode's seed
    from gem_ros.sim import SimConfig, TabletopSim

    with TabletopSim(SimConfig(object_colors=["blue"], coarse_robot_meshes=True)) as sim:
        sim.reset(meta["episode_seed"])
        np.testing.assert_allclose(meta["target_position"], sim.object_position("blue_cube"), atol=1e-6)


def test_action_noise_moves_the_arm_off_the_plan_and_records_the_experts_way_back(tmp_path):
    """With --action-noise the executed arm drifts off the expert's plan while approaching, the recorded actions
    are still the clean expert's (the same plan as without noise), and the grasp still succeeds."""
    from gem_train.collect_sim import record_attempt

    runs = {}
    for noise in (0.0, 0.05):
        cfg = CollectConfig(episodes=1, out_dir=tmp_path / str(noise), image_size=16, coarse_meshes=True,
                            action_noise_rad=noise)
        cfg.out_dir.mkdir()
        attempt = record_attempt(cfg, 0)
        assert attempt.success
        with read_episode(attempt.path) as episode:
            assert episode.meta["action_noise_rad"] == noise
            runs[noise] = (episode.states, episode.actions)
    (clean_state, clean_actions), (noisy_state, noisy_actions) = runs[0.0], runs[0.05]
    drift = np.abs(noisy_state[:, :7] - clean_state[:, :7]).max(axis=1)
    assert drift[10:30].max() > 0.02                     # rad: the arm went off the plan while approaching
    # Labels: the plan's hand positions (IK from the drifted state may take another elbow angle), not the drift.
    from gem_ros.sim import SimConfig, TabletopSim

    with TabletopSim(SimConfig(coarse_robot_meshes=True)) as sim:
        def hand(arm):
            sim.place_joints(ARM, arm)
            return sim.ee_pose()[0]
        planned = np.array([hand(a[:7]) for a in clean_actions[:25]])
        labelled = np.array([hand(a[:7]) for a in noisy_actions[:25]])
        executed = np.array([hand(s[:7]) for s in noisy_state[1:26]])
    assert np.abs(labelled - planned).max() < 0.005                          # m
    assert np.abs(executed - planned).max() > 0.01
    with pytest.raises(ValueError, match="action_noise_rad"):
        CollectConfig(episodes=1, out_dir=tmp_path, action_noise_rad=float("nan"))
