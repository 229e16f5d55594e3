"""Tiny GEM-VLA configurations built entirely in code (no downloads): for tests, benchmarks and the demo.

`write_tiny_backbone` writes a real Qwen3-VL folder (in-code byte-level BPE tokenizer, PIL image processor,
chat template, random weights) so the production `from_pretrained` path is what gets exercised.
"""
from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
from transformers import Qwen2Tokenizer, Qwen3VLConfig, Qwen3VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from gem_ros.core.policy.backbone import ImageOnlyQwen3VLProcessor
from gem_ros.core.policy.config import CameraSpec, GemVLAConfig, IOSchema, RDTConfig

QWEN_SPECIAL_TOKENS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                       "<|image_pad|>", "<|video_pad|>", "<|endoftext|>"]

# Qwen-style template: the same structure as the real Qwen3-VL one for image + text user turns.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "pick up the red cube", "pick up the green cube", "pick up the blue cube", "put the cube in the tray",
    "open the gripper", "close the gripper", "move the arm to the left", "stack the blocks on the table",
]


def tiny_tokenizer(vocab_size: int = 400) -> Qwen2Tokenizer:
    """Byte-level BPE trained on a few robot instructions; byte fallback makes it handle any text."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    bpe.train_from_iterator(CORPUS, trainer=trainer)
    model = bpe.model
    vocab = bpe.get_vocab()
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in _merges(model)]
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, eos_token="<|im_end|>",
                               pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": QWEN_SPECIAL_TOKENS})
    return tokenizer


def _merges(bpe_model) -> list:
    import json

    return json.loads(bpe_model.__getstate__())["merges"] if hasattr(bpe_model, "__getstate__") else []


def tiny_image_processor(patch_size: int = 16) -> Qwen2VLImageProcessorPil:
    return Qwen2VLImageProcessorPil(patch_size=patch_size, temporal_patch_size=2, merge_size=2,
                                    size={"shortest_edge": 32 * 32, "longest_edge": 512 * 512},
                                    image_mean=[0.5] * 3, image_std=[0.5] * 3)


def tiny_backbone_config(tokenizer: Qwen2Tokenizer, hidden: int = 64, text_layers: int = 3,
                         patch_size: int = 16) -> Qwen3VLConfig:
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    heads = 4
    head_dim = hidden // heads
    quarter = head_dim // 4   # mrope sections must sum to head_dim / 2
    return Qwen3VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=text_layers, num_attention_heads=heads, num_key_value_heads=2,
                         head_dim=head_dim, max_position_embeddings=4096, tie_word_embeddings=True,
                         rope_parameters=dict(rope_type="default", rope_theta=5e6,
                                              mrope_section=[quarter, quarter // 2, quarter - quarter // 2],
                                              mrope_interleaved=True)),
        vision_config=dict(depth=2, hidden_size=hidden, intermediate_size=2 * hidden, num_heads=heads,
                           patch_size=patch_size, spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=hidden,
                           num_position_embeddings=256, deepstack_visual_indexes=[0]),
        tie_word_embeddings=True, **ids)


def sincos_grid_positions(side: int, dim: int, base: float = 100.0) -> torch.Tensor:
    """(side * side, dim) row-major 2D sin-cos table: first half encodes the row, second half the column.

    Base 100 (not MAE's 10000) keeps every frequency useful on a 16-cell grid; the lowest ones are nearly linear
    in the position, so a linear read-out recovers where a patch is.
    """
    quarter = dim // 4
    omega = 1.0 / base ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    cells = torch.arange(side, dtype=torch.float64)
    axis = torch.cat([torch.sin(cells[:, None] * omega), torch.cos(cells[:, None] * omega)], dim=1)   # (side, dim/2)
    rows = axis[:, None, :].expand(side, side, -1)
    cols = axis[None, :, :].expand(side, side, -1)
    return torch.cat([rows, cols], dim=-1).reshape(side * side, dim).float()


def write_tiny_backbone(path: Path, hidden: int = 64, text_layers: int = 3, seed: int = 0,
                        patch_size: int = 16) -> Path:
    """Write a complete tiny Qwen3-VL folder loadable by `backbone.load_backbone` / `load_processor`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(tiny_backbone_config(tokenizer, hidden, text_layers, patch_size)).eval()
    # A from-scratch ViT spends many epochs learning where a patch is (its learned position table starts as
    # std-0.02 noise under much larger patch features). Start the tiny one from a 2D sin-cos table instead, so a
    # cube's image position is readable from its tokens from step 0; the table stays trainable.
    table = model.model.visual.pos_embed.weight
    side = int(round(table.shape[0] ** 0.5))
    with torch.no_grad():
        table.copy_(sincos_grid_positions(side, table.shape[1]))
    model.save_pretrained(str(path))
    processor = ImageOnlyQwen3VLProcessor(image_processor=tiny_image_processor(patch_size), tokenizer=tokenizer,
                                          chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(str(path))
    (path / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    return path


def tiny_policy_config(cameras: tuple[str, ...] = ("scene", "wrist"), image_size: int = 64, state_dim: int = 9,
                       action_dim: int = 9, chunk_len: int = 8, vlm_hidden: int = 64, rdt_depth: int = 2,
                       selected_layers: tuple[int, ...] = (1, 2), depth_expert: dict | None = None,
                       **io_overrides) -> GemVLAConfig:
    io = IOSchema(cameras=[CameraSpec(name, image_size, image_size) for name in cameras], state_dim=state_dim,
                  action_dim=action_dim, chunk_len=chunk_len, **io_overrides)
    rdt = RDTConfig(hidden_size=32, depth=rdt_depth, num_heads=4, num_kv_heads=2, num_register_tokens=2,
                    ffn_multiple_of=16, timestep_freq_dim=32, cond_hidden_size=vlm_hidden)
    return GemVLAConfig(io=io, rdt=rdt, selected_layers=list(selected_layers), depth_expert=depth_expert)
