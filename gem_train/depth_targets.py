"""gem_depth_targets: add monocular depth-estimation targets (Depth Anything / DPT) to recorded episodes.

    gem_depth_targets --model models/depth-anything-v2-small --data data/my_task [--cameras scene wrist]
                      [--batch-size 16] [--device auto] [--dtype auto] [--kind auto] [--overwrite]

GEM-VLA trains its depth expert on Depth Anything 3 outputs (gem_reference §7); here any LOCAL transformers
depth-estimation folder of the Depth Anything / DPT family does (nothing is downloaded). Each camera's frames
are run through the model in batches (no grad; bf16 on CUDA, fp32 on CPU), the prediction is resized back to
the frame size (bicubic, as transformers' `post_process_depth_estimation`) and stored in the episode:

    observations/depth_estimated/<cam>   (N, H, W) float32, one chunk per frame, the camera's compression
        attrs: kind   "disparity": relative inverse depth (larger = nearer, unknown scale and shift; Depth
                                   Anything "relative", DPT/MiDaS) -> normalise per frame, never take 1/x
                      "metric":    metres (Depth Anything "metric" checkpoints)
               model, model_type, source="gem_depth_targets"

It never touches `observations/depth` (measured metric depth from the sim / a sensor). An episode is updated
as a whole: copied to `<name>.depth.tmp`, written, fsynced and renamed over the original, so an interrupted
run leaves every episode either unchanged or complete (readers ignore `*.tmp`). Needs free disk for one
episode copy. Episodes that already hold targets for every requested camera are skipped (`--overwrite`
recomputes). Run one instance per folder.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from gem_train.data.episodes import FORMAT, find_episodes
from gem_train.data.frames import H5Frames

TARGET_GROUP = "observations/depth_estimated"
SCRATCH_SUFFIX = ".depth.tmp"
SUPPORTED_MODEL_TYPES = ("depth_anything", "dpt")
KINDS = ("auto", "disparity", "metric")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class DepthTargetConfig:
    model_path: str                          # local transformers folder (config.json + preprocessor_config.json)
    cameras: list[str] | None = None         # None: every camera of each episode
    batch_size: int = 16                     # frames per forward pass
    device: str = "auto"                     # auto | cpu | cuda | cuda:N
    dtype: str = "auto"                      # auto (bf16 on CUDA, fp32 on CPU) | float32 | bfloat16 | float16
    overwrite: bool = False                  # recompute targets that already exist
    kind: str = "auto"                       # what the model predicts; auto: from its config (see target_kind)

    def __post_init__(self) -> None:
        folder = Path(self.model_path)
        if not folder.is_dir():
            raise ValueError(f"model_path {self.model_path!r} is not a folder (give a local depth-estimation model)")
        for name in ("config.json", "preprocessor_config.json"):
            if not (folder / name).is_file():
                raise ValueError(f"model_path {self.model_path!r} has no {name}; expected a transformers depth-"
                                 f"estimation folder ({'/'.join(SUPPORTED_MODEL_TYPES)}) with its image processor")
        if self.cameras is not None:
            self.cameras = list(self.cameras)
            if not self.cameras or len(set(self.cameras)) != len(self.cameras):
                raise ValueError(f"cameras must be non-empty and unique (or None for all), got {self.cameras}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {self.batch_size!r}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"dtype must be auto or one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def torch_dtype(self, device: torch.device) -> torch.dtype:
        if self.dtype == "auto":
            return torch.bfloat16 if device.type == "cuda" else torch.float32
        return DTYPES[self.dtype]


@dataclass
class EpisodeResult:
    path: Path
    written: list[str]                       # cameras whose targets were (re)computed; [] = skipped
    frames: int                              # frames run through the model


def load_depth_model(cfg: DepthTargetConfig):
    """(model in eval mode on cfg's device/dtype, image processor). Local files only."""
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    model_type = json.loads((Path(cfg.model_path) / "config.json").read_text()).get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"{cfg.model_path} holds a {model_type!r} model, not a depth-estimation model of the "
                         f"Depth Anything / DPT family ({', '.join(SUPPORTED_MODEL_TYPES)})")
    device = cfg.torch_device()
    # Without torchvision, transformers falls back to the PIL image-processor backend (DPTImageProcessorPil).
    processor = AutoImageProcessor.from_pretrained(cfg.model_path, local_files_only=True)
    model = AutoModelForDepthEstimation.from_pretrained(cfg.model_path, local_files_only=True)
    return model.to(device=device, dtype=cfg.torch_dtype(device)).eval(), processor


def target_kind(model_config, requested: str = "auto") -> str:
    """'disparity' or 'metric'. auto: Depth Anything says so in `depth_estimation_type`; DPT (MiDaS-style)
    checkpoints predict relative inverse depth. Pass kind explicitly for a metric-finetuned DPT."""
    if requested != "auto":
        return requested
    if getattr(model_config, "model_type", None) == "depth_anything":
        return "metric" if model_config.depth_estimation_type == "metric" else "disparity"
    return "disparity"


@torch.no_grad()
def predict_depth(frames: np.ndarray, model, processor) -> np.ndarray:
    """(B, H, W, 3) uint8 RGB -> (B, H, W) float32 model output at the frames' own size."""
    param = next(model.parameters())
    inputs = processor(images=list(frames), return_tensors="pt")
    pixels = inputs["pixel_values"].to(device=param.device, dtype=param.dtype)
    predicted = model(pixel_values=pixels).predicted_depth.float()            # (B, h, w)
    resized = torch.nn.functional.interpolate(predicted[:, None], size=frames.shape[1:3], mode="bicubic",
                                              align_corners=False)[:, 0]
    return resized.cpu().numpy()


