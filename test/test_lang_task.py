"""The pick task listens: instructions name one of three cubes, the sim scores the cube named, and a report
gives success and wrong-object rates with honest intervals. ROS-free; the ROS side is test_lang_demo.py."""
from __future__ import annotations

import io

import numpy as np
import pytest

from gem_ros.demo_report import outcome_summary, outcome_table, wilson_interval
from gem_ros.sim import ScriptedPickExpert, SimConfig, TabletopSim
from gem_ros.sim.language import PHRASINGS, episode_instruction, named_color, phrasings, typed_instructions
from gem_train.rollout import swap_color

COLORS = ["red", "green", "blue"]


@pytest.fixture(scope="module")
def sim():
    with TabletopSim(SimConfig(coarse_robot_meshes=True)) as s:
        yield s


def test_every_colour_has_paraphrases_and_each_names_its_cube():
    for color in COLORS:
        said = phrasings(color)
        assert len(said) >= 2 and len(set(said)) == len(said) and said[0] == f"pick up the {color} cube"
        assert all(named_color(text, COLORS) == color for text in said)
    assert named_color("Please GRAB the Blue one!", COLORS) == "blue"


@pytest.mark.parametrize("text", ["pick up the cube", "put red on blue", "pick up the yellow cube",
                                  "pick up the reddish cube"])
def test_an_instruction_naming_no_cube_or_several_is_refused_with_the_choices(text):
    with pytest.raises(ValueError, match="must name exactly one of"):
        named_color(text, COLORS)


def test_resets_lay_out_all_three_cubes_and_vary_colour_and_phrasing(sim):
    said = {sim.reset(seed) for seed in range(60)}
    assert sim.object_names == ["red_cube", "green_cube", "blue_cube"]
    assert {named_color(s, COLORS) for s in said} == set(COLORS)
    assert len(said) >= 7                               # most of the 9 (colour, phrasing) pairs
    positions = [sim.object_position(n)[:2] for n in sim.object_names]
    assert min(np.linalg.norm(a - b) for i, a in enumerate(positions) for b in positions[i + 1:]) >= 0.1


def test_set_instruction_retargets_the_same_layout(sim):
    sim.reset(3)
    layout = [sim.object_position(n).copy() for n in sim.object_names]
    for color in COLORS:
        assert sim.set_instruction(f"grab the {color} block") == color
        assert sim.target_object == f"{color}_cube" and sim.instruction == f"grab the {color} block"
    np.testing.assert_allclose([sim.object_position(n) for n in sim.object_names], layout)
    with pytest.raises(ValueError, match="names no cube"):
        sim.set_instruction("pick up the cube")
    assert sim.target_object == "blue_cube"             # a refused instruction leaves the target alone
    sim.reset(3)
    assert sim.instruction == sim.reset(3)              # a reset forgets the typed instruction


def _run_expert(sim) -> None:
    expert = ScriptedPickExpert(sim)
    for action in expert:
        sim.set_joint_targets(sim.joint_names, action)
        sim.step(1.0 / expert.cfg.control_hz)


def test_lifting_the_named_cube_succeeds_and_lifting_another_is_a_wrong_object(sim):
    sim.reset(11)
    sim.set_instruction("pick up the green cube")
    _run_expert(sim)                                    # the expert goes for the target: green
    assert sim.outcome() == "success" and sim.lifted_this_episode == ["green_cube"]
    sim.reset(11)
    sim.set_instruction("pick up the green cube")
    assert sim.outcome() == "failure"                   # a reset clears the episode's record
    _run_expert(sim)
    sim.set_instruction("lift the red cube")            # the cube in the hand is now the wrong one
    assert not sim.task_success() and sim.outcome() == "wrong object"


def test_episode_instructions_balance_colours_and_phrasings():
    said = [episode_instruction(k, COLORS) for k in range(18)]
    assert said[:3] == ["pick up the red cube", "pick up the green cube", "pick up the blue cube"]
    assert all(said.count(text) == 2 for text in said)
    assert len(set(said)) == len(COLORS) * len(PHRASINGS)


def test_typed_instructions_stop_at_quit_or_eof_and_refuse_what_names_no_cube():
    prompts, complaints = [], []
    lines = io.StringIO("pick up the blue cube\n\n  pick up the cube \ngrab the red block\nquit\nlift the green cube\n")
    got = list(typed_instructions(lines, COLORS, prompts.append, complaints.append))
    assert got == ["pick up the blue cube", "grab the red block"]
    assert len(complaints) == 1 and "pick up the cube" in complaints[0] and len(prompts) == 5   # first + after 4 lines
    assert list(typed_instructions(io.StringIO("grab the green block"), COLORS, prompts.append,
                                   complaints.append)) == ["grab the green block"]   # EOF without a newline


def test_wilson_interval_matches_published_values():
    # Brown, Cai & DasGupta (2001) / Newcombe (1998) worked examples
    assert wilson_interval(12, 20) == pytest.approx((0.3866, 0.7812), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_outcome_summary_counts_per_colour_and_instruction_with_seeds():
    rows = [{"seed": 100 + k, "instruction": episode_instruction(k, COLORS), "target": f"{COLORS[k % 3]}_cube",
             "task": task} for k, task in enumerate(["success", "wrong object", "failure", "success", "success",
                                                      "wrong object"])]
    summary = outcome_summary(rows)
    assert summary["seeds"] == list(range(100, 106)) and summary["episodes"] == 6
    assert summary["success"]["count"] == 3 and summary["wrong_object"]["count"] == 2
    assert summary["by_target"]["red_cube"]["success"]["count"] == 2
    assert summary["by_target"]["blue_cube"]["wrong_object"]["rate"] == 0.5
    assert summary["by_instruction"]["grab the green block"]["success"]["count"] == 1
    low, high = summary["success"]["ci95"]
    assert low < 0.5 < high
    table = outcome_table(summary)
    assert "red_cube" in table and "'grab the blue block'" in table and "episode seeds: 100..105" in table


def test_instruction_swap_names_the_next_cube_in_the_same_words():
    assert swap_color("grab the red block", COLORS) == "grab the green block"
    assert swap_color("pick up the blue cube", COLORS) == "pick up the red cube"


def test_grounding_pretraining_sees_where_every_cube_is(tmp_path):
    """The auxiliary target of gem_pretrain_sim: each cube's xy, the named one among them."""
    from gem_train.pretrain_sim import PretrainConfig, render_scenes

    cfg = PretrainConfig(out=tmp_path / "bb", image_size=32, colors=COLORS, coarse_meshes=True)
    images, instructions, targets, every, _ = render_scenes(cfg, 3, seed=5)
    assert every.shape == (3, 3, 2)
    for text, target, cubes in zip(instructions, targets, every):
        np.testing.assert_allclose(cubes[COLORS.index(named_color(text, COLORS))], target)
