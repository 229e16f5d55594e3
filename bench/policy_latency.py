"""Per-stage latency and peak memory of one GEM-VLA action chunk (preprocess, VLM, RDT steps, post-process).

    python bench/policy_latency.py                          # tiny config, CPU
    python bench/policy_latency.py --device cuda --full-size # Qwen3-VL-2B + 1024x14 RDT, 2 x 384^2, 5 steps, bf16

Weights are random (sizes are what matter). One run measures, on the same weights: the library's forward over the
full VLM and over the inference-truncated VLM (layers past the last one the RDT reads dropped), then the static-shape
chunk program (`static_inference.py`) eager and, on CUDA, replayed as CUDA graphs; ratios are on the same machine.
Goal on one H100 at full size: <= 20 ms per chunk. Prints a table; asserts nothing.
"""
from __future__ import annotations

import argparse
import textwrap
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
LABEL_WIDTH, COLUMN_WIDTH, RATIO_WIDTH = 22, 19, 8   # the printed table's columns (read back by read_logged_table)


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


def measure(policy: GemVLAPolicy, runs: int, mode: str, label: str, chunks: dict[str, np.ndarray],
            new_instruction_ms: dict[str, float], warmup: int = 3) -> tuple[float, dict[str, list[float]]]:
    """(first chunk ms: prompt plan + CUDA graph capture where used, per-stage samples of the following runs);
    the first chunk (seed 0) lands in `chunks[label]`, the first of another instruction's in `new_instruction_ms`."""
    rng = np.random.default_rng(0)
    io = policy.config.io
    obs = Observation({c.name: rng.integers(0, 256, (c.height, c.width, 3), dtype=np.uint8) for c in io.cameras},
                      rng.normal(size=io.state_dim).astype(np.float32), "pick up the red cube and put it in the tray")
    policy.compile_modules = mode.endswith("+compile")
    policy.inference_mode = mode.removesuffix("+compile")
    policy.clear_inference_caches()
    t0 = time.perf_counter()
    chunks[label] = policy.predict_action_chunk(obs, seed=0)
    first_ms = (time.perf_counter() - t0) * 1e3
    samples: dict[str, list[float]] = {stage: [] for stage in STAGES}
    for i in range(warmup + runs):
        policy.predict_action_chunk(obs, seed=i)
        if i >= warmup:
            for stage in STAGES:
                samples[stage].append(policy.last_timings[stage])
    # A new instruction of the same padded length reuses the program (and its graphs): only its plan is built.
    t0 = time.perf_counter()
    policy.predict_action_chunk(Observation(obs.images, obs.state, "pick up the blue cube and put it in the box"), seed=0)
    new_instruction_ms[label] = (time.perf_counter() - t0) * 1e3
    return first_ms, samples


def profile_static_stages(policy: GemVLAPolicy, top: int = 8) -> None:
    """Kernel counts and the costliest kernels of one VLM pass and one sampler call of the last mode's static program
    (compiled with --compile), run without its graph (CUDA): with CUDA graphs the launch overhead is gone, and what
    remains is about kernel count x a few us plus the arithmetic."""
    from torch.profiler import ProfilerActivity, profile

    program, plan = policy._programs.values()[-1], policy._plans.values()[-1]
    io = policy.config.io
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (c.height, c.width, 3), dtype=np.uint8) for c in io.cameras]
    pixels = program.pixel_values(images)
    state = torch.zeros(1, io.state_dim, device=policy.device)
    noise = torch.randn(1, io.chunk_len, io.action_dim, device=policy.device)
    vlm_inputs = (pixels, plan.input_ids, plan.lang_mask, plan.image_index, *plan.rope)
    stack = program._vlm_eager(*vlm_inputs)
    for name, run in (("VLM", lambda: program._vlm_eager(*vlm_inputs)),
                      ("sampler", lambda: program._sampler_eager(stack, state, noise, plan.lang_mask))):
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            run()
            torch.cuda.synchronize()
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        busy_ms = sum(e.device_time for e in kernels) / 1e3
        kind = "compiled" if program.compile_modules else "eager"
        print(f"\n{name}: {len(kernels)} kernels, {busy_ms:.2f} ms GPU busy ({kind} static program without its "
              f"graph, one call)")
        by_name: dict[str, list[float]] = {}
        for e in kernels:
            by_name.setdefault(e.name[:70], []).append(e.device_time)
        for kernel, times in sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:top]:
            print(f"  {sum(times) / 1e3:7.2f} ms  {len(times):5d} x  {kernel}")


