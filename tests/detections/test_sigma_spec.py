"""The sigma plugin to the letter of the Sigma specification (SigmaHQ/sigma-specification,
specification/sigma-rules-specification.md and sigma-appendix-modifiers.md), where it once
departed from it. Each test quotes the sentence it holds the plugin to."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "agent_host" / "plugins" / "sigma"


@pytest.fixture(scope="module")
def engine() -> Iterator[ModuleType]:
    """The plugin's engine, imported here (a test may; the host never does)."""
    sys.path.insert(0, str(PLUGIN))
    try:
        import engine  # type: ignore[import-not-found]
        import plan  # type: ignore[import-not-found]

        engine.plan_module = plan
        yield engine
    finally:
        sys.path.remove(str(PLUGIN))
        for name in ("engine", "plan"):
            sys.modules.pop(name, None)


def rule(category: str, detection: str) -> str:
    return (
        "title: spec\nid: 5b9a1c1e-0000-4000-8000-000000000001\nstatus: test\n"
        f"logsource:\n  product: linux\n  category: {category}\n"
        f"detection:\n{detection}\nlevel: high\n"
    )


def matches(engine: ModuleType, text: str, fields: dict[str, Any]) -> bool:
    """Whether the rule matches, evaluated alone and through the indexed plan (they agree)."""
    compiled = engine.compile_rule(text, "spec.yml")
    prepared = engine.prepare(fields)
    alone = bool(compiled.matches(prepared))
    plan = engine.plan_module.Plan([compiled], [engine.plan_module.rule_atoms(compiled.conditions)])
    assert bool(plan.matches(prepared)) == alone
    return alone


PORT = "  selection:\n    DestinationPort{modifier}: {value}\n  condition: selection"


class TestValuesAreCaseInsensitiveStrings:
    """ "All values are treated as case-insensitive strings." (Search-Identifier, General)"""

    @pytest.mark.parametrize(
        ("modifier", "value", "port", "expected"),
        [
            ("", "'4444'", 4444, True),  # a quoted number on an integer field
            ("", "4444", 4444, True),
            ("|startswith", "'44'", 4444, True),  # a string modifier on an integer field
            ("|endswith", "'44'", 8044, True),
            ("|contains", "'04'", 8044, True),
            ("|startswith", "'44'", 8044, False),
            ("", "'4444'", 44444, False),
        ],
    )
    def test_an_integer_field_is_compared_as_its_text(
        self, engine: ModuleType, modifier: str, value: str, port: int, expected: bool
    ) -> None:
        text = rule("network_connection", PORT.format(modifier=modifier, value=value))
        assert matches(engine, text, {"DestinationPort": port}) is expected

    @pytest.mark.parametrize(
        ("command_line", "expected"),
        [("1234", True), ("01234", False), ("1.234e3", False), ("1_234", False), ("1234.0", False)],
    )
    def test_a_number_on_a_text_field_is_not_compared_as_a_float(
        self, engine: ModuleType, command_line: str, expected: bool
    ) -> None:
        text = rule(
            "process_creation", "  selection:\n    CommandLine: 1234\n  condition: selection"
        )
        assert matches(engine, text, {"CommandLine": command_line}) is expected


class TestKeywords:
    """ "Contrary to the Field Usage, It's a matter of searching for keywords across an entire
    event." (Keywords search)"""

    KEYWORDS = "  keywords:\n    - 'mimikatz'\n    - 'event::clear'\n  condition: keywords"

    @pytest.mark.parametrize(
        ("fields", "expected"),
        [
            ({"CommandLine": "run mimikatz now"}, True),  # inside a field, not all of it
            ({"CommandLine": "ls", "Image": "/tmp/MimiKatz.bin"}, True),  # any field, any case
            ({"CommandLine": "wevtutil event::clear all"}, True),
            ({"CommandLine": "mimi katz"}, False),
            ({"CommandLine": "ls", "Image": "/usr/bin/ls"}, False),
        ],
    )
    def test_a_keyword_is_found_anywhere_in_the_event(
        self, engine: ModuleType, fields: dict[str, Any], expected: bool
    ) -> None:
        text = rule("process_creation", self.KEYWORDS)
        assert matches(engine, text, fields) is expected

    def test_a_keyword_finds_a_number_in_the_event_too(self, engine: ModuleType) -> None:
        text = rule("process_creation", "  keywords:\n    - 4444\n  condition: keywords")
        assert matches(engine, text, {"CommandLine": "nc -lp 4444"})
        assert not matches(engine, text, {"CommandLine": "nc -lp 4445"})


class TestFieldReference:
    """ "Default Sigma behavior is case-insensitive matching." (Modifiers, General, `cased`),
    which `fieldref` ("compare fields of matched events directly") does not set aside."""

    REF = "  selection:\n    ParentImage|fieldref: Image\n  condition: selection"

    @pytest.mark.parametrize(
        ("image", "parent", "expected"),
        [
            ("/usr/bin/bash", "/usr/bin/bash", True),
            ("/usr/bin/BASH", "/usr/bin/bash", True),
            ("/usr/bin/bash", "/usr/bin/sh", False),
            (None, None, False),
        ],
    )
    def test_fields_compare_case_insensitively(
        self, engine: ModuleType, image: str | None, parent: str | None, expected: bool
    ) -> None:
        text = rule("process_creation", self.REF)
        assert matches(engine, text, {"Image": image, "ParentImage": parent}) is expected
