"""Pictures of a closed-loop episode: a GIF of the scene camera and a PNG panel (views + joint trajectories)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

JOINT_LABELS = [f"joint{i}" for i in range(1, 8)] + ["finger1", "finger2"]


def write_gif(path: Path, frames: list[np.ndarray], fps: float = 5.0) -> None:
    if not frames:
        return
    images = [Image.fromarray(f) for f in frames]
    tmp = path.with_suffix(".tmp.gif")
    images[0].save(tmp, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    tmp.replace(path)


def write_panel(path: Path, title: str, images: dict[str, np.ndarray], joint_t: list[float],
                joint_q: list[np.ndarray], depth: np.ndarray | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    views = list(images.items()) + ([("predicted depth", depth)] if depth is not None else [])
    cols = max(len(views), 1)
    fig = plt.figure(figsize=(4 * cols, 7))
    for i, (name, image) in enumerate(views):
        ax = fig.add_subplot(2, cols, i + 1)
        ax.imshow(image)
        ax.set_title(name)
        ax.axis("off")
    ax = fig.add_subplot(2, 1, 2)
    if joint_q:
        t = np.asarray(joint_t) - joint_t[0]
        q = np.stack(joint_q)
        for j in range(q.shape[1]):
            ax.plot(t, q[:, j], label=JOINT_LABELS[j] if j < len(JOINT_LABELS) else f"q{j}")
        ax.legend(ncol=5, fontsize=7, loc="upper right")
    ax.set_xlabel("sim time [s]")
    ax.set_ylabel("joint position [rad | m]")
    ax.set_title("executed joint trajectories (/joint_states)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_episode_outputs(out: Path, episode: int, instruction: str, log, row: dict) -> None:
    stem = out / f"episode_{episode:02d}"
    write_gif(stem.with_suffix(".gif"), log.frames)
    verdict = "success" if row["success"] else row["outcome"].lower()
    write_panel(stem.with_suffix(".png"), f"episode {episode}: '{instruction}' -> {verdict}",
                log.last_images, log.joint_t, log.joint_q, log.predicted_depth)
    stem.with_suffix(".json").write_text(json.dumps(row, indent=2))
