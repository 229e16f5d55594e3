"""RDT: the diffusion transformer that denoises action chunks (gem_reference §3).

Module and parameter names follow the reference state-dict layout (`t_embedder.mlp.{0,2}`,
`blocks.i.{attn_norm, attn.{wq,wkv,wo,norm_q,norm_k}, cross_norm, cond_norm, cross_attn.*, ffn_norm,
ffn.{w1,w2,w3}, adaLN_modulation.1}`, `final_layer.*`, `register_tokens`, `x_pos_emb`, `state_pos_emb`)
so reference RDT weights load unchanged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gem_ros.core.policy.compiled import compiled
from gem_ros.core.policy.config import RDTConfig
from gem_ros.core.policy.layers import RMSNorm


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x (B, N, D), shift/scale (B, D)."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def scale_offsets(chunks: int, scale_chunks: tuple[int, ...], dim: int) -> torch.Tensor:
    """(chunks * dim,) with 1 at the scale chunks: added to an adaLN output, `modulate` becomes one fused
    multiply-add per call (`_modulate`), which matters when a step is hundreds of tiny kernels (CUDA graphs)."""
    offsets = torch.zeros(chunks, dim)
    offsets[list(scale_chunks)] = 1.0
    return offsets.reshape(-1)


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale_plus_one: torch.Tensor) -> torch.Tensor:
    return torch.addcmul(shift.unsqueeze(1), x, scale_plus_one.unsqueeze(1))


def _gated(x: torch.Tensor, gate: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
    return torch.addcmul(x, gate.unsqueeze(1), update)


def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """MAE-style sinusoid: sin half first, then cos half, base 10000. Returns (len(positions), dim)."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    angles = np.outer(positions.astype(np.float64), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def multimodal_pos_embed(dim: int, lengths: list[int]) -> torch.Tensor:
    """Position within each modality plus an embedding of the modality index (action=0, register=1)."""
    rows = [sincos_1d(dim, np.arange(n)) + sincos_1d(dim, np.array([m])) for m, n in enumerate(lengths) if n > 0]
    return torch.from_numpy(np.concatenate(rows, axis=0)).float()


