"""gem_train: train (or distill) a GEM-VLA policy. One loop on `accelerate`, read top to bottom in `train()`.

    gem_train --config gem_train/configs/sim_pick_tiny.yaml [--resume] [--run-dir DIR] [train.lr=3e-4 ...]
    accelerate launch --num_processes 8 -m gem_train.train --config gem_train/configs/gem2b_full.yaml
    accelerate launch --config_file gem_train/configs/accelerate_zero2.yaml -m gem_train.train --config ...

The run folder holds `train_config.yaml`, `checkpoints/step_<N>/` (serving checkpoint + trainer state, see
`checkpointing.py`) and `tensorboard/`. A killed run continues with `--resume` from the newest complete
checkpoint: weights, AdamW moments, step, data position and RNG states come back, and the episode dataset's
augmentation is a function of (seed, epoch, sample), so even after a kill -9 it is bit-exact with the
uninterrupted run (same process count and batch size; a dataset of your own must draw statelessly too).
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import math
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import DistributedType, ProjectConfiguration, gather_object, is_tensorboard_available, set_seed
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm
from transformers.utils import logging as transformers_logging

from gem_ros.core.policy import backbone as bb
from gem_ros.core.policy import checkpoint as ckpt
from gem_ros.core.policy.action_expert import ActionExpert, distillation_loss
from gem_ros.core.policy.config import SIM_SCENE_FIELDS, GemVLAConfig, ImagePipelineConfig
from gem_ros.core.policy.gem_vla import GemVLAPolicy
from gem_ros.core.policy.normalizer import MinMaxNormalizer
from gem_train import ema as weight_average
from gem_train import grounding
from gem_train.checkpointing import (STATE_FILE, EpochBatchSampler, TrainerState, capture_rng, checkpoint_dir,
                                     endless_batches, find_resume_checkpoint, list_checkpoints, load_ema_state,
                                     load_trainer_state, prune_checkpoints, remove_scratch_dirs, save_checkpoint,
                                     step_generator)
from gem_train.config import TINY_BACKBONE, OptimConfig, TrainConfig, load_config, save_config
from gem_train.pretrain_sim import pretrained_prompt_order

logger = logging.getLogger("gem_train")


@dataclass
class DataBundle:
    """What the loop needs from the data side. `stats`: {"action": {"min", "max"}, "state": ...} of the TRAIN split."""

    train_set: Dataset
    val_set: Dataset | None
    collate_fn: Callable
    stats: dict
    sim_scene: dict | None = None   # the sim scene every training episode shares (see sim_scene_of)


@dataclass
class TrainResult:
    checkpoint: Path                                   # the last checkpoint written
    history: list[dict] = field(default_factory=list)  # every logged record, each with its "step"


# ------------------------------------------------------------------------------------------------ the loop
def train(config: TrainConfig, resume: bool = False, data: DataBundle | None = None,
          on_step: Callable[[int, dict], None] | None = None) -> TrainResult:
    tc, run_dir, total_steps = config.train, Path(config.run_dir), config.total_steps
    accelerator = make_accelerator(tc, run_dir)
    rank, world, is_main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    resume_from = find_resume_checkpoint(run_dir) if resume else None
    if is_main:
        prepare_run_dir(config, run_dir, resume_from)
    accelerator.wait_for_everyone()
    data = data or load_data(config)

    set_seed(tc.seed)  # identical initial weights on every process
    policy, teacher, teacher_steps = load_model(config, data.stats, resume_from, accelerator.device)
    policy.config.sim_scene = data.sim_scene
    objective = policy if teacher is None else DistillationObjective(policy, teacher, teacher_steps)
    if teacher is None and tc.grounding_loss_weight > 0:
        objective = grounding.build_objective(policy, getattr(data.train_set, "episode_targets", []),
                                              tc.grounding_loss_weight)
    params = [p for p in objective.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(param_groups(policy, params, tc.vlm_lr_scale), lr=tc.lr, betas=tuple(tc.betas),
                                  eps=tc.eps, weight_decay=tc.weight_decay)
    ema = weight_average.make_ema(params, tc.ema_decay, tc.ema_power)
    set_seed(tc.seed, device_specific=True)  # per-process streams for data augmentation
    state = TrainerState(num_processes=world, batch_size=tc.batch_size)
    if resume_from is not None:
        state = load_trainer_state(resume_from, optimizer, rank, world, tc.batch_size)
        weight_average.restore(ema, params, *load_ema_state(resume_from), resume_from)
        grounding.restore_head(objective, ckpt.read_tensors(resume_from / STATE_FILE), str(resume_from))
        logger.info("resumed from %s at step %d", resume_from, state.step)
    configure_deepspeed(accelerator, tc)
    model, optimizer = accelerator.prepare(objective, optimizer)

    sampler = EpochBatchSampler(len(data.train_set), tc.batch_size, tc.seed, rank, world,
                                with_epoch=getattr(data.train_set, "draws_by_epoch", False))
    loader = DataLoader(data.train_set, batch_sampler=sampler, collate_fn=data.collate_fn, num_workers=tc.num_workers,
                        persistent_workers=tc.num_workers > 0, generator=torch.Generator())
    batches = endless_batches(loader, sampler, state, tc.seed, rank)
    val_loader = None if data.val_set is None else DataLoader(
        data.val_set, batch_size=tc.batch_size, shuffle=False, collate_fn=data.collate_fn, num_workers=tc.num_workers,
        persistent_workers=tc.num_workers > 0, generator=torch.Generator().manual_seed(tc.seed))  # never draws from the global RNG
    accelerator.init_trackers("train")
    history: list[dict] = []
    bar = tqdm(total=total_steps, initial=state.step, disable=not is_main, desc="train", dynamic_ncols=True)
    window_time, window_samples, last_saved = 0.0, 0, None

    model.train()
    while True:
        if val_loader is not None and state.step % tc.eval_every == 0 and is_main:  # nanoGPT: step 0 too
            with accelerator.autocast(), weight_average.averaged_weights(ema, params):
                scores = evaluate(accelerator.unwrap_model(model), val_loader, tc.eval_batches, tc.seed)
            accelerator.log(scores, step=state.step)
            history.append({"step": state.step, **scores})
        if state.step >= total_steps:
            break
        step_start = time.perf_counter()
        lr = lr_at(state.step, tc, total_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)   # a checkpoint from before lr_scale: one group at 1
        logs: dict[str, list[float]] = defaultdict(list)
        grad_norm = None
        for micro in range(tc.grad_accum_steps):
            batch = next(batches)
            with accelerator.accumulate(model):
                loss, micro_logs = model(batch, step_generator(tc.seed, state.step, micro, rank, accelerator.device))
                accelerator.backward(loss * tc.action_loss_weight)
                if accelerator.sync_gradients:  # inf: measure without clipping
                    grad_norm = accelerator.clip_grad_norm_(params, tc.grad_clip or math.inf)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if ema is not None and accelerator.sync_gradients:
                    ema.step(params)
            for key, value in micro_logs.items():
                logs[key].append(value)
        state.step += 1
        state.samples_seen += tc.batch_size * tc.grad_accum_steps * world
        window_time += time.perf_counter() - step_start  # data wait + forward/backward/update, not eval or saving
        window_samples += tc.batch_size * tc.grad_accum_steps * world
        record = {key: float(np.mean(values)) for key, values in logs.items()}
        record.update(lr=lr, grad_norm=float(grad_norm) if grad_norm is not None else float("nan"))
        bar.update(1)
        bar.set_postfix(loss=f"{record.get('loss/total', record.get('loss/distill', 0.0)):.4f}", lr=f"{lr:.2e}")
        if state.step % tc.log_every == 0 or state.step == total_steps:
            record["samples_per_s"] = window_samples / window_time
            window_time, window_samples = 0.0, 0
            accelerator.log(record, step=state.step)
            history.append({"step": state.step, **record})
        if state.step % tc.checkpoint_every == 0 or state.step == total_steps:
            last_saved = save(accelerator, run_dir, model, optimizer, state, config, ema, params)
        if on_step is not None:
            on_step(state.step, record)

    bar.close()
    accelerator.end_training()
    return TrainResult(last_saved or checkpoint_dir(run_dir, state.step), history)


# ------------------------------------------------------------------------------------------------ pieces
def make_accelerator(tc: OptimConfig, run_dir: Path) -> Accelerator:
    return Accelerator(
        mixed_precision=tc.mixed_precision, gradient_accumulation_steps=tc.grad_accum_steps,
        log_with="tensorboard" if is_tensorboard_available() else None,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "tensorboard")),
        # The action loss reads only hidden_states[selected_layers]: the VLM's upper layers get no gradient.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


def configure_deepspeed(accelerator: Accelerator, tc: OptimConfig) -> None:
    """zero2.json leaves batch size, accumulation and clipping on 'auto'; we do not hand accelerate a DataLoader."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is not None:
        plugin.deepspeed_config.update(train_micro_batch_size_per_gpu=tc.batch_size,
                                       gradient_accumulation_steps=tc.grad_accum_steps,
                                       gradient_clipping=tc.grad_clip)


