"""Layers shared by the action expert (RDT) and the depth expert."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.RMSNorm):
    """nn.RMSNorm whose weight follows the input's dtype. Under autocast (training: fp32 weights, bf16 activations)
    torch's RMSNorm otherwise leaves its fused kernel for a slower composite (and warns)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight if self.weight is None or self.weight.dtype == x.dtype else self.weight.to(x.dtype)
        return F.rms_norm(x, self.normalized_shape, weight, self.eps)
