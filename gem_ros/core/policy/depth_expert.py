"""GEM depth expert: a SANA DiT that paints a depth map from the VLM's image-token hidden states.

Training-time auxiliary loss only (gem_reference §6); the policy never needs it to act. `generate`
renders a predicted depth map for debugging. Submodule names (`sana`, `vae`, `diffusion_connector`)
match GEM-2B so its checkpoint keys load unchanged (§12, §15).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderDC, FlowMatchEulerDiscreteScheduler, SanaTransformer2DModel
from torch import nn

from gem_ros.core.policy.checkpoint import refuse_pickles, safetensors_header
from gem_ros.core.policy.layers import RMSNorm

DEPTH_PREFIXES = ("sana.", "vae.", "diffusion_connector.")
# "pretrained": every tensor comes from the backbone folder (GEM-2B keeps them beside the VLM), or SANA and DC-AE from
# the diffusers folder `sana_dir` when one is named, or the build is refused; "random": start from random weights on
# purpose (tests, ablations). Never random by omission: a random frozen VAE makes the auxiliary loss something other
# than the paper's depth generation.
DEPTH_INITS = ("pretrained", "random")
# Subfolders of a diffusers SANA pipeline folder (e.g. SANA1.5_1.6B_1024px_diffusers) the depth expert reads.
DIFFUSERS_PARTS = (("transformer", "sana", SanaTransformer2DModel), ("vae", "vae", AutoencoderDC))
LEGACY_LOSS_WEIGHT = 0.1   # the default every config.json written before the field was removed holds


def sana_1600m_config(image_size: int = 256) -> dict[str, Any]:
    """SANA1.5-1.6B transformer (SanaMS1.5_1600M_P1_D20) as diffusers builds it. Width 70x32 = 2240."""
    return {
        "in_channels": 32, "out_channels": 32, "patch_size": 1, "num_layers": 20,
        "num_attention_heads": 70, "attention_head_dim": 32,
        "num_cross_attention_heads": 20, "cross_attention_head_dim": 112, "cross_attention_dim": 2240,
        "caption_channels": 2304, "mlp_ratio": 2.5, "dropout": 0.0, "attention_bias": False,
        "norm_elementwise_affine": False, "norm_eps": 1e-6, "qk_norm": "rms_norm_across_heads",
        "interpolation_scale": None,  # None = no positional embedding (SANA at <= 1024 px)
        "guidance_embeds": False, "timestep_scale": 1.0,
        "sample_size": image_size // 32,  # latent side; only used by a pos-emb, which is off
    }


def dc_ae_f32c32_config() -> dict[str, Any]:
    """DC-AE f32c32 of SANA (mit-han-lab dc-ae-f32c32-sana-1.x; 1.1 only retrains the decoder).

    `downsample_block_type="conv"` and `upsample_block_type="interpolate"` change parameter shapes, so
    they must match the checkpoint. DC-AE has no shift factor; latents are only scaled.
    """
    blocks = ["ResBlock"] * 3 + ["EfficientViTBlock"] * 3
    widths = [128, 256, 512, 512, 1024, 1024]
    multiscales = [[], [], [], [5], [5], [5]]
    return {
        "in_channels": 3, "latent_channels": 32, "attention_head_dim": 32,
        "encoder_block_types": blocks, "decoder_block_types": list(blocks),
        "encoder_block_out_channels": widths, "decoder_block_out_channels": list(widths),
        "encoder_layers_per_block": [2, 2, 2, 3, 3, 3], "decoder_layers_per_block": [3, 3, 3, 3, 3, 3],
        "encoder_qkv_multiscales": multiscales, "decoder_qkv_multiscales": copy.deepcopy(multiscales),
        "downsample_block_type": "conv", "upsample_block_type": "interpolate",
        "decoder_norm_types": "rms_norm", "decoder_act_fns": "silu",
        "scaling_factor": 0.41407,
    }


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _positive_int(name: str, value: Any) -> None:
    _require(isinstance(value, int) and not isinstance(value, bool) and value > 0,
             f"depth_expert.{name} must be a positive integer, got {value!r}")


@dataclass
class DepthExpertConfig:
    vlm_hidden_size: int = 2048           # width of the VLM final hidden states it is conditioned on
    caption_channels: int = 2304          # connector output width = SANA caption_channels
    sana: dict = field(default_factory=sana_1600m_config)
    vae: dict = field(default_factory=dc_ae_f32c32_config)
    image_size: int = 256                 # depth image side in px, a multiple of the VAE compression
    cond_dropout: float = 0.1             # whole-span condition dropout in train mode (enables CFG)
    # Started from a diffusers SANA folder, the shift is what the reference's FlowMatchEulerDiscreteScheduler
    # .from_pretrained reads from its scheduler/ (diffusers_depth_config): a DPM-Solver config's `flow_shift` is
    # not read, giving 1.0. Which config the SANA1.5 repo ships is unverified here; 3.0 otherwise.
    scheduler_shift: float = 3.0
    num_train_timesteps: int = 1000
    init: str = "pretrained"              # DEPTH_INITS; the loss weight is GemVLAConfig.depth_loss_weight
    # A diffusers SANA folder (transformer/, vae/, scheduler/) a pretrained start reads SANA and DC-AE from, as the
    # reference's SANA_PATH (its connector then starts random, as there); None: the GEM-2B backbone folder.
    sana_dir: str | None = None
    vision_start_token_id: int = 151652   # <|vision_start|> of Qwen3-VL
    vision_end_token_id: int = 151653     # <|vision_end|>

    def __post_init__(self) -> None:
        for name in ("vlm_hidden_size", "caption_channels", "image_size", "num_train_timesteps"):
            _positive_int(name, getattr(self, name))
        _require(isinstance(self.sana, Mapping), "depth_expert.sana must be a dict of SanaTransformer2DModel args")
        _require(isinstance(self.vae, Mapping), "depth_expert.vae must be a dict of AutoencoderDC args")
        try:  # normalise tuples to lists so to_dict/from_dict round-trips exactly through JSON
            self.sana, self.vae = json.loads(json.dumps(dict(self.sana))), json.loads(json.dumps(dict(self.vae)))
        except TypeError as err:
            raise ValueError(f"depth_expert.sana/vae must be JSON-serialisable: {err}") from err
        _require(0.0 <= self.cond_dropout < 1.0,
                 f"depth_expert.cond_dropout must be in [0, 1), got {self.cond_dropout}")
        _require(self.scheduler_shift > 0, f"depth_expert.scheduler_shift must be > 0, got {self.scheduler_shift}")
        _require(self.init in DEPTH_INITS, f"depth_expert.init must be one of {DEPTH_INITS}, got {self.init!r}")
        _require(self.sana_dir is None or (isinstance(self.sana_dir, str) and self.sana_dir.strip() != ""),
                 f"depth_expert.sana_dir must be null or a folder, got {self.sana_dir!r}")
        _require(self.sana_dir is None or self.init == "pretrained",
                 "depth_expert.sana_dir names pretrained weights but depth_expert.init is \"random\"")
        for name in ("vision_start_token_id", "vision_end_token_id"):
            value = getattr(self, name)
            _require(isinstance(value, int) and value >= 0,
                     f"depth_expert.{name} must be a token id >= 0, got {value!r}")
        _require(self.vision_start_token_id != self.vision_end_token_id,
                 "depth_expert.vision_start_token_id and vision_end_token_id must differ")
        _require(self.sana.get("caption_channels") == self.caption_channels,
                 f"depth_expert.sana['caption_channels'] ({self.sana.get('caption_channels')}) must equal "
                 f"caption_channels ({self.caption_channels})")
        latent = self.vae.get("latent_channels", 32)
        in_ch = self.sana.get("in_channels", 32)
        out_ch = self.sana.get("out_channels") or in_ch  # diffusers: None means same as in_channels
        _require(in_ch == latent and out_ch == latent,
                 f"depth_expert.sana in/out_channels ({in_ch}/{out_ch}) must equal vae latent_channels ({latent})")
        _require(self.image_size % self.vae_compression == 0,
                 f"depth_expert.image_size {self.image_size} must be a multiple of the VAE compression "
                 f"{self.vae_compression}")

    @property
    def vae_compression(self) -> int:
        """Spatial downsampling of AutoencoderDC: one factor of 2 per block after the first."""
        widths = self.vae.get("encoder_block_out_channels", [128, 256, 512, 512, 1024, 1024])
        return 2 ** (len(widths) - 1)

    @property
    def latent_size(self) -> int:
        return self.image_size // self.vae_compression

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DepthExpertConfig:
        data = dict(data)
        if "loss_weight" in data:   # older config.json: a field that was never applied
            legacy = data.pop("loss_weight")
            if legacy != LEGACY_LOSS_WEIGHT:
                warnings.warn(f"depth_expert.loss_weight {legacy!r} is ignored (it was never applied): the depth loss "
                              f"is weighted by depth_loss_weight (gem_train: train.depth_loss_weight)", stacklevel=2)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        _require(not unknown, f"unknown DepthExpertConfig fields: {unknown}")
        return cls(**copy.deepcopy(dict(data)))


def diffusers_depth_config(folder: Path | str, vlm_hidden_size: int, image_size: int = 256,
                           **overrides) -> DepthExpertConfig:
    """A pretrained depth expert shaped like the diffusers SANA folder: SANA and DC-AE as their config.json files
    say, and the flow-matching schedule `FlowMatchEulerDiscreteScheduler.from_pretrained(folder, subfolder=
    "scheduler")` reads, as the reference builds it (a DPM-Solver config's `flow_shift` is no `shift` to that class,
    so such a folder gives shift 1.0, as it gave the reference). Without scheduler/ the configured shift stays."""
    folder = Path(folder)
    parts = {}
    for sub, name, cls in DIFFUSERS_PARTS:
        check_diffusers_part(folder / sub)
        try:
            parts[name] = cls.extract_init_dict(cls.load_config(str(folder / sub)))[0]
        except (OSError, ValueError, TypeError) as error:
            raise ValueError(f"{folder / sub / 'config.json'}: not a {cls.__name__} config ({error})") from error
    schedule = {}
    if (folder / "scheduler" / "scheduler_config.json").is_file():
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(str(folder), subfolder="scheduler",
                                                                    local_files_only=True)
        schedule = {"scheduler_shift": float(scheduler.config.shift),
                    "num_train_timesteps": int(scheduler.config.num_train_timesteps)}
    return DepthExpertConfig(vlm_hidden_size=vlm_hidden_size, caption_channels=parts["sana"].get("caption_channels"),
                             sana=parts["sana"], vae=parts["vae"], image_size=image_size, sana_dir=str(folder),
                             **{**schedule, **overrides})


def check_diffusers_part(path: Path) -> list[Path]:
    """The weight files of a diffusers model folder we will open: config.json, safetensors, no pickle in it."""
    _require(path.is_dir(), f"{path} does not exist: a diffusers SANA folder holds transformer/ "
                            f"(SanaTransformer2DModel) and vae/ (AutoencoderDC), as save_pretrained writes them")
    refuse_pickles(path)
    _require((path / "config.json").is_file(), f"{path / 'config.json'} does not exist")
    shards = sorted(path.glob("*.safetensors"))
    _require(bool(shards), f"{path} holds no *.safetensors weights (save_pretrained(safe_serialization=True))")
    return shards


def _draw(kind: str, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """rand/randn on the generator's own device (torch requires it), then moved to `device`."""
    gen_device = generator.device if generator is not None else device
    fn = torch.rand if kind == "rand" else torch.randn
    return fn(shape, generator=generator, device=gen_device).to(device)


