"""gem_import: reference GEM-VLA runs, written here in the reference's layout (gem_checkpoints.md §1-§4: key names,
file names, a pickled state dict, a pickled nn.ParameterDict normalizer), become serving checkpoints whose chunks
are the ones the reference equations give (test/reference_rdt.py, not our model). Pickles that need more than tensors
are refused unexecuted; what the reference never records must be given."""
from __future__ import annotations

import json
import os
import shutil
from collections import OrderedDict

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file
from torch import nn
from transformers import Qwen3VLForConditionalGeneration

import reference_rdt as ref
from gem_ros.core.policy import backbone as bb
from gem_ros.core.policy.gem_vla import GemVLAPolicy
from gem_ros.core.policy.observation import Observation
from gem_train import reference_files as rf
from gem_train.import_reference import IO_FIELDS, import_reference, io_settings, main, rdt_settings

HORIZON, ACTION_DIM, STATE_DIM, SELECTED = 5, 4, 3, [0, 2]
SHAPES = ref.reference_shapes(hidden=16, depth=2, heads=4, kv_heads=2, registers=2, multiple_of=8, freq_dim=256,
                              lang_dim=64, action_dim=ACTION_DIM, state_dim=STATE_DIM, horizon=HORIZON)
SCALE = np.array([2.0, 0.5, 8.0, 1.25], np.float32)        # a' = a * scale + offset (gem_checkpoints §2)
OFFSET = np.array([0.1, -0.4, 2.0, 0.0], np.float32)
IO = {"cameras": [{"name": "left_stereo", "height": 64, "width": 64}, {"name": "right_stereo", "height": 64,
                                                                        "width": 64}],
      "state_names": ["s0", "s1", "s2"], "action_names": ["a0", "a1", "a2", "gripper"],
      "action_space": "absolute_joint", "control_rate_hz": 30.0, "gripper_channels": [3]}
# The `model:` section of the reference's training YAML (configs/demo.yaml), at these tiny sizes.
MODEL_SECTION = {"lang_adaptor": "mlp2x_silu", "lang_token_dim": 64, "act_adaptor": "mlp3x_silu",
                 "state_adaptor": "mlp3x_silu", "selected_layers": SELECTED,
                 "rdt": {"hidden_size": 16, "depth": 2, "num_heads": 4, "num_register_tokens": 2, "norm_eps": 1e-5,
                         "multiple_of": 8, "ffn_dim_multiplier": None, "num_kv_heads": 2, "use_flash_attn": True},
                 "noise_scheduler": {"num_inference_timesteps": 5}}


def reference_normalizer() -> nn.ParameterDict:
    """As the reference's LinearNormalizer.save writes it: torch.save of its nested nn.ParameterDict."""
    minimum, maximum = (-1 - OFFSET) / SCALE, (1 - OFFSET) / SCALE
    stats = {"min": minimum, "max": maximum, "mean": (minimum + maximum) / 2, "std": maximum - minimum}
    return nn.ParameterDict({"action": nn.ParameterDict({
        "scale": torch.tensor(SCALE), "offset": torch.tensor(OFFSET),
        "input_stats": nn.ParameterDict({k: torch.tensor(v) for k, v in stats.items()})})})


def write_reference_run(folder, backbone_dir, distilled: bool) -> ref.Weights:
    """A run folder as the reference leaves it; returns the weights the served RDT must hold (float64 numpy)."""
    folder.mkdir()
    shutil.copytree(backbone_dir, folder / "vision_language_model")
    torch.save(reference_normalizer(), folder / "normalizer.pt")
    weights = {k: torch.tensor(v, dtype=torch.float32) for k, v in ref.seeded_weights(SHAPES, seed=3).items()}
    if distilled:   # generator.* / real_score.* through the hub mixin's safetensors, no config.json (§4)
        teacher = ref.seeded_weights(SHAPES, seed=4)
        save_file({**{f"generator.{k}": v for k, v in weights.items()},
                   **{f"real_score.{k}": torch.tensor(v, dtype=torch.float32) for k, v in teacher.items()}},
                  str(folder / "model.safetensors"))
    else:           # model.* in bf16 as the reference builds it, adaptors fp32; the hub mixin's config.json (§3)
        weights = {k: v.bfloat16() if k.startswith("model.") else v for k, v in weights.items()}
        torch.save(OrderedDict(weights), folder / "pytorch_model.bin")
        init_args = {"action_dim": ACTION_DIM, "pred_horizon": HORIZON, "state_dim": STATE_DIM,
                     "act_pos_emb_config": [["action", HORIZON], ["register", 2]], "img_token_dim": None,
                     "lang_pos_emb_config": None, "max_lang_len": None, "img_pos_emb_config": None,
                     "max_img_len": None}
        (folder / "config.json").write_text(json.dumps({**init_args, **MODEL_SECTION}))
    return {k: v.double().numpy() for k, v in weights.items()}


