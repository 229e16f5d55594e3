"""GEM-VLA training throughput: samples/s and peak memory of real training steps, next to loader-only throughput
(ChunkDataset + DataLoader + collate, no model), so a data-loading bottleneck shows up as a ratio.

    python bench/train_throughput.py --quick                      # tiny recipe on CPU, a few steps (self-check)
    python bench/train_throughput.py                              # tiny recipe (sim_pick_tiny.yaml) on CPU
    python bench/train_throughput.py --data data/sim_pick         # recorded episodes instead of synthetic ones
    python bench/train_throughput.py --data data/sim_pick --cache-frames   # + loader with decoded frames in RAM
    python bench/train_throughput.py --device cuda --full-size [--image-size 384] [--depth]
                                      # gem2b_full.yaml: Qwen3-VL-2B-sized VLM + 1024x14 RDT, bf16, batch 16

A timed step is one micro-step of `gem_train.train.train`, built from its own pieces: the recipe through
`load_config`, data through `load_data` (ChunkDataset, augmentation, stats), the same EpochBatchSampler /
DataLoader / collate / `endless_batches`, the accelerate `Accelerator` of `make_accelerator` (mixed precision of
the recipe: fp32 weights, bf16 autocast on CUDA), AdamW on the trainable parameters after `set_trainable`, then
`policy(batch, step_generator(...))`, `accelerator.backward`, `clip_grad_norm_`, `optimizer.step`, `zero_grad`.
Tiny: the model comes from `load_model` (random tiny backbone written like `prepare_run_dir` does). Full size:
random weights built in code at the published sizes (no 8 GB backbone folder is written). The VLM prompt
(Qwen3-VL image processor + tokenizer) is built inside `policy(batch)` on the main process, so it is timed as
its own row. Data: synthetic episodes (EpisodeWriter, with metric depth) in a temp folder, or `--data DIR`.
Prints a table; asserts nothing.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gem_ros.core.policy import backbone as bb  # noqa: E402
from gem_train.checkpointing import EpochBatchSampler, TrainerState, endless_batches, step_generator  # noqa: E402
from gem_train.config import TrainConfig, load_config  # noqa: E402
from gem_train.data.episodes import EpisodeWriter, find_episodes, read_episode  # noqa: E402
from gem_train.train import (DataBundle, _normalizer, load_data, load_model, lr_at, make_accelerator,  # noqa: E402
                             prepare_run_dir, set_trainable)

CONFIGS = ROOT / "gem_train" / "configs"


# ------------------------------------------------------------------------------------------------ data
def synthesize_episodes(folder: Path, config: TrainConfig, episodes: int, steps: int) -> None:
    """Camera-like frames (smooth colour fields + noise, so gzip and decoding cost what real frames cost)."""
    d = config.data
    height, width = d.image_size
    rng = np.random.default_rng(0)
    for k in range(episodes):
        with EpisodeWriter(folder / f"episode_{k:06d}.hdf5", instructions="pick up the red cube",
                           control_rate_hz=d.control_rate_hz, camera_names=d.cameras, state_names=d.state_names,
                           action_names=d.action_names) as writer:
            for _ in range(steps):
                images = {c: np.clip(cv2.resize(rng.uniform(0, 255, (6, 6, 3)), (width, height))
                                     + rng.normal(0, 8, (height, width, 3)), 0, 255).astype(np.uint8)
                          for c in d.cameras}
                depth = {c: rng.uniform(0.3, 2.0, (height, width)).astype(np.float32) for c in d.cameras}
                writer.add_step(images, rng.normal(size=d.state_dim), rng.normal(size=d.action_dim), depth)


def data_overrides(folder: Path, recipe: TrainConfig) -> list[str]:
    """Cameras, dims and channel names of recorded episodes (the recipe's cameras if they all exist)."""
    first = find_episodes(folder)[0]
    with (read_episode(first) if isinstance(first, Path) else first) as episode:
        cameras = recipe.data.cameras if set(recipe.data.cameras) <= set(episode.camera_names) \
            else episode.camera_names
        return [f"data.cameras={cameras}", f"data.state_dim={episode.states.shape[1]}",
                f"data.action_dim={episode.actions.shape[1]}",
                f"data.state_names={list(episode.meta.get('state_names') or [])}",
                f"data.action_names={list(episode.meta.get('action_names') or [])}", "data.gripper_channels=[]"]


# ------------------------------------------------------------------------------------------------ model
def full_size_policy(config: TrainConfig, stats: dict, device: torch.device):
    """What `build_policy` gives on a GEM-2B folder, with random weights: Qwen3-VL-2B sizes (from
    bench/policy_latency.py), the recipe's RDT, fp32 master weights (the Accelerator autocasts)."""
    from bench.policy_latency import qwen3_vl_2b_config
    from gem_ros.core.policy.config import GemVLAConfig
    from gem_ros.core.policy.depth_expert import DepthExpertConfig
    from gem_ros.core.policy.gem_vla import GemVLAPolicy
    from gem_ros.core.policy.tiny import CHAT_TEMPLATE, tiny_image_processor, tiny_tokenizer
    from transformers import Qwen3VLForConditionalGeneration

    m, tc = config.model, config.train
    tokenizer = tiny_tokenizer()
    processor = bb.ImageOnlyQwen3VLProcessor(image_processor=tiny_image_processor(), tokenizer=tokenizer,
                                             chat_template=CHAT_TEMPLATE)
    with torch.device(device):
        backbone = Qwen3VLForConditionalGeneration(qwen3_vl_2b_config(tokenizer))
        width = backbone.config.text_config.hidden_size
        depth = DepthExpertConfig(vlm_hidden_size=width, image_size=m.depth_image_size, init="random").to_dict() \
            if m.depth_expert else None
        policy_config = GemVLAConfig(io=config.data.io_schema(), rdt=dataclasses.replace(m.rdt, cond_hidden_size=width),
                                     selected_layers=list(m.selected_layers), num_inference_steps=m.num_inference_steps,
                                     depth_expert=depth, max_pixels_per_image=m.max_pixels_per_image)
        policy = GemVLAPolicy(policy_config, backbone, processor, _normalizer(stats["action"]))
    policy = policy.to(device=device, dtype=torch.float32)
    policy.config.depth_loss_weight = tc.depth_loss_weight / tc.action_loss_weight   # as load_model does
    set_trainable(policy, tc)
    return policy


# ------------------------------------------------------------------------------------------------ timing
def make_batches(data: DataBundle, tc, seed: int):
    """The loop's loader: same sampler, collate, workers, worker seeding."""
    sampler = EpochBatchSampler(len(data.train_set), tc.batch_size, seed)
    loader = DataLoader(data.train_set, batch_sampler=sampler, collate_fn=data.collate_fn, num_workers=tc.num_workers,
                        persistent_workers=tc.num_workers > 0, generator=torch.Generator())
    return endless_batches(loader, sampler, TrainerState(batch_size=tc.batch_size), seed, 0)


def time_loader(data: DataBundle, tc, batches: int, warmup: int) -> list[float]:
    stream = make_batches(data, tc, tc.seed)
    for _ in range(warmup):
        next(stream)
    seconds = []
    for _ in range(batches):
        start = time.perf_counter()
        next(stream)
        seconds.append(time.perf_counter() - start)
    stream.close()   # shuts persistent workers down
    return seconds


def time_prompts(policy, data: DataBundle, tc, batches: int) -> tuple[list[float], list[float]]:
    """The VLM prompt (image processor + tokenizer) that `policy(batch)` builds on the main process: the library
    processor per batch, and `policy.build_prompts` (per-instruction cache, pixels patched on the device) once its
    cache has seen the batches' instructions."""
    stream = make_batches(data, dataclasses.replace(tc, num_workers=0), tc.seed + 1)
    drawn = [next(stream) for _ in range(batches)]
    library, cached = [], []
    for batch in drawn:
        start = time.perf_counter()
        bb.build_prompts(policy.processor, batch.images, batch.instructions, policy.device)
        library.append(time.perf_counter() - start)
        policy.build_prompts(batch.images, batch.instructions)   # fills the cache
    for batch in drawn:
        start = time.perf_counter()
        policy.build_prompts(batch.images, batch.instructions)
        cached.append(time.perf_counter() - start)
    return library, cached


def time_training(config: TrainConfig, data: DataBundle, accelerator, policy, steps: int, warmup: int) -> dict:
    tc = config.train
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=tc.lr, betas=tuple(tc.betas), eps=tc.eps, weight_decay=tc.weight_decay)
    model, optimizer = accelerator.prepare(policy, optimizer)
    batches, device = make_batches(data, tc, tc.seed), accelerator.device
    step_s, wait_s, losses = [], [], []
    model.train()
    for step in range(warmup + steps):
        if step == warmup and device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, tc, tc.max_steps)
        batch = next(batches)
        got_batch = time.perf_counter()
        with accelerator.accumulate(model):     # the loop's micro-step, verbatim
            loss, logs = model(batch, step_generator(tc.seed, step, 0, accelerator.process_index, device))
            accelerator.backward(loss * tc.action_loss_weight)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(params, tc.grad_clip or math.inf)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= warmup:
            step_s.append(time.perf_counter() - start)
            wait_s.append(got_batch - start)
            losses.append(logs["loss/total"])
    batches.close()
    return {"step_s": step_s, "wait_s": wait_s, "loss": losses}


