"""JointTrajectoryController semantics of the simulated arm's trajectory follower (ROS-free)."""
from __future__ import annotations

import numpy as np
import pytest

from gem_ros.sim.follower import TrajectoryFollower


def make():
    return TrajectoryFollower(["a", "b"], np.array([0.0, 1.0]))


def test_interpolates_from_current_state_to_points_then_holds():
    f = make()
    f.set_trajectory(["a", "b"], start_s=0.0, times_from_start_s=[1.0, 2.0], positions=[[1.0, 1.0], [3.0, 0.0]],
                     now_s=10.0)   # zero stamp = start now
    np.testing.assert_allclose(f.target(10.5), [0.5, 1.0])
    np.testing.assert_allclose(f.target(11.5), [2.0, 0.5])
    np.testing.assert_allclose(f.target(50.0), [3.0, 0.0])
    assert not f.active(12.0)


def test_new_trajectory_replaces_old_from_the_current_commanded_state():
    f = make()
    f.set_trajectory(["a"], 0.0, [2.0], [[2.0]], now_s=0.0)
    f.set_trajectory(["a"], 0.0, [1.0], [[-1.0]], now_s=1.0)   # at t=1 the old plan commanded a=1.0
    np.testing.assert_allclose(f.target(1.5), [0.0, 1.0])      # halfway from 1.0 to -1.0; old points are gone
    np.testing.assert_allclose(f.target(3.0), [-1.0, 1.0])


def test_subset_of_joints_keeps_the_others_and_past_points_are_skipped():
    f = make()
    f.set_trajectory(["b"], start_s=5.0, times_from_start_s=[1.0, 3.0], positions=[[9.0], [3.0]], now_s=7.0)
    # stamp 5 + 1 s is already past at 7 s: only the point at 8 s remains, reached from the current state.
    np.testing.assert_allclose(f.target(7.5), [0.0, 2.0])
    np.testing.assert_allclose(f.target(8.0), [0.0, 3.0])


@pytest.mark.parametrize("names, start, times, positions, message", [
    (["c"], 0.0, [1.0], [[0.0]], "unknown joints"),
    (["a"], 0.0, [1.0], [[np.nan]], "NaN"),
    (["a"], 0.0, [1.0, 1.0], [[0.0], [1.0]], "strictly increasing"),
    (["a"], -3.0, [1.0, 2.0], [[5.0], [6.0]], "ends in the past"),   # JTC rejects it; no jump to its last point
])
def test_malformed_trajectories_are_rejected_and_the_target_is_kept(names, start, times, positions, message):
    f = make()
    with pytest.raises(ValueError, match=message):
        f.set_trajectory(names, start, times, positions, now_s=0.0)
    np.testing.assert_allclose(f.target(1.0), [0.0, 1.0])


def test_a_trajectory_stamped_in_the_future_starts_at_its_stamp():
    f = make()
    f.set_trajectory(["a"], start_s=2.0, times_from_start_s=[1.0], positions=[[3.0]], now_s=0.0)
    np.testing.assert_allclose(f.target(1.5), [1.5, 1.0])   # as JTC: linear from receipt (0 s, 0.0) to (3 s, 3.0)
    np.testing.assert_allclose(f.target(3.0), [3.0, 1.0])


def test_empty_trajectory_stops_where_the_arm_is():
    f = make()
    f.set_trajectory(["a"], 0.0, [2.0], [[2.0]], now_s=0.0)
    f.set_trajectory(["a"], 0.0, [], np.zeros((0, 1)), now_s=1.0)
    np.testing.assert_allclose(f.target(5.0), [1.0, 1.0])
