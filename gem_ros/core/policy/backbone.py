"""The Qwen3-VL backbone (GEM-2B or stock Qwen3-VL): loading, prompt format, hidden-state stack.

Never `AutoProcessor` for Qwen3-VL: it needs torchvision for the video processor even for the real
checkpoint. We assemble an image-only processor from `AutoImageProcessor` + `AutoTokenizer`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoImageProcessor, AutoTokenizer, Qwen3VLForConditionalGeneration, Qwen3VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from gem_ros.core.lru import LRUCache
from gem_ros.core.policy import image_processing
from gem_ros.core.policy.checkpoint import read_json_object, refuse_pickles, safetensors_header
from gem_ros.core.policy.config import GemVLAConfig, ImagePipelineConfig
from gem_ros.core.policy.image_processing import BatchedQwen2VLImageProcessor

REQUIRED_BACKBONE_FILES = ("config.json", "tokenizer_config.json")


class ImageOnlyQwen3VLProcessor(Qwen3VLProcessor):
    """Qwen3VLProcessor without the video sub-processor (which requires torchvision).

    ProcessorMixin reads its sub-processors from the `__init__` signature, so leaving `video_processor`
    out of it is what drops the video processor."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


def load_processor(path: Path, max_pixels: int | None = None,
                   min_pixels: int | None = None) -> ImageOnlyQwen3VLProcessor:
    refuse_pickles(path)
    try:
        image_processor = AutoImageProcessor.from_pretrained(str(path))
        if type(image_processor) is Qwen2VLImageProcessorPil:   # no torchvision: the batched variant, same output
            image_processor = BatchedQwen2VLImageProcessor.from_pretrained(str(path))
        tokenizer = AutoTokenizer.from_pretrained(str(path), padding_side="left")
    except Exception as error:  # noqa: BLE001 - transformers and tokenizers raise many types; name the folder
        raise ValueError(f"backbone folder {path}: the image processor or tokenizer does not load "
                         f"({type(error).__name__}: {error})") from error
    set_pixel_bounds(image_processor, min_pixels, max_pixels)
    template_file = Path(path) / "chat_template.jinja"
    chat_template = template_file.read_text() if template_file.exists() else tokenizer.chat_template
    if chat_template is None:
        raise ValueError(f"{path}: no chat template (chat_template.jinja or tokenizer_config.json)")
    return ImageOnlyQwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template)


def set_pixel_bounds(image_processor, min_pixels: int | None, max_pixels: int | None) -> None:
    """The processor's smart-resize bounds in pixels (size shortest_edge / longest_edge); None keeps its own."""
    bounds = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    bounds = {key: int(value) for key, value in bounds.items() if value is not None}
    if bounds:
        image_processor.size = {**dict(image_processor.size), **bounds}


def pixel_bounds(image_processor) -> tuple[int | None, int | None]:
    """(min_pixels, max_pixels) the processor resizes within; None where it is sized another way."""
    size = image_processor.size
    get = size.get if isinstance(size, dict) else (lambda key: getattr(size, key, None))
    return get("shortest_edge"), get("longest_edge")


def apply_image_pipeline(processor: ImageOnlyQwen3VLProcessor, pipeline: ImagePipelineConfig) -> None:
    """A new policy's processor takes the pipeline's pixel bounds, and the pipeline records the processor's where it
    names none: the checkpoint then says what the model saw (the processor is saved beside it too)."""
    set_pixel_bounds(processor.image_processor, pipeline.min_pixels, pipeline.max_pixels)
    pipeline.min_pixels, pipeline.max_pixels = pixel_bounds(processor.image_processor)


def check_pixel_bounds(path: Path, config: GemVLAConfig, config_file: Path) -> None:
    """The backbone folder's image processor resizes within the bounds `config_file` records for training (its
    image_pipeline), after the max_pixels_per_image cap serving applies: else serving would see other pixels."""
    from transformers.image_processing_utils import ImageProcessingMixin

    pipeline = config.image_pipeline
    if pipeline.min_pixels is None and pipeline.max_pixels is None:
        return   # not recorded (older checkpoints): the saved processor decides, as before
    try:
        size = ImageProcessingMixin.get_image_processor_dict(str(path))[0].get("size") or {}
    except Exception as error:  # noqa: BLE001 - transformers raises many types; name the folder
        raise ValueError(f"backbone folder {path}: no readable image processor config ({error})") from error
    have = (size.get("shortest_edge"), config.max_pixels_per_image or size.get("longest_edge"))
    for name, recorded, served in zip(("min_pixels", "max_pixels"), (pipeline.min_pixels, pipeline.max_pixels), have):
        if recorded is not None and recorded != served:
            raise ValueError(f"{config_file}: image_pipeline.{name} {recorded} (what training used) != {served}, what "
                             f"the image processor of {path} would use: serving would see other pixels")


