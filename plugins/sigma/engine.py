"""Sigma rules compiled to Python predicates, evaluated in memory.

pySigma (SigmaHQ's reference library) parses each rule, applies the value modifiers
(contains, startswith, endswith, all, re, cidr, windash, base64, base64offset, ...) and resolves
the condition (and/or/not, ``1 of``/``all of`` with wildcards) into a tree. This module compiles
that tree once into nested closures; evaluating an event is then plain Python, no parsing.

Sigma string matching is case-insensitive unless the value is cased; ``re`` searches anywhere.
"""

from __future__ import annotations

import ipaddress
import operator
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sigma.conditions as cond
import sigma.types as st
from sigma.exceptions import SigmaError
from sigma.rule import SigmaLevel, SigmaRule

Fields = Mapping[str, Any]
Predicate = Callable[[Fields], bool]
ValueTest = Callable[[Any], bool]

CATEGORIES = ("process_creation", "file_event", "network_connection")


class UnsupportedRuleError(Exception):
    """A rule uses something this engine cannot evaluate; the message says what."""


@dataclass(frozen=True, slots=True)
class CompiledRule:
    id: str
    title: str
    level: str
    category: str
    techniques: tuple[str, ...]
    path: str
    matches: Predicate


@dataclass(slots=True)
class RuleSet:
    """The rules that loaded, by category, and why each other one did not."""

    by_category: dict[str, list[CompiledRule]] = field(default_factory=dict)
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)

    def __len__(self) -> int:
        return sum(len(rules) for rules in self.by_category.values())


# -- values --------------------------------------------------------------------------------


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def _string_test(value: st.SigmaString) -> ValueTest:
    cased = isinstance(value, st.SigmaCasedString)
    parts = list(value.s)
    wild = st.SpecialChars.WILDCARD_MULTI
    inner = parts[1:-1] if len(parts) >= 2 else parts
    if parts and all(isinstance(p, str) for p in parts):
        # Plain text: equality.
        text = "".join(parts)
        if cased:
            return lambda v: _as_text(v) == text
        folded = text.casefold()
        return lambda v: (t := _as_text(v)) is not None and t.casefold() == folded
    if not cased and all(isinstance(p, str) for p in inner) and inner:
        # The shapes modifiers produce most: *x*, x*, *x (fast paths, no regex).
        needle = "".join(inner).casefold()
        if len(parts) == 3 and parts[0] == wild and parts[-1] == wild:
            return lambda v: (t := _as_text(v)) is not None and needle in t.casefold()
        if len(parts) == 2 and parts[-1] == wild and isinstance(parts[0], str):
            prefix = parts[0].casefold()
            return lambda v: (t := _as_text(v)) is not None and t.casefold().startswith(prefix)
        if len(parts) == 2 and parts[0] == wild and isinstance(parts[1], str):
            suffix = parts[1].casefold()
            return lambda v: (t := _as_text(v)) is not None and t.casefold().endswith(suffix)
    pattern = []
    for part in parts:
        if isinstance(part, str):
            pattern.append(re.escape(part))
        elif part == wild:
            pattern.append(".*")
        elif part == st.SpecialChars.WILDCARD_SINGLE:
            pattern.append(".")
        else:
            raise UnsupportedRuleError(f"placeholder {part!r} in a value")
    flags = re.DOTALL | (0 if cased else re.IGNORECASE)
    compiled = re.compile("".join(pattern), flags)
    return lambda v: (t := _as_text(v)) is not None and compiled.fullmatch(t) is not None


_REGEX_FLAGS = {
    st.SigmaRegularExpressionFlag.IGNORECASE: re.IGNORECASE,
    st.SigmaRegularExpressionFlag.MULTILINE: re.MULTILINE,
    st.SigmaRegularExpressionFlag.DOTALL: re.DOTALL,
}
_COMPARE = {
    st.SigmaCompareExpression.CompareOperators.LT: operator.lt,
    st.SigmaCompareExpression.CompareOperators.LTE: operator.le,
    st.SigmaCompareExpression.CompareOperators.GT: operator.gt,
    st.SigmaCompareExpression.CompareOperators.GTE: operator.ge,
}


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def value_test(value: Any) -> ValueTest:
    """A test of one field value against one Sigma value."""
    if isinstance(value, st.SigmaString):
        return _string_test(value)
    if isinstance(value, st.SigmaNumber):
        number = float(value.number)
        return lambda v: _number(v) == number
    if isinstance(value, st.SigmaRegularExpression):
        flags = 0
        for flag in value.flags:
            flags |= _REGEX_FLAGS[flag]
        try:
            compiled = re.compile(value.regexp.to_plain(), flags)
        except re.error as exc:
            raise UnsupportedRuleError(f"regular expression does not compile: {exc}") from exc
        return lambda v: (t := _as_text(v)) is not None and compiled.search(t) is not None
    if isinstance(value, st.SigmaCIDRExpression):
        network = value.network

        def in_network(v: Any) -> bool:
            try:
                return ipaddress.ip_address(str(v)) in network
            except ValueError:
                return False

        return in_network
    if isinstance(value, st.SigmaExpansion):
        tests = [value_test(v) for v in value.values]
        return lambda v: any(test(v) for test in tests)
    if isinstance(value, st.SigmaNull):
        return lambda v: v is None or v == ""
    if isinstance(value, st.SigmaExists):
        exists = value.exists
        return lambda v: (v is not None and v != "") == exists
    if isinstance(value, st.SigmaBool):
        expected = str(value.boolean).lower()
        return lambda v: str(v).lower() == expected
    if isinstance(value, st.SigmaCompareExpression):
        compare, bound = _COMPARE[value.op], float(value.number.number)
        return lambda v: (n := _number(v)) is not None and compare(n, bound)
    raise UnsupportedRuleError(f"value type {type(value).__name__}")


