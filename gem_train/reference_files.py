"""Reading the files of a reference GEM-VLA run (zhaorw02/GEM; gem_checkpoints.md §1-§4) without running its code.

The reference pickles two of them: the RDT runner's weights (`pytorch_model.bin`, a state dict) and the normalizer
(`normalizer.pt`, an nn.ParameterDict of nn.Parameters). Both are opened with torch.load(weights_only=True): torch's
restricted unpickler builds tensors and plain containers, plus the classes allowed here (nn.ParameterDict for the
normalizer, none for the weights), and refuses every other class or function before calling it. Only gem_import
opens these files: serving checkpoints are safetensors + JSON, and the policy refuses pickles in a checkpoint.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn
from torch.serialization import safe_globals

from gem_ros.core.policy.checkpoint import read_json_object
from gem_ros.core.policy.normalizer import RANGE_FLOOR, MinMaxNormalizer

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")   # the hub mixin's load order
NORMALIZER_CLASSES = (nn.ParameterDict,)   # what LinearNormalizer.save pickles, besides tensors and dicts
DISTILLED_PREFIXES = ("generator.", "real_score.")
UNNORMALIZE_TOLERANCE = 1e-5   # |ours - reference| <= this * max(1, |action|) on [-1, 1], or the import is refused


def read_pickled_tensors(path: Path, allowed: tuple[type, ...] = ()) -> dict[str, torch.Tensor]:
    """Every tensor of a torch.save file, by dotted name (nested dicts and nn.ParameterDicts flattened); anything that
    needs a class or function beyond tensors, plain containers and `allowed` is refused unexecuted."""
    try:
        with safe_globals(list(allowed)):
            data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - the restricted unpickler and the zip reader raise many types
        asked = re.search(r"GLOBAL ([\w.]+)", str(error))   # the restricted unpickler names what it refused
        reason = f"it asks for {asked[1]}" if asked else f"{type(error).__name__}: {str(error)[:200]}"
        allowed_names = [f"{c.__module__}.{c.__qualname__}" for c in allowed]
        raise ValueError(f"{path}: refused: reading it needs more than tensors, dicts{', ' if allowed else ''}"
                         f"{', '.join(allowed_names)}, and unpickling anything else can run code ({reason})") from error
    tensors: dict[str, torch.Tensor] = {}
    _flatten(data, "", path, tensors)
    return tensors


def _flatten(value, name: str, path: Path, out: dict[str, torch.Tensor]) -> None:
    if isinstance(value, torch.Tensor):              # nn.Parameter included
        out[name] = value.detach().clone()
        return
    if type(value) is nn.ParameterDict:              # read its fields, never its methods
        fields = vars(value)
        children = {**fields.get("_parameters", {}), **fields.get("_modules", {})}
    elif isinstance(value, dict):
        children = value
    else:
        raise ValueError(f"{path}: '{name or '<top level>'}' is a {type(value).__name__}, not a tensor or a dict")
    for key, child in children.items():
        if not isinstance(key, str):
            raise ValueError(f"{path}: key {key!r} under '{name or '<top level>'}' is not a string")
        _flatten(child, f"{name}.{key}" if name else key, path, out)


def read_rdt_weights(folder: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The RDT runner's state dict and the file it came from (model.safetensors before pytorch_model.bin)."""
    for name in WEIGHT_FILES:
        path = Path(folder) / name
        if path.is_file():
            if path.suffix == ".safetensors":
                try:
                    return load_file(str(path)), path
                except Exception as error:  # noqa: BLE001 - safetensors raises several types; name the file
                    raise ValueError(f"{path}: not a readable safetensors file ({error})") from error
            return read_pickled_tensors(path), path
    raise ValueError(f"{folder} holds no RDT weights: expected one of {list(WEIGHT_FILES)}")


