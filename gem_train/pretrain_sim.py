"""gem_pretrain_sim: pretrain a tiny Qwen3-VL backbone to ground the instructed cube in rendered sim scenes.

    gem_pretrain_sim --out runs/tiny_grounded_backbone --scenes 3000 --steps 2500 [--colors red]
    gem_train --config gem_train/configs/sim_pick_tiny.yaml model.backbone=runs/tiny_grounded_backbone

GEM-2B arrives pretrained; the tiny stand-in a CPU can train does not, and a from-scratch ViT does not learn
where a cube is from a few hundred demonstrations: the action loss only carries the cube's position weakly
(`gem_eval sensitivity`: the step-0 chunk ignores the images). This stage gives the tiny backbone what a
pretrained VLM brings, grounding, cheaply: it renders random scenes (one frame each, ~40 ms, no expert), and
trains the backbone with a small attention-pooling head to regress the instructed cube's table position
(x, y, m) from the scene image and the instruction (the sim's, in any of its phrasings). With several cubes
an auxiliary head (one query set per colour, no language) also regresses every cube's position
(`all_cubes_weight`): it teaches the vision tokens where each colour is, which the instruction path alone
learned too slowly (the named-cube error stayed at the mean predictor's for 2,000 steps). With `--cameras scene
wrist` each prompt holds both views, as the policy's do, and a second output regresses the named cube's offset from
the hand, which the wrist view shows best; `--posed-fraction` renders that share of scenes with the hand somewhere
on a top-down approach to a random cube (the states a policy sees), the rest at home. The heads are dropped; the
backbone folder is written (then renamed) so `model.backbone` can point at it.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from gem_ros.core.policy.config import PROMPT_ORDERS

GROUNDING_FILE = "grounding.json"   # in the backbone folder: how it was pretrained (gem_train checks prompt_order)


@dataclass
class PretrainConfig:
    out: Path
    scenes: int = 3000               # rendered training scenes (+ 10 % held out)
    steps: int = 2500
    batch_size: int = 16
    lr: float = 1e-3
    image_size: int = 128            # square, as the policy's data.image_size
    cameras: list[str] = field(default_factory=lambda: ["scene"])   # in the prompt, in the policy's camera order
    colors: list[str] = field(default_factory=lambda: ["red", "green", "blue"])
    random_shift_px: int = 4
    hidden: int = 64                 # tiny backbone sizes, as gem_train's model.tiny_hidden / tiny_text_layers
    text_layers: int = 3
    seed: int = 0
    workers: int = 1                 # rendering processes (each its own pybullet); scenes do not depend on it
    coarse_meshes: bool = False      # the robot drawn as the policy's episodes draw it (gem_collect_sim)
    all_cubes_weight: float = 1.0    # auxiliary loss: every cube's xy from per-colour queries (0 = off)
    prompt_order: str = "images_first"   # as the policy's model.prompt_order (GemVLAConfig); recorded in the folder
    posed_fraction: float = 0.0      # scenes with the hand on an approach to a random cube instead of at home
    hand_offset_weight: float = 0.0  # loss on the named cube's xy offset from the hand (0 = off)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        for key in ("scenes", "steps", "batch_size", "image_size", "hidden", "text_layers", "workers"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not self.cameras or len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"cameras must be distinct camera names, got {self.cameras}")
        for key in ("posed_fraction", "hand_offset_weight", "all_cubes_weight"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value >= 0) or (key == "posed_fraction" and value > 1):
                raise ValueError(f"{key} must be finite and >= 0 (a fraction <= 1 for posed_fraction), got {value}")
        if self.prompt_order not in PROMPT_ORDERS:
            raise ValueError(f"prompt_order must be one of {PROMPT_ORDERS}, got {self.prompt_order!r}")


class Scenes(NamedTuple):
    images: np.ndarray         # (N, cameras, S, S, 3) uint8, cfg.cameras order
    instructions: list[str]
    target_xy: np.ndarray      # (N, 2) m: the named cube, robot frame
    every_xy: np.ndarray       # (N, colours, 2) m: each cube, cfg.colors order
    hand_offset_xy: np.ndarray # (N, 2) m: named cube minus hand (panda_grasptarget), robot frame axes


def render_scenes(cfg: PretrainConfig, count: int, seed: int) -> Scenes:
    """`count` seeded random scenes (scene k from seed + k), rendered in `cfg.workers` processes, each a contiguous
    block of seeds: the result does not depend on the number of workers."""
    workers = min(cfg.workers, count)
    if workers == 1:
        return _render_block(cfg, seed, count, True)
    bounds = np.linspace(0, count, workers + 1).astype(int)
    jobs = [(cfg, seed + int(a), int(b - a), i == 0) for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        blocks = pool.starmap(_render_block, jobs)
    return Scenes(*(np.concatenate([getattr(b, f) for b in blocks]) if f != "instructions"
                    else [i for b in blocks for i in b.instructions] for f in Scenes._fields))


def pose_on_approach(sim, rng: np.random.Generator) -> None:
    """Hand somewhere on a top-down approach to a random cube (any colour, not only the named one): from home to
    10 cm above it, then down to it, a few cm of lateral error, gripper open or closing."""
    import pybullet as p

    cube = sim.object_position(sim.object_names[int(rng.integers(len(sim.object_names)))])
    home, _ = sim.ee_pose()
    pre = cube + [0.0, 0.0, 0.10]
    s = rng.uniform()
    position = home + (pre - home) * (s / 0.6) if s < 0.6 else pre + (cube - pre) * ((s - 0.6) / 0.4)
    position = position + np.r_[rng.normal(0.0, 0.02, 2), 0.0]
    position[2] = max(position[2], cube[2] + 0.005)
    quat = p.getQuaternionFromEuler([math.pi, 0.0, rng.uniform(-0.3, 0.3)])
    arm = sim.ik(position, quat)
    finger = float(rng.choice([0.04, 0.04, 0.04, rng.uniform(0.0, 0.04)]))
    sim.place_joints(sim.joint_names, np.concatenate([arm, [finger] * (len(sim.joint_names) - len(arm))]))


def _render_block(cfg: PretrainConfig, seed: int, count: int, show_progress: bool) -> Scenes:
    from gem_ros.sim import SimConfig, TabletopSim

    images, instructions, targets, every, offsets = [], [], [], [], []
    size = (cfg.image_size, cfg.image_size)
    desc = "render" if cfg.workers == 1 else f"render (1 of {min(cfg.workers, count)} workers)"
    with TabletopSim(SimConfig(object_colors=list(cfg.colors), coarse_robot_meshes=cfg.coarse_meshes)) as sim:
        for k in tqdm(range(count), desc=desc, unit="scene", disable=not show_progress):
            instructions.append(sim.reset(seed + k))
            rng = np.random.default_rng([seed + k, 1])
            if rng.uniform() < cfg.posed_fraction:
                pose_on_approach(sim, rng)
            views = []
            for camera in cfg.cameras:
                rgb, _ = sim.render(camera)
                views.append(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA) if rgb.shape[:2] != size else rgb)
            images.append(views)
            target = sim.object_position(sim.target_object)
            targets.append(target[:2])
            every.append([sim.object_position(name)[:2] for name in sim.object_names])
            offsets.append((target - sim.ee_pose()[0])[:2])
    return Scenes(np.asarray(images, np.uint8), instructions, np.asarray(targets, np.float32),
                  np.asarray(every, np.float32), np.asarray(offsets, np.float32))


class GroundingHead(nn.Module):
    """Learned queries attend over the backbone's token states (embeddings + last layer) -> (x, y[, ...])."""

    def __init__(self, width: int, queries: int = 4, outputs: int = 2):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(queries, width) * 0.1)
        self.mlp = nn.Sequential(nn.Linear(queries * width, 256), nn.GELU(), nn.Linear(256, outputs))

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = torch.einsum("qd,bld->bql", self.queries, hidden) / hidden.shape[-1] ** 0.5
        scores = scores.masked_fill(~mask.bool()[:, None, :], float("-inf"))
        pooled = torch.einsum("bql,bld->bqd", scores.softmax(-1), hidden)
        return self.mlp(pooled.flatten(1))


