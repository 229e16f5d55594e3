"""GEM-VLA: Qwen3-VL hidden layers condition an RDT flow-matching action expert (+ optional depth expert).

One class serves training (`forward -> (loss, logs)`) and deployment (`predict_action_chunk`). The VLM runs
once per chunk; the action expert runs `num_inference_steps` Euler steps (1 for a distilled generator).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from gem_ros.core.lru import LRUCache
from gem_ros.core.policy import backbone as bb
from gem_ros.core.policy import checkpoint as ckpt
from gem_ros.core.policy.action_expert import ActionExpert
from gem_ros.core.policy.config import GemVLAConfig, IOSchema
from gem_ros.core.policy.normalizer import MinMaxNormalizer, load_normalizers, save_normalizers
from gem_ros.core.policy.observation import Observation, validate_observation
from gem_ros.core.policy.static_inference import INFERENCE_MODES, ChunkProgram, PromptPlan, build_prompt_plan


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 + SDPA on CUDA (as trained); float32 on CPU, where bf16 is not faster on every chip."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


@dataclass
class TrainingBatch:
    images: list[list[np.ndarray]]          # [B][camera] (H, W, 3) uint8, cameras in schema order
    instructions: list[str]
    state: torch.Tensor                     # (B, state_dim) raw
    actions: torch.Tensor                   # (B, chunk_len, action_dim) raw (un-normalized)
    depth: torch.Tensor | None = None       # (B, cameras, 3, H, W) in [-1, 1], targets for the depth expert
    depth_valid: torch.Tensor | None = None  # (B, cameras) bool
    # The named object's table position (B, 2) m and whether a sample has one (B,) bool: targets of a training-only
    # auxiliary loss (gem_train.grounding); None where the episodes do not record it.
    target_xy: torch.Tensor | None = None
    target_valid: torch.Tensor | None = None


class GemVLAPolicy(nn.Module):
    def __init__(self, config: GemVLAConfig, backbone: nn.Module, processor, action_normalizer: MinMaxNormalizer,
                 state_normalizer: MinMaxNormalizer | None = None):
        super().__init__()
        # Inference caches: prompt plans per (instruction, image sizes), and chunk programs (with their CUDA graphs)
        # per prompt shape (padded length, image sizes); see static_inference.
        self._plans: LRUCache[PromptPlan] = LRUCache(32)         # small: token ids and rotary of one prompt
        self._programs: LRUCache[ChunkProgram] = LRUCache(4)     # each holds two CUDA graphs' memory pools
        self.register_load_state_dict_post_hook(lambda module, incompatible: module.clear_inference_caches())
        io = config.io
        if action_normalizer.dim != io.action_dim:
            raise ValueError(f"action normalizer has {action_normalizer.dim} channels, action_dim is {io.action_dim}")
        if io.normalize_state and (state_normalizer is None or state_normalizer.dim != io.state_dim):
            raise ValueError("io.normalize_state is set but no state normalizer of state_dim channels was given")
        vlm_hidden = backbone.config.text_config.hidden_size
        if vlm_hidden != config.rdt.cond_hidden_size:
            raise ValueError(f"rdt.cond_hidden_size {config.rdt.cond_hidden_size} != backbone hidden size {vlm_hidden}")
        self.config, self.backbone, self.processor = config, backbone, processor
        self._prompt_builder = bb.PromptBuilder(processor, instruction_first=config.prompt_order == "instruction_first")
        self.action_normalizer, self.state_normalizer = action_normalizer, state_normalizer
        self.action_expert = ActionExpert(config.rdt, io.action_dim, io.state_dim, io.chunk_len)
        self.depth_expert = None
        if config.depth_expert is not None:
            from gem_ros.core.policy.depth_expert import DepthExpert, DepthExpertConfig

            # The image-span delimiters are the backbone's token ids, whatever the stored config says; written back
            # in today's form, so an older config.json is migrated when the policy is saved.
            ids = {key: getattr(backbone.config, key) for key in ("vision_start_token_id", "vision_end_token_id")}
            depth_config = DepthExpertConfig.from_dict({**config.depth_expert, **ids})
            config.depth_expert = depth_config.to_dict()
            self.depth_expert = DepthExpert(depth_config)
        self.truncated = False
        self.last_timings: dict[str, float] = {}
        self._rng: torch.Generator | None = None
        self.inference_mode = "auto"      # see resolved_inference_mode
        self.prompt_pad_to = 32           # prompt lengths are padded to a multiple of this (one program per bucket)
        self.capture_errors: dict[str, str] = {}   # stage -> why CUDA graph capture failed (it then runs eagerly)
        self.compile_modules = False      # experimental: torch.compile the VLM layers and RDT blocks (static modes)

    # ----------------------------------------------------------------------------------------- construction
    @classmethod
    def build(cls, config: GemVLAConfig, backbone_path: Path, action_normalizer: MinMaxNormalizer,
              state_normalizer: MinMaxNormalizer | None = None, device=None, dtype=None) -> GemVLAPolicy:
        """A new policy on a pretrained backbone folder (GEM-2B or Qwen3-VL) with a freshly initialised RDT. A depth
        expert starts from the folder's GEM-2B depth weights, or from random ones only if its config says
        `init: random`."""
        device = resolve_device(device)
        dtype = dtype or default_dtype(device)
        backbone = bb.load_backbone(Path(backbone_path), dtype, device)
        processor = bb.load_processor(Path(backbone_path), config.max_pixels_per_image,
                                      config.image_pipeline.min_pixels)
        policy = cls(config, backbone, processor, action_normalizer, state_normalizer)
        if policy.depth_expert is not None and policy.depth_expert.config.init == "pretrained":
            # GEM-2B layout: its depth generator initialises ours, completely, or the build is refused.
            policy.depth_expert.load_pretrained(ckpt.depth_keys_in_backbone(Path(backbone_path)),
                                                f"backbone folder {backbone_path}")
        return policy.to(device=device, dtype=dtype)

    @classmethod
    def from_pretrained(cls, path, device=None, dtype=None, expected_io: IOSchema | None = None,
                        for_training: bool = False, keep_full_vlm: bool = False) -> GemVLAPolicy:
        """Load a checkpoint folder. `expected_io` (the robot's schema) must match the checkpoint's.

        For inference the VLM layers above the last one the action expert reads are dropped, unless
        `keep_full_vlm` (the depth expert reads the last layer: `predict_depth` needs them)."""
        path = Path(path)
        config = ckpt.read_config(path)
        ckpt.check_checkpoint_dir(path, config)
        if expected_io is not None:
            problems = config.io.mismatches(expected_io)
            if problems:
                raise ValueError(f"checkpoint {path} does not fit this robot: " + "; ".join(problems))
        normalizers = load_normalizers(path / ckpt.NORMALIZER_FILE)
        if "action" not in normalizers:
            raise ValueError(f"{path / ckpt.NORMALIZER_FILE} has no 'action' statistics")
        device = resolve_device(device)
        dtype = dtype or default_dtype(device)
        backbone_dir = path / config.backbone_dir
        backbone = bb.load_backbone(backbone_dir, dtype, device)
        processor = bb.load_processor(backbone_dir, config.max_pixels_per_image)
        policy = cls(config, backbone, processor, normalizers["action"], normalizers.get("state"))
        ckpt.load_checked(policy.action_expert, ckpt.read_tensors(path / ckpt.MODEL_FILE), str(path / ckpt.MODEL_FILE))
        if policy.depth_expert is not None:
            ckpt.load_checked(policy.depth_expert, ckpt.read_tensors(path / ckpt.DEPTH_FILE), str(path / ckpt.DEPTH_FILE))
        policy = policy.to(device=device, dtype=dtype)
        if not for_training:
            policy.eval()
            if not keep_full_vlm:
                policy.truncated = bb.truncate_text_layers(policy.backbone, max(config.layers_per_block) + 1)
        return policy

    def save_pretrained(self, path) -> Path:
        if self.truncated:
            raise ValueError("this policy was loaded for inference with truncated VLM layers; "
                             "load it with for_training=True to save it")
        path = Path(path)
        with ckpt.atomic_directory(path) as scratch:
            ckpt.write_config(scratch, self.config)
            save_file(_cpu_contiguous(self.action_expert.state_dict()), str(scratch / ckpt.MODEL_FILE))
            normalizers = {"action": self.action_normalizer}
            if self.state_normalizer is not None:
                normalizers["state"] = self.state_normalizer
            save_normalizers(scratch / ckpt.NORMALIZER_FILE, normalizers)
            if self.depth_expert is not None:
                save_file(_cpu_contiguous(self.depth_expert.state_dict()), str(scratch / ckpt.DEPTH_FILE))
            backbone_dir = scratch / self.config.backbone_dir
            self.backbone.save_pretrained(str(backbone_dir))
            self.processor.save_pretrained(str(backbone_dir))
            (backbone_dir / "chat_template.jinja").write_text(self.processor.chat_template)
        return path

    # ----------------------------------------------------------------------------------------------- shared
    @property
    def device(self) -> torch.device:
        return next(self.action_expert.parameters()).device

    def build_prompts(self, images: list[list[np.ndarray]], instructions: list[str]) -> bb.PromptBatch:
        """The VLM inputs of a batch on the policy's device (`backbone.PromptBuilder`: cached per instruction)."""
        return self._prompt_builder(images, instructions, self.device)

    def _encode(self, images: list[list[np.ndarray]], instructions: list[str], need_last: bool = False):
        prompt = self.build_prompts(images, instructions)
        stack, last = bb.hidden_state_stack(self.backbone, prompt, self.config.layers_per_block, need_last)
        return prompt, stack, last

    def _state_input(self, state: torch.Tensor) -> torch.Tensor:
        state = state.to(self.device, torch.float32)
        if not self.config.io.state_input:
            return torch.zeros_like(state)
        return self.state_normalizer.normalize(state) if self.config.io.normalize_state else state

    # --------------------------------------------------------------------------------------------- training
    def forward(self, batch: TrainingBatch, generator: torch.Generator | None = None,
                auxiliary: Callable[[torch.Tensor, TrainingBatch], tuple[torch.Tensor, dict]] | None = None):
        """Returns (total loss, logs). Total = action flow-matching loss + depth_loss_weight * depth loss, plus
        `auxiliary(rdt tokens (B, chunk + registers, D), batch) -> (weighted loss, logs)` if given: a training-only
        term on what the action expert read (gem_train.grounding.GroundingObjective)."""
        need_depth = self.depth_expert is not None and batch.depth is not None
        prompt, stack, last = self._encode(batch.images, batch.instructions, need_last=need_depth)
        actions = self.action_normalizer.normalize(batch.actions.to(self.device, torch.float32))
        action_loss = self.action_expert.loss(actions.to(stack.dtype), stack, self._state_input(batch.state),
                                              prompt.attention_mask, generator, return_tokens=auxiliary is not None)
        action_loss, tokens = action_loss if auxiliary is not None else (action_loss, None)
        logs = {"loss/action": float(action_loss.detach())}
        total = action_loss
        if auxiliary is not None:
            extra, extra_logs = auxiliary(tokens, batch)
            total = total + extra
            logs.update(extra_logs)
        if need_depth:
            depth_loss = self.depth_expert.loss(last, prompt.input_ids, batch.depth.to(self.device, last.dtype),
                                                batch.depth_valid, generator=generator)
            total = total + self.config.depth_loss_weight * depth_loss
            logs["loss/depth"] = float(depth_loss.detach())
        logs["loss/total"] = float(total.detach())
        return total, logs

    # ------------------------------------------------------------------------------------------- inference
    def reset(self, seed: int = 0) -> None:
        """Restart the noise stream: the same seed and observations give the same chunks."""
        self._rng = torch.Generator(device=self.device).manual_seed(seed)

    def resolved_inference_mode(self) -> str:
        """`inference_mode`: "hf" (the library's forward each chunk), "static" (`static_inference`, eager),
        "cuda_graph" (static, replayed as CUDA graphs) or "auto" (cuda_graph on CUDA, else static)."""
        mode = self.inference_mode
        if mode not in INFERENCE_MODES:
            raise ValueError(f"inference_mode {mode!r} is not one of {INFERENCE_MODES}")
        if mode == "auto":
            return "cuda_graph" if self.device.type == "cuda" else "static"
        if mode == "cuda_graph" and self.device.type != "cuda":
            raise ValueError(f"inference_mode 'cuda_graph' needs a CUDA device; the policy is on {self.device}")
        return mode

    def _chunk_program(self, images: list[np.ndarray], instruction: str, steps: int,
                       graphed: bool) -> tuple[PromptPlan, ChunkProgram]:
        plan = self._plans.get((bb.prompt_key(images, instruction), self.prompt_pad_to), lambda: build_prompt_plan(
            self.backbone, self._prompt_builder, images, instruction, self.device, pad_to=self.prompt_pad_to))
        program = self._programs.get((plan.shape_key, steps, graphed, self.compile_modules), lambda: ChunkProgram(
            self, plan, steps, graphed, compile_modules=self.compile_modules, capture_errors=self.capture_errors))
        return plan, program

    def _apply(self, fn, *args, **kwargs):
        self.clear_inference_caches()   # parameters move: graphs would read the old memory
        return super()._apply(fn, *args, **kwargs)

    def clear_inference_caches(self) -> None:
        """Drop prompt plans and chunk programs (CUDA graphs). Graphs read parameters by address: call this after
        replacing parameter tensors (in-place updates, e.g. an optimizer step, need nothing); `.to()` and
        `load_state_dict` on the policy itself do it."""
        self._plans.clear()
        self._programs.clear()

    @torch.no_grad()
    def predict_action_chunk(self, observation: Observation, seed: int | None = None) -> np.ndarray:
        """(chunk_len, action_dim) float32 un-normalized actions. Per-stage latency lands in `last_timings` (ms).

        The first chunk of a new instruction (or camera size) builds its prompt plan and, with CUDA graphs,
        captures them: slower once, see `static_inference`."""
        io = self.config.io
        mode = self.resolved_inference_mode()
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        t0 = time.perf_counter()
        validate_observation(observation, io)
        images = [observation.images[name] for name in io.camera_names]
        state = self._state_input(torch.as_tensor(np.asarray(observation.state, np.float32)).unsqueeze(0))
        if seed is not None:
            rng = torch.Generator(device=self.device).manual_seed(seed)
        else:
            if self._rng is None:
                self.reset()
            rng = self._rng
        steps = 1 if self.config.sampler == "one_step" else self.config.num_inference_steps
        noise = self.config.noise_scale * torch.randn((1, io.chunk_len, io.action_dim), device=self.device,
                                                      generator=rng, dtype=torch.float32)
        if mode == "hf":
            prompt = bb.build_prompts(self.processor, [images], [observation.instruction], self.device,
                                      self._prompt_builder.instruction_first)
            sync()
            t1 = time.perf_counter()
            stack, _ = bb.hidden_state_stack(self.backbone, prompt, self.config.layers_per_block)
            sync()
            t2 = time.perf_counter()
            normalized = self.action_expert.sample(stack, state, prompt.attention_mask, steps, noise=noise)
        else:
            plan, program = self._chunk_program(images, observation.instruction, steps, mode == "cuda_graph")
            pixel_values = program.pixel_values(images)
            sync()
            t1 = time.perf_counter()
            stack = program.vlm(plan, pixel_values)
            sync()
            t2 = time.perf_counter()
            normalized = program.sample(plan, stack, state, noise)
        sync()
        t3 = time.perf_counter()
        chunk = self.action_normalizer.unnormalize(normalized[0].float()).cpu().numpy().astype(np.float32)
        t4 = time.perf_counter()
        if not np.all(np.isfinite(chunk)):
            raise ValueError("the policy produced a non-finite action chunk")
        self.last_timings = {"preprocess": (t1 - t0) * 1e3, "vlm": (t2 - t1) * 1e3,
                             "action_expert": (t3 - t2) * 1e3, "postprocess": (t4 - t3) * 1e3,
                             "total": (t4 - t0) * 1e3}
        return chunk

    @torch.no_grad()
    def predict_depth(self, observation: Observation, num_steps: int = 30, seed: int = 0) -> np.ndarray:
        """Debug view: (cameras, H, W, 3) predicted depth-colormap images in [0, 1] from the depth expert."""
        if self.depth_expert is None:
            raise ValueError("this checkpoint has no depth expert")
        if self.truncated:
            raise ValueError("depth needs the full VLM; load the policy with keep_full_vlm=True")
        validate_observation(observation, self.config.io)
        images = [[observation.images[name] for name in self.config.io.camera_names]]
        prompt, _, last = self._encode(images, [observation.instruction], need_last=True)
        rng = torch.Generator(device=self.device).manual_seed(seed)
        out = self.depth_expert.generate(last, prompt.input_ids, num_steps=num_steps, generator=rng)
        return ((out.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu().numpy()


def _cpu_contiguous(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