def servable_weights(weights: dict[str, torch.Tensor], source: Path) -> tuple[dict[str, torch.Tensor], bool]:
    """(the weights to serve, distilled?). A distilled run (gem_checkpoints §4) holds generator.* and real_score.*:
    the generator is served, the frozen teacher (real_score) is not."""
    prefixed = [k for k in weights if k.startswith(DISTILLED_PREFIXES)]
    if not prefixed:
        return weights, False
    others = sorted(k for k in weights if not k.startswith(DISTILLED_PREFIXES))
    if others:
        raise ValueError(f"{source}: mixes distilled keys (generator.*, real_score.*) with others {others[:8]}")
    generator = {k[len("generator."):]: v for k, v in weights.items() if k.startswith("generator.")}
    if not generator:
        raise ValueError(f"{source}: a distilled run without generator.* weights (only real_score.*)")
    return generator, True


def read_normalizer_pt(path: Path) -> MinMaxNormalizer:
    """The action statistics of a reference normalizer.pt: {'action': {'scale', 'offset', 'input_stats': ...}}."""
    tensors = read_pickled_tensors(path, NORMALIZER_CLASSES)
    tensors = {k.removeprefix("params_dict."): v for k, v in tensors.items()}
    missing = [k for k in ("action.scale", "action.offset") if k not in tensors]
    if missing:
        raise ValueError(f"{path}: no {missing} (keys: {sorted(tensors)[:12]})")
    return normalizer_from_scale_offset(tensors["action.scale"], tensors["action.offset"], str(path))


def normalizer_from_scale_offset(scale: torch.Tensor, offset: torch.Tensor, source: str) -> MinMaxNormalizer:
    """Ours from the reference's linear map a' = a * scale + offset (unnormalize: (a' - offset) / scale): the actions
    that a' = -1 and +1 stand for are min and max. Refused if ours would not give back the reference's actions."""
    scale = np.asarray(scale.detach().double().reshape(-1).numpy())
    offset = np.asarray(offset.detach().double().reshape(-1).numpy())
    if scale.shape != offset.shape or not (np.all(np.isfinite(scale)) and np.all(np.isfinite(offset))):
        raise ValueError(f"{source}: action scale {scale.shape} and offset {offset.shape} must be finite vectors "
                         "of one length")
    if np.any(scale <= 0):
        raise ValueError(f"{source}: action scale must be > 0 (channels {np.nonzero(scale <= 0)[0].tolist()})")
    minimum, maximum = (-1 - offset) / scale, (1 - offset) / scale
    # The floor stays below every range, so the map is the reference's own and never floored.
    normalizer = MinMaxNormalizer(minimum, maximum, range_floor=min(RANGE_FLOOR, 0.5 * float(np.min(2 / scale))))
    grid = np.linspace(-1, 1, 5, dtype=np.float32)[:, None].repeat(scale.size, axis=1)
    reference = (grid.astype(np.float64) - offset) / scale
    error = np.abs(normalizer.unnormalize(grid).astype(np.float64) - reference) / np.maximum(1, np.abs(reference))
    if not error.max() <= UNNORMALIZE_TOLERANCE:
        raise ValueError(f"{source}: in float32 our min/max form of the action map is off by up to "
                         f"{error.max():.2g} (relative), above {UNNORMALIZE_TOLERANCE:g}: refusing to change actions")
    return normalizer


def read_action_stats(path: Path) -> MinMaxNormalizer:
    """The reference dataset's action_stats.json (action_min / action_max): the map training applied,
    a' = 2 (a - min) / max(max - min, 1e-3) - 1, which is our normalizer with its default floor."""
    data = read_json_object(Path(path))
    try:
        minimum, maximum = (np.asarray(data[k], dtype=np.float64).reshape(-1) for k in ("action_min", "action_max"))
    except KeyError as error:
        raise ValueError(f"{path}: no {error.args[0]!r} (action_stats.json has action_min and action_max)") from error
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: action_min / action_max must be lists of numbers ({error})") from error
    try:
        return MinMaxNormalizer(minimum, maximum, RANGE_FLOOR)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error