def observation(seed: int = 0) -> Observation:
    rng = np.random.default_rng(seed)
    return Observation(images={c["name"]: rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for c in IO["cameras"]},
                       state=rng.normal(size=STATE_DIM).astype(np.float32), instruction="pick up the red cube")


def reference_chunk(backbone_dir, weights: ref.Weights, steps: int, obs: Observation, seed: int) -> np.ndarray:
    """The chunk from the reference's equations: HF Qwen3-VL hidden states, the RDT sampler in float64 from the noise
    the policy draws for `seed`, then the reference's unnormalize (a' - offset) / scale."""
    model = Qwen3VLForConditionalGeneration.from_pretrained(str(backbone_dir), dtype=torch.float32).eval()
    images = [obs.images[c["name"]] for c in IO["cameras"]]
    prompt = bb.build_prompts(bb.load_processor(backbone_dir), [images], [obs.instruction], torch.device("cpu"))
    with torch.no_grad():
        hidden = model.model(**prompt.inputs, output_hidden_states=True, use_cache=False).hidden_states
    per_block = np.stack([hidden[i].double().numpy() for i in SELECTED], axis=1)
    noise = torch.randn((1, HORIZON, ACTION_DIM), generator=torch.Generator().manual_seed(seed)).double().numpy()
    mask = prompt.inputs["attention_mask"].bool().numpy()
    normalized = ref.euler_sample(weights, noise, steps, per_block, obs.state[None].astype(np.float64), mask)
    return (normalized[0] - OFFSET.astype(np.float64)) / SCALE.astype(np.float64)


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory, tiny_backbone_dir):
    folder = tmp_path_factory.mktemp("reference") / "gem_vla"
    return folder, write_reference_run(folder, tiny_backbone_dir, distilled=False)


@pytest.fixture(scope="module")
def distilled_run(tmp_path_factory, tiny_backbone_dir):
    folder = tmp_path_factory.mktemp("reference") / "gem_vla_distill"
    return folder, write_reference_run(folder, tiny_backbone_dir, distilled=True)


def test_plain_run_imports_and_predicts_the_reference_chunk(plain_run, tmp_path, capsys):
    folder, weights = plain_run
    (tmp_path / "io.yaml").write_text(yaml.safe_dump({"io": IO}))
    assert main(["--reference", str(folder), "--io-yaml", str(tmp_path / "io.yaml"), "--out", str(tmp_path / "ckpt")]) \
        == 0, capsys.readouterr().err
    assert "pytorch_model.bin" in capsys.readouterr().out
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert (config["sampler"], config["num_inference_steps"], config["selected_layers"]) == ("euler", 5, SELECTED)
    assert config["io"]["state_names"] == IO["state_names"] and config["io"]["chunk_len"] == HORIZON
    assert config["io"]["normalize_state"] is False                  # GEM feeds raw states
    from transformers.image_processing_utils import ImageProcessingMixin

    size = ImageProcessingMixin.get_image_processor_dict(str(folder / "vision_language_model"))[0]["size"]
    assert size["shortest_edge"] and size["longest_edge"]
    assert config["image_pipeline"] == {"resize": "native", "camera_dropout": "remove", "corruptions": True,
                                        "min_pixels": size["shortest_edge"], "max_pixels": size["longest_edge"]}
    assert not [p for p in (tmp_path / "ckpt").rglob("*") if p.suffix in (".bin", ".pt")]   # no pickle travels on

    policy = GemVLAPolicy.from_pretrained(tmp_path / "ckpt", device="cpu")
    chunk = policy.predict_action_chunk(observation(), seed=3)
    expected = reference_chunk(tmp_path / "ckpt" / "backbone", weights, 5, observation(), seed=3)
    assert np.abs(chunk - expected).max() <= 1e-5, np.abs(chunk - expected).max()


def test_distilled_run_serves_the_generator_in_one_step(distilled_run, tmp_path):
    folder, weights = distilled_run
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump({"common": {"action_dim": ACTION_DIM, "state_dim": STATE_DIM,
                                                                   "action_chunk_size": HORIZON},
                                                        "model": MODEL_SECTION}))
    read = import_reference(folder, tmp_path / "ckpt", IO, reference_yaml=tmp_path / "demo.yaml", verify=False)
    assert "one-step generator" in read[0]
    policy = GemVLAPolicy.from_pretrained(tmp_path / "ckpt", device="cpu")
    assert policy.config.sampler == "one_step"
    chunk = policy.predict_action_chunk(observation(1), seed=5)
    expected = reference_chunk(tmp_path / "ckpt" / "backbone", weights, 1, observation(1), seed=5)
    assert np.abs(chunk - expected).max() <= 1e-5, np.abs(chunk - expected).max()
    teacher = reference_chunk(tmp_path / "ckpt" / "backbone", ref.seeded_weights(SHAPES, seed=4), 1, observation(1), 5)
    assert np.abs(chunk - teacher).max() > 1e-2                      # real_score.* is not what is served

    with pytest.raises(ValueError, match="no config.json.*--reference-yaml"):
        import_reference(folder, tmp_path / "again", IO, verify=False)


