"""An rclpy ActionClient that a node spinning in another thread can never see half-built.

rclpy (Kilted) registers a new ActionClient with its node (`add_waitable`) before it creates the client's lock, so
an executor thread that collects the node's waitables at that instant calls `get_num_entities()` on it and dies
with "AttributeError: 'ActionClient' object has no attribute '_lock'": the spin thread ends, and nothing on that
node is served again (gem_eval sim lost a whole run to it). gem_demo's commander, and the executor's trajectory
backends (created at configure while the node spins), create clients on spinning nodes.
"""
from __future__ import annotations

import threading

from rclpy.action import ActionClient


class SpinSafeActionClient(ActionClient):
    def __init__(self, *args, **kwargs):
        self._lock = threading.Lock()   # before rclpy registers the client; it then assigns a fresh one
        super().__init__(*args, **kwargs)
