"""The inference worker's scheduling, driven step by step with a fake clock (no thread, no ROS)."""
from __future__ import annotations

import numpy as np
import pytest

from gem_ros.core.inference import InferenceConfig, InferenceWorker
from gem_ros.core.observation import ObservationBuffer, ObservationConfig


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def make_worker(clock, predict=None, horizon_s=0.8):
    buffer = ObservationBuffer(ObservationConfig(camera_names=["cam"], joint_names=["j"], max_age_s=0.5,
                                                 max_skew_s=0.1))
    chunks, holds = [], []
    predict = predict or (lambda obs: (np.zeros((8, 1), np.float32), {"total": 1.0}))
    worker = InferenceWorker(InferenceConfig(request_threshold_s=0.3, chunk_horizon_s=horizon_s), buffer, predict, clock,
                             chunks.append, holds.append)
    return worker, buffer, chunks, holds


def feed(buffer, t):
    buffer.add_image("cam", t, np.zeros((4, 4, 3), np.uint8))
    buffer.add_joint_state(t, ["j"], [0.0])


def test_next_chunk_is_requested_before_the_current_one_runs_out():
    clock = Clock()
    worker, buffer, chunks, holds = make_worker(clock)
    assert worker.step() is None                       # no instruction: nothing happens
    worker.run_instruction("pick up the red cube")
    feed(buffer, clock.t)
    assert worker.step().obs_stamp_s == 100.0          # first chunk right away
    for dt in (0.1, 0.2, 0.4):                         # 0.8 s horizon: 0.7, 0.6, 0.4 s left > 0.3 s threshold
        clock.t = 100.0 + dt
        feed(buffer, clock.t)
        assert worker.step() is None, dt
    clock.t = 100.55                                   # 0.25 s left (< threshold + latency): ask now, not at 0.8 s
    feed(buffer, clock.t)
    assert worker.step() is not None and len(chunks) == 2 and not holds


def test_compressed_frames_are_decoded_just_before_an_inference_is_due(monkeypatch):
    """So that decoding is not part of the chunk's latency, yet not every camera frame gets decoded."""
    from gem_ros.core.inference import PREDECODE_S

    clock = Clock()
    worker, buffer, chunks, holds = make_worker(clock)   # 0.8 s horizon, 0.3 s threshold
    predecoded = []
    monkeypatch.setattr(buffer, "decode_newest", lambda: predecoded.append(clock.t))
    worker.run_instruction("go")
    feed(buffer, clock.t)
    assert worker.step() is not None and predecoded == []   # due at once: assemble decodes what it picks
    due_at = 100.0 + 0.8 - 0.3 - worker.snapshot().last_latency_s
    for t in (100.1, 100.3, due_at - PREDECODE_S - 0.01):    # far from due: nothing decoded
        clock.t = t
        feed(buffer, t)
        assert worker.step() is None
    assert predecoded == []
    clock.t = due_at - PREDECODE_S / 2
    feed(buffer, clock.t)
    assert worker.step() is None and predecoded == [clock.t]


def test_stale_input_holds_once_and_resumes_when_fresh():
    clock = Clock()
    worker, buffer, chunks, holds = make_worker(clock)
    worker.run_instruction("go")
    feed(buffer, clock.t)
    worker.step()
    clock.t += 1.0                                     # nothing new for 1 s (max age 0.5 s)
    worker.step()
    worker.step()
    assert len(holds) == 1 and "old" in holds[0] and worker.snapshot().holding
    feed(buffer, clock.t)
    assert worker.step() is not None and not worker.snapshot().holding


def test_stale_camera_holds_mid_chunk_and_images_are_only_resized_for_an_inference(monkeypatch):
    """While the plan has horizon left the worker builds no images, yet a camera that stops is caught at once."""
    clock = Clock()
    worker, buffer, chunks, holds = make_worker(clock, horizon_s=2.0)
    assembled = []
    real_assemble = buffer.assemble
    monkeypatch.setattr(buffer, "assemble", lambda *a, **k: assembled.append(a[0]) or real_assemble(*a, **k))
    worker.run_instruction("go")
    feed(buffer, clock.t)
    worker.step()
    for _ in range(3):                                 # most of the 2 s horizon left, fresh inputs: polls only
        clock.t += 0.01
        feed(buffer, clock.t)
        assert worker.step() is None
    assert assembled == [100.0] and not holds
    clock.t += 0.6                                     # the camera went silent; joints keep coming
    buffer.add_joint_state(clock.t, ["j"], [0.0])
    assert not worker.due(clock.t)                     # 1.37 s of plan left: no inference needed yet
    assert worker.step() is None
    assert len(holds) == 1 and "cam" in holds[0] and worker.snapshot().holding


def test_policy_error_stops_and_reports():
    clock = Clock()

    def broken(obs):
        raise ValueError("the policy produced a non-finite action chunk")

    worker, buffer, chunks, holds = make_worker(clock, broken)
    worker.run_instruction("go")
    feed(buffer, clock.t)
    assert worker.step() is None
    snap = worker.snapshot()
    assert not snap.running and "non-finite" in snap.last_error and holds and not chunks


def test_config_and_instruction_validation():
    with pytest.raises(ValueError, match="request_threshold_s"):
        InferenceConfig(request_threshold_s=-1)
    worker, *_ = make_worker(Clock())
    with pytest.raises(ValueError, match="empty"):
        worker.run_instruction("  ")


