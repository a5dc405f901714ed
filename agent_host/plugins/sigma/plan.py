"""An evaluation plan for many Sigma rules: look at each event's fields once, not once per rule.

Each rule gets a *necessary condition*: a set of literal atoms (field, kind, text) of which at
least one holds whenever the rule matches. ``Image|endswith: /nc`` gives (Image, suffix, "/nc");
an ``or`` gives the union of its parts; an ``and`` needs only its most selective part; a value
with wildcards inside gives its longest literal piece as a substring, a number its text. A rule
whose condition has no such atoms (a ``not`` at the top, a regex, a keyword) is always
evaluated.

Per logsource category the atoms are indexed by field, all kinds in one Aho-Corasick automaton
per field (exact values, prefixes and suffixes are words anchored to marks of the value's start
and end), so a value is scanned once however many rules test it. For an event, the plan finds
the rules whose atoms hold, then evaluates only those (and the always-evaluated ones) in full,
in the rules' own order: the results are exactly those of evaluating every rule
(``tests/detections/test_sigma_plan.py``).

All atoms are on casefolded text: they come only from case-insensitive values, which is what
almost every Sigma value is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import ahocorasick
import sigma.conditions as cond
import sigma.types as st
from engine import FOLDED, CompiledRule, number_text

Atom = tuple[str, str, str]  # (field key, "eq" | "prefix" | "suffix" | "contains", text)
_KIND_RANK = {"eq": 0, "prefix": 1, "suffix": 1, "contains": 2}


def _value_atoms(name: str, value: Any) -> frozenset[Atom] | None:
    """Atoms of ``name`` compared with ``value``, or None if it has none."""
    if isinstance(value, st.SigmaExpansion):
        found: set[Atom] = set()
        for v in value.values:
            atoms = _value_atoms(name, v)
            if atoms is None:
                return None
            found |= atoms
        return frozenset(found)
    if isinstance(value, st.SigmaNumber):  # compared as its text (see engine.value_test)
        return frozenset({(name + FOLDED, "eq", number_text(value))})
    if not isinstance(value, st.SigmaString) or isinstance(value, st.SigmaCasedString):
        return None
    wild = st.SpecialChars.WILDCARD_MULTI
    parts = list(value.s)
    key = name + FOLDED
    texts = [p for p in parts if isinstance(p, str)]
    if not texts:
        return None
    shape = tuple("w" if p == wild else "x" if isinstance(p, str) else "?" for p in parts)
    kind = {("x",): "eq", ("x", "w"): "prefix", ("w", "x"): "suffix"}.get(shape)
    if kind is not None:
        return frozenset({(key, kind, texts[0].casefold())})
    # Anything else: wherever the pattern matches, its longest literal piece is in the text.
    longest = max(texts, key=len).casefold()
    if not longest:
        return None
    return frozenset({(key, "contains", longest)})


def _selectivity(atoms: frozenset[Atom]) -> tuple[int, int, int]:
    """Smaller is better: the weakest atom's kind, fewer atoms, longer texts."""
    worst = max(_KIND_RANK[kind] for _, kind, _ in atoms)
    shortest = min(len(text) for _, _, text in atoms)
    return (worst, len(atoms), -shortest)


def condition_atoms(node: Any) -> frozenset[Atom] | None:
    """A necessary condition of ``node`` as atoms (one must hold), or None if there is none."""
    if isinstance(node, cond.ConditionOR):
        found: set[Atom] = set()
        for arg in node.args:
            atoms = condition_atoms(arg)
            if atoms is None:
                return None
            found |= atoms
        return frozenset(found)
    if isinstance(node, cond.ConditionAND):
        options = [a for a in (condition_atoms(arg) for arg in node.args) if a]
        return min(options, key=_selectivity) if options else None
    if isinstance(node, cond.ConditionFieldEqualsValueExpression):
        if isinstance(node.value, st.SigmaFieldReference):
            return None
        return _value_atoms(node.field, node.value)
    return None  # not, keywords, anything else: no literal is necessary


def rule_atoms(conditions: Iterable[Any]) -> frozenset[Atom] | None:
    """Atoms of a rule whose detection has one or more conditions (any may match)."""
    found: set[Atom] = set()
    for node in conditions:
        atoms = condition_atoms(node)
        if not atoms:
            return None
        found |= atoms
    return frozenset(found) or None


#: Marks of a value's start and end, so that one automaton finds every kind of atom: a prefix
#: "ab" is the word START + "ab" in START + value + END, a suffix is "ab" + END, an exact value
#: START + "ab" + END, a substring just "ab". A value that holds these characters itself can only
#: add candidates (each is then evaluated in full), never hide one.
_START, _END = "\x02", "\x03"
_WORD = {
    "eq": lambda t: _START + t + _END,
    "prefix": lambda t: _START + t,
    "suffix": lambda t: t + _END,
    "contains": lambda t: t,
}


class _FieldIndex:
    """Every atom of one field, in one Aho-Corasick automaton: one pass over a value."""

    def __init__(self) -> None:
        self._words: dict[str, list[int]] = {}
        self._automaton: Any = None

    def add(self, kind: str, text: str, position: int) -> None:
        self._words.setdefault(_WORD[kind](text), []).append(position)

    def build(self) -> None:
        automaton = ahocorasick.Automaton()
        for word, positions in self._words.items():
            automaton.add_word(word, positions)
        automaton.make_automaton()
        self._automaton = automaton

    def hits(self, value: str, into: set[int]) -> None:
        for _, positions in self._automaton.iter(_START + value + _END):
            into.update(positions)


class Plan:
    """The rules of one category, indexed by the literals they need."""

    def __init__(self, rules: list[CompiledRule], atoms: list[frozenset[Atom] | None]) -> None:
        self.rules = rules
        self.always = [i for i, a in enumerate(atoms) if a is None]
        self._fields: dict[str, _FieldIndex] = {}
        for position, rule_atoms_ in enumerate(atoms):
            for key, kind, text in rule_atoms_ or ():
                self._fields.setdefault(key, _FieldIndex()).add(kind, text, position)
        for index in self._fields.values():
            index.build()

    @property
    def indexed(self) -> int:
        return len(self.rules) - len(self.always)

    def matches(self, prepared: Mapping[str, Any]) -> list[CompiledRule]:
        """The rules that match, in their own order (as if each had been evaluated)."""
        candidates: set[int] = set(self.always)
        for key, index in self._fields.items():
            value = prepared.get(key)
            if value is not None:
                index.hits(value, candidates)
        rules = self.rules
        return [rules[i] for i in sorted(candidates) if rules[i].matches(prepared)]
