"""Hostile CompressedImages (issue 16): decoding is bounded by the declared size, every decoder error is a refused
frame with its reason, and the inference worker keeps serving the goal (ROS-free, no thread)."""
from __future__ import annotations

import re
import struct
import zlib

import cv2
import numpy as np
import pytest

import gem_ros.core.observation.images as images
from gem_ros.core.inference import InferenceConfig, InferenceWorker
from gem_ros.core.observation import EncodedFrame, ObservationBuffer, ObservationConfig, decode_compressed


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_declaring(width: int, height: int) -> bytes:
    """A well-formed PNG whose IHDR declares width x height px RGB but whose IDAT holds 64 zero bytes (~80 B)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + png_chunk(b"IEND", b""))


def jpeg_declaring(width: int, height: int) -> bytes:
    """SOI, an APP0 segment, a baseline SOF0 declaring width x height, 3 components, then a scan of nothing."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof0 = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + b"\x01\x11\x00\x02\x11\x00\x03\x11\x00"
    return b"\xff\xd8" + app0 + sof0 + b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00" + b"\x00" * 32 + b"\xff\xd9"


def real_png(height: int, width: int, value: int = 90) -> bytes:
    ok, png = cv2.imencode(".png", np.full((height, width, 3), value, np.uint8))
    assert ok
    return png.tobytes()


@pytest.fixture
def imdecode_calls(monkeypatch):
    """Every cv2.imdecode call the decoder makes (a refusal must come before any)."""
    calls = []
    real = cv2.imdecode
    monkeypatch.setattr(images.cv2, "imdecode", lambda buf, flags: calls.append(len(buf)) or real(buf, flags))
    return calls


@pytest.mark.parametrize("data, declared", [
    (png_declaring(100000, 100000), "100000x100000 px"),      # OpenCV's own limit raises cv2.error on this one
    (png_declaring(20000, 20000), "20000x20000 px"),          # under OpenCV's limit: 1.2 GB if decoded
    (jpeg_declaring(65535, 65535), "65535x65535 px"),
    (real_png(5000, 5000), "5000x5000 px"),                    # a real image above the cap, a few kB compressed
], ids=["png-100000", "png-20000", "jpeg-65535", "real-png-5000"])
def test_an_oversized_frame_is_refused_on_arrival_naming_its_size_without_decoding(data, declared, imdecode_calls):
    assert len(data) < 100_000
    with pytest.raises(ValueError, match=f"declares {declared}.*above the 16.8 Mpx limit"):
        EncodedFrame("png", data)
    with pytest.raises(ValueError, match=f"declares {declared}"):
        decode_compressed("png", data)
    assert imdecode_calls == []


def test_the_cap_is_configurable_and_a_frame_at_the_cap_decodes(imdecode_calls):
    data = real_png(300, 200, value=17)
    assert images.compressed_size(data) == (300, 200)
    assert EncodedFrame("png", data, max_pixels=300 * 200).decode()[0, 0, 0] == 17
    with pytest.raises(ValueError, match="declares 200x300 px .* above the 0.1 Mpx limit"):
        EncodedFrame("png", data, max_pixels=300 * 200 - 1)
    ok, jpeg = cv2.imencode(".jpg", np.zeros((48, 64, 3), np.uint8))
    assert images.compressed_size(jpeg.tobytes()) == (48, 64) and len(imdecode_calls) == 1
    with pytest.raises(ValueError, match="max_pixels must be a positive integer"):
        EncodedFrame("png", data, max_pixels=0)


