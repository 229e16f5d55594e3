"""Qwen2/3-VL image preprocessing for many small camera images on a CPU without torchvision.

Without torchvision, transformers picks the PIL backend of the Qwen2-VL image processor, which resizes,
rescales, normalises and cuts patches one image at a time in numpy: 23 ms for a 16-sample batch of two 128 px
cameras, the largest single cost of a tiny-model training step after the model. `BatchedQwen2VLImageProcessor`
keeps the library's argument handling and resize and replaces only `_preprocess`: the resize is skipped where
`smart_resize` keeps the size (camera images are stored at the checkpoint's size), and images of one size are
rescaled, normalised and patched together with torch (vectorised, multi-threaded). Same arithmetic, same output:
test_image_processing.py compares it with the library's. With torchvision installed the library's own torch
backend is batched already and `load_processor` leaves it alone.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
from transformers.image_processing_utils import BatchFeature
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil, smart_resize


class BatchedQwen2VLImageProcessor(Qwen2VLImageProcessorPil):

    def to_dict(self) -> dict:
        """Saved as the library's processor, so every saved checkpoint loads with plain transformers."""
        return {**super().to_dict(), "image_processor_type": "Qwen2VLImageProcessor"}

    def _preprocess(self, images: list[np.ndarray], do_resize: bool, size, resample, do_rescale: bool,
                    rescale_factor: float, do_normalize: bool, image_mean, image_std, patch_size: int,
                    temporal_patch_size: int, merge_size: int, return_tensors=None, **kwargs) -> BatchFeature:
        factor = patch_size * merge_size
        prepared = []
        for image in images:   # channel-first arrays, as the backend hands them over
            height, width = image.shape[-2:]
            if do_resize and smart_resize(height, width, factor, min_pixels=size.shortest_edge,
                                          max_pixels=size.longest_edge) != (height, width):
                image = self.resize(image, size=size, resample=resample, factor=factor)
            prepared.append(image)
        patches: list[torch.Tensor | None] = [None] * len(prepared)
        grids: list[list[int] | None] = [None] * len(prepared)
        shapes = list(dict.fromkeys(image.shape for image in prepared))
        for shape in shapes:
            members = [i for i, image in enumerate(prepared) if image.shape == shape]
            batch = torch.from_numpy(np.stack([prepared[i] for i in members]))
            batch = _rescale_normalize(batch, do_rescale, rescale_factor, do_normalize, image_mean, image_std)
            flat, grid_h, grid_w = _patchify(batch, patch_size, merge_size, temporal_patch_size)
            per_image = grid_h * grid_w
            for j, i in enumerate(members):
                patches[i] = flat[j * per_image:(j + 1) * per_image]
                grids[i] = [1, grid_h, grid_w]
        if len(shapes) == 1:   # one size: already in order, skip the copy
            pixel_values = flat
        else:
            pixel_values = torch.cat(patches) if patches else torch.zeros(0, 0)
        if return_tensors not in ("pt", torch.Tensor):
            pixel_values = pixel_values.numpy()
        return BatchFeature(data={"pixel_values": pixel_values, "image_grid_thw": np.array(grids, dtype=np.int64)},
                            tensor_type=return_tensors)


def _rescale_normalize(batch: torch.Tensor, do_rescale: bool, rescale_factor: float, do_normalize: bool,
                       image_mean, image_std) -> torch.Tensor:
    """The library's numpy arithmetic: rescale in float64, cast to float32, then (x - mean) / std per channel."""
    if do_rescale:
        batch = (batch.double() * rescale_factor).float()
    batch = batch.float()
    if do_normalize:
        mean, std = _channel_stats(_as_tuple(image_mean), _as_tuple(image_std), batch.shape[1], str(batch.device))
        batch = (batch - mean[:, None, None]) / std[:, None, None]
    return batch


def _as_tuple(value) -> tuple[float, ...]:
    return tuple(float(v) for v in np.atleast_1d(value))


@functools.lru_cache(maxsize=16)
def _channel_stats(mean: tuple[float, ...], std: tuple[float, ...], channels: int,
                   device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std as float32 on `device`, uploaded once instead of per call."""
    return tuple(torch.as_tensor(np.broadcast_to(np.asarray(values, np.float32), (channels,)).copy(), device=device)
                 for values in (mean, std))


def _patchify(batch: torch.Tensor, patch: int, merge: int, temporal: int) -> tuple[torch.Tensor, int, int]:
    """(N, C, H, W) -> (N * gh * gw, C * temporal * patch * patch), rows ordered as the Qwen2-VL processor orders
    them (merge windows of merge x merge patches together); a still image is repeated `temporal` times."""
    n, channels, height, width = batch.shape
    grid_h, grid_w = height // patch, width // patch
    x = batch.reshape(n, channels, grid_h // merge, merge, patch, grid_w // merge, merge, patch)
    x = x.permute(0, 2, 5, 3, 6, 1, 4, 7)              # (N, gh/m, gw/m, m, m, C, p, p)
    x = x.unsqueeze(6).expand(*x.shape[:6], temporal, patch, patch)
    return x.reshape(n * grid_h * grid_w, channels * temporal * patch * patch), grid_h, grid_w


def pixel_values_without_resize(image_processor, images, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(H, W, 3) uint8 RGB camera images -> the processor's (`pixel_values`, `image_grid_thw`), the pixels
    computed on `device` (one upload of the raw bytes instead of a CPU pass; the grid stays on the CPU), when the
    processor would not resize them; None when it would. Same arithmetic as `BatchedQwen2VLImageProcessor` (test_image_processing.py)."""
    p = image_processor
    factor = p.patch_size * p.merge_size
    try:
        min_pixels, max_pixels = p.size["shortest_edge"], p.size["longest_edge"]
    except (KeyError, TypeError):   # a processor sized another way: let the library do all of it
        return None
    if p.do_resize and (min_pixels is None or max_pixels is None):
        return None
    for image in images:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            return None
        height, width = image.shape[:2]
        if p.do_resize and smart_resize(height, width, factor, min_pixels=min_pixels,
                                        max_pixels=max_pixels) != (height, width):
            return None
    # One batch when every image has one size (cameras usually do), else one image at a time, in input order.
    groups = [list(images)] if len({image.shape for image in images}) == 1 else [[image] for image in images]
    pixels, grids = [], []
    for group in groups:
        batch = torch.from_numpy(np.stack(group)).to(device, non_blocking=True).permute(0, 3, 1, 2)
        batch = _rescale_normalize(batch, p.do_rescale, p.rescale_factor, p.do_normalize, p.image_mean, p.image_std)
        flat, grid_h, grid_w = _patchify(batch, p.patch_size, p.merge_size, p.temporal_patch_size)
        pixels.append(flat)
        grids += [[1, grid_h, grid_w]] * len(group)
    return torch.cat(pixels), torch.tensor(grids, dtype=torch.long)


def device_pixel_values(image_processor, images, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(`pixel_values` on `device`, `image_grid_thw` on the CPU): patched there when the processor keeps the sizes
    (`pixel_values_without_resize`), else through the library processor's resize on the CPU."""
    done = pixel_values_without_resize(image_processor, images, device)
    if done is None:
        out = image_processor(images=list(images), return_tensors="pt", input_data_format="channels_last")
        done = out["pixel_values"].to(device), out["image_grid_thw"]
    return done
