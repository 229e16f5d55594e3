"""Training checkpoints: the serving checkpoint plus everything needed to continue bit-exactly. No pickles.

    <run_dir>/checkpoints/step_<N>/
        config.json, model.safetensors, normalizer.safetensors, [depth_expert.safetensors], backbone/
                                      the policy, `GemVLAPolicy.save_pretrained` (loadable as is, or via gem_export)
        trainer_state.safetensors     optimizer state tensors + RNG states of every process (+ the raw training
                                      weights when train.ema_decay > 0: the serving weights are then the EMA)
        trainer_state.json            step, epoch, data position, structure of the optimizer / RNG state, the
                                      training config, and a manifest {file: bytes}; written LAST

A step folder appears only by an atomic rename of a finished scratch folder. A checkpoint is complete when its
manifest matches the files on disk (sizes and safetensors headers), so a truncated file is caught without
reading gigabytes. `find_resume_checkpoint` warns about and skips incomplete ones.

Data order, flow-matching noise and the dataset's augmentation are pure functions of (seed, epoch, batch),
(seed, step, micro-batch, process) and (seed, epoch, sample index), so a resumed run needs only the position,
not the state of a sampler or generator: even a kill -9 loses nothing that resuming needs.
"""
from __future__ import annotations

import json
import logging
import random
import re
import shutil
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Sampler

from gem_ros.core.policy.checkpoint import atomic_directory, read_tensors

logger = logging.getLogger("gem_train")

CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "trainer_state.safetensors"
STATE_JSON = "trainer_state.json"
STATE_FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step_(\d+)$")


@dataclass
class TrainerState:
    """Where training is. `batch_in_epoch` counts global batches (one per process) consumed in `epoch`."""

    step: int = 0                 # optimizer steps done
    epoch: int = 0
    batch_in_epoch: int = 0
    samples_seen: int = 0         # over all processes
    num_processes: int = 1
    batch_size: int = 1           # per process and micro-step


# --------------------------------------------------------------------------------------------- save
def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR / f"step_{step}"


def save_checkpoint(run_dir: Path, policy, optimizer_state: dict | None, state: TrainerState,
                    rng_states: list[dict], config: dict, extra_tensors: dict[str, torch.Tensor] | None = None,
                    ema_meta: dict | None = None) -> Path:
    """Write step_<state.step>/ atomically. `optimizer_state` is `optimizer.state_dict()` (None: not saved);
    `rng_states` holds `capture_rng()` of every process, in rank order; `extra_tensors` go into the trainer state
    (the raw weights under an EMA and `ema_meta`, from `gem_train.ema.training_state`; a training-only head).
    Call on the main process only."""
    final = checkpoint_dir(run_dir, state.step)
    with atomic_directory(final) as scratch:
        policy.save_pretrained(scratch)
        tensors: dict[str, torch.Tensor] = {}
        optimizer = None if optimizer_state is None else flatten_state(optimizer_state, "optimizer", tensors)
        rng = [flatten_state(r, f"rng.rank{i}", tensors) for i, r in enumerate(rng_states)]
        tensors.update(extra_tensors or {})
        save_file(tensors, str(scratch / STATE_FILE), metadata={"format_version": str(STATE_FORMAT_VERSION)})
        files = {str(p.relative_to(scratch)): p.stat().st_size for p in sorted(scratch.rglob("*")) if p.is_file()}
        meta = {"format_version": STATE_FORMAT_VERSION, "position": asdict(state), "optimizer": optimizer,
                "rng": rng, "ema": ema_meta or None, "config": config, "files": files}
        (scratch / STATE_JSON).write_text(json.dumps(meta, indent=1))
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """step_<N> folders (complete or not), oldest first."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def prune_checkpoints(run_dir: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last`; each is renamed away first so a crash never leaves half of one."""
    doomed = list_checkpoints(run_dir)[:-keep_last]
    for path in doomed:
        trash = path.parent / f".{path.name}.deleting"
        path.rename(trash)
        shutil.rmtree(trash)
    return doomed


