"""Checkpoint folder layout and safe file I/O (safetensors + JSON only, write-then-rename).

    <ckpt>/config.json                GemVLAConfig (full I/O schema) + format_version
    <ckpt>/model.safetensors          action expert, reference RDTRunner key layout (model.*, *_adaptor.*)
    <ckpt>/normalizer.safetensors     min/max per key ("action", optionally "state")
    <ckpt>/depth_expert.safetensors   optional: sana.*, vae.*, diffusion_connector.*
    <ckpt>/backbone/                  HF Qwen3-VL folder: config, weights, tokenizer, image processor, chat template
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from gem_ros.core.policy.config import GemVLAConfig

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
NORMALIZER_FILE = "normalizer.safetensors"
DEPTH_FILE = "depth_expert.safetensors"
DEPTH_PREFIXES = ("sana.", "vae.", "diffusion_connector.")


def check_checkpoint_dir(path: Path, config: GemVLAConfig | None = None) -> None:
    if not path.is_dir():
        raise ValueError(f"checkpoint folder {path} does not exist")
    required = [CONFIG_FILE, MODEL_FILE, NORMALIZER_FILE]
    if config is not None:
        required.append(config.backbone_dir)
        if config.depth_expert is not None:
            required.append(DEPTH_FILE)
    missing = [name for name in required if not (path / name).exists()]
    if missing:
        raise ValueError(f"checkpoint {path} is missing {missing}")


def read_config(path: Path) -> GemVLAConfig:
    if not path.is_dir():
        raise ValueError(f"checkpoint folder {path} does not exist")
    config_file = path / CONFIG_FILE
    if not config_file.exists():
        raise ValueError(f"checkpoint {path} is missing {CONFIG_FILE}")
    try:
        data = json.loads(config_file.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{config_file} is not valid JSON: {error}") from error
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"{config_file}: format_version {version!r} is not supported (expected {FORMAT_VERSION})")
    return GemVLAConfig.from_dict(data)


def write_config(path: Path, config: GemVLAConfig) -> None:
    (path / CONFIG_FILE).write_text(json.dumps({"format_version": FORMAT_VERSION, **config.to_dict()}, indent=2))


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file; a truncated or corrupt file becomes a ValueError that names it."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, RuntimeError) as error:
        raise ValueError(f"{path} is corrupt or truncated: {error}") from error


def load_checked(module: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    """Strict load with one clear message listing missing / unexpected / mis-shaped keys."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mis_shaped = [f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    if missing or unexpected or mis_shaped:
        raise ValueError(f"{what} does not match the configured model: missing {missing[:8]}, "
                         f"unexpected {unexpected[:8]}, shape mismatches {mis_shaped[:8]}")
    module.load_state_dict(state_dict, strict=True)


def depth_keys_in_backbone(backbone_dir: Path) -> dict[str, torch.Tensor]:
    """GEM-2B stores its depth generator (sana.*, vae.*, diffusion_connector.*) beside the VLM weights.
    Read only those tensors, lazily, from every shard."""
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(backbone_dir.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as f:
            for key in f.keys():
                if key.startswith(DEPTH_PREFIXES):
                    tensors[key] = f.get_tensor(key)
    return tensors


@contextmanager
def atomic_directory(final: Path) -> Iterable[Path]:
    """Yield a scratch folder beside `final`; on success swap it in, so a crash never leaves a half checkpoint."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    try:
        yield scratch
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    backup = final.parent / f".{final.name}.old-{os.getpid()}"
    if final.exists():
        os.replace(final, backup)
    os.replace(scratch, final)
    shutil.rmtree(backup, ignore_errors=True)