def check_backbone_dir(path: Path) -> None:
    """Before transformers opens the folder: no pickles, the files it needs, JSON configs, readable weight shards."""
    if not path.is_dir():
        raise ValueError(f"backbone folder {path} does not exist")
    refuse_pickles(path)
    missing = [name for name in REQUIRED_BACKBONE_FILES if not (path / name).exists()]
    shards = sorted(path.glob("*.safetensors"))
    if not shards and not (path / "model.safetensors.index.json").exists():
        missing.append("*.safetensors")
    if missing:
        raise ValueError(f"backbone folder {path} is missing {missing}")
    for name in ("config.json", "tokenizer_config.json"):
        read_json_object(path / name)
    for shard in shards:
        safetensors_header(shard)


def check_backbone_fits(path: Path, config: GemVLAConfig, config_file: Path) -> None:
    """`check_backbone_dir`, and the policy `config` (read from `config_file`) against the VLM it describes: every
    selected layer is one of its hidden states, and the action expert reads its width."""
    check_backbone_dir(path)
    backbone_file = path / "config.json"
    text = read_json_object(backbone_file).get("text_config")
    layers, width = (text.get("num_hidden_layers"), text.get("hidden_size")) if isinstance(text, dict) else (None,) * 2
    for name, value in (("num_hidden_layers", layers), ("hidden_size", width)):
        if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            raise ValueError(f"{backbone_file}: text_config.{name} must be a positive integer, got {value!r}")
    beyond = sorted({i for i in config.selected_layers if i > layers})
    if beyond:   # hidden state 0 is the embeddings, i the output of decoder layer i
        raise ValueError(f"{config_file}: selected_layers {beyond} are beyond the backbone's {layers + 1} hidden "
                         f"states (0..{layers}; {backbone_file}: text_config.num_hidden_layers = {layers})")
    if width != config.rdt.cond_hidden_size:
        raise ValueError(f"{config_file}: rdt.cond_hidden_size {config.rdt.cond_hidden_size} != the backbone's "
                         f"width ({backbone_file}: text_config.hidden_size = {width})")
    check_pixel_bounds(path, config, config_file)


def load_backbone(path: Path, dtype: torch.dtype, device: torch.device) -> Qwen3VLForConditionalGeneration:
    """Load the VLM with HF `from_pretrained`, safetensors only. GEM-2B's extra `sana.*`/`vae.*`/
    `diffusion_connector.*` keys are not part of this class and are ignored here; `depth_keys_in` routes them to
    the depth expert."""
    check_backbone_dir(path)
    attn = "sdpa"
    try:
        model = Qwen3VLForConditionalGeneration.from_pretrained(str(path), dtype=dtype, attn_implementation=attn,
                                                                use_safetensors=True)
    except MemoryError:
        raise
    except Exception as error:  # noqa: BLE001 - transformers raises many types; name the folder
        raise ValueError(f"backbone folder {path} does not load ({type(error).__name__}: {error})") from error
    patch_embed = model.model.visual.patch_embed
    patch_embed.proj = PatchProjection(patch_embed.proj)
    return model.to(device)


class PatchProjection(nn.Module):
    """Qwen3-VL's patch-embedding Conv3d as the matrix product it is (its kernel is its stride: one whole patch).

    On a CPU, conv3d and its weight gradient cost ~35 ms of an 80 ms tiny-model training step (2,048 patches of
    16 x 16 x 2 x 3); the product costs a few ms. Same parameters under the same names and shapes, so checkpoints
    are unchanged; outputs agree to float rounding (test_policy.py)."""

    def __init__(self, conv: nn.Conv3d):
        super().__init__()
        if conv.kernel_size != conv.stride or any(conv.padding) or conv.groups != 1:
            raise ValueError(f"patch embedding is not one patch per kernel: {conv}")
        self.weight, self.bias = conv.weight, conv.bias

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """(N, C, T, P, P) -> (N, hidden, 1, 1, 1), as the Conv3d returns it."""
        flat = F.linear(patches.reshape(patches.shape[0], -1), self.weight.reshape(self.weight.shape[0], -1),
                        self.bias)
        return flat[:, :, None, None, None]


def truncate_text_layers(model: Qwen3VLForConditionalGeneration, keep: int) -> bool:
    """Drop decoder layers the action expert never reads (inference only); True if any were dropped.

    Keeping max(selected)+1 layers leaves hidden_states[0..max(selected)] bit-identical: HF replaces only the
    *last* entry by the final-norm output, and that entry is then one we do not read."""
    layers = model.model.language_model.layers
    if keep < len(layers):
        model.model.language_model.layers = layers[:keep]
        model.config.text_config.num_hidden_layers = keep
        return True
    return False


@dataclass
class PromptBatch:
    inputs: dict[str, torch.Tensor]   # processor output: input_ids, attention_mask, pixel_values, image_grid_thw ...

    @property
    def attention_mask(self) -> torch.Tensor:
        return self.inputs["attention_mask"].bool()

    @property
    def input_ids(self) -> torch.Tensor:
        return self.inputs["input_ids"]


def prompt_key(images, instruction: str) -> tuple:
    """What fixes a sample's tokens: the instruction and the camera image shapes (they set the image tokens)."""
    return (instruction, tuple(tuple(image.shape) for image in images))


