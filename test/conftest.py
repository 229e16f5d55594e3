"""Shared fixtures: tiny GEM-VLA models written to disk once per session, and an isolated ROS domain."""
from __future__ import annotations

import os
import random
import threading
import time

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


@pytest.fixture
def ros(request):
    """An isolated rclpy context with gem_demo's executor spinning in the background (GEM_TEST_EXECUTOR=single|events,
    or an indirect parametrization `@pytest.mark.parametrize("ros", ["events"], indirect=True)`, picks another).

    `ros.add(node)` spins a node; `ros.wait_for(predicate, timeout)` polls a condition (never a fixed sleep)."""
    rclpy = pytest.importorskip("rclpy")
    from gem_ros.nodes.spinning import make_executor

    class Ros:
        def __init__(self):
            self.context = rclpy.context.Context()
            rclpy.init(context=self.context)
            # The policy runs here: `auto` picks what gem_demo and gem_policy spin (gem_ros.nodes.spinning).
            kind = getattr(request, "param", None) or os.environ.get("GEM_TEST_EXECUTOR", "auto")
            self.executor = make_executor(kind, self.context, runs_inference=True)
            self.nodes = []
            self._thread = threading.Thread(target=self._spin, daemon=True)
            self._thread.start()

        def _spin(self):
            while self.context.ok():
                try:
                    self.executor.spin_once(timeout_sec=0.05)
                except Exception:  # noqa: BLE001 - shutting down while spinning
                    if self.context.ok():
                        raise

        def add(self, node):
            self.nodes.append(node)
            self.executor.add_node(node)
            return node

        def wait_for(self, predicate, timeout_s: float = 10.0, what: str = "condition") -> None:
            deadline = time.monotonic() + timeout_s
            while not predicate():
                if time.monotonic() > deadline:
                    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
                time.sleep(0.01)

        def close(self):
            try:
                for node in self.nodes:
                    self.executor.remove_node(node)
                    node.destroy_node()
            finally:   # a node that failed to go still leaves with the participant: the next test's graph is clean
                rclpy.shutdown(context=self.context)
                self.executor.shutdown()
                self._thread.join(5)
                for node in self.nodes:   # e.g. a probe's action client, which holds its node, once nothing spins
                    for waitable in list(node.waitables):
                        waitable.destroy()
                self.context.destroy()

    ros = Ros()
    yield ros
    ros.close()


@pytest.fixture
def read_until():
    """read(process, text, timeout_s) -> the first line of a node process's output that contains `text` (None if
    the process ended or the time ran out first), and every line read so far."""
    def read(proc, text: str, timeout_s: float) -> tuple[str | None, list[str]]:
        lines, deadline = [], time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
            lines.append(line)
            if text in line:
                return line, lines
        return None, lines
    return read


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny torch ops: extra intra-op threads only add overhead, and on a busy 2-core box they thrash."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
