"""The sigma plugin's plan gives exactly the results of evaluating every rule one by one.

Compared on every bundled and SigmaHQ rule, over a recorded event set: the synthetic mix, and
for every literal a rule needs, events that hold it (so that most rules match something) and
events that just miss it (one character short, other case, in another field).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from agent_host.protocol import Event
from agent_host.sources.synthetic import SyntheticSource
from agent_host.testing import connect_event, exec_event, file_event

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "agent_host" / "plugins" / "sigma"
SHARED = REPO.parent / "shared" / "sigma-linux"


@pytest.fixture(scope="module")
def sigma() -> Iterator[dict[str, ModuleType]]:
    """The plugin's own modules, imported here (a test may; the host never does)."""
    sys.path.insert(0, str(PLUGIN))
    try:
        import engine  # type: ignore[import-not-found]
        import fields  # type: ignore[import-not-found]
        import plan  # type: ignore[import-not-found]

        yield {"engine": engine, "fields": fields, "plan": plan}
    finally:
        sys.path.remove(str(PLUGIN))
        for name in ("engine", "fields", "plan"):
            sys.modules.pop(name, None)


FIELD_EVENTS = {
    "Image": exec_event,
    "CommandLine": lambda v: exec_event("/usr/bin/x", *v.split(" ")),
    "ParentImage": lambda v: exec_event("/usr/bin/x", parent=v),
    "CurrentDirectory": lambda v: exec_event("/usr/bin/x", cwd=v),
    "User": lambda v: exec_event("/usr/bin/x", user=v),
    "TargetFilename": file_event,
    "DestinationIp": lambda v: connect_event(v, 443),
}


def events_for(rules: list[Any], plan: ModuleType) -> list[Event]:
    made = [SyntheticSource(rate=0, seed=3, attack_every=3).make(i) for i in range(1, 400)]
    for rule in rules:
        for key, kind, text in sorted(plan.rule_atoms(rule.conditions) or ()):
            name = key.split("\0")[0]
            make = FIELD_EVENTS.get(name)
            if make is None:
                continue
            variants = {
                "eq": [text, text[:-1], text.upper()],
                "prefix": [text + "tail", text[:-1]],
                "suffix": ["/head" + text, text[1:]],
                "contains": [f"a {text} b", text, text[1:]],
            }[kind]
            made += [make(v) for v in variants if v]
    return made


def test_plan_equals_rule_by_rule(sigma: dict[str, ModuleType]) -> None:
    engine, fields, plan = sigma["engine"], sigma["fields"], sigma["plan"]
    folders = [PLUGIN / "rules"] + ([SHARED] if SHARED.is_dir() else [])
    rules = engine.load_rules(folders)
    assert len(rules) >= 3 + (135 if SHARED.is_dir() else 0)
    plans = {
        category: plan.Plan(rs, [plan.rule_atoms(r.conditions) for r in rs])
        for category, rs in rules.by_category.items()
    }
    assert sum(p.indexed for p in plans.values()) >= 0.9 * len(rules)
    every = [r for rs in rules.by_category.values() for r in rs]
    matched = differ = 0
    for event in events_for(every, plan):
        mapped = fields.sigma_fields(event)
        if mapped is None:
            continue
        category, values = mapped
        prepared = engine.prepare(values)
        one_by_one = [r.id for r in rules.by_category.get(category, []) if r.matches(prepared)]
        planned = [r.id for r in plans[category].matches(prepared)] if category in plans else []
        differ += planned != one_by_one
        matched += len(one_by_one)
    print(f"{matched} matches, {differ} differences")
    assert differ == 0
    assert matched >= len(every)  # the events do make rules fire: the comparison means something
