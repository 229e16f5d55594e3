"""gem_doctor: pre-flight check of a live ROS graph against an arm's configuration and a checkpoint.

    gem_doctor --arm ur5e --checkpoint checkpoints/my_policy [--namespace left] [--sim]

Watches the graph for a couple of seconds and prints one row per check (joint states, each camera, the
controller, URDF, clock, checkpoint I/O, gem_policy / gem_executor lifecycle) with PASS / WARN / FAIL and the
fix. Exit status 1 when anything FAILs, 2 when the arguments are wrong.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import textwrap
from pathlib import Path

from gem_ros.doctor.checks import FAIL, PASS, WARN, Result, run_checks
from gem_ros.doctor.facts import Setup, load_setup

_COLOURS = {PASS: "32", WARN: "33", FAIL: "1;31"}   # ANSI green, yellow, bold red


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gem_doctor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--arm", help="an arm folder under gem_bringup/config (as arm:=)")
    which.add_argument("--config", type=Path, help="an arm's gem.yaml")
    parser.add_argument("--checkpoint", default="", help="the GEM-VLA checkpoint folder gem_policy serves")
    parser.add_argument("--namespace", default="/", help="the chain's namespace (as namespace:=)")
    parser.add_argument("--sim", action="store_true", help="the chain runs on gem_sim (as sim:=true)")
    parser.add_argument("--urdf", default="", help="URDF file the executor is given (as urdf:=); default: the "
                                                   "running executor's, else robot_description")
    parser.add_argument("--camera-rate-hz", type=float, default=None,
                        help="rate the cameras should reach (default: twice 1 / max_observation_age_s)")
    parser.add_argument("--sample-s", type=float, default=1.5, help="how long topics are watched [s]")
    return parser.parse_args(argv)


def setup_from(options: argparse.Namespace) -> Setup:
    """ValueError (unknown arm, unreadable YAML, an arm the simulator lacks) names the problem."""
    if options.arm:
        from gem_ros.bringup import arm_config

        config = arm_config(options.arm)
    else:
        config = options.config
    urdf = options.urdf
    if not urdf and options.arm and not options.sim:   # as the launch file's urdf:=auto
        from gem_ros.bringup import bundled_urdf

        urdf = str(bundled_urdf(options.arm) or "")
    return load_setup(config, options.checkpoint, options.namespace, options.sim, urdf, options.camera_rate_hz)


def render(setup: Setup, results: list[Result], file=None, width: int | None = None) -> None:
    """One row per check: status, check, what was found; the fix below a row that is not PASS. Plain text (a
    robot PC installed by rosdep has no `rich`), status coloured on a terminal."""
    file = file or sys.stdout
    width = width or shutil.get_terminal_size((120, 24)).columns
    colour = file.isatty() and not os.environ.get("NO_COLOR")
    left = max(len(r.check) for r in results) + 8   # "STATUS  check  "
    wrap = textwrap.TextWrapper(width=max(40, width - left), break_on_hyphens=False)
    print(f"gem_doctor: {setup.config} in {setup.namespace}" + (f", {setup.checkpoint}" if setup.checkpoint else ""),
          file=file)
    for r in results:
        status = f"\033[{_COLOURS[r.status]}m{r.status}\033[0m" if colour else r.status
        lines = wrap.wrap(r.message) + wrap.wrap(f"fix: {r.fix}" if r.fix else "")
        print(f"{status}  {r.check:<{left - 8}}  {lines[0] if lines else ''}", file=file)
        for line in lines[1:]:
            print(" " * left + line, file=file)
    for note in setup.notes:
        print(f"sim: {note}", file=file)
    counts = {s: sum(r.status == s for r in results) for s in (PASS, WARN, FAIL)}
    print(", ".join(f"{n} {s}" for s, n in counts.items()), file=file)


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        from rclpy.utilities import remove_ros_args

        argv = remove_ros_args(sys.argv)[1:]
    options = parse(argv)
    try:
        setup = setup_from(options)
    except ValueError as error:
        print(f"gem_doctor: {error}", file=sys.stderr)
        return 2
    from gem_ros.doctor.graph import collect

    results = run_checks(setup, collect(setup, options.sample_s))
    render(setup, results)
    return 1 if any(r.status == FAIL for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
