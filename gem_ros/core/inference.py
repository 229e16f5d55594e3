"""Asynchronous inference: a worker thread that turns the freshest observation into action chunks.

The worker asks for the next chunk *before* the current one runs out: it starts inference when the time left
in the last chunk (measured from that chunk's observation time) drops below `request_threshold_s` plus the
measured inference latency, so the arm does not idle while inference is faster than the remaining horizon.
It never runs inside a ROS callback; the node only feeds the buffer and publishes what `on_chunk` hands back.

Every goal (`run_instruction`) and every `stop` starts a new generation. A chunk is handed to `on_chunk` only if
its generation is still current, and that check and the hand-over happen under the same lock as a stop's hold:
a chunk computed for a cancelled or pre-empted goal (even one with the same instruction text) never reaches the
executor, and never after the hold that ended its goal.
"""
from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from gem_ros.core.observation import ObservationBuffer, StaleObservation
from gem_ros.core.realtime import leave_realtime

Clock = Callable[[], float]
# Compressed camera frames are decoded this long before an inference is due (a bit more than a 30 Hz frame
# period): the chunk then starts from a decoded frame, at ~2 decodes per camera per chunk instead of every frame.
PREDECODE_S = 0.05


@dataclass
class InferenceConfig:
    request_threshold_s: float = 0.3   # start the next inference when this much horizon (+ latency) is left
    poll_period_s: float = 0.01        # how often the worker re-checks freshness and timing
    chunk_horizon_s: float = 0.8       # time covered by one chunk (chunk_len / control_rate_hz)

    def __post_init__(self) -> None:
        for name in ("request_threshold_s", "poll_period_s", "chunk_horizon_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"inference.{name} must be a positive finite number, got {value!r}")


@dataclass
class ChunkResult:
    actions: np.ndarray            # (T, A) un-normalized actions
    obs_stamp_s: float             # time of the observation it was predicted from
    latency_ms: dict[str, float]   # per-stage policy timings
    index: int


@dataclass
class WorkerState:
    instruction: str = ""
    running: bool = False
    holding: bool = False              # running, but paused on stale input; resumes when inputs are fresh
    reason: str = "idle"
    chunks: int = 0
    last_chunk_obs_s: float = -math.inf
    last_latency_s: float = 0.0        # inference time of the last chunk, on `clock` (sim time included)
    goal_start_s: float = -math.inf    # observations must be taken after this (clock of the message stamps)
    stale_reasons: list[str] = field(default_factory=list)
    last_error: str = ""
    generation: int = 0                # bumped by every goal and every stop; chunks of an older one are dropped


class InferenceWorker:
    """Owns the worker thread. `predict(observation) -> (actions, timings)` is the policy call. `on_chunk` hands a
    chunk over (keep it short: a stop waits for it); `after_chunk`, optional, runs after it outside that lock (slow
    extras such as a predicted-depth image)."""

    def __init__(self, cfg: InferenceConfig, buffer: ObservationBuffer, predict, clock: Clock,
                 on_chunk: Callable[[ChunkResult], None], on_hold: Callable[[str], None],
                 camera_sizes: dict[str, tuple[int, int]] | None = None,
                 after_chunk: Callable[[ChunkResult], None] | None = None):
        self.cfg, self.buffer, self.predict, self.clock = cfg, buffer, predict, clock
        self.camera_sizes = camera_sizes   # (H, W) per camera the policy expects; frames are resized to it
        self.on_chunk, self.on_hold, self.after_chunk = on_chunk, on_hold, after_chunk
        self.state = WorkerState()
        self._lock = threading.Lock()
        self._busy = False   # the worker is inside step() (assembling, predicting, handing over): `watch` checks
        # Orders hand-overs: a chunk's "still current?" check + on_chunk, against a stop's state change + on_hold.
        # Re-entrant: a policy error inside step() stops from the worker thread.
        self._emit_lock = threading.RLock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ control (any thread)
    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="gem_inference", daemon=True)
            self._thread.start()

    def shutdown(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            try:
                self._thread.join(timeout_s)
            except RuntimeError:   # start() was interrupted (Ctrl-C while activating): it never ran
                pass

    def run_instruction(self, instruction: str) -> None:
        if not instruction.strip():
            raise ValueError("instruction is empty")
        with self._emit_lock:   # after a hand-over in progress, never in the middle of one
            with self._lock:
                self.state.instruction, self.state.running, self.state.holding = instruction, True, False
                self.state.last_chunk_obs_s, self.state.reason = -math.inf, "running"
                self.state.last_error = ""   # an error ended the previous goal, not this one
                self.state.goal_start_s = self.clock()
                self.state.generation += 1
        self._wake.set()

    def stop(self, reason: str) -> None:
        """Stop producing chunks and tell the executor to hold (after any chunk already handed over, never before)."""
        with self._emit_lock:
            with self._lock:
                was_running = self.state.running
                self.state.running, self.state.holding, self.state.reason = False, False, reason
                self.state.generation += 1
            if was_running:
                self.on_hold(reason)

    def snapshot(self) -> WorkerState:
        with self._lock:
            return WorkerState(**vars(self.state))

    # ------------------------------------------------------------------ worker thread
    def due(self, now_s: float) -> bool:
        return self._due_within(now_s, 0.0)

    def _due_within(self, now_s: float, margin_s: float) -> bool:
        left = self.state.last_chunk_obs_s + self.cfg.chunk_horizon_s - now_s
        return left <= self.cfg.request_threshold_s + self.state.last_latency_s + margin_s

    def step(self) -> ChunkResult | None:
        """One decision of the worker; public so tests can drive it without a thread."""
        with self._lock:
            self._busy = True
        try:
            return self._step()
        finally:
            with self._lock:
                self._busy = False

    def _step(self) -> ChunkResult | None:
        now = self.clock()
        with self._lock:
            running, instruction, not_before = self.state.running, self.state.instruction, self.state.goal_start_s
            generation = self.state.generation
        if not running:
            return None
        with self._lock:
            due = self.state.holding or self.due(now)
            soon = self._due_within(now, PREDECODE_S)
        try:
            if not due:   # watch freshness on every poll, but resize images only for an inference
                self.buffer.check_fresh(now, not_before)
                if soon:   # compressed frames: decoded while waiting, not in the chunk's latency
                    self.buffer.decode_newest()
                return None
            timed = self.buffer.assemble(now, instruction, self.camera_sizes, not_before)
        except StaleObservation as stale:
            self._hold_on_stale(list(stale.reasons))
            return None
        with self._lock:
            if self.state.holding:   # inputs are fresh again: resume with a new chunk right away
                self.state.holding, self.state.stale_reasons, self.state.reason = False, [], "running"
                self.state.last_chunk_obs_s = -math.inf
        try:
            actions, timings = self.predict(timed.observation)
        except Exception as error:   # of any type (a non-finite chunk, CUDA, MemoryError): end the goal, say why
            reason = f"{type(error).__name__}: {error}"
            with self._lock:
                self.state.last_error = reason
            self.stop(f"policy error: {reason}")   # the worker stays up: the next goal runs as usual
            return None
        with self._emit_lock:
            with self._lock:
                if not self.state.running or self.state.generation != generation:
                    return None   # cancelled or pre-empted while we were thinking: drop the stale chunk
                self.state.last_latency_s = max(0.0, self.clock() - now)   # on the clock `due` compares with
                self.state.last_chunk_obs_s = timed.stamp_s
                self.state.chunks += 1
                result = ChunkResult(actions, timed.stamp_s, dict(timings), self.state.chunks)
            self.on_chunk(result)
        if self.after_chunk is not None:
            self.after_chunk(result)
        return result

    def watch(self, now_s: float) -> None:
        """A freshness check for the time the worker is busy in `step` (it polls by itself between steps, but not
        during one: a CPU chunk takes up to a few hundred ms, a predicted depth image after it as long again). The
        node calls it from a timer; a goal whose inputs stopped (newest sample older than max_age_s) holds now, and
        a chunk being computed is dropped when it comes. Only the inputs' ages are checked (cheap, at 50 Hz); the
        worker's polls check alignment as well."""
        with self._lock:
            if not (self.state.running and self._busy) or self.state.holding:
                return
        max_age = self.buffer.config.max_age_s
        stale = [f"{source} is {age:.3f} s old (max {max_age} s)"
                 for source, age in self.buffer.health(now_s).items() if age > max_age]
        if stale:
            self._hold_on_stale(stale)

    def _hold_on_stale(self, reasons: list[str]) -> None:
        with self._emit_lock:
            with self._lock:
                if not self.state.running:
                    return
                first = not self.state.holding
                self.state.holding, self.state.stale_reasons = True, reasons
                self.state.reason = "holding: stale input: " + "; ".join(reasons)
                reason = self.state.reason
                if first:   # a chunk in flight was computed from inputs that are stale now: it is dropped
                    self.state.generation += 1
            if first:
                self.on_hold(reason)

    def _loop(self) -> None:
        leave_realtime()   # if started from a real-time executor thread: inference never runs real-time
        while not self._stop.is_set():
            try:
                produced = self.step()
            except Exception as error:  # a bug outside predict must hold the arm and say why, not kill the thread
                with self._lock:
                    self.state.last_error = repr(error)
                try:
                    self.stop(f"inference crashed: {error!r}")
                except Exception as hold_error:   # on_hold failed as well: keep the thread for the next goal
                    with self._lock:
                        self.state.last_error += f"; the hold failed too: {hold_error!r}"
                produced = None
            if produced is None:
                self._wake.wait(self.cfg.poll_period_s)
                self._wake.clear()
