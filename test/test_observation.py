"""core.observation (ROS-free): raw/compressed/depth decoding, resizing, time alignment, freshness, threads."""
from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest

from gem_ros.core.observation import (EncodedFrame, ObservationBuffer, ObservationConfig, StaleObservation,
                                      decode_compressed, decode_depth, decode_raw, resize_to)
from gem_ros.core.policy.config import CameraSpec, IOSchema

H, W = 6, 5


@pytest.fixture
def rgb():
    return np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)


def encode(rgb: np.ndarray, encoding: str) -> tuple[np.ndarray, np.ndarray]:
    """(pixels as stored in the message, the RGB a decoder must return)."""
    alpha = np.full(rgb.shape[:2] + (1,), 77, np.uint8)
    if encoding == "mono8":
        gray = rgb[..., 0]
        return gray, np.repeat(gray[..., None], 3, axis=2)
    stored = {"rgb8": rgb, "bgr8": rgb[..., ::-1], "rgba8": np.concatenate([rgb, alpha], 2),
              "bgra8": np.concatenate([rgb[..., ::-1], alpha], 2)}[encoding]
    return stored, rgb


def to_bytes(pixels: np.ndarray, pad: int = 0) -> tuple[bytes, int]:
    """Row-major bytes with `pad` junk bytes after each row; returns (data, step)."""
    rows = np.ascontiguousarray(pixels).reshape(pixels.shape[0], -1).view(np.uint8)
    padded = np.concatenate([rows, np.full((rows.shape[0], pad), 0xAB, np.uint8)], axis=1)
    return padded.tobytes(), padded.shape[1]


ENCODINGS = ["rgb8", "bgr8", "rgba8", "bgra8", "mono8"]


@pytest.mark.parametrize("pad", [0, 7])
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_every_encoding_decodes_to_the_same_rgb(rgb, encoding, pad):
    stored, expected = encode(rgb, encoding)
    data, step = to_bytes(stored, pad)
    out = decode_raw(encoding, H, W, step, data)
    assert out.dtype == np.uint8 and out.shape == (H, W, 3)
    np.testing.assert_array_equal(out, expected)


def test_rgb8_is_a_zero_copy_view_even_with_row_padding(rgb):
    for pad in (0, 5):
        data, step = to_bytes(rgb, pad)
        out = decode_raw("rgb8", H, W, step, data)
        assert np.shares_memory(out, np.frombuffer(data, np.uint8))
        np.testing.assert_array_equal(out, rgb)


def test_wrong_length_and_bad_geometry_are_named(rgb):
    data, step = to_bytes(rgb)
    with pytest.raises(ValueError, match=rf"has {len(data) - 1} B, expected .* = {len(data)} B"):
        decode_raw("rgb8", H, W, step, data[:-1])
    with pytest.raises(ValueError, match="step 14 B is shorter than one row"):
        decode_raw("rgb8", H, W, 14, data)


@pytest.mark.parametrize("encoding", ["bayer_rggb8", "yuv422", "rgb16"])
def test_unsupported_encoding_lists_supported(encoding):
    with pytest.raises(ValueError, match=rf"'{encoding}'.*supported: .*'rgb8'"):
        decode_raw(encoding, 2, 2, 8, bytes(16))
    with pytest.raises(ValueError, match="use decode_depth"):
        decode_raw("16UC1", 2, 2, 4, bytes(8))


@pytest.mark.parametrize("bigendian", [False, True])
def test_depth_16uc1_millimetres_to_metres_with_zero_as_nan(bigendian):
    mm = np.array([[0, 1000, 1500], [250, 65535, 1]], np.uint16)
    data, step = to_bytes(mm.astype(">u2" if bigendian else "<u2"), pad=2)
    depth = decode_depth("16UC1", 2, 3, step, data, is_bigendian=bigendian)
    assert depth.dtype == np.float32 and depth.shape == (2, 3)
    np.testing.assert_allclose(depth, [[np.nan, 1.0, 1.5], [0.25, 65.535, 0.001]], rtol=1e-6)


def test_depth_32fc1_metres_passthrough():
    metres = np.array([[0.5, np.nan], [1.25, 3.0]], np.float32)
    data, step = to_bytes(metres)
    np.testing.assert_array_equal(decode_depth("32FC1", 2, 2, step, data), metres)
    data, step = to_bytes(metres.astype(">f4"), pad=4)
    np.testing.assert_array_equal(decode_depth("32FC1", 2, 2, step, data, is_bigendian=True), metres)
    with pytest.raises(ValueError, match="use decode_raw"):
        decode_depth("rgb8", 2, 2, 6, bytes(12))


