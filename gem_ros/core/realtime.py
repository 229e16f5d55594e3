"""Real-time scheduling for the control path (Linux SCHED_FIFO), kept away from inference.

On a robot PC the executor's chunk planning and 50 Hz ticks compete for cores with camera drivers, the simulator
or the policy. ros2_control's controller manager runs its control loop under SCHED_FIFO for that reason;
gem_executor does the same with `--realtime-priority N` (1-99; 0, the default, leaves scheduling alone), applied
before rclpy starts, so its middleware threads get it too (unlike ros2_control, which raises only its loop
thread: here the chunk arrives through them). Measured with `bench/ros_overhead.py --realtime-priority 0 50`.

Inference must never run at real-time priority: a CPU policy (and torch's OpenMP workers, which inherit the
priority of the thread that first runs an operator) would own the cores it runs on. Nor should busy non-control
nodes (gem_sim renders cameras, gem_recorder writes files). So every other gem node refuses the option
(gem_policy_executor plans chunks on its inference thread, so it would not gain either), and for processes an
integrator composes otherwise, the policy's configure runs under `normal_priority()` and the inference thread calls
`leave_realtime()`.

Linux applies a policy per thread: threads created afterwards inherit it, existing ones keep theirs (in a node
main: the few that importing numpy, rclpy and OpenCV start).

`--cpu-dma-latency-us N` (gem_executor) holds the kernel's PM QoS request /dev/cpu_dma_latency at N us for as long
as the node runs, as cyclictest and tuned's latency-performance profile do: idle CPUs then stay in shallow idle
states and wake within N us. A chunk that reaches an idle executor (the usual case on a robot PC whose policy
runs on a GPU) no longer pays a deep-idle wake-up. It is system-wide and costs idle power; the request ends when
the process exits, however it exits. Off by default: measure it on the robot PC first
(`bench/ros_overhead.py --realtime-priority 50 --cpu-dma-latency-us -1 0`). On this project's 2-core KVM guest
(haltpoll cpuidle) 0 us halved the idle rclpy hop (0.27-0.38 -> 0.15-0.21 ms p50) and took ~0.1 ms off the
overhead across processes, but the 50 Hz tick's worst jitter rose from ~1 to 3-18 ms: vCPUs that never halt get
descheduled by the host. On bare metal there is no host to do that.
"""
from __future__ import annotations

import contextlib
import logging
import os
import struct
from collections.abc import Iterator
from typing import BinaryIO

MAX_PRIORITY = 99
CPU_DMA_LATENCY = "/dev/cpu_dma_latency"
MAX_WAKEUP_LATENCY_US = 1_000_000   # a request above 1 s asks for nothing a control loop would notice


def check_priority(priority: int) -> int:
    """0 (leave scheduling alone) or a SCHED_FIFO priority 1-99; anything else is refused."""
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= MAX_PRIORITY:
        raise ValueError(f"realtime priority must be an int in 0..{MAX_PRIORITY} (0 = off), got {priority!r}")
    return priority


def supported() -> bool:
    return hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_FIFO")


def make_calling_thread_realtime(priority: int) -> tuple[bool, str]:
    """SCHED_FIFO at `priority` for the calling thread (and the threads it creates from now on). Returns (applied,
    a line for the log). A refusal (no permission, not Linux) is reported, not raised: scheduling is about latency,
    never about safety, and the node works without it."""
    if check_priority(priority) == 0:
        return False, "default scheduling (--realtime-priority 0)"
    if not supported():
        return False, f"SCHED_FIFO {priority} not applied: this platform has no sched_setscheduler"
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except PermissionError:
        return False, (f"SCHED_FIFO {priority} not applied: permission denied (allow it with an rtprio limit, e.g. "
                       f"'@realtime - rtprio 98' in /etc/security/limits.conf for a group of the user, then log in "
                       f"again)")
    except OSError as error:
        return False, f"SCHED_FIFO {priority} not applied: {error}"
    return True, f"SCHED_FIFO priority {priority}"


def calling_thread_is_realtime() -> bool:
    return supported() and os.sched_getscheduler(0) in (os.SCHED_FIFO, getattr(os, "SCHED_RR", os.SCHED_FIFO))


@contextlib.contextmanager
def normal_priority() -> Iterator[None]:
    """Run the block (and threads it starts) under SCHED_OTHER if the calling thread is real-time; restore after."""
    if not calling_thread_is_realtime():
        yield
        return
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    try:
        yield
    finally:
        try:
            os.sched_setscheduler(0, policy, param)
        except OSError as error:   # e.g. FIFO set by root (chrt, systemd) above this user's rtprio limit
            logging.getLogger(__name__).warning(
                f"stays at default scheduling: restoring real-time priority {param.sched_priority} failed ({error})")


def leave_realtime() -> None:
    """For a thread that must never run real-time (the inference loop): SCHED_OTHER if it inherited FIFO/RR."""
    if calling_thread_is_realtime():
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


def check_wakeup_latency(latency_us: int) -> int:
    """-1 (leave the CPUs' idle states alone) or a wake-up latency bound in us, 0..MAX_WAKEUP_LATENCY_US."""
    if isinstance(latency_us, bool) or not isinstance(latency_us, int) \
            or not -1 <= latency_us <= MAX_WAKEUP_LATENCY_US:
        raise ValueError(f"cpu dma latency must be an int in 0..{MAX_WAKEUP_LATENCY_US} us (-1 = off), "
                         f"got {latency_us!r}")
    return latency_us


def hold_cpu_wakeup_latency(latency_us: int, path: str = CPU_DMA_LATENCY) -> tuple[BinaryIO | None, str]:
    """Ask the kernel to keep every CPU's wake-up latency <= `latency_us` while the returned file stays open (the
    PM QoS request ends when it is closed, or when the process exits). Returns (the open file or None, a line for
    the log). Like SCHED_FIFO, a refusal is reported, not raised: latency, never safety."""
    if check_wakeup_latency(latency_us) < 0:
        return None, "CPU idle states left alone (--cpu-dma-latency-us -1)"
    try:
        handle = open(path, "wb", buffering=0)   # noqa: SIM115 - held open on purpose: closing ends the request
    except PermissionError:
        return None, (f"CPU wake-up latency not held: permission denied on {path} (root only by default; a udev "
                      f"rule can give a group write access)")
    except OSError as error:
        return None, f"CPU wake-up latency not held: {error}"
    try:
        handle.write(struct.pack("i", latency_us))   # the interface takes a native 32-bit int
    except OSError as error:
        handle.close()
        return None, f"CPU wake-up latency not held: writing {path} failed ({error})"
    return handle, f"CPU wake-up latency held at <= {latency_us} us ({path})"
