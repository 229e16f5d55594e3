"""gem_eval: how good is a checkpoint?

    gem_eval offline --checkpoint CKPT --data data/sim_pick [--out outputs/eval]   # held-out action error + plots
    gem_eval sim --checkpoint CKPT --episodes 10 [--seed 0] [--out outputs/eval_sim] # closed-loop success rate
    gem_eval sim --checkpoint CKPT --random-policy ...    # the untrained baseline in the same scene
    gem_eval rollout --checkpoint CKPT --episodes 20      # the same sim without ROS: the policy alone, fast
    gem_eval sensitivity --checkpoint CKPT --data DIR     # images or copied state? does the instruction matter?

`offline` replays held-out episodes (the same episode split as `gem_train`: `--val-fraction`, `--split-seed`)
through the policy and reports per-channel absolute error of the predicted chunk against the recorded actions,
in robot units, with a PNG of predicted vs recorded trajectories. `sim` runs seeded episodes of the embedded
simulator through the real ROS nodes (the gem_demo machinery), with a GIF and PNG per episode. `sim` and
`rollout` name the cube colours in turn and report success and wrong-object (another cube lifted) rates per
colour and per instruction, with 95 % Wilson intervals and the layout seeds used (a table, and JSON in --out).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm


def offline(checkpoint: Path, data_dir: Path, out: Path, val_fraction: float = 0.1, split_seed: int = 0,
            stride: int = 4, max_episodes: int = 10, device: str = "auto") -> dict:
    from gem_ros.core.policy.gem_vla import GemVLAPolicy
    from gem_ros.core.policy.observation import Observation
    from gem_train.data.dataset import ChunkDataset, ChunkDatasetConfig, split_episodes
    from gem_train.data.episodes import find_episodes

    policy = GemVLAPolicy.from_pretrained(checkpoint, device=device)
    io = policy.config.io
    _, held_out = split_episodes(find_episodes(data_dir), val_fraction, split_seed)
    if not held_out:
        raise ValueError(f"no held-out episodes in {data_dir} with val_fraction={val_fraction}")
    dataset = ChunkDataset(held_out[:max_episodes], ChunkDatasetConfig.from_io_schema(io))
    errors, first_errors, plot_rows = [], [], []
    for index in tqdm(range(0, len(dataset), stride), desc="offline eval", unit="chunk"):
        sample = dataset[index]
        obs = Observation(dict(zip(io.camera_names, sample["images"])), sample["state"], sample["instruction"])
        predicted = policy.predict_action_chunk(obs, seed=index)
        error = np.abs(predicted - sample["actions"])
        errors.append(error.mean(axis=0))
        first_errors.append(error[0])
        if dataset.locate(index)[0] == 0:
            plot_rows.append((dataset.locate(index)[1], predicted, sample["actions"]))
    names = list(io.action_names) or [f"action_{i}" for i in range(io.action_dim)]
    report = {"checkpoint": str(checkpoint), "episodes": min(len(held_out), max_episodes), "chunks": len(errors),
              "mae_chunk": dict(zip(names, np.mean(errors, axis=0).round(5).tolist())),
              "mae_first_action": dict(zip(names, np.mean(first_errors, axis=0).round(5).tolist()))}
    out.mkdir(parents=True, exist_ok=True)
    (out / "offline_eval.json").write_text(json.dumps(report, indent=2))
    plot_episode(out / "offline_eval.png", plot_rows, names, io.control_rate_hz)
    return report


def plot_episode(path: Path, rows, names: list[str], rate_hz: float) -> None:
    """Predicted chunks (thin lines, one per query step) over the recorded actions of one episode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 4
    fig, axes = plt.subplots((len(names) + cols - 1) // cols, cols, figsize=(16, 3 * ((len(names) + 3) // 4)))
    for j, ax in enumerate(np.ravel(axes)):
        if j >= len(names):
            ax.axis("off")
            continue
        for step, predicted, recorded in rows:
            t = (step + np.arange(len(recorded))) / rate_hz
            ax.plot(t, recorded[:, j], color="black", linewidth=2, alpha=0.4)
            ax.plot(t, predicted[:, j], color="tab:red", linewidth=1)
        ax.set_title(names[j])
        ax.set_xlabel("s")
    fig.suptitle("held-out episode: recorded actions (grey) vs predicted chunks (red)")
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gem_eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    off = sub.add_parser("offline", help="held-out action error and trajectory plots")
    off.add_argument("--checkpoint", type=Path, required=True)
    off.add_argument("--data", type=Path, required=True)
    off.add_argument("--out", type=Path, default=Path("outputs/eval"))
    off.add_argument("--val-fraction", type=float, default=0.1)
    off.add_argument("--split-seed", type=int, default=0)
    off.add_argument("--stride", type=int, default=4)
    off.add_argument("--max-episodes", type=int, default=10)
    sim = sub.add_parser("sim", help="closed-loop success rate in the embedded simulator (real ROS nodes)")
    sim.add_argument("--checkpoint", type=Path, default=None)
    sim.add_argument("--random-policy", action="store_true",
                     help="the untrained baseline (a tiny random GEM-VLA) in the scene of --checkpoint")
    sim.add_argument("--episodes", type=int, default=10)
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--episode-timeout", type=float, default=12.0)
    sim.add_argument("--out", type=Path, default=Path("outputs/eval_sim"))
    roll = sub.add_parser("rollout", help="direct closed loop in the embedded simulator, no ROS (gem_train.rollout)")
    roll.add_argument("--checkpoint", type=Path, required=True)
    roll.add_argument("--episodes", type=int, default=20)
    roll.add_argument("--seed", type=int, default=0)
    roll.add_argument("--execute", type=int, default=0, help="actions executed per chunk (0: half the chunk)")
    roll.add_argument("--episode-timeout", type=float, default=12.0)
    roll.add_argument("--executor", action="store_true",
                      help="execute through the executor core and JTC follower as gem_demo does (no ROS)")
    roll.add_argument("--latency", type=float, default=0.0, help="--executor: seconds from request to chunk")
    roll.add_argument("--out", type=Path, default=Path("outputs/eval_rollout"))
    sens = sub.add_parser("sensitivity", help="chunk change when images or state are swapped (copycat check)")
    sens.add_argument("--checkpoint", type=Path, required=True)
    sens.add_argument("--data", type=Path, required=True)
    sens.add_argument("--steps", type=int, nargs="+", default=[0, 15, 30])
    sens.add_argument("--episodes", type=int, default=10)
    args = parser.parse_args(argv)
    if args.mode in ("rollout", "sensitivity"):
        from gem_train import rollout

        report = rollout.rollout(args.checkpoint, args.episodes, args.seed, args.execute, args.episode_timeout,
                                 args.out, executor=args.executor, latency_s=args.latency) \
            if args.mode == "rollout" else \
            rollout.sensitivity(args.checkpoint, args.data, args.steps, args.episodes)
        print(json.dumps(report, indent=2))
        if args.mode == "rollout":
            from gem_ros.demo_report import outcome_table

            print(outcome_table(report["outcomes"]))
        return 0
    if args.mode == "offline":
        report = offline(args.checkpoint, args.data, args.out, args.val_fraction, args.split_seed, args.stride,
                         args.max_episodes)
        print(json.dumps(report, indent=2))
        return 0
    from gem_ros.demo import main as run_episodes

    if args.checkpoint is None and not args.random_policy:
        parser.error("gem_eval sim needs --checkpoint (or --random-policy for the untrained baseline)")
    return run_episodes((["--checkpoint", str(args.checkpoint)] if args.checkpoint else [])
                        + (["--random-policy"] if args.random_policy else [])
                        + ["--episodes", str(args.episodes), "--seed", str(args.seed),
                           "--episode-timeout", str(args.episode_timeout), "--out", str(args.out)])


if __name__ == "__main__":
    raise SystemExit(main())
