"""The batched Qwen2-VL image preprocessing gives the library's output, bit for bit, for any sizes and inputs."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from transformers import AutoImageProcessor

from gem_ros.core.policy.backbone import load_processor
from gem_ros.core.policy.image_processing import BatchedQwen2VLImageProcessor


@pytest.fixture(scope="module")
def processors(tiny_backbone_dir):
    return (BatchedQwen2VLImageProcessor.from_pretrained(str(tiny_backbone_dir)),
            AutoImageProcessor.from_pretrained(str(tiny_backbone_dir)))


@pytest.mark.parametrize("shapes", [
    [(64, 64)] * 3,                        # stored at the policy's size: no resize
    [(100, 150), (64, 64), (32, 96)],      # mixed: two need the library's resize, order kept
    [(480, 640)],                          # a raw camera frame
    [(64, 64), (48, 80), (64, 64)],        # same size not adjacent
])
def test_batched_preprocessing_equals_the_library(processors, shapes):
    batched, library = processors
    rng = np.random.default_rng(len(shapes))
    images = [rng.integers(0, 256, (h, w, 3), np.uint8) for h, w in shapes]
    got = batched(images, return_tensors="np", input_data_format="channels_last")
    expected = library([Image.fromarray(image) for image in images], return_tensors="np")
    np.testing.assert_array_equal(got["image_grid_thw"], expected["image_grid_thw"])
    np.testing.assert_array_equal(got["pixel_values"], expected["pixel_values"])
    pt = batched(images, return_tensors="pt", input_data_format="channels_last")["pixel_values"]
    np.testing.assert_array_equal(pt.numpy(), expected["pixel_values"])


def test_float_images_in_0_1_follow_the_library_too(processors):
    # (without do_resize=False the library sends floats through an identity PIL resize, which rounds them to 1/255)
    batched, library = processors
    images = [np.random.default_rng(0).random((64, 64, 3), dtype=np.float32)]
    kwargs = dict(return_tensors="np", do_rescale=False, do_resize=False, input_data_format="channels_last")
    np.testing.assert_allclose(batched(images, **kwargs)["pixel_values"], library(images, **kwargs)["pixel_values"],
                               atol=1e-6)


def test_load_processor_uses_the_batched_one_only_in_place_of_the_pil_backend(tiny_backbone_dir):
    library = type(AutoImageProcessor.from_pretrained(str(tiny_backbone_dir)))
    chosen = type(load_processor(tiny_backbone_dir).image_processor)
    if library.__name__.endswith("Pil"):       # no torchvision here
        assert chosen is BatchedQwen2VLImageProcessor
    else:                                      # torchvision's backend is batched already
        assert chosen is library


def test_a_saved_batched_processor_loads_as_the_library_processor(processors, tmp_path):
    batched, _ = processors
    batched.save_pretrained(str(tmp_path))
    assert AutoImageProcessor.from_pretrained(str(tmp_path)).to_dict() == batched.to_dict()
