"""The Sigma plugin: SigmaHQ-format rules, evaluated in memory against every event."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from engine import RuleSet, load_rules, prepare
from fields import sigma_fields
from plan import Plan, rule_atoms

from agent_host.sdk import Event, Finding, Plugin, Severity

HERE = Path(__file__).resolve().parent
SEVERITY = {
    "informational": Severity.INFO,
    "low": Severity.LOW,
    "medium": Severity.MEDIUM,
    "high": Severity.HIGH,
    "critical": Severity.CRITICAL,
}


class SigmaDetector(Plugin):
    def on_start(self, config: Mapping[str, Any]) -> None:
        directories = [HERE / d for d in config.get("rule_dirs", ["rules"])]
        missing = [str(d) for d in directories if not d.is_dir()]
        for folder in missing:
            self.content_error(f"sigma rule folder not found: {folder}")
        for folder in map(Path, config.get("operator_rule_dirs", [])):
            if folder.is_dir():
                directories.append(folder)
                self.log.info("sigma: loading the operator's rules from %s", folder)
        self.rules: RuleSet = load_rules([d for d in directories if d.is_dir()])
        for path, reason in self.rules.rejected:
            self.content_error(f"sigma rule not loaded: {path}: {reason}")
        self.plans = {
            category: Plan(rules, [rule_atoms(r.conditions) for r in rules])
            for category, rules in self.rules.by_category.items()
        }
        self.log.info(
            "sigma rules loaded: %d, not loaded: %d, indexed by their literals: %d",
            len(self.rules),
            len(self.rules.rejected),
            sum(p.indexed for p in self.plans.values()),
        )

    def on_event(self, event: Event) -> Iterator[Finding]:
        mapped = sigma_fields(event)
        if mapped is None:
            return
        category, fields = mapped
        plan = self.plans.get(category)
        if plan is None:
            return
        for rule in plan.matches(prepare(fields)):
            attributes = {
                "title": rule.title,
                "level": rule.level,
                "rule_file": Path(rule.path).name,
            }
            attributes.update({k: str(v) for k, v in fields.items() if v is not None})
            yield Finding(
                rule=rule.id,
                severity=SEVERITY.get(rule.level, Severity.MEDIUM),
                message=rule.title,
                attributes=attributes,
                techniques=rule.techniques,
            )
