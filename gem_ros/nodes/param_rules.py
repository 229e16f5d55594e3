"""When a node's parameters may change, so that `ros2 param set` is refused with the reason or takes effect.

rclpy accepts any set of a declared parameter; a node that reads its parameters once then ignores the new value
without a word. Each parameter declared through ParameterRules says what a set means:
- read_only_rule(): fixed once the node exists (ParameterDescriptor.read_only: rclpy refuses the set itself);
- Rule(when=...): may change while `when()` returns '' (e.g. a lifecycle node's configure-time parameters while it
  is unconfigured, or safety limits while no plan runs), taking effect wherever the node reads it next;
- live_rule(check, apply): takes effect at once: `check(value)` returns '' or why the value is refused, `apply(value)`
  runs once rclpy has stored it.
Values given at construction (parameter_overrides, YAML) are not checked here: the node validates them where it
reads them (configure), with its usual error; only later sets go through `when` and `check`.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult


def always() -> str:
    return ""


def any_value(value: Any) -> str:
    return ""


@dataclass(frozen=True)
class Rule:
    """`when() -> ''` (may change now) or the reason it may not; None = read-only. `check(value) -> ''` or why the
    value is refused. `apply(value)`: makes a stored value take effect (None: the node reads it itself later)."""
    when: Callable[[], str] | None = None
    check: Callable[[Any], str] = any_value
    apply: Callable[[Any], None] | None = None

    @property
    def read_only(self) -> bool:
        return self.when is None


def read_only_rule() -> Rule:
    return Rule()


def live_rule(check: Callable[[Any], str] = any_value, apply: Callable[[Any], None] | None = None) -> Rule:
    return Rule(when=always, check=check, apply=apply)


def number_check(low: float | None = None, high: float | None = None, *, low_open: bool = False) -> Callable:
    """A check for a finite int/float in [low, high] ((low, high] with low_open); bools and strings are refused
    (a dynamically typed parameter accepts any type)."""
    def check(value: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"must be a finite number, got {value!r}"
        if low is not None and (value <= low if low_open else value < low):
            return f"must be {'>' if low_open else '>='} {low}, got {value!r}"
        if high is not None and value > high:
            return f"must be <= {high}, got {value!r}"
        return ""
    return check


class ParameterRules:
    """Declares parameters with their Rule and installs the one callback pair that enforces them on `node`.

    rules = ParameterRules(node)
    rules.declare("checkpoint", "", Rule(when=unconfigured), "GEM-VLA checkpoint folder")
    rules.declare("request_threshold_s", 0.3, live_rule(number_check(0.0, low_open=True), apply_threshold))
    """

    def __init__(self, node):
        self._node = node
        self._rules: dict[str, Rule] = {}
        node.add_on_set_parameters_callback(self._on_set)
        self._post_set = hasattr(node, "add_post_set_parameters_callback")   # rclpy >= Iron
        if self._post_set:
            node.add_post_set_parameters_callback(self._after_set)

    def declare(self, name: str, default: Any, rule: Rule | None = None, description: str = "",
                dynamic_typing: bool = False) -> Any:
        """Declare `name` (an override given at construction wins over `default`) and return its value. The rule is
        registered after the declaration, so the construction-time value is not checked here (see module doc)."""
        rule = rule or read_only_rule()
        descriptor = ParameterDescriptor(description=description, read_only=rule.read_only,
                                         dynamic_typing=dynamic_typing,
                                         additional_constraints=self._constraint_text(rule))
        value = self._node.declare_parameter(name, default, descriptor).value
        self._rules[name] = rule
        return value

    @staticmethod
    def _constraint_text(rule: Rule) -> str:
        if rule.read_only:
            return "read-only: fixed when the node starts"
        return "takes effect at once" if rule.apply is not None else "read when the node next uses it"

    def rule(self, name: str) -> Rule | None:
        return self._rules.get(name)

    def _on_set(self, parameters) -> SetParametersResult:
        for parameter in parameters:
            rule = self._rules.get(parameter.name)
            if rule is None or rule.read_only:   # not ours (use_sim_time, ...), or refused by rclpy already
                continue
            reason = rule.when() or rule.check(parameter.value)
            if reason:
                self._node.get_logger().warning(f"parameter {parameter.name} not changed: {reason}")
                return SetParametersResult(successful=False, reason=f"{parameter.name}: {reason}")
        if not self._post_set:   # old rclpy: apply now, every check above passed
            self._after_set(parameters)
        return SetParametersResult(successful=True)

    def _after_set(self, parameters) -> None:
        for parameter in parameters:
            rule = self._rules.get(parameter.name)
            if rule is not None and rule.apply is not None:
                rule.apply(parameter.value)
                self._node.get_logger().info(f"parameter {parameter.name} = {parameter.value!r} now in effect")
