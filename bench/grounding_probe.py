"""Is the named cube's position in a frozen backbone's features, as the policy's prompts give them?

    python bench/grounding_probe.py --backbone runs/tiny_grounded_backbone_lang --data data/sim_pick_lang

For a few steps of each recorded episode (a gem_collect_sim dataset: the cube positions come from re-laying out
the episode's seed), the backbone encodes the policy's prompt (instruction first, scene + wrist views); a small
attention-pooling head (gem_pretrain_sim's GroundingHead) is trained on the training episodes' frozen states to
regress the named cube's table xy, and scored on the held-out episodes (gem_train's split). A low held-out error
with an action expert that still misses the cube says the information is there and the expert does not read it.
Prints the median error per layer choice next to the mean predictor's.
"""
from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gem_ros.core.policy import backbone as bb  # noqa: E402
from gem_ros.sim import SimConfig, TabletopSim  # noqa: E402
from gem_train.data.dataset import split_episodes  # noqa: E402
from gem_train.data.episodes import find_episodes, read_episode  # noqa: E402
from gem_train.pretrain_sim import GroundingHead  # noqa: E402


def frames(paths: list[Path], steps: tuple[int, ...], colors: list[str]) -> list[tuple[list, str, np.ndarray]]:
    """(views, instruction, named cube xy) at `steps` of each episode."""
    out = []
    with TabletopSim(SimConfig(object_colors=colors, coarse_robot_meshes=True)) as sim:
        for path in paths:
            with read_episode(path) as episode:
                sim.reset(episode.meta["episode_seed"])
                if sim.target_object != episode.meta["target_object"]:
                    raise ValueError(f"{path}: its seed lays out another target; not a gem_collect_sim episode?")
                xy = sim.object_position(sim.target_object)[:2].astype(np.float32)
                for step in steps:
                    views = [np.asarray(episode.images[c][step]) for c in episode.camera_names]
                    out.append((views, episode.instructions[step % len(episode.instructions)], xy))
    return out


def encode(model, processor, data: list, layers: list[int], instruction_first: bool) -> tuple:
    """Padded (N, L, len(layers), D) states and (N, L) mask."""
    states, masks = [], []
    for i in range(0, len(data), 64):
        batch = data[i:i + 64]
        prompt = bb.build_prompts(processor, [b[0] for b in batch], [b[1] for b in batch], "cpu", instruction_first)
        with torch.no_grad():
            stack, _ = bb.hidden_state_stack(model, prompt, layers)
        states.append(stack.permute(0, 2, 1, 3))
        masks.append(prompt.attention_mask)
    length = max(s.shape[1] for s in states)
    return (torch.cat([torch.nn.functional.pad(s, (0, 0, 0, 0, 0, length - s.shape[1])) for s in states]),
            torch.cat([torch.nn.functional.pad(m, (0, length - m.shape[1])) for m in masks]))


def probe(train, held_out, steps: int, seed: int) -> float:
    (x, mask, y), (xv, maskv, yv) = train, held_out
    torch.manual_seed(seed)
    mean, std = y.mean(0), y.std(0)
    head = GroundingHead(x.shape[-1])
    optimizer = torch.optim.AdamW(head.parameters(), 1e-3, weight_decay=0.01)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (32,))
        loss = ((head(x[idx], mask[idx]) - (y[idx] - mean) / std) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return float((head(xv, maskv) * std + mean - yv).norm(dim=1).median())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 10, 20], help="episode steps probed")
    parser.add_argument("--probe-steps", type=int, default=3000)
    parser.add_argument("--images-first", action="store_true", help="the prompt order the backbone was trained in")
    args = parser.parse_args()
    torch.set_num_threads(1)
    train_paths, held_out_paths = split_episodes(find_episodes(args.data), 0.1, 0)
    colors = ["red", "green", "blue"]
    train, held_out = frames(train_paths, tuple(args.steps), colors), frames(held_out_paths, tuple(args.steps), colors)
    model = bb.load_backbone(args.backbone, torch.float32, torch.device("cpu")).eval()
    processor = bb.load_processor(args.backbone)
    last = model.config.text_config.num_hidden_layers
    x, mask = encode(model, processor, train, [0, last], not args.images_first)
    xv, maskv = encode(model, processor, held_out, [0, last], not args.images_first)
    y, yv = (torch.tensor(np.array([f[2] for f in d])) for d in (train, held_out))
    print(f"{platform.node()} ({platform.machine()}), {len(train_paths)} training / {len(held_out_paths)} held-out "
          f"episodes, steps {args.steps}, probe {args.probe_steps} steps")
    print(f"mean predictor: {100 * float((yv - y.mean(0)).norm(dim=1).median()):.1f} cm")
    for name, pick in (("embeddings + last layer", lambda s: s.sum(2)), ("last layer", lambda s: s[:, :, 1]),
                       ("embeddings", lambda s: s[:, :, 0])):
        error = probe((pick(x), mask, y), (pick(xv), maskv, yv), args.probe_steps, seed=0)
        print(f"{name:>24}: held-out median error {100 * error:.1f} cm")
    return 0


if __name__ == "__main__":
    sys.exit(main())