def test_png_is_exact_and_jpeg_is_close():
    yy, xx = np.mgrid[0:48, 0:64]
    smooth = np.stack([xx * 4, yy * 5, (xx + yy) * 2], axis=2).astype(np.uint8)   # JPEG-friendly gradient
    ok, png = cv2.imencode(".png", cv2.cvtColor(smooth, cv2.COLOR_RGB2BGR))
    assert ok
    np.testing.assert_array_equal(decode_compressed("png", png.tobytes()), smooth)
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(smooth, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    out = decode_compressed("bgr8; jpeg compressed bgr8", jpeg.tobytes())
    assert out.shape == smooth.shape and np.abs(out.astype(int) - smooth).mean() < 3.0


def test_png_written_by_pillow_decodes_as_rgb():
    """Independent of cv2's BGR convention: a file written from RGB by another library reads back as RGB."""
    pil = pytest.importorskip("PIL.Image")
    import io
    rgb = np.random.default_rng(1).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    buf = io.BytesIO()
    pil.fromarray(rgb).save(buf, format="PNG")
    np.testing.assert_array_equal(decode_compressed("png", buf.getvalue()), rgb)


def test_compressed_errors():
    with pytest.raises(ValueError, match="neither PNG nor JPEG"):
        decode_compressed("jpeg", b"not a jpg")
    ok, png = cv2.imencode(".png", np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="could not decode 40 B as a 16x16 px png image"):
        decode_compressed("png", png.tobytes()[:40])   # the header is whole, the pixels are not
    with pytest.raises(ValueError, match="no data"):
        decode_compressed("png", b"")
    with pytest.raises(ValueError, match="compressedDepth"):
        decode_compressed("16UC1; compressedDepth png", b"\x00" * 20)
    with pytest.raises(ValueError, match="supported: jpeg, png"):
        decode_compressed("h264", b"\x00" * 20)


def test_resize_to():
    image = np.random.default_rng(2).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    assert resize_to(image, 40, 60) is image
    np.testing.assert_array_equal(resize_to(image, 20, 30), cv2.resize(image, (30, 20), interpolation=cv2.INTER_AREA))
    np.testing.assert_array_equal(resize_to(image, 80, 90),
                                  cv2.resize(image, (90, 80), interpolation=cv2.INTER_LINEAR))
    with pytest.raises(ValueError, match="height"):
        resize_to(image, 0, 10)


# ---------------------------------------------------------------- buffer
JOINTS = ["j1", "j2", "j3"]


def frame(value: int, size=(4, 4)) -> np.ndarray:
    return np.full(size + (3,), value, np.uint8)


def make_buffer(**overrides) -> ObservationBuffer:
    return ObservationBuffer(ObservationConfig(camera_names=["front", "wrist"], joint_names=JOINTS, **overrides))


@pytest.mark.parametrize("kwargs, field", [
    ({"camera_names": []}, "camera_names"), ({"joint_names": ["a", "a"]}, "joint_names"),
    ({"max_age_s": -1.0}, "max_age_s"), ({"max_skew_s": float("nan")}, "max_skew_s"),
    ({"history": 0}, "history"), ({"camera_sizes": {"top": (2, 2)}}, "camera_sizes"),
    ({"camera_sizes": {"front": (0, 2)}}, "camera_sizes"),
])
def test_config_validation_names_the_field(kwargs, field):
    base = {"camera_names": ["front"], "joint_names": ["j1"]}
    with pytest.raises(ValueError, match=field):
        ObservationConfig(**{**base, **kwargs})


def test_config_for_schema_takes_cameras_and_sizes():
    io = IOSchema(cameras=[CameraSpec("front", 32, 48)], state_dim=3, action_dim=3)
    cfg = ObservationConfig.for_schema(io, JOINTS, max_age_s=0.5)
    assert cfg.camera_names == ["front"] and cfg.camera_sizes == {"front": (32, 48)} and cfg.max_age_s == 0.5
    with pytest.raises(ValueError, match="state_dim is 3"):
        ObservationConfig.for_schema(io, ["j1"])


def test_alignment_picks_nearest_frame_and_drops_stale_ones():
    buf = make_buffer(max_age_s=0.2, max_skew_s=0.05)
    # The instant is the newest one every camera covers: min(wrist 0.95, front 0.99) = 0.95; wrist 0.79 is stale.
    for stamp, value in [(0.79, 1), (0.84, 2), (0.95, 3)]:
        buf.add_image("wrist", stamp, frame(value))
    for stamp, value in [(0.70, 10), (0.80, 11), (0.83, 12), (0.99, 13)]:
        buf.add_image("front", stamp, frame(value))
    buf.add_joint_state(0.91, JOINTS, [0.1, 0.2, 0.3])
    buf.add_joint_state(0.96, JOINTS, [0.6, 0.7, 0.8])
    timed = buf.assemble(1.0, "pick")
    assert timed.stamp_s == 0.95
    assert timed.image_stamps == {"front": 0.99, "wrist": 0.95}
    assert timed.observation.images["wrist"][0, 0, 0] == 3 and timed.observation.images["front"][0, 0, 0] == 13
    assert timed.skew_s == pytest.approx(0.04)
    # joints interpolated at the instant (0.8 of the way from 0.91 to 0.96), not the newest sample
    np.testing.assert_allclose(timed.observation.state, [0.5, 0.6, 0.7])
    assert timed.observation.instruction == "pick"


def test_slow_camera_gets_the_joint_state_of_its_frame_not_the_newest():
    """A 10 Hz camera and 50 Hz joint states: the state must describe the arm when the frame was taken."""
    buf = make_buffer(max_age_s=0.3, max_skew_s=0.05)
    buf.add_image("wrist", 1.00, frame(1))
    buf.add_image("front", 1.00, frame(2))
    for k in range(5):   # the arm keeps moving after the frame: 1.00, 1.02, ... 1.08 s
        buf.add_joint_state(1.00 + 0.02 * k, JOINTS, [k, 10 * k, 100 * k])
    timed = buf.assemble(1.09, "pick")
    assert timed.stamp_s == 1.00
    np.testing.assert_allclose(timed.observation.state, [0.0, 0.0, 0.0])


def test_joint_states_far_from_the_frames_are_refused():
    buf = make_buffer(max_age_s=0.3, max_skew_s=0.05)
    buf.add_image("wrist", 1.00, frame(1))
    buf.add_image("front", 1.00, frame(2))
    buf.add_joint_state(1.10, JOINTS, [0.1, 0.2, 0.3])   # fresh, but 0.1 s after the only frames
    with pytest.raises(StaleObservation) as info:
        buf.assemble(1.12, "pick")
    assert "joint 'j1' nearest sample is 0.100 s from the camera frames (max skew 0.050 s)" in info.value.reasons


def test_a_nan_sample_at_the_instant_is_refused_even_if_the_newest_is_finite():
    buf = make_buffer(max_age_s=0.3, max_skew_s=0.05)
    buf.add_image("wrist", 1.00, frame(1))
    buf.add_image("front", 1.00, frame(2))
    buf.add_joint_state(0.99, JOINTS, [0.1, float("nan"), 0.3])
    buf.add_joint_state(1.01, JOINTS, [0.1, 0.2, 0.3])
    with pytest.raises(StaleObservation, match="joint 'j2' position at the observation instant is nan"):
        buf.assemble(1.02, "pick")


def test_all_problems_are_listed():
    buf = make_buffer(max_age_s=0.2, max_skew_s=0.05)
    buf.add_image("wrist", 0.65, frame(1))                 # too old
    buf.add_image("front", 0.90, frame(2))                 # fresh but 0.1 s from the joint state
    buf.add_joint_state(1.0, ["j1", "j3", "gripper"], [0.0, 0.0, 0.0])
    with pytest.raises(StaleObservation) as info:
        buf.assemble(1.0, "pick")
    reasons = info.value.reasons
    assert "camera 'wrist' last frame 0.35 s old (max 0.20 s)" in reasons
    assert "camera 'front' nearest frame is 0.100 s from the observation instant (max skew 0.050 s)" in reasons
    assert "joint 'j2' missing from joint states" in reasons
    assert any("['gripper']" in r for r in reasons)          # hint: names the publisher does send
    assert isinstance(info.value, ValueError) and "wrist" in str(info.value)


def test_no_input_and_old_joint_state():
    buf = make_buffer()
    with pytest.raises(StaleObservation) as info:
        buf.assemble(1.0, "pick")
    assert info.value.reasons == ["no joint state yet", "no frame from camera 'front' yet",
                                  "no frame from camera 'wrist' yet"]
    buf.add_joint_state(0.5, JOINTS, [0, 0, 0])
    for cam in ("front", "wrist"):
        buf.add_image(cam, 0.5, frame(0))
    with pytest.raises(StaleObservation) as info:
        buf.assemble(1.0, "pick")
    assert any(r.startswith("joint state for ['j1', 'j2', 'j3'] 0.50 s old") for r in info.value.reasons)


def test_joints_matched_by_name_in_any_order_and_extra_ignored():
    buf = make_buffer()
    for cam in ("front", "wrist"):
        buf.add_image(cam, 1.0, frame(0))
    buf.add_joint_state(1.0, ["finger", "j3", "j1", "j2"], [9.0, 3.0, 1.0, 2.0])
    np.testing.assert_array_equal(buf.assemble(1.0, "x").observation.state, [1.0, 2.0, 3.0])
    # split publishers (arm + gripper) and a late, older message that must not win
    buf.add_joint_state(1.01, ["j2"], [20.0])
    buf.add_joint_state(0.99, ["j2"], [-1.0])
    for cam in ("front", "wrist"):
        buf.add_image(cam, 1.01, frame(0))
    np.testing.assert_array_equal(buf.assemble(1.01, "x").observation.state, [1.0, 20.0, 3.0])


def test_nan_joint_is_stored_but_refused():
    buf = make_buffer()
    for cam in ("front", "wrist"):
        buf.add_image(cam, 1.0, frame(0))
    buf.add_joint_state(1.0, JOINTS, [0.0, float("nan"), 0.0])
    with pytest.raises(StaleObservation) as info:
        buf.assemble(1.0, "x")
    assert info.value.reasons == ["joint 'j2' position is nan (not finite)"]


def test_bad_inputs_raise_value_error():
    buf = make_buffer()
    with pytest.raises(ValueError, match="unknown camera 'top'"):
        buf.add_image("top", 1.0, frame(0))
    with pytest.raises(ValueError, match="uint8 RGB"):
        buf.add_image("front", 1.0, np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="2 names but 3 positions"):
        buf.add_joint_state(1.0, ["j1", "j2"], [0, 0, 0])
    with pytest.raises(ValueError, match="repeats"):
        buf.add_joint_state(1.0, ["j1", "j1"], [0, 0])


def test_resize_on_assemble_and_the_observation_owns_its_pixels():
    buf = make_buffer(camera_sizes={"front": (8, 10)})
    images = {cam: frame(5, (6, 6)) for cam in ("front", "wrist")}
    for cam, image in images.items():
        buf.add_image(cam, 1.0, image)
    buf.add_joint_state(1.0, JOINTS, [0, 0, 0])
    obs = buf.assemble(1.0, "x").observation
    assert obs.images["front"].shape == (8, 10, 3) and obs.images["wrist"].shape == (6, 6, 3)
    obs.images["wrist"][:] = 0
    assert images["wrist"][0, 0, 0] == 5
    assert buf.assemble(1.0, "x", camera_sizes={"wrist": (3, 3)}).observation.images["wrist"].shape == (3, 3, 3)


def png_frame(value: int) -> EncodedFrame:
    ok, png = cv2.imencode(".png", frame(value)[..., ::-1])
    assert ok
    return EncodedFrame("png", png.tobytes())


def corrupt_png_frame() -> EncodedFrame:
    """A header that passes the arrival checks, pixels that do not decode."""
    return EncodedFrame("png", png_frame(1).data[:40])


def test_encoded_frames_are_decoded_only_when_assembled_and_only_once(monkeypatch):
    """Compressed cameras publish more frames than the policy reads: only the picked ones are decoded, once."""
    import gem_ros.core.observation.images as images

    decoded = []
    real_decode = images.decode_compressed
    monkeypatch.setattr(images, "decode_compressed", lambda *args: decoded.append(1) or real_decode(*args))
    buf = make_buffer(max_age_s=0.2, max_skew_s=0.05)
    for k in range(5):                                   # 5 frames per camera arrive; none is decoded on arrival
        buf.add_image("front", 1.0 + 0.02 * k, png_frame(10 + k))
        buf.add_image("wrist", 1.0 + 0.02 * k, png_frame(20 + k))
    buf.add_joint_state(1.08, JOINTS, [0, 0, 0])
    buf.check_fresh(1.09)
    assert decoded == []
    for _ in range(2):                                   # the same frames again: no second decode
        obs = buf.assemble(1.09, "x").observation
        assert obs.images["front"][0, 0, 0] == 14 and obs.images["wrist"][0, 0, 0] == 24
    assert len(decoded) == 2
    obs.images["front"][:] = 0                           # the policy's copy is its own, the cached frame unchanged
    assert buf.assemble(1.09, "x").observation.images["front"][0, 0, 0] == 14


def test_decode_newest_decodes_ahead_what_assemble_will_pick(monkeypatch):
    import gem_ros.core.observation.images as images

    decoded = []
    real_decode = images.decode_compressed
    monkeypatch.setattr(images, "decode_compressed", lambda *args: decoded.append(1) or real_decode(*args))
    buf = make_buffer(max_age_s=0.2, max_skew_s=0.05)
    for k in range(3):
        buf.add_image("front", 1.0 + 0.02 * k, png_frame(10 + k))
        buf.add_image("wrist", 1.0 + 0.02 * k, png_frame(20 + k))
    buf.add_joint_state(1.04, JOINTS, [0, 0, 0])
    buf.decode_newest()
    assert len(decoded) == 2                             # the newest frame of each camera, nothing older
    assert buf.assemble(1.05, "x").observation.images["wrist"][0, 0, 0] == 22 and len(decoded) == 2


def test_an_undecodable_frame_is_dropped_as_if_it_never_arrived_and_a_bad_format_is_refused_on_arrival():
    buf = make_buffer(max_age_s=0.2, max_skew_s=0.05)
    buf.add_image("front", 0.98, png_frame(7))
    buf.add_image("front", 1.0, corrupt_png_frame())                 # the newest front frame is corrupt
    buf.add_image("wrist", 1.0, png_frame(3))
    buf.add_joint_state(1.0, JOINTS, [0, 0, 0])
    timed = buf.assemble(1.0, "x")
    assert timed.image_stamps == {"front": 0.98, "wrist": 1.0} and timed.observation.images["front"][0, 0, 0] == 7
    assert buf.undecodable_frames == 1 and "camera 'front': could not decode" in buf.last_decode_error
    assert buf.assemble(1.0, "x").image_stamps["front"] == 0.98 and buf.undecodable_frames == 1   # gone for good
    only_corrupt = make_buffer(max_age_s=0.2, max_skew_s=0.05)
    only_corrupt.add_image("front", 1.0, corrupt_png_frame())
    only_corrupt.add_image("wrist", 1.0, png_frame(3))
    only_corrupt.add_joint_state(1.0, JOINTS, [0, 0, 0])
    with pytest.raises(StaleObservation, match="no frame from camera 'front'.*camera 'front' frame at 1.000 s "
                                               "dropped: could not decode"):
        only_corrupt.assemble(1.0, "x")
    with pytest.raises(ValueError, match="compressedDepth"):
        EncodedFrame("16UC1; compressedDepth png", b"\x00" * 20)
    with pytest.raises(ValueError, match="no data"):
        EncodedFrame("jpeg", b"")
    with pytest.raises(ValueError, match="neither PNG nor JPEG"):   # no header: refused before the buffer
        EncodedFrame("jpeg", b"not a jpeg")


def test_future_stamps_are_reported_as_clock_mismatch():
    buf = make_buffer()
    for cam in ("front", "wrist"):
        buf.add_image(cam, 5.0, frame(0))
    buf.add_joint_state(5.0, JOINTS, [0, 0, 0])
    with pytest.raises(StaleObservation) as info:
        buf.assemble(1.0, "x")
    assert len(info.value.reasons) == 3 and all("use_sim_time" in r for r in info.value.reasons)


def test_health_and_clear():
    buf = make_buffer()
    assert buf.health(1.0) == {"camera/front": np.inf, "camera/wrist": np.inf, "joint_states": np.inf}
    buf.add_image("front", 0.75, frame(0))
    buf.add_joint_state(0.9, JOINTS, [0, 0, 0])
    health = buf.health(1.0)
    assert health["camera/front"] == pytest.approx(0.25) and health["joint_states"] == pytest.approx(0.1)
    buf.clear()
    assert buf.health(1.0)["joint_states"] == np.inf


def test_thread_safety_smoke():
    buf = make_buffer(history=3, max_age_s=1.0, max_skew_s=1.0)
    errors, stop = [], threading.Event()
    start = time.monotonic()

    def guarded(body):
        def run():
            try:
                while not stop.is_set():
                    body()
            except Exception as error:   # noqa: BLE001 (any exception fails the test below)
                errors.append(error)
        return run

    def add_images():
        for cam in ("front", "wrist"):
            buf.add_image(cam, time.monotonic() - start, frame(1))

    def add_joints():
        buf.add_joint_state(time.monotonic() - start, JOINTS[::-1], [3.0, 2.0, 1.0])

    assembled = []

    def assemble():
        try:
            assembled.append(buf.assemble(time.monotonic() - start, "x", {"front": (2, 2)}))
        except StaleObservation:
            pass   # expected until the first inputs arrive

    threads = [threading.Thread(target=guarded(f)) for f in (add_images, add_joints, assemble)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    stop.set()
    for thread in threads:
        thread.join(5.0)
    assert not errors, errors
    assert assembled and all(np.array_equal(t.observation.state, [1.0, 2.0, 3.0]) for t in assembled)
