"""RDT action expert against hand-computed values: K/V interleave, adaLN chunk order, sampler, key layout."""
from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from reference_rdt import reference_shapes, seeded_weights
from gem_ros.core.policy.action_expert import ActionExpert, distillation_loss, euler_integrate
from gem_ros.core.policy.checkpoint import expected_weights
from gem_ros.core.policy.config import GemVLAConfig, RDTConfig
from gem_ros.core.policy.layers import RMSNorm
from gem_ros.core.policy.rdt import Attention, RDTBlock, modulate, timestep_embedding

TINY = RDTConfig(hidden_size=16, depth=2, num_heads=4, num_kv_heads=2, num_register_tokens=2,
                 ffn_multiple_of=8, timestep_freq_dim=8, cond_hidden_size=12)


def test_full_size_shapes_match_reference():
    cfg = RDTConfig()
    assert (cfg.head_dim, cfg.ffn_hidden_size) == (128, 2816)
    block = RDTBlock(cfg)
    assert block.attn.wkv.weight.shape == (1024, 1024)          # 4 kv heads x 128 x (K, V)
    assert block.adaLN_modulation[1].weight.shape == (9 * 1024, 2048)


def test_rmsnorm_keeps_the_fused_kernel_under_autocast_and_matches_torch():
    """Training runs fp32 weights under bf16 autocast: torch's RMSNorm then drops to a composite with a warning."""
    torch.manual_seed(0)
    ours, reference = RMSNorm(16, eps=1e-5), torch.nn.RMSNorm(16, eps=1e-5)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        reference.weight.copy_(ours.weight)
    x = torch.randn(3, 16)
    assert torch.equal(ours(x), reference(x))                         # fp32: exactly torch's
    assert list(ours.state_dict()) == ["weight"]                      # checkpoint keys unchanged
    warn_always = torch.is_warn_always_enabled()
    torch.set_warn_always(True)   # torch warns once per process: an earlier test must not have used it up
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16), warnings.catch_warnings():
            warnings.simplefilter("error")                            # the dtype-mismatch warning fails here
            y = ours(x.bfloat16())
    finally:
        torch.set_warn_always(warn_always)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), reference(x.bfloat16().float()), atol=0.05, rtol=0.02)


def test_wkv_interleaves_k_and_v_elementwise():
    attn = Attention(TINY)
    x = torch.randn(1, 3, 16)
    k, v = attn.split_kv(x)
    raw = attn.wkv(x)[0]                         # (3, kv_heads * head_dim * 2)
    hd = TINY.head_dim
    for head in range(TINY.num_kv_heads):
        for d in range(hd):
            flat = (head * hd + d) * 2
            assert torch.equal(k[0, :, head, d], raw[:, flat])       # even = K
            assert torch.equal(v[0, :, head, d], raw[:, flat + 1])   # odd = V


