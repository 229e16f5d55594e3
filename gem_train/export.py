"""gem_export: turn a training checkpoint into the serving checkpoint that `GemVLAPolicy.from_pretrained` loads.

    gem_export --checkpoint runs/sim_pick_tiny/checkpoints/step_3000 --out checkpoints/sim_pick_tiny
    gem_export --checkpoint runs/sim_pick_tiny --out checkpoints/sim_pick_tiny     # newest complete checkpoint
    gem_export --checkpoint ... --out ... --noise-scale 0.5     # serve with a narrower starting noise (config.json)

Only the serving files are copied (config.json, model.safetensors, normalizer.safetensors, optional
depth_expert.safetensors, backbone/); trainer state stays behind. The copy is loaded once and asked for one
action chunk before it is renamed into place, so `--out` never holds a checkpoint that does not load.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
from transformers.utils import logging as transformers_logging

from gem_ros.core.policy import checkpoint as ckpt
from gem_ros.core.policy.gem_vla import GemVLAPolicy
from gem_ros.core.policy.observation import Observation
from gem_train.checkpointing import CHECKPOINTS_DIR, STATE_JSON, find_resume_checkpoint, verify_checkpoint


def resolve_checkpoint(path: Path) -> Path:
    """A step folder (checked against its manifest when it is a training checkpoint) or a run folder."""
    path = Path(path)
    if (path / CHECKPOINTS_DIR).is_dir():
        return find_resume_checkpoint(path)
    if (path / STATE_JSON).exists():
        problems = verify_checkpoint(path)
        if problems:
            raise ValueError(f"checkpoint {path} is incomplete or corrupt: {'; '.join(problems)}")
    return path


def serving_files(path: Path) -> list[str]:
    config = ckpt.read_config(path)
    ckpt.check_checkpoint_dir(path, config)
    names = [ckpt.CONFIG_FILE, ckpt.MODEL_FILE, ckpt.NORMALIZER_FILE, config.backbone_dir]
    return names + ([ckpt.DEPTH_FILE] if config.depth_expert is not None else [])


def export_checkpoint(checkpoint: Path, out: Path, device: str = "cpu", verify: bool = True,
                      noise_scale: float | None = None) -> Path:
    source = resolve_checkpoint(checkpoint)
    out = Path(out)
    if out.resolve() == source.resolve():
        raise ValueError(f"--out {out} is the checkpoint itself")
    with ckpt.atomic_directory(out) as scratch:
        for name in serving_files(source):
            if (source / name).is_dir():
                shutil.copytree(source / name, scratch / name)
            else:
                shutil.copy2(source / name, scratch / name)
        if noise_scale is not None:   # a serving setting: validated by GemVLAConfig like every other field
            config = ckpt.read_config(scratch)
            ckpt.write_config(scratch, type(config).from_dict({**config.to_dict(), "noise_scale": noise_scale}))
        if verify:
            check_loads(scratch, device)
    return out


def check_loads(path: Path, device: str = "cpu") -> np.ndarray:
    """Load `path` the way the robot will and predict one chunk from a blank observation."""
    policy = GemVLAPolicy.from_pretrained(path, device=device)
    io = policy.config.io
    observation = Observation(images={c.name: np.zeros((c.height, c.width, 3), np.uint8) for c in io.cameras},
                              state=np.zeros(io.state_dim, np.float32), instruction="export check")
    chunk = policy.predict_action_chunk(observation, seed=0)
    if chunk.shape != (io.chunk_len, io.action_dim):
        raise ValueError(f"exported policy predicted a {chunk.shape} chunk, expected {(io.chunk_len, io.action_dim)}")
    return chunk


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gem_export", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, type=Path, help="a step_<N> folder or a run folder")
    parser.add_argument("--out", required=True, type=Path, help="serving checkpoint folder to (re)write")
    parser.add_argument("--device", default="cpu", help="device for the verification load (cpu, cuda, auto)")
    parser.add_argument("--skip-verify", action="store_true", help="do not load the exported checkpoint once")
    parser.add_argument("--noise-scale", type=float, help="std of the sampler's starting noise, in [0, 1] "
                                                          "(default: the checkpoint's)")
    args = parser.parse_args(argv)
    transformers_logging.disable_progress_bar()
    try:
        out = export_checkpoint(args.checkpoint, args.out, args.device, verify=not args.skip_verify,
                                noise_scale=args.noise_scale)
    except ValueError as error:
        print(f"gem_export: {error}", file=sys.stderr)
        return 2
    print(f"gem_export: wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