def key_bias(key_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """(B, L) True = valid key -> additive attention bias (B, 1, 1, L): 0 or -inf. SDPA gets the bias rather than
    the boolean mask: on CUDA a boolean mask costs a conversion inside every call (cross-attention 55-120 vs 33 us on
    an H100, `bench/attention_backends.py`); the bias is built once per chunk."""
    if key_mask is None:
        return None
    bias = torch.zeros(key_mask.shape, dtype=dtype, device=key_mask.device).masked_fill(~key_mask.bool(), -torch.inf)
    return bias[:, None, None, :]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 1e4) -> torch.Tensor:
    """DiT sinusoid of flow time t in [0, 1] (not scaled by 1000); cos half first, then sin. (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden_size: int, freq_dim: int):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.freq_dim).to(self.mlp[0].weight.dtype))


class Attention(nn.Module):
    """GQA attention with per-head RMSNorm on q and k. Self-attention when `cond` is None.

    `wkv` emits K and V interleaved element-wise: its output viewed as (kv_heads, head_dim, 2) has
    K at [..., 0] and V at [..., 1]. This is the reference layout and must stay so to load weights.
    """

    def __init__(self, cfg: RDTConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.hidden_size, cfg.num_heads * cfg.head_dim, bias=False)
        self.wkv = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim * 2, bias=False)
        self.wo = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, bias=False)
        self.norm_q = RMSNorm(cfg.head_dim, eps=cfg.norm_eps)
        self.norm_k = RMSNorm(cfg.head_dim, eps=cfg.norm_eps)

    def split_kv(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, _ = source.shape
        k, v = self.wkv(source).view(b, n, self.num_kv_heads, self.head_dim, 2).unbind(-1)
        return k, v

    def keys_values(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N, D) -> normalised keys and values (B, num_heads, N, head_dim), kv head j repeated for query heads
        j*g .. j*g+g-1. Repeated rather than SDPA's `enable_gqa`: with GQA CUDA's memory-efficient kernel refuses the
        call and torch's choice among the others varied by machine (H100: 27-47 us vs 25-28 repeated;
        `bench/attention_backends.py`). For cross-attention the source is the same at every denoising step, so the
        sampler computes these once per chunk."""
        k, v = self.split_kv(source)
        group = self.num_heads // self.num_kv_heads
        return (self.norm_k(k).transpose(1, 2).repeat_interleave(group, dim=1),
                v.transpose(1, 2).repeat_interleave(group, dim=1))

    def attend(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               bias: torch.Tensor | None = None) -> torch.Tensor:
        """`bias`: additive key bias (`key_bias`), in the keys' dtype."""
        b, n, _ = x.shape
        q = self.norm_q(self.wq(x).view(b, n, self.num_heads, self.head_dim)).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.wo(out.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None,
                key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`key_mask` (B, L): True = attend to that key."""
        k, v = self.keys_values(x if cond is None else cond)
        return self.attend(x, k, v, key_bias(key_mask, k.dtype))


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class RDTBlock(nn.Module):
    """Pre-norm adaLN-Zero block: self-attn, cross-attn to one VLM layer, SwiGLU FFN."""

    def __init__(self, cfg: RDTConfig):
        super().__init__()
        d = cfg.hidden_size
        self.attn_norm = RMSNorm(d, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.cross_norm = RMSNorm(d, eps=cfg.norm_eps)
        self.cond_norm = RMSNorm(d, eps=cfg.norm_eps)
        self.cross_attn = Attention(cfg)
        self.ffn_norm = RMSNorm(d, eps=cfg.norm_eps)
        self.ffn = SwiGLU(d, cfg.ffn_hidden_size)
        # Condition c = [timestep emb, state token] has width 2d; 9 chunks: (shift, scale, gate) x (attn, cross, ffn).
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(2 * d, 9 * d))

        self.register_buffer("scale_offsets", scale_offsets(9, (1, 4, 7), d), persistent=False)

    def cross_keys_values(self, lang: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Computed once per chunk and read at every step."""
        return self.cross_attn.keys_values(self.cond_norm(lang))

    def modulation(self, c: torch.Tensor) -> torch.Tensor:
        """adaLN output (B, 9D) with 1 added to the three scales (see `scale_offsets`)."""
        return self.adaLN_modulation(c) + self.scale_offsets

    def forward(self, x: torch.Tensor, c: torch.Tensor, lang: torch.Tensor, lang_mask: torch.Tensor | None):
        cross_kv = self.cross_keys_values(lang)
        return self.run(x, self.modulation(c), cross_kv, key_bias(lang_mask, cross_kv[0].dtype))

    def run(self, x: torch.Tensor, modulation: torch.Tensor, cross_kv: tuple[torch.Tensor, torch.Tensor],
            lang_bias: torch.Tensor | None) -> torch.Tensor:
        """The block with its `modulation`, cross-attention keys/values and key bias computed beforehand."""
        (shift_attn, scale_attn, gate_attn, shift_cross, scale_cross, gate_cross,
         shift_ffn, scale_ffn, gate_ffn) = modulation.chunk(9, dim=1)
        x = _gated(x, gate_attn, self.attn(_modulate(self.attn_norm(x), shift_attn, scale_attn)))
        x = _gated(x, gate_cross, self.cross_attn.attend(
            _modulate(self.cross_norm(x), shift_cross, scale_cross), *cross_kv, bias=lang_bias))
        return _gated(x, gate_ffn, self.ffn(_modulate(self.ffn_norm(x), shift_ffn, scale_ffn)))


class FinalMlp(nn.Module):
    """timm-Mlp-shaped head (`fc1`, `fc2`) so reference keys load."""

    def __init__(self, dim: int, hidden: int, out: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class FinalLayer(nn.Module):
    def __init__(self, cfg: RDTConfig, out_dim: int):
        super().__init__()
        d = cfg.hidden_size
        self.ffn_norm = RMSNorm(d, eps=cfg.norm_eps)
        self.ffn = FinalMlp(d, 4 * d, out_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(2 * d, 2 * d))
        self.register_buffer("scale_offsets", scale_offsets(2, (1,), d), persistent=False)

    def modulation(self, c: torch.Tensor) -> torch.Tensor:
        return self.adaLN_modulation(c) + self.scale_offsets

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.run(x, self.modulation(c))

    def run(self, x: torch.Tensor, modulation: torch.Tensor) -> torch.Tensor:
        shift, scale = modulation.chunk(2, dim=1)
        return self.ffn(_modulate(self.ffn_norm(x), shift, scale))


class RDT(nn.Module):
    """Denoiser over `horizon` action tokens + register tokens; returns (B, horizon, out_dim)."""

    def __init__(self, cfg: RDTConfig, horizon: int, out_dim: int):
        super().__init__()
        self.cfg, self.horizon = cfg, horizon
        d = cfg.hidden_size
        self.t_embedder = TimestepEmbedder(d, cfg.timestep_freq_dim)
        self.blocks = nn.ModuleList(RDTBlock(cfg) for _ in range(cfg.depth))
        self.final_layer = FinalLayer(cfg, out_dim)
        self.register_tokens = nn.Parameter(torch.randn(1, cfg.num_register_tokens, d))
        self.x_pos_emb = nn.Parameter(multimodal_pos_embed(d, [horizon, cfg.num_register_tokens]).unsqueeze(0))
        self.state_pos_emb = nn.Parameter(torch.zeros(1, 1, d))
        self.initialize_weights()

    def initialize_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        # adaLN-Zero: every block starts as the identity, the output starts at zero velocity.
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[1].weight)
            nn.init.zeros_(block.adaLN_modulation[1].bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[1].bias)
        nn.init.zeros_(self.final_layer.ffn.fc2.weight)
        nn.init.zeros_(self.final_layer.ffn.fc2.bias)

    def condition(self, t: torch.Tensor, state_token: torch.Tensor) -> torch.Tensor:
        """Flow time t (B,) and state token (B, 1, D) -> the adaLN condition (B, 2D)."""
        b = state_token.shape[0]
        t_emb = self.t_embedder(t.expand(b) if t.numel() == 1 else t)
        return torch.cat([t_emb.unsqueeze(1), state_token + self.state_pos_emb], dim=1).reshape(b, -1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, state_token: torch.Tensor,
                lang: torch.Tensor, lang_mask: torch.Tensor | None = None, return_tokens: bool = False):
        """x (B, T, D) adapted noisy actions; t (B,) in [0, 1]; state_token (B, 1, D);
        lang (B, depth, L, D) adapted VLM layers, one per block; lang_mask (B, L) True = valid token.
        `return_tokens`: also the last block's output, action then register tokens (B, T + registers, D), for a
        training-time auxiliary loss (gem_train.grounding)."""
        c = self.condition(t, state_token)
        cross_kv = [block.cross_keys_values(lang[:, i]) for i, block in enumerate(self.blocks)]
        plan = SamplingPlan([block.modulation(c) for block in self.blocks], self.final_layer.modulation(c), cross_kv,
                            key_bias(lang_mask, cross_kv[0][0].dtype))
        return self.run(x, plan, return_tokens=return_tokens)

    def plan_sampling(self, times: torch.Tensor, state_token: torch.Tensor, lang: torch.Tensor,
                      lang_mask: torch.Tensor | None) -> list[SamplingPlan]:
        """Everything that does not depend on the noisy actions, for each flow time (steps,) of a sampler, at
        once: every step shares the cross-attention keys/values, and the adaLN modulations of all steps come out of
        one matrix product per block (instead of one per block per step)."""
        b, steps = state_token.shape[0], times.shape[0]
        t = times.to(state_token.dtype).repeat_interleave(b)
        c = self.condition(t, state_token.repeat(steps, 1, 1))                       # (steps * B, 2D)
        cross_kv = [block.cross_keys_values(lang[:, i]) for i, block in enumerate(self.blocks)]
        block_mods = [block.modulation(c).split(b) for block in self.blocks]   # [block][step] (B, 9D)
        final_mods = self.final_layer.modulation(c).split(b)
        lang_bias = key_bias(lang_mask, cross_kv[0][0].dtype)
        return [SamplingPlan([mods[s] for mods in block_mods], final_mods[s], cross_kv, lang_bias)
                for s in range(steps)]

    def run(self, x: torch.Tensor, plan: SamplingPlan, compile_blocks: bool = False, return_tokens: bool = False):
        b = x.shape[0]
        x = torch.cat([x, self.register_tokens.expand(b, -1, -1)], dim=1) + self.x_pos_emb
        run_block = compiled(RDTBlock.run) if compile_blocks else RDTBlock.run
        for block, modulation, cross_kv in zip(self.blocks, plan.block_modulations, plan.cross_kv):
            x = run_block(block, x, modulation, cross_kv, plan.lang_bias)
        out = self.final_layer.run(x, plan.final_modulation)[:, : self.horizon]
        return (out, x) if return_tokens else out


@dataclass
class SamplingPlan:
    """What the RDT needs at one flow time besides the noisy actions (see `RDT.plan_sampling`)."""
    block_modulations: list[torch.Tensor]                  # per block (B, 9D), `RDTBlock.modulation`
    final_modulation: torch.Tensor                         # (B, 2D), `FinalLayer.modulation`
    cross_kv: list[tuple[torch.Tensor, torch.Tensor]]      # per block, keys/values (B, heads, L, head_dim)
    lang_bias: torch.Tensor | None                         # (B, 1, 1, L) `key_bias` of the prompt's pad mask
