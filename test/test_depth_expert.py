"""Depth expert: config, image-span conditioning, flow-matching loss, GEM-2B key routing, sampling."""
from __future__ import annotations

import json
import warnings

import pytest
import torch

from gem_ros.core.policy.depth_expert import DepthExpert, DepthExpertConfig
from gem_ros.core.policy.tiny_depth import tiny_depth_expert_config

START, END = 151652, 151653
HIDDEN = 64


def make_batch(cameras: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[list[tuple[int, int]]]]:
    """Two samples with `cameras` image spans of different lengths; sample 1 is left-padded (pad id 0)."""
    layouts = [[(2, 6), (8, 14)], [(4, 9), (11, 14)]]  # (start, end) token index per span
    layouts = [spans[:cameras] for spans in layouts]
    ids = torch.full((2, 16), 7, dtype=torch.long)
    ids[1, :3] = 0
    for b, spans in enumerate(layouts):
        for s, e in spans:
            ids[b, s], ids[b, e] = START, END
    hidden = torch.randn(2, 16, HIDDEN, generator=torch.Generator().manual_seed(seed))
    return hidden, ids, layouts


def make_expert(seed: int = 0, **overrides) -> DepthExpert:
    torch.manual_seed(seed)
    return DepthExpert(tiny_depth_expert_config(vlm_hidden_size=HIDDEN, **overrides))


def depth_targets(cameras: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.rand(2, cameras, 3, 64, 64, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tiny ops (conftest)


# --- config -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value", [("image_size", 100), ("image_size", 0), ("cond_dropout", 1.0),
                                          ("cond_dropout", -0.1), ("caption_channels", 48),
                                          ("vision_end_token_id", START), ("num_train_timesteps", 0)])
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field.split("_token")[0]):
        DepthExpertConfig(**{field: value})


def test_config_round_trips_through_json():
    for cfg in (DepthExpertConfig(), tiny_depth_expert_config()):
        again = DepthExpertConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
        assert again == cfg
    with pytest.raises(ValueError, match="unknown"):
        DepthExpertConfig.from_dict({"nope": 1})


def test_full_size_config_has_gem_2b_shapes():
    cfg = DepthExpertConfig()
    assert (cfg.vae_compression, cfg.latent_size) == (32, 8)
    with torch.device("meta"):  # shapes only: no 1.9B-parameter allocation
        expert = DepthExpert(cfg)
    shapes = {k: tuple(v.shape) for k, v in expert.state_dict().items()}
    assert shapes["diffusion_connector.0.weight"] == (2304, 2048)
    assert shapes["diffusion_connector.2.weight"] == (2304, 2304)
    assert shapes["diffusion_connector.3.weight"] == (2304,)
    assert shapes["sana.caption_projection.linear_1.weight"] == (2240, 2304)
    assert shapes["sana.transformer_blocks.19.attn2.to_k.weight"] == (2240, 2240)
    assert shapes["vae.encoder.conv_out.weight"][0] == 32
    sana_params = sum(p.numel() for p in expert.sana.parameters())
    assert 1.59e9 < sana_params < 1.62e9  # SANA1.5-1.6B
    assert all(k.startswith(("sana.", "vae.", "diffusion_connector.")) for k in shapes)


# --- conditioning -----------------------------------------------------------------------------------

def test_image_span_condition_extracts_tokens_between_markers():
    expert = make_expert()
    hidden, ids, layouts = make_batch()
    cond, mask, owner, order = expert.image_span_condition(hidden, ids)
    spans = [(b, c, s, e) for b, sp in enumerate(layouts) for c, (s, e) in enumerate(sp)]
    assert cond.shape == (4, 5, HIDDEN) and mask.shape == (4, 5) and mask.dtype == torch.bool
    assert owner.tolist() == [0, 0, 1, 1] and order.tolist() == [0, 1, 0, 1]
    for i, (b, _, s, e) in enumerate(spans):
        n = e - s - 1
        assert mask[i].tolist() == [True] * n + [False] * (5 - n)
        assert torch.equal(cond[i, :n], hidden[b, s + 1:e])
        assert torch.all(cond[i, n:] == 0)


def test_unbalanced_vision_markers_raise():
    expert = make_expert()
    hidden, ids, _ = make_batch()
    ids[0, 6] = 7  # drop the first END of sample 0
    with pytest.raises(ValueError, match="unbalanced"):
        expert.image_span_condition(hidden, ids)


# --- loss -------------------------------------------------------------------------------------------

