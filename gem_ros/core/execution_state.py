"""Joint states of the ExecutionController: merged by name, refused whole when malformed, kept as a short history.

The measured state is what every chunk plans from and every tick holds at; `_stale_reason` says which joints went
silent and what was wrong with the messages that did arrive. A mixin, so the controller keeps one lock and one
state; the attributes it uses are the controller's (see ExecutionController).
"""
from __future__ import annotations

import bisect
import math

import numpy as np


class JointStates:
    """Mixed into ExecutionController: uses its cfg, _lock, _joint_set, _counts, _warning, _last_tick_s,
    _history_s, and owns _positions, _velocities, _updated_s (per joint), _history ((stamp, positions) deque) and
    _last_joint_state_refusal."""

    def on_joint_state(self, names, positions, velocities, now_s: float, stamp_s: float | None = None) -> str | None:
        """Merge a (possibly partial) joint state by name. Returns None when merged, else why it was refused.

        A message is refused whole (nothing merged) when it lists a name twice (which value is the arm's?), when
        its arrays do not match its names, or when a controlled joint's position is NaN/Inf: the watchdog then
        holds, and its reason quotes this refusal. Joints we do not control are ignored. now_s (receipt time)
        feeds the watchdog; stamp_s (measurement time, default now_s) the history that delta action spaces look
        up at observation time. `velocities` may be empty (JointState allows it); a non-finite one is unknown.
        """
        names = list(names)
        try:
            positions = np.asarray(positions, dtype=float).ravel()
            velocities = np.asarray(velocities if velocities is not None else [], dtype=float).ravel()
        except (TypeError, ValueError) as error:
            return self._refuse_joint_state(f"values are not numeric: {error}", now_s)
        reason = self._joint_state_problem(names, positions, velocities)
        if reason:
            return self._refuse_joint_state(reason, now_s)
        with self._lock:
            for k, name in enumerate(names):
                if name not in self._joint_set:
                    continue
                self._positions[name] = float(positions[k])
                self._velocities[name] = float(velocities[k]) if len(velocities) else math.nan
                self._updated_s[name] = now_s
            current = self._current_vector()
            if current is not None:
                stamp = now_s if stamp_s is None else stamp_s
                if self._history and stamp < self._history[-1][0]:
                    self._history.clear()   # clock jumped back (sim reset): old entries are meaningless
                self._history.append((stamp, current))
                while self._history and self._history[0][0] < stamp - self._history_s:
                    self._history.popleft()
        return None

    def _joint_state_problem(self, names: list, positions: np.ndarray, velocities: np.ndarray) -> str:
        if len(positions) != len(names):
            return f"{len(names)} names but {len(positions)} positions"
        if len(velocities) not in (0, len(names)):
            return f"{len(names)} names but {len(velocities)} velocities"
        seen: set = set()
        for name in names:
            if name in seen:
                return f"joint '{name}' is listed twice (refused: which value is the arm's?)"
            seen.add(name)
        for k, name in enumerate(names):
            if name in self._joint_set and not math.isfinite(positions[k]):
                return f"position of {name} is {positions[k]}"
        return ""

    def _refuse_joint_state(self, reason: str, now_s: float) -> str:
        reason = f"joint_states message refused: {reason}"
        with self._lock:
            self._counts["joint_states_refused"] += 1
            self._last_joint_state_refusal = (now_s, reason)
            self._warning = (self._last_tick_s or 0.0, reason)
        return reason

    def joint_state_age_s(self, now_s: float) -> float:
        """Age of the oldest joint in the newest complete state; inf before every joint was seen."""
        with self._lock:
            return math.inf if self._current_vector() is None else self._state_age(now_s)

    def _current_vector(self) -> np.ndarray | None:
        if len(self._positions) < len(self.cfg.joint_names):
            return None
        return np.array([self._positions[n] for n in self.cfg.joint_names])

    def _current_velocities(self) -> np.ndarray | None:
        """Measured velocities, or None when any is missing (the filter then skips the start acceleration)."""
        values = np.array([self._velocities.get(n, math.nan) for n in self.cfg.joint_names])
        return values if np.all(np.isfinite(values)) else None

    def _missing_joints(self) -> list[str]:
        return [n for n in self.cfg.joint_names if n not in self._positions]

    def _state_age(self, now_s: float) -> float:
        return now_s - min(self._updated_s[n] for n in self.cfg.joint_names)

    def _stale_reason(self, now_s: float) -> str:
        """Which joints went stale, and what was wrong with the joint_states messages that did arrive."""
        timeout = self.cfg.joint_state_timeout_s
        stale = sorted((self._updated_s[n], n) for n in self.cfg.joint_names if now_s - self._updated_s[n] > timeout)
        listed = ", ".join(f"{n} {now_s - t:.3f} s" for t, n in stale[:4]) + (", ..." if len(stale) > 4 else "")
        reason = f"joint_states stale (joint_state_timeout_s {timeout} s): no valid position for {listed}"
        refusal = self._last_joint_state_refusal
        if refusal is not None and stale and refusal[0] >= stale[0][0]:   # refused since the state went stale
            reason += f"; last {refusal[1]} ({now_s - refusal[0]:.3f} s ago)"
        return reason

    def _state_near(self, stamp_s: float) -> tuple[float, np.ndarray]:
        stamps = [s for s, _ in self._history]
        k = bisect.bisect_left(stamps, stamp_s)
        candidates = [i for i in (k - 1, k) if 0 <= i < len(stamps)]
        best = min(candidates, key=lambda i: abs(stamps[i] - stamp_s))
        return self._history[best]
