"""gem_policy's input bookkeeping for /diagnostics: messages per second per input, frames refused on arrival (a
wrong encoding or size: the camera is misconfigured) and compressed frames dropped when they would not decode."""
from __future__ import annotations

import time

from diagnostic_msgs.msg import DiagnosticStatus


class InputHealth:
    """Counted in the subscription callbacks, reported (and the rates reset) once per diagnostics period."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        """A new configuration starts its diagnostics from zero."""
        self._received: dict[str, int] = {}
        self._rates_from: tuple[float, dict[str, int]] = (time.monotonic(), {})
        self.rejected_frames, self.last_frame_error = 0, ""
        self._rejected_reported = self._undecodable_logged = 0

    def received(self, source: str) -> None:
        self._received[source] = self._received.get(source, 0) + 1

    def rejected(self, camera: str, error: Exception) -> str:
        """Count a frame refused on arrival; returns the message to log."""
        self.rejected_frames += 1
        self.last_frame_error = f"camera '{camera}': {error}"
        return self.last_frame_error

    def report(self, values: dict[str, str], buffer, level: int, reason: str, logger) -> tuple[int, str]:
        """Add the input values to `values`; a new refused frame raises `level` to WARN and joins `reason`."""
        values.update(self._rates())
        if buffer is not None:
            values.update({f"queued_{k}": str(v) for k, v in buffer.depths().items()})
        if self.rejected_frames:
            values["rejected_frames"] = str(self.rejected_frames)
            values["last_frame_error"] = self.last_frame_error[:200]
            if self.rejected_frames > self._rejected_reported:
                self._rejected_reported = self.rejected_frames
                level = max(level, DiagnosticStatus.WARN)
                reason = f"{reason}; {self.last_frame_error}"
        if buffer is not None and buffer.undecodable_frames:
            values["undecodable_frames"] = str(buffer.undecodable_frames)
            values["last_decode_error"] = buffer.last_decode_error[:200]
            if buffer.undecodable_frames > self._undecodable_logged:   # new ones since the last warning
                self._undecodable_logged = buffer.undecodable_frames
                logger.warning(f"{self._undecodable_logged} camera frames would not decode and were dropped; last: "
                               f"{buffer.last_decode_error}", throttle_duration_sec=10.0)
        return level, reason

    def _rates(self) -> dict[str, str]:
        """Messages per second per input since the last report (wall clock: a paused /clock must not hide them)."""
        now, counts = time.monotonic(), dict(self._received)
        since, before = self._rates_from
        self._rates_from = (now, counts)
        elapsed = max(now - since, 1e-6)
        return {f"rate_{k}_hz": f"{(n - before.get(k, 0)) / elapsed:.1f}" for k, n in sorted(counts.items())}
