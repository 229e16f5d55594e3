"""Per-stage latency and peak memory of one GEM-VLA action chunk (preprocess, VLM, RDT steps, post-process).

    python bench/policy_latency.py                          # tiny config, CPU
    python bench/policy_latency.py --device cuda --full-size # Qwen3-VL-2B + 1024x14 RDT, 2 x 384^2, 5 steps, bf16

Weights are random (sizes are what matter). Both the full VLM and the inference-truncated VLM (layers past the
last one the RDT reads are dropped) are measured in the same run, so their ratio is on the same machine.
Goal on one H100 at full size: <= 20 ms per chunk. Prints a table; asserts nothing.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gem_ros.core.policy import backbone as bb  # noqa: E402
from gem_ros.core.policy.config import CameraSpec, GemVLAConfig, IOSchema, RDTConfig  # noqa: E402
from gem_ros.core.policy.gem_vla import GemVLAPolicy, default_dtype  # noqa: E402
from gem_ros.core.policy.normalizer import MinMaxNormalizer  # noqa: E402
from gem_ros.core.policy.observation import Observation  # noqa: E402
from gem_ros.core.policy.tiny import (CHAT_TEMPLATE, tiny_backbone_config, tiny_image_processor,  # noqa: E402
                                      tiny_policy_config, tiny_tokenizer, write_tiny_backbone)
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration  # noqa: E402

STAGES = ("preprocess", "vlm", "action_expert", "postprocess", "total")


def qwen3_vl_2b_config(tokenizer) -> Qwen3VLConfig:
    """Published Qwen3-VL-2B sizes (sim_and_models.md §2); special-token ids from our in-code tokenizer."""
    ids = tiny_backbone_config(tokenizer).to_dict()
    return Qwen3VLConfig(
        text_config=dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                         num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=32768,
                         tie_word_embeddings=True, rope_parameters=dict(rope_type="default", rope_theta=5e6,
                                                                        mrope_section=[24, 20, 20],
                                                                        mrope_interleaved=True)),
        vision_config=dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, patch_size=16,
                           spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=2048,
                           num_position_embeddings=2304, deepstack_visual_indexes=[5, 11, 17]),
        tie_word_embeddings=True, image_token_id=ids["image_token_id"], video_token_id=ids["video_token_id"],
        vision_start_token_id=ids["vision_start_token_id"], vision_end_token_id=ids["vision_end_token_id"])


def full_size_policy(device: torch.device, dtype: torch.dtype, image_size: int) -> GemVLAPolicy:
    tokenizer = tiny_tokenizer()
    processor = bb.ImageOnlyQwen3VLProcessor(image_processor=tiny_image_processor(), tokenizer=tokenizer,
                                             chat_template=CHAT_TEMPLATE)
    with torch.device(device):
        backbone = Qwen3VLForConditionalGeneration(qwen3_vl_2b_config(tokenizer)).to(dtype)
    config = GemVLAConfig(io=IOSchema(cameras=[CameraSpec("left_stereo", image_size, image_size),
                                               CameraSpec("right_stereo", image_size, image_size)]),
                          rdt=RDTConfig())
    policy = GemVLAPolicy(config, backbone, processor, MinMaxNormalizer.identity(14))
    return policy.to(device=device, dtype=dtype).eval()


def tiny_policy(device: torch.device, dtype: torch.dtype, image_size: int, workdir: Path) -> GemVLAPolicy:
    torch.manual_seed(0)
    config = tiny_policy_config(image_size=image_size)
    backbone_dir = write_tiny_backbone(workdir / "backbone", text_layers=6)
    return GemVLAPolicy.build(config, backbone_dir, MinMaxNormalizer.identity(config.io.action_dim),
                              device=device, dtype=dtype).eval()


def measure(policy: GemVLAPolicy, runs: int, warmup: int = 3) -> dict[str, list[float]]:
    rng = np.random.default_rng(0)
    io = policy.config.io
    obs = Observation({c.name: rng.integers(0, 256, (c.height, c.width, 3), dtype=np.uint8) for c in io.cameras},
                      rng.normal(size=io.state_dim).astype(np.float32), "pick up the red cube and put it in the tray")
    samples: dict[str, list[float]] = {stage: [] for stage in STAGES}
    for i in range(warmup + runs):
        policy.predict_action_chunk(obs, seed=i)
        if i >= warmup:
            for stage in STAGES:
                samples[stage].append(policy.last_timings[stage])
    return samples


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux: KiB


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--full-size", action="store_true", help="Qwen3-VL-2B + 1024x14 RDT (random weights)")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--image-size", type=int, default=None, help="square camera images (default 384 full, 64 tiny)")
    parser.add_argument("--steps", type=int, default=5, help="Euler steps of the action expert")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = default_dtype(device)
    image_size = args.image_size or (384 if args.full_size else 64)
    torch.set_grad_enabled(False)

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        policy = full_size_policy(device, dtype, image_size) if args.full_size else \
            tiny_policy(device, dtype, image_size, Path(tmp))
    policy.config.num_inference_steps = args.steps
    build_s = time.perf_counter() - t0
    n_vlm = sum(p.numel() for p in policy.backbone.parameters()) / 1e6
    n_rdt = sum(p.numel() for p in policy.action_expert.parameters()) / 1e6

    # Same weights, measured twice in one run: all VLM layers, then only those the RDT reads (+1, see backbone.py).
    results = {"full VLM": measure(policy, args.runs)}
    bb.truncate_text_layers(policy.backbone, max(policy.config.layers_per_block) + 1)
    results["truncated VLM"] = measure(policy, args.runs)
    label = "full-size (Qwen3-VL-2B + RDT 1024x14)" if args.full_size else "tiny"
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(f"\nGEM-VLA chunk latency: {label}, {device} ({gpu}), {dtype}, 2 cameras {image_size}x{image_size}, "
          f"{args.steps} steps, median of {args.runs} runs")
    print(f"params: VLM {n_vlm:.1f} M, action expert {n_rdt:.1f} M; build {build_s:.1f} s; "
          f"peak memory {peak_memory_mb(device):.0f} MiB ({'GPU allocated' if device.type == 'cuda' else 'RSS'})")
    header = f"{'stage (ms)':<16}" + "".join(f"{name:>16}" for name in results) + f"{'ratio':>10}"
    print(header + "\n" + "-" * len(header))
    for stage in STAGES:
        med = [statistics.median(r[stage]) for r in results.values()]
        print(f"{stage:<16}" + "".join(f"{m:>16.2f}" for m in med) + f"{med[1] / med[0]:>10.2f}")
    p95 = [float(np.percentile(r["total"], 95)) for r in results.values()]
    print(f"{'total p95':<16}" + "".join(f"{m:>16.2f}" for m in p95))


if __name__ == "__main__":
    main()
