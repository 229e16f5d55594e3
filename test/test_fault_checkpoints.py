"""Fault injection on checkpoints: every damaged file (bench/checkpoint_mutations.py) is refused at load with a
ValueError naming the file and the field, before anything is predicted, and no pickle is ever opened."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from gem_ros.core.policy.gem_vla import GemVLAPolicy


def _load_mutations():
    path = Path(__file__).resolve().parents[1] / "bench" / "checkpoint_mutations.py"
    spec = importlib.util.spec_from_file_location("bench_checkpoint_mutations", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


mutations = _load_mutations()


def test_the_undamaged_checkpoint_loads(tiny_checkpoint_dir, tmp_path):
    """The baseline of every case below: a plain copy loads (so each refusal is the mutation's doing)."""
    copy = mutations.mutated_copy(tiny_checkpoint_dir, tmp_path / "copy", mutations.Mutation("none", "", "",
                                                                                            lambda path: None))
    assert GemVLAPolicy.from_pretrained(copy, device="cpu").config.io.action_dim == 9


@pytest.mark.parametrize("mutation", mutations.MUTATIONS, ids=lambda m: m.name)
def test_a_damaged_checkpoint_is_refused_naming_the_file_and_the_field(mutation, tiny_checkpoint_dir, tmp_path,
                                                                       monkeypatch):
    import pickle

    import torch

    def never(*args, **kwargs):
        raise AssertionError("a pickle was opened while loading a checkpoint")

    monkeypatch.setattr(torch, "load", never)
    monkeypatch.setattr(pickle, "load", never)
    monkeypatch.setattr(pickle, "loads", never)
    broken = mutations.mutated_copy(tiny_checkpoint_dir, tmp_path / mutation.name, mutation)
    with pytest.raises(ValueError) as refused:
        GemVLAPolicy.from_pretrained(broken, device="cpu")
    message = str(refused.value)
    assert mutation.file in message and mutation.field in message, message


@pytest.mark.ros
@pytest.mark.parametrize("name", ["config_not_json", "selected_layers_99"])
def test_gem_demo_stops_at_once_with_the_reason(name, tiny_checkpoint_dir, tmp_path):
    """Not "no ExecuteInstruction server" 10 s later: the file and the field, and a non-zero exit."""
    import subprocess
    import time

    pytest.importorskip("rclpy")
    mutation = next(m for m in mutations.MUTATIONS if m.name == name)
    broken = mutations.mutated_copy(tiny_checkpoint_dir, tmp_path / name, mutation)
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "gem_ros.demo", "--checkpoint", str(broken), "--episodes", "1",
                          "--out", str(tmp_path / "out")], cwd=Path(__file__).resolve().parents[1],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    reason = next((line for line in run.stderr.splitlines() if line.startswith("gem_demo:")), "")
    assert mutation.file in reason and mutation.field in reason, run.stderr[-3000:]
    assert "Traceback" not in run.stderr and "ExecuteInstruction" not in run.stderr
    assert time.monotonic() - started < 60