def prepare_run_dir(config: TrainConfig, run_dir: Path, resume_from: Path | None) -> None:
    if resume_from is None and list_checkpoints(run_dir):
        raise ValueError(f"{run_dir} already holds checkpoints; pass --resume to continue it or pick a new --run-dir")
    for leftover in remove_scratch_dirs(run_dir):
        logger.warning("removed %s, left by a run killed while writing a checkpoint", leftover)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / "train_config.yaml")
    if config.model.backbone == TINY_BACKBONE and resume_from is None and config.model.init_from is None \
            and not config.distilling:
        from gem_ros.core.policy.tiny import write_tiny_backbone

        write_tiny_backbone(run_dir / "tiny_backbone", config.model.tiny_hidden, config.model.tiny_text_layers,
                            seed=config.train.seed, patch_size=config.model.tiny_patch_size)


def load_data(config: TrainConfig) -> DataBundle:
    """Episodes from `data.dataset_dirs`, split by episode; normalizer statistics from the training split only."""
    from gem_train.data.dataset import ChunkDataset, ChunkDatasetConfig, collate_batch, split_episodes
    from gem_train.data.episodes import find_episodes
    from gem_train.data.stats import compute_stats

    d, io = config.data, config.data.io_schema()
    episodes = [e for folder in d.dataset_dirs for e in find_episodes(folder)]
    if not episodes:
        raise ValueError(f"data.dataset_dirs {d.dataset_dirs} hold no episodes")
    train_episodes, val_episodes = split_episodes(episodes, d.val_fraction, config.train.seed)
    depth_size = config.model.depth_image_size if config.model.depth_expert else 0
    native = d.image_resize == "native"
    train_set = ChunkDataset(train_episodes, ChunkDatasetConfig.from_io_schema(
        io, image_drop_prob=d.image_drop_prob, instruction_drop_prob=d.instruction_drop_prob,
        color_jitter=d.color_jitter, state_noise_std=d.state_noise_std,
        random_shift_px=d.random_shift_px, depth_size=depth_size, seed=config.train.seed,
        cache_frames=d.cache_frames, camera_dropout=d.camera_dropout, image_corruptions=d.image_corruptions,
        native_resolution=native))
    val_set = None
    if val_episodes:  # no augmentation on held-out data
        val_set = ChunkDataset(val_episodes, ChunkDatasetConfig.from_io_schema(io, depth_size=depth_size,
                                                                               native_resolution=native))
    logger.info("%d training / %d held-out episodes, %d / %d samples", len(train_episodes), len(val_episodes),
                len(train_set), len(val_set) if val_set is not None else 0)
    return DataBundle(train_set, val_set, collate_batch, compute_stats(train_set),
                      sim_scene_of(train_set.episode_meta))