def add_depth_targets(episode_path: Path | str, model, processor, cfg: DepthTargetConfig) -> EpisodeResult:
    """Write `observations/depth_estimated/<cam>` into one episode file (atomically); see the module doc."""
    path = Path(episode_path)
    with h5py.File(path, "r") as f:
        cameras = _episode_cameras(f)
        wanted = cfg.cameras or cameras
        missing = [c for c in wanted if c not in cameras]
        if missing:
            raise ValueError(f"{path}: no camera(s) {missing} (the episode has {cameras})")
        done = f.get(TARGET_GROUP)
        todo = [c for c in wanted if cfg.overwrite or done is None or c not in done]
    if not todo:
        return EpisodeResult(path, [], 0)
    kind = target_kind(model.config, cfg.kind)
    scratch = path.with_name(path.name + SCRATCH_SUFFIX)
    frames_done = 0
    try:
        shutil.copy2(path, scratch)          # a stale scratch file of an interrupted run is overwritten
        with h5py.File(scratch, "r+") as f:
            group = f.require_group(TARGET_GROUP)
            for cam in todo:
                frames_done += _write_camera(f, group, cam, model, processor, cfg.batch_size, kind, cfg.model_path)
        with open(scratch, "rb+") as handle:  # the rename must never publish data still in the page cache
            os.fsync(handle.fileno())
        os.replace(scratch, path)
    except BaseException:
        scratch.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return EpisodeResult(path, todo, frames_done)


def _episode_cameras(f: h5py.File) -> list[str]:
    if f.attrs.get("format") == FORMAT:
        return list(json.loads(f.attrs["camera_names"]))
    images = f.get("observations/images")       # GEM reference file: cameras in file order
    if images is None:
        raise ValueError(f"{f.filename}: no observations/images group, not an episode file")
    return list(images)


def _write_camera(f: h5py.File, group: h5py.Group, cam: str, model, processor, batch_size: int, kind: str,
                  model_path: str) -> int:
    source = f[f"observations/images/{cam}"]
    frames = H5Frames(source)
    n = len(frames)
    if cam in group:
        del group[cam]
    first = frames[0]
    height, width = first.shape[:2]
    opts = {"compression_opts": source.compression_opts} if source.compression == "gzip" else {}
    target = group.create_dataset(cam, shape=(n, height, width), dtype=np.float32, chunks=(1, height, width),
                                  compression=source.compression, shuffle=source.compression is not None, **opts)
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        batch = source[start:stop] if not frames.encoded else np.stack([frames[i] for i in range(start, stop)])
        depth = predict_depth(np.asarray(batch), model, processor)
        if not np.isfinite(depth).all():
            raise ValueError(f"{f.filename}: the model gave non-finite depth for '{cam}' frames {start}..{stop - 1}"
                             " (try --dtype float32)")
        target[start:stop] = depth
    target.attrs.update(kind=kind, model=str(Path(model_path).resolve().name),
                        model_type=str(model.config.model_type), source="gem_depth_targets")
    return n


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------------ CLI
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gem_depth_targets", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="local Depth Anything / DPT transformers folder")
    parser.add_argument("--data", required=True, type=Path, help="folder of episode files (searched recursively)")
    parser.add_argument("--cameras", nargs="+", default=None, help="cameras to process (default: all)")
    parser.add_argument("--batch-size", type=int, default=16, help="frames per forward pass")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16")
    parser.add_argument("--kind", default="auto", choices=KINDS, help="what the model predicts (auto: its config)")
    parser.add_argument("--overwrite", action="store_true", help="recompute existing targets")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from tqdm.auto import tqdm

    args = parse_args(argv)
    try:
        cfg = DepthTargetConfig(model_path=args.model, cameras=args.cameras, batch_size=args.batch_size,
                                device=args.device, dtype=args.dtype, overwrite=args.overwrite, kind=args.kind)
        if not args.data.exists():
            raise ValueError(f"--data {args.data} does not exist")
        episodes = find_episodes(args.data)
        if episodes and not isinstance(episodes[0], Path):
            raise ValueError(f"{args.data} is a LeRobot dataset; convert it to episode files first "
                             "(gem_train.data.convert_episodes)")
        if not episodes:
            raise ValueError(f"{args.data} holds no *.hdf5 episodes")
        model, processor = load_depth_model(cfg)
    except ValueError as error:
        print(f"gem_depth_targets: {error}", file=sys.stderr)
        return 2
    kind = target_kind(model.config, cfg.kind)
    param = next(model.parameters())
    print(f"gem_depth_targets: {len(episodes)} episodes, model {cfg.model_path} ({model.config.model_type}, "
          f"{kind}) on {param.device} {param.dtype}")
    written = skipped = frames = 0
    failed: list[str] = []
    start = time.perf_counter()
    bar = tqdm(episodes, desc="depth targets", unit="episode", dynamic_ncols=True)
    for path in bar:
        try:
            result = add_depth_targets(path, model, processor, cfg)
        except (ValueError, OSError) as error:   # one bad episode does not stop the others (done ones are kept)
            failed.append(str(error))
            continue
        written, skipped = written + bool(result.written), skipped + (not result.written)
        frames += result.frames
        bar.set_postfix(written=written, skipped=skipped, failed=len(failed))
    bar.close()
    seconds = time.perf_counter() - start
    print(f"gem_depth_targets: {written} episodes written ({frames} frames, {frames / max(seconds, 1e-9):.1f} "
          f"frames/s), {skipped} skipped (targets present; --overwrite recomputes), {len(failed)} failed, "
          f"{seconds:.1f} s")
    for message in failed:
        print(f"gem_depth_targets: failed: {message}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
