"""The sim recipes still run: collect -> pretrain -> train -> export, scaled down to seconds.

`gem_train/configs/<name>.recipe.json` holds the exact command lines of a sim recipe (collect -> pretrain ->
train -> export): sim_pick_lang (three cubes, the instruction names one: gem_demo's default) and sim_pick_tiny
(one red cube). This test runs the same commands with smaller numbers (2 episodes, 4 scenes, 32 px, a few
steps) and checks that the exported checkpoint has the I/O schema and scene the recipe's config describes (and
the shipped checkpoint's, when there is one), loads, and acts.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from gem_ros.core.policy.checkpoint import read_config
from gem_ros.core.policy.config import CameraSpec
from gem_ros.core.policy.gem_vla import GemVLAPolicy
from gem_ros.core.policy.observation import Observation
from gem_train import collect_sim, export, pretrain_sim, train
from gem_train.config import load_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "gem_train" / "configs"
# recipe -> the scene its checkpoints record (the scaled re-run always collects with coarse meshes)
SCENES = {"sim_pick_lang": {"object_colors": ["red", "green", "blue"], "coarse_robot_meshes": True},
          "sim_pick_tiny": {"object_colors": ["red"], "coarse_robot_meshes": False}}
SIZE = 32
# Scale-down of the recipe: what changes (sizes and counts), never what the policy is.
SCALE = {"collect": {"--episodes": "2", "--image-size": str(SIZE), "--workers": "1"},
         "pretrain": {"--scenes": "4", "--steps": "2", "--image-size": str(SIZE), "--workers": "1"},
         "train": {"data.image_size": str(SIZE), "train.max_steps": "3", "train.checkpoint_every": "3",
                   "train.eval_every": "3", "train.eval_batches": "1", "train.batch_size": "4",
                   "data.val_fraction": "0.5"}}


def scaled(argv: list[str], changes: dict[str, str], tmp: Path) -> list[str]:
    """Replace `--flag value` pairs and `key=value` overrides; send every path the recipe writes under tmp."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg in changes:
            out += [arg, changes[arg]]
            i += 2
            continue
        if arg in ("--out", "--run-dir", "--checkpoint"):
            out += [arg, str(tmp / Path(argv[i + 1]).name)]
            i += 2
            continue
        if arg == "--config":
            out += [arg, str(REPO / argv[i + 1])]
            i += 2
            continue
        key = arg.split("=", 1)[0]
        out.append(f"{key}={changes[key]}" if "=" in arg and key in changes else arg)
        i += 1
    present = {a.split("=", 1)[0] for a in out} | set(out)
    for key, value in changes.items():
        if key not in present:
            out += [key, value] if key.startswith("--") else [f"{key}={value}"]
    return out


@pytest.mark.parametrize("name", list(SCENES))
def test_shipped_recipe_reruns_small(name, tmp_path, capsys):
    recipe = json.loads((CONFIGS / f"{name}.recipe.json").read_text())
    data_dir = tmp_path / Path(recipe["collect"][recipe["collect"].index("--out") + 1]).name
    collect_argv = scaled(recipe["collect"][1:], SCALE["collect"], tmp_path) + ["--coarse-meshes"]
    assert collect_sim.main(collect_argv) == 0
    pretrain_argv = scaled(recipe["pretrain"][1:], SCALE["pretrain"], tmp_path)
    assert pretrain_sim.main(pretrain_argv) == 0
    backbone = pretrain_argv[pretrain_argv.index("--out") + 1]

    train_argv = scaled(recipe["train"][1:], {**SCALE["train"], "data.dataset_dirs": f"[{data_dir}]",
                                              "model.backbone": backbone}, tmp_path)
    assert train.main(train_argv) == 0
    run_dir = Path(train_argv[train_argv.index("--run-dir") + 1])
    out = tmp_path / "exported"
    assert export.main(["--checkpoint", str(run_dir), "--out", str(out)]) == 0

    made = read_config(out).io
    config_index = recipe["train"].index("--config") + 1
    overrides = [a for a in recipe["train"] if a.startswith("data.") and not a.startswith("data.dataset_dirs")]
    intended_config = load_config(REPO / recipe["train"][config_index], overrides + [f"data.dataset_dirs=[{data_dir}]"])
    intended = intended_config.data.io_schema()
    small = lambda io: replace(io, cameras=[CameraSpec(c.name, SIZE, SIZE) for c in io.cameras])  # noqa: E731
    assert made == small(intended)
    # The recipe's scene travels with the checkpoint, so gem_demo / gem_eval rebuild it.
    assert read_config(out).sim_scene == {**SCENES[name], "coarse_robot_meshes": True}
    assert read_config(out).noise_scale == intended_config.model.noise_scale   # the recipe's serving noise
    assert read_config(out).prompt_order == intended_config.model.prompt_order   # as pretrained and trained
    shipped_dir = REPO / recipe["export"][recipe["export"].index("--out") + 1]
    if (shipped_dir / "config.json").exists():
        shipped = read_config(shipped_dir)
        assert made == small(shipped.io) and shipped.noise_scale == intended_config.model.noise_scale
        assert shipped.prompt_order == intended_config.model.prompt_order
        assert shipped.sim_scene == SCENES[name]
    policy = GemVLAPolicy.from_pretrained(out, device="cpu")
    rng = np.random.default_rng(0)
    obs = Observation({c.name: rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for c in made.cameras},
                      np.zeros(made.state_dim, np.float32), "grab the red block")
    chunk = policy.predict_action_chunk(obs, seed=0)
    assert chunk.shape == (made.chunk_len, made.action_dim) and np.all(np.isfinite(chunk))