def sim_scene_of(metas: list[dict]) -> dict | None:
    """The scene fields gem_collect_sim recorded, if every episode came from the same embedded-sim scene."""
    scenes = [{k: m[k] for k in SIM_SCENE_FIELDS if k in m} for m in metas]
    if not scenes or any(not scene or scene != scenes[0] for scene in scenes):
        return None
    return scenes[0]


def load_model(config: TrainConfig, stats: dict, resume_from: Path | None, device: torch.device):
    """(policy, teacher action expert or None, teacher Euler steps). Weights are fp32; accelerate does the casts."""
    tc, io = config.train, config.data.io_schema()
    start = resume_from or (config.distill.teacher if config.distilling else config.model.init_from)
    if start is not None:
        policy = GemVLAPolicy.from_pretrained(start, device=device, dtype=torch.float32, expected_io=io,
                                              for_training=True)
    else:
        policy = build_policy(config, stats, device)
    if not config.distilling:
        policy.config.noise_scale = config.model.noise_scale   # a serving setting: the recipe's, also on init_from
        record_image_training(policy.config, config, start)
        # total = action_w * (action + depth_w / action_w * depth): the policy applies the ratio, the loop action_w.
        policy.config.depth_loss_weight = tc.depth_loss_weight / tc.action_loss_weight
        set_trainable(policy, tc)
        return policy, None, 0
    teacher, teacher_steps = load_teacher(Path(config.distill.teacher), device)
    policy.config.sampler = "one_step"  # checkpoints of this stage serve with the distilled one-step sampler
    policy.requires_grad_(False)
    policy.action_expert.requires_grad_(True)  # the generator
    return policy, teacher, config.distill.teacher_steps or teacher_steps


