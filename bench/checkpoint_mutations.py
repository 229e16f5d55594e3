"""Broken checkpoints: each mutation damages one file of a valid GEM-VLA checkpoint folder in one way.

Loading the result must fail with a ValueError that names the damaged file (`Mutation.file`) and what is wrong
with it (`Mutation.field`): test/test_fault_checkpoints.py asserts this for every entry, and the soak script
reuses the list. Usage:

    for mutation in MUTATIONS:
        broken = mutated_copy(valid_checkpoint, scratch / mutation.name, mutation)
        GemVLAPolicy.from_pretrained(broken)   # -> ValueError naming mutation.file and mutation.field
"""
from __future__ import annotations

import json
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str                        # path inside the checkpoint that the refusal must name
    field: str                       # text the refusal must contain: the field, key or fault
    apply: Callable[[Path], None]    # damages the checkpoint folder it is given, in place


def mutated_copy(source: Path, dest: Path, mutation: Mutation) -> Path:
    """A copy of the checkpoint folder `source` at `dest`, damaged by `mutation`."""
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(source, dest)
    mutation.apply(Path(dest))
    return Path(dest)


# ---------------------------------------------------------------------------------------------------- edits
def _config(edit: Callable[[dict], None], file: str = "config.json") -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        data = json.loads((path / file).read_text())
        edit(data)
        (path / file).write_text(json.dumps(data))   # NaN / Infinity are written as JSON's NaN / Infinity tokens
    return apply


def _set(*keys_and_value) -> Callable[[dict], None]:
    """_set("io", "chunk_len", -1): data["io"]["chunk_len"] = -1 (an int key indexes a list)."""
    *keys, value = keys_and_value

    def edit(data: dict) -> None:
        for key in keys[:-1]:
            data = data[key]
        data[keys[-1]] = value
    return edit


def _delete(*keys) -> Callable[[dict], None]:
    def edit(data: dict) -> None:
        for key in keys[:-1]:
            data = data[key]
        del data[keys[-1]]
    return edit


def _write(file: str, data: bytes) -> Callable[[Path], None]:
    return lambda path: (path / file).write_bytes(data)