def remove_scratch_dirs(run_dir: Path) -> list[Path]:
    """Leftovers of a run killed while writing or deleting a checkpoint (hidden `.step_*` folders)."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    leftovers = [p for p in root.glob(".*step_*") if p.is_dir()] if root.is_dir() else []
    for path in leftovers:
        shutil.rmtree(path)
    return leftovers


# --------------------------------------------------------------------------------------------- verify
def verify_checkpoint(path: Path) -> list[str]:
    """Problems that make `path` unusable for resuming; [] when complete. Reads headers and sizes only."""
    path = Path(path)
    meta_file = path / STATE_JSON
    if not meta_file.is_file():
        return [f"{STATE_JSON} is missing (the checkpoint was never completed)"]
    try:
        meta = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        return [f"{STATE_JSON} is not valid JSON ({error})"]
    if meta.get("format_version") != STATE_FORMAT_VERSION:
        return [f"{STATE_JSON}: format_version {meta.get('format_version')!r} is not {STATE_FORMAT_VERSION}"]
    problems = []
    for name, size in meta.get("files", {}).items():
        file = path / name
        if not file.is_file():
            problems.append(f"{name} is missing")
        elif file.stat().st_size != size:
            problems.append(f"{name} has {file.stat().st_size} bytes, the manifest says {size} (truncated?)")
        elif name.endswith(".safetensors") and (problem := safetensors_problem(file)):
            problems.append(f"{name}: {problem}")
    if STATE_FILE not in meta.get("files", {}):
        problems.append(f"{STATE_FILE} is not in the manifest")
    return problems


def safetensors_problem(path: Path) -> str | None:
    """A safetensors file is an 8-byte header length, a JSON header, then the data its offsets describe."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            return "shorter than a safetensors header"
        header_len = struct.unpack("<Q", prefix)[0]
        if header_len > size - 8:
            return f"header claims {header_len} bytes but the file has {size}"
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return "header is not valid JSON"
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + header_len + end != size:
        return f"tensor data ends at byte {8 + header_len + end} but the file has {size} (truncated?)"
    return None


def find_resume_checkpoint(run_dir: Path) -> Path:
    """The newest complete checkpoint; incomplete or corrupt newer ones are named in a warning and skipped."""
    skipped = []
    for path in reversed(list_checkpoints(run_dir)):
        problems = verify_checkpoint(path)
        if not problems:
            if skipped:
                logger.warning("resuming from %s instead", path)
            return path
        logger.warning("checkpoint %s is incomplete or corrupt, skipping it: %s", path, "; ".join(problems))
        skipped.append(path.name)
    raise ValueError(f"--resume: no complete checkpoint under {Path(run_dir) / CHECKPOINTS_DIR}"
                     + (f" (skipped incomplete {skipped})" if skipped else ""))


# --------------------------------------------------------------------------------------------- load
def load_trainer_state(path: Path, optimizer: torch.optim.Optimizer | None, rank: int, num_processes: int,
                       batch_size: int) -> TrainerState:
    """Restore optimizer and this process's RNG from `path`; return the position to continue from."""
    meta = json.loads((Path(path) / STATE_JSON).read_text())
    tensors = read_tensors(Path(path) / STATE_FILE)
    state = TrainerState(**meta["position"])
    if optimizer is not None:
        if meta["optimizer"] is None:
            logger.warning("%s holds no optimizer state; the optimizer starts fresh", path)
        else:
            optimizer.load_state_dict(unflatten_state(meta["optimizer"], tensors))
    if (state.num_processes, state.batch_size) != (num_processes, batch_size):
        logger.warning("%s was written with %d process(es) x batch %d, now %d x %d: RNG streams are reseeded and "
                       "epoch %d restarts from its first batch", path, state.num_processes, state.batch_size,
                       num_processes, batch_size, state.epoch)
        return TrainerState(state.step, state.epoch, 0, state.samples_seen, num_processes, batch_size)
    restore_rng(unflatten_state(meta["rng"][rank], tensors))
    return state


def load_ema_state(path: Path) -> tuple[dict | None, dict[str, torch.Tensor]]:
    """(EMA record or None, the trainer-state tensors) of a checkpoint, for `gem_train.ema.restore`."""
    meta = json.loads((Path(path) / STATE_JSON).read_text()).get("ema")
    return meta, (read_tensors(Path(path) / STATE_FILE) if meta else {})


