"""torch.compile, once per function (experimental: `GemVLAPolicy.compile_modules`)."""
from __future__ import annotations

import functools
from collections.abc import Callable

import torch


@functools.cache
def compiled(fn: Callable) -> Callable:
    """`fn` through torch.compile with static shapes. The module is an argument of `fn`, and parameters are graph
    inputs, so one compiled graph serves every layer (block) of the same shapes: inductor fuses the norms,
    modulations and element-wise work that remain once CUDA graphs have removed the launch overhead."""
    return torch.compile(fn, dynamic=False)
