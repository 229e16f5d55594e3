"""gem_train on the tiny model: config validation, learning, checkpoints, kill + resume, retention, export, distill.

The data here is an in-test dataset that follows the `gem_train.data` sample contract, so the loop is tested
on its own; the training runs are a few CPU steps each.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from gem_ros.core.policy.checkpoint import read_tensors
from gem_ros.core.policy.gem_vla import GemVLAPolicy, TrainingBatch
from gem_train import export
from gem_train.checkpointing import STATE_FILE, STATE_JSON, find_resume_checkpoint, list_checkpoints
from gem_train.config import load_config
from gem_train.train import DataBundle, main as train_main, train

CONFIGS = Path(__file__).resolve().parents[1] / "gem_train" / "configs"
STATE_DIM, ACTION_DIM, CHUNK, SIZE = 9, 8, 8, 32


class ChunkSamples(Dataset):
    """Samples in the `gem_train.data` contract: actions ramp away from the state, so there is something to learn."""

    def __init__(self, n: int, seed: int, depth_size: int = 0):
        rng = np.random.default_rng(seed)
        self.depth = rng.uniform(-1, 1, (n, 2, 3, depth_size, depth_size)).astype(np.float32) if depth_size else None
        self.images = rng.integers(0, 256, (n, 2, SIZE, SIZE, 3), dtype=np.uint8)
        self.state = rng.uniform(-1, 1, (n, STATE_DIM)).astype(np.float32)
        ramp = 0.05 * np.arange(CHUNK, dtype=np.float32)[None, :, None]
        self.actions = (self.state[:, None, :ACTION_DIM] + ramp).astype(np.float32)

    def __len__(self) -> int:
        return len(self.state)

    def __getitem__(self, i: int) -> dict:
        sample = {"images": list(self.images[i]), "state": self.state[i], "actions": self.actions[i],
                  "instruction": "pick up the red cube"}
        if self.depth is not None:
            sample.update(depth=self.depth[i], depth_valid=np.array([True, i % 2 == 0]))
        return sample


def collate(samples: list[dict]) -> TrainingBatch:
    depth = "depth" in samples[0]
    return TrainingBatch(images=[s["images"] for s in samples], instructions=[s["instruction"] for s in samples],
                         state=torch.from_numpy(np.stack([s["state"] for s in samples])),
                         actions=torch.from_numpy(np.stack([s["actions"] for s in samples])),
                         depth=torch.from_numpy(np.stack([s["depth"] for s in samples])) if depth else None,
                         depth_valid=torch.from_numpy(np.stack([s["depth_valid"] for s in samples])) if depth else None)


def bundle(train_set: ChunkSamples, val_set: ChunkSamples) -> DataBundle:
    actions, states = train_set.actions.reshape(-1, ACTION_DIM), train_set.state
    stats = {"action": {"min": actions.min(0), "max": actions.max(0)},
             "state": {"min": states.min(0), "max": states.max(0)}}
    return DataBundle(train_set, val_set, collate, stats)


@pytest.fixture(scope="module")
def data() -> DataBundle:
    return bundle(ChunkSamples(10, seed=0), ChunkSamples(8, seed=1))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gem_train")
    (path / "episodes").mkdir()
    return path


def tiny_config(workdir: Path, run: str, *overrides: str):
    base = [f"data.dataset_dirs=[{workdir / 'episodes'}]", f"run_dir={workdir / run}", f"data.image_size={SIZE}",
            f"data.chunk_len={CHUNK}", f"data.state_dim={STATE_DIM}", f"data.action_dim={ACTION_DIM}",
            "model.rdt={hidden_size: 32, depth: 2, num_heads: 4, num_kv_heads: 2, num_register_tokens: 2, "
            "ffn_multiple_of: 16, timestep_freq_dim: 32}", "model.selected_layers=[1, 2]",
            "train.lr=3e-3", "train.batch_size=4", "train.mixed_precision=no", "train.num_workers=0",
            "train.log_every=1", "train.eval_batches=2"]
    return load_config(None, base + list(overrides))


@pytest.fixture(scope="module")
def trained_run(workdir, data):
    """30 steps, evaluated at steps 0 and 30: the teacher for export and distillation tests."""
    config = tiny_config(workdir, "trained", "train.max_steps=30", "train.eval_every=30", "train.checkpoint_every=30")
    return train(config, data=data)


@pytest.fixture(scope="module")
def straight_run(workdir, data):
    """6 uninterrupted steps, a checkpoint every 2, the last 2 kept."""
    config = tiny_config(workdir, "straight", "train.max_steps=6", "train.checkpoint_every=2", "train.keep_last=2",
                         "train.eval_every=1000")
    return train(config, data=data)


def all_tensors(step_dir: Path) -> dict[str, torch.Tensor]:
    tensors = {f"expert.{k}": v for k, v in read_tensors(step_dir / "model.safetensors").items()}
    for shard in sorted((step_dir / "backbone").glob("*.safetensors")):
        tensors.update({f"backbone.{k}": v for k, v in read_tensors(shard).items()})
    return tensors


# ------------------------------------------------------------------------------------------- configuration
@pytest.mark.parametrize("override, message", [
    ("train.lrr=1", "unknown config key.*train.lrr"),
    ("model.rdt.width=3", "unknown config key.*model.rdt.width"),
    ("train.lr=0", "train.lr must be > 0"),
    ("train.lr=-1e-4", "train.lr must be > 0"),
    ("train.batch_size=0", "train.batch_size must be > 0"),
    ("train.mixed_precision=fp8", "train.mixed_precision must be one of"),
    ("train.lr_schedule=linear", "train.lr_schedule must be one of"),
    ("train.ema_decay=1.0", "train.ema_decay must be in"),
    ("train.vlm_lr_scale=0", "train.vlm_lr_scale must be in"),
    ("train.grounding_loss_weight=-1", "train.grounding_loss_weight must be >= 0"),
    ("train.grounding_loss_weight=.nan", "train.grounding_loss_weight must be a finite number"),
    ("train.grounding_loss_weight=.inf", "train.grounding_loss_weight must be a finite number"),
    ("model.noise_scale=-0.1", "model.noise_scale must be in"),
    ("model.selected_layers=[1, 2, 3]", "model.selected_layers must have 1 or model.rdt.depth=2"),
    ("model.rdt.num_heads=3", "model.rdt: rdt.hidden_size 32 must be divisible by num_heads 3"),
    ("data.gripper_channels=[8]", "gripper_channels"),
    ("train.train_backbone=yes please", "train.train_backbone must be true or false"),
    ("distill.teacher=/no/such/checkpoint", "distill.teacher"),
])
def test_bad_configs_fail_with_the_dotted_key(workdir, override, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(workdir, "never", override)


def test_missing_dataset_dir_fails_before_training(workdir, capsys):
    with pytest.raises(ValueError, match=r"data.dataset_dirs: \['/no/such/episodes'\] do not exist"):
        tiny_config(workdir, "never", "data.dataset_dirs=[/no/such/episodes]")
    code = train_main(["--config", str(CONFIGS / "sim_pick_tiny.yaml"), "--run-dir", str(workdir / "never"),
                       "data.dataset_dirs=[/no/such/episodes]"])
    assert code == 2 and "data.dataset_dirs" in capsys.readouterr().err
    assert not (workdir / "never").exists()


def test_dotted_overrides_and_the_shipped_recipes(workdir, tiny_backbone_dir):
    config = tiny_config(workdir, "parsed", "train.lr=1e-4", "train.betas=[0.9, 0.95]", "data.image_size=[48, 64]",
                         "model.init_from=null", "train.mixed_precision=no", "model.rdt.depth=1",
                         "model.selected_layers=[2]", "distill.teacher_steps=3")
    assert config.train.lr == pytest.approx(1e-4) and isinstance(config.train.lr, float)  # YAML reads 1e-4 as str
    assert config.train.betas == [0.9, 0.95] and config.data.image_size == [48, 64]
    assert config.train.mixed_precision == "no" and config.model.rdt.depth == 1
    assert config.model.init_from is None and config.distill.teacher_steps == 3
    io = config.data.io_schema()
    assert (io.cameras[0].height, io.cameras[0].width) == (48, 64)

    episodes = f"data.dataset_dirs=[{workdir / 'episodes'}]"
    tiny = load_config(CONFIGS / "sim_pick_tiny.yaml", [episodes])
    assert (tiny.data.chunk_len, tiny.data.action_dim, tiny.data.state_dim, tiny.data.image_size) == (16, 8, 9,
                                                                                                     [128, 128])
    assert tiny.data.action_space == "delta_joint" and tiny.data.state_input is False
    assert tiny.model.backbone == "tiny"
    with pytest.raises(ValueError, match="model.backbone"):  # the GEM-2B path is a placeholder
        load_config(CONFIGS / "gem2b_full.yaml", [episodes])
    full = load_config(CONFIGS / "gem2b_full.yaml", [episodes, f"model.backbone={tiny_backbone_dir}"])
    t = full.train
    assert (t.lr, t.lr_schedule, t.weight_decay, t.betas, t.eps, t.grad_clip, t.mixed_precision) == (
        1e-5, "constant", 1e-2, [0.9, 0.999], 1e-8, 1.0, "bf16")
    assert (t.depth_loss_weight, t.batch_size, t.checkpoint_every, t.keep_last) == (0.1, 16, 5000, 40)
    zero2 = json.loads((CONFIGS / "zero2.json").read_text())
    assert zero2["zero_optimization"]["stage"] == 2


# ------------------------------------------------------------------------------------------- training
def test_training_reduces_the_held_out_loss(trained_run):
    evals = [h for h in trained_run.history if "eval/loss_action" in h]
    assert [h["step"] for h in evals] == [0, 30]
    assert evals[-1]["eval/loss_action"] < 0.9 * evals[0]["eval/loss_action"]
    assert evals[-1]["eval/action_mse"] < evals[0]["eval/action_mse"]
    logged = [h for h in trained_run.history if "loss/action" in h]
    assert len(logged) == 30 and all(np.isfinite(h["grad_norm"]) and h["samples_per_s"] > 0 for h in logged)
    assert (trained_run.checkpoint.parents[1] / "tensorboard").is_dir()


def test_checkpoints_are_safetensors_and_json_only(straight_run):
    step_dir = straight_run.checkpoint
    files = [p for p in step_dir.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} <= {".safetensors", ".json", ".jinja", ".txt"}, sorted(p.name for p in files)
    for p in files:  # no pickle (protocol 2+ starts with 0x80) and no torch.save zip archive
        assert p.read_bytes()[:2] not in (b"PK",) and p.read_bytes()[:1] != b"\x80", p
    meta = json.loads((step_dir / STATE_JSON).read_text())
    assert meta["position"]["step"] == 6 and meta["files"][STATE_FILE] == (step_dir / STATE_FILE).stat().st_size
    assert any(k.startswith("optimizer.state.") for k in read_tensors(step_dir / STATE_FILE))


def test_retention_keeps_the_last_k(straight_run):
    names = [p.name for p in list_checkpoints(straight_run.checkpoint.parents[1])]
    assert names == ["step_4", "step_6"]
    assert not list((straight_run.checkpoint.parent).glob(".*"))  # no scratch or half-deleted folders


def test_fresh_run_refuses_a_run_dir_with_checkpoints(workdir, data, straight_run):
    config = tiny_config(workdir, "straight", "train.max_steps=6")
    with pytest.raises(ValueError, match="already holds checkpoints; pass --resume"):
        train(config, data=data)


def test_killed_and_resumed_run_matches_the_uninterrupted_one(workdir, data, straight_run):
    config = tiny_config(workdir, "killed", "train.max_steps=6", "train.checkpoint_every=2", "train.keep_last=2",
                         "train.eval_every=1000")

    def kill_at_step_5(step: int, logs: dict) -> None:
        if step == 5:  # after step 5's update, before any checkpoint of it
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        train(config, data=data, on_step=kill_at_step_5)
    run_dir = Path(config.run_dir)
    assert [p.name for p in list_checkpoints(run_dir)] == ["step_2", "step_4"]
    (run_dir / "checkpoints" / ".step_6.tmp-999").mkdir()  # debris of a kill during a checkpoint write

    resumed = train(config, resume=True, data=data)
    assert resumed.checkpoint.name == "step_6"
    assert not (run_dir / "checkpoints" / ".step_6.tmp-999").exists()
    expected, got = all_tensors(straight_run.checkpoint), all_tensors(resumed.checkpoint)
    assert expected.keys() == got.keys()
    different = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert not different, different[:5]
    positions = [json.loads((r / STATE_JSON).read_text())["position"] for r in (straight_run.checkpoint,
                                                                                 resumed.checkpoint)]
    assert positions[0] == positions[1]
    moments = [read_tensors(r / STATE_FILE) for r in (straight_run.checkpoint, resumed.checkpoint)]
    assert all(torch.equal(moments[0][k], moments[1][k]) for k in moments[0] if k.startswith("optimizer."))


def test_vlm_lr_scale_slows_the_vlm_only(workdir, data):
    """train.vlm_lr_scale 0.1: the VLM's weights move about a tenth as far in the same steps (AdamW's first steps
    are ~lr each)."""
    def shards(folder: Path, name: str) -> dict[str, torch.Tensor]:
        return {k: v for shard in sorted(folder.glob(name)) for k, v in read_tensors(shard).items()}

    moved = {}
    for scale in (1.0, 0.1):
        config = tiny_config(workdir, f"vlm_scale_{scale}", "train.max_steps=3", "train.checkpoint_every=3",
                             "train.eval_every=1000", f"train.vlm_lr_scale={scale}")
        result = train(config, data=data)
        start, end = shards(Path(config.run_dir) / "tiny_backbone", "*.safetensors"), \
            shards(result.checkpoint / "backbone", "*.safetensors")
        common = [k for k in start if k in end and start[k].is_floating_point()]
        assert common
        moved[scale] = max((end[k] - start[k]).abs().max().item() for k in common)
    assert 0 < moved[0.1] < 0.2 * moved[1.0], moved


def test_ema_serves_the_average_and_a_killed_ema_run_resumes_bit_exactly(workdir, data, straight_run):
    common = ("train.max_steps=6", "train.checkpoint_every=2", "train.keep_last=2", "train.eval_every=1000",
              "train.ema_decay=0.9")
    ema_run = train(tiny_config(workdir, "ema_straight", *common), data=data)
    # EMA does not change training: its raw weights are the plain run's weights; its serving weights are not.
    plain = list(all_tensors(straight_run.checkpoint).values())
    raw = {k: v for k, v in read_tensors(ema_run.checkpoint / STATE_FILE).items() if k.startswith("training_weights.")}
    assert raw and all(any(torch.equal(w, p) for p in plain) for w in raw.values())
    served = all_tensors(ema_run.checkpoint)
    changed = [k for k, v in served.items() if not any(torch.equal(v, p) for p in plain)]
    assert len(changed) >= len(raw) // 2
    config = tiny_config(workdir, "ema_killed", *common)

    def kill_at_step_5(step: int, logs: dict) -> None:
        if step == 5:
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        train(config, data=data, on_step=kill_at_step_5)
    resumed = train(config, resume=True, data=data)
    got = all_tensors(resumed.checkpoint)
    assert [k for k in served if not torch.equal(served[k], got[k])] == []
    resumed_raw = read_tensors(resumed.checkpoint / STATE_FILE)
    assert all(torch.equal(v, resumed_raw[k]) for k, v in raw.items())


def test_corrupt_newest_checkpoint_is_named_and_skipped(workdir, data, straight_run, caplog):
    run_dir = workdir / "corrupt"
    shutil.copytree(straight_run.checkpoint.parents[1], run_dir)
    newest = run_dir / "checkpoints" / "step_6" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a write cut short
    with caplog.at_level(logging.WARNING, logger="gem_train"):
        assert find_resume_checkpoint(run_dir).name == "step_4"
    assert "step_6" in caplog.text and "model.safetensors" in caplog.text and "truncated" in caplog.text

    # Resuming goes on from step_4 and rewrites step_6 identical to the uninterrupted run's.
    config = tiny_config(workdir, "corrupt", "train.max_steps=6", "train.checkpoint_every=2", "train.keep_last=2",
                         "train.eval_every=1000")
    resumed = train(config, resume=True, data=data)
    expected, got = all_tensors(straight_run.checkpoint), all_tensors(resumed.checkpoint)
    assert all(torch.equal(expected[k], got[k]) for k in expected)

    for step_dir in list_checkpoints(run_dir):
        (step_dir / STATE_JSON).write_text("{ not json")
    with pytest.raises(ValueError, match="no complete checkpoint"):
        find_resume_checkpoint(run_dir)


# ------------------------------------------------------------------------------------------- export, distill
def test_export_loads_and_predicts(workdir, trained_run, make_observation):
    out = workdir / "exported"
    assert export.main(["--checkpoint", str(trained_run.checkpoint.parents[1]), "--out", str(out)]) == 0
    assert not (out / STATE_FILE).exists() and not (out / STATE_JSON).exists()
    served = GemVLAPolicy.from_pretrained(out, device="cpu")
    direct = GemVLAPolicy.from_pretrained(trained_run.checkpoint, device="cpu")
    obs = make_observation(served.config, seed=3)
    chunk = served.predict_action_chunk(obs, seed=1)
    assert chunk.shape == (CHUNK, ACTION_DIM) and np.all(np.isfinite(chunk))
    np.testing.assert_array_equal(chunk, direct.predict_action_chunk(obs, seed=1))
    assert served.config.sampler == "euler"


def test_export_noise_scale_narrows_the_sampler_and_is_validated(workdir, trained_run, make_observation):
    out = workdir / "exported_narrow"
    assert export.main(["--checkpoint", str(trained_run.checkpoint), "--out", str(out), "--noise-scale", "0"]) == 0
    narrow = GemVLAPolicy.from_pretrained(out, device="cpu")
    assert narrow.config.noise_scale == 0.0
    obs = make_observation(narrow.config, seed=3)
    # zero starting noise: the chunk no longer depends on the noise seed (the sampler's mode-seeking limit)
    np.testing.assert_array_equal(narrow.predict_action_chunk(obs, seed=1), narrow.predict_action_chunk(obs, seed=2))
    default = GemVLAPolicy.from_pretrained(trained_run.checkpoint, device="cpu")
    assert default.config.noise_scale == 1.0
    assert not np.array_equal(default.predict_action_chunk(obs, seed=1), default.predict_action_chunk(obs, seed=2))
    assert export.main(["--checkpoint", str(trained_run.checkpoint), "--out", str(workdir / "bad"),
                        "--noise-scale", "1.5"]) == 2
    assert not (workdir / "bad").exists()


def test_one_step_distillation_reduces_its_loss(workdir, data, trained_run, make_observation):
    config = tiny_config(workdir, "distilled", f"distill.teacher={trained_run.checkpoint}", "distill.steps=12",
                         "train.eval_every=12", "train.checkpoint_every=12")
    result = train(config, data=data)
    evals = [h for h in result.history if "eval/loss_distill" in h]
    assert [h["step"] for h in evals] == [0, 12]
    assert evals[-1]["eval/loss_distill"] < 0.7 * evals[0]["eval/loss_distill"]
    out = export.export_checkpoint(result.checkpoint, workdir / "distilled_export")
    policy = GemVLAPolicy.from_pretrained(out, device="cpu")
    assert policy.config.sampler == "one_step"
    teacher, student = read_tensors(trained_run.checkpoint / "backbone" / "model.safetensors"), read_tensors(
        out / "backbone" / "model.safetensors")
    assert all(torch.equal(teacher[k], student[k]) for k in teacher)  # the VLM is frozen while distilling
    assert policy.predict_action_chunk(make_observation(policy.config)).shape == (CHUNK, ACTION_DIM)


def test_depth_expert_joint_loss_and_checkpoint(workdir):
    depth_data = bundle(ChunkSamples(8, seed=0, depth_size=64), ChunkSamples(4, seed=1, depth_size=64))
    config = tiny_config(workdir, "depth", "model.depth_expert=true", "model.depth_image_size=64",
                         "train.depth_loss_weight=0.5", "train.action_loss_weight=2.0", "train.max_steps=2",
                         "train.eval_every=2", "train.checkpoint_every=2")
    result = train(config, data=depth_data)
    step = next(h for h in result.history if "loss/depth" in h)
    # total = action + (depth_w / action_w) * depth; the loop multiplies by action_w before backward
    assert step["loss/total"] == pytest.approx(step["loss/action"] + 0.25 * step["loss/depth"], rel=1e-5)
    assert "eval/loss_depth" in result.history[-1]
    assert (result.checkpoint / "depth_expert.safetensors").is_file()
    assert GemVLAPolicy.from_pretrained(result.checkpoint, device="cpu").depth_expert is not None


def test_init_from_keeps_the_checkpoint_normalizer(workdir, data, trained_run):
    config = tiny_config(workdir, "finetune", f"model.init_from={trained_run.checkpoint}", "train.max_steps=1",
                         "train.eval_every=1000")
    shifted = bundle(ChunkSamples(10, seed=5), ChunkSamples(4, seed=6))
    shifted.stats["action"]["max"] = shifted.stats["action"]["max"] + 10.0  # must be ignored
    result = train(config, data=shifted)
    before = GemVLAPolicy.from_pretrained(trained_run.checkpoint, device="cpu", for_training=True)
    after = GemVLAPolicy.from_pretrained(result.checkpoint, device="cpu", for_training=True)
    np.testing.assert_array_equal(before.action_normalizer.maximum, after.action_normalizer.maximum)
    assert not (Path(config.run_dir) / "tiny_backbone").exists()


def test_the_checkpoint_records_the_sim_scene_its_episodes_share():
    from gem_ros.sim.scene import scene_overrides
    from gem_train.train import sim_scene_of

    red = {"object_colors": ["red"], "coarse_robot_meshes": False, "source": "a.hdf5"}
    assert sim_scene_of([red, {**red, "source": "b.hdf5"}]) == {"object_colors": ["red"], "coarse_robot_meshes": False}
    assert sim_scene_of([red, {**red, "object_colors": ["red", "blue"]}]) is None     # mixed scenes: no claim
    assert sim_scene_of([red, {"source": "recorded on a real arm"}]) is None
    assert scene_overrides(None) == {} and scene_overrides({"object_colors": ["red"]}) == {"object_colors": ["red"]}
    with pytest.raises(ValueError, match="unknown fields"):
        scene_overrides({"gravity": -9.81})
