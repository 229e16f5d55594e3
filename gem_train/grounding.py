"""Grounding auxiliary loss: the action expert must also say where the object the instruction names is.

With a frozen grounded backbone, the flow-matching loss alone did not teach the RDT to read the named cube out of
the VLM states: a probe on the same states finds it to 2-3 cm (bench/grounding_probe.py), but the policy went for
the named cube in about half the validation episodes. Here a small head regresses the named object's table xy from
the mean of the RDT's register tokens after its last block, and that loss joins the action loss: the cross-attention
gets a dense target for the read-out, and the action tokens find the answer one self-attention away.

Training only: the head is no part of the exported policy (the reference layout is unchanged); its weights travel
in the trainer state, so `--resume` continues it. The target comes from each episode's `target_position` (the named
object's [x, y, z] in m at the episode start, as gem_collect_sim records it).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

TARGET_KEY = "target_position"
STATE_PREFIX = "grounding_head."     # its tensors in the trainer state (gem_train.checkpointing)
# The error is measured in this unit, the same in x and y and for every dataset, so a weight means the same on any
# table (scaled by the split's spread, 6 / 9 cm here, it would weigh 1.2-2.6x more). A weight of 3 in this unit
# starved the action loss (validation 0/30); weight 1 gave 2/30 to 9/30 over five runs.
TARGET_UNIT_M = 0.1


def episode_target(meta: dict, where: str) -> np.ndarray | None:
    """The episode's named-object xy (2,) float32 from its meta, None if it records none; malformed is an error."""
    value = meta.get(TARGET_KEY)
    if value is None:
        return None
    target = np.asarray(value, dtype=np.float64).reshape(-1)
    # checked after the float32 cast the loss computes in: 1e300 is finite here and inf there
    if target.shape != (3,) or not np.all(np.isfinite(target.astype(np.float32))):
        raise ValueError(f"{where}: {TARGET_KEY} must be three finite numbers [x, y, z] (m), got {value!r}")
    return target[:2].astype(np.float32)


class GroundingHead(nn.Module):
    """MLP from the mean register token to the named object's xy, relative to `center`, in units of `scale` (m).
    Called as the policy's `auxiliary`: (tokens, batch) -> (weight x mean squared error, logs)."""

    def __init__(self, hidden_size: int, horizon: int, center: Sequence[float], scale: Sequence[float],
                 weight: float):
        super().__init__()
        self.horizon, self.weight = horizon, float(weight)
        self.mlp = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, 2))
        self.register_buffer("center", torch.tensor(center, dtype=torch.float32))
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32))

    def forward(self, tokens: torch.Tensor, batch) -> tuple[torch.Tensor, dict[str, float]]:
        if batch.target_xy is None:
            raise ValueError("the grounding loss needs each sample's target_xy (episodes with target_position)")
        predicted = self.mlp(tokens[:, self.horizon:].mean(dim=1).float())
        target = (batch.target_xy.to(predicted.device, torch.float32) - self.center) / self.scale
        valid = batch.target_valid.to(predicted.device)   # a dropped instruction names nothing
        if not valid.any():
            zero = predicted.sum() * 0.0
            return zero, {"loss/grounding": 0.0}
        error = (predicted - target)[valid]
        loss = error.pow(2).sum(dim=-1).mean()
        metres = (error * self.scale).norm(dim=-1).median()
        return self.weight * loss, {"loss/grounding": float(loss.detach()), "grounding_error_m": float(metres.detach())}


class GroundingObjective(nn.Module):
    """The policy's losses plus the grounding head's; `policy` is what gets saved and served."""

    def __init__(self, policy: nn.Module, head: GroundingHead):
        super().__init__()
        self.policy, self.head = policy, head

    def forward(self, batch, generator: torch.Generator | None = None):
        return self.policy(batch, generator, auxiliary=self.head)


def build_objective(policy, targets: Sequence[np.ndarray | None], weight: float) -> GroundingObjective:
    """`targets`: per training episode (ChunkDataset.episode_targets); every one must have a target."""
    missing = sum(t is None for t in targets)
    if missing or not targets:
        raise ValueError(f"train.grounding_loss_weight > 0 needs every training episode's {TARGET_KEY} (recorded by "
                         f"gem_collect_sim); {missing} of {len(targets)} have none")
    center = np.stack(targets).mean(axis=0)
    head = GroundingHead(policy.config.rdt.hidden_size, policy.config.io.chunk_len, center.tolist(),
                         [TARGET_UNIT_M, TARGET_UNIT_M], weight)
    return GroundingObjective(policy, head.to(policy.device))


def head_tensors(objective: nn.Module) -> dict[str, torch.Tensor]:
    """The head's weights for the trainer state ({} for any other objective)."""
    if not isinstance(objective, GroundingObjective):
        return {}
    return {STATE_PREFIX + k: v.detach().cpu().contiguous() for k, v in objective.head.state_dict().items()}


def restore_head(objective: nn.Module, tensors: dict[str, torch.Tensor], where: str) -> None:
    if not isinstance(objective, GroundingObjective):
        return
    state = {k.removeprefix(STATE_PREFIX): v for k, v in tensors.items() if k.startswith(STATE_PREFIX)}
    if not state:
        raise ValueError(f"{where} holds no grounding head: it was trained without train.grounding_loss_weight")
    objective.head.load_state_dict(state)
