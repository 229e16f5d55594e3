"""gem_import: a reference GEM-VLA training run (zhaorw02/GEM) -> the serving checkpoint `GemVLAPolicy` loads.

    gem_import --reference runs/gem_vla --io-yaml my_arm_io.yaml --out checkpoints/my_arm
    gem_import --reference runs/gem_vla_distill --reference-yaml GEM-VLA/configs/demo.yaml \\
               --io-yaml my_arm_io.yaml --out checkpoints/my_arm_one_step

The run folder is read as the reference writes it (gem_checkpoints.md §1-§4): the RDT runner's weights
(model.safetensors or pytorch_model.bin), its config.json, vision_language_model/ (copied as backbone/) and
normalizer.pt (or --normalizer / --action-stats). The RDT keys are already ours (ActionExpert has the reference
layout), so weights are copied name for name. A distilled run (generator.* / real_score.* keys, no config.json: the
training YAML gives the RDT settings) serves generator.* with the one-step rule action = eps + v(eps, t=0). What the
reference does not record (cameras, joint names, control rate, action space, gripper channels) comes from --io-yaml
or flags; nothing is guessed. The checkpoint is loaded and asked for one chunk before it is renamed into place.
"""
from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file
from transformers.utils import logging as transformers_logging

from gem_ros.core.policy import checkpoint as ckpt
from gem_ros.core.policy.backbone import check_backbone_fits
from gem_ros.core.policy.config import GemVLAConfig, ImagePipelineConfig, IOSchema, RDTConfig
from gem_ros.core.policy.normalizer import MinMaxNormalizer, save_normalizers
from gem_train import reference_files as rf

VLM_DIR = "vision_language_model"
NORMALIZER_PT = "normalizer.pt"
# What the reference never records, and how to give it.
IO_FIELDS = {"cameras": "--camera NAME:HxW (once per camera, in the prompt order of training)",
             "state_names": "--state-names j1,j2,... (the state vector's channels, in order)",
             "action_names": "--action-names j1,j2,... (the action vector's channels, in order)",
             "action_space": "--action-space SPACE (absolute_joint, delta_joint or ee_delta)",
             "control_rate_hz": "--control-rate-hz HZ (rate of consecutive actions in a chunk)",
             "gripper_channels": "--gripper-channels i,j,... (action indices that command a gripper; '' for none)"}
ADAPTORS = {"lang_adaptor": "mlp2x_silu", "act_adaptor": "mlp3x_silu", "state_adaptor": "mlp3x_silu"}


def io_settings(io_yaml: Path | None, flags: dict) -> dict:
    """IOSchema fields from --io-yaml (its `io:` object or its top level) with the flags on top; all of IO_FIELDS."""
    settings = {}
    if io_yaml is not None:
        data = _yaml_object(io_yaml)
        if isinstance(data.get("io"), dict):
            data = data["io"]
        unknown = sorted(set(data) - set(IO_FIELDS))
        if unknown:
            raise ValueError(f"{io_yaml}: unknown fields {unknown} (allowed: {list(IO_FIELDS)})")
        settings.update(data)
    settings.update({k: v for k, v in flags.items() if v is not None})
    missing = [k for k in IO_FIELDS if k not in settings]
    if missing:
        raise ValueError("the reference run does not say " + ", ".join(missing) + "; pass them in --io-yaml or as "
                         + "; ".join(IO_FIELDS[k] for k in missing))
    return settings


def reference_model_config(reference: Path, reference_yaml: Path | None) -> tuple[dict, str]:
    """The RDT runner's settings and where they came from: config.json (plain runs; the hub mixin writes the init
    arguments with `config` merged in) or, for runs without one, the training YAML's `model:` (and `common:`)."""
    config_file = reference / "config.json"
    if config_file.is_file():
        if reference_yaml is not None:
            raise ValueError(f"{config_file} exists: --reference-yaml is only for runs without one (distilled)")
        data = ckpt.read_json_object(config_file)
        nested = data.get("config")
        return ({**data, **nested} if isinstance(nested, dict) else data), str(config_file)
    if reference_yaml is None:
        raise ValueError(f"{reference} has no config.json (distilled runs write none): pass --reference-yaml, the "
                         "training YAML of the run (e.g. GEM-VLA/configs/demo.yaml)")
    data = _yaml_object(reference_yaml)
    if not isinstance(data.get("model"), dict):
        raise ValueError(f"{reference_yaml}: no `model:` section (the reference's training YAML has one)")
    common = data.get("common") if isinstance(data.get("common"), dict) else {}
    dims = {"action_dim": common.get("action_dim"), "state_dim": common.get("state_dim"),
            "pred_horizon": common.get("action_chunk_size")}
    return {**dims, **data["model"]}, str(reference_yaml)