# -- conditions ----------------------------------------------------------------------------


def compile_condition(node: Any) -> Predicate:
    """A predicate over an event's fields for one node of pySigma's condition tree."""
    if isinstance(node, cond.ConditionAND):
        parts = [compile_condition(a) for a in node.args]
        return lambda f: all(p(f) for p in parts)
    if isinstance(node, cond.ConditionOR):
        parts = [compile_condition(a) for a in node.args]
        return lambda f: any(p(f) for p in parts)
    if isinstance(node, cond.ConditionNOT):
        (inner,) = [compile_condition(a) for a in node.args]
        return lambda f: not inner(f)
    if isinstance(node, cond.ConditionFieldEqualsValueExpression):
        name = node.field
        if isinstance(node.value, st.SigmaFieldReference):
            other = node.value.field
            return lambda f: f.get(name) is not None and f.get(name) == f.get(other)
        test = value_test(node.value)
        return lambda f: test(f.get(name))
    if isinstance(node, cond.ConditionValueExpression):  # a keyword: any field may hold it
        test = value_test(node.value)
        return lambda f: any(test(v) for v in f.values() if v is not None)
    raise UnsupportedRuleError(f"condition element {type(node).__name__}")


# -- rules ---------------------------------------------------------------------------------


def techniques(rule: SigmaRule) -> tuple[str, ...]:
    """ATT&CK technique ids from tags such as ``attack.t1059.004`` ("T1059.004")."""
    found = []
    for tag in rule.tags:
        if tag.namespace == "attack" and re.fullmatch(r"t\d{4}(\.\d{3})?", tag.name):
            found.append(tag.name.upper())
    return tuple(found)


def compile_rule(text: str, path: str) -> CompiledRule:
    """Parse and compile one rule; raises UnsupportedRuleError or SigmaError naming the reason."""
    rule = SigmaRule.from_yaml(text)
    logsource = rule.logsource
    if logsource.product not in (None, "linux"):
        raise UnsupportedRuleError(f"product {logsource.product!r} is not linux")
    if logsource.category not in CATEGORIES:
        raise UnsupportedRuleError(
            f"logsource category {logsource.category!r} (supported: {', '.join(CATEGORIES)})"
        )
    conditions = [compile_condition(c.parsed) for c in rule.detection.parsed_condition]
    matches: Predicate = (
        conditions[0] if len(conditions) == 1 else lambda f: any(c(f) for c in conditions)
    )
    level = rule.level.name.lower() if isinstance(rule.level, SigmaLevel) else "medium"
    return CompiledRule(
        id=str(rule.id or Path(path).stem),
        title=rule.title,
        level=level,
        category=logsource.category,
        techniques=techniques(rule),
        path=path,
        matches=matches,
    )


def rule_files(directories: list[Path]) -> Iterator[Path]:
    for directory in directories:
        yield from sorted(directory.rglob("*.yml"))
        yield from sorted(directory.rglob("*.yaml"))


def load_rules(directories: list[Path]) -> RuleSet:
    """Load every rule under ``directories``; a rule that cannot load is recorded, not fatal."""
    rules = RuleSet()
    for path in rule_files(directories):
        try:
            compiled = compile_rule(path.read_text(encoding="utf-8"), str(path))
        except (SigmaError, UnsupportedRuleError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            rules.rejected.append((str(path), reason))
            continue
        except Exception as exc:  # a rule file is content, not code: never fatal to the plugin
            first = str(exc).splitlines()[0] if str(exc) else ""
            reason = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
            rules.rejected.append((str(path), reason))
            continue
        rules.by_category.setdefault(compiled.category, []).append(compiled)
    return rules
