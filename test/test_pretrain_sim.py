"""gem_pretrain_sim: rendered-scene grounding writes a backbone folder that gem_train and the policy load."""
from __future__ import annotations

import json

from pathlib import Path

import numpy as np
import pytest
import torch

from gem_train.pretrain_sim import PretrainConfig, main, pretrain, render_scenes


def test_render_scenes_targets_the_instructed_cube(tmp_path):
    cfg = PretrainConfig(out=tmp_path / "bb", image_size=32, colors=["red", "blue"])
    images, instructions, targets, _, _ = render_scenes(cfg, 3, seed=5)
    assert images.shape == (3, 1, 32, 32, 3) and images.dtype == np.uint8 and targets.shape == (3, 2)
    assert all(any(c in text for c in ("red", "blue")) for text in instructions)
    assert np.all((targets[:, 0] >= 0.39) & (targets[:, 0] <= 0.61) & (np.abs(targets[:, 1]) <= 0.16))


def test_rendering_in_two_processes_gives_the_same_scenes_in_order(tmp_path):
    scenes = dict(out=tmp_path / "bb", image_size=32, colors=["red", "blue"], posed_fraction=0.5)
    one = render_scenes(PretrainConfig(**scenes), 4, seed=7)
    two = render_scenes(PretrainConfig(**scenes, workers=2), 4, seed=7)
    for field in one._fields:
        np.testing.assert_array_equal(getattr(one, field), getattr(two, field))


def test_pretrained_backbone_trains_and_loads(tmp_path):
    from gem_ros.core.policy import backbone as bb
    from gem_train.config import load_config

    out = tmp_path / "grounded"
    report = pretrain(PretrainConfig(out=out, scenes=6, steps=3, batch_size=2, image_size=32, colors=["red"]))
    assert [h["step"] for h in report["history"]] == [0, 3]
    assert all(np.isfinite(h["held_out_median_error_m"]) for h in report["history"])
    model = bb.load_backbone(out, torch.float32, torch.device("cpu"))
    bb.load_processor(out)
    assert model.config.text_config.hidden_size == 64 and not list(tmp_path.glob(".grounded*"))
    recipe = Path(__file__).resolve().parents[1] / "gem_train" / "configs" / "sim_pick_tiny.yaml"
    config = load_config(recipe, [f"model.backbone={out}", f"data.dataset_dirs=[{tmp_path}]"])
    assert config.model.backbone == str(out)


def test_the_grounding_prompt_order_is_recorded_and_training_must_use_it(tmp_path):
    """A backbone grounded with the instruction first, trained with the images first, would see prompts it never
    learned to read: gem_train refuses, naming the setting; in the recorded order the policy records it too."""
    from gem_train.config import load_config
    from gem_train.train import build_policy

    out = tmp_path / "grounded"
    pretrain(PretrainConfig(out=out, scenes=4, steps=1, batch_size=2, image_size=32, colors=["red", "green"],
                            prompt_order="instruction_first"))
    assert json.loads((out / "grounding.json").read_text())["prompt_order"] == "instruction_first"
    recipe = Path(__file__).resolve().parents[1] / "gem_train" / "configs" / "sim_pick_lang.yaml"
    stats = {"action": {"min": [-1.0] * 8, "max": [1.0] * 8}}
    overrides = [f"model.backbone={out}", f"data.dataset_dirs=[{tmp_path}]", "model.selected_layers=[0]"]
    with pytest.raises(ValueError, match="prompt_order=instruction_first"):
        build_policy(load_config(recipe, overrides + ["model.prompt_order=images_first"]), stats, torch.device("cpu"))
    policy = build_policy(load_config(recipe, overrides + ["model.prompt_order=instruction_first"]), stats,
                          torch.device("cpu"))
    assert policy.config.prompt_order == "instruction_first"


def test_bad_arguments_fail_clearly(tmp_path, capsys):
    with pytest.raises(ValueError, match="steps"):
        PretrainConfig(out=tmp_path, steps=0)
    assert main(["--out", str(tmp_path / "x"), "--scenes", "0"]) == 2
    assert "scenes" in capsys.readouterr().err


def test_posed_scenes_put_the_hand_over_the_table_and_both_views_in_the_prompt(tmp_path):
    """--posed-fraction 1 moves the hand off home toward a cube (the hand offset shrinks); --cameras scene wrist
    renders both views per scene and the hand-offset output is trained and reported."""
    colors = ["red", "green", "blue"]
    home = render_scenes(PretrainConfig(out=tmp_path / "bb", image_size=32, colors=colors), 6, seed=3)
    posed = render_scenes(PretrainConfig(out=tmp_path / "bb", image_size=32, colors=colors, posed_fraction=1.0,
                                         cameras=["scene", "wrist"]), 6, seed=3)
    assert posed.images.shape == (6, 2, 32, 32, 3)
    np.testing.assert_array_equal(posed.target_xy, home.target_xy)        # same layouts, only the arm moved
    assert not np.array_equal(posed.images[:, 0], home.images[:, 0])
    assert np.median(np.linalg.norm(posed.hand_offset_xy, axis=1)) < np.median(
        np.linalg.norm(home.hand_offset_xy, axis=1))
    out = tmp_path / "grounded"
    report = pretrain(PretrainConfig(out=out, scenes=6, steps=2, batch_size=2, image_size=32, colors=colors,
                                     posed_fraction=0.5, cameras=["scene", "wrist"], hand_offset_weight=1.0))
    assert report["cameras"] == ["scene", "wrist"]
    assert all(np.isfinite(h["held_out_hand_offset_median_error_m"]) for h in report["history"])
    assert json.loads((out / "grounding.json").read_text())["posed_fraction"] == 0.5


@pytest.mark.parametrize("bad", [dict(posed_fraction=1.5), dict(posed_fraction=float("nan")),
                                 dict(hand_offset_weight=-1.0), dict(cameras=[]), dict(cameras=["scene", "scene"])])
def test_bad_pretraining_settings_are_refused(tmp_path, bad):
    with pytest.raises(ValueError):
        PretrainConfig(out=tmp_path / "bb", **bad)