def test_a_goal_never_plans_from_a_frame_taken_before_it_started():
    """After an episode reset the buffer still holds the old scene; the first chunk must wait for a new frame."""
    clock = Clock()
    worker, buffer, chunks, holds = make_worker(clock)
    feed(buffer, 99.95)                                # the previous episode's last frame, still fresh by age
    clock.t = 100.0
    worker.run_instruction("pick up the red cube")
    assert worker.step() is None and worker.snapshot().holding
    assert "no frame taken since 100.000 s (goal start)" in holds[0]
    clock.t = 100.05
    feed(buffer, 100.05)                               # first frame of the new episode
    result = worker.step()
    assert result is not None and result.obs_stamp_s == 100.05


def test_latency_is_measured_on_the_worker_clock():
    """`due` compares latency with sim-time horizons, so it must be measured on that clock, not wall time."""
    clock = Clock()

    def slow_predict(obs):
        clock.t += 0.25                                # inference takes 0.25 s on the node's clock
        return np.zeros((8, 1), np.float32), {"total": 1.0}

    worker, buffer, chunks, holds = make_worker(clock, predict=slow_predict)
    worker.run_instruction("go")
    feed(buffer, clock.t)
    worker.step()
    assert worker.snapshot().last_latency_s == pytest.approx(0.25)


def test_shutdown_after_an_interrupted_start_does_not_raise():
    """Ctrl-C while a node activates can land inside Thread.start(): shutting down must still work."""
    import threading

    worker, *_ = make_worker(Clock())
    worker.shutdown()                                            # never started
    worker._thread = threading.Thread(target=lambda: None)      # created, start() interrupted before it ran
    worker.shutdown()
    worker.start()                                               # and it can still be started afterwards
    worker.shutdown()
    assert not worker._thread.is_alive()


def test_a_chunk_of_a_pre_empted_goal_is_dropped_even_with_the_same_instruction():
    """gem_demo sends the same text every episode: the goal's generation, not its text, decides."""
    clock = Clock()
    worker = None

    def predict_while_a_new_goal_arrives(observation):
        worker.run_instruction("pick up the red cube")   # the action server pre-empts with an identical goal
        return np.zeros((8, 1), np.float32), {"total": 1.0}

    worker, buffer, chunks, holds = make_worker(clock, predict_while_a_new_goal_arrives)
    worker.run_instruction("pick up the red cube")
    feed(buffer, clock.t)
    assert worker.step() is None and chunks == []
    worker.predict = lambda obs: (np.zeros((8, 1), np.float32), {"total": 1.0})
    assert worker.step() is not None and len(chunks) == 1   # the new goal gets its own chunk


def test_a_stop_during_the_hand_over_sends_its_hold_after_the_chunk_never_before():
    import threading

    clock = Clock()
    events, handing_over, release = [], threading.Event(), threading.Event()

    def on_chunk(result):
        handing_over.set()
        release.wait(5.0)       # the executor is still planning the chunk
        events.append("chunk")

    worker, buffer, _, _ = make_worker(clock)
    worker.on_chunk, worker.on_hold = on_chunk, lambda reason: events.append("hold")
    worker.run_instruction("go")
    feed(buffer, clock.t)
    stepping = threading.Thread(target=worker.step)
    stepping.start()
    assert handing_over.wait(5.0)
    stopping = threading.Thread(target=worker.stop, args=("cancelled",))   # the action server's cancel
    stopping.start()
    stopping.join(0.2)
    assert stopping.is_alive() and events == []   # the hold waits for the hand-over in progress
    release.set()
    stepping.join(5.0)
    stopping.join(5.0)
    assert events == ["chunk", "hold"]
    feed(buffer, clock.t)
    assert worker.step() is None and events == ["chunk", "hold"]   # stopped: nothing more


def test_inputs_going_stale_during_inference_hold_at_once_and_the_chunk_is_dropped():
    """The worker cannot poll while the policy runs; `watch` (a node timer) holds in the meantime."""
    import threading

    clock = Clock()
    started, finish = threading.Event(), threading.Event()

    def slow_predict(observation):
        started.set()
        finish.wait(5.0)
        return np.zeros((8, 1), np.float32), {"total": 300.0}

    worker, buffer, chunks, holds = make_worker(clock, slow_predict)
    worker.run_instruction("go")
    feed(buffer, clock.t)
    stepping = threading.Thread(target=worker.step)
    stepping.start()
    assert started.wait(5.0)
    worker.watch(clock.t + 0.1)               # still fresh (max age 0.5 s): nothing happens
    assert holds == []
    clock.t += 0.6                            # the camera stopped: its newest frame is 0.6 s old
    worker.watch(clock.t)
    assert len(holds) == 1 and "cam" in holds[0] and worker.snapshot().holding   # held while inference runs
    worker.watch(clock.t + 0.05)
    assert len(holds) == 1                    # one hold per episode
    finish.set()
    stepping.join(5.0)
    assert chunks == []                       # computed from inputs that went stale: dropped
    feed(buffer, clock.t)                     # fresh again: it resumes with a new chunk
    finish.set()
    assert worker.step() is not None and len(chunks) == 1 and not worker.snapshot().holding
