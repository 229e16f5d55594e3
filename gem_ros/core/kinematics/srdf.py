"""SRDF (the semantic robot description of a MoveIt configuration): groups, named joint states, and the link pairs
whose collisions are not checked. ROS-free; read with the standard library's ElementTree.

Elements and attributes as moveit/srdfdom reads them (moveit/srdfdom:src/model.cpp, include/srdfdom/model.h):
`<group name>` with `<joint name>`, `<link name>`, `<chain base_link tip_link>`, `<group name>` (subgroup);
`<group_state name group>` with `<joint name value>` (several space-separated values for a multi-DOF joint; a
state without `group`, as pinocchio-style SRDFs write them, is kept under the group "": MoveIt would drop it);
`<disable_collisions link1 link2 [reason]>`; `<disable_default_collisions link>` (a link whose collisions are off
unless a pair re-enables them) and `<enable_collisions link1 link2>`; `<virtual_joint name ...>` (a joint name
that group states may use). Other elements (end_effector, passive_joint, ...) are not needed here and skipped.

srdfdom logs and skips what it cannot use; this parser refuses it instead (ValueError naming the file and the
element), because a silently dropped disabled pair or joint value changes what the collision checker and the
home move do. Names are checked against the URDF separately (`Srdf.check_names`), as srdfdom does with its URDF.
"""
from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

JointValue = float | tuple[float, ...]   # a tuple only for multi-DOF joints (planar / floating virtual joints)


@dataclass(frozen=True)
class SrdfGroup:
    """One `<group>` as written: its members are resolved against the URDF by MoveIt (chains need the tree)."""

    name: str
    joints: tuple[str, ...] = ()
    links: tuple[str, ...] = ()
    chains: tuple[tuple[str, str], ...] = ()   # (base_link, tip_link)
    subgroups: tuple[str, ...] = ()


@dataclass(frozen=True)
class Srdf:
    robot_name: str
    groups: dict[str, SrdfGroup]
    named_states: dict[str, dict[str, dict[str, JointValue]]]   # group ("" = none) -> state -> joint -> value
    disabled_pairs: set[frozenset[str]]                           # <disable_collisions>, each pair unordered
    no_default_collision_links: frozenset[str] = frozenset()     # <disable_default_collisions>
    enabled_pairs: set[frozenset[str]] = field(default_factory=set)   # <enable_collisions>
    virtual_joints: tuple[str, ...] = ()
    source: str = "<SRDF>"

    def is_collision_disabled(self, link_a: str, link_b: str) -> bool:
        """Whether the pair is exempt from collision checking: listed in disable_collisions, or one of the links has
        its default collisions disabled and the pair is not re-enabled (srdfdom model.h's reading)."""
        pair = frozenset((link_a, link_b))
        if pair in self.disabled_pairs:
            return True
        if pair in self.enabled_pairs:
            return False
        return link_a in self.no_default_collision_links or link_b in self.no_default_collision_links

    def named_state(self, name: str, group: str | None = None) -> dict[str, float]:
        """The joint positions of `<group_state name>` (in `group`, or in the one group that defines it).
        ValueError lists what the SRDF has when the name is unknown or defined by several groups."""
        if group is not None:
            if group not in self.groups and group not in self.named_states:
                raise ValueError(f"{self.source}: no group {group!r} (groups: {sorted(self.groups)})")
            states = self.named_states.get(group, {})
            if name not in states:
                raise ValueError(f"{self.source}: group {group!r} has no named state {name!r} "
                                 f"(it has {sorted(states)})")
            values = states[name]
        else:
            owners = sorted(g for g, states in self.named_states.items() if name in states)
            if not owners:
                available = sorted({f"{g}/{s}" for g, states in self.named_states.items() for s in states})
                raise ValueError(f"{self.source}: no named state {name!r} (group/state: {available})")
            if len(owners) > 1:
                raise ValueError(f"{self.source}: named state {name!r} is defined by groups {owners}; name the group")
            group, values = owners[0], self.named_states[owners[0]][name]
        multi = sorted(j for j, v in values.items() if isinstance(v, tuple))
        if multi:
            raise ValueError(f"{self.source}: named state {group}/{name} sets multi-DOF joints {multi}, "
                             "which a joint-space move cannot command")
        return dict(values)

    def check_names(self, joint_names: Iterable[str], link_names: Iterable[str]) -> None:
        """ValueError listing every joint and link the SRDF names that the robot description (URDF) lacks."""
        joints, links = set(joint_names) | set(self.virtual_joints), set(link_names)
        problems = []
        for group in self.groups.values():
            chain_links = {link for chain in group.chains for link in chain}
            problems += [f"group {group.name!r}: unknown joint {j!r}" for j in group.joints if j not in joints]
            problems += [f"group {group.name!r}: unknown link {n!r}" for n in sorted(set(group.links) | chain_links)
                         if n not in links]
        for group, states in self.named_states.items():
            for state, values in states.items():
                problems += [f"group_state {group}/{state}: unknown joint {j!r}" for j in values if j not in joints]
        for tag, pairs in (("disable_collisions", self.disabled_pairs), ("enable_collisions", self.enabled_pairs)):
            for pair in sorted(pairs, key=sorted):
                problems += [f"{tag} {sorted(pair)}: unknown link {n!r}" for n in sorted(pair) if n not in links]
        problems += [f"disable_default_collisions: unknown link {n!r}"
                     for n in sorted(self.no_default_collision_links) if n not in links]
        if problems:
            raise ValueError(f"{self.source} does not match the robot description: " + "; ".join(problems))