def test_loss_backprop_reaches_connector_sana_and_image_tokens_but_not_vae():
    expert = make_expert(cond_dropout=0.0).train()  # a dropped span would (rightly) get no gradient
    assert not expert.vae.training
    hidden, ids, layouts = make_batch()
    hidden.requires_grad_(True)
    loss = expert.loss(hidden, ids, depth_targets(), generator=gen(0))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    for name in ("diffusion_connector.0.weight", "diffusion_connector.3.weight",
                 "sana.transformer_blocks.0.attn2.to_k.weight", "sana.proj_out.weight"):
        assert expert.get_parameter(name).grad.abs().sum() > 0, name
    assert all(not p.requires_grad and p.grad is None for p in expert.vae.parameters())
    # Only tokens strictly inside image spans condition the depth map.
    inside = torch.zeros(2, 16, dtype=torch.bool)
    for b, spans in enumerate(layouts):
        for s, e in spans:
            inside[b, s + 1:e] = True
    token_grad = hidden.grad.abs().sum(-1)
    assert torch.all(token_grad[~inside] == 0) and torch.all(token_grad[inside] > 0)


def test_condition_dropout_zeroes_hidden_states_before_the_connector_in_train_mode_only():
    expert = make_expert(cond_dropout=0.999999)  # effectively always drop
    hidden, ids, _ = make_batch()
    targets = depth_targets()
    expert.train()
    dropped = expert.loss(hidden, ids, targets, generator=gen(3))
    assert dropped == expert.loss(torch.randn_like(hidden), ids, targets, generator=gen(3))
    expert.eval()
    assert dropped != expert.loss(hidden, ids, targets, generator=gen(3))
    # Zeroed *before* the connector: equal to feeding zero hidden states, not a zero caption.
    assert dropped == expert.loss(torch.zeros_like(hidden), ids, targets, generator=gen(3))


def test_loss_matches_the_flow_matching_formula(monkeypatch):
    expert = make_expert().eval()
    hidden, ids, _ = make_batch()
    targets = depth_targets()
    seen = {}
    pred = torch.randn(4, 8, 2, 2, generator=gen(9))

    def fake_velocity(noisy, caption, mask, timestep):
        seen.update(noisy=noisy, timestep=timestep, caption=caption, mask=mask)
        return pred

    monkeypatch.setattr(expert, "_velocity", fake_velocity)
    loss = expert.loss(hidden, ids, targets, generator=gen(8))
    z = expert._encode(targets.flatten(0, 1)).float()  # spans are (0,0), (0,1), (1,0), (1,1)
    sigma = (seen["timestep"] / 1000).view(-1, 1, 1, 1)  # FlowMatchEuler: timestep = 1000 * sigma
    assert torch.all((sigma > 0) & (sigma <= 1))
    eps = (seen["noisy"] - (1 - sigma) * z) / sigma
    expected = ((pred - (eps - z)) ** 2).mean(dim=(1, 2, 3)).mean()  # target = eps - z (GEM's sign)
    assert torch.allclose(loss, expected, rtol=1e-4, atol=1e-5)
    assert 0.5 < eps.std() < 1.5  # the recovered noise is standard normal, so sigma and timestep agree
    cond, mask, _, _ = expert.image_span_condition(hidden, ids)
    assert torch.equal(seen["mask"], mask)
    assert torch.allclose(seen["caption"], expert.diffusion_connector(cond))


def test_targets_are_matched_per_camera_and_invalid_ones_skipped():
    expert = make_expert().eval()
    hidden, ids, _ = make_batch()
    targets = depth_targets()
    valid = torch.tensor([[True, False], [True, False]])
    garbage = targets.clone()
    garbage[:, 1] = -targets[:, 1]
    kept = expert.loss(hidden, ids, targets, depth_valid=valid, generator=gen(4))
    assert kept == expert.loss(hidden, ids, garbage, depth_valid=valid, generator=gen(4))
    assert expert.loss(hidden, ids, targets, generator=gen(4)) != expert.loss(hidden, ids, garbage, generator=gen(4))
    none = expert.loss(hidden.requires_grad_(True), ids, targets, depth_valid=torch.zeros(2, 2, dtype=torch.bool))
    assert none.item() == 0.0 and none.requires_grad