def test_attention_matches_explicit_gqa_computation():
    torch.manual_seed(0)
    attn = Attention(TINY)
    x, cond = torch.randn(2, 3, 16), torch.randn(2, 5, 16)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    out = attn(x, cond=cond, key_mask=mask)
    hd, rep = TINY.head_dim, TINY.num_heads // TINY.num_kv_heads
    q = attn.norm_q(attn.wq(x).view(2, 3, TINY.num_heads, hd))
    k, v = attn.split_kv(cond)
    k = attn.norm_k(k)
    heads = []
    for h in range(TINY.num_heads):
        scores = q[:, :, h] @ k[:, :, h // rep].transpose(1, 2) / math.sqrt(hd)   # query head h uses kv head h//rep
        scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        heads.append(torch.softmax(scores, -1) @ v[:, :, h // rep])
    expected = attn.wo(torch.cat(heads, dim=-1))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    # Masked keys must not matter: change them and the second sample's output stays the same.
    cond2 = cond.clone()
    cond2[1, 3:] = 100.0
    torch.testing.assert_close(attn(x, cond=cond2, key_mask=mask)[1], out[1])


@pytest.mark.parametrize("active", ["attn", "cross", "ffn"])
def test_adaln_chunk_order_is_attn_cross_ffn(active):
    torch.manual_seed(1)
    block = RDTBlock(TINY)
    d = TINY.hidden_size
    x, lang, c = torch.randn(2, 3, d), torch.randn(2, 4, d), torch.randn(2, 2 * d)
    shift, scale, gate = 0.3, -0.2, 0.7
    bias = torch.zeros(9, d)
    index = {"attn": 0, "cross": 1, "ffn": 2}[active]
    bias[3 * index: 3 * index + 3] = torch.tensor([shift, scale, gate])[:, None]
    with torch.no_grad():
        block.adaLN_modulation[1].weight.zero_()
        block.adaLN_modulation[1].bias.copy_(bias.reshape(-1))
    out = block(x, c, lang, None)
    s, sc = torch.full((2, d), shift), torch.full((2, d), scale)
    if active == "attn":
        expected = x + gate * block.attn(modulate(block.attn_norm(x), s, sc))
    elif active == "cross":
        expected = x + gate * block.cross_attn(modulate(block.cross_norm(x), s, sc), cond=block.cond_norm(lang))
    else:
        expected = x + gate * block.ffn(modulate(block.ffn_norm(x), s, sc))
    torch.testing.assert_close(out, expected)


def test_timestep_embedding_is_cos_first_on_unit_interval():
    emb = timestep_embedding(torch.tensor([0.0, 0.5]), 8)
    assert torch.equal(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    freqs = torch.exp(-math.log(1e4) * torch.arange(4) / 4)
    torch.testing.assert_close(emb[1], torch.cat([torch.cos(0.5 * freqs), torch.sin(0.5 * freqs)]))


@pytest.mark.parametrize("steps", [1, 5, 10])
def test_euler_sampler_integrates_rectified_flow_exactly(steps):
    """Along x_t = t a + (1 - t) eps the field (a - x) / (1 - t) is constant, so Euler lands exactly on a."""
    a, eps = torch.randn(3, 4, 2, dtype=torch.float64), torch.randn(3, 4, 2, dtype=torch.float64)
    x1 = euler_integrate(lambda x, t: (a - x) / (1 - t[:, None, None].double()), eps, steps)
    torch.testing.assert_close(x1, a)
    # A time-dependent field shows it is the left-point rule: integral of 2t with N steps = 1 - 1/N.
    x = euler_integrate(lambda x, t: 2 * t[:, None, None].double().expand_as(x), torch.zeros(3, 4, 2).double(), steps)
    torch.testing.assert_close(x, torch.full_like(x, 1 - 1 / steps))


def tiny_expert(seed=0):
    torch.manual_seed(seed)
    return ActionExpert(TINY, action_dim=3, state_dim=5, horizon=6)


def test_expert_keys_follow_reference_layout_and_reference_state_dict_loads():
    """The reference names and shapes come from gem_checkpoints §3 (reference_rdt.reference_shapes), not from another
    instance of our module: at full size 296 tensors, 0.49 B parameters."""
    full = reference_shapes(hidden=1024, depth=14, heads=8, kv_heads=4, registers=4, multiple_of=256, freq_dim=256,
                            lang_dim=2048, action_dim=14, state_dim=14, horizon=32)
    assert expected_weights(GemVLAConfig()) == full and len(full) == 296
    assert 0.490e9 < sum(math.prod(shape) for shape in full.values()) < 0.491e9
    # A state dict written under the reference names loads strictly and is what the expert then holds.
    expert = tiny_expert()
    reference = {k: torch.from_numpy(v).float() for k, v in seeded_weights(reference_shapes(
        hidden=16, depth=2, heads=4, kv_heads=2, registers=2, multiple_of=8, freq_dim=8, lang_dim=12, action_dim=3,
        state_dim=5, horizon=6), seed=5).items()}
    expert.load_state_dict(reference, strict=True)
    assert torch.equal(expert.model.blocks[1].attn.wkv.weight, reference["model.blocks.1.attn.wkv.weight"])


def test_zero_init_predicts_zero_velocity_and_sample_shapes():
    expert = tiny_expert()
    hidden, state = torch.randn(2, 2, 7, 12), torch.randn(2, 5)
    mask = torch.ones(2, 7, dtype=torch.bool)
    lang, state_token = expert.encode_condition(hidden, state)
    v = expert.velocity(torch.randn(2, 6, 3), torch.rand(2), lang, state_token, mask)
    assert v.shape == (2, 6, 3) and torch.count_nonzero(v) == 0     # adaLN-Zero + zeroed fc2
    chunk = expert.sample(hidden, state, mask, num_steps=5, generator=torch.Generator().manual_seed(0))
    assert chunk.shape == (2, 6, 3) and chunk.dtype == torch.float32


def test_flow_matching_loss_uses_velocity_target():
    """With zero-initialised output the prediction is 0, so the loss equals E[(a - eps)^2] for the same draws. (Blind
    to the sign of the target: test_golden_rdt.py checks the convention with a non-zero velocity.)"""
    expert = tiny_expert()
    actions, hidden, state = torch.randn(4, 6, 3), torch.randn(4, 2, 7, 12), torch.randn(4, 5)
    loss = expert.loss(actions, hidden, state, None, generator=torch.Generator().manual_seed(3))
    noise = torch.randn(actions.shape, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(loss, F.mse_loss(torch.zeros_like(actions), actions - noise))


def test_one_step_distillation_reduces_gap_to_teacher():
    teacher = tiny_expert(seed=2)
    with torch.no_grad():   # give the teacher a non-trivial field
        teacher.model.final_layer.ffn.fc2.weight.normal_(0, 0.5)
        teacher.model.final_layer.adaLN_modulation[1].bias.normal_(0, 0.5)
    student = tiny_expert(seed=3)
    student.load_state_dict(teacher.state_dict())
    hidden, state = torch.randn(4, 2, 7, 12), torch.randn(4, 5)
    opt = torch.optim.AdamW(student.parameters(), lr=3e-3)
    losses = []
    for step in range(60):
        loss = distillation_loss(student, teacher, hidden, state, None, teacher_steps=5,
                                 rng=torch.Generator().manual_seed(step % 4))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


@pytest.mark.parametrize("steps", [1, 5])
def test_planned_sampler_equals_per_step_euler_over_velocity(steps):
    """The sampler precomputes cross-attention K/V and every step's adaLN modulation; with random (non-zero)
    weights it must land where plain Euler over `velocity` lands from the same noise, masked keys included."""
    expert = tiny_expert(seed=7)
    with torch.no_grad():
        for p in expert.parameters():
            p.normal_(0, 0.3)
    hidden, state, noise = torch.randn(2, 2, 7, 12), torch.randn(2, 5), torch.randn(2, 6, 3)
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    lang, state_token = expert.encode_condition(hidden, state)
    expected = euler_integrate(lambda x, t: expert.velocity(x, t, lang, state_token, mask), noise, steps)
    got = expert.sample(hidden, state, mask, num_steps=steps, noise=noise)
    assert torch.count_nonzero(got - noise) > 0
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def padded_prompt_case(seed):
    """A randomised tiny expert, a prompt of 5 tokens, the same prompt with 3 garbage pads, and its pad mask."""
    expert = tiny_expert(seed=seed)
    with torch.no_grad():
        for p in expert.parameters():
            p.normal_(0, 0.3)
    hidden, state = torch.randn(1, 2, 5, 12), torch.randn(1, 5)
    padded = torch.cat([hidden, 50 * torch.randn(1, 2, 3, 12)], dim=2)
    return expert, hidden, padded, torch.tensor([[True] * 5 + [False] * 3]), state


def test_masked_pad_tokens_change_nothing_in_the_sampler():
    """Padded prompts (static inference) rely on the mask: garbage in masked positions must not move the chunk."""
    expert, hidden, padded, mask, state = padded_prompt_case(seed=8)
    noise = torch.randn(1, 6, 3)
    expected = expert.sample(hidden, state, None, num_steps=3, noise=noise)
    torch.testing.assert_close(expert.sample(padded, state, mask, num_steps=3, noise=noise), expected,
                               rtol=1e-5, atol=1e-5)
    assert (expert.sample(padded, state, None, num_steps=3, noise=noise) - expected).abs().max() > 1e-3


def test_padded_prompt_trains_under_autocast():
    """Training: fp32 weights, bf16 autocast, padded prompts (the key bias is built in the adapted prompt's dtype):
    pads still must not move the velocity, and gradients reach the weights."""
    expert, hidden, padded, mask, state = padded_prompt_case(seed=9)
    x, t = torch.randn(1, 6, 3), torch.tensor([0.3])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lang, state_token = expert.encode_condition(padded, state)
        velocity = expert.velocity(x, t, lang, state_token, mask)
        lang_ref, state_ref = expert.encode_condition(hidden, state)
        reference = expert.velocity(x, t, lang_ref, state_ref, None)
    torch.testing.assert_close(velocity.float(), reference.float(), rtol=0.05, atol=0.05)
    velocity.float().square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in expert.model.blocks.parameters())