def param_groups(policy: GemVLAPolicy, params: list, vlm_lr_scale: float) -> list[dict]:
    """AdamW groups: the VLM's trainable weights at lr x vlm_lr_scale, the rest at lr (each group's `lr_scale`)."""
    if vlm_lr_scale == 1.0:   # one group, as checkpoints written before vlm_lr_scale hold (resume loads them)
        return [{"params": params, "lr_scale": 1.0}]
    vlm = {id(p) for p in policy.backbone.parameters()}
    groups = [{"params": [p for p in params if id(p) in vlm], "lr_scale": vlm_lr_scale},
              {"params": [p for p in params if id(p) not in vlm], "lr_scale": 1.0}]
    return [group for group in groups if group["params"]]


def record_image_training(policy_config: GemVLAConfig, config: TrainConfig, start) -> None:
    """This training's image augmentation goes into the checkpoint; a checkpoint trained on (init_from, resume)
    keeps its resize and pixel bounds (its processor comes with it): the recipe must ask for the same resize."""
    pipeline, d = policy_config.image_pipeline, config.data
    if start is not None and pipeline.resize != d.image_resize:
        raise ValueError(f"data.image_resize {d.image_resize!r} differs from the image_pipeline.resize "
                         f"{pipeline.resize!r} that {start} was trained with")
    pipeline.camera_dropout, pipeline.corruptions = d.camera_dropout, d.image_corruptions


