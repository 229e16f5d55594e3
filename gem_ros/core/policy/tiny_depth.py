"""A tiny depth expert for CPU tests: same module tree as GEM-2B's, built in well under a second.

Keeps every structural choice of the full model (SANA with linear attention, qk-norm across heads and
no pos-emb; a 6-stage DC-AE with ResBlocks then EfficientViT blocks, 32x compression) and shrinks
only the widths, depths and latent channels.
"""
from __future__ import annotations

from gem_ros.core.policy.depth_expert import DepthExpertConfig, dc_ae_f32c32_config, sana_1600m_config

TINY_LATENT_CHANNELS = 8
TINY_CAPTION_CHANNELS = 32


def tiny_depth_expert_config(vlm_hidden_size: int = 64, image_size: int = 64, **overrides) -> DepthExpertConfig:
    """64 px -> a 2x2x8 latent; SANA 2 layers, 2 heads x 16, cross-attn 2 heads x 16, caption 32."""
    sana = sana_1600m_config(image_size)
    sana.update(
        in_channels=TINY_LATENT_CHANNELS, out_channels=TINY_LATENT_CHANNELS, num_layers=2,
        num_attention_heads=2, attention_head_dim=16,
        num_cross_attention_heads=2, cross_attention_head_dim=16, cross_attention_dim=32,
        caption_channels=TINY_CAPTION_CHANNELS,
    )
    vae = dc_ae_f32c32_config()
    vae.update(
        latent_channels=TINY_LATENT_CHANNELS, attention_head_dim=8,
        encoder_block_out_channels=[8, 8, 16, 16, 32, 32], decoder_block_out_channels=[8, 8, 16, 16, 32, 32],
        encoder_layers_per_block=[1] * 6, decoder_layers_per_block=[1] * 6,
    )
    return DepthExpertConfig(vlm_hidden_size=vlm_hidden_size, caption_channels=TINY_CAPTION_CHANNELS,
                             sana=sana, vae=vae, image_size=image_size, **overrides)
