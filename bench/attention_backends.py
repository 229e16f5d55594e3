"""Which fused attention kernel each of the RDT's two attentions gets, and what it costs.

    python bench/attention_backends.py --device cuda          # full-size RDT shapes, bf16

For the action expert's self-attention (chunk + register tokens, 8 query / 4 kv heads) and cross-attention (to a
padded VLM prompt, key mask), each way of calling `scaled_dot_product_attention` is run under torch's automatic
backend choice and under each single backend (flash, efficient, cudnn, math): median microseconds of one call, or
why torch refused that backend. The RDT uses the variants that are fast under `auto`: kv heads repeated and an
additive key bias (`rdt.key_bias`). Prints a table; asserts nothing.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gem_ros.core.policy.config import IOSchema, RDTConfig  # noqa: E402

BACKENDS = {"auto": None, "flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}


def variants(batch: int, prompt_len: int, pads: int, device: torch.device, dtype: torch.dtype) -> dict:
    """name -> (q, k, v, kwargs) shaped as `rdt.Attention` calls SDPA."""
    cfg, schema = RDTConfig(), IOSchema()
    heads, kv_heads, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    tokens = schema.chunk_len + cfg.num_register_tokens

    def randn(*shape):
        return torch.randn(*shape, device=device, dtype=dtype)

    group = heads // kv_heads
    q_self, k_self, v_self = randn(batch, heads, tokens, hd), randn(batch, kv_heads, tokens, hd), \
        randn(batch, kv_heads, tokens, hd)
    q_cross = randn(batch, heads, tokens, hd)
    k_cross, v_cross = randn(batch, heads, prompt_len, hd), randn(batch, heads, prompt_len, hd)
    valid = torch.ones(batch, prompt_len, dtype=torch.bool, device=device)
    valid[:, prompt_len - pads:] = False
    bool_mask = valid[:, None, None, :]
    additive = torch.zeros(batch, 1, 1, prompt_len, device=device, dtype=dtype).masked_fill(~bool_mask, -torch.inf)
    return {
        "self, GQA (enable_gqa)": (q_self, k_self, v_self, {"enable_gqa": True}),
        "self, kv repeated": (q_self, k_self.repeat_interleave(group, 1), v_self.repeat_interleave(group, 1), {}),
        "cross, bool key mask": (q_cross, k_cross, v_cross, {"attn_mask": bool_mask}),
        "cross, additive mask": (q_cross, k_cross, v_cross, {"attn_mask": additive}),
        "cross, no mask": (q_cross, k_cross, v_cross, {}),
    }


def time_call(fn, device: torch.device, runs: int) -> float:
    """Median microseconds of one call."""
    for _ in range(3):
        fn()
    samples = []
    for _ in range(runs):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        samples.append((time.perf_counter() - start) * 1e6)
    return statistics.median(samples)


def measure(q, k, v, kwargs, backend, device, runs) -> str:
    def call():
        return F.scaled_dot_product_attention(q, k, v, **kwargs)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if backend is None:
                return f"{time_call(call, device, runs):.1f}"
            with sdpa_kernel([backend]):
                return f"{time_call(call, device, runs):.1f}"
        except RuntimeError as error:
            reasons = [str(w.message).split("(Triggered")[0].strip() for w in caught]
            return "refused: " + ("; ".join(r for r in reasons if r) or str(error).splitlines()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt-len", type=int, default=352, help="padded VLM prompt tokens (2 x 384² + text)")
    parser.add_argument("--pads", type=int, default=13, help="masked pad tokens at the end of the prompt")
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    print(f"SDPA backends for RDT attention shapes on {device}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, {dtype}, "
          f"batch {args.batch}, prompt {args.prompt_len} ({args.pads} pads); torch {torch.__version__}; "
          f"median us of {args.runs} calls")
    refusals = []
    print(f"{'call':<26}" + "".join(f"{name:>11}" for name in BACKENDS))
    for name, (q, k, v, kwargs) in variants(args.batch, args.prompt_len, args.pads, device, dtype).items():
        cells = [measure(q, k, v, kwargs, backend, device, args.runs) for backend in BACKENDS.values()]
        print(f"{name:<26}" + "".join(f"{'-' if c.startswith('refused') else c:>11}" for c in cells))
        refusals += [f"  {name} / {b}: {c[9:]}" for b, c in zip(BACKENDS, cells) if c.startswith("refused")]
    if refusals:
        print("refused ('-' above):")
        print("\n".join(refusals))


if __name__ == "__main__":
    main()
