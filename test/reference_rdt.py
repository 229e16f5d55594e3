"""The reference RDT action expert written out from its equations (gem_reference §3-§5) in float64 numpy.

Independent of gem_ros on purpose: it reads a reference-layout state dict (`model.*`, `lang_adaptor.*`,
`act_adaptor.*`, `state_adaptor.*`; gem_checkpoints §3) by name and shares no code with our modules, so the golden
and import tests compare our model with the reference's arithmetic, not with itself.
"""
from __future__ import annotations

import math

import numpy as np

Weights = dict[str, np.ndarray]


def reference_shapes(hidden: int, depth: int, heads: int, kv_heads: int, registers: int, multiple_of: int,
                     freq_dim: int, lang_dim: int, action_dim: int, state_dim: int, horizon: int) -> dict:
    """Name -> shape of an RDTRunner state dict (gem_checkpoints §3), for any size."""
    head = hidden // heads
    ffn = multiple_of * math.ceil(int(2 * 4 * hidden / 3) / multiple_of)
    shapes = {"model.t_embedder.mlp.0.weight": (hidden, freq_dim), "model.t_embedder.mlp.0.bias": (hidden,),
              "model.t_embedder.mlp.2.weight": (hidden, hidden), "model.t_embedder.mlp.2.bias": (hidden,),
              "model.register_tokens": (1, registers, hidden), "model.x_pos_emb": (1, horizon + registers, hidden),
              "model.state_pos_emb": (1, 1, hidden)}
    for i in range(depth):
        block = f"model.blocks.{i}."
        for attn in ("attn", "cross_attn"):
            shapes.update({f"{block}{attn}.wq.weight": (heads * head, hidden),
                           f"{block}{attn}.wkv.weight": (2 * kv_heads * head, hidden),
                           f"{block}{attn}.wo.weight": (hidden, heads * head),
                           f"{block}{attn}.norm_q.weight": (head,), f"{block}{attn}.norm_k.weight": (head,)})
        for norm in ("attn_norm", "cross_norm", "cond_norm", "ffn_norm"):
            shapes[f"{block}{norm}.weight"] = (hidden,)
        shapes.update({f"{block}ffn.w1.weight": (ffn, hidden), f"{block}ffn.w3.weight": (ffn, hidden),
                       f"{block}ffn.w2.weight": (hidden, ffn),
                       f"{block}adaLN_modulation.1.weight": (9 * hidden, 2 * hidden),
                       f"{block}adaLN_modulation.1.bias": (9 * hidden,)})
    final = "model.final_layer."
    shapes.update({f"{final}ffn_norm.weight": (hidden,), f"{final}ffn.fc1.weight": (4 * hidden, hidden),
                   f"{final}ffn.fc1.bias": (4 * hidden,), f"{final}ffn.fc2.weight": (action_dim, 4 * hidden),
                   f"{final}ffn.fc2.bias": (action_dim,), f"{final}adaLN_modulation.1.weight": (2 * hidden, 2 * hidden),
                   f"{final}adaLN_modulation.1.bias": (2 * hidden,)})
    for name, width, layers in (("lang_adaptor", lang_dim, 2), ("act_adaptor", action_dim, 3),
                                ("state_adaptor", state_dim, 3)):
        for j in range(layers):
            shapes[f"{name}.{2 * j}.weight"] = (hidden, width if j == 0 else hidden)
            shapes[f"{name}.{2 * j}.bias"] = (hidden,)
    return shapes


def seeded_weights(shapes: dict, seed: int, std: float = 0.2) -> Weights:
    """Every tensor drawn from numpy's frozen legacy stream (RandomState: identical on every machine and version);
    norm weights near 1 so no channel is switched off. Rounded to float32, the precision our model runs in."""
    rng = np.random.RandomState(seed)
    weights = {}
    for name in sorted(shapes):
        values = rng.standard_normal(shapes[name]) * std
        weights[name] = (1.0 + values if name.endswith("norm.weight") or "norm_" in name else values)
        weights[name] = weights[name].astype(np.float32).astype(np.float64)
    return weights


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def linear(w: Weights, name: str, x: np.ndarray) -> np.ndarray:
    out = x @ w[f"{name}.weight"].T
    return out + w[f"{name}.bias"] if f"{name}.bias" in w else out


def mlp(w: Weights, name: str, x: np.ndarray, layers: int) -> np.ndarray:
    """Linear, then (SiLU, Linear) x (layers - 1): the reference's mlp{N}x_silu adaptors."""
    x = linear(w, f"{name}.0", x)
    for j in range(1, layers):
        x = linear(w, f"{name}.{2 * j}", silu(x))
    return x


