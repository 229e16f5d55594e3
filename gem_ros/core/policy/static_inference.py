"""One action chunk as a static-shape tensor program: eager on a CPU, one CUDA graph replay per stage on a GPU.

HF's Qwen3-VL forward and the sampler loop launch thousands of small kernels from Python per chunk and stop the
host several times (grid sizes through `.tolist()`, M-RoPE indices, placeholder checks): on an H100 a full-size chunk
took 114-181 ms for a few ms of arithmetic; replayed as CUDA graphs it takes 18 ms (README, Benchmarks).
Everything that depends only on the prompt, the instruction and the camera image sizes, stays fixed for a whole
goal, so `PromptPlan` computes it once: token embeddings, M-RoPE cos/sin, the causal mask, where the image tokens
go, the vision position embeddings and rotary. What is left per
chunk (`ChunkProgram`) is a pure function of pixels, state and noise with no host synchronisation, which
`torch.cuda.CUDAGraph` can capture. The VLM part re-states `Qwen3VLModel.forward` for one sample, calling the
library's own layers; test_static_inference.py holds it to the library's hidden states.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from transformers import Qwen3VLForConditionalGeneration
from transformers.masking_utils import create_causal_mask
from transformers.models.qwen3_vl.modeling_qwen3_vl import apply_rotary_pos_emb_vision
from transformers.vision_utils import get_vision_interpolation_indices_and_weights, get_vision_position_ids

from gem_ros.core.policy import backbone as bb
from gem_ros.core.policy.action_expert import euler_times
from gem_ros.core.policy.compiled import compiled
from gem_ros.core.policy.image_processing import device_pixel_values

INFERENCE_MODES = ("auto", "hf", "static", "cuda_graph")
log = logging.getLogger(__name__)


@dataclass
class PromptPlan:
    """What one (instruction, camera image sizes) prompt fixes, on the policy's device, right-padded to a multiple
    of `pad_to` tokens. The VLM is causal and the pads come last, so the real tokens' hidden states are exactly the
    unpadded ones; the RDT masks the pads out (`lang_mask`). Prompts of one `shape_key` (padded length, image
    sizes) share a `ChunkProgram`, and so its CUDA graphs and compiled kernels. Nothing here is computed from
    trainable weights (embeddings and position tables are looked up inside the program), so a plan stays valid
    while weights change in place."""
    key: tuple
    length: int                                      # real tokens
    input_ids: torch.Tensor                          # (1, L_pad), pads hold id 0 (their embeddings are zeroed)
    lang_mask: torch.Tensor                          # (1, L_pad) True = real token
    image_index: torch.Tensor                        # (N_img_tokens,) positions of the image tokens
    rope: tuple[torch.Tensor, torch.Tensor]          # text M-RoPE cos, sin over L_pad
    # The same for every prompt of one shape_key:
    text_position_ids: torch.Tensor | None
    causal_mask: torch.Tensor | None                 # None: SDPA's own causal path
    vision_interpolation: tuple[torch.Tensor, torch.Tensor]   # indices, weights into the vision position table
    vision_rope: tuple[torch.Tensor, torch.Tensor]
    patches_per_image: list[int]

    @property
    def shape_key(self) -> tuple:
        return (self.key[1], self.input_ids.shape[1])


def _pad_positions(position_ids: torch.Tensor, pads: int) -> torch.Tensor:
    """(..., L) -> (..., L + pads): pads continue after the largest position (any finite rotary would do: no real
    token attends to a pad)."""
    steps = torch.arange(1, pads + 1, device=position_ids.device, dtype=position_ids.dtype)
    return torch.cat([position_ids, position_ids.amax(-1, keepdim=True) + steps], dim=-1)


@torch.no_grad()
def build_prompt_plan(backbone: Qwen3VLForConditionalGeneration, prompts: bb.PromptBuilder,
                      images: Sequence[np.ndarray], instruction: str, device: torch.device,
                      pad_to: int = 32) -> PromptPlan:
    """The library's prompt format and position code, once for this prompt (the images only set their sizes)."""
    inputs = prompts([list(images)], [instruction], device).inputs
    model = backbone.model
    input_ids, grid = inputs["input_ids"], inputs["image_grid_thw"]
    length = input_ids.shape[1]
    pads = -length % pad_to
    embeds = model.get_input_embeddings()(input_ids)   # only their shape, dtype and device are used here
    position_ids = model.compute_3d_position_ids(input_ids=input_ids, inputs_embeds=embeds, image_grid_thw=grid,
                                                 attention_mask=inputs["attention_mask"],
                                                 mm_token_type_ids=inputs.get("mm_token_type_ids"))
    position_ids = _pad_positions(position_ids, pads)
    text_position_ids = None
    if position_ids.ndim == 3 and position_ids.shape[0] == 4:   # as Qwen3VLTextModel.forward splits them
        text_position_ids, position_ids = position_ids[0], position_ids[1:]
    embeds = F.pad(embeds, (0, 0, 0, pads))
    lm, visual = model.language_model, model.visual
    everything = torch.ones(1, length + pads, dtype=inputs["attention_mask"].dtype, device=device)
    causal_mask = create_causal_mask(config=lm.config, inputs_embeds=embeds, attention_mask=everything,
                                     past_key_values=None, position_ids=text_position_ids)
    interpolation = get_vision_interpolation_indices_and_weights(
        grid, num_grid_per_side=visual.num_grid_per_side, mode=visual.interpolation_mode,
        align_corners=visual.interpolation_align_corners, spatial_merge_size=visual.config.spatial_merge_size)
    vision_position_ids = get_vision_position_ids(grid, visual.spatial_merge_size)
    return PromptPlan(
        key=bb.prompt_key(images, instruction), length=length,
        input_ids=F.pad(input_ids, (0, pads)),   # pad id 0: any valid id, its embedding is zeroed
        lang_mask=F.pad(inputs["attention_mask"].bool(), (0, pads), value=False),
        image_index=(input_ids[0] == model.config.image_token_id).nonzero()[:, 0],
        rope=lm.rotary_emb(embeds, position_ids), text_position_ids=text_position_ids, causal_mask=causal_mask,
        vision_interpolation=interpolation,
        vision_rope=visual.rotary_pos_emb(embeds, vision_position_ids),
        patches_per_image=[int(n) for n in grid.prod(-1).tolist()])


