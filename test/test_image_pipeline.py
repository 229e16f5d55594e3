"""The reference image pipeline (gem_reference §9): native resolution within the processor's pixel bounds, camera
dropout that removes the image from the prompt, the noise / blur / JPEG corruptions; recorded in the checkpoint so
that serving feeds the model exactly what training fed it. The defaults keep the fixed-size pipeline."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from gem_train.data import ChunkDataset, ChunkDatasetConfig, EpisodeData, collate_batch, write_episode
from gem_train.data import augment

CAMS = ("scene", "wrist")


def make_episode(n=6, size=(72, 100), seed=0, depth=True) -> EpisodeData:
    rng = np.random.default_rng(seed)
    return EpisodeData(actions=rng.normal(size=(n, 8)).astype(np.float32),
                       states=rng.normal(size=(n, 9)).astype(np.float32),
                       images={c: rng.integers(0, 256, (n, *size, 3), dtype=np.uint8) for c in CAMS},
                       instructions=["pick up the red cube"],
                       depth={c: rng.uniform(0.2, 1.5, (n, *size)).astype(np.float32) for c in CAMS} if depth else None,
                       meta={"control_rate_hz": 10.0, "action_space": "absolute_joint"})


# ------------------------------------------------------------------------------------------- corruptions
def test_corruption_draws_follow_the_reference_recipe(monkeypatch):
    """Noise always; blur and JPEG each with p 0.168 (train/image_corrupt.py); half the images augmented, by colour
    jitter, corruption or both, a third each (train/dataset.py)."""
    calls = {"noise": 0, "blur": 0, "jpeg": 0}

    def counting(name):
        return lambda image, rng: calls.__setitem__(name, calls[name] + 1) or image

    monkeypatch.setattr(augment, "_additive_noise", counting("noise"))
    monkeypatch.setattr(augment, "_blur", counting("blur"))
    monkeypatch.setattr(augment, "_jpeg", counting("jpeg"))
    image = np.zeros((8, 8, 3), np.uint8)
    n = 4000
    for i in range(n):
        augment.image_corrupt(image, np.random.default_rng(i))
    assert calls["noise"] == n
    for name in ("blur", "jpeg"):   # binomial(4000, 0.168): std 0.006
        assert abs(calls[name] / n - 0.168) < 0.025, calls

    kinds = {"color": 0, "corrupt": 0, "both": 0, "none": 0}
    monkeypatch.setattr(augment, "color_jitter", lambda image, rng: image + 1)
    monkeypatch.setattr(augment, "image_corrupt", lambda image, rng: image + 2)
    for i in range(3000):
        out = augment.reference_augment(image, np.random.default_rng(i), color=True, corrupt=True)
        kinds[{0: "none", 1: "color", 2: "corrupt", 3: "both"}[int(out[0, 0, 0])]] += 1
    assert abs(kinds["none"] / 3000 - 0.5) < 0.04
    for kind in ("color", "corrupt", "both"):
        assert abs(kinds[kind] / 3000 - 1 / 6) < 0.04, kinds


def test_corruptions_keep_the_image_and_stay_within_the_reference_strength():
    rng = np.random.default_rng(0)
    image = rng.integers(40, 216, (48, 64, 3), dtype=np.uint8)
    outs = [augment.image_corrupt(image, np.random.default_rng(i)) for i in range(60)]
    assert all(o.shape == image.shape and o.dtype == np.uint8 for o in outs)
    assert sum(not np.array_equal(o, image) for o in outs) >= 55
    assert np.array_equal(augment.image_corrupt(image, np.random.default_rng(7)), outs[7])   # seeded, nothing else
    noise = [augment._additive_noise(image, np.random.default_rng(i)) for i in range(60)]
    # Gaussian / Laplace / Poisson noise of scale <= 0.02 * 255 = 5.1: the mean change stays a few grey levels.
    assert max(np.abs(o.astype(int) - image).mean() for o in noise) < 8.0
    # JPEG strength: compression 0..50 maps to quality round(1 + 99 (1 - c / 101)), i.e. 100..51.
    assert [int(np.round(1 + 99 * (1 - c / 101))) for c in (0, 50)] == [100, 51]


# ------------------------------------------------------------------------------------------- dataset
def test_removed_cameras_leave_the_prompt_and_their_depth_targets_follow_the_spans():
    episode = make_episode(n=40, size=(24, 32))
    cfg = ChunkDatasetConfig(list(CAMS), chunk_len=2, image_size=(24, 32), image_drop_prob=0.5, depth_size=8,
                             camera_dropout="remove", seed=3)
    samples = [s for s in ChunkDataset([episode], cfg)]
    counts = [len(s["images"]) for s in samples]
    assert set(counts) == {0, 1, 2}                            # some samples lost one camera, some both
    for s in samples:
        assert len(s["image_cameras"]) == len(s["images"])
        assert all(img.any() for img in s["images"])           # never a black stand-in
        for cam, img in zip(s["image_cameras"], s["images"]):  # each kept image is its camera's frame
            assert np.array_equal(img, episode.images[cam][s["step"]])
        kept = len(s["images"])
        assert list(s["depth_valid"]) == [True] * kept + [False] * (2 - kept)   # targets in span order
    one = next(s for s in samples if s["image_cameras"] == ["wrist"])
    full = ChunkDataset([episode], ChunkDatasetConfig(list(CAMS), chunk_len=2, image_size=(24, 32), depth_size=8))
    assert np.array_equal(one["depth"][0], full[int(np.flatnonzero([s is one for s in samples])[0])]["depth"][1])
    batch = collate_batch(samples[:8])
    assert [len(images) for images in batch.images] == counts[:8]


def test_blank_dropout_is_still_the_default():
    cfg = ChunkDatasetConfig(list(CAMS), chunk_len=2, image_size=(24, 32), image_drop_prob=0.5, seed=3)
    samples = [s for s in ChunkDataset([make_episode(n=20, size=(24, 32))], cfg)]
    assert cfg.camera_dropout == "blank" and not cfg.image_corruptions and not cfg.native_resolution
    assert all(len(s["images"]) == 2 for s in samples)
    assert any(not img.any() for s in samples for img in s["images"])


def test_corrupted_and_removed_samples_are_a_function_of_seed_epoch_and_index(tmp_path):
    """--resume stays bit-exact: every new draw comes from the sample's (seed, epoch, index) generator."""
    import pickle

    paths = [write_episode(tmp_path / f"episode_{k}.hdf5", make_episode(n=6, size=(24, 32), seed=k)) for k in (0, 1)]
    cfg = ChunkDatasetConfig(list(CAMS), chunk_len=2, image_size=(24, 32), image_drop_prob=0.3, color_jitter=True,
                             image_corruptions=True, camera_dropout="remove", depth_size=8, seed=5)
    keys = [(i, epoch) for epoch in range(2) for i in range(12)]
    first = [ChunkDataset(paths, cfg)[key] for key in keys]
    other = pickle.loads(pickle.dumps(ChunkDataset(paths, cfg)))
    for key, a in reversed(list(zip(keys, first))):
        b = other[key]
        assert a["image_cameras"] == b["image_cameras"] and a["instruction"] == b["instruction"]
        assert all(np.array_equal(x, y) for x, y in zip(a["images"], b["images"]))
        assert np.array_equal(a["depth"], b["depth"]) and np.array_equal(a["depth_valid"], b["depth_valid"])
    plain = ChunkDataset(paths, ChunkDatasetConfig(list(CAMS), chunk_len=2, image_size=(24, 32)))
    changed = sum(not np.array_equal(img, plain[i]["images"][CAMS.index(cam)])
                  for (i, _), s in zip(keys, first) for cam, img in zip(s["image_cameras"], s["images"]))
    assert changed >= 8   # about half the kept images are jittered and/or corrupted


