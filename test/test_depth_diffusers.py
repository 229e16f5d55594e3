"""A depth expert started from diffusers-format SANA and DC-AE folders (the reference's SANA_PATH): from_pretrained,
local safetensors only, every tensor present, and the flow-matching shift as the reference's scheduler load gives it.
The folders are tiny models written here with save_pretrained(safe_serialization=True)."""
from __future__ import annotations

import json

import pytest
import torch
from diffusers import AutoencoderDC, SanaTransformer2DModel
from safetensors.torch import load_file, save_file

from gem_ros.core.policy.depth_expert import DepthExpert, diffusers_depth_config
from gem_ros.core.policy.tiny_depth import tiny_depth_expert_config

HIDDEN = 64


pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tiny ops (conftest)


def write_sana_folder(path, scheduler: dict | None = None, safe: bool = True, seed: int = 3):
    """transformer/ + vae/ (+ scheduler/) as diffusers writes a SANA pipeline folder."""
    shapes = tiny_depth_expert_config()
    torch.manual_seed(seed)
    sana, vae = SanaTransformer2DModel(**shapes.sana), AutoencoderDC(**shapes.vae)
    sana.save_pretrained(path / "transformer", safe_serialization=safe)
    vae.save_pretrained(path / "vae", safe_serialization=safe)
    if scheduler is not None:
        (path / "scheduler").mkdir(parents=True)
        (path / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    return sana, vae


def same_weights(module, source) -> bool:
    theirs = source.state_dict()
    return all(torch.equal(value, theirs[key]) for key, value in module.state_dict().items())


def test_sana_and_dc_ae_load_from_diffusers_folders(tmp_path):
    sana, vae = write_sana_folder(tmp_path / "sana")
    config = diffusers_depth_config(tmp_path / "sana", HIDDEN, image_size=64)
    assert config.init == "pretrained" and config.sana_dir == str(tmp_path / "sana")
    assert config.sana["num_layers"] == 2 and config.vae["latent_channels"] == 8      # shaped like the folder
    torch.manual_seed(0)
    expert = DepthExpert(config)
    connector = {k: v.clone() for k, v in expert.diffusion_connector.state_dict().items()}
    assert not same_weights(expert.sana, sana)
    expert.load_pretrained({}, "unused: sana_dir wins")
    assert same_weights(expert.sana, sana) and same_weights(expert.vae, vae)
    # The connector trains from scratch on this start, as the reference's SANA_PATH start does.
    assert all(torch.equal(v, connector[k]) for k, v in expert.diffusion_connector.state_dict().items())
    assert not any(p.requires_grad for p in expert.vae.parameters())


@pytest.mark.parametrize("scheduler, shift", [
    (None, 3.0),                                                                    # no scheduler/: configured
    ({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0, "num_train_timesteps": 1000}, 3.0),
    # A DPM-Solver config (flow_shift): FlowMatchEulerDiscreteScheduler.from_pretrained, as the reference calls it,
    # does not read flow_shift, so the reference trained with shift 1.
    ({"_class_name": "DPMSolverMultistepScheduler", "flow_shift": 3.0, "num_train_timesteps": 1000}, 1.0),
])
def test_scheduler_shift_is_what_the_reference_loads(tmp_path, scheduler, shift):
    write_sana_folder(tmp_path / "sana", scheduler=scheduler)
    config = diffusers_depth_config(tmp_path / "sana", HIDDEN, image_size=64)
    assert config.scheduler_shift == shift
    expert = DepthExpert(config)
    sigma_mid = float(expert.train_sigmas[500])   # shifted sigma: s t / (1 + (s - 1) t) at t ~ 0.5
    t = 1 - 500 / 1000 + 1 / 1000
    assert sigma_mid == pytest.approx(shift * t / (1 + (shift - 1) * t), abs=2e-3)


def test_pickle_only_folders_are_refused_naming_the_file(tmp_path):
    write_sana_folder(tmp_path / "sana", safe=False)
    with pytest.raises(ValueError, match=r"diffusion_pytorch_model\.bin.*never opened"):
        diffusers_depth_config(tmp_path / "sana", HIDDEN, image_size=64)
    expert = DepthExpert(tiny_depth_expert_config(HIDDEN, sana_dir=str(tmp_path / "sana")))
    with pytest.raises(ValueError, match=r"diffusion_pytorch_model\.bin"):
        expert.load_pretrained({}, "x")


def test_missing_folders_and_tensors_are_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match=r"nowhere/transformer does not exist"):
        diffusers_depth_config(tmp_path / "nowhere", HIDDEN, image_size=64)
    write_sana_folder(tmp_path / "sana")
    config = diffusers_depth_config(tmp_path / "sana", HIDDEN, image_size=64)
    weights = tmp_path / "sana" / "vae" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(weights))
    dropped = sorted(tensors)[0]
    save_file({k: v for k, v in tensors.items() if k != dropped}, str(weights), metadata={"format": "pt"})
    # diffusers alone would start the missing tensor random with a log line; we refuse, naming it.
    with pytest.raises(ValueError, match=rf"vae does not hold the AutoencoderDC.*missing 1 tensors \['{dropped}'\]"):
        DepthExpert(config).load_pretrained({}, "x")
    weights.unlink()
    with pytest.raises(ValueError, match=r"vae holds no \*\.safetensors"):
        DepthExpert(config).load_pretrained({}, "x")


