"""The static-shape chunk program (static_inference.py) against the library's Qwen3-VL forward and our HF path."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gem_ros.core.policy import backbone as bb
from gem_ros.core.policy import static_inference as si
from gem_ros.core.policy.gem_vla import GemVLAPolicy
from gem_ros.core.policy.image_processing import pixel_values_without_resize
from gem_ros.core.policy.normalizer import MinMaxNormalizer
from gem_ros.core.policy.tiny import tiny_policy_config


@pytest.fixture(scope="module")
def policy(tiny_backbone_dir):
    """Tiny policy whose action expert is not the zero-initialised identity (its chunks depend on the VLM)."""
    torch.manual_seed(0)
    config = tiny_policy_config(chunk_len=6)
    normalizer = MinMaxNormalizer(-np.linspace(1, 2, 9), np.linspace(1, 2, 9))
    policy = GemVLAPolicy.build(config, tiny_backbone_dir, normalizer, device="cpu").eval()
    with torch.no_grad():
        for p in policy.action_expert.parameters():
            p.normal_(0, 0.1)
    return policy


def images_of(shapes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for shape in shapes]


@pytest.mark.parametrize("shapes", [[(64, 64, 3), (64, 64, 3)], [(64, 64, 3), (32, 96, 3)]],
                         ids=["same_size", "two_sizes"])
@torch.no_grad()
def test_static_vlm_stack_equals_library_hidden_states(policy, shapes):
    """Every hidden state the library returns (embeddings, each layer before DeepStack, the normed last one),
    from one batched vision attention (same sizes) or per-image calls (two sizes)."""
    backbone = policy.backbone
    assert backbone.config.vision_config.deepstack_visual_indexes, "the tiny backbone must exercise DeepStack"
    images = images_of(shapes)
    prompt = bb.build_prompts(policy.processor, [images], ["pick up the red cube"], policy.device)
    reference = backbone.model(**prompt.inputs, output_hidden_states=True, use_cache=False).hidden_states
    plan = si.build_prompt_plan(backbone, policy.processor, images, "pick up the red cube", policy.device)
    pixels = pixel_values_without_resize(policy.processor.image_processor, images, policy.device)
    # Bit-equal to our batched processor; the library's torchvision backend (used where torchvision is installed)
    # fuses rescale and normalise in float32, so it differs in the last bits.
    torch.testing.assert_close(pixels, prompt.inputs["pixel_values"], rtol=0, atol=1e-6)
    stack = si.vlm_hidden_stack(backbone, plan, pixels, list(range(len(reference))))
    for i, expected in enumerate(reference):
        torch.testing.assert_close(stack[:, i], expected, rtol=1e-5, atol=1e-5, msg=f"hidden state {i}")
    assert plan.lang_mask is None and plan.patches_per_image == [h * w // 256 for h, w, _ in shapes]


def test_pixels_need_the_processor_when_it_would_resize(policy):
    processor = policy.processor.image_processor
    assert pixel_values_without_resize(processor, images_of([(64, 64, 3), (70, 70, 3)]), policy.device) is None
    assert pixel_values_without_resize(processor, [np.zeros((64, 64, 3), np.float32)], policy.device) is None


@pytest.mark.parametrize("size", [64, 70], ids=["patched_here", "resized_by_processor"])
@pytest.mark.parametrize("steps", [1, 3])
def test_static_chunks_equal_hf_chunks(tiny_backbone_dir, make_observation, size, steps):
    torch.manual_seed(0)
    config = tiny_policy_config(image_size=size, chunk_len=6)
    config.num_inference_steps = steps
    policy = GemVLAPolicy.build(config, tiny_backbone_dir, MinMaxNormalizer.identity(9), device="cpu").eval()
    with torch.no_grad():
        for p in policy.action_expert.parameters():
            p.normal_(0, 0.1)
    chunks = {}
    for mode in ("hf", "static"):
        policy.inference_mode = mode
        chunks[mode] = [policy.predict_action_chunk(make_observation(config, seed=s), seed=s) for s in (0, 1)]
    assert not np.allclose(chunks["hf"][0], chunks["hf"][1], atol=1e-3)   # chunks depend on the observation
    for hf, static in zip(chunks["hf"], chunks["static"]):
        np.testing.assert_allclose(static, hf, rtol=1e-4, atol=1e-5)
    assert policy.resolved_inference_mode() == "static"
    policy.inference_mode = "auto"
    assert policy.resolved_inference_mode() == "static"   # on a CPU


def test_prompt_plans_are_cached_per_instruction_and_dropped_when_weights_may_change(policy, make_observation):
    policy.inference_mode, policy.max_cached_prompts = "static", 2
    config = policy.config
    for instruction in ("a", "b", "a", "c"):
        policy.predict_action_chunk(make_observation(config, instruction=instruction), seed=0)
    assert [key[0][0] for key in policy._programs] == ["a", "c"]   # least recently used ("b") went first
    cached = policy._programs[next(iter(policy._programs))]
    policy.predict_action_chunk(make_observation(config, seed=5, instruction="a"), seed=0)
    assert policy._programs[next(reversed(policy._programs))] is cached   # same instruction: plan reused
    policy.train()
    assert not policy._programs
    policy.eval()


def test_cuda_graph_mode_needs_a_cuda_policy(policy):
    policy.inference_mode = "cuda_graph"
    try:
        assert policy.device.type == "cpu"
        with pytest.raises(ValueError, match="needs a CUDA device"):
            policy.resolved_inference_mode()
        policy.inference_mode = "fast"
        with pytest.raises(ValueError, match="not one of"):
            policy.resolved_inference_mode()
    finally:
        policy.inference_mode = "auto"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device (run on a GPU machine)")
def test_cuda_graph_replays_match_eager_static(tiny_backbone_dir, make_observation):
    torch.manual_seed(0)
    config = tiny_policy_config(chunk_len=6)
    policy = GemVLAPolicy.build(config, tiny_backbone_dir, MinMaxNormalizer.identity(9), device="cuda",
                                dtype=torch.float32).eval()
    with torch.no_grad():
        for p in policy.action_expert.parameters():
            p.normal_(0, 0.1)
    chunks = {}
    for mode in ("static", "cuda_graph"):
        policy.inference_mode = mode
        chunks[mode] = [policy.predict_action_chunk(make_observation(config, seed=s), seed=s) for s in range(3)]
    program = next(reversed(policy._programs.values()))   # the cuda_graph one, used last
    assert program.use_cuda_graph and not program.capture_errors, program.capture_errors
    for eager, graphed in zip(chunks["static"], chunks["cuda_graph"]):
        np.testing.assert_allclose(graphed, eager, rtol=1e-4, atol=1e-4)
    assert not np.allclose(chunks["cuda_graph"][0], chunks["cuda_graph"][1], atol=1e-3)   # replays see new inputs