def test_native_resolution_never_resizes_and_refuses_another_size():
    episode = make_episode(n=4, size=(72, 100))
    native = ChunkDataset([episode], ChunkDatasetConfig(list(CAMS), chunk_len=2, image_size=(72, 100),
                                                        native_resolution=True))
    assert np.array_equal(native[1]["images"][0], episode.images["scene"][1])
    wrong = ChunkDataset([episode], ChunkDatasetConfig(list(CAMS), chunk_len=2, image_size=(96, 128),
                                                       native_resolution=True))
    with pytest.raises(ValueError, match=r"camera 'scene' frame 0 is 100 x 72 px, not the configured native 128 x 96"):
        wrong[0]


# ------------------------------------------------------------------------------------------- train = serve
def _native_recipe(tmp_path, backbone):
    from gem_train.config import load_config

    data_dir = tmp_path / "episodes"
    data_dir.mkdir()
    write_episode(data_dir / "episode_0.hdf5", make_episode(n=6, size=(72, 100), depth=False))
    return load_config(None, [
        f"run_dir={tmp_path / 'run'}", f"data.dataset_dirs=[{data_dir}]", "data.val_fraction=0.0",
        "data.cameras=[scene, wrist]", "data.image_size=[72, 100]", "data.image_resize=native",
        "data.camera_dropout=remove", "data.image_corruptions=true", "data.state_dim=9", "data.action_dim=8",
        "data.chunk_len=4", f"model.backbone={backbone}", "model.min_pixels_per_image=12288",
        "model.rdt={hidden_size: 32, depth: 2, num_heads: 4, num_kv_heads: 2, num_register_tokens: 2, "
        "ffn_multiple_of: 16, timestep_freq_dim: 32}", "model.selected_layers=[1, 2]", "train.mixed_precision=no"])


