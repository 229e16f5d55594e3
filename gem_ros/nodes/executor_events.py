"""What gem_executor did with each chunk, for the goal that produced it: one diagnostic_msgs/DiagnosticStatus per
verdict on `gem/executor_status` (relative: it follows the namespace of the arm's chain).

gem_executor publishes; gem_policy's goal server reads it so that a goal's result and feedback can say why the arm
holds (a chunk refused as unsafe names the colliding pair). A standard message, so `ros2 topic echo` reads it too:
level OK / WARN / ERROR, message = the reason, values `event` and `chunk_index` (ActionChunk.chunk_index; for a
tick's hold, the chunk whose plan was running). Events:
- accepted: the chunk was planned.
- rejected: refused as unsafe (limits, workspace, NaN, collision), or the tick's plan failed the safety filter.
- refused:  refused for timing or format (late, wrong names); the plan that ran goes on.
- hold:     the arm holds for another reason (e-stop, stale joint states, silent policy).
"""
from __future__ import annotations

from dataclasses import dataclass

from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

EXECUTOR_STATUS_TOPIC = "gem/executor_status"
EVENTS = {"accepted": DiagnosticStatus.OK, "rejected": DiagnosticStatus.ERROR,
          "refused": DiagnosticStatus.WARN, "hold": DiagnosticStatus.WARN}


@dataclass(frozen=True)
class ExecutorEvent:
    event: str          # one of EVENTS
    chunk_index: int
    reason: str
    source: str = ""    # the executor's node name


def to_status(event: ExecutorEvent) -> DiagnosticStatus:
    if event.event not in EVENTS:
        raise ValueError(f"executor event must be one of {sorted(EVENTS)}, got {event.event!r}")
    return DiagnosticStatus(level=EVENTS[event.event], name=event.source, message=event.reason,
                            values=[KeyValue(key="event", value=event.event),
                                    KeyValue(key="chunk_index", value=str(event.chunk_index))])


def from_status(msg: DiagnosticStatus) -> ExecutorEvent | None:
    """The event, or None for a status that is not one (another publisher on the topic)."""
    values = {kv.key: kv.value for kv in msg.values}
    try:
        index = int(values.get("chunk_index", ""))
    except ValueError:
        return None
    if values.get("event") not in EVENTS:
        return None
    return ExecutorEvent(values["event"], index, msg.message, msg.name)