def build_policy(config: TrainConfig, stats: dict, device: torch.device) -> GemVLAPolicy:
    m = config.model
    backbone_dir = Path(config.run_dir) / "tiny_backbone" if m.backbone == TINY_BACKBONE else Path(m.backbone)
    width = json.loads((backbone_dir / "config.json").read_text())["text_config"]["hidden_size"]
    depth = None
    if m.depth_expert:
        from gem_ros.core.policy.depth_expert import DepthExpertConfig, diffusers_depth_config
        from gem_ros.core.policy.tiny_depth import tiny_depth_expert_config

        if m.depth_sana_dir is not None:   # SANA + DC-AE + shift from a diffusers folder, loaded by build()
            depth = diffusers_depth_config(m.depth_sana_dir, width, m.depth_image_size).to_dict()
        elif m.backbone == TINY_BACKBONE:
            depth = tiny_depth_expert_config(width, m.depth_image_size, init="random").to_dict()
        else:
            depth = DepthExpertConfig(vlm_hidden_size=width, image_size=m.depth_image_size, init=m.depth_init).to_dict()
    grounded = pretrained_prompt_order(backbone_dir)
    if grounded is not None and grounded != m.prompt_order:
        raise ValueError(f"model.prompt_order {m.prompt_order!r}, but {backbone_dir} was grounded (gem_pretrain_sim) "
                         f"with {grounded!r}: set model.prompt_order={grounded}")
    pipeline = ImagePipelineConfig(config.data.image_resize, m.min_pixels_per_image, m.max_pixels_per_image)
    policy_config = GemVLAConfig(io=config.data.io_schema(), rdt=dataclasses.replace(m.rdt, cond_hidden_size=width),
                                 selected_layers=list(m.selected_layers), num_inference_steps=m.num_inference_steps,
                                 depth_expert=depth, max_pixels_per_image=m.max_pixels_per_image,
                                 image_pipeline=pipeline, prompt_order=m.prompt_order)
    state_normalizer = _normalizer(stats["state"]) if config.data.normalize_state else None
    policy = GemVLAPolicy.build(policy_config, backbone_dir, _normalizer(stats["action"]), state_normalizer,
                                device=device, dtype=torch.float32)
    bb.apply_image_pipeline(policy.processor, policy.config.image_pipeline)   # min pixels; bounds recorded
    return policy


def _normalizer(entry) -> MinMaxNormalizer:
    return entry if isinstance(entry, MinMaxNormalizer) else MinMaxNormalizer(entry["min"], entry["max"])


def set_trainable(policy: GemVLAPolicy, tc: OptimConfig) -> None:
    vlm = policy.backbone.model
    vlm.language_model.requires_grad_(tc.train_backbone)  # lm_head is tied to the embeddings
    vlm.visual.requires_grad_(tc.train_vision)
    policy.action_expert.requires_grad_(tc.train_action_expert)
    if policy.depth_expert is not None:
        policy.depth_expert.requires_grad_(tc.train_depth_expert)
        policy.depth_expert.vae.requires_grad_(False)


def load_teacher(path: Path, device: torch.device) -> tuple[ActionExpert, int]:
    config = ckpt.read_config(path)
    teacher = ActionExpert(config.rdt, config.io.action_dim, config.io.state_dim, config.io.chunk_len)
    ckpt.load_checked(teacher, ckpt.read_tensors(path / ckpt.MODEL_FILE), str(path / ckpt.MODEL_FILE))
    return teacher.to(device).eval().requires_grad_(False), config.num_inference_steps


class DistillationObjective(nn.Module):
    """One-step regression distillation (gem_reference §5): `policy.action_expert` is the generator, trained so
    its single Euler step from eps lands where the frozen teacher's N-step sampler lands. The VLM is frozen."""

    def __init__(self, policy: GemVLAPolicy, teacher: ActionExpert, teacher_steps: int):
        super().__init__()
        self.policy, self.teacher, self.teacher_steps = policy, teacher, teacher_steps

    def forward(self, batch, generator: torch.Generator | None = None):
        stack, state, mask = condition(self.policy, batch)
        loss = distillation_loss(self.policy.action_expert, self.teacher, stack, state, mask, self.teacher_steps,
                                 rng=generator)
        return loss, {"loss/distill": float(loss.detach())}


def training_policy(objective: nn.Module) -> GemVLAPolicy:
    """The policy an objective trains (what is saved and served)."""
    return objective.policy if isinstance(objective, (DistillationObjective, grounding.GroundingObjective)) \
        else objective


