"""GEM-VLA end to end on tiny models: shapes, determinism, save/load, checkpoint checks, learning, bad input."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from gem_ros.core.policy.checkpoint import MODEL_FILE
from gem_ros.core.policy.gem_vla import GemVLAPolicy, TrainingBatch
from gem_ros.core.policy.normalizer import MinMaxNormalizer
from gem_ros.core.policy.tiny import tiny_policy_config, write_tiny_backbone


@pytest.fixture(scope="module")
def policy(tiny_checkpoint_dir):
    return GemVLAPolicy.from_pretrained(tiny_checkpoint_dir, device="cpu")


def test_predict_action_chunk_shapes_dtypes_and_timings(policy, make_observation):
    io = policy.config.io
    chunk = policy.predict_action_chunk(make_observation(policy.config))
    assert chunk.shape == (io.chunk_len, io.action_dim) and chunk.dtype == np.float32
    assert np.all(np.isfinite(chunk))
    assert set(policy.last_timings) == {"preprocess", "vlm", "action_expert", "postprocess", "total"}


def test_same_seed_same_chunk_and_reset_restarts_noise(policy, make_observation):
    obs = make_observation(policy.config)
    np.testing.assert_array_equal(policy.predict_action_chunk(obs, seed=7), policy.predict_action_chunk(obs, seed=7))
    policy.reset(3)
    first = policy.predict_action_chunk(obs)
    second = policy.predict_action_chunk(obs)
    policy.reset(3)
    np.testing.assert_array_equal(policy.predict_action_chunk(obs), first)
    assert not np.array_equal(first, second)


def test_inference_truncation_keeps_selected_hidden_states(tiny_checkpoint_dir, policy, make_observation):
    full = GemVLAPolicy.from_pretrained(tiny_checkpoint_dir, device="cpu", for_training=True).eval()
    assert len(policy.backbone.model.language_model.layers) == max(policy.config.layers_per_block) + 1
    obs = make_observation(policy.config, seed=4)
    np.testing.assert_allclose(full.predict_action_chunk(obs, seed=1), policy.predict_action_chunk(obs, seed=1),
                               rtol=1e-5, atol=1e-6)


def test_save_load_round_trip_gives_identical_outputs(tiny_checkpoint_dir, tmp_path, make_observation):
    trained = GemVLAPolicy.from_pretrained(tiny_checkpoint_dir, device="cpu", for_training=True)
    with torch.no_grad():   # non-zero output layer so the comparison is not trivially 0 == 0
        trained.action_expert.model.final_layer.ffn.fc2.weight.normal_()
    obs = make_observation(trained.config, seed=2)
    expected = trained.eval().predict_action_chunk(obs, seed=5)
    trained.save_pretrained(tmp_path / "copy")
    reloaded = GemVLAPolicy.from_pretrained(tmp_path / "copy", device="cpu")
    np.testing.assert_array_equal(reloaded.predict_action_chunk(obs, seed=5), expected)
    assert not np.allclose(expected, expected[0])


def test_vision_only_policy_ignores_the_state_and_keeps_that_through_save(tiny_backbone_dir, tmp_path,
                                                                         make_observation):
    torch.manual_seed(0)
    config = tiny_policy_config(state_input=False)
    policy = GemVLAPolicy.build(config, tiny_backbone_dir, MinMaxNormalizer(-np.ones(9), np.ones(9)), device="cpu")
    with torch.no_grad():   # leave adaLN-Zero's identity init, so a state that leaked in would change the chunk
        for weight in policy.action_expert.parameters():
            weight.add_(0.05 * torch.randn_like(weight))
    reloaded = GemVLAPolicy.from_pretrained(policy.save_pretrained(tmp_path / "vision_only"), device="cpu")
    assert reloaded.config.io.state_input is False
    obs = make_observation(reloaded.config, seed=1)
    chunk = reloaded.predict_action_chunk(obs, seed=0)
    obs.state = obs.state + 0.5
    np.testing.assert_array_equal(reloaded.predict_action_chunk(obs, seed=0), chunk)
    with_state = GemVLAPolicy.from_pretrained(tmp_path / "vision_only", device="cpu")
    with_state.config.io.state_input = True   # the same weights reading the state: now it matters
    assert not np.array_equal(with_state.predict_action_chunk(obs, seed=0), chunk)


def test_truncated_policy_refuses_to_save(tiny_backbone_dir, tmp_path):
    from gem_ros.core.policy.normalizer import MinMaxNormalizer
    from gem_ros.core.policy.tiny import tiny_policy_config

    # The action expert reads hidden state 1 only: inference drops the VLM's 2nd and 3rd decoder layers.
    built = GemVLAPolicy.build(tiny_policy_config(selected_layers=(1,)), tiny_backbone_dir,
                               MinMaxNormalizer(-np.ones(9), np.ones(9)), device="cpu")
    path = built.save_pretrained(tmp_path / "ckpt")
    served = GemVLAPolicy.from_pretrained(path, device="cpu")
    assert served.truncated and len(served.backbone.model.language_model.layers) == 2
    with pytest.raises(ValueError, match="truncated"):
        served.save_pretrained(tmp_path / "x")
    whole = GemVLAPolicy.from_pretrained(path, device="cpu", keep_full_vlm=True)
    assert not whole.truncated and len(whole.backbone.model.language_model.layers) == 3
    whole.save_pretrained(tmp_path / "y")


@pytest.mark.parametrize("mutate, message", [
    (lambda o: o.images.pop("wrist"), "missing \\['wrist'\\]"),
    (lambda o: o.images.__setitem__("left", o.images.pop("wrist")), "unexpected \\['left'\\]"),
    (lambda o: o.images.__setitem__("scene", np.zeros((32, 64, 3), np.uint8)), "camera 'scene': image shape"),
    (lambda o: o.images.__setitem__("scene", np.zeros((64, 64, 3), np.float32)), "dtype must be uint8"),
    (lambda o: setattr(o, "state", np.full(9, np.nan)), "NaN"),
    (lambda o: setattr(o, "state", np.zeros(5)), "length 9"),
    (lambda o: setattr(o, "instruction", "   "), "instruction is empty"),
])
def test_bad_observations_raise_clear_errors(policy, make_observation, mutate, message):
    obs = make_observation(policy.config)
    mutate(obs)
    with pytest.raises(ValueError, match=message):
        policy.predict_action_chunk(obs)


def test_missing_checkpoint_files_are_named(tiny_checkpoint_dir, tmp_path):
    broken = shutil.copytree(tiny_checkpoint_dir, tmp_path / "broken")
    (broken / "normalizer.safetensors").unlink()
    with pytest.raises(ValueError, match="missing \\['normalizer.safetensors'\\]"):
        GemVLAPolicy.from_pretrained(broken)
    with pytest.raises(ValueError, match="does not exist"):
        GemVLAPolicy.from_pretrained(tmp_path / "nowhere")


def test_truncated_weights_file_is_detected(tiny_checkpoint_dir, tmp_path):
    broken = shutil.copytree(tiny_checkpoint_dir, tmp_path / "broken")
    data = (broken / MODEL_FILE).read_bytes()
    (broken / MODEL_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        GemVLAPolicy.from_pretrained(broken)


def test_config_that_disagrees_with_weights_is_refused(tiny_checkpoint_dir, tmp_path):
    broken = shutil.copytree(tiny_checkpoint_dir, tmp_path / "broken")
    config = json.loads((broken / "config.json").read_text())
    config["rdt"]["hidden_size"] = 64   # weights were saved at 32
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="shape mismatches"):
        GemVLAPolicy.from_pretrained(broken)


def test_checkpoint_schema_must_match_robot(tiny_checkpoint_dir):
    robot = tiny_policy_config(cameras=("front", "wrist"), action_dim=7, state_dim=9).io
    with pytest.raises(ValueError, match="action_dim: checkpoint has 9, expected 7.*cameras"):
        GemVLAPolicy.from_pretrained(tiny_checkpoint_dir, expected_io=robot)
    GemVLAPolicy.from_pretrained(tiny_checkpoint_dir, expected_io=tiny_policy_config().io)   # matching: loads


def test_invalid_configs_name_the_field():
    with pytest.raises(ValueError, match="selected_layers"):
        tiny_policy_config(selected_layers=(1, 2, 3))
    with pytest.raises(ValueError, match="action_space"):
        tiny_policy_config(action_space="joint_torque")
    with pytest.raises(ValueError, match="duplicate"):
        tiny_policy_config(cameras=("a", "a"))


def test_tiny_policy_overfits_one_batch(tiny_backbone_dir):
    torch.manual_seed(0)
    config = tiny_policy_config(chunk_len=4, action_dim=3, state_dim=3)
    rng = np.random.default_rng(0)
    actions = torch.as_tensor(rng.uniform(-1, 1, (2, 4, 3)), dtype=torch.float32)
    policy = GemVLAPolicy.build(config, tiny_backbone_dir, MinMaxNormalizer(-np.ones(3), np.ones(3)), device="cpu")
    batch = TrainingBatch(images=[[rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(2)]
                                  for _ in range(2)],
                          instructions=["pick up the red cube", "pick up the blue cube"],
                          state=torch.zeros(2, 3), actions=actions)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-2)
    losses = []
    for step in range(120):
        # Evaluate the loss at fixed noise/timesteps so the curve measures learning, not sampling noise.
        loss, logs = policy(batch, generator=torch.Generator().manual_seed(step % 4))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(logs["loss/action"])
    start, end = np.mean(losses[:4]), np.mean(losses[-4:])
    assert end < 0.1 * start, (start, end)


def test_gem2b_layout_backbone_routes_depth_keys_to_depth_expert(tmp_path, make_observation):
    from safetensors.torch import load_file, save_file

    from gem_ros.core.policy.depth_expert import DepthExpert
    from gem_ros.core.policy.tiny_depth import tiny_depth_expert_config

    backbone_dir = write_tiny_backbone(tmp_path / "gem2b")
    depth_config = tiny_depth_expert_config(vlm_hidden_size=64, image_size=64)
    torch.manual_seed(11)
    gem_depth = DepthExpert(depth_config).state_dict()
    weights = load_file(str(backbone_dir / "model.safetensors"))   # GEM-2B: depth generator beside the VLM
    save_file({**weights, **{k: v.contiguous() for k, v in gem_depth.items()}}, str(backbone_dir / "model.safetensors"))
    normalizer = MinMaxNormalizer(-np.ones(9), np.ones(9))

    with_depth = GemVLAPolicy.build(tiny_policy_config(depth_expert=depth_config.to_dict()), backbone_dir,
                                    normalizer, device="cpu")
    routed = with_depth.depth_expert.state_dict()
    assert all(torch.equal(routed[k], v) for k, v in gem_depth.items())
    # A training step with depth targets adds the weighted depth loss.
    rng = np.random.default_rng(0)
    batch = TrainingBatch(images=[[rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(2)]],
                          instructions=["pick up the red cube"], state=torch.zeros(1, 9), actions=torch.zeros(1, 8, 9),
                          depth=torch.rand(1, 2, 3, 64, 64) * 2 - 1)
    total, logs = with_depth(batch)
    assert logs["loss/depth"] > 0
    assert total.item() == pytest.approx(logs["loss/action"] + 0.1 * logs["loss/depth"], rel=1e-5)
    # Saved and reloaded, the depth expert comes back bit-identical and renders a debug depth image.
    with_depth.save_pretrained(tmp_path / "ckpt")
    reloaded = GemVLAPolicy.from_pretrained(tmp_path / "ckpt", device="cpu", for_training=True)
    assert all(torch.equal(reloaded.depth_expert.state_dict()[k], v) for k, v in routed.items())
    depth_images = reloaded.eval().predict_depth(make_observation(reloaded.config), num_steps=2)
    assert depth_images.shape == (2, 64, 64, 3) and np.all((depth_images >= 0) & (depth_images <= 1))

    # Without a depth expert configured the same GEM-2B folder loads cleanly: the extra keys are ignored.
    plain = GemVLAPolicy.build(tiny_policy_config(), backbone_dir, normalizer, device="cpu").eval()
    assert plain.depth_expert is None
    assert plain.predict_action_chunk(make_observation(plain.config)).shape == (8, 9)


def test_tiny_patch_size_sets_vision_tokens_per_image(tmp_path):
    from gem_ros.core.policy import backbone as bb

    counts = {}
    for patch in (16, 8):
        path = write_tiny_backbone(tmp_path / f"patch{patch}", patch_size=patch)
        model = bb.load_backbone(path, torch.float32, torch.device("cpu"))
        prompt = bb.build_prompts(bb.load_processor(path), [[np.zeros((64, 64, 3), np.uint8)]], ["go"],
                                  torch.device("cpu"))
        counts[patch] = int((prompt.input_ids == model.config.image_token_id).sum())
        stack, _ = bb.hidden_state_stack(model, prompt, [0, 1])
        assert stack.shape[2] == prompt.input_ids.shape[1]
    assert counts == {16: 4, 8: 16}   # (64 / patch / merge 2)^2 tokens


def test_tiny_vision_positions_start_as_a_decodable_grid(tiny_backbone_dir):
    from gem_ros.core.policy import backbone as bb
    from gem_ros.core.policy.tiny import sincos_grid_positions

    table = bb.load_backbone(tiny_backbone_dir, torch.float32, torch.device("cpu")).model.visual.pos_embed.weight
    side = int(round(table.shape[0] ** 0.5))
    np.testing.assert_allclose(table.detach().numpy(), sincos_grid_positions(side, table.shape[1]).numpy(), atol=1e-6)
    # a linear read-out recovers (row, column) of every cell: position is in the features from step 0
    cells = np.stack(np.divmod(np.arange(side * side), side), axis=1).astype(float)
    features = np.c_[table.detach().numpy(), np.ones(side * side)]
    fit, *_ = np.linalg.lstsq(features, cells, rcond=None)
    assert np.abs(features @ fit - cells).max() < 0.5


def test_patch_projection_computes_what_the_conv3d_does_with_the_same_parameters(tiny_backbone_dir):
    from transformers import Qwen3VLForConditionalGeneration

    from gem_ros.core.policy import backbone as bb

    library = Qwen3VLForConditionalGeneration.from_pretrained(str(tiny_backbone_dir), dtype=torch.float32).eval()
    ours = bb.load_backbone(tiny_backbone_dir, torch.float32, torch.device("cpu")).eval()
    assert isinstance(ours.model.visual.patch_embed.proj, bb.PatchProjection)
    assert isinstance(library.model.visual.patch_embed.proj, torch.nn.Conv3d)
    shapes = lambda model: {k: tuple(v.shape) for k, v in model.state_dict().items()}  # noqa: E731
    assert shapes(ours) == shapes(library)   # checkpoints load and save unchanged
    rng = np.random.default_rng(0)
    images = [[rng.integers(0, 256, (64, 96, 3), np.uint8), rng.integers(0, 256, (64, 64, 3), np.uint8)]]
    prompt = bb.build_prompts(bb.load_processor(tiny_backbone_dir), images, ["pick"], torch.device("cpu"))
    with torch.no_grad():
        expected, _ = bb.hidden_state_stack(library, prompt, [0, 1, 2])
        got, _ = bb.hidden_state_stack(ours, prompt, [0, 1, 2])
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert not torch.equal(got[:, 1:], torch.zeros_like(got[:, 1:]))


def test_patch_projection_refuses_a_conv_that_is_not_one_patch_per_kernel():
    from gem_ros.core.policy.backbone import PatchProjection

    with pytest.raises(ValueError, match="one patch per kernel"):
        PatchProjection(torch.nn.Conv3d(3, 8, kernel_size=(2, 4, 4), stride=(2, 2, 2)))


def test_noise_scale_scales_the_samplers_starting_noise(policy, make_observation):
    import dataclasses

    obs = make_observation(policy.config)
    base = policy.config
    try:
        policy.config = dataclasses.replace(base, noise_scale=0.5)
        half = policy.predict_action_chunk(obs, seed=4)
        original = policy.action_expert.sample

        def explicit(stack, state, mask, steps, generator=None, noise=None, noise_scale=1.0):
            drawn = torch.randn((stack.shape[0], policy.action_expert.horizon, policy.action_expert.action_dim),
                                generator=generator)
            return original(stack, state, mask, steps, noise=0.5 * drawn)

        policy.action_expert.sample = explicit
        np.testing.assert_allclose(policy.predict_action_chunk(obs, seed=4), half, rtol=1e-6, atol=1e-6)
    finally:
        policy.config = base
        policy.action_expert.__dict__.pop("sample", None)
    with pytest.raises(ValueError, match="noise_scale must be in"):
        dataclasses.replace(base, noise_scale=2.0)
    with pytest.raises(ValueError, match="prompt_order must be one of"):   # a config.json naming another order
        dataclasses.replace(base, prompt_order="sideways")


@pytest.mark.parametrize("sizes", [[(64, 64), (64, 64)], [(64, 96), (64, 64)], [(70, 70), (64, 64)]],
                         ids=["patched_on_device", "two_sizes", "resized_by_processor"])
def test_prompt_builder_gives_the_processor_batch(tiny_backbone_dir, sizes):
    """Cached per-instruction tokens padded as the tokenizer pads, pixels as the processor makes them: the same
    tensors as `build_prompts`, for a batch mixing instructions of different lengths, on cold and warm cache."""
    from gem_ros.core.policy import backbone as bb

    processor = bb.load_processor(tiny_backbone_dir)
    builder = bb.PromptBuilder(processor, max_cached=2)
    rng = np.random.default_rng(1)
    for instructions in (["pick up the red cube", "open", "pick up the red cube"],
                         ["open", "put the cube in the tray and then open the gripper", "open"]):
        images = [[rng.integers(0, 256, (h, w, 3), np.uint8) for h, w in sizes] for _ in instructions]
        expected = bb.build_prompts(processor, images, instructions, torch.device("cpu")).inputs
        for _ in range(2):
            got = builder(images, instructions, torch.device("cpu")).inputs
            assert set(got) == set(expected)
            for key, value in expected.items():
                assert got[key].dtype == value.dtype, key
                torch.testing.assert_close(got[key], value, rtol=0, atol=1e-6, msg=key)
    assert len(builder._samples) == 2   # bounded cache
