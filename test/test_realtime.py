"""gem_ros.core.realtime: SCHED_FIFO for the control threads, never for inference; the CPU wake-up latency
request."""
from __future__ import annotations

import multiprocessing
import os
import struct
import threading
import time

import pytest

from gem_ros.core import realtime
from gem_ros.core.realtime import (CPU_DMA_LATENCY, check_priority, check_wakeup_latency, hold_cpu_wakeup_latency,
                                   make_calling_thread_realtime)


def test_priority_is_checked_and_zero_leaves_scheduling_alone():
    for bad in (-1, 100, 1.5, True, "50"):
        with pytest.raises(ValueError, match="0..99"):
            check_priority(bad)
    before = os.sched_getscheduler(0)
    assert make_calling_thread_realtime(0) == (False, "default scheduling (--realtime-priority 0)")
    assert os.sched_getscheduler(0) == before


def test_a_refusal_is_reported_with_the_fix_not_raised(monkeypatch):
    def refuse(*args):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(realtime.os, "sched_setscheduler", refuse)
    applied, line = make_calling_thread_realtime(50)
    assert not applied and "permission denied" in line and "rtprio" in line


def test_wakeup_latency_request_is_written_as_int32_and_held_until_closed(tmp_path):
    for bad in (-2, 1_000_001, 0.5, True, "0"):
        with pytest.raises(ValueError, match="-1 = off"):
            check_wakeup_latency(bad)
    assert hold_cpu_wakeup_latency(-1, str(tmp_path / "never_opened")) == \
        (None, "CPU idle states left alone (--cpu-dma-latency-us -1)")
    assert not (tmp_path / "never_opened").exists()
    device = tmp_path / "cpu_dma_latency"   # a plain file records what the kernel interface would receive
    handle, line = hold_cpu_wakeup_latency(25, str(device))
    assert handle is not None and not handle.closed and "<= 25 us" in line
    assert struct.unpack("i", device.read_bytes()) == (25,)   # binary s32, not the text "25"
    handle.close()


def test_a_refused_wakeup_latency_request_is_reported_not_raised(tmp_path, monkeypatch):
    handle, line = hold_cpu_wakeup_latency(0, str(tmp_path / "absent" / "cpu_dma_latency"))
    assert handle is None and "not held" in line

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("builtins.open", refuse)
    handle, line = hold_cpu_wakeup_latency(0, CPU_DMA_LATENCY)
    assert handle is None and "permission denied" in line and "udev" in line


def _kernel_latency_request_us() -> int | None:
    """The aggregate request the kernel applies now (reading the device gives it), or None where unreadable."""
    try:
        with open(CPU_DMA_LATENCY, "rb") as device:
            return struct.unpack("i", device.read(4))[0]
    except OSError:
        return None


class FakeScheduler:
    """os.sched_* of one thread, so the priority juggling is tested where the OS refuses real-time (CI in a
    container): `refuse_raising` makes raising back to FIFO fail as an unprivileged user's would."""

    def __init__(self, policy, priority, refuse_raising=False):
        self.policy, self.priority, self.refuse_raising = policy, priority, refuse_raising

    def install(self, monkeypatch):
        monkeypatch.setattr(realtime.os, "sched_getscheduler", lambda pid: self.policy)
        monkeypatch.setattr(realtime.os, "sched_getparam", lambda pid: os.sched_param(self.priority))
        monkeypatch.setattr(realtime.os, "sched_setscheduler", self.set)
        return self

    def set(self, pid, policy, param):
        if self.refuse_raising and policy == os.SCHED_FIFO:
            raise PermissionError(1, "Operation not permitted")
        self.policy, self.priority = policy, param.sched_priority


def test_normal_priority_drops_and_restores_and_leave_realtime_drops(monkeypatch):
    sched = FakeScheduler(os.SCHED_FIFO, 50).install(monkeypatch)
    with realtime.normal_priority():
        assert (sched.policy, sched.priority) == (os.SCHED_OTHER, 0)
    assert (sched.policy, sched.priority) == (os.SCHED_FIFO, 50)
    realtime.leave_realtime()
    assert sched.policy == os.SCHED_OTHER
    with realtime.normal_priority():   # a normal thread stays as it is
        assert sched.policy == os.SCHED_OTHER


def test_a_refused_restore_stays_normal_and_never_hides_the_blocks_error(monkeypatch, caplog):
    sched = FakeScheduler(os.SCHED_FIFO, 50, refuse_raising=True).install(monkeypatch)
    with realtime.normal_priority():
        pass
    assert sched.policy == os.SCHED_OTHER and "restoring real-time priority 50 failed" in caplog.text
    sched.policy = os.SCHED_FIFO
    with pytest.raises(KeyError, match="from the block"):
        with realtime.normal_priority():
            raise KeyError("from the block")