class RunsCode:
    """Unpickling this calls os.system: what a hostile checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("file, payload", [
    ("normalizer.pt", lambda marker: {"action": RunsCode(marker)}),
    ("pytorch_model.bin", lambda marker: OrderedDict(weight=RunsCode(marker))),
    ("normalizer.pt", lambda marker: nn.Linear(2, 2)),               # a module, but not an allowed class
])
def test_pickles_that_need_other_classes_are_refused_unexecuted(plain_run, tmp_path, file, payload):
    folder = tmp_path / "run"
    shutil.copytree(plain_run[0], folder)
    marker = tmp_path / "code_ran"
    torch.save(payload(marker), folder / file)
    with pytest.raises(ValueError, match=f"{file}: refused.*(posix.system|Linear)"):
        import_reference(folder, tmp_path / "ckpt", IO, verify=False)
    assert not marker.exists() and not (tmp_path / "ckpt").exists()


def test_what_the_reference_does_not_record_is_never_guessed(plain_run, tmp_path, capsys):
    folder, _ = plain_run
    assert main(["--reference", str(folder), "--out", str(tmp_path / "ckpt"), "--camera", "left_stereo:64x64"]) == 2
    error = capsys.readouterr().err
    for field in IO_FIELDS:
        assert (field in error) == (field != "cameras"), error       # each missing one named, with its flag
    assert "--state-names" in error and "--gripper-channels" in error and not (tmp_path / "ckpt").exists()
    # Flags complete a YAML and win over it.
    (tmp_path / "io.yaml").write_text(yaml.safe_dump({k: v for k, v in IO.items() if k != "control_rate_hz"}))
    settings = io_settings(tmp_path / "io.yaml", {"control_rate_hz": 15.0, "action_space": "delta_joint"})
    assert (settings["control_rate_hz"], settings["action_space"]) == (15.0, "delta_joint")
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump({**IO, "control_rate": 30}))
    with pytest.raises(ValueError, match=r"unknown fields \['control_rate'\]"):
        io_settings(tmp_path / "typo.yaml", {})


def test_settings_that_disagree_with_the_weights_are_refused(plain_run):
    weights = {k: torch.from_numpy(v) for k, v in plain_run[1].items()}
    settings = rdt_settings(weights, MODEL_SECTION, "config.json", "pytorch_model.bin")
    assert (settings["rdt"].ffn_hidden_size, settings["rdt"].timestep_freq_dim) == (48, 256)
    wrong = {**MODEL_SECTION, "rdt": {**MODEL_SECTION["rdt"], "depth": 3}, "action_dim": 7}
    with pytest.raises(ValueError, match="rdt.depth: config.json says 3, the weights 2.*action_dim: .* 7, the weights 4"):
        rdt_settings(weights, wrong, "config.json", "pytorch_model.bin")
    with pytest.raises(ValueError, match="lang_adaptor is 'linear'"):
        rdt_settings(weights, {**MODEL_SECTION, "lang_adaptor": "linear"}, "config.json", "pytorch_model.bin")


def test_reference_normalizer_maps_exactly_as_the_reference(tmp_path):
    torch.save(reference_normalizer(), tmp_path / "normalizer.pt")
    ours = rf.read_normalizer_pt(tmp_path / "normalizer.pt")
    normalized = np.linspace(-1.2, 1.2, 7, dtype=np.float32)[:, None].repeat(ACTION_DIM, axis=1)
    reference = (normalized.astype(np.float64) - OFFSET) / SCALE
    assert np.abs(ours.unnormalize(normalized) - reference).max() <= 1e-6
    np.testing.assert_allclose(ours.normalize(reference.astype(np.float32)), normalized, atol=1e-6)
    with pytest.raises(ValueError, match="scale must be > 0"):
        rf.normalizer_from_scale_offset(torch.tensor([1.0, 0.0]), torch.zeros(2), "normalizer.pt")
    # The dataset's action_stats.json: the map training applied, a' = 2 (a - min) / max(max - min, 1e-3) - 1.
    (tmp_path / "action_stats.json").write_text(json.dumps({"action_min": [-1.0, 0.5], "action_max": [3.0, 0.5]}))
    stats = rf.read_action_stats(tmp_path / "action_stats.json")
    np.testing.assert_allclose(stats.normalize(np.array([1.0, 0.5])), [0.0, -1.0])
