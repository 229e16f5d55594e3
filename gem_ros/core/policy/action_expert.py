"""Flow-matching action expert: adaptors around the RDT, training loss and samplers (gem_reference §3-§5).

Convention: t = 0 is noise, t = 1 is data; x_t = t * a + (1 - t) * eps; the network predicts the
velocity a - eps. Its state dict (`model.*`, `lang_adaptor.*`, `act_adaptor.*`, `state_adaptor.*`) is the
reference RDTRunner layout.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from gem_ros.core.policy.config import RDTConfig
from gem_ros.core.policy.rdt import RDT

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def mlp2x_silu(d_in: int, d: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d), nn.SiLU(), nn.Linear(d, d))


def mlp3x_silu(d_in: int, d: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d), nn.SiLU(), nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))


def sample_logit_normal(n: int, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
    """t = sigmoid(z), z ~ N(0, 1): the first coordinate of LogisticNormal(0, 1)."""
    return torch.sigmoid(torch.randn(n, device=device, generator=generator))


def euler_integrate(velocity: VelocityFn, x0: torch.Tensor, num_steps: int) -> torch.Tensor:
    """Integrate dx/dt = velocity(x, t) from t = 0 to t = 1 with `num_steps` equal Euler steps."""
    x, dt = x0, 1.0 / num_steps
    for i in range(num_steps):
        t = torch.full((x.shape[0],), i * dt, device=x.device, dtype=torch.float32)
        x = x + dt * velocity(x, t).to(x.dtype)
    return x


def euler_times(num_steps: int, device: torch.device) -> torch.Tensor:
    """The flow times t_i = i / num_steps of `euler_integrate`, (num_steps,) float32 on `device`."""
    dt = 1.0 / num_steps
    return torch.tensor([i * dt for i in range(num_steps)], dtype=torch.float32, device=device)


class ActionExpert(nn.Module):
    """RDT + language/action/state adaptors. Actions are normalized to [-1, 1] outside this module."""

    def __init__(self, cfg: RDTConfig, action_dim: int, state_dim: int, horizon: int):
        super().__init__()
        self.cfg, self.action_dim, self.horizon = cfg, action_dim, horizon
        d = cfg.hidden_size
        self.model = RDT(cfg, horizon=horizon, out_dim=action_dim)
        self.lang_adaptor = mlp2x_silu(cfg.cond_hidden_size, d)
        self.act_adaptor = mlp3x_silu(action_dim, d)
        self.state_adaptor = mlp3x_silu(state_dim, d)
        for adaptor in (self.lang_adaptor, self.act_adaptor, self.state_adaptor):
            for layer in adaptor:
                if isinstance(layer, nn.Linear):
                    nn.init.xavier_uniform_(layer.weight)
                    nn.init.zeros_(layer.bias)

    @property
    def dtype(self) -> torch.dtype:
        return self.lang_adaptor[0].weight.dtype

    def encode_condition(self, hidden_stack: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden_stack (B, depth, L, D_vlm), state (B, S) -> adapted language (B, depth, L, D), state token (B, 1, D).

        Done once per chunk; the sampler reuses both for every denoising step."""
        lang = self.lang_adaptor(hidden_stack.to(self.dtype))
        state_token = self.state_adaptor(state.to(self.dtype).unsqueeze(1))
        return lang, state_token

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, lang: torch.Tensor, state_token: torch.Tensor,
                 lang_mask: torch.Tensor | None) -> torch.Tensor:
        """x_t (B, T, A) normalized noisy actions, t (B,) -> predicted velocity (B, T, A)."""
        tokens = self.act_adaptor(x_t.to(self.dtype))
        return self.model(tokens, t.to(self.dtype), state_token, lang, lang_mask)

    def loss(self, actions: torch.Tensor, hidden_stack: torch.Tensor, state: torch.Tensor,
             lang_mask: torch.Tensor | None, generator: torch.Generator | None = None, return_tokens: bool = False):
        """Flow-matching MSE over every element; actions (B, T, A) normalized. `return_tokens`: (loss, the RDT's
        last-block tokens (B, T + registers, D)) for an auxiliary loss on what the denoiser read."""
        b = actions.shape[0]
        lang, state_token = self.encode_condition(hidden_stack, state)
        noise = torch.randn(actions.shape, device=actions.device, generator=generator, dtype=actions.dtype)
        t = sample_logit_normal(b, actions.device, generator).to(actions.dtype)
        x_t = t[:, None, None] * actions + (1 - t[:, None, None]) * noise
        pred = self.model(self.act_adaptor(x_t.to(self.dtype)), t.to(self.dtype), state_token, lang, lang_mask,
                          return_tokens=return_tokens)
        pred, tokens = pred if return_tokens else (pred, None)
        loss = F.mse_loss(pred.float(), (actions - noise).float())
        return (loss, tokens) if return_tokens else loss

    @torch.no_grad()
    def sample(self, hidden_stack: torch.Tensor, state: torch.Tensor, lang_mask: torch.Tensor | None,
               num_steps: int, generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
               noise_scale: float = 1.0) -> torch.Tensor:
        """Euler sampler from noise at t=0 to actions at t=1; `num_steps=1` is the distilled one-step generator.
        Without `noise`, it starts from N(0, noise_scale^2) (GemVLAConfig.noise_scale)."""
        if noise is None:
            noise = noise_scale * torch.randn((hidden_stack.shape[0], self.horizon, self.action_dim),
                                              device=hidden_stack.device, generator=generator, dtype=torch.float32)
        return self.integrate(noise, hidden_stack, state, lang_mask, euler_times(num_steps, noise.device))

    def integrate(self, noise: torch.Tensor, hidden_stack: torch.Tensor, state: torch.Tensor,
                  lang_mask: torch.Tensor | None, times: torch.Tensor, compile_blocks: bool = False) -> torch.Tensor:
        """Euler over the flow times `times` (`euler_times`) as a pure function of tensors already on the device
        (no RNG, no host synchronisation or upload), so a CUDA graph can capture it whole. Same arithmetic as
        `euler_integrate` over `velocity`; the conditioning of every step is computed up front
        (`RDT.plan_sampling`)."""
        lang, state_token = self.encode_condition(hidden_stack, state)
        dt = 1.0 / times.shape[0]
        x = noise.to(self.dtype)
        for plan in self.model.plan_sampling(times, state_token, lang, lang_mask):
            x = x + dt * self.model.run(self.act_adaptor(x), plan, compile_blocks).to(x.dtype)
        return x.float()


def distillation_loss(generator: ActionExpert, teacher: ActionExpert, hidden_stack: torch.Tensor,
                      state: torch.Tensor, lang_mask: torch.Tensor | None, teacher_steps: int,
                      rng: torch.Generator | None = None) -> torch.Tensor:
    """One-step regression distillation (gem_reference §5): the generator's single Euler step from eps
    must land where the frozen teacher's `teacher_steps`-step sampler lands from the same eps."""
    b = hidden_stack.shape[0]
    noise = torch.randn((b, generator.horizon, generator.action_dim), device=hidden_stack.device, generator=rng)
    with torch.no_grad():
        target = teacher.sample(hidden_stack, state, lang_mask, teacher_steps, noise=noise)
    lang, state_token = generator.encode_condition(hidden_stack, state)
    t0 = torch.zeros(b, device=hidden_stack.device)
    x0 = noise.to(generator.dtype)
    one_step = x0 + generator.velocity(x0, t0, lang, state_token, lang_mask)
    return F.mse_loss(one_step.float(), target.float())