def test_scaled_rewrites_counts_and_paths(tmp_path):
    argv = ["--config", "gem_train/c.yaml", "--run-dir", "runs/x", "data.image_size=128", "train.max_steps=8000"]
    assert scaled(argv, {"data.image_size": "32", "train.max_steps": "3", "train.seed": "1"}, tmp_path) == [
        "--config", str(REPO / "gem_train/c.yaml"), "--run-dir", str(tmp_path / "x"), "data.image_size=32", "train.max_steps=3",
        "train.seed=1"]


STEPS = {"collect": "gem_collect_sim", "pretrain": "gem_pretrain_sim", "train": "gem_train", "train_more": "gem_train",
         "export": "gem_export", "evaluate": "gem_eval", "evaluate_held_out": "gem_eval", "baseline_held_out": "gem_eval"}


@pytest.mark.parametrize("name", list(SCENES))
def test_recipe_names_every_step_with_an_installed_program(name):
    from importlib.metadata import entry_points

    recipe = json.loads((CONFIGS / f"{name}.recipe.json").read_text())
    installed = {e.name for e in entry_points(group="console_scripts")}
    steps = [key for key in STEPS if key in recipe]
    assert {"collect", "pretrain", "train", "export", "evaluate"} <= set(steps)
    for key in steps:
        assert recipe[key][0] == STEPS[key] and STEPS[key] in installed, key


def _seed_of(argv: list[str]) -> int:
    return int(argv[argv.index("--seed") + 1])


def test_lang_recipe_keeps_training_validation_and_held_out_seeds_apart():
    """Choices are made on validation seeds, numbers reported on held-out ones: no layout seed is shared."""
    recipe = json.loads((CONFIGS / "sim_pick_lang.recipe.json").read_text())
    collect, pretrain = recipe["collect"], recipe["pretrain"]
    episodes = int(collect[collect.index("--episodes") + 1])
    attempts = 2 * episodes + 10                       # gem_collect_sim's default max_attempts
    training = {collect_sim.episode_seed(_seed_of(collect), k) for k in range(attempts)}
    scenes = int(pretrain[pretrain.index("--scenes") + 1])
    start = _seed_of(pretrain)
    training |= set(range(start, start + scenes)) | set(range(10_000_000 + start, 10_000_000 + start + scenes // 10))
    rollout, held_out, baseline = recipe["evaluate"], recipe["evaluate_held_out"], recipe["baseline_held_out"]
    validation = {_seed_of(rollout) * 100_003 + k for k in range(int(rollout[rollout.index("--episodes") + 1]))}
    held = {_seed_of(held_out) + k for k in range(int(held_out[held_out.index("--episodes") + 1]))}
    assert len(held) >= 50 and baseline[baseline.index("--seed") + 1] == held_out[held_out.index("--seed") + 1]
    assert not training & validation and not training & held and not validation & held