@pytest.mark.parametrize("data, reason", [
    (b"not a jpeg", "neither PNG nor JPEG"),
    (b"GIF89a" + b"\x00" * 40, "neither PNG nor JPEG"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "PNG header is truncated"),
    (b"\x89PNG\r\n\x1a\n" + png_chunk(b"tEXt", b"a" * 13), "no IHDR"),
    (png_declaring(0, 10), "declares 0x10 px"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF", "no SOF marker"),                         # cut inside APP0
    (jpeg_declaring(640, 480)[:26], "JPEG header is truncated"),                # cut inside SOF0
    (b"\xff\xd8\x00\x00\x00\x00", "expected a marker"),
    (b"\xff\xd8\xff\xda\x00\x08" + b"\x00" * 20, "no SOF marker"),             # a scan with no frame header
], ids=["text", "gif", "png-cut-signature", "png-no-ihdr", "png-zero-width", "jpeg-cut-app0", "jpeg-cut-sof",
        "jpeg-no-marker", "jpeg-scan-first"])
def test_garbage_and_truncated_headers_are_refused_on_arrival(data, reason, imdecode_calls):
    with pytest.raises(ValueError, match=reason):
        EncodedFrame("jpeg", data)
    with pytest.raises(ValueError, match=reason):
        images.decode_frame("jpeg", data)
    assert imdecode_calls == []


def test_every_decoder_error_becomes_a_refused_frame_with_its_reason(monkeypatch):
    """A valid header with a body OpenCV cannot read: ValueError, whatever OpenCV raised (here cv2.error,
    MemoryError) or returned (None, another size than declared)."""
    body_cut = real_png(64, 64, value=3)[:60]                  # IHDR intact, IDAT cut
    with pytest.raises(ValueError, match="could not decode 60 B as a 64x64 px png image"):
        images.decode_frame("png", body_cut)
    for raised, name in ((cv2.error("OpenCV(5.1.0) bad"), "cv2.error"), (MemoryError("no memory"), "MemoryError")):
        calls = []

        def imdecode(buf, flags, raised=raised):
            calls.append(1)
            raise raised
        monkeypatch.setattr(images.cv2, "imdecode", imdecode)
        frame = EncodedFrame("png", real_png(8, 8))
        for _ in range(2):                                     # raised once, remembered: no second decode attempt
            with pytest.raises(ValueError, match=re.escape(f"8x8 px png image: {name}: {raised}")):
                frame.decode()
        assert calls == [1]
    monkeypatch.setattr(images.cv2, "imdecode", lambda buf, flags: np.zeros((9, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="declares 8x8 px but decoded to 8x9 px"):
        images.decode_frame("png", real_png(8, 8))


def make_worker(predict=None):
    clock = [100.0]
    buffer = ObservationBuffer(ObservationConfig(camera_names=["cam"], joint_names=["j"], max_age_s=0.5,
                                                 max_skew_s=0.1))
    chunks, holds = [], []
    predict = predict or (lambda obs: (np.zeros((8, 1), np.float32), {"total": 1.0}))
    worker = InferenceWorker(InferenceConfig(request_threshold_s=0.3, chunk_horizon_s=0.8), buffer, predict,
                             lambda: clock[0], chunks.append, holds.append)
    return worker, buffer, clock, chunks, holds


def test_a_frame_the_decoder_chokes_on_is_dropped_and_the_goal_goes_on(monkeypatch):
    """Issue 16: a cv2.error from the decoder ended the goal ("inference crashed") and valid frames after it gave
    0 chunks. Now the frame is dropped as if it never arrived, and the next valid frame gives a chunk."""
    worker, buffer, clock, chunks, holds = make_worker()
    real = cv2.imdecode

    def choke_on_first(buf, flags, calls=[]):
        calls.append(1)
        if len(calls) == 1:
            raise cv2.error("OpenCV(5.1.0) loadsave.cpp:80: error: (-215:Assertion failed)")
        return real(buf, flags)
    monkeypatch.setattr(images.cv2, "imdecode", choke_on_first)
    worker.run_instruction("go")
    buffer.add_image("cam", clock[0], EncodedFrame("png", real_png(4, 4)))
    buffer.add_joint_state(clock[0], ["j"], [0.0])
    assert worker.step() is None                               # the only frame is dropped: holding on stale input
    state = worker.snapshot()
    assert state.running and "dropped: could not decode" in state.reason and "cv2.error" in state.reason
    assert buffer.undecodable_frames == 1
    clock[0] += 0.05
    buffer.add_image("cam", clock[0], EncodedFrame("png", real_png(4, 4)))
    buffer.add_joint_state(clock[0], ["j"], [0.0])
    assert worker.step() is not None and len(chunks) == 1 and worker.snapshot().reason == "running"


@pytest.mark.parametrize("error", [RuntimeError("CUDA error: an illegal memory access"), IndexError("layer 99"),
                                   MemoryError()])
def test_a_predict_error_of_any_type_ends_the_goal_with_its_reason_and_the_next_goal_is_served(error):
    calls = []

    def predict(obs):
        calls.append(1)
        if len(calls) == 1:
            raise error
        return np.zeros((8, 1), np.float32), {"total": 1.0}
    worker, buffer, clock, chunks, holds = make_worker(predict)
    worker.run_instruction("go")
    buffer.add_image("cam", clock[0], np.zeros((4, 4, 3), np.uint8))
    buffer.add_joint_state(clock[0], ["j"], [0.0])
    assert worker.step() is None                               # ends the goal here, not by escaping the step
    state = worker.snapshot()
    assert not state.running and state.reason.startswith(f"policy error: {type(error).__name__}")
    assert type(error).__name__ in state.last_error and holds == [state.reason] and chunks == []
    clock[0] += 0.05
    worker.run_instruction("go again")
    assert worker.snapshot().last_error == ""                  # the node reports this goal's end, not the last one's
    buffer.add_image("cam", clock[0], np.zeros((4, 4, 3), np.uint8))
    buffer.add_joint_state(clock[0], ["j"], [0.0])
    assert worker.step() is not None and len(chunks) == 1 and worker.snapshot().running
