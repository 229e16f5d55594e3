"""Observation: camera/joint-state decoding, time alignment and freshness checks into the policy's input."""
from gem_ros.core.observation.buffer import (ObservationBuffer, ObservationConfig, StaleObservation,
                                             TimedObservation)
from gem_ros.core.observation.images import (COLOR_ENCODINGS, DEPTH_ENCODINGS, EncodedFrame, check_raw_layout,
                                             decode_compressed, decode_depth, decode_raw, resize_to)

__all__ = [
    "COLOR_ENCODINGS", "DEPTH_ENCODINGS", "EncodedFrame", "ObservationBuffer", "ObservationConfig", "StaleObservation",
    "TimedObservation", "check_raw_layout", "decode_compressed", "decode_depth", "decode_raw", "resize_to",
]
