"""gem_ros.core.kinematics.srdf: named states and collision exemptions from real SRDFs (example-robot-data's Panda,
UR5 and xArm7, with their URDFs) and refusals of broken ones, each naming the file and the element."""
from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

from gem_ros.core.kinematics import parse_urdf
from gem_ros.core.kinematics.srdf import load_srdf


def _robots() -> Path:
    try:
        return Path(importlib.metadata.distribution("example-robot-data").locate_file(
            "cmeel.prefix/share/example-robot-data/robots"))
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("example-robot-data is not installed (pip install .[arms])")


def _srdf_and_urdf(robot: str, srdf: str, urdf: str):
    root = _robots() / f"{robot}_description"
    return load_srdf(root / "srdf" / srdf), parse_urdf(root / "urdf" / urdf)


def test_panda_named_state_disabled_pairs_and_names_match_its_urdf():
    srdf, urdf = _srdf_and_urdf("panda", "panda.srdf", "panda.urdf")
    assert srdf.robot_name == "panda"
    assert set(srdf.groups) == {"arm", "hand", "arm_and_hand"}
    assert srdf.groups["arm_and_hand"].subgroups == ("arm", "hand")
    assert srdf.groups["arm"].joints == tuple(f"panda_joint{i}" for i in range(1, 8))
    home = srdf.named_state("default")   # found without naming its group: only arm_and_hand defines it
    assert home == pytest.approx({"panda_finger_joint1": 0.001, "panda_joint1": 0.0, "panda_joint2": -0.785398,
                                  "panda_joint3": 0.0, "panda_joint4": -2.35619, "panda_joint5": 0.0,
                                  "panda_joint6": 1.5707, "panda_joint7": 0.785398})
    assert srdf.named_state("default", group="arm_and_hand") == home
    text = (_robots() / "panda_description/srdf/panda.srdf").read_text()
    assert len(srdf.disabled_pairs) == text.count("<disable_collisions") == 35
    assert srdf.is_collision_disabled("panda_hand", "panda_leftfinger")
    assert srdf.is_collision_disabled("panda_leftfinger", "panda_hand")   # unordered
    assert not srdf.is_collision_disabled("panda_link1", "panda_hand")    # the hand can hit the shoulder
    srdf.check_names([j.name for j in urdf.joints], urdf.links)


def test_ur5_srdf_has_only_disabled_pairs():
    srdf, urdf = _srdf_and_urdf("ur", "ur5.srdf", "ur5_robot.urdf")
    assert srdf.groups == {} and srdf.named_states == {}
    assert len(srdf.disabled_pairs) == 10
    assert srdf.is_collision_disabled("upper_arm_link", "shoulder_link")
    assert not srdf.is_collision_disabled("wrist_3_link", "base_link")
    srdf.check_names([j.name for j in urdf.joints], urdf.links)
    with pytest.raises(ValueError, match=r"no named state 'home' \(group/state: \[\]\)"):
        srdf.named_state("home")


def test_xarm7_named_states_and_a_path_reads_like_its_xml_text():
    srdf, urdf = _srdf_and_urdf("xarm", "xarm7.srdf", "xarm7.urdf")
    assert sorted(srdf.named_states["xarm7"]) == ["hold-up", "home"]
    assert srdf.named_state("hold-up", "xarm7") == {f"joint{i}": (-1.5708 if i == 6 else 0.0) for i in range(1, 8)}
    assert len(srdf.disabled_pairs) == 18
    srdf.check_names([j.name for j in urdf.joints], urdf.links)
    from_text = load_srdf((_robots() / "xarm_description/srdf/xarm7.srdf").read_text())
    assert (from_text.named_states, from_text.disabled_pairs) == (srdf.named_states, srdf.disabled_pairs)
    with pytest.raises(ValueError, match=r"group 'xarm7' has no named state 'ready' \(it has \['hold-up', 'home'\]\)"):
        srdf.named_state("ready", "xarm7")
    with pytest.raises(ValueError, match=r"no group 'arm' \(groups: \['xarm7'\]\)"):
        srdf.named_state("home", "arm")


def test_names_the_urdf_lacks_are_all_listed():
    srdf, urdf = _srdf_and_urdf("panda", "panda.srdf", "panda.urdf")
    joints = [j.name for j in urdf.joints if j.name != "panda_joint7"]
    links = [n for n in urdf.links if n != "panda_link7"]
    with pytest.raises(ValueError, match="does not match the robot description") as error:
        srdf.check_names(joints, links)
    message = str(error.value)
    assert "group 'arm': unknown joint 'panda_joint7'" in message
    assert "group_state arm_and_hand/default: unknown joint 'panda_joint7'" in message
    assert "disable_collisions ['panda_hand', 'panda_link7']: unknown link 'panda_link7'" in message