def test_training_starts_the_depth_expert_from_the_sana_folder(tmp_path, tiny_backbone_dir):
    from gem_ros.core.policy.gem_vla import GemVLAPolicy
    from gem_train.config import load_config
    from gem_train.train import build_policy

    sana, vae = write_sana_folder(tmp_path / "sana", scheduler={"_class_name": "FlowMatchEulerDiscreteScheduler",
                                                                "shift": 2.0, "num_train_timesteps": 1000})
    data_dir = tmp_path / "episodes"
    data_dir.mkdir()
    config = load_config(None, [
        f"run_dir={tmp_path / 'run'}", f"data.dataset_dirs=[{data_dir}]", "data.state_dim=9", "data.action_dim=8",
        "data.image_size=64", f"model.backbone={tiny_backbone_dir}", "model.depth_expert=true",
        "model.depth_image_size=64", f"model.depth_sana_dir={tmp_path / 'sana'}", "model.selected_layers=[1]",
        "model.rdt={hidden_size: 32, depth: 2, num_heads: 4, num_kv_heads: 2, num_register_tokens: 2, "
        "ffn_multiple_of: 16, timestep_freq_dim: 32}"])
    stats = {"action": {"min": [-1.0] * 8, "max": [1.0] * 8}}
    policy = build_policy(config, stats, torch.device("cpu"))
    assert same_weights(policy.depth_expert.sana, sana) and same_weights(policy.depth_expert.vae, vae)
    policy.save_pretrained(tmp_path / "ckpt")
    recorded = json.loads((tmp_path / "ckpt" / "config.json").read_text())["depth_expert"]
    assert recorded["sana_dir"] == str(tmp_path / "sana") and recorded["scheduler_shift"] == 2.0
    # Serving never needs the SANA folder: the trained depth weights are in the checkpoint.
    (tmp_path / "sana" / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    served = GemVLAPolicy.from_pretrained(tmp_path / "ckpt", device="cpu", for_training=True)
    assert same_weights(served.depth_expert.sana, sana)


def test_recipe_depth_init_keys_are_checked(tmp_path):
    from gem_train.config import load_config

    data_dir = tmp_path / "episodes"
    data_dir.mkdir()
    base = [f"data.dataset_dirs=[{data_dir}]", "model.selected_layers=[1]"]
    with pytest.raises(ValueError, match="model.depth_init must be one of"):
        load_config(None, base + ["model.depth_init=zeros"])
    with pytest.raises(ValueError, match="model.depth_sana_dir .* is not a folder"):
        load_config(None, base + [f"model.depth_sana_dir={tmp_path / 'none'}"])
    with pytest.raises(ValueError, match="depth_init is \"random\""):
        load_config(None, base + ["model.depth_expert=true", "model.depth_init=random",
                                  f"model.depth_sana_dir={data_dir}"])
    with pytest.raises(ValueError, match="depth_sana_dir is set but model.depth_expert is false"):
        load_config(None, base + [f"model.depth_sana_dir={data_dir}"])