def test_prompts_that_lost_cameras_pair_each_target_with_its_span():
    """camera_dropout "remove": a sample's prompt holds fewer images; target i is that of its i-th span and the
    entries beyond its spans are invalid (the dataset orders them so)."""
    expert = make_expert().eval()
    hidden, ids, _ = make_batch()
    ids[1, 11] = ids[1, 14] = 7                                   # sample 1 lost its second image
    targets = depth_targets()
    valid = torch.tensor([[True, True], [True, False]])
    garbage = targets.clone()
    garbage[1, 1] = -targets[1, 1]
    kept = expert.loss(hidden, ids, targets, depth_valid=valid, generator=gen(4))
    assert kept == expert.loss(hidden, ids, garbage, depth_valid=valid, generator=gen(4))
    with pytest.raises(ValueError, match="beyond a sample's image spans"):
        expert.loss(hidden, ids, targets, depth_valid=torch.ones(2, 2, dtype=torch.bool))
    no_images = torch.where((ids == START) | (ids == END), torch.full_like(ids, 7), ids)   # every camera dropped
    zero = expert.loss(hidden.requires_grad_(True), no_images, targets, depth_valid=torch.zeros(2, 2, dtype=torch.bool))
    assert zero.item() == 0.0 and zero.requires_grad


@pytest.mark.parametrize("cameras", [1, 3])
def test_span_count_mismatch_raises(cameras):
    expert = make_expert()
    hidden, ids, _ = make_batch(cameras=2)
    with pytest.raises(ValueError, match="span"):
        expert.loss(hidden, ids, torch.zeros(2, cameras, 3, 64, 64))