def pretrain(cfg: PretrainConfig) -> dict:
    from gem_ros.core.policy import backbone as bb
    from gem_ros.core.policy.checkpoint import atomic_directory
    from gem_ros.core.policy.tiny import write_tiny_backbone
    from gem_train.data.augment import random_shift

    torch.manual_seed(cfg.seed)
    held_out = max(1, cfg.scenes // 10)
    train = render_scenes(cfg, cfg.scenes, cfg.seed)
    val = render_scenes(cfg, held_out, 10_000_000 + cfg.seed)
    offsets = cfg.hand_offset_weight > 0
    # Named xy (+ its offset from the hand): one head, each target normalized by its own spread.
    targets = np.concatenate([train.target_xy, train.hand_offset_xy], 1) if offsets else train.target_xy
    mean, std = targets.mean(0), targets.std(0) + 1e-6
    with atomic_directory(cfg.out) as scratch:
        write_tiny_backbone(scratch, cfg.hidden, cfg.text_layers, seed=cfg.seed)
        model = bb.load_backbone(scratch, torch.float32, torch.device("cpu")).train()
        processor = bb.load_processor(scratch)
        head = GroundingHead(cfg.hidden, outputs=targets.shape[1])
        cube_heads = nn.ModuleList([GroundingHead(cfg.hidden) for _ in cfg.colors])   # auxiliary, per colour
        optimizer = torch.optim.AdamW([*model.parameters(), *head.parameters(), *cube_heads.parameters()],
                                      lr=cfg.lr, weight_decay=0.01)
        layers = [0, cfg.text_layers]
        scale, shift = torch.from_numpy(std), torch.from_numpy(mean)
        weights = torch.tensor([1.0, 1.0] + [cfg.hand_offset_weight] * 2 * offsets)

        def predict(batch_images, batch_instructions, all_cubes: bool = False):
            prompt = bb.build_prompts(processor, [list(views) for views in batch_images], batch_instructions, "cpu",
                                      instruction_first=cfg.prompt_order == "instruction_first")
            stack, _ = bb.hidden_state_stack(model, prompt, layers)
            hidden = stack[:, 0] + stack[:, 1]
            named = head(hidden, prompt.attention_mask) * scale + shift
            if not all_cubes:
                return named
            return named, torch.stack([h(hidden, prompt.attention_mask) for h in cube_heads], 1) * scale[:2] + shift[:2]

        def held_out_errors_m() -> dict:
            with torch.no_grad():
                out = np.concatenate([predict(list(val.images[i:i + 64]), val.instructions[i:i + 64]).numpy()
                                      for i in range(0, held_out, 64)])
            errors = {"held_out_median_error_m": float(np.median(np.linalg.norm(out[:, :2] - val.target_xy, axis=1)))}
            if offsets:
                errors["held_out_hand_offset_median_error_m"] = float(
                    np.median(np.linalg.norm(out[:, 2:] - val.hand_offset_xy, axis=1)))
            return errors

        rng = np.random.default_rng(cfg.seed)
        history = [{"step": 0, **held_out_errors_m()}]
        bar = tqdm(range(1, cfg.steps + 1), desc="pretrain", unit="step")
        for step in bar:
            idx = rng.integers(0, cfg.scenes, cfg.batch_size)
            batch = [[random_shift(view, cfg.random_shift_px, rng) for view in train.images[i]]
                     if cfg.random_shift_px else train.images[i] for i in idx]
            named, cubes = predict(batch, [train.instructions[i] for i in idx], all_cubes=True)
            loss = (((named - torch.from_numpy(targets[idx])) / scale).pow(2) * weights).mean()
            if cfg.all_cubes_weight > 0:
                every = torch.from_numpy(train.every_xy[idx])
                loss = loss + cfg.all_cubes_weight * ((cubes - every) / scale[:2]).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if step % 500 == 0 or step == cfg.steps:
                history.append({"step": step, **held_out_errors_m()})
                last = history[-1]
                bar.write(f"step {step}: held-out median error {100 * last['held_out_median_error_m']:.1f} cm" + (
                    f", hand offset {100 * last['held_out_hand_offset_median_error_m']:.1f} cm" if offsets else ""))
        spread = float(np.median(np.linalg.norm(val.target_xy - mean[:2], axis=1)))
        report = {"out": str(cfg.out), "prompt_order": cfg.prompt_order, "colors": list(cfg.colors),
                  "cameras": list(cfg.cameras), "posed_fraction": cfg.posed_fraction,
                  "history": history, "mean_predictor_median_error_m": spread}
        if offsets:
            report["hand_offset_mean_predictor_median_error_m"] = float(
                np.median(np.linalg.norm(val.hand_offset_xy - mean[2:], axis=1)))
        model.save_pretrained(scratch)
        (scratch / GROUNDING_FILE).write_text(json.dumps(report, indent=1))
    return report


def pretrained_prompt_order(backbone_dir: Path) -> str | None:
    """The prompt order a gem_pretrain_sim backbone was grounded with; None for any other backbone folder."""
    path = Path(backbone_dir) / GROUNDING_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("prompt_order", "images_first")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gem_pretrain_sim", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="backbone folder to write (model.backbone)")
    parser.add_argument("--scenes", type=int, default=3000)
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--colors", nargs="+", default=["red", "green", "blue"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="rendering processes (the scenes do not change)")
    parser.add_argument("--coarse-meshes", action="store_true", help="render the robot with its collision meshes")
    parser.add_argument("--all-cubes-weight", type=float, default=1.0,
                        help="auxiliary loss weight: every cube's position from per-colour queries (0: off)")
    parser.add_argument("--prompt-order", choices=PROMPT_ORDERS, default="images_first",
                        help="instruction before or after the image (the policy's model.prompt_order must match)")
    parser.add_argument("--cameras", nargs="+", default=["scene"],
                        help="views in each prompt, in the policy's data.cameras order")
    parser.add_argument("--posed-fraction", type=float, default=0.0,
                        help="share of scenes with the hand on an approach to a random cube (the rest at home)")
    parser.add_argument("--hand-offset-weight", type=float, default=0.0,
                        help="loss weight of the named cube's offset from the hand (0: off)")
    args = parser.parse_args(argv)
    try:
        cfg = PretrainConfig(out=args.out, scenes=args.scenes, steps=args.steps, batch_size=args.batch_size,
                             image_size=args.image_size, colors=args.colors, seed=args.seed,
                             workers=args.workers, coarse_meshes=args.coarse_meshes,
                             all_cubes_weight=args.all_cubes_weight, prompt_order=args.prompt_order,
                             cameras=args.cameras, posed_fraction=args.posed_fraction,
                             hand_offset_weight=args.hand_offset_weight)
        report = pretrain(cfg)
    except ValueError as error:
        print(f"gem_pretrain_sim: {error}", file=sys.stderr)
        return 2
    last = report["history"][-1]["held_out_median_error_m"]
    print(f"gem_pretrain_sim: wrote {report['out']}; held-out median error {100 * last:.1f} cm "
          f"(predicting the mean: {100 * report['mean_predictor_median_error_m']:.1f} cm)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
