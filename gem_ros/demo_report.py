"""Reports of closed-loop episodes: a GIF of the scene camera and a PNG panel (views + joint trajectories) per
episode, and success / wrong-object rates per colour and per instruction with 95 % Wilson intervals."""
from __future__ import annotations

import json
import math
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


Z_95 = 1.959964   # two-sided 95 % normal quantile


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (Wilson 1927; Brown, Cai & DasGupta 2001 recommend it
    over the normal interval for small n and rates near 0 or 1). (0, 1) when there are no trials."""
    if trials == 0:
        return 0.0, 1.0
    rate = successes / trials
    centre = (rate + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z / (1 + z * z / trials) * math.sqrt(rate * (1 - rate) / trials + z * z / (4 * trials * trials))
    return max(0.0, centre - half), min(1.0, centre + half)


def _rate(rows: list[dict], key: str, value) -> dict:
    hits, n = sum(r[key] == value for r in rows), len(rows)
    low, high = wilson_interval(hits, n)
    return {"count": hits, "episodes": n, "rate": round(hits / n, 4) if n else None,
            "ci95": [round(low, 4), round(high, 4)]}


def outcome_summary(rows: list[dict]) -> dict:
    """Rates over episode rows that carry "task" ("success" | "wrong object" | "failure"), "target",
    "instruction" and "seed": overall, per target colour and per instruction."""
    def block(subset: list[dict]) -> dict:
        return {"success": _rate(subset, "task", "success"), "wrong_object": _rate(subset, "task", "wrong object")}

    groups = {key: sorted({r[key] for r in rows}) for key in ("target", "instruction")}
    return {"episodes": len(rows), "seeds": [r["seed"] for r in rows], **block(rows),
            "by_target": {t: block([r for r in rows if r["target"] == t]) for t in groups["target"]},
            "by_instruction": {i: block([r for r in rows if r["instruction"] == i]) for i in groups["instruction"]}}


def outcome_table(summary: dict) -> str:
    """The summary as a fixed-width table: one line per target, per instruction, and overall."""
    def line(name: str, block: dict) -> str:
        s, w = block["success"], block["wrong_object"]
        return (f"{name:<28} {s['count']:>3}/{s['episodes']:<3} {100 * (s['rate'] or 0):5.1f} %  "
                f"[{100 * s['ci95'][0]:5.1f}, {100 * s['ci95'][1]:5.1f}]   {w['count']:>3} "
                f"{100 * (w['rate'] or 0):5.1f} %  [{100 * w['ci95'][0]:5.1f}, {100 * w['ci95'][1]:5.1f}]")

    seeds = summary["seeds"]
    head = (f"{'':<28} {'success':>7} {'rate':>7}  {'95 % CI (Wilson)':<16}   {'wrong object':<12}  95 % CI\n")
    body = [line(t, b) for t, b in summary["by_target"].items()]
    body += [line(f"'{i}'", b) for i, b in summary["by_instruction"].items()]
    body.append(line("all", summary))
    span = f"{min(seeds)}..{max(seeds)}" if seeds else "none"
    return head + "\n".join(body) + f"\nepisode seeds: {span} ({len(seeds)} episodes)"
