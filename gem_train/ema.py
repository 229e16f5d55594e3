"""Exponential moving average (EMA) of the trained weights, `train.ema_decay` (0 = off), with diffusers' EMAModel.

Diffusion and flow-matching policies are served from an EMA of their weights (Diffusion Policy, LeRobot): the
raw weights of the last steps jump around the optimum, and small changes in the predicted chunk move the gripper
by centimetres. With EMA on, the decay warms up as 1 - (1 + step)^-ema_power (diffusers' `use_ema_warmup`, capped
at `ema_decay`), held-out evaluation uses the averaged weights, and every checkpoint's serving weights (what
gem_export, gem_eval and `model.init_from` read) are the averaged ones. The raw training weights go into the
trainer state so `--resume` continues bit-exactly.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

import torch

logger = logging.getLogger("gem_train")
RAW_PREFIX = "training_weights."


def make_ema(params: list[torch.nn.Parameter], decay: float, power: float):
    """diffusers `EMAModel` over `params`, or None when decay is 0."""
    if decay <= 0:
        return None
    from diffusers.training_utils import EMAModel   # heavy import, only when asked for

    return EMAModel(params, decay=decay, use_ema_warmup=True, inv_gamma=1.0, power=power, foreach=True)


@contextmanager
def averaged_weights(ema, params: list[torch.nn.Parameter]):
    """Inside, `params` hold the EMA weights; the training weights come back on exit."""
    if ema is None:
        yield
        return
    ema.store(params)
    ema.copy_to(params)
    try:
        yield
    finally:
        ema.restore(params)


def training_state(ema, params: list[torch.nn.Parameter]) -> tuple[dict[str, torch.Tensor], dict]:
    """What a checkpoint needs besides its (averaged) serving weights: the raw weights and the EMA step."""
    if ema is None:
        return {}, {}
    tensors = {f"{RAW_PREFIX}{i}": p.detach().to("cpu", copy=True).contiguous() for i, p in enumerate(params)}
    return tensors, {"optimization_step": ema.optimization_step, "num_params": len(params)}


def restore(ema, params: list[torch.nn.Parameter], meta: dict | None,
            tensors: dict[str, torch.Tensor], path: Path) -> None:
    """After loading a checkpoint's serving weights into `params`: they become the EMA, and the raw weights
    of the trainer state become the weights training continues from."""
    if meta is None:
        if ema is not None:
            logger.warning("%s was written without EMA: the average starts from its weights", path)
        return
    if meta["num_params"] != len(params):
        raise ValueError(f"{path}: EMA state covers {meta['num_params']} trainable tensors, the model has "
                         f"{len(params)} (were different parts trained?)")
    if ema is not None:
        ema.shadow_params = [p.detach().clone() for p in params]
        ema.optimization_step = int(meta["optimization_step"])
    else:
        logger.warning("%s holds EMA weights; train.ema_decay=0 continues from its raw weights", path)
    with torch.no_grad():
        for i, p in enumerate(params):
            p.copy_(tensors[f"{RAW_PREFIX}{i}"].to(p.device, p.dtype))
