"""The static-shape chunk program (static_inference.py) against the library's Qwen3-VL forward and our HF path."""
from __future__ import annotations

import copy
import gc
import weakref

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
    plan = si.build_prompt_plan(backbone, policy._prompt_builder, images, "pick up the red cube", policy.device)
    pixels, _ = pixel_values_without_resize(policy.processor.image_processor, images, policy.device)
    # Bit-equal to our batched processor; the library's torchvision backend (used where torchvision is installed)
    # fuses rescale and normalise in float32, so it differs in the last bits.
    torch.testing.assert_close(pixels, prompt.inputs["pixel_values"], rtol=0, atol=1e-6)
    stack = si.vlm_hidden_stack(backbone, plan, pixels, list(range(len(reference))))
    length = prompt.input_ids.shape[1]
    assert plan.length == length and stack.shape[2] % 32 == 0 and stack.shape[2] > length   # right-padded
    for i, expected in enumerate(reference):   # causal: the pads after the prompt change nothing before them
        torch.testing.assert_close(stack[:, i, :length], expected, rtol=1e-5, atol=1e-5, msg=f"hidden state {i}")
    assert torch.isfinite(stack).all()
    assert plan.lang_mask.sum() == length and plan.lang_mask[0, :length].all()
    assert plan.patches_per_image == [h * w // 256 for h, w, _ in shapes]


@torch.no_grad()
def test_one_program_serves_other_instructions_and_images_exactly(policy):
    """A program built for one prompt, fed another instruction's plan and other pixels, gives that prompt's
    library hidden states (stack level: the tiny action expert would blur a stale input)."""
    backbone, processor, layers = policy.backbone, policy.processor, [0, 1, 2, 3]
    first = si.build_prompt_plan(backbone, policy._prompt_builder, images_of([(64, 64, 3)] * 2),
                                 "pick up the red cube", "cpu")
    program = si.ChunkProgram(policy, first, num_steps=2, use_cuda_graph=False)
    program.layers = layers
    stacks = []
    for seed, instruction in ((1, "put the cube in the tray"), (2, "put the cube in the tray"), (2, "open it")):
        images = images_of([(64, 64, 3)] * 2, seed=seed)
        plan = si.build_prompt_plan(backbone, policy._prompt_builder, images, instruction, "cpu")
        assert plan.shape_key == first.shape_key
        prompt = bb.build_prompts(processor, [images], [instruction], policy.device)
        reference = backbone.model(**prompt.inputs, output_hidden_states=True, use_cache=False).hidden_states
        stack = program.vlm(plan, program.pixel_values(images))
        for i in layers:
            torch.testing.assert_close(stack[:, i, :plan.length], reference[i], rtol=1e-5, atol=1e-5)
        stacks.append(stack)
    assert (stacks[0] - stacks[1]).abs().max() > 1e-2   # other images
    assert (stacks[1] - stacks[2]).abs().max() > 1e-2   # other instruction


@torch.no_grad()
def test_deepstack_on_the_last_layer_is_normed_after_it_as_in_the_library(policy):
    backbone = copy.deepcopy(policy.backbone)
    bb.truncate_text_layers(backbone, 1)   # the only layer also receives DeepStack features
    images = images_of([(64, 64, 3)] * 2)
    prompt = bb.build_prompts(policy.processor, [images], ["pick up the red cube"], policy.device)
    reference = backbone.model(**prompt.inputs, output_hidden_states=True, use_cache=False).hidden_states
    plan = si.build_prompt_plan(backbone, policy._prompt_builder, images, "pick up the red cube", policy.device)
    pixels, _ = pixel_values_without_resize(policy.processor.image_processor, images, policy.device)
    stack = si.vlm_hidden_stack(backbone, plan, pixels, [0, 1])
    for i in (0, 1):
        torch.testing.assert_close(stack[:, i, :plan.length], reference[i], rtol=1e-5, atol=1e-5)


def test_pixels_need_the_processor_when_it_would_resize(policy):
    processor = policy.processor.image_processor
    assert pixel_values_without_resize(processor, images_of([(64, 64, 3), (70, 70, 3)]), policy.device) is None
    assert pixel_values_without_resize(processor, [np.zeros((64, 64, 3), np.float32)], policy.device) is None
    sized_otherwise = copy.copy(processor)
    sized_otherwise.size = {"height": 64, "width": 64}
    assert pixel_values_without_resize(sized_otherwise, images_of([(64, 64, 3)]), policy.device) is None


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


def test_instruction_first_prompts_put_the_words_before_the_images_and_serve_alike_in_both_modes(
        tiny_backbone_dir, make_observation):
    """prompt_order instruction_first (the sim_pick_lang recipe's): the instruction's tokens come before the first
    image token in training and serving prompts, and the static program gives the HF path's chunks."""
    torch.manual_seed(0)
    config = tiny_policy_config(chunk_len=6)
    config.prompt_order = "instruction_first"
    policy = GemVLAPolicy.build(config, tiny_backbone_dir, MinMaxNormalizer.identity(9), device="cpu").eval()
    with torch.no_grad():
        for p in policy.action_expert.parameters():
            p.normal_(0, 0.1)
    observation = make_observation(config, seed=0)
    ids = policy.build_prompts([[observation.images[c.name] for c in config.io.cameras]],
                               [observation.instruction]).inputs["input_ids"][0].tolist()
    words = policy.processor.tokenizer(observation.instruction)["input_ids"]
    first_image = ids.index(policy.backbone.config.image_token_id)
    starts = [i for i in range(len(ids) - len(words) + 1) if ids[i:i + len(words)] == words]
    assert starts and starts[0] + len(words) < first_image, (starts, first_image)
    chunks = {}
    for mode in ("hf", "static"):
        policy.inference_mode = mode
        chunks[mode] = policy.predict_action_chunk(observation, seed=0)
    np.testing.assert_allclose(chunks["static"], chunks["hf"], rtol=1e-4, atol=1e-5)
    # Why the order matters: the image tokens' states depend on the instruction only when it comes first.
    images = [[observation.images[c.name] for c in config.io.cameras]]
    for instruction_first in (False, True):
        states = []
        for instruction in ("pick up the red cube", "pick up the blue cube"):
            prompt = bb.build_prompts(policy.processor, images, [instruction], policy.device, instruction_first)
            with torch.no_grad():
                stack, _ = bb.hidden_state_stack(policy.backbone, prompt, [2])
            is_image = prompt.inputs["input_ids"][0] == policy.backbone.config.image_token_id
            states.append(stack[0, 0][is_image])
        assert torch.equal(*states) != instruction_first, instruction_first


def test_instructions_of_one_padded_length_share_a_program_and_caches_are_bounded(tiny_backbone_dir,
                                                                                   make_observation):
    config = tiny_policy_config()
    policy = GemVLAPolicy.build(config, tiny_backbone_dir, MinMaxNormalizer.identity(9), device="cpu").eval()
    with torch.no_grad():   # not the zero-initialised identity: chunks depend on the VLM
        for p in policy.action_expert.parameters():
            p.normal_(0, 0.3)
    policy.inference_mode, policy._programs.capacity, policy._plans.capacity = "static", 1, 2
    for instruction in ("pick up the red cube", "pick up the blue cube", "put the cube in the tray"):
        policy.predict_action_chunk(make_observation(config, instruction=instruction), seed=0)
    assert len(policy._programs) == 1   # one shape, one program
    assert [key[0][0] for key in policy._plans.keys()] == ["pick up the blue cube", "put the cube in the tray"]
    program = policy._programs.values()[0]
    long = "pick up the red cube " * 12   # a longer prompt: another padded length, another program
    policy.predict_action_chunk(make_observation(config, instruction=long), seed=0)
    assert len(policy._programs) == 1 and policy._programs.values()[0] is not program
    plan = policy._plans.values()[-1]
    with pytest.raises(ValueError, match="prompt shape"):
        program.vlm(plan, torch.zeros(1))
    # Plans hold nothing computed from weights: an in-place update (an optimizer step) reaches the next chunk.
    observation = make_observation(config)
    before = policy.predict_action_chunk(observation, seed=0)
    cached = len(policy._plans)
    with torch.no_grad():
        policy.backbone.model.language_model.embed_tokens.weight.mul_(3.0)
        policy.backbone.model.visual.pos_embed.weight.add_(0.5)
    after = policy.predict_action_chunk(observation, seed=0)
    assert len(policy._plans) == cached and not np.allclose(after, before, atol=1e-4)
    policy.inference_mode = "hf"
    np.testing.assert_allclose(after, policy.predict_action_chunk(observation, seed=0), rtol=1e-4, atol=1e-5)
    # Moved or reloaded parameters are other memory: the caches go.
    policy.load_state_dict(policy.state_dict())
    assert not policy._programs and not policy._plans
    policy.inference_mode = "static"
    policy.predict_action_chunk(observation, seed=0)
    policy.float()
    assert not policy._programs and not policy._plans
    # Programs do not refer back to the policy: dropping it frees the weights at once, no garbage collection.
    policy.predict_action_chunk(observation, seed=0)
    gone = weakref.ref(policy)
    gc.disable()
    try:
        del policy
        assert gone() is None
    finally:
        gc.enable()


def test_a_failed_graph_capture_runs_the_stage_eagerly_and_says_why(policy, make_observation, monkeypatch):
    """Without a GPU the capture itself cannot run; the fallback around it can: a capture that raises leaves the
    stage eager, the chunk correct, and the reason in `capture_errors` (gem_policy turns it into a WARN)."""
    def refuse(*args, **kwargs):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(si, "CudaGraphCallable", refuse)
    plan = si.build_prompt_plan(policy.backbone, policy._prompt_builder, images_of([(64, 64, 3)] * 2),
                                "pick up the red cube", policy.device)
    eager = si.ChunkProgram(policy, plan, 2, use_cuda_graph=False)
    graphed = si.ChunkProgram(policy, plan, 2, use_cuda_graph=True)
    pixels = eager.pixel_values(images_of([(64, 64, 3)] * 2))
    torch.testing.assert_close(graphed.vlm(plan, pixels), eager.vlm(plan, pixels))
    assert set(graphed.capture_errors) == {"VLM"} and "not permitted" in graphed.capture_errors["VLM"]


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
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@torch.no_grad()
def test_cuda_graph_replays_match_eager_static(tiny_backbone_dir, make_observation, dtype):
    """Graph replays against the eager static program for other instructions and other images, at the VLM stack
    (where a stale input would show) and at the chunk; bf16 is what runs on robots."""
    torch.manual_seed(0)
    config = tiny_policy_config(chunk_len=6)
    policy = GemVLAPolicy.build(config, tiny_backbone_dir, MinMaxNormalizer.identity(9), device="cuda",
                                dtype=dtype).eval()
    for p in policy.action_expert.parameters():
        p.normal_(0, 0.1)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    observations = [make_observation(config, seed=s, instruction=instruction)
                    for s, instruction in enumerate(["pick up the red cube", "put the cube in the tray",
                                                     "pick up the red cube"])]
    plan0 = si.build_prompt_plan(policy.backbone, policy._prompt_builder, list(observations[0].images.values()),
                                 observations[0].instruction, policy.device)
    eager = si.ChunkProgram(policy, plan0, 3, use_cuda_graph=False)
    graphed = si.ChunkProgram(policy, plan0, 3, use_cuda_graph=True)
    stacks = []
    for obs in observations:
        images = [obs.images[name] for name in config.io.camera_names]
        plan = si.build_prompt_plan(policy.backbone, policy._prompt_builder, images, obs.instruction, policy.device)
        pixels = eager.pixel_values(images)
        expected, got = eager.vlm(plan, pixels), graphed.vlm(plan, pixels).clone()
        torch.testing.assert_close(got, expected, **tol)
        state = torch.randn(1, config.io.state_dim, device="cuda")
        noise = torch.randn(1, 6, 9, device="cuda")
        torch.testing.assert_close(graphed.sample(plan, got, state, noise), eager.sample(plan, expected, state, noise),
                                   **tol)
        stacks.append(got)
    assert not graphed.capture_errors, graphed.capture_errors
    assert (stacks[0] - stacks[1]).float().abs().max() > 1e-2   # replays saw the new prompt and pixels
    policy.inference_mode = "auto"
    chunk = policy.predict_action_chunk(observations[0], seed=0)
    assert np.isfinite(chunk).all() and next(iter(policy._programs.values())).use_cuda_graph
