"""gem_train killed with SIGKILL and resumed with --resume ends bit-identical to the uninterrupted run, with every
augmentation of the episode dataset on (image and instruction dropout, shift, colour jitter, state noise).

Real processes, real episodes on disk: the in-process kill of test_train_loop keeps the Python objects alive and
so cannot catch state that lives only in memory (the dataset's random draws were such state).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from gem_ros.core.policy.checkpoint import read_tensors
from gem_train.checkpointing import STATE_FILE, STATE_JSON, list_checkpoints, verify_checkpoint
from gem_train.config import load_config, save_config
from gem_train.data import EpisodeData, write_episode

ROOT = Path(__file__).resolve().parents[1]
STEPS, EVERY, SIZE = 12, 4, 32


def write_episodes(folder: Path, count: int = 3, steps: int = 8) -> None:
    folder.mkdir(parents=True)
    for k in range(count):
        rng = np.random.default_rng(k)
        images = {c: rng.integers(0, 256, (steps, SIZE, SIZE, 3), dtype=np.uint8) for c in ("scene", "wrist")}
        write_episode(folder / f"episode_{k}.hdf5", EpisodeData(
            actions=rng.normal(size=(steps, 8)).astype(np.float32),
            states=rng.normal(size=(steps, 9)).astype(np.float32),
            images=images, instructions=["pick up the red cube", "grasp the red block"],
            meta={"control_rate_hz": 10.0}), compression="lzf")


def write_config(tmp: Path, run: str) -> Path:
    overrides = [
        f"data.dataset_dirs=[{tmp / 'episodes'}]", f"run_dir={tmp / run}", "data.val_fraction=0",
        f"data.image_size={SIZE}", "data.chunk_len=4", "data.state_dim=9", "data.action_dim=8",
        "data.image_drop_prob=0.3", "data.instruction_drop_prob=0.3", "data.color_jitter=true",
        "data.random_shift_px=3", "data.state_noise_std=0.05",
        "model.rdt={hidden_size: 32, depth: 2, num_heads: 4, num_kv_heads: 2, num_register_tokens: 2, "
        "ffn_multiple_of: 16, timestep_freq_dim: 32}", "model.selected_layers=[1, 2]",
        "model.tiny_hidden=32", "model.tiny_text_layers=2",
        "train.lr=3e-3", "train.batch_size=4", "train.mixed_precision=no", "train.num_workers=0",
        f"train.max_steps={STEPS}", f"train.checkpoint_every={EVERY}", "train.keep_last=10",
        "train.eval_every=1000", "train.log_every=1000"]
    path = tmp / f"{run}.yaml"
    save_config(load_config(None, overrides), path)
    return path


def gem_train(config: Path, *extra: str) -> subprocess.Popen:
    """The CLI in a process of its own; its output goes to <config>.log (a pipe nobody reads could fill up)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}   # same float reductions in every run
    with open(config.with_suffix(".log"), "a") as log:
        return subprocess.Popen([sys.executable, "-m", "gem_train.train", "--config", str(config), *extra],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def log_tail(config: Path) -> str:
    return config.with_suffix(".log").read_text()[-3000:]


def finish(proc: subprocess.Popen, config: Path) -> None:
    assert proc.wait(timeout=120) == 0, log_tail(config)


def all_tensors(step_dir: Path) -> dict[str, torch.Tensor]:
    tensors = {f"expert.{k}": v for k, v in read_tensors(step_dir / "model.safetensors").items()}
    for shard in sorted((step_dir / "backbone").glob("*.safetensors")):
        tensors.update({f"backbone.{k}": v for k, v in read_tensors(shard).items()})
    tensors.update({k: v for k, v in read_tensors(step_dir / STATE_FILE).items() if k.startswith("optimizer.")})
    return tensors


def max_difference(expected: dict, got: dict) -> float:
    assert expected.keys() == got.keys()
    return max(float((expected[k].double() - got[k].double()).abs().max()) for k in expected)


def test_sigkilled_run_resumes_bit_exactly_with_augmentations_on(tmp_path):
    write_episodes(tmp_path / "episodes")
    straight_config, killed_config = write_config(tmp_path, "straight"), write_config(tmp_path, "killed")
    straight = gem_train(straight_config)     # runs beside the killed one (2 cores: one each)
    killed = gem_train(killed_config)
    killed_dir = tmp_path / "killed"
    deadline = time.monotonic() + 120
    while not any(int(p.name.split("_")[1]) >= EVERY and not verify_checkpoint(p)
                  for p in list_checkpoints(killed_dir)):
        assert killed.poll() is None, f"gem_train ended before its first checkpoint: {log_tail(killed_config)}"
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.01)
    os.kill(killed.pid, signal.SIGKILL)
    assert killed.wait(timeout=30) == -signal.SIGKILL
    left = [p.name for p in list_checkpoints(killed_dir)]
    assert f"step_{STEPS}" not in left, f"the run finished before the kill: {left}"

    finish(gem_train(killed_config, "--resume"), killed_config)
    finish(straight, straight_config)
    first = left[0]   # written before the kill: identical, so training itself is deterministic here
    assert max_difference(all_tensors(tmp_path / "straight" / "checkpoints" / first),
                          all_tensors(killed_dir / "checkpoints" / first)) == 0.0
    final = f"step_{STEPS}"
    expected = all_tensors(tmp_path / "straight" / "checkpoints" / final)
    got = all_tensors(killed_dir / "checkpoints" / final)
    different = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert not different, (f"{len(different)} of {len(expected)} tensors differ after resuming from {left}, "
                           f"max |diff| {max_difference(expected, got):.3g}: {different[:4]}")
    positions = [json.loads((d / "checkpoints" / final / STATE_JSON).read_text())["position"]
                 for d in (tmp_path / "straight", killed_dir)]
    assert positions[0] == positions[1]
