"""gem_train.grounding: the training-only loss that makes the RDT's registers say where the named object is.

It must reach the action expert's weights, ignore samples whose instruction was dropped, stay out of the exported
policy, and resume bit-exactly after a kill like every other piece of the trainer state.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gem_ros.core.policy.action_expert import ActionExpert
from gem_ros.core.policy.checkpoint import read_tensors
from gem_ros.core.policy.config import RDTConfig
from gem_ros.core.policy.gem_vla import TrainingBatch
from gem_train.checkpointing import STATE_FILE, STATE_JSON, list_checkpoints
from gem_train.data import ChunkDataset, ChunkDatasetConfig, collate_batch
from gem_train.grounding import STATE_PREFIX, GroundingHead, episode_target
from gem_train.train import DataBundle, train
from test_train_data import make_episode
from test_train_loop import ChunkSamples, all_tensors, bundle, tiny_config


class TargetSamples(ChunkSamples):
    """One sample per episode, its named object at a known xy; every third instruction dropped (names nothing)."""

    def __init__(self, n: int, seed: int):
        super().__init__(n, seed)
        self.xy = np.random.default_rng(seed + 10).uniform([0.35, -0.2], [0.65, 0.2], (n, 2)).astype(np.float32)
        self.episode_targets = list(self.xy)

    def __getitem__(self, i: int) -> dict:
        sample = super().__getitem__(i)
        if i % 3 == 2:
            sample["instruction"] = ""
        sample.update(target_xy=self.xy[i], target_valid=bool(sample["instruction"]))
        return sample


def grounded_data() -> DataBundle:
    plain = bundle(TargetSamples(10, seed=0), TargetSamples(8, seed=1))
    return DataBundle(plain.train_set, plain.val_set, collate_batch, plain.stats)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("grounding")
    (path / "episodes").mkdir()
    return path


def batch_of(xy, valid) -> TrainingBatch:
    return TrainingBatch(images=[], instructions=[], state=torch.zeros(len(xy), 1), actions=torch.zeros(len(xy), 1, 1),
                         target_xy=torch.tensor(xy, dtype=torch.float32), target_valid=torch.tensor(valid))


def test_the_head_scores_only_samples_that_name_an_object():
    torch.manual_seed(0)
    head = GroundingHead(8, horizon=4, center=[0.5, 0.0], scale=[0.1, 0.1], weight=2.0)
    tokens = torch.randn(4, 6, 8)
    xy = [[0.5, 0.1], [0.4, -0.1], [0.6, 0.0], [0.3, 0.2]]
    loss, logs = head(tokens, batch_of(xy, [True, True, False, False]))
    assert loss.item() == pytest.approx(2.0 * logs["loss/grounding"]) and logs["grounding_error_m"] > 0
    moved_unnamed = [xy[0], xy[1], [9.0, 9.0], [-9.0, 3.0]]
    assert head(tokens, batch_of(moved_unnamed, [True, True, False, False]))[0].item() == pytest.approx(loss.item())
    moved_named = [[0.9, 0.1], xy[1], xy[2], xy[3]]
    assert head(tokens, batch_of(moved_named, [True, True, False, False]))[0].item() != pytest.approx(loss.item())
    # registers only: the action tokens (the first `horizon`) do not enter the prediction
    other_actions = tokens.clone()
    other_actions[:, :4] = torch.randn(4, 4, 8)
    assert head(other_actions, batch_of(xy, [True] * 4))[0].item() == pytest.approx(
        head(tokens, batch_of(xy, [True] * 4))[0].item())
    nothing, _ = head(tokens.requires_grad_(True), batch_of(xy, [False] * 4))
    assert nothing.item() == 0.0
    nothing.backward()   # a batch of dropped instructions still trains (the other losses) without error
    with pytest.raises(ValueError, match="target_xy"):
        head(tokens, TrainingBatch(images=[], instructions=[], state=torch.zeros(1), actions=torch.zeros(1)))


@pytest.mark.parametrize("value", [[0.5, 0.1], [float("nan"), 0.0, 0.02], [0.5, float("inf"), 0.0], [[1, 2], [3, 4]],
                                   [1e300, 0.0, 0.0]])
def test_a_malformed_target_names_the_episode(value):
    with pytest.raises(ValueError, match="ep7: target_position must be three finite numbers"):
        episode_target({"target_position": value}, "ep7")


def test_the_dataset_carries_the_named_objects_xy_and_drops_it_with_the_instruction():
    named, plain = make_episode(seed=0), make_episode(seed=1)
    named.meta["target_position"] = [0.55, -0.12, 0.02]
    cfg = dict(camera_names=["scene", "wrist"], chunk_len=4, image_size=(24, 32), depth_size=0)
    dataset = ChunkDataset([named, plain], ChunkDatasetConfig(**cfg))
    assert dataset.episode_targets[1] is None
    np.testing.assert_allclose(dataset.episode_targets[0], [0.55, -0.12])
    first, other = dataset[0], dataset[len(dataset) - 1]
    assert first["target_valid"] and "target_xy" not in other
    batch = collate_batch([first, dataset[1]])
    np.testing.assert_allclose(batch.target_xy.numpy(), [[0.55, -0.12]] * 2)
    assert collate_batch([first, other]).target_xy is None   # a batch that is not all grounded has no targets
    dropping = ChunkDataset([named], ChunkDatasetConfig(**cfg, instruction_drop_prob=0.99))
    sample = dropping[0]
    assert sample["instruction"] == "" and not sample["target_valid"]
    named.meta["target_position"] = [0.5, 0.1]
    with pytest.raises(ValueError, match="target_position must be three"):
        ChunkDataset([named], ChunkDatasetConfig(**cfg))


def test_returning_the_tokens_leaves_the_flow_matching_loss_as_it_was():
    cfg = RDTConfig(hidden_size=32, depth=2, num_heads=4, num_kv_heads=2, num_register_tokens=3, ffn_multiple_of=16,
                    timestep_freq_dim=32, cond_hidden_size=16)
    expert = ActionExpert(cfg, action_dim=3, state_dim=5, horizon=6)
    args = (torch.randn(2, 6, 3), torch.randn(2, 2, 7, 16), torch.randn(2, 5), None)
    plain = expert.loss(*args, generator=torch.Generator().manual_seed(1))
    loss, tokens = expert.loss(*args, generator=torch.Generator().manual_seed(1), return_tokens=True)
    assert torch.equal(plain, loss) and tokens.shape == (2, 6 + 3, 32)


def test_the_grounding_loss_trains_the_action_expert(workdir):
    data = grounded_data()
    runs = {w: train(tiny_config(workdir, f"weight_{w}", "train.max_steps=2", "train.eval_every=2",
                                 "train.checkpoint_every=2", f"train.grounding_loss_weight={w}"), data=data)
            for w in (0.0, 1.0)}
    weights = {w: read_tensors(r.checkpoint / "model.safetensors") for w, r in runs.items()}
    assert weights[0.0].keys() == weights[1.0].keys()     # the head is not part of the served policy
    assert not torch.equal(weights[0.0]["model.blocks.0.cross_attn.wq.weight"],
                           weights[1.0]["model.blocks.0.cross_attn.wq.weight"])   # its gradient reached the RDT
    grounded = runs[1.0].history
    assert all("loss/grounding" in h for h in grounded if "loss/action" in h)
    assert any("eval/grounding_error_m" in h for h in grounded)
    assert not any("loss/grounding" in h for h in runs[0.0].history)
    state = read_tensors(runs[1.0].checkpoint / STATE_FILE)
    assert {k for k in state if k.startswith(STATE_PREFIX)} == \
        {STATE_PREFIX + k for k in ("mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias", "center", "scale")}
    np.testing.assert_allclose(state[STATE_PREFIX + "center"].numpy(), np.mean(data.train_set.xy, axis=0), rtol=1e-5)


def test_a_grounded_run_without_targets_is_refused_before_it_trains(workdir):
    with pytest.raises(ValueError, match="grounding_loss_weight > 0 needs every training episode's target_position"):
        train(tiny_config(workdir, "no_targets", "train.max_steps=2", "train.grounding_loss_weight=1"),
              data=bundle(ChunkSamples(4, seed=0), ChunkSamples(2, seed=1)))


def test_a_killed_grounded_run_resumes_its_head_bit_exactly(workdir):
    data = grounded_data()
    overrides = ("train.max_steps=6", "train.checkpoint_every=2", "train.eval_every=1000",
                 "train.grounding_loss_weight=0.5")
    straight = train(tiny_config(workdir, "grounded_straight", *overrides), data=data)

    def kill_at_step_5(step: int, logs: dict) -> None:
        if step == 5:
            raise KeyboardInterrupt("simulated kill")

    config = tiny_config(workdir, "grounded_killed", *overrides)
    with pytest.raises(KeyboardInterrupt):
        train(config, data=data, on_step=kill_at_step_5)
    assert list_checkpoints(Path(config.run_dir))[-1].name == "step_4"
    resumed = train(config, resume=True, data=data)
    expected, got = all_tensors(straight.checkpoint), all_tensors(resumed.checkpoint)
    assert [k for k in expected if not torch.equal(expected[k], got[k])] == []
    states = [read_tensors(r.checkpoint / STATE_FILE) for r in (straight, resumed)]
    heads = [{k: v for k, v in s.items() if k.startswith(STATE_PREFIX)} for s in states]
    assert heads[0].keys() == heads[1].keys() and all(torch.equal(heads[0][k], heads[1][k]) for k in heads[0])
    assert json.loads((resumed.checkpoint / STATE_JSON).read_text())["position"]["step"] == 6