def plot_latency(medians: dict[str, dict[str, float]], title: str, path: Path, goal_ms: float | None) -> None:
    """Stacked horizontal bars: per column (mode), the median ms of each stage."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(medians)
    fig, ax = plt.subplots(figsize=(9, 0.6 * len(names) + 1.6))
    left = np.zeros(len(names))
    for stage, color in zip(STAGES[:-1], ("#8c8c8c", "#4c72b0", "#dd8452", "#55a868")):
        widths = np.array([medians[name][stage] for name in names])
        ax.barh(names, widths, left=left, color=color, label=stage)
        left += widths
    for y, name in enumerate(names):
        ax.text(left[y], y, f" {medians[name]['total']:.1f} ms", va="center", fontsize=9,
                bbox=dict(facecolor="white", edgecolor="none", pad=0.5))
    ax.invert_yaxis()
    if goal_ms is not None:
        ax.axvline(goal_ms, color="k", linestyle="--", linewidth=1)
        ax.text(goal_ms, -0.55, f" goal {goal_ms:g} ms", fontsize=8, va="bottom")
    ax.set_xlim(0, left.max() * 1.15)
    ax.set_xlabel("median ms per action chunk")
    ax.set_title(textwrap.fill(title, 110), fontsize=9, pad=14)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def read_logged_table(log: Path, index: int = 0) -> tuple[str, dict[str, dict[str, float]]]:
    """(title, medians per column) of the `index`-th table this bench printed into `log` (re-plot a GPU run)."""
    lines = log.read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("stage (ms)")]
    start = starts[index]
    title = next(line for line in reversed(lines[:start]) if line.startswith("GEM-VLA chunk latency"))
    header = lines[start]
    first, width = LABEL_WIDTH, COLUMN_WIDTH
    count = (len(header) - first - RATIO_WIDTH) // width
    names = [header[first + k * width: first + (k + 1) * width].strip() for k in range(count)]
    medians: dict[str, dict[str, float]] = {name: {} for name in names}
    for line in lines[start + 2: start + 2 + len(STAGES)]:
        stage, values = line[:first].strip(), line[first:first + count * width]
        for k, name in enumerate(names):
            medians[name][stage] = float(values[k * width:(k + 1) * width])
    return title.removeprefix("GEM-VLA chunk latency: "), medians


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
    parser.add_argument("--profile", action="store_true", help="CUDA: kernel counts of the static stages")
    parser.add_argument("--compile", action="store_true",
                        help="one more column: the last mode with VLM layers + RDT blocks through torch.compile (experimental)")
    parser.add_argument("--plot", type=Path, help="also write the medians as a PNG bar chart")
    parser.add_argument("--from-log", type=Path, help="re-plot a table this bench printed into a log (with --plot)")
    parser.add_argument("--table", type=int, default=0, help="which table of --from-log (0 = first)")
    parser.add_argument("--modes", nargs="+", choices=["hf", "static", "cuda_graph"],
                        help="inference modes after 'hf, full VLM' (default: all the device can run)")
    args = parser.parse_args(argv)
    if args.from_log:
        if not args.plot:
            parser.error("--from-log needs --plot")
        title, medians = read_logged_table(args.from_log, args.table)
        plot_latency(medians, title, args.plot, 20.0 if "full-size" in title else None)
        print(f"wrote {args.plot}")
        return
    device = torch.device(args.device)
    dtype = default_dtype(device)
    image_size = args.image_size or (384 if args.full_size else 64)
    torch.set_grad_enabled(False)

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        policy = full_size_policy(device, dtype, image_size) if args.full_size else \
            tiny_policy(device, dtype, image_size, Path(tmp))
    policy.config.num_inference_steps = args.steps
    with torch.no_grad():   # adaLN-Zero starts at zero velocity: give it a field so chunks can be compared
        for param in policy.action_expert.parameters():
            if not param.any():
                param.normal_(0, 0.02)
    build_s = time.perf_counter() - t0
    n_vlm = sum(p.numel() for p in policy.backbone.parameters()) / 1e6
    n_rdt = sum(p.numel() for p in policy.action_expert.parameters()) / 1e6

    # Same weights in one run: the library's forward over all VLM layers, then only over those the RDT reads (+1,
    # see backbone.py), then our static-shape program (static_inference.py) eager and replayed as CUDA graphs.
    modes = args.modes or (["hf", "static", "cuda_graph"] if device.type == "cuda" else ["hf", "static"])
    results, first, chunks, renewed = {}, {}, {}, {}
    first["hf, full VLM"], results["hf, full VLM"] = measure(policy, args.runs, "hf", "hf, full VLM", chunks, renewed)
    bb.truncate_text_layers(policy.backbone, max(policy.config.layers_per_block) + 1)
    if args.compile:
        modes.append(f"{modes[-1]}+compile")
    for mode in modes:
        try:
            first[mode], results[mode] = measure(policy, args.runs, mode, mode, chunks, renewed)
        except Exception as exc:   # a bench reports what broke and measures the rest
            print(f"mode {mode}: FAILED {type(exc).__name__}: {exc}")
            continue
        for program in policy._programs.values():
            for stage, error in program.capture_errors.items():
                print(f"mode {mode}: the {stage} ran eagerly, capture failed: {error[:300]}")
    label = "full-size (Qwen3-VL-2B + RDT 1024x14)" if args.full_size else "tiny"
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(f"\nGEM-VLA chunk latency: {label}, {device} ({gpu}), {dtype}, 2 cameras {image_size}x{image_size}, "
          f"{args.steps} steps, median of {args.runs} runs; torch {torch.__version__}")
    print(f"params: VLM {n_vlm:.1f} M, action expert {n_rdt:.1f} M; build {build_s:.1f} s; "
          f"peak memory {peak_memory_mb(device):.0f} MiB ({'GPU allocated' if device.type == 'cuda' else 'RSS'})")
    print("columns after the first: truncated VLM; ratio = last column / 'hf'")
    width, column, ratio_w = LABEL_WIDTH, COLUMN_WIDTH, RATIO_WIDTH
    header = f"{'stage (ms)':<{width}}" + "".join(f"{name:>{column}}" for name in results) + f"{'ratio':>{ratio_w}}"
    print(header + "\n" + "-" * len(header))
    base, last = ("hf" if "hf" in results else list(results)[0]), list(results)[-1]
    for stage in STAGES:
        med = {name: statistics.median(r[stage]) for name, r in results.items()}
        ratio = med[last] / med[base] if med[base] > 0 else float("nan")
        print(f"{stage:<{width}}" + "".join(f"{m:>{column}.2f}" for m in med.values()) + f"{ratio:>{ratio_w}.2f}")
    p95 = [float(np.percentile(r["total"], 95)) for r in results.values()]
    print(f"{'total p95':<{width}}" + "".join(f"{m:>{column}.2f}" for m in p95))
    print(f"{'first chunk (plan+capture)':<{width}}" + "".join(f"{m:>{column}.1f}" for m in first.values()))
    print(f"{'new instr., same shape':<{width}}" + "".join(f"{renewed[name]:>{column}.1f}" for name in first))
    if args.plot:
        medians = {name: {stage: statistics.median(r[stage]) for stage in STAGES} for name, r in results.items()}
        title = (f"{label}, {gpu}, {dtype}, 2 x {image_size}², {args.steps} steps")
        plot_latency(medians, title, args.plot, 20.0 if args.full_size else None)
        print(f"wrote {args.plot}")
    if args.profile and device.type == "cuda" and policy._programs:
        profile_static_stages(policy)
    reference = chunks["hf"] if "hf" in chunks else chunks["hf, full VLM"]
    scale = float(np.abs(reference).max()) or 1.0
    print("same seed, same observation: max |chunk - hf chunk| / max |hf chunk| = " + ", ".join(
        f"{name} {float(np.abs(chunk - reference).max()) / scale:.1e}" for name, chunk in chunks.items()))


if __name__ == "__main__":
    main()