# --------------------------------------------------------------------------------------------- data order, noise
def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0])


def step_generator(seed: int, step: int, micro: int, rank: int, device: torch.device) -> torch.Generator:
    """The flow-matching noise of (step, micro-batch, process) depends on nothing else: resuming needs no state."""
    return torch.Generator(device=device).manual_seed(_seed(seed, 1, step, micro, rank))


class EpochBatchSampler(Sampler[list]):
    """Seeded shuffle per epoch, cut into global batches of batch_size x num_processes; each process takes its
    slice. `set_position` starts an epoch at a given global batch, which is how a resumed run skips data.

    with_epoch: yield (index, epoch) keys instead of indices, for datasets whose random draws are a function of
    both (`ChunkDataset.draws_by_epoch`): fresh augmentation every epoch without any generator state."""

    def __init__(self, num_samples: int, batch_size: int, seed: int, rank: int = 0, num_processes: int = 1,
                 with_epoch: bool = False):
        if num_samples < batch_size * num_processes:
            raise ValueError(f"the training split has {num_samples} samples, fewer than one global batch "
                             f"({batch_size} x {num_processes} processes)")
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.rank, self.num_processes, self.with_epoch = rank, num_processes, with_epoch
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, start_batch: int) -> None:
        self.epoch, self.start = epoch, start_batch

    def __len__(self) -> int:
        return max(0, self.num_samples // (self.batch_size * self.num_processes) - self.start)

    def __iter__(self):
        order = torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(_seed(self.seed, 2, self.epoch)))
        per_batch = self.batch_size * self.num_processes
        for b in range(self.start, self.num_samples // per_batch):
            mine = order[b * per_batch + self.rank * self.batch_size:][: self.batch_size].tolist()
            yield [(i, self.epoch) for i in mine] if self.with_epoch else mine


def endless_batches(loader: DataLoader, sampler: EpochBatchSampler, state: TrainerState, seed: int, rank: int):
    """Yield batches forever, keeping `state.epoch` / `state.batch_in_epoch` at the data position consumed."""
    while True:
        sampler.set_position(state.epoch, state.batch_in_epoch)
        loader.generator.manual_seed(_seed(seed, 3, state.epoch, state.batch_in_epoch, rank))  # worker seeds
        for batch in loader:
            state.batch_in_epoch += 1
            yield batch
        state.epoch, state.batch_in_epoch = state.epoch + 1, 0


# --------------------------------------------------------------------------------------------- RNG
def capture_rng() -> dict[str, Any]:
    """torch (CPU + every CUDA device), numpy and python global RNG states, as tensors and plain values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
            "python": [version, torch.tensor(internal, dtype=torch.int64), gauss_next]}


def restore_rng(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    kind, keys, pos, has_gauss, gauss = rng["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = rng["python"]
    random.setstate((version, tuple(int(v) for v in internal.tolist()), gauss_next))


# --------------------------------------------------------------------------------------------- flattening
def flatten_state(obj: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Nested dict/list/tuple of tensors and scalars -> JSON skeleton; tensors go to `tensors` under dotted keys.
    Dict keys keep their type (optimizer state is keyed by int). Anything else is refused, never pickled."""
    if isinstance(obj, torch.Tensor):
        tensors[key] = obj.detach().to("cpu").contiguous()
        return {"tensor": key}
    if isinstance(obj, dict):
        return {"dict": [[k, flatten_state(v, f"{key}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        kind = "list" if isinstance(obj, list) else "tuple"
        return {kind: [flatten_state(v, f"{key}.{i}", tensors) for i, v in enumerate(obj)]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return {"value": obj}
    raise ValueError(f"{key}: a {type(obj).__name__} cannot be stored without pickling")


def unflatten_state(skeleton: dict, tensors: dict[str, torch.Tensor]) -> Any:
    (kind, body), = skeleton.items()
    if kind == "tensor":
        return tensors[body]
    if kind == "dict":
        return {k: unflatten_state(v, tensors) for k, v in body}
    if kind in ("list", "tuple"):
        items = [unflatten_state(v, tensors) for v in body]
        return items if kind == "list" else tuple(items)
    return body