def rdt_settings(weights: dict[str, torch.Tensor], ref: dict, source: str, weights_file: Path) -> dict:
    """Sizes from the weights' shapes, cross-checked against the reference settings; what shapes cannot tell
    (norm_eps, selected_layers, sampler steps) from the settings."""
    def shape(key: str) -> tuple[int, ...]:
        if key not in weights:
            raise ValueError(f"{weights_file}: not an RDT runner state dict (no '{key}')")
        return tuple(weights[key].shape)

    hidden, freq = shape("model.t_embedder.mlp.0.weight")
    registers = shape("model.register_tokens")[1]
    head = shape("model.blocks.0.attn.norm_q.weight")[0]
    found = {"rdt.hidden_size": hidden, "rdt.num_register_tokens": registers, "rdt.num_heads": hidden // head,
             "rdt.num_kv_heads": shape("model.blocks.0.attn.wkv.weight")[0] // (2 * head),
             "rdt.depth": len({k.split(".")[2] for k in weights if k.startswith("model.blocks.")}),
             "pred_horizon": shape("model.x_pos_emb")[1] - registers,
             "action_dim": shape("act_adaptor.0.weight")[1], "state_dim": shape("state_adaptor.0.weight")[1],
             "lang_token_dim": shape("lang_adaptor.0.weight")[1]}
    rdt = ref.get("rdt")
    if not isinstance(rdt, dict):
        raise ValueError(f"{source}: no `rdt` settings")
    stated = {name: (rdt if name.startswith("rdt.") else ref).get(name.removeprefix("rdt.")) for name in found}
    disagree = [f"{name}: {source} says {stated[name]}, the weights {found[name]}" for name in found
                if stated[name] is not None and stated[name] != found[name]]
    if disagree:
        raise ValueError(f"{source} does not describe {weights_file}: " + "; ".join(disagree))
    for name, kind in ADAPTORS.items():
        if ref.get(name) != kind:
            raise ValueError(f"{source}: {name} is {ref.get(name)!r}; gem_ros serves GEM-VLA's {kind}")
    if ref.get("img_adaptor") is not None:
        raise ValueError(f"{source}: an img_adaptor ({ref['img_adaptor']!r}) is not part of GEM-VLA; not supported")
    layers, scheduler = ref.get("selected_layers"), ref.get("noise_scheduler")
    missing = [name for name, value in (("rdt.norm_eps", rdt.get("norm_eps")), ("selected_layers", layers),
                                        ("noise_scheduler.num_inference_timesteps",
                                         scheduler.get("num_inference_timesteps") if isinstance(scheduler, dict)
                                         else None)) if value is None]
    if missing:
        raise ValueError(f"{source} does not give {missing}")
    config = RDTConfig(hidden_size=hidden, depth=found["rdt.depth"], num_heads=found["rdt.num_heads"],
                       num_kv_heads=found["rdt.num_kv_heads"], norm_eps=float(rdt["norm_eps"]),
                       num_register_tokens=registers, timestep_freq_dim=freq, cond_hidden_size=found["lang_token_dim"],
                       ffn_multiple_of=_ffn_multiple(hidden, shape("model.blocks.0.ffn.w1.weight")[0], rdt, source))
    return {"rdt": config, "selected_layers": [layers] if isinstance(layers, int) else list(layers),
            "steps": scheduler["num_inference_timesteps"], **{k: found[k] for k in ("pred_horizon", "action_dim",
                                                                                  "state_dim")}}


