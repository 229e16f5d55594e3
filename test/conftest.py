"""Shared fixtures: tiny GEM-VLA models written to disk once per session, and an isolated ROS domain."""
from __future__ import annotations

import os
import random

import numpy as np
import pytest

# Every test run talks only to itself: loopback discovery and a random domain (set before rclpy loads).
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(1, 100)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_backbone_dir(tmp_path_factory):
    from gem_ros.core.policy.tiny import write_tiny_backbone

    return write_tiny_backbone(tmp_path_factory.mktemp("tiny_backbone"), text_layers=3)


@pytest.fixture(scope="session")
def tiny_checkpoint_dir(tmp_path_factory, tiny_backbone_dir):
    """A complete serving checkpoint (random weights) written through `save_pretrained`."""
    import torch

    from gem_ros.core.policy.gem_vla import GemVLAPolicy
    from gem_ros.core.policy.normalizer import MinMaxNormalizer
    from gem_ros.core.policy.tiny import tiny_policy_config

    torch.manual_seed(0)
    config = tiny_policy_config()
    normalizer = MinMaxNormalizer(-np.linspace(1, 2, 9), np.linspace(1, 2, 9))
    policy = GemVLAPolicy.build(config, tiny_backbone_dir, normalizer, device="cpu")
    return policy.save_pretrained(tmp_path_factory.mktemp("ckpt") / "tiny_policy")


@pytest.fixture
def make_observation():
    """Factory: a random valid observation for a policy config."""
    return _make_observation


def _make_observation(config, seed: int = 0, instruction: str = "pick up the red cube"):
    from gem_ros.core.policy.observation import Observation

    rng = np.random.default_rng(seed)
    images = {c.name: rng.integers(0, 256, (c.height, c.width, 3), dtype=np.uint8) for c in config.io.cameras}
    return Observation(images=images, state=rng.normal(size=config.io.state_dim).astype(np.float32),
                       instruction=instruction)