class PatchTap:
    """What the vision tower's patch embedding receives: the pixels the model sees."""

    def __init__(self, policy):
        self.seen: list[torch.Tensor] = []
        self.handle = policy.backbone.model.visual.patch_embed.register_forward_pre_hook(
            lambda module, args: self.seen.append(args[0].detach().clone()))


def test_serving_feeds_the_model_the_pixels_training_fed_it(tmp_path, tiny_backbone_dir):
    from gem_ros.core.policy.gem_vla import GemVLAPolicy
    from gem_ros.core.policy.observation import Observation
    from gem_train.train import load_data, load_model

    config = _native_recipe(tmp_path, tiny_backbone_dir)
    data = load_data(config)
    torch.manual_seed(0)
    policy = load_model(config, data.stats, None, torch.device("cpu"))[0]
    pipeline = policy.config.image_pipeline
    assert (pipeline.resize, pipeline.min_pixels, pipeline.max_pixels) == ("native", 12288, 262144)

    # Training: the sample as the loader gives it without augmentation (the same frame the robot would send).
    plain = ChunkDataset(data.train_set._sources, ChunkDatasetConfig.from_io_schema(
        policy.config.io, native_resolution=True))
    sample = plain[2]
    tap = PatchTap(policy)
    policy(collate_batch([sample]))
    trained = tap.seen[-1]
    # 72 x 100 px is below min_pixels 12288: the processor's smart resize gives 96 x 160 px, 6 x 10 patches each.
    assert trained.shape[0] == 2 * 6 * 10

    policy.save_pretrained(tmp_path / "ckpt")
    recorded = json.loads((tmp_path / "ckpt" / "config.json").read_text())["image_pipeline"]
    assert recorded == {"resize": "native", "min_pixels": 12288, "max_pixels": 262144, "camera_dropout": "remove",
                        "corruptions": True}
    served = GemVLAPolicy.from_pretrained(tmp_path / "ckpt", device="cpu")
    observation = Observation(images=dict(zip(CAMS, sample["images"])), state=sample["state"],
                              instruction=sample["instruction"])
    for mode in ("static", "hf"):
        served.inference_mode = mode
        tap = PatchTap(served)
        served.predict_action_chunk(observation, seed=0)
        assert torch.equal(tap.seen[-1], trained), mode
        tap.handle.remove()


def test_recorded_pixel_bounds_must_match_the_saved_processor(tmp_path, tiny_backbone_dir):
    from gem_ros.core.policy.gem_vla import GemVLAPolicy
    from gem_train.train import build_policy, load_data

    config = _native_recipe(tmp_path, tiny_backbone_dir)
    policy = build_policy(config, load_data(config).stats, torch.device("cpu"))
    policy.save_pretrained(tmp_path / "ckpt")
    config_file = tmp_path / "ckpt" / "config.json"
    saved = json.loads(config_file.read_text())
    saved["image_pipeline"]["min_pixels"] = 4096
    config_file.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=r"image_pipeline.min_pixels 4096 .* != 12288"):
        GemVLAPolicy.from_pretrained(tmp_path / "ckpt", device="cpu")


def test_checkpoints_without_an_image_pipeline_load_and_serve_as_before(tmp_path, tiny_checkpoint_dir,
                                                                         make_observation):
    from gem_ros.core.policy.gem_vla import GemVLAPolicy

    written = json.loads((tiny_checkpoint_dir / "config.json").read_text())
    assert written["image_pipeline"]["resize"] == "fixed"          # today's checkpoints say what they did
    old = tmp_path / "old"
    shutil.copytree(tiny_checkpoint_dir, old)
    (old / "config.json").write_text(json.dumps({k: v for k, v in written.items() if k != "image_pipeline"}))
    before, after = (GemVLAPolicy.from_pretrained(path, device="cpu") for path in (tiny_checkpoint_dir, old))
    assert after.config.image_pipeline == before.config.image_pipeline
    observation = make_observation(before.config)
    assert np.array_equal(after.predict_action_chunk(observation, seed=1),
                          before.predict_action_chunk(observation, seed=1))


