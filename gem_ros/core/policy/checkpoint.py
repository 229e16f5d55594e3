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

from gem_ros.core.policy.action_expert import ActionExpert
from gem_ros.core.policy.config import GemVLAConfig

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
NORMALIZER_FILE = "normalizer.safetensors"
DEPTH_FILE = "depth_expert.safetensors"
DEPTH_PREFIXES = ("sana.", "vae.", "diffusion_connector.")
WEIGHT_DTYPES = ("F16", "BF16", "F32", "F64")   # safetensors dtype names a weight may be stored in
# Pickled weights can run code when opened: never loaded, refused before transformers sees a folder.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def check_checkpoint_dir(path: Path, config: GemVLAConfig | None = None) -> None:
    """The files exist; with `config`, everything is also checked against it before any of it is loaded: the
    backbone folder (no pickles, its layer count and width), the weights' names, shapes and dtypes (read from the
    safetensors header, so a config that disagrees never allocates its model) and the normalizer's channels."""
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
    if config is None:
        return
    # backbone and normalizer import this module's file helpers: imported here, not at the top.
    from gem_ros.core.policy.backbone import check_backbone_fits
    from gem_ros.core.policy.normalizer import load_normalizers

    check_backbone_fits(path / config.backbone_dir, config, path / CONFIG_FILE)
    check_weights(path / MODEL_FILE, expected_weights(config))
    if config.depth_expert is not None:
        safetensors_header(path / DEPTH_FILE)   # readable; names and shapes are checked as it loads
    normalizers, io = load_normalizers(path / NORMALIZER_FILE), config.io
    needed = {"action": io.action_dim, **({"state": io.state_dim} if io.normalize_state else {})}
    for key, dim in needed.items():
        if key not in normalizers:
            raise ValueError(f"{path / NORMALIZER_FILE} has no '{key}' statistics (io.normalize_state is "
                             f"{io.normalize_state})")
        if normalizers[key].dim != dim:
            raise ValueError(f"{path / NORMALIZER_FILE}: '{key}' statistics have {normalizers[key].dim} channels, "
                             f"{CONFIG_FILE} says io.{key}_dim = {dim}")


def expected_weights(config: GemVLAConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of the action expert's state dict for `config`, built on the meta device (no memory)."""
    with torch.device("meta"):
        expert = ActionExpert(config.rdt, config.io.action_dim, config.io.state_dim, config.io.chunk_len)
    return {name: tuple(tensor.shape) for name, tensor in expert.state_dict().items()}


def check_weights(path: Path, expected: Mapping[str, tuple[int, ...]]) -> None:
    """Names, shapes and dtypes of a safetensors file against `expected`, from its header only."""
    header = safetensors_header(path)
    missing = sorted(set(expected) - set(header))
    unexpected = sorted(set(header) - set(expected))
    mis_shaped = [f"{k}: file {header[k][1]} vs config {expected[k]}" for k in expected
                  if k in header and header[k][1] != expected[k]]
    if missing or unexpected or mis_shaped:
        raise ValueError(f"{path} does not match {CONFIG_FILE}: missing {missing[:8]}, unexpected {unexpected[:8]}, "
                         f"shape mismatches {mis_shaped[:8]}")
    bad_dtype = [f"{k}: {dtype}" for k, (dtype, _) in header.items() if dtype not in WEIGHT_DTYPES]
    if bad_dtype:
        raise ValueError(f"{path}: weights must be floating point {WEIGHT_DTYPES}, got {bad_dtype[:8]}")


def safetensors_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Name -> (dtype, shape) of every tensor, read from the header without loading any; a file that is not
    safetensors, or is truncated, is a ValueError that names it."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {key: (f.get_slice(key).get_dtype(), tuple(f.get_slice(key).get_shape())) for key in f.keys()}
    except (SafetensorError, OSError, RuntimeError, ValueError) as error:
        raise ValueError(f"{path}: not a safetensors file, or corrupt or truncated ({error})") from error


def read_json_object(path: Path) -> dict:
    """A JSON file holding an object; anything else is a ValueError that names the file."""
    try:
        data = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def refuse_pickles(folder: Path) -> None:
    if not Path(folder).is_dir():
        return   # nothing in it to refuse; the loader that follows names the missing folder
    pickles = sorted(p.name for p in Path(folder).iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise ValueError(f"{folder} holds {pickles}: pickled files are never opened (unpickling can run code); "
                         "delete them, and store weights as *.safetensors")


def read_config(path: Path) -> GemVLAConfig:
    if not path.is_dir():
        raise ValueError(f"checkpoint folder {path} does not exist")
    config_file = path / CONFIG_FILE
    if not config_file.exists():
        raise ValueError(f"checkpoint {path} is missing {CONFIG_FILE}")
    data = read_json_object(config_file)
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"{config_file}: format_version {version!r} is not supported (expected {FORMAT_VERSION})")
    try:
        return GemVLAConfig.from_dict(data)
    except (TypeError, ValueError) as error:   # the message names the field; this names the file
        raise ValueError(f"{config_file}: {error}") from error


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
    # load_state_dict would silently cast an integer tensor into a float weight (and back)
    wrong_kind = [f"{k}: file {v.dtype} vs model {own[k].dtype}" for k, v in state_dict.items()
                  if v.is_floating_point() != own[k].is_floating_point()]
    if wrong_kind:
        raise ValueError(f"{what}: tensors of the wrong kind of dtype: {wrong_kind[:8]}")
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