def load_srdf(path_or_xml: str | Path) -> Srdf:
    """Parse an SRDF given as a file path or as XML text (a string starting with '<', e.g. the
    robot_description_semantic parameter). OSError when the file cannot be read, ValueError naming the problem."""
    if isinstance(path_or_xml, str) and path_or_xml.lstrip().startswith("<"):
        source, text = "SRDF (robot_description_semantic string)", path_or_xml
    else:
        source = f"SRDF {path_or_xml}"
        text = Path(path_or_xml).read_text(encoding="utf-8")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as error:
        raise ValueError(f"{source}: not valid XML ({error})") from error
    if root.tag != "robot":
        raise ValueError(f"{source}: the root element is <{root.tag}>, expected <robot>")
    return _parse(root, source)


def _attr(element: ET.Element, name: str, source: str, where: str) -> str:
    value = (element.get(name) or "").strip()
    if not value:
        raise ValueError(f"{source}: {where} has no {name!r} attribute")
    return value


def _parse(root: ET.Element, source: str) -> Srdf:
    virtual_joints = tuple(_attr(e, "name", source, "<virtual_joint>") for e in root.findall("virtual_joint"))
    groups: dict[str, SrdfGroup] = {}
    for element in root.findall("group"):
        name = _attr(element, "name", source, "a <group>")
        if name in groups:
            raise ValueError(f"{source}: group {name!r} is defined twice")
        where = f"group {name!r}"
        groups[name] = SrdfGroup(
            name,
            joints=tuple(_attr(e, "name", source, f"a <joint> of {where}") for e in element.findall("joint")),
            links=tuple(_attr(e, "name", source, f"a <link> of {where}") for e in element.findall("link")),
            chains=tuple((_attr(e, "base_link", source, f"a <chain> of {where}"),
                          _attr(e, "tip_link", source, f"a <chain> of {where}")) for e in element.findall("chain")),
            subgroups=tuple(_attr(e, "name", source, f"a subgroup of {where}") for e in element.findall("group")))
    _check_subgroups(groups, source)

    named_states: dict[str, dict[str, dict[str, JointValue]]] = {}
    for element in root.findall("group_state"):
        name = _attr(element, "name", source, "a <group_state>")
        group = (element.get("group") or "").strip()
        if group and group not in groups:
            raise ValueError(f"{source}: group_state {name!r} names group {group!r}, which is not defined "
                             f"(groups: {sorted(groups)})")
        states = named_states.setdefault(group, {})
        if name in states:
            raise ValueError(f"{source}: group_state {group}/{name} is defined twice")
        states[name] = _state_values(element, f"group_state {group}/{name}", source)

    def pairs(tag: str) -> set[frozenset[str]]:
        found = set()
        for element in root.findall(tag):
            link1, link2 = (_attr(element, key, source, f"a <{tag}>") for key in ("link1", "link2"))
            if link1 == link2:
                raise ValueError(f"{source}: <{tag}> pairs link {link1!r} with itself")
            found.add(frozenset((link1, link2)))
        return found

    disabled, enabled = pairs("disable_collisions"), pairs("enable_collisions")
    contradictory = disabled & enabled
    if contradictory:
        raise ValueError(f"{source}: pairs both disabled and enabled: {sorted(sorted(p) for p in contradictory)}")
    no_default = frozenset(_attr(e, "link", source, "a <disable_default_collisions>")
                           for e in root.findall("disable_default_collisions"))
    return Srdf((root.get("name") or "").strip(), groups, named_states, disabled, no_default, enabled,
                virtual_joints, source)


def _state_values(element: ET.Element, where: str, source: str) -> dict[str, JointValue]:
    values: dict[str, JointValue] = {}
    for joint in element.findall("joint"):
        name = _attr(joint, "name", source, f"a <joint> of {where}")
        text = _attr(joint, "value", source, f"joint {name!r} of {where}")
        if name in values:
            raise ValueError(f"{source}: {where} sets joint {name!r} twice")
        try:
            numbers = tuple(float(token) for token in text.split())
        except ValueError:
            raise ValueError(f"{source}: {where}, joint {name!r}: value {text!r} is not a number") from None
        if not all(math.isfinite(n) for n in numbers):
            raise ValueError(f"{source}: {where}, joint {name!r}: value {text!r} is not finite")
        values[name] = numbers[0] if len(numbers) == 1 else numbers
    if not values:
        raise ValueError(f"{source}: {where} sets no joint")
    return values


def _check_subgroups(groups: Mapping[str, SrdfGroup], source: str) -> None:
    """Every subgroup defined, and no group containing itself (srdfdom drops such groups with a log line)."""
    for group in groups.values():
        for sub in group.subgroups:
            if sub not in groups:
                raise ValueError(f"{source}: group {group.name!r} includes group {sub!r}, which is not defined")
    for start in groups:
        stack, seen = [start], set()
        while stack:
            for sub in groups[stack.pop()].subgroups:
                if sub == start:
                    raise ValueError(f"{source}: group {start!r} includes itself through its subgroups")
                if sub not in seen:
                    seen.add(sub)
                    stack.append(sub)