def test_fine_tuning_keeps_the_checkpoints_resize(tmp_path, tiny_checkpoint_dir):
    from gem_train.config import load_config
    from gem_train.train import load_model

    data_dir = tmp_path / "episodes"
    data_dir.mkdir()
    config = load_config(None, [f"run_dir={tmp_path / 'run'}", f"data.dataset_dirs=[{data_dir}]",
                                "data.image_resize=native", "data.state_dim=9", "data.action_dim=9",
                                "data.chunk_len=8", "data.image_size=64", "model.selected_layers=[1]",
                                f"model.init_from={tiny_checkpoint_dir}"])
    with pytest.raises(ValueError, match="image_resize 'native' differs .* 'fixed'"):
        load_model(config, {}, None, torch.device("cpu"))


def test_gem2b_recipe_selects_the_reference_pipeline_and_the_tiny_recipe_keeps_the_fixed_one(tmp_path,
                                                                                             tiny_backbone_dir):
    from pathlib import Path

    from gem_train.config import load_config

    configs = Path(__file__).resolve().parents[1] / "gem_train" / "configs"
    (tmp_path / "episodes").mkdir()
    episodes = f"data.dataset_dirs=[{tmp_path / 'episodes'}]"
    full = load_config(configs / "gem2b_full.yaml", [episodes, f"model.backbone={tiny_backbone_dir}"]).data
    assert (full.image_resize, full.camera_dropout, full.image_corruptions, full.color_jitter) == (
        "native", "remove", True, True)
    tiny = load_config(configs / "sim_pick_tiny.yaml", [episodes]).data
    assert (tiny.image_resize, tiny.camera_dropout, tiny.image_corruptions) == ("fixed", "blank", False)


def test_a_batch_whose_samples_lost_cameras_trains_with_the_depth_loss(tiny_backbone_dir):
    """Prompts of 0, 1 and 2 images in one batch: action and depth losses stay finite and backpropagate."""
    from gem_ros.core.policy.gem_vla import GemVLAPolicy
    from gem_ros.core.policy.normalizer import MinMaxNormalizer
    from gem_ros.core.policy.tiny import tiny_policy_config
    from gem_ros.core.policy.tiny_depth import tiny_depth_expert_config

    torch.manual_seed(0)
    config = tiny_policy_config(action_dim=8, chunk_len=2,
                                depth_expert=tiny_depth_expert_config(64, 64, init="random").to_dict())
    policy = GemVLAPolicy.build(config, tiny_backbone_dir, MinMaxNormalizer(-np.ones(8), np.ones(8)), device="cpu")
    dataset = ChunkDataset([make_episode(n=40, size=(64, 64))], ChunkDatasetConfig(
        list(CAMS), chunk_len=2, image_size=(64, 64), image_drop_prob=0.5, camera_dropout="remove",
        image_corruptions=True, color_jitter=True, depth_size=64, native_resolution=True, seed=1))
    samples = [dataset[i] for i in range(40)]
    picked = [next(s for s in samples if len(s["images"]) == n) for n in (0, 1, 2)]
    loss, logs = policy(collate_batch(picked), torch.Generator().manual_seed(0))
    loss.backward()
    assert np.isfinite(logs["loss/action"]) and logs["loss/depth"] > 0
    assert policy.depth_expert.diffusion_connector[0].weight.grad.abs().sum() > 0


def test_a_policy_built_on_a_backbone_resizes_within_the_configs_pixel_bounds(tiny_backbone_dir):
    """GemVLAPolicy.build (gem_import, fine-tuning from a folder) hands the recorded min_pixels to the processor, as
    training does: serving then checks the saved processor against the same bounds."""
    from gem_ros.core.policy.backbone import pixel_bounds
    from gem_ros.core.policy.gem_vla import GemVLAPolicy
    from gem_ros.core.policy.normalizer import MinMaxNormalizer
    from gem_ros.core.policy.tiny import tiny_policy_config

    config = tiny_policy_config(action_dim=8, chunk_len=2)
    config.image_pipeline.min_pixels = 20480
    policy = GemVLAPolicy.build(config, tiny_backbone_dir, MinMaxNormalizer(-np.ones(8), np.ones(8)), device="cpu")
    assert pixel_bounds(policy.processor.image_processor)[0] == 20480