def _srdf(body: str) -> str:
    return f'<?xml version="1.0"?>\n<robot name="r">\n{body}\n</robot>'


_ARM = '<group name="arm"><joint name="j1"/><joint name="j2"/></group>'


def test_default_collisions_off_with_re_enabled_pairs_and_multi_dof_states():
    srdf = load_srdf(_srdf(_ARM + """
        <disable_default_collisions link="camera"/>
        <enable_collisions link1="camera" link2="gripper"/>
        <disable_collisions link1="a" link2="b" reason="Adjacent"/>
        <group_state name="park">
          <joint name="base" value="0 0 0.2 0 0 0 1"/><joint name="j1" value="1e-1"/>
        </group_state>
    """))
    assert srdf.is_collision_disabled("camera", "table_link")
    assert not srdf.is_collision_disabled("gripper", "camera")
    assert srdf.is_collision_disabled("b", "a") and not srdf.is_collision_disabled("a", "c")
    # a state without `group` (pinocchio-style SRDFs) is kept under "", a multi-DOF value as a tuple
    assert srdf.named_states[""]["park"] == {"base": (0.0, 0.0, 0.2, 0.0, 0.0, 0.0, 1.0), "j1": 0.1}
    with pytest.raises(ValueError, match=r"named state /park sets multi-DOF joints \['base'\]"):
        srdf.named_state("park")


def test_a_state_defined_by_two_groups_needs_its_group_named():
    srdf = load_srdf(_srdf(_ARM + '<group name="hand"><joint name="f"/></group>'
                           '<group_state name="home" group="arm"><joint name="j1" value="0"/></group_state>'
                           '<group_state name="home" group="hand"><joint name="f" value="0.04"/></group_state>'))
    with pytest.raises(ValueError, match=r"'home' is defined by groups \['arm', 'hand'\]; name the group"):
        srdf.named_state("home")
    assert srdf.named_state("home", "hand") == {"f": 0.04}


@pytest.mark.parametrize("body, message", [
    ('<group_state name="home" group="arm"><joint name="j1" value="abc"/></group_state>',
     r"group_state arm/home, joint 'j1': value 'abc' is not a number"),
    ('<group_state name="home" group="arm"><joint name="j1" value="nan"/></group_state>',
     r"group_state arm/home, joint 'j1': value 'nan' is not finite"),
    ('<group_state name="home" group="arm"><joint name="j1"/></group_state>',
     r"joint 'j1' of group_state arm/home has no 'value' attribute"),
    ('<group_state name="home" group="arm"><joint name="j1" value="0"/><joint name="j1" value="1"/></group_state>',
     r"group_state arm/home sets joint 'j1' twice"),
    ('<group_state name="home" group="arm"/>', r"group_state arm/home sets no joint"),
    ('<group_state name="home" group="arm"><joint name="j1" value="0"/></group_state>'
     '<group_state name="home" group="arm"><joint name="j1" value="1"/></group_state>',
     r"group_state arm/home is defined twice"),
    ('<group_state name="home" group="legs"><joint name="j1" value="0"/></group_state>',
     r"group_state 'home' names group 'legs', which is not defined \(groups: \['arm'\]\)"),
    ('<disable_collisions link1="a"/>', r"a <disable_collisions> has no 'link2' attribute"),
    ('<disable_collisions link1="a" link2="a"/>', r"<disable_collisions> pairs link 'a' with itself"),
    ('<disable_collisions link1="a" link2="b"/><enable_collisions link1="b" link2="a"/>',
     r"pairs both disabled and enabled: \[\['a', 'b'\]\]"),
    ('<disable_default_collisions/>', r"a <disable_default_collisions> has no 'link' attribute"),
    ('<group name="arm"/>', r"group 'arm' is defined twice"),
    ('<group name="both"><group name="arm"/><group name="hand"/></group>',
     r"group 'both' includes group 'hand', which is not defined"),
    ('<group name="x"><group name="y"/></group><group name="y"><group name="x"/></group>',
     r"group 'x' includes itself through its subgroups"),
    ('<group name="c"><chain base_link="base"/></group>', r"a <chain> of group 'c' has no 'tip_link' attribute"),
])
def test_broken_srdfs_are_refused_naming_file_and_element(body, message):
    with pytest.raises(ValueError, match=r"robot_description_semantic string\): " + message):
        load_srdf(_srdf(_ARM + body))


def test_unreadable_files_and_non_srdf_xml_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_srdf(tmp_path / "missing.srdf")
    broken = tmp_path / "broken.srdf"
    broken.write_text("<robot><group name='arm'></robot>")
    with pytest.raises(ValueError, match=rf"SRDF {broken}: not valid XML \(mismatched tag"):
        load_srdf(broken)
    with pytest.raises(ValueError, match=r"the root element is <launch>, expected <robot>"):
        load_srdf("<launch/>")