class DepthExpert(nn.Module):
    def __init__(self, config: DepthExpertConfig) -> None:
        super().__init__()
        self.config = config
        self.sana = SanaTransformer2DModel(**config.sana)
        self.vae = AutoencoderDC(**config.vae)
        self.vae.requires_grad_(False)
        self.vae.eval()
        self.diffusion_connector = nn.Sequential(
            nn.Linear(config.vlm_hidden_size, config.caption_channels),
            nn.GELU(approximate="tanh"),
            nn.Linear(config.caption_channels, config.caption_channels),
            RMSNorm(config.caption_channels, eps=1e-5, elementwise_affine=True),
        )
        # Training draws (timestep, sigma) from the scheduler's fixed 1000-entry tables. Plain fp32 CPU
        # tensors, not buffers: they stay out of the checkpoint and a bf16 cast cannot round them.
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=config.num_train_timesteps,
                                                    shift=config.scheduler_shift)
        self.train_timesteps = scheduler.timesteps.detach().clone().float().cpu()
        self.train_sigmas = scheduler.sigmas.detach().clone().float().cpu()
        self._latent_shift = float(getattr(self.vae.config, "shift_factor", None) or 0.0)
        self._latent_scale = float(self.vae.config.scaling_factor)

    def train(self, mode: bool = True) -> DepthExpert:
        super().train(mode)
        self.vae.eval()  # frozen: never let a trainer's model.train() flip it
        return self

    def image_span_condition(self, last_hidden_state: torch.Tensor, input_ids: torch.Tensor
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Hidden states strictly between each vision start/end pair, one padded row per image span.

        Returns cond (N, S, D), cond_mask (N, S) bool (True = valid token), span_owner (N,) sample index,
        span_order (N,) camera index within its sample. Spans are in sequence order.
        """
        _require(last_hidden_state.dim() == 3 and input_ids.shape == last_hidden_state.shape[:2],
                 f"last_hidden_state (B, L, D) and input_ids (B, L) disagree: "
                 f"{tuple(last_hidden_state.shape)} vs {tuple(input_ids.shape)}")
        spans: list[tuple[int, int, int, int]] = []  # (sample, camera, first token, end token exclusive)
        for b in range(input_ids.shape[0]):
            starts = (input_ids[b] == self.config.vision_start_token_id).nonzero().flatten().tolist()
            ends = (input_ids[b] == self.config.vision_end_token_id).nonzero().flatten().tolist()
            _require(len(starts) == len(ends) and all(s < e for s, e in zip(starts, ends))
                     and all(e < s for e, s in zip(ends, starts[1:])),
                     f"sample {b}: unbalanced vision start/end tokens at {starts} / {ends}")
            for camera, (s, e) in enumerate(zip(starts, ends)):
                _require(e - s > 1, f"sample {b}: image span {camera} has no tokens")
                spans.append((b, camera, s + 1, e))
        _require(len(spans) > 0, "no image spans (vision start/end tokens) found in input_ids")
        width = max(e - s for _, _, s, e in spans)
        cond = last_hidden_state.new_zeros(len(spans), width, last_hidden_state.shape[-1])
        mask = torch.zeros(len(spans), width, dtype=torch.bool, device=last_hidden_state.device)
        for i, (b, _, s, e) in enumerate(spans):
            cond[i, : e - s] = last_hidden_state[b, s:e]
            mask[i, : e - s] = True
        owner = torch.tensor([b for b, _, _, _ in spans], device=input_ids.device)
        order = torch.tensor([c for _, c, _, _ in spans], device=input_ids.device)
        return cond, mask, owner, order

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        vae_dtype = next(self.vae.parameters()).dtype
        with torch.no_grad():
            latent = self.vae.encode(images.to(vae_dtype)).latent
        return (latent - self._latent_shift) * self._latent_scale

    def _velocity(self, noisy: torch.Tensor, caption: torch.Tensor, mask: torch.Tensor,
                  timestep: torch.Tensor) -> torch.Tensor:
        dtype = next(self.sana.parameters()).dtype
        return self.sana(noisy.to(dtype), encoder_hidden_states=caption.to(dtype), encoder_attention_mask=mask,
                         timestep=timestep, return_dict=False)[0]

    def loss(self, last_hidden_state: torch.Tensor, input_ids: torch.Tensor, depth_images: torch.Tensor,
             depth_valid: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Flow-matching depth loss (unweighted scalar). depth_images: (B, C, 3, H, W) in [-1, 1]: entry i of sample
        b is the target of its i-th image span (prompt order); depth_valid: optional (B, C) bool, targets without a
        valid entry are skipped. A sample may have fewer spans than C (cameras dropped from its prompt): its entries
        beyond its spans must then be invalid.
        """
        size, batch = self.config.image_size, input_ids.shape[0]
        _require(depth_images.dim() == 5 and depth_images.shape[0] == batch
                 and tuple(depth_images.shape[2:]) == (3, size, size),
                 f"depth_images must be (B={batch}, C, 3, {size}, {size}), got {tuple(depth_images.shape)}")
        cameras = depth_images.shape[1]
        if depth_valid is not None:
            _require(tuple(depth_valid.shape) == tuple(depth_images.shape[:2]),
                     f"depth_valid must be {tuple(depth_images.shape[:2])}, got {tuple(depth_valid.shape)}")
            depth_valid = depth_valid.to(input_ids.device).bool()
        if not bool((input_ids == self.config.vision_start_token_id).any()):   # every image dropped
            _require(depth_valid is not None and not bool(depth_valid.any()),
                     "depth targets are marked valid but the prompts hold no image span")
            return last_hidden_state.sum() * 0.0
        cond, mask, owner, order = self.image_span_condition(last_hidden_state, input_ids)
        per_sample = torch.bincount(owner, minlength=batch)
        if depth_valid is None:
            _require(bool((per_sample == cameras).all()),
                     f"each sample needs one image span per depth target ({cameras}), "
                     f"got spans per sample {per_sample.tolist()}")
            keep = torch.ones_like(owner, dtype=torch.bool)
        else:
            _require(bool((per_sample <= cameras).all()),
                     f"more image spans than depth targets ({cameras}): spans per sample {per_sample.tolist()}")
            beyond = torch.arange(cameras, device=owner.device)[None, :] >= per_sample[:, None]
            _require(not bool((depth_valid & beyond).any()),
                     f"valid depth targets beyond a sample's image spans (spans per sample {per_sample.tolist()})")
            keep = depth_valid[owner, order]
        if not bool(keep.any()):
            return last_hidden_state.sum() * 0.0  # keeps the graph intact for the caller's backward
        cond, mask = cond[keep], mask[keep]
        targets = depth_images[owner[keep], order[keep]]
        device, n = cond.device, cond.shape[0]

        latents = self._encode(targets).float()
        u = _draw("rand", (n,), generator, device)
        index = (u * self.config.num_train_timesteps).long().clamp(max=self.config.num_train_timesteps - 1).cpu()
        timestep = self.train_timesteps[index].to(device)
        sigma = self.train_sigmas[index].to(device).view(n, 1, 1, 1)
        noise = _draw("randn", tuple(latents.shape), generator, device)
        noisy = (1.0 - sigma) * latents + sigma * noise  # sigma=1 is pure noise, sigma=0 the data
        if self.training and self.config.cond_dropout > 0:  # drawn last: same timesteps/noise as in eval mode
            dropped = _draw("rand", (n,), generator, device) < self.config.cond_dropout
            cond = cond * (~dropped).to(cond.dtype)[:, None, None]  # zeroed before the connector, as GEM
        pred = self._velocity(noisy, self.diffusion_connector(cond), mask, timestep).float()
        return ((pred - (noise - latents)) ** 2).mean(dim=(1, 2, 3)).mean()

    @torch.no_grad()
    def generate(self, last_hidden_state: torch.Tensor, input_ids: torch.Tensor, num_steps: int = 30,
                 guidance_scale: float = 5.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """Depth image per image span, (N, 3, H, W) clamped to [-1, 1]; for debugging only."""
        _require(num_steps > 0, f"num_steps must be > 0, got {num_steps}")
        cond, mask, _, _ = self.image_span_condition(last_hidden_state, input_ids)
        device, n = cond.device, cond.shape[0]
        # A fresh scheduler: set_timesteps mutates it, and the training tables must stay untouched.
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=self.config.num_train_timesteps,
                                                    shift=self.config.scheduler_shift)
        scheduler.set_timesteps(sigmas=torch.linspace(1.0, 1.0 / num_steps, num_steps).tolist(), device=device)
        sigmas = scheduler.sigmas.to(device)  # shifted, with a terminal 0 appended
        caption = self.diffusion_connector(torch.cat([cond, torch.zeros_like(cond)]))  # [conditional; unconditional]
        mask2 = torch.cat([mask, mask])
        side = self.config.latent_size
        x = _draw("randn", (n, self.config.vae["latent_channels"], side, side), generator, device)
        for i, t in enumerate(scheduler.timesteps):
            v = self._velocity(torch.cat([x, x]), caption, mask2, t.expand(2 * n)).float()
            v_cond, v_uncond = v.chunk(2)
            v = v_uncond + guidance_scale * (v_cond - v_uncond)
            x = x + (sigmas[i + 1] - sigmas[i]) * v  # Euler from sigma=1 (noise) towards 0 (data)
        vae_dtype = next(self.vae.parameters()).dtype
        images = self.vae.decode((x / self._latent_scale + self._latent_shift).to(vae_dtype)).sample
        return images.float().clamp(-1.0, 1.0)

    @staticmethod
    def gem_keys(keys: Iterable[str]) -> list[str]:
        """Keys of a (GEM-2B layout) checkpoint that belong to the depth expert."""
        return [k for k in keys if k.startswith(DEPTH_PREFIXES)]

    def load_gem_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict_shapes: bool = True) -> dict:
        """Load sana./vae./diffusion_connector. keys from a full GEM-2B state dict (other keys ignored).

        Returns {"loaded": n, "missing": [...], "unexpected": [...], "mismatched": [...]}. A shape mismatch
        raises ValueError naming the key, or is skipped and listed when strict_shapes is False.
        """
        own = self.state_dict()
        picked, unexpected, mismatched = {}, [], []
        for key in self.gem_keys(state_dict.keys()):
            if key not in own:
                unexpected.append(key)
            elif tuple(state_dict[key].shape) != tuple(own[key].shape):
                _require(not strict_shapes, f"shape mismatch for {key}: checkpoint {tuple(state_dict[key].shape)}, "
                                            f"model {tuple(own[key].shape)}")
                mismatched.append(key)
            else:
                picked[key] = state_dict[key]
        self.load_state_dict(picked, strict=False)
        missing = [k for k in own if k not in picked and k not in mismatched]
        return {"loaded": len(picked), "missing": missing, "unexpected": unexpected, "mismatched": mismatched}

    def load_pretrained(self, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
        """Every depth tensor from a GEM-2B layout `state_dict` (other keys ignored), or a ValueError naming `source`,
        the missing and the unexpected keys: part pretrained, part random is not the paper's depth expert either.
        With `sana_dir` configured, SANA and DC-AE come from that diffusers folder instead (`load_diffusers`)."""
        if self.config.sana_dir is not None:
            self.load_diffusers(Path(self.config.sana_dir))
            return
        report = self.load_gem_state_dict(state_dict)
        missing, unexpected = report["missing"], report["unexpected"]
        if missing or unexpected:
            own = list(self.state_dict())
            groups = [f"{prefix}* {len(names)} of {sum(k.startswith(prefix) for k in own)} (e.g. {names[:3]})"
                      for prefix in DEPTH_PREFIXES if (names := [k for k in missing if k.startswith(prefix)])]
            raise ValueError(
                f"{source} does not hold the pretrained depth expert: missing {len(missing)} of its {len(own)} "
                f"tensors{': ' + '; '.join(groups) if groups else ''}; unexpected {unexpected[:8]}. Use a GEM-2B "
                f"folder (sana.*, vae.*, diffusion_connector.* beside the VLM), or set depth_expert.init to "
                f"\"random\" to start it from random weights on purpose")

    def load_diffusers(self, folder: Path) -> None:
        """SANA (transformer/) and the frozen DC-AE (vae/) from a diffusers folder through `from_pretrained`, local
        safetensors only; every tensor of each must be there (diffusers itself would start a missing one random with
        a log line). The connector keeps its initialisation: the reference trains it from scratch on this start."""
        for sub, name, cls in DIFFUSERS_PARTS:
            path, module = folder / sub, getattr(self, name)
            stored = {key: shape for shard in check_diffusers_part(path)
                      for key, (_, shape) in safetensors_header(shard).items()}
            own = {key: tuple(value.shape) for key, value in module.state_dict().items()}
            missing, unexpected = sorted(set(own) - set(stored)), sorted(set(stored) - set(own))
            mis_shaped = [f"{k}: file {stored[k]} vs config {own[k]}" for k in own
                          if k in stored and stored[k] != own[k]]
            if missing or unexpected or mis_shaped:
                raise ValueError(f"{path} does not hold the {cls.__name__} of depth_expert.{name}: missing "
                                 f"{len(missing)} tensors {missing[:8]}, unexpected {unexpected[:8]}, shape "
                                 f"mismatches {mis_shaped[:8]}")
            loaded = cls.from_pretrained(str(folder), subfolder=sub, use_safetensors=True, local_files_only=True)
            module.load_state_dict(loaded.state_dict(), strict=True)