def condition(policy: GemVLAPolicy, batch):
    """VLM hidden-state stack (no grad), policy-space state and language mask of a TrainingBatch."""
    prompt = policy.build_prompts(batch.images, batch.instructions)
    with torch.no_grad():
        stack, _ = bb.hidden_state_stack(policy.backbone, prompt, policy.config.layers_per_block)
    state = batch.state.to(policy.device, torch.float32)
    if policy.config.io.normalize_state:
        state = policy.state_normalizer.normalize(state)
    return stack, state, prompt.attention_mask


@torch.no_grad()
def evaluate(objective: nn.Module, loader: DataLoader, num_batches: int, seed: int) -> dict[str, float]:
    """Held-out loss with a fixed noise stream, and MSE of sampled chunks against the data in robot units."""
    policy = training_policy(objective)
    objective.eval()
    rng = torch.Generator(device=policy.device).manual_seed(seed)
    scores: dict[str, list[float]] = defaultdict(list)
    for batch in itertools.islice(loader, num_batches):
        _, logs = objective(batch, rng)
        stack, state, mask = condition(policy, batch)
        steps = 1 if policy.config.sampler == "one_step" else policy.config.num_inference_steps
        chunk = policy.action_normalizer.unnormalize(policy.action_expert.sample(
            stack, state, mask, steps, rng, noise_scale=policy.config.noise_scale))
        logs["action_mse"] = float(((chunk - batch.actions.to(chunk.device)) ** 2).mean())
        for key, value in logs.items():
            scores[f"eval/{key.replace('/', '_')}"].append(value)
    objective.train()
    return {key: float(np.mean(values)) for key, values in scores.items()}


def save(accelerator: Accelerator, run_dir: Path, model, optimizer, state: TrainerState, config: TrainConfig,
         ema=None, params: list | None = None) -> Path:
    rng_states = gather_object([capture_rng()])  # every process's RNG, in rank order
    optimizer_state = None
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        logger.warning("DeepSpeed: optimizer moments are not stored (its state is not plain tensors); a resumed "
                       "run restarts AdamW moments")
    elif accelerator.is_main_process:
        optimizer_state = optimizer.state_dict()
    path = checkpoint_dir(run_dir, state.step)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        ema_tensors, ema_meta = weight_average.training_state(ema, params)
        extra = {**ema_tensors, **grounding.head_tensors(unwrapped)}   # the head as trained, not averaged
        with weight_average.averaged_weights(ema, params):   # the serving weights are the average
            save_checkpoint(run_dir, training_policy(unwrapped), optimizer_state, state, rng_states, config.to_dict(),
                            extra, ema_meta)
        for old in prune_checkpoints(run_dir, config.train.keep_last):
            logger.info("deleted old checkpoint %s (keep_last=%d)", old, config.train.keep_last)
    accelerator.wait_for_everyone()
    return path


def lr_at(step: int, tc: OptimConfig, total_steps: int) -> float:
    """Linear warm-up, then constant or cosine decay to min_lr at total_steps."""
    if step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    if tc.lr_schedule == "constant":
        return tc.lr
    progress = (step - tc.warmup_steps) / max(1, total_steps - tc.warmup_steps)
    return tc.min_lr + 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))) * (tc.lr - tc.min_lr)


# ------------------------------------------------------------------------------------------------ CLI
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gem_train", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, type=Path, help="YAML recipe, e.g. gem_train/configs/*.yaml")
    parser.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    parser.add_argument("--run-dir", help="run folder (overrides run_dir of the recipe)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.lr=1e-4")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    transformers_logging.disable_progress_bar()  # one bar per checkpoint write/load otherwise
    overrides = list(args.overrides) + ([f"run_dir={json.dumps(args.run_dir)}"] if args.run_dir else [])
    try:
        config = load_config(args.config, overrides)
    except ValueError as error:
        print(f"gem_train: invalid configuration: {error}", file=sys.stderr)
        return 2
    result = train(config, resume=args.resume)
    print(f"gem_train: last checkpoint {result.checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