def attention(w: Weights, name: str, x: np.ndarray, source: np.ndarray, key_mask: np.ndarray | None,
              eps: float) -> np.ndarray:
    """GQA with per-head RMSNorm on q and k; wkv's output is (kv_heads, head_dim, 2): K even, V odd elements."""
    head = w[f"{name}.norm_q.weight"].shape[0]
    heads = w[f"{name}.wq.weight"].shape[0] // head
    kv_heads = w[f"{name}.wkv.weight"].shape[0] // (2 * head)
    b, n, _ = x.shape
    q = rms_norm((x @ w[f"{name}.wq.weight"].T).reshape(b, n, heads, head), w[f"{name}.norm_q.weight"], eps)
    kv = (source @ w[f"{name}.wkv.weight"].T).reshape(b, source.shape[1], kv_heads, head, 2)
    k, v = rms_norm(kv[..., 0], w[f"{name}.norm_k.weight"], eps), kv[..., 1]
    out = np.zeros((b, n, heads, head))
    for h in range(heads):
        g = h // (heads // kv_heads)                         # query head h reads kv head h // group
        scores = np.einsum("bnd,bld->bnl", q[:, :, h], k[:, :, g]) / math.sqrt(head)
        if key_mask is not None:
            scores = np.where(key_mask[:, None, :], scores, -np.inf)
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        out[:, :, h] = np.einsum("bnl,bld->bnd", scores / scores.sum(axis=-1, keepdims=True), v[:, :, g])
    return out.reshape(b, n, heads * head) @ w[f"{name}.wo.weight"].T


def velocity(w: Weights, x_t: np.ndarray, t: np.ndarray, hidden_per_block: np.ndarray, state: np.ndarray,
             lang_mask: np.ndarray | None, eps: float = 1e-5) -> np.ndarray:
    """x_t (B, T, A) noisy normalized actions at flow time t (B,) in [0, 1]; hidden_per_block (B, depth, L, D_vlm):
    the VLM hidden state each block reads; state (B, S) raw. Returns the predicted velocity (B, T, A)."""
    b, horizon, _ = x_t.shape
    freq = w["model.t_embedder.mlp.0.weight"].shape[1]
    half = freq // 2
    angles = t[:, None] * np.exp(-math.log(1e4) * np.arange(half) / half)[None]
    t_emb = mlp(w, "model.t_embedder.mlp", np.concatenate([np.cos(angles), np.sin(angles)], axis=1), 2)
    state_token = mlp(w, "state_adaptor", state[:, None, :], 3) + w["model.state_pos_emb"]
    c = np.concatenate([t_emb, state_token[:, 0]], axis=1)             # (B, 2D): [time, state]
    registers = np.broadcast_to(w["model.register_tokens"], (b,) + w["model.register_tokens"].shape[1:])
    x = np.concatenate([mlp(w, "act_adaptor", x_t, 3), registers], axis=1) + w["model.x_pos_emb"]
    lang = mlp(w, "lang_adaptor", hidden_per_block, 2)
    depth = hidden_per_block.shape[1]
    for i in range(depth):
        p = f"model.blocks.{i}."
        mod = np.split(linear(w, f"{p}adaLN_modulation.1", silu(c))[:, None, :], 9, axis=-1)
        norm = lambda name, v: rms_norm(v, w[f"{p}{name}.weight"], eps)   # noqa: E731
        h = norm("attn_norm", x) * (1 + mod[1]) + mod[0]
        x = x + mod[2] * attention(w, f"{p}attn", h, h, None, eps)
        h = norm("cross_norm", x) * (1 + mod[4]) + mod[3]
        x = x + mod[5] * attention(w, f"{p}cross_attn", h, norm("cond_norm", lang[:, i]), lang_mask, eps)
        h = norm("ffn_norm", x) * (1 + mod[7]) + mod[6]
        ffn = (silu(h @ w[f"{p}ffn.w1.weight"].T) * (h @ w[f"{p}ffn.w3.weight"].T)) @ w[f"{p}ffn.w2.weight"].T
        x = x + mod[8] * ffn
    shift, scale = np.split(linear(w, "model.final_layer.adaLN_modulation.1", silu(c))[:, None, :], 2, axis=-1)
    h = rms_norm(x, w["model.final_layer.ffn_norm.weight"], eps) * (1 + scale) + shift
    out = linear(w, "model.final_layer.ffn.fc2", silu(linear(w, "model.final_layer.ffn.fc1", h)))
    return out[:, :horizon]                                             # registers dropped


def flow_loss(w: Weights, actions: np.ndarray, noise: np.ndarray, t: np.ndarray, hidden_per_block: np.ndarray,
              state: np.ndarray, lang_mask: np.ndarray | None, eps: float = 1e-5) -> float:
    """t = 0 is noise, t = 1 data: x_t = t a + (1 - t) eps, target a - eps, plain MSE over every element."""
    tt = t[:, None, None]
    pred = velocity(w, tt * actions + (1 - tt) * noise, t, hidden_per_block, state, lang_mask, eps)
    return float(np.mean((pred - (actions - noise)) ** 2))


def euler_sample(w: Weights, noise: np.ndarray, steps: int, hidden_per_block: np.ndarray, state: np.ndarray,
                 lang_mask: np.ndarray | None, eps: float = 1e-5) -> np.ndarray:
    """`steps` Euler steps of dt = 1/steps from t = 0 (noise) to t = 1; steps = 1 is the distilled generator's
    eps + v(eps, 0)."""
    x = noise.astype(np.float64)
    for i in range(steps):
        t = np.full(x.shape[0], i / steps)
        x = x + velocity(w, x, t, hidden_per_block, state, lang_mask, eps) / steps
    return x
