"""What bench/ros_overhead.py reports: per-chunk analysis of the nodes' timestamps, the table rows, and the
executor's compute alone (no ROS) as the floor under the OVERHEAD row."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
HOME = [0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785, 0.04, 0.04]   # panda ready pose + gripper fingers
CPU_KEYS = ("cpu_robot", "cpu_policy", "cpu_executor", "cpu_composed", "cpu_all")   # per process of a layout


def pct(values, q):
    return float(np.percentile(values, q)) if len(values) else float("nan")


def compute_floor(names: list[str], repeats: int = 2000) -> dict:
    """The executor's own work per chunk with no ROS, no DDS and no other process: `on_chunk` (planning) and one
    50 Hz `tick` (segment + safety filter) plus building the JointTrajectory message, in a quiet loop (p50, ms).
    What the OVERHEAD row adds on top of this is scheduling, GIL and transport on a shared machine."""
    from gem_ros.core.executor_setup import PARAMETERS, build_controller
    from gem_ros.nodes.backends import to_joint_trajectory
    from gem_ros.nodes.params import bringup_config, node_parameters

    values = dict(PARAMETERS)
    values.update({p.name: p.value for p in node_parameters(
        bringup_config("panda"), "gem_executor", urdf_path=str(REPO / "urdf/panda/panda.urdf"), use_sim_time=False)})
    controller = build_controller(values)
    chunk = np.tile(np.r_[HOME[:7], HOME[7] + HOME[8]], (16, 1))
    planning, ticking, message = [], [], []
    for i in range(repeats):
        now = 100.0 + 0.02 * i
        controller.on_joint_state(names, HOME, [0.0] * len(names), now, now)
        if i % 10 == 0:   # a new chunk every 0.2 s, as a 50 ms policy with re-planning does
            start = time.perf_counter()
            controller.on_chunk(controller.expected_channels, 0.1, chunk, controller.mapper.cfg.kind, now - 0.01, now)
            planning.append(time.perf_counter() - start)
        start = time.perf_counter()
        command = controller.tick(now)
        ticking.append(time.perf_counter() - start)
        if command.kind == "trajectory":
            start = time.perf_counter()
            to_joint_trajectory(command.trajectory)
            message.append(time.perf_counter() - start)
    ms = lambda values: 1e3 * float(np.median(values[len(values) // 10:]))  # noqa: E731  (after warm-up)
    return {"planning": ms(planning), "tick": ms(ticking), "message": ms(message)}


def analyse(record: dict) -> dict:
    """Per chunk: match the policy's publish to the executor's planning of it (by arrival order after it)."""
    inference = record["inference"]
    published = record["published"]
    chunk_work = sorted(record["chunk_work"])
    ticks = sorted(record["tick_work"])
    # With replan_on_chunk the executor sends the new plan from the chunk callback; otherwise the next tick does.
    senders = sorted(ticks + record["replan_work"])
    sent = sorted(record["sent"])
    frame_age, after_inference, transport, planning, tick_wait, tick_cost, overhead = ([] for _ in range(7))
    for (index, obs_stamp, published_at), (started, ended) in zip(published[1:], inference[1:]):
        planned = next(((s, e) for s, e in chunk_work if s >= published_at), None)
        if planned is None:
            continue
        tick = next(((s, e) for s, e in senders if s >= planned[1]), None)
        out = next(((s, e) for s, e in sent if tick and s >= tick[0]), None)
        if tick is None or out is None:
            continue
        frame_age.append(started - obs_stamp)
        after_inference.append(published_at - ended)
        transport.append(planned[0] - published_at)
        planning.append(planned[1] - planned[0])
        tick_wait.append(tick[0] - planned[1])
        tick_cost.append(out[1] - tick[0])
        overhead.append(after_inference[-1] + transport[-1] + planning[-1] + tick_cost[-1])
    # Holds while the policy was producing (the bench stops the policy first; the hold after it is expected).
    horizon_end = published[-1][2] if published else 0.0
    holds = [reason for at, reason in record["holds"] if published and published[0][2] < at < horizon_end]
    ms = lambda values: [v * 1e3 for v in values]  # noqa: E731
    stats = record["stats"]
    callbacks = [e - s for s, e in record["image_callback"]]
    return {"chunks": len(published), "frame_age": ms(frame_age), "after_inference": ms(after_inference),
            "transport": ms(transport), "planning": ms(planning), "tick_wait": ms(tick_wait),
            "tick_cost": ms(tick_cost), "overhead": ms(overhead), "image_callback": ms(callbacks),
            "tick_work": ms([e - s for s, e in ticks]), "inference": ms([e - s for s, e in inference]),
            "period_mean_ms": stats["tick_period_mean_s"] * 1e3, "period_std_ms": stats["tick_period_std_s"] * 1e3,
            "jitter_max_ms": stats["tick_jitter_max_s"] * 1e3, "holds": len(holds),
            "heartbeat_gap_max_ms": stats.get("policy_heartbeat_gap_max_s", float("nan")) * 1e3,
            "hold_reason": max(set(holds), key=holds.count)[:40] if holds else "",
            "cpu": " / ".join(f"{record[k]:.0f}" for k in CPU_KEYS if k in record)}


def p50(key, digits=2):
    return lambda r: f"{pct(r[key], 50):.{digits}f}"


def p50_p95(key, digits=2):
    return lambda r: f"{pct(r[key], 50):.{digits}f} / {pct(r[key], 95):.{digits}f}"


ROWS = [
    ("chunks produced", lambda r: f"{r['chunks']}"),
    ("inference p50 / p95 ms", p50_p95("inference", 1)),
    ("OVERHEAD per chunk p50 / p95 ms (goal <= 1)", p50_p95("overhead")),
    ("  inference end -> chunk published p50 ms", p50("after_inference")),
    ("  DDS policy -> executor p50 ms", p50("transport")),
    ("  executor chunk planning p50 ms", p50("planning")),
    ("  replan/tick: segment + safety + publish p50 ms", p50("tick_cost")),
    ("frame age at inference start p50 / p95 ms", p50_p95("frame_age", 1)),
    ("chunk planned -> plan sent p50 ms", p50("tick_wait", 2)),
    ("image callback p50 / p95 ms", p50_p95("image_callback")),
    ("tick work p50 / p95 ms", p50_p95("tick_work")),
    ("tick period mean / std ms (50 Hz = 20)", lambda r: f"{r['period_mean_ms']:.2f} / {r['period_std_ms']:.2f}"),
    ("tick jitter max ms", lambda r: f"{r['jitter_max_ms']:.2f}"),
    ("policy heartbeat gap max ms (timeout 100)", lambda r: f"{r['heartbeat_gap_max_ms']:.1f}"),
    ("holds while the policy ran (starvation etc.)", lambda r: f"{r['holds']}"),
    ("  most frequent reason", lambda r: r["hold_reason"] or "-"),
    ("CPU % of a core: robot / policy / executor", lambda r: r["cpu"]),
]