def test_loss_overfits_one_batch():
    expert = make_expert(cond_dropout=0.0).train()
    hidden, ids, _ = make_batch()
    targets = depth_targets()
    optim = torch.optim.AdamW([p for p in expert.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(60):  # ~0.8 s; the loss is below 1 % of its start by step 50
        loss = expert.loss(hidden, ids, targets, generator=gen(1))  # same timesteps and noise every step
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses[::10]


# --- checkpoint routing -----------------------------------------------------------------------------

def test_loads_depth_keys_from_a_gem_2b_state_dict_and_ignores_the_vlm():
    source, target = make_expert(seed=0), make_expert(seed=1)
    checkpoint = dict(source.state_dict())
    checkpoint["model.language_model.layers.0.x"] = torch.zeros(3)
    checkpoint["lm_head.weight"] = torch.zeros(5, 4)
    checkpoint["model.visual.sana.fake"] = torch.zeros(1)  # prefix must match at the start only
    assert sorted(DepthExpert.gem_keys(checkpoint)) == sorted(source.state_dict())
    report = target.load_gem_state_dict(checkpoint)
    assert report["loaded"] == len(source.state_dict()) and report["missing"] == [] and report["unexpected"] == []
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    assert all(not p.requires_grad for p in target.vae.parameters())


def test_load_reports_missing_and_unexpected_and_rejects_wrong_shapes():
    source, target = make_expert(seed=0), make_expert(seed=1)
    no_vae = {k: v for k, v in source.state_dict().items() if not k.startswith("vae.")}  # GEM-VLA depth_expert.pt
    no_vae["sana.not_a_layer.weight"] = torch.zeros(2)
    report = target.load_gem_state_dict(no_vae)
    assert sorted(report["missing"]) == sorted(k for k in source.state_dict() if k.startswith("vae."))
    assert report["unexpected"] == ["sana.not_a_layer.weight"]
    bad = dict(source.state_dict())
    bad["sana.proj_out.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="sana.proj_out.weight"):
        target.load_gem_state_dict(bad)
    report = target.load_gem_state_dict(bad, strict_shapes=False)
    assert report["mismatched"] == ["sana.proj_out.weight"] and "sana.proj_out.weight" not in report["missing"]


# --- sampling ---------------------------------------------------------------------------------------

def test_generate_is_bounded_and_deterministic():
    expert = make_expert().eval()
    hidden, ids, _ = make_batch()
    sigmas_before = expert.train_sigmas.clone()
    first = expert.generate(hidden, ids, num_steps=4, generator=gen(5))
    assert first.shape == (4, 3, 64, 64) and torch.isfinite(first).all()
    assert first.min() >= -1 and first.max() <= 1
    assert torch.equal(first, expert.generate(hidden, ids, num_steps=4, generator=gen(5)))
    assert not torch.equal(first, expert.generate(hidden, ids, num_steps=4, generator=gen(6)))
    assert not torch.equal(first, expert.generate(hidden, ids, num_steps=4, guidance_scale=1.0, generator=gen(5)))
    assert torch.equal(expert.train_sigmas, sigmas_before)  # sampling must not touch the training schedule


def test_generate_integrates_an_ideal_velocity_to_its_target_latent(monkeypatch):
    expert = make_expert().eval()
    hidden, ids, _ = make_batch()
    z_star = torch.randn(4, 8, 2, 2, generator=gen(11))

    def ideal_velocity(noisy, caption, mask, timestep):  # v = eps - z = (x - z) / sigma on the straight path
        sigma = (timestep / 1000).view(-1, 1, 1, 1)
        return (noisy - torch.cat([z_star, z_star])) / sigma

    monkeypatch.setattr(expert, "_velocity", ideal_velocity)
    images = expert.generate(hidden, ids, num_steps=3, generator=gen(12))
    expected = expert.vae.decode(z_star / expert.vae.config.scaling_factor).sample.clamp(-1, 1)
    assert torch.allclose(images, expected, atol=1e-4)


# --- pretrained weights or an explicit random start -------------------------------------------------------------

def build_with_depth(backbone_dir, **depth_overrides):
    import numpy as np

    from gem_ros.core.policy.gem_vla import GemVLAPolicy
    from gem_ros.core.policy.normalizer import MinMaxNormalizer
    from gem_ros.core.policy.tiny import tiny_policy_config

    depth = tiny_depth_expert_config(vlm_hidden_size=64, image_size=32, **depth_overrides).to_dict()
    return GemVLAPolicy.build(tiny_policy_config(depth_expert=depth), backbone_dir,
                              MinMaxNormalizer(-np.ones(9), np.ones(9)), device="cpu")


def test_build_refuses_a_backbone_without_depth_weights_naming_the_missing_keys(tiny_backbone_dir):
    """A stock Qwen3-VL folder has no sana.* / vae.* / diffusion_connector.*: the depth expert would start random
    (a random frozen VAE) without a word."""
    with pytest.raises(ValueError) as refused:
        build_with_depth(tiny_backbone_dir)
    message = str(refused.value)
    assert str(tiny_backbone_dir) in message
    for key in ("diffusion_connector.0.weight", "sana.", "vae."):
        assert key in message, message
    assert "init" in message and "random" in message          # and says how to start random on purpose


def test_random_start_is_explicit_and_old_checkpoints_still_load(tiny_backbone_dir, tmp_path):
    from gem_ros.core.policy.gem_vla import GemVLAPolicy

    policy = build_with_depth(tiny_backbone_dir, init="random")
    assert policy.depth_expert is not None and policy.depth_expert.config.init == "random"
    policy.save_pretrained(tmp_path / "ckpt")
    config_file = tmp_path / "ckpt" / "config.json"
    config = json.loads(config_file.read_text())
    assert config["depth_expert"]["init"] == "random"                       # recorded in the checkpoint
    # A config.json written before: no init, the unused loss_weight. Its trained weights load as they are.
    depth = {k: v for k, v in config["depth_expert"].items() if k != "init"}
    config_file.write_text(json.dumps({**config, "depth_expert": {**depth, "loss_weight": 0.1}}))
    reloaded = GemVLAPolicy.from_pretrained(tmp_path / "ckpt", device="cpu", for_training=True)
    assert "loss_weight" not in reloaded.config.depth_expert                  # migrated on the next save
    trained = policy.depth_expert.state_dict()
    assert all(torch.equal(reloaded.depth_expert.state_dict()[k], v) for k, v in trained.items())


def test_partial_pretrained_weights_are_refused_naming_what_is_missing_or_foreign():
    source, target = make_expert(seed=0), make_expert(seed=1)
    no_vae = {k: v for k, v in source.state_dict().items() if not k.startswith("vae.")}   # GEM-VLA depth_expert.pt
    with pytest.raises(ValueError, match=r"missing .*vae\.\* .*'vae\.") as refused:
        target.load_pretrained(no_vae, "depth_expert.pt")
    assert "depth_expert.pt" in str(refused.value)
    foreign = {**source.state_dict(), "sana.not_a_layer.weight": torch.zeros(2)}
    with pytest.raises(ValueError, match="unexpected.*sana.not_a_layer.weight"):
        target.load_pretrained(foreign, "gem2b")
    target.load_pretrained(source.state_dict(), "gem2b")        # complete: loads
    assert all(torch.equal(target.state_dict()[k], v) for k, v in source.state_dict().items())


def test_init_must_be_pretrained_or_random():
    with pytest.raises(ValueError, match="depth_expert.init"):
        DepthExpertConfig(init="zeros")


def test_one_depth_loss_weight_and_old_configs_still_load():
    """The weight applied is GemVLAConfig.depth_loss_weight; DepthExpertConfig.loss_weight was never used."""
    assert "loss_weight" not in DepthExpertConfig().to_dict()
    old = {**tiny_depth_expert_config().to_dict(), "loss_weight": 0.1}     # what every old config.json holds
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert DepthExpertConfig.from_dict(old) == tiny_depth_expert_config()
    with pytest.warns(UserWarning, match="depth_loss_weight"):
        DepthExpertConfig.from_dict({**old, "loss_weight": 0.5})