def _truncate(file: str) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        data = (path / file).read_bytes()
        (path / file).write_bytes(data[: len(data) // 2])
    return apply


def _tensors(file: str, edit: Callable[[dict], None], metadata: dict | None = None) -> Callable[[Path], None]:
    """Rewrite a safetensors file with `edit` applied to its {name: array} (metadata kept unless replaced)."""
    def apply(path: Path) -> None:
        from safetensors import safe_open

        with safe_open(str(path / file), framework="numpy") as f:
            kept = f.metadata()
        tensors = load_file(str(path / file))
        edit(tensors)
        save_file(tensors, str(path / file), metadata=kept if metadata is None else metadata)
    return apply


def _first_weight(tensors: dict) -> str:
    return sorted(k for k in tensors if k.endswith(".weight"))[0]


def _pickle_payload() -> bytes:
    return pickle.dumps({"weight": [1.0, 2.0]})   # harmless; it must not even be opened


# ------------------------------------------------------------------------------------------------ the list
MUTATIONS: list[Mutation] = [
    # config.json: not a config at all
    Mutation("config_not_json", "config.json", "not valid JSON", _write("config.json", b"{not json")),
    Mutation("config_not_utf8", "config.json", "not valid JSON", _write("config.json", b"\xff\xfe\x00garbage")),
    Mutation("config_not_object", "config.json", "JSON object", _write("config.json", b"[1, 2, 3]")),
    Mutation("config_empty", "config.json", "not valid JSON", _write("config.json", b"")),
    Mutation("config_no_format_version", "config.json", "format_version", _config(_delete("format_version"))),
    Mutation("config_unknown_field", "config.json", "bogus", _config(_set("bogus", 1))),
    # config.json: sizes and indices out of bounds or of the wrong type
    Mutation("camera_height_1e9", "config.json", "height", _config(_set("io", "cameras", 0, "height", 10 ** 9))),
    Mutation("camera_width_zero", "config.json", "width", _config(_set("io", "cameras", 0, "width", 0))),
    Mutation("camera_height_negative", "config.json", "height", _config(_set("io", "cameras", 1, "height", -64))),
    Mutation("camera_height_float", "config.json", "height", _config(_set("io", "cameras", 0, "height", 64.5))),
    Mutation("camera_aspect_ratio", "config.json", "aspect ratio",
             _config(_set("io", "cameras", 0, {"name": "scene", "height": 4, "width": 4096}))),
    Mutation("camera_no_name", "config.json", "io.cameras[0]",
             _config(_set("io", "cameras", 0, {"height": 64, "width": 64}))),
    Mutation("cameras_empty", "config.json", "io.cameras", _config(_set("io", "cameras", []))),
    Mutation("io_not_object", "config.json", "io", _config(_set("io", "cameras and joints"))),
    Mutation("state_dim_zero", "config.json", "io.state_dim", _config(_set("io", "state_dim", 0))),
    Mutation("action_dim_1e9", "config.json", "io.action_dim", _config(_set("io", "action_dim", 10 ** 9))),
    Mutation("chunk_len_negative", "config.json", "io.chunk_len", _config(_set("io", "chunk_len", -8))),
    Mutation("chunk_len_1e9", "config.json", "io.chunk_len", _config(_set("io", "chunk_len", 10 ** 9))),
    Mutation("control_rate_nan", "config.json", "io.control_rate_hz",
             _config(_set("io", "control_rate_hz", float("nan")))),
    Mutation("control_rate_1e9", "config.json", "io.control_rate_hz", _config(_set("io", "control_rate_hz", 1e9))),
    Mutation("gripper_channel_99", "config.json", "io.gripper_channels", _config(_set("io", "gripper_channels", [99]))),
    Mutation("state_names_duplicated", "config.json", "io.state_names",
             _config(_set("io", "state_names", ["j0"] * 9))),
    Mutation("selected_layers_99", "config.json", "selected_layers", _config(_set("selected_layers", [1, 99]))),
    Mutation("selected_layers_4_of_3", "config.json", "num_hidden_layers", _config(_set("selected_layers", [1, 4]))),
    Mutation("selected_layers_negative", "config.json", "selected_layers", _config(_set("selected_layers", [-1, 2]))),
    Mutation("selected_layers_not_list", "config.json", "selected_layers", _config(_set("selected_layers", 2))),
    Mutation("selected_layers_count", "config.json", "selected_layers", _config(_set("selected_layers", [0, 1, 2]))),
    Mutation("rdt_hidden_negative", "config.json", "rdt.hidden_size", _config(_set("rdt", "hidden_size", -32))),
    Mutation("rdt_depth_1e6", "config.json", "rdt.depth", _config(_set("rdt", "depth", 10 ** 6))),
    Mutation("rdt_unknown_field", "config.json", "rdt", _config(_set("rdt", "bogus", 1))),
    Mutation("rdt_cond_hidden_mismatch", "config.json", "rdt.cond_hidden_size",
             _config(_set("rdt", "cond_hidden_size", 128))),
    Mutation("inference_steps_1e9", "config.json", "num_inference_steps",
             _config(_set("num_inference_steps", 10 ** 9))),
    Mutation("noise_scale_5", "config.json", "noise_scale", _config(_set("noise_scale", 5))),
    Mutation("max_pixels_text", "config.json", "max_pixels_per_image", _config(_set("max_pixels_per_image", "x"))),
    Mutation("backbone_dir_escapes", "config.json", "backbone_dir", _config(_set("backbone_dir", "../backbone"))),
    Mutation("backbone_dir_absolute", "config.json", "backbone_dir", _config(_set("backbone_dir", "/etc"))),
    Mutation("depth_expert_file_missing", "depth_expert.safetensors", "missing",
             _config(_set("depth_expert", {"sana": {}}))),
    # model.safetensors: damaged, or not the model config.json describes
    Mutation("model_config_disagrees", "model.safetensors", "shape mismatches",
             _config(_set("rdt", "hidden_size", 64))),
    Mutation("model_truncated", "model.safetensors", "not a safetensors file", _truncate("model.safetensors")),
    Mutation("model_garbage", "model.safetensors", "not a safetensors file",
             _write("model.safetensors", b"\xff" * 64)),
    Mutation("model_empty", "model.safetensors", "not a safetensors file", _write("model.safetensors", b"")),
    Mutation("model_deleted", "model.safetensors", "missing", lambda path: (path / "model.safetensors").unlink()),
    Mutation("model_key_missing", "model.safetensors", "missing",
             _tensors("model.safetensors", lambda t: t.pop(_first_weight(t)))),
    Mutation("model_key_unexpected", "model.safetensors", "unexpected",
             _tensors("model.safetensors", lambda t: t.__setitem__("extra.weight", np.zeros(3, np.float32)))),
    Mutation("model_wrong_shape", "model.safetensors", "shape mismatches",
             _tensors("model.safetensors", lambda t: t.__setitem__(_first_weight(t), np.zeros((2, 2), np.float32)))),
    Mutation("model_wrong_dtype", "model.safetensors", "floating point",
             _tensors("model.safetensors", lambda t: t.__setitem__(_first_weight(t),
                                                                   t[_first_weight(t)].astype(np.int32)))),
    # normalizer.safetensors
    Mutation("normalizer_garbage", "normalizer.safetensors", "header too large",
             _write("normalizer.safetensors", b"\xff" * 64)),
    Mutation("normalizer_truncated", "normalizer.safetensors", "not a safetensors file",
             _truncate("normalizer.safetensors")),
    Mutation("normalizer_no_action", "normalizer.safetensors", "'action'",
             _tensors("normalizer.safetensors", lambda t: None, {"kind": "minmax", "range_floor": "{}"})),
    Mutation("normalizer_action_channels", "normalizer.safetensors", "'action' statistics have 5 channels",
             _tensors("normalizer.safetensors", lambda t: t.update({"action.min": -np.ones(5, np.float32),
                                                                    "action.max": np.ones(5, np.float32)}))),
    Mutation("normalizer_nan", "normalizer.safetensors", "NaN",
             _tensors("normalizer.safetensors", lambda t: t["action.min"].__setitem__(0, np.nan))),
    Mutation("normalizer_max_below_min", "normalizer.safetensors", "max < min",
             _tensors("normalizer.safetensors", lambda t: t.update({"action.max": t["action.min"] - 1}))),
    Mutation("normalizer_max_missing", "normalizer.safetensors", "action.max",
             _tensors("normalizer.safetensors", lambda t: t.pop("action.max"))),
    Mutation("normalizer_int_dtype", "normalizer.safetensors", "1-D float",
             _tensors("normalizer.safetensors", lambda t: t.update({"action.min": t["action.min"].astype(np.int64)}))),
    Mutation("normalizer_kind", "normalizer.safetensors", "min-max",
             _tensors("normalizer.safetensors", lambda t: None, {"kind": "zscore"})),
    Mutation("normalizer_floor_not_json", "normalizer.safetensors", "range_floor",
             _tensors("normalizer.safetensors", lambda t: None, {"kind": "minmax", "range_floor": "{oops"})),
    # backbone/: pickles are refused unopened; damaged files are named
    Mutation("backbone_pytorch_model_bin", "pytorch_model.bin", "pickled",
             _write("backbone/pytorch_model.bin", _pickle_payload())),
    Mutation("backbone_weights_pt", "extra_weights.pt", "pickled",
             _write("backbone/extra_weights.pt", _pickle_payload())),
    Mutation("backbone_processor_pkl", "processor.pkl", "pickled", _write("backbone/processor.pkl", _pickle_payload())),
    Mutation("backbone_config_not_json", "backbone/config.json", "not valid JSON",
             _write("backbone/config.json", b"garbage")),
    Mutation("backbone_config_no_layers", "backbone/config.json", "num_hidden_layers",
             _config(_delete("text_config", "num_hidden_layers"), "backbone/config.json")),
    Mutation("backbone_tokenizer_config_not_json", "backbone/tokenizer_config.json", "not valid JSON",
             _write("backbone/tokenizer_config.json", b"{")),
    Mutation("backbone_config_deleted", "backbone", "config.json",
             lambda path: (path / "backbone" / "config.json").unlink()),
    Mutation("backbone_weights_truncated", "backbone/model.safetensors", "not a safetensors file",
             _truncate("backbone/model.safetensors")),
    Mutation("backbone_tokenizer_garbage", "backbone", "tokenizer", _write("backbone/tokenizer.json", b"\x00garbage")),
]
