"""Turns asynchronously arriving action chunks into one continuous, time-stamped plan of joint targets.

Timeline (one clock, seconds, e.g. the node's clock): action k (k = 0..T-1) of a chunk computed from an
observation taken at `obs_time_s` is the target for `obs_time_s + (k + 1) * chunk_dt_s`, the control steps
after the observation. When the chunk arrives at `now_s`, points at or before `now_s` are already late and are
dropped: with latency L, floor(L / chunk_dt_s) points go.

How a new chunk meets the rest of the current plan (the old plan is kept up to the new chunk's first point):
- "replace": the new points win from their first time on.
- "blend": a crossfade over `blend_duration_s` starting at the new chunk's first point,
  target = (1 - w) * old + w * new with w = 0 there (so no jump at the switch) rising to 1 (RTC-style
  execution-side blending; the old plan is held at its last point if it ends inside the window).
- "temporal_ensemble": ACT's rule: at each new time point, average every stored chunk that covers it, weights
  exp(-m * i) with i = 0 for the oldest covering chunk.
A chunk arriving after the old plan ran out (starvation) simply starts a new plan: nothing stale is blended in.

Between points the plan is linear (see interpolation.py); before its first point it holds the first point,
after its last point there is nothing to execute (`sample` returns None).
The inference worker calls `add_chunk` while the control timer calls `sample`/`segment`, hence the lock.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass, replace

import numpy as np

from gem_ros.core.chunking.config import ChunkSchedulerConfig
from gem_ros.core.chunking.interpolation import clip, crossfade_weight, interpolate_linear, mix

_TIME_EPS_S = 1e-9  # float slack when comparing timestamps built from sums of chunk_dt_s


@dataclass(frozen=True)
class ChunkAdmission:
    """What `add_chunk` did with one chunk."""

    accepted: bool
    dropped_points: int      # points already in the past at arrival (measured latency)
    latency_s: float         # now_s - obs_time_s
    reason: str = ""         # why a chunk was refused


@dataclass(frozen=True)
class ChunkStats:
    chunks_accepted: int = 0
    chunks_refused: int = 0
    last_latency_s: float = math.nan
    max_latency_seen_s: float = math.nan
    last_dropped_points: int = 0
    total_dropped_points: int = 0
    starved_samples: int = 0     # `sample` calls that found nothing to execute


class ChunkScheduler:
    """Thread-safe. Joint order is that of the action mapper's output; the scheduler itself is name-agnostic."""

    def __init__(self, cfg: ChunkSchedulerConfig):
        if not isinstance(cfg, ChunkSchedulerConfig):
            raise ValueError(f"cfg must be a ChunkSchedulerConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self._lock = threading.Lock()
        self._num_joints: int | None = None
        self._stats = ChunkStats()
        self._reset_plan()

    def _reset_plan(self) -> None:
        self._times: np.ndarray | None = None        # (M,) absolute times of plan points [s]
        self._positions: np.ndarray | None = None    # (M, J) targets
        self._chunks: list[tuple[np.ndarray, np.ndarray]] = []  # raw chunks, oldest first (temporal_ensemble)
        self._last_obs_time_s: float | None = None
        self._request_time_s: float | None = None

    # ---- producer side (inference worker) -----------------------------------------------------------------------
    def add_chunk(self, actions, obs_time_s: float, now_s: float) -> ChunkAdmission:
        """Insert a (T, J) chunk of absolute joint targets computed from an observation taken at `obs_time_s`."""
        actions = np.array(actions, dtype=float)
        if actions.ndim != 2 or actions.shape[0] == 0 or actions.shape[1] == 0:
            raise ValueError(f"actions must have shape (T, J) with T, J >= 1, got {actions.shape}")
        if not np.all(np.isfinite(actions)):
            raise ValueError("actions contain NaN or Inf; refusing to plan with them")
        if not (math.isfinite(obs_time_s) and math.isfinite(now_s)):
            raise ValueError(f"obs_time_s and now_s must be finite, got {obs_time_s}, {now_s}")
        cfg = self.cfg
        times = obs_time_s + cfg.chunk_dt_s * np.arange(1, len(actions) + 1)
        keep = times > now_s + _TIME_EPS_S
        latency = now_s - obs_time_s
        dropped = int(len(times) - np.count_nonzero(keep))
        with self._lock:
            if self._num_joints is not None and actions.shape[1] != self._num_joints:
                raise ValueError(f"chunk has {actions.shape[1]} joints, earlier chunks had {self._num_joints}")
            reason = ""
            if latency > cfg.max_latency_s:
                reason = f"stale: latency {latency:.3f} s exceeds max_latency_s {cfg.max_latency_s} s"
            elif self._last_obs_time_s is not None and obs_time_s < self._last_obs_time_s:
                reason = f"out of order: observation at {obs_time_s} s is older than the current plan's"
            elif not np.any(keep):
                reason = f"all {len(times)} points are in the past (latency {latency:.3f} s)"
            self._record(latency, dropped, accepted=not reason)
            if reason:
                return ChunkAdmission(False, dropped, latency, reason)
            self._num_joints = actions.shape[1]
            self._merge(times[keep], actions[keep], now_s)
            self._last_obs_time_s = obs_time_s
            self._request_time_s = None
            return ChunkAdmission(True, dropped, latency)

    def note_request(self, now_s: float) -> None:
        """The caller started an inference; `needs_new_chunk` stays False until a chunk lands or max_latency_s."""
        with self._lock:
            self._request_time_s = now_s

    def clear(self) -> None:
        """Forget the plan (e.g. on cancel, new episode, or after the safety filter held the robot)."""
        with self._lock:
            self._reset_plan()

    # ---- consumer side (control timer) --------------------------------------------------------------------------
    def sample(self, t_s: float) -> np.ndarray | None:
        """(J,) target at time `t_s`, or None when the plan is empty or already over (starved)."""
        with self._lock:
            if self._times is None or t_s > self._times[-1] + _TIME_EPS_S:
                self._stats = replace(self._stats, starved_samples=self._stats.starved_samples + 1)
                return None
            return interpolate_linear(self._times, self._positions, t_s)

    def segment(self, t_start_s: float, duration_s: float) -> tuple[np.ndarray, np.ndarray]:
        """Plan points at `control_rate_hz` for a JointTrajectory starting at `t_start_s`.

        Returns (times (N,), positions (N, J)) with times as time_from_start [s]: k / control_rate_hz for
        k = 1..N (t_start itself is "now", where the robot already is), cut at the end of the plan, whose last
        point is appended if it falls between grid points. Empty arrays when starved.
        """
        with self._lock:
            if self._times is None or self._times[-1] <= t_start_s + _TIME_EPS_S:
                return np.zeros(0), np.zeros((0, self._num_joints or 0))
            period = 1.0 / self.cfg.control_rate_hz
            count = int(math.floor(duration_s * self.cfg.control_rate_hz + 1e-9))
            grid = t_start_s + period * np.arange(1, count + 1)
            end = min(self._times[-1], t_start_s + duration_s)
            grid = grid[grid <= end + _TIME_EPS_S]
            if end > t_start_s + _TIME_EPS_S and (grid.size == 0 or grid[-1] < end - _TIME_EPS_S):
                grid = np.append(grid, end)
            return grid - t_start_s, interpolate_linear(self._times, self._positions, grid)

    def remaining_s(self, now_s: float) -> float:
        """Seconds of plan left after `now_s` (0 when empty)."""
        with self._lock:
            return 0.0 if self._times is None else max(0.0, float(self._times[-1] - now_s))

    def needs_new_chunk(self, now_s: float) -> bool:
        """True when the remaining plan is shorter than request_threshold_s and no request is in flight."""
        remaining = self.remaining_s(now_s)
        with self._lock:
            in_flight = self._request_time_s is not None and now_s - self._request_time_s < self.cfg.max_latency_s
        return not in_flight and remaining < self.cfg.request_threshold_s

    @property
    def stats(self) -> ChunkStats:
        with self._lock:
            return self._stats

    # ---- internals (lock held) ----------------------------------------------------------------------------------
    def _record(self, latency: float, dropped: int, accepted: bool) -> None:
        s = self._stats
        self._stats = replace(
            s, chunks_accepted=s.chunks_accepted + int(accepted), chunks_refused=s.chunks_refused + int(not accepted),
            last_latency_s=latency, max_latency_seen_s=latency if math.isnan(s.max_latency_seen_s)
            else max(latency, s.max_latency_seen_s),
            last_dropped_points=dropped, total_dropped_points=s.total_dropped_points + (dropped if accepted else 0))

    def _merge(self, new_times: np.ndarray, new_positions: np.ndarray, now_s: float) -> None:
        active = self._times is not None and self._times[-1] > now_s + _TIME_EPS_S
        if not active:
            self._chunks = []
            prefix_t, prefix_p = new_times[:0], new_positions[:0]
        else:
            # Keep the old plan up to the new chunk, from the last point at or before now (for interpolation).
            first = max(0, int(np.searchsorted(self._times, now_s, side="right")) - 1)
            before = self._times < new_times[0] - _TIME_EPS_S
            before[:first] = False
            prefix_t, prefix_p = self._times[before], self._positions[before]
        mode = self.cfg.mode
        if mode == "blend" and active and self.cfg.blend_duration_s > 0:
            old = interpolate_linear(self._times, self._positions, new_times)
            weight = crossfade_weight((new_times - new_times[0]) / self.cfg.blend_duration_s, self.cfg.blend_shape)
            planned = mix(old, new_positions, weight[:, None])
        elif mode == "temporal_ensemble":
            self._chunks = [c for c in self._chunks if c[0][-1] > now_s + _TIME_EPS_S]
            self._chunks.append((new_times, new_positions))
            planned = self._ensemble(new_times)
        else:
            planned = new_positions
        self._times = np.concatenate([prefix_t, new_times])
        self._positions = np.vstack([prefix_p, planned])

    def _ensemble(self, query_times: np.ndarray) -> np.ndarray:
        """ACT temporal ensembling over the stored chunks (oldest first) at each query time."""
        totals = np.zeros((len(query_times), self._chunks[-1][1].shape[1]))
        weight_sums = np.zeros(len(query_times))
        covering_index = np.zeros(len(query_times))  # i of the next covering chunk at each time
        lowest, highest = np.full_like(totals, np.inf), np.full_like(totals, -np.inf)
        for times, positions in self._chunks:
            covers = (query_times >= times[0] - _TIME_EPS_S) & (query_times <= times[-1] + _TIME_EPS_S)
            weight = np.where(covers, np.exp(-self.cfg.ensemble_decay * covering_index), 0.0)
            values = interpolate_linear(times, positions, query_times)
            lowest = np.where(covers[:, None], np.minimum(lowest, values), lowest)
            highest = np.where(covers[:, None], np.maximum(highest, values), highest)
            totals += weight[:, None] * values
            weight_sums += weight
            covering_index += covers
        # The newest chunk covers every query time, so sums are > 0. A weighted mean lies within the values
        # averaged; the clip only removes round-off beyond them (as in `mix`).
        return clip(totals / weight_sums[:, None], lowest, highest)