def peak_mib(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "GPU alloc"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "RSS"   # Linux: KiB


# ------------------------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--full-size", action="store_true", help="gem2b_full.yaml sizes (random weights; CUDA)")
    parser.add_argument("--quick", action="store_true", help="a few small steps: checks that everything runs")
    parser.add_argument("--data", type=Path, help="episode folder to read instead of synthetic episodes")
    parser.add_argument("--batch-size", type=int, help="per step (default: the recipe's 16; 4 with --quick)")
    parser.add_argument("--image-size", type=int, help="square camera images, px (default: the recipe's)")
    parser.add_argument("--num-workers", type=int, help="DataLoader workers (default: the recipe's)")
    parser.add_argument("--depth", action="store_true", help="depth expert on (depth targets in every sample)")
    parser.add_argument("--steps", type=int, help="timed training steps (default 20; 3 with --quick)")
    parser.add_argument("--warmup", type=int, help="untimed first steps (default 3; 1 with --quick)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--cache-frames", action="store_true",
                        help="data.cache_frames=true for training; adds a loader row with the RAM cache warm")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    from transformers.utils import logging as transformers_logging

    args = parse_args(argv)
    transformers_logging.disable_progress_bar()   # as gem_train does: no bar per model write/load
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    steps, warmup = args.steps or (3 if args.quick else 20), args.warmup if args.warmup is not None else \
        (1 if args.quick else 3)
    if args.data is not None and not find_episodes(args.data):
        sys.exit(f"train_throughput: --data {args.data} holds no episodes")
    recipe_path = CONFIGS / ("gem2b_full.yaml" if args.full_size else "sim_pick_tiny.yaml")
    with tempfile.TemporaryDirectory(prefix="gem_train_throughput_") as tmp:
        tmp = Path(tmp)
        data_dir, run_dir = args.data or tmp / "episodes", tmp / "run"
        data_dir.mkdir(exist_ok=True)
        run_dir.mkdir()
        overrides = [f"data.dataset_dirs=[{data_dir}]", f"run_dir={run_dir}", "data.val_fraction=0.0",
                     f"model.depth_expert={'true' if args.depth else 'false'}"]
        if args.full_size:
            overrides.append(f"model.backbone={run_dir}")   # must be a folder; the backbone is built in code
        if device.type != "cuda":
            overrides.append("train.mixed_precision=no")
        for key, value in (("train.batch_size", args.batch_size or (4 if args.quick else None)),
                           ("data.image_size", args.image_size), ("train.num_workers", args.num_workers)):
            if value is not None:
                overrides.append(f"{key}={value}")
        recipe = load_config(recipe_path, overrides)
        config_overrides = overrides
        if args.data is None:
            synthesize_episodes(data_dir, recipe, episodes=2 if args.quick else 4, steps=12 if args.quick else 60)
            source = "synthetic"
        else:
            config_overrides = overrides + data_overrides(args.data, recipe)
            recipe = load_config(recipe_path, config_overrides)
            source = str(args.data)
        config, tc = recipe, recipe.train

        data = load_data(config)
        loader_batches, loader_warmup = (4, 1) if args.quick else (20, 3)
        loader_s = time_loader(data, tc, loader_batches, loader_warmup)
        cached_s = None
        if args.cache_frames:
            config = load_config(recipe_path, [*config_overrides, "data.cache_frames=true"])
            data = load_data(config)
            for k in range(data.train_set.num_episodes):     # the steady state: every episode decoded once
                data.train_set[data.train_set.episode_span(k)[0]]
            cached_s = time_loader(data, tc, loader_batches, loader_warmup)
        loader_peak, _ = peak_mib(torch.device("cpu"))

        t0 = time.perf_counter()
        accelerator = make_accelerator(tc, run_dir)
        if args.full_size:
            policy = full_size_policy(config, data.stats, accelerator.device)
        else:
            prepare_run_dir(config, run_dir, None)   # writes the random tiny backbone, as gem_train does
            policy, _, _ = load_model(config, data.stats, None, accelerator.device)
        build_s = time.perf_counter() - t0
        prompt_s = time_prompts(policy, data, tc, batches=2 if args.quick else 5)
        train = time_training(config, data, accelerator, policy, steps, warmup)
        train_peak, peak_kind = peak_mib(accelerator.device)
        report(args, config, source, len(data.train_set), data.train_set.num_episodes, policy, build_s, loader_s,
               loader_peak, prompt_s, train, warmup, train_peak, peak_kind, accelerator, cached_s)


def report(args, config, source, samples, episodes, policy, build_s, loader_s, loader_peak, prompt_s, train, warmup,
           train_peak, peak_kind, accelerator, cached_s=None) -> None:
    tc, d, bs = config.train, config.data, config.train.batch_size
    n = {name: sum(p.numel() for p in module.parameters()) / 1e6 if module is not None else 0.0
         for name, module in (("VLM", policy.backbone), ("action expert", policy.action_expert),
                              ("depth expert", policy.depth_expert))}
    trainable = sum(p.numel() for p in policy.parameters() if p.requires_grad) / 1e6
    device = accelerator.device
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    label = "full-size (Qwen3-VL-2B + RDT 1024x14)" if args.full_size else "tiny (sim_pick_tiny.yaml)"
    print(f"\nGEM-VLA training throughput: {label}, {device} ({where}), mixed precision {tc.mixed_precision}, "
          f"batch {bs}, {len(d.cameras)} cameras {d.image_size[0]}x{d.image_size[1]}, chunk {d.chunk_len}, "
          f"depth expert {'on' if config.model.depth_expert else 'off'}, num_workers {tc.num_workers}")
    print(f"data: {source}, {episodes} episodes, {samples} samples; params (M): VLM {n['VLM']:.1f}, action expert "
          f"{n['action expert']:.1f}, depth expert {n['depth expert']:.1f}, trainable {trainable:.1f}; "
          f"build {build_s:.1f} s; {len(train['step_s'])} timed steps after {warmup} warm-up")
    step, wait = sum(train["step_s"]), sum(train["wait_s"])
    rows = [("loader only (sampler+dataset+collate)", sum(loader_s), len(loader_s), f"{loader_peak:.0f} MiB RSS"),
            *([("loader only, frames cached in RAM", sum(cached_s), len(cached_s), "")] if cached_s else []),
            ("VLM prompt build, library processor", sum(prompt_s[0]), len(prompt_s[0]), ""),
            ("VLM prompt build, cached (in forward)", sum(prompt_s[1]), len(prompt_s[1]), ""),
            ("train step (data + fwd/bwd + AdamW)", step, len(train["step_s"]), f"{train_peak:.0f} MiB {peak_kind}"),
            ("train step minus data wait", step - wait, len(train["step_s"]), "")]
    header = f"{'':<40}{'samples/s':>12}{'ms/batch':>12}{'peak memory':>24}"
    print(header + "\n" + "-" * len(header))
    for name, seconds, count, memory in rows:
        print(f"{name:<40}{count * bs / seconds:>12.1f}{1000 * seconds / count:>12.1f}{memory:>24}")
    used = cached_s or loader_s   # the loader the timed training steps drew from
    loader_rate, train_rate = len(used) * bs / sum(used), len(train["step_s"]) * bs / step
    print(f"loader / train-step throughput ratio: {loader_rate / train_rate:.1f}x  (data wait "
          f"{100 * wait / step:.1f} % of step time; median step {1000 * statistics.median(train['step_s']):.1f} ms; "
          f"loss {train['loss'][0]:.3f} -> {train['loss'][-1]:.3f})")
    if loader_rate < 2 * train_rate:
        print("note: the loader is less than 2x faster than training: raise train.num_workers (or use lzf/none "
              "compression) before scaling the model")


if __name__ == "__main__":
    main()