def build_prompts(processor: ImageOnlyQwen3VLProcessor, images: list[list[np.ndarray]], instructions: list[str],
                  device: torch.device, instruction_first: bool = False) -> PromptBatch:
    """Training prompt format: one user turn holding each camera image (fixed camera order) then the instruction
    (before the images with `instruction_first`: GemVLAConfig.prompt_order); no generation prompt. `images[b]`
    lists the camera images (H, W, 3 uint8 RGB) of sample b."""
    texts, flat_images = [], []
    for sample_images, instruction in zip(images, instructions):
        content = [{"type": "image"} for _ in sample_images]
        text = {"type": "text", "text": instruction}
        content = [text, *content] if instruction_first else [*content, text]
        messages = [{"role": "user", "content": content}]
        texts.append(processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False))
        flat_images.extend(sample_images)   # (H, W, 3) uint8 arrays: no PIL round trip
    # A batch whose cameras were all dropped (camera_dropout "remove") has no image at all.
    inputs = processor(text=texts, images=flat_images or None, return_tensors="pt", padding=True,
                       input_data_format="channels_last")
    return PromptBatch({k: v.to(device) for k, v in inputs.items() if isinstance(v, torch.Tensor)})


class PromptBuilder:
    """`build_prompts` with each sample's text work (chat template, tokenizer, image-token expansion) done once per
    (instruction, image sizes), and the pixels patched on the target device when the processor would not resize
    them. Training batches repeat a few instructions at fixed camera sizes; the library processor took 15 % of a
    tiny CPU training step and 126 ms per full-size batch of 16 on an H100 (2.6 ms through this). Same tensors as
    `build_prompts` (test_policy.py)."""

    def __init__(self, processor: ImageOnlyQwen3VLProcessor, max_cached: int = 4096, instruction_first: bool = False):
        self.processor, self.instruction_first = processor, instruction_first
        self._samples: LRUCache[dict[str, torch.Tensor]] = LRUCache(max_cached)

    def _tokens(self, images: list[np.ndarray], instruction: str) -> dict[str, torch.Tensor]:
        inputs = build_prompts(self.processor, [images], [instruction], torch.device("cpu"),
                               self.instruction_first).inputs
        return {k: v[0] for k, v in inputs.items() if k in ("input_ids", "attention_mask", "mm_token_type_ids")}

    def __call__(self, images: list[list[np.ndarray]], instructions: list[str], device: torch.device) -> PromptBatch:
        samples = [self._samples.get(prompt_key(sample_images, instruction),
                                     lambda: self._tokens(list(sample_images), instruction))
                   for sample_images, instruction in zip(images, instructions)]
        tokenizer = self.processor.tokenizer
        length, left = max(len(s["input_ids"]) for s in samples), tokenizer.padding_side == "left"
        if tokenizer.pad_token_id is None and any(len(s["input_ids"]) != length for s in samples):
            raise ValueError("the tokenizer has no pad token, so prompts of different lengths cannot be batched")
        fill = {"input_ids": tokenizer.pad_token_id, "attention_mask": 0, "mm_token_type_ids": 0}
        inputs = {key: torch.full((len(samples), length), fill[key], dtype=torch.long) for key in samples[0]}
        for row, sample in enumerate(samples):   # pad as the tokenizer pads (side, id, mask 0)
            n = len(sample["input_ids"])
            cols = slice(length - n, length) if left else slice(0, n)
            for key, values in sample.items():
                inputs[key][row, cols] = values
        flat = [image for sample_images in images for image in sample_images]
        if flat:   # none when every camera of every sample was dropped (camera_dropout "remove")
            pixels, grid = image_processing.device_pixel_values(self.processor.image_processor, flat,
                                                                torch.device(device))
            inputs.update(pixel_values=pixels, image_grid_thw=grid)
        return PromptBatch({k: v.to(device) for k, v in inputs.items()})


def hidden_state_stack(model: Qwen3VLForConditionalGeneration, prompt: PromptBatch, layers: list[int],
                       need_last: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run the VLM once; return (B, len(layers), L, D) stacked hidden states (index 0 = embeddings, i = output of
    decoder layer i-1) and, if asked, the final (post-norm) hidden states for the depth expert."""
    inputs = dict(prompt.inputs)
    pixel_values = inputs.get("pixel_values")
    if pixel_values is not None:
        inputs["pixel_values"] = pixel_values.to(model.dtype)
    # The inner Qwen3VLModel skips the LM head: we only need hidden states.
    out = model.model(**inputs, output_hidden_states=True, use_cache=False, return_dict=True)
    hidden = out.hidden_states
    available = len(hidden)
    bad = [i for i in layers if i >= available]
    if bad:
        raise ValueError(f"selected_layers {bad} exceed the {available} hidden states of the backbone")
    stack = torch.stack([hidden[i] for i in layers], dim=1)
    return stack, (out.last_hidden_state if need_last else None)
