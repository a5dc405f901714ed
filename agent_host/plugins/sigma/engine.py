"""Sigma rules compiled to Python predicates, evaluated in memory.

pySigma (SigmaHQ's reference library) parses each rule, applies the value modifiers
(contains, startswith, endswith, all, re, cidr, windash, base64, base64offset, ...) and resolves
the condition (and/or/not, ``1 of``/``all of`` with wildcards) into a tree. This module compiles
that tree once into nested closures; evaluating an event is then plain Python, no parsing.

Sigma string matching is case-insensitive unless the value is cased; ``re`` searches anywhere.
"""

from __future__ import annotations

import copy
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
    #: pySigma's condition trees (any may match), for plans that index the rule's literals.
    conditions: tuple[Any, ...] = ()


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


#: Suffix of the keys under which ``prepare`` keeps each text field casefolded.
FOLDED = "\0folded"


def prepare(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The fields plus a casefolded text copy of each, folded once per event rather than once
    per test. Numbers and booleans too: "All values are treated as case-insensitive strings"
    (the specification, Search-Identifier, General), so ``DestinationPort: '4444'`` and
    ``DestinationPort|startswith: '44'`` test the port's text."""
    prepared = dict(fields)
    for name, value in fields.items():
        if isinstance(value, str):
            prepared[name + FOLDED] = value.casefold()
        elif isinstance(value, bool):
            prepared[name + FOLDED] = "true" if value else "false"
        elif isinstance(value, int | float):
            prepared[name + FOLDED] = str(value)
    return prepared


def _folded_only(value: Any) -> bool:
    """Whether every string in ``value`` compares case-insensitively (so folded input suffices)."""
    if isinstance(value, st.SigmaExpansion):
        return all(_folded_only(v) for v in value.values)
    return isinstance(value, st.SigmaString) and not isinstance(value, st.SigmaCasedString)


def _shape_test(parts: list[Any], prefolded: bool) -> ValueTest | None:
    """A fast test for the shapes modifiers produce most: x, *x*, x*, *x (no regex)."""
    wild = st.SpecialChars.WILDCARD_MULTI
    shape = tuple(p if p == wild else "x" if isinstance(p, str) else "?" for p in parts)
    texts = [p.casefold() for p in parts if isinstance(p, str)]
    if len(texts) != 1 or "?" in shape:
        return None
    (text,) = texts
    if prefolded:  # the input is already casefolded (see prepare)
        tests: dict[tuple[Any, ...], ValueTest] = {
            ("x",): lambda v: v == text,
            (wild, "x", wild): lambda v: v is not None and text in v,
            ("x", wild): lambda v: v is not None and v.startswith(text),
            (wild, "x"): lambda v: v is not None and v.endswith(text),
        }
    else:
        tests = {
            ("x",): lambda v: (t := _as_text(v)) is not None and t.casefold() == text,
            (wild, "x", wild): lambda v: (t := _as_text(v)) is not None and text in t.casefold(),
            ("x", wild): lambda v: (t := _as_text(v)) is not None and t.casefold().startswith(text),
            (wild, "x"): lambda v: (t := _as_text(v)) is not None and t.casefold().endswith(text),
        }
    return tests.get(shape)


def _string_test(value: st.SigmaString, prefolded: bool = False) -> ValueTest:
    """A test of text against ``value``; with ``prefolded``, the text is already casefolded."""
    cased = isinstance(value, st.SigmaCasedString)
    parts = list(value.s)
    if cased:
        if parts and all(isinstance(p, str) for p in parts):
            text = "".join(parts)
            return lambda v: _as_text(v) == text
    else:
        fast = _shape_test(parts, prefolded)
        if fast is not None:
            return fast
    pattern = []
    for part in parts:
        if isinstance(part, str):
            pattern.append(re.escape(part))
        elif part == st.SpecialChars.WILDCARD_MULTI:
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


def number_text(value: st.SigmaNumber) -> str:
    """How a number in a rule reads as text: as YAML wrote it (4444, 1.5)."""
    return str(value.number)


def value_test(value: Any, prefolded: bool = False) -> ValueTest:
    """A test of one field value against one Sigma value (``prefolded``: see _string_test)."""
    if isinstance(value, st.SigmaString):
        return _string_test(value, prefolded)
    if isinstance(value, st.SigmaNumber):
        # A number is a string too: CommandLine: 1234 is "1234", not 01234, 1.234e3 or 1_234.
        text = number_text(value)
        return lambda v: _as_text(v) == text
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
        tests = [value_test(v, prefolded) for v in value.values]
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


def anywhere(value: Any) -> Any:
    """A keyword's value as a search anywhere in a text: ``*value*`` (each of a list's)."""
    if isinstance(value, st.SigmaExpansion):
        return st.SigmaExpansion([anywhere(v) for v in value.values])
    if isinstance(value, st.SigmaNumber):
        value = st.SigmaString(number_text(value))
    if not isinstance(value, st.SigmaString):
        return value  # a regular expression searches anywhere already
    wild = st.SpecialChars.WILDCARD_MULTI
    parts = list(value.s)
    if not parts or parts[0] != wild:
        parts.insert(0, wild)
    if parts[-1] != wild:
        parts.append(wild)
    searched = copy.copy(value)
    searched.s = tuple(parts)
    return searched


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
            # Case-insensitive, as every Sigma comparison unless |cased says otherwise.
            mine, other = name + FOLDED, node.value.field + FOLDED
            return lambda f: f.get(mine) is not None and f.get(mine) == f.get(other)
        if _folded_only(node.value):
            test, key = value_test(node.value, prefolded=True), name + FOLDED
        else:
            test, key = value_test(node.value), name
        return lambda f: test(f.get(key))
    if isinstance(node, cond.ConditionValueExpression):
        # A keyword: "searching for keywords across an entire event" (the specification,
        # Keywords search): anywhere in any field's text, not a whole field's value.
        keyword = anywhere(node.value)
        if _folded_only(keyword):
            test = value_test(keyword, prefolded=True)
            return lambda f: any(test(v) for k, v in f.items() if k.endswith(FOLDED))
        test = value_test(keyword)
        return lambda f: any(
            test(v) for k, v in f.items() if v is not None and not k.endswith(FOLDED)
        )
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
    trees = tuple(c.parsed for c in rule.detection.parsed_condition)
    conditions = [compile_condition(tree) for tree in trees]
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
        conditions=trees,
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
