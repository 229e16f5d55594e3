"""Min-max normalizer: the reference formula, the range floor, storage, and the reference .pt import."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from gem_ros.core.policy.normalizer import (MinMaxNormalizer, load_normalizers,
                                            save_normalizers)


def test_maps_min_max_to_minus_one_one_and_back():
    data = np.array([[0.0, -2.0, 5.0], [1.0, 2.0, 5.0], [0.5, 0.0, 5.0]])
    norm = MinMaxNormalizer.fit(data)
    out = norm.normalize(data)
    np.testing.assert_allclose(out[:, :2].min(0), [-1, -1], atol=1e-6)
    np.testing.assert_allclose(out[:, :2].max(0), [1, 1], atol=1e-6)
    # Constant channel: range floored at 1e-3 -> a' = 2 (a - min) / 1e-3 - 1 = -1, never a division by zero.
    np.testing.assert_allclose(out[:, 2], -1.0)
    np.testing.assert_allclose(norm.unnormalize(out), data, atol=1e-5)
    np.testing.assert_allclose(norm.scale, [2.0, 0.5, 2e3], rtol=1e-6)


def test_torch_and_numpy_agree():
    norm = MinMaxNormalizer(np.array([-1.0, 0.0]), np.array([3.0, 0.5]))
    x = np.array([[0.3, 0.2]], np.float32)
    np.testing.assert_allclose(norm.normalize(torch.as_tensor(x)).numpy(), norm.normalize(x), rtol=1e-6)


def test_invalid_statistics_are_refused():
    with pytest.raises(ValueError, match="NaN"):
        MinMaxNormalizer(np.array([np.nan]), np.array([1.0]))
    with pytest.raises(ValueError, match="max < min"):
        MinMaxNormalizer(np.array([1.0]), np.array([0.0]))


def test_safetensors_round_trip(tmp_path):
    action, state = MinMaxNormalizer(np.zeros(3), np.ones(3)), MinMaxNormalizer(-np.ones(2), np.ones(2), 0.5)
    save_normalizers(tmp_path / "n.safetensors", {"action": action, "state": state})
    loaded = load_normalizers(tmp_path / "n.safetensors")
    np.testing.assert_array_equal(loaded["action"].maximum, action.maximum)
    assert loaded["state"].range_floor == 0.5


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(b"\xff" * 64), "not a safetensors file.*header too large"),
    (lambda p: p.write_bytes(p.read_bytes()[:40]), "not a safetensors file"),
    (lambda p: save_file({"action.min": np.zeros(3, np.int64), "action.max": np.ones(3, np.int64)}, str(p),
                         metadata={"kind": "minmax", "range_floor": '{"action": 0.001}'}), "'action.min' must be"),
    (lambda p: save_file({"action.min": np.zeros(3, np.float32)}, str(p),
                         metadata={"kind": "minmax", "range_floor": '{"action": 0.001}'}), "'action'.*action.max"),
    (lambda p: save_file({}, str(p), metadata={"kind": "minmax", "range_floor": "[1"}), "range_floor"),
])
def test_a_damaged_normalizer_file_is_named_with_what_is_wrong(tmp_path, damage, message):
    path = tmp_path / "normalizer.safetensors"
    save_normalizers(path, {"action": MinMaxNormalizer(np.zeros(3), np.ones(3))})
    damage(path)
    with pytest.raises(ValueError, match=f"normalizer.safetensors.*{message}"):
        load_normalizers(path)