def _policies_in_a_realtime_process(results) -> None:
    """Child process (the test runner itself must never run real-time): what each kind of thread ends up with."""
    from gem_ros.core.inference import InferenceConfig, InferenceWorker
    from gem_ros.core.observation import ObservationBuffer, ObservationConfig
    from gem_ros.core.realtime import normal_priority

    applied, line = make_calling_thread_realtime(10)
    results["applied"], results["line"] = applied, line
    if not applied:
        return

    def policy_of_new_thread() -> int:
        seen = []
        thread = threading.Thread(target=lambda: seen.append(os.sched_getscheduler(0)))
        thread.start()
        thread.join()
        return seen[0]

    results["main"], results["inherited"] = os.sched_getscheduler(0), policy_of_new_thread()
    with normal_priority():
        results["inside_block"], results["started_inside_block"] = os.sched_getscheduler(0), policy_of_new_thread()
    results["after_block"] = os.sched_getscheduler(0)
    # The inference thread, started from a real-time thread, leaves real-time as it starts.
    buffer = ObservationBuffer(ObservationConfig(camera_names=["cam"], joint_names=["j"], max_age_s=0.5,
                                                 max_skew_s=0.1))
    worker = InferenceWorker(InferenceConfig(), buffer, predict=None, clock=lambda: 100.0,
                             on_chunk=lambda chunk: None, on_hold=lambda reason: None)
    worker.start()
    deadline = time.monotonic() + 5.0
    while os.sched_getscheduler(worker._thread.native_id) != os.SCHED_OTHER and time.monotonic() < deadline:
        time.sleep(0.01)
    results["worker_thread"] = os.sched_getscheduler(worker._thread.native_id)
    worker.shutdown()


def test_realtime_reaches_control_threads_but_not_inference():
    with multiprocessing.Manager() as manager:
        results = manager.dict()
        child = multiprocessing.get_context("spawn").Process(target=_policies_in_a_realtime_process, args=(results,))
        child.start()
        child.join(60)
        assert child.exitcode == 0
        results = dict(results)
    if not results["applied"]:
        pytest.skip(f"this machine refuses SCHED_FIFO: {results['line']}")
    fifo, other = os.SCHED_FIFO, os.SCHED_OTHER
    assert (results["main"], results["inherited"]) == (fifo, fifo)
    assert (results["inside_block"], results["started_inside_block"], results["after_block"]) == (other, other, fifo)
    assert results["worker_thread"] == other


@pytest.mark.ros
@pytest.mark.skipif(os.environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp") != "rmw_fastrtps_cpp",
                    reason="finds the middleware's threads by Fast DDS's thread names (dds.*)")
def test_gem_executor_main_runs_all_its_threads_realtime_when_asked(read_until):
    """Applied before rclpy starts: the middleware's threads (DDS receive, events) inherit it too."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("rclpy")
    from gem_ros.nodes.params import bringup_config

    urdf = Path(__file__).resolve().parents[1] / "urdf" / "panda" / "panda.urdf"
    code = "import sys; from gem_ros.nodes.executor_node import main; main(sys.argv)"
    before = _kernel_latency_request_us()
    proc = subprocess.Popen([sys.executable, "-c", code, "--realtime-priority", "10", "--cpu-dma-latency-us", "0",
                             "--ros-args", "--params-file",
                             str(bringup_config("panda")), "-p", f"gem_executor:urdf_path:={urdf}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        started, lines = read_until(proc, "spinning on the", 60)
        assert started is not None, "".join(lines)[-3000:]
        if "not applied" in started:
            pytest.skip(f"this machine refuses SCHED_FIFO: {started.strip()}")
        assert "SCHED_FIFO priority 10" in started
        # The main thread and the middleware's (Fast DDS names its threads dds.*). Threads made while importing
        # (numpy's OpenBLAS pool, rclpy's, OpenCV's) keep default scheduling.
        tasks = {int(tid): Path(f"/proc/{proc.pid}/task/{tid}/comm").read_text().strip()
                 for tid in os.listdir(f"/proc/{proc.pid}/task")}
        middleware = [tid for tid, name in tasks.items() if name.startswith("dds.")]
        assert middleware, tasks
        assert all(os.sched_getscheduler(tid) == os.SCHED_FIFO for tid in [proc.pid, *middleware]), tasks
        if "CPU wake-up latency held at <= 0 us" in started:   # root here; elsewhere the line says why not
            assert _kernel_latency_request_us() == 0
        else:
            assert "CPU wake-up latency not held" in started, started
    finally:
        proc.send_signal(signal.SIGINT)
        with proc:
            assert proc.wait(30) == 0, proc.stdout.read()[-3000:]
    if before is not None and before > 0:   # the request ended with the process
        assert _kernel_latency_request_us() == before