def _vision_attention(attn, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                      patches_per_image: list[int]) -> torch.Tensor:
    """Qwen3VLVisionAttention (each image attends within itself) with the split sizes known in Python: images of
    one size go through one batched SDPA call instead of the library's per-image loop behind a `.tolist()`."""
    seq = x.shape[0]
    q, k, v = attn.qkv(x).reshape(seq, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    q, k = apply_rotary_pos_emb_vision(q, k, *rope)
    if len(set(patches_per_image)) == 1:
        n = len(patches_per_image)
        q, k, v = (t.reshape(n, seq // n, attn.num_heads, -1).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, scale=attn.scaling).transpose(1, 2).reshape(seq, -1)
    else:
        outs = [F.scaled_dot_product_attention(qi.transpose(0, 1), ki.transpose(0, 1), vi.transpose(0, 1),
                                               scale=attn.scaling).transpose(0, 1).reshape(qi.shape[0], -1)
                for qi, ki, vi in zip(*(t.split(patches_per_image) for t in (q, k, v)))]
        out = torch.cat(outs)
    return attn.proj(out)


def _vision_block(block, hidden: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                  patches_per_image: list[int]) -> torch.Tensor:
    hidden = hidden + _vision_attention(block.attn, block.norm1(hidden), rope, patches_per_image)
    return hidden + block.mlp(block.norm2(hidden))


def _text_layer(layer, hidden: torch.Tensor, plan: PromptPlan) -> torch.Tensor:
    return layer(hidden, attention_mask=plan.causal_mask, position_ids=plan.text_position_ids,
                 past_key_values=None, position_embeddings=plan.rope)


def vlm_hidden_stack(backbone: Qwen3VLForConditionalGeneration, plan: PromptPlan, pixel_values: torch.Tensor,
                     layers: list[int], compile_modules: bool = False) -> torch.Tensor:
    """(patches, C*T*P*P) pixels -> (1, len(layers), L, D), the stack `backbone.hidden_state_stack` returns."""
    model = backbone.model
    visual, lm = model.visual, model.language_model
    vision_block = compiled(_vision_block) if compile_modules else _vision_block
    text_layer = compiled(_text_layer) if compile_modules else _text_layer
    hidden = visual.patch_embed(pixel_values.to(backbone.dtype))
    index, weight = plan.vision_interpolation   # the learned position table resampled to these grids
    hidden = hidden + (visual.pos_embed(index) * weight[:, :, None]).sum(1).to(hidden.dtype)
    deepstack = []
    for index, block in enumerate(visual.blocks):
        hidden = vision_block(block, hidden, plan.vision_rope, plan.patches_per_image)
        if index in visual.deepstack_visual_indexes:
            merger = visual.deepstack_merger_list[visual.deepstack_visual_indexes.index(index)]
            deepstack.append(merger(hidden))
    # Pads get zero embeddings: finite through every layer (a NaN there would reach real tokens as 0 * NaN).
    text = model.get_input_embeddings()(plan.input_ids) * plan.lang_mask[..., None]
    hidden = text.index_copy(1, plan.image_index, visual.merger(hidden).to(text.dtype).unsqueeze(0))
    # hidden_states[0] = embeddings, [i] = output of decoder layer i-1 (before DeepStack), and the last one is the
    # final norm of the last layer's output (after DeepStack): as the library's output_hidden_states. Layers past
    # the last one read are not run (a policy loaded with its full VLM for the depth expert).
    last_needed = max(layers)
    states = [hidden]
    for index, layer in enumerate(lm.layers[:last_needed]):
        hidden = text_layer(layer, hidden, plan)
        states.append(hidden)
        if index < len(deepstack):   # DeepStack: visual features added to the image tokens of the first layers
            hidden = hidden.index_add(1, plan.image_index, deepstack[index].unsqueeze(0).to(hidden.dtype))
    if last_needed == len(lm.layers):
        states[-1] = lm.norm(hidden)
    return torch.stack([states[i] for i in layers], dim=1)


class CudaGraphCallable:
    """`fn(*tensors) -> tensor` captured once as a CUDA graph; calls copy their inputs into the captured ones
    and replay it. The returned tensor is the graph's own output buffer: read it before the next call."""

    def __init__(self, fn: Callable[..., torch.Tensor], example_inputs: Sequence[torch.Tensor],
                 pool=None, warmup: int = 2):
        self.inputs = [x.clone() for x in example_inputs]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):   # lazy inits (cuBLAS handles, autotuning) must happen outside the capture
            for _ in range(warmup):
                fn(*self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: a ROS callback thread touching CUDA meanwhile must not break the inference thread's capture
        with torch.cuda.graph(self.graph, pool=pool, capture_error_mode="thread_local"):
            self.output = fn(*self.inputs)

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        for captured, value in zip(self.inputs, inputs, strict=True):
            if captured.shape != value.shape or captured.dtype != value.dtype:   # copy_ would broadcast or cast
                raise ValueError(f"graph input {tuple(value.shape)} {value.dtype} != captured "
                                 f"{tuple(captured.shape)} {captured.dtype}")
            if captured.data_ptr() != value.data_ptr():
                captured.copy_(value)
        self.graph.replay()
        return self.output


class ChunkProgram:
    """The per-chunk work for one prompt shape (`PromptPlan.shape_key`): pixels -> VLM stack -> sampled
    (normalised) actions. A prompt's own tensors are inputs, so one program, and its CUDA graphs, serves every
    instruction of that shape. `use_cuda_graph` captures each of the two stages on its first call (two eager
    warm-ups, then the capture: ~0.2 s on an H100) and replays them after."""

    def __init__(self, policy, plan: PromptPlan, num_steps: int, use_cuda_graph: bool, compile_modules: bool = False,
                 capture_errors: dict[str, str] | None = None):
        # The modules, not the policy: the policy caches programs, and a cycle would keep GPU weights and graph
        # pools alive after the policy is dropped (until a garbage collection).
        self.backbone, self.action_expert = policy.backbone, policy.action_expert
        self.image_processor, self.layers = policy.processor.image_processor, list(policy.config.layers_per_block)
        self.device, self.use_cuda_graph = policy.device, use_cuda_graph
        self.shape_plan = plan                     # its shape-wide fields; per-prompt ones come with each call
        self.compile_modules = compile_modules     # experimental: VLM layers and RDT blocks through torch.compile
        self._times = euler_times(num_steps, self.device)   # uploaded here: no host copies inside a capture
        self._vlm: Callable | None = None
        self._sampler: Callable | None = None
        # stage -> why it runs eagerly although graphs were asked for (the policy shares one dict over programs)
        self.capture_errors: dict[str, str] = {} if capture_errors is None else capture_errors

    def _vlm_eager(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, lang_mask: torch.Tensor,
                   image_index: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        plan = replace(self.shape_plan, input_ids=input_ids, lang_mask=lang_mask, image_index=image_index,
                       rope=(cos, sin))
        return vlm_hidden_stack(self.backbone, plan, pixel_values, self.layers, self.compile_modules)

    def _sampler_eager(self, stack: torch.Tensor, state: torch.Tensor, noise: torch.Tensor,
                       lang_mask: torch.Tensor) -> torch.Tensor:
        return self.action_expert.integrate(noise, stack, state, lang_mask, self._times,
                                            compile_blocks=self.compile_modules)

    def vlm(self, plan: PromptPlan, pixel_values: torch.Tensor) -> torch.Tensor:
        if plan.shape_key != self.shape_plan.shape_key:
            raise ValueError(f"prompt shape {plan.shape_key} != this program's {self.shape_plan.shape_key}")
        for name in ("text_position_ids", "causal_mask"):   # shape-wide by construction: taken from the first plan
            mine, first = getattr(plan, name), getattr(self.shape_plan, name)
            if (mine is None) != (first is None) or (mine is not None and not torch.equal(mine, first)):
                raise ValueError(f"prompt {plan.key[0]!r}: {name} differs from its shape's first prompt")
        inputs = [pixel_values, plan.input_ids, plan.lang_mask, plan.image_index, *plan.rope]
        if self._vlm is None:
            self._vlm = self._runner("VLM", self._vlm_eager, inputs)
        return self._vlm(*inputs)

    def sample(self, plan: PromptPlan, stack: torch.Tensor, state: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        inputs = [stack, state, noise, plan.lang_mask]
        if self._sampler is None:
            self._sampler = self._runner("sampler", self._sampler_eager, inputs)
        return self._sampler(*inputs)

    def _runner(self, stage: str, eager: Callable[..., torch.Tensor], inputs: list[torch.Tensor]) -> Callable:
        if not self.use_cuda_graph:
            return eager
        try:
            return CudaGraphCallable(eager, inputs)
        except RuntimeError as exc:   # e.g. a library op that synchronises the host: slower, still correct
            self.capture_errors[stage] = f"{type(exc).__name__}: {exc}"
            log.warning("CUDA graph capture of the %s failed, running it eagerly: %s", stage, exc)
            return eager

    def pixel_values(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Normalised patches on the device (`image_processing.device_pixel_values`)."""
        return device_pixel_values(self.image_processor, images, self.device)[0]