def _ffn_multiple(hidden: int, width: int, rdt: dict, source: str) -> int:
    """An ffn_multiple_of that gives the weights' SwiGLU width (the reference's multiple_of, or the width itself)."""
    for multiple in (rdt.get("multiple_of"), width):
        if isinstance(multiple, int) and multiple > 0 and RDTConfig(
                hidden_size=hidden, num_heads=1, num_kv_heads=1, ffn_multiple_of=multiple).ffn_hidden_size == width:
            return multiple
    raise ValueError(f"{source}: SwiGLU width {width} is below 8/3 x hidden {hidden} (ffn_dim_multiplier < 1); "
                     "not supported")


def action_normalizer(reference: Path, normalizer: Path | None, action_stats: Path | None) -> tuple[MinMaxNormalizer,
                                                                                                     str]:
    if normalizer is not None and action_stats is not None:
        raise ValueError("give one of --normalizer and --action-stats, not both")
    if action_stats is not None:
        return rf.read_action_stats(action_stats), str(action_stats)
    path = normalizer or reference / NORMALIZER_PT
    if not path.is_file():
        raise ValueError(f"no action statistics: {path} does not exist (no reference script writes normalizer.pt); "
                         "pass --normalizer PATH (a LinearNormalizer .pt) or --action-stats PATH (the dataset's "
                         "action_stats.json, the map training applied)")
    return rf.read_normalizer_pt(path), str(path)


def reference_image_pipeline(vlm: Path) -> ImagePipelineConfig:
    """What reference training fed the VLM: frames at the camera's own size into its image processor (resized
    within the processor's min/max pixels), a dropped camera left out of the prompt, the corruption augmentations.
    The bounds are the saved processor's, so serving checks them against the copied backbone folder."""
    from transformers.image_processing_utils import ImageProcessingMixin

    try:
        size = ImageProcessingMixin.get_image_processor_dict(str(vlm))[0].get("size") or {}
    except Exception as error:  # noqa: BLE001 - transformers raises many types; name the folder
        raise ValueError(f"{vlm}: no readable image processor config ({error})") from error
    return ImagePipelineConfig(resize="native", camera_dropout="remove", corruptions=True,
                               min_pixels=size.get("shortest_edge"), max_pixels=size.get("longest_edge"))


def import_reference(reference: Path, out: Path, io: dict, reference_yaml: Path | None = None,
                     normalizer: Path | None = None, action_stats: Path | None = None, device: str = "cpu",
                     verify: bool = True) -> list[str]:
    """Write the serving checkpoint `out`; returns what was read from where (for the summary)."""
    reference, out = Path(reference), Path(out)
    if not reference.is_dir():
        raise ValueError(f"reference run folder {reference} does not exist")
    if out.resolve() == reference.resolve():
        raise ValueError(f"--out {out} is the reference run itself; it would be replaced")
    weights, weights_file = rf.read_rdt_weights(reference)
    weights, distilled = rf.servable_weights(weights, weights_file)
    ref, source = reference_model_config(reference, reference_yaml)
    found = rdt_settings(weights, ref, source, weights_file)
    action_map, normalizer_source = action_normalizer(reference, normalizer, action_stats)
    try:
        io_schema = IOSchema(**io, state_dim=found["state_dim"], action_dim=found["action_dim"],
                             chunk_len=found["pred_horizon"], normalize_state=False)   # GEM feeds raw states
        config = GemVLAConfig(io=io_schema, rdt=found["rdt"], selected_layers=found["selected_layers"],
                              num_inference_steps=1 if distilled else found["steps"],
                              sampler="one_step" if distilled else "euler")
    except TypeError as error:   # a field IOSchema does not have
        raise ValueError(f"io settings: {error}") from error
    if action_map.dim != io_schema.action_dim:
        raise ValueError(f"{normalizer_source}: {action_map.dim} action channels, the weights {io_schema.action_dim}")
    expected = ckpt.expected_weights(config)
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    mis_shaped = [f"{k}: {tuple(weights[k].shape)} vs {expected[k]}" for k in expected
                  if k in weights and tuple(weights[k].shape) != expected[k]]
    if missing or unexpected or mis_shaped:
        raise ValueError(f"{weights_file} is not the reference RDT layout: missing {missing[:8]}, unexpected "
                         f"{unexpected[:8]}, shape mismatches {mis_shaped[:8]}")
    vlm = reference / VLM_DIR
    check_backbone_fits(vlm, config, Path(source))   # no pickles; selected_layers and width fit this VLM
    config.image_pipeline = reference_image_pipeline(vlm)
    with ckpt.atomic_directory(out) as scratch:
        ckpt.write_config(scratch, config)
        save_file({k: v.contiguous() for k, v in weights.items()}, str(scratch / ckpt.MODEL_FILE))
        save_normalizers(scratch / ckpt.NORMALIZER_FILE, {"action": action_map})
        shutil.copytree(vlm, scratch / config.backbone_dir)
        if verify:
            from gem_train.export import check_loads

            check_loads(scratch, device)
    sampler = "one-step generator (generator.*)" if distilled else f"{found['steps']}-step Euler"
    read = [f"RDT weights: {weights_file} ({len(weights)} tensors, {sampler})", f"RDT settings: {source}",
            f"action statistics: {normalizer_source}", f"backbone: {vlm}"]
    if (reference / "depth_expert").exists():
        read.append("not imported: depth_expert/ (a training-only loss; serving never needs it)")
    return read


def parse_camera(text: str) -> dict:
    match = re.fullmatch(r"([^:]+):(\d+)x(\d+)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"--camera wants NAME:HEIGHTxWIDTH in px (e.g. left_stereo:480x640), "
                                         f"got {text!r}")
    return {"name": match[1], "height": int(match[2]), "width": int(match[3])}


def parse_names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def parse_indices(text: str) -> list[int]:
    try:
        return [int(i) for i in parse_names(text)]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"--gripper-channels wants action indices like 6,13, got {text!r}") from error


def _yaml_object(path: Path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"{path}: cannot be read as YAML ({error})") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a YAML mapping, got {type(data).__name__}")
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gem_import", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.split("\n")[1:]))
    parser.add_argument("--reference", required=True, type=Path, help="the reference run's output folder")
    parser.add_argument("--out", required=True, type=Path, help="serving checkpoint folder to (re)write")
    parser.add_argument("--reference-yaml", type=Path, help="the run's training YAML (runs without config.json)")
    parser.add_argument("--normalizer", type=Path,
                        help=f"a reference LinearNormalizer .pt (default: <reference>/{NORMALIZER_PT})")
    parser.add_argument("--action-stats", type=Path, help="the dataset's action_stats.json instead of a normalizer")
    parser.add_argument("--io-yaml", type=Path, help=f"YAML with {', '.join(IO_FIELDS)} (top level or under io:)")
    for field, kind, extra in (("cameras", parse_camera, {"action": "append"}), ("state_names", parse_names, {}),
                               ("action_names", parse_names, {}), ("action_space", str, {}),
                               ("control_rate_hz", float, {}), ("gripper_channels", parse_indices, {})):
        flag, metavar, text = IO_FIELDS[field].split(" ", 2)   # "--flag METAVAR (what it is)"
        parser.add_argument(flag, dest=field, type=kind, metavar=metavar, help=text.strip("()"), **extra)
    parser.add_argument("--device", default="cpu", help="device for the verification load (cpu, cuda, auto)")
    parser.add_argument("--skip-verify", action="store_true", help="do not load the new checkpoint once")
    args = parser.parse_args(argv)
    transformers_logging.disable_progress_bar()
    flags = {name: getattr(args, name) for name in IO_FIELDS}
    try:
        read = import_reference(args.reference, args.out, io_settings(args.io_yaml, flags), args.reference_yaml,
                                args.normalizer, args.action_stats, args.device, verify=not args.skip_verify)
    except ValueError as error:
        print(f"gem_import: {error}", file=sys.stderr)
        return 2
    print(f"gem_import: wrote {args.out}\n  " + "\n  ".join(read))
    return 0


if __name__ == "__main__":
    sys.exit(main())
