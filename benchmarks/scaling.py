"""How cost grows: one thing varied at a time, the in-process baseline beside each.

- decoding a recording, per event: binary, JSON Lines (the fast reader), and json_format;
- the sigma plugin per process event, with 10 to 1,000 rules (generated from the shapes of the
  bundled and SigmaHQ rules), evaluated by its plan and one rule at a time;
- throughput with 1 to 16 plugins, with batches of 16 to 1,024 events, and with 0 to 16 findings
  per event, in-process and isolated.
"""

from __future__ import annotations

import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format

from agent_host.protocol import Event, message_to_json
from agent_host.sources.recording import read_recording, write_recording
from benchmarks import throughput
from benchmarks.common import HERE, REPO, SHARED_SIGMA, make_events, plugin_copy, trivial


def _best_of(runs: int, step: Callable[[], object]) -> float:
    """The fastest of ``runs`` timings of ``step``, in seconds (noise only ever adds)."""
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - started)
    return best


def decode(n: int) -> dict[str, float]:
    """Microseconds per event to read a recording of ``n`` events, by format and reader."""
    events = make_events(n)
    with tempfile.TemporaryDirectory() as tmp:
        binary, jsonl = Path(tmp) / "r.bin", Path(tmp) / "r.jsonl"
        write_recording(binary, events, binary=True)
        write_recording(jsonl, events)
        lines = [message_to_json(e) for e in events]

        def read(path: Path) -> None:
            for _ in read_recording(path):
                pass

        def old() -> None:
            for line in lines:
                json_format.Parse(line, Event())

        return {
            "events": n,
            "binary_us": _best_of(3, lambda: read(binary)) / n * 1e6,
            "jsonl_us": _best_of(3, lambda: read(jsonl)) / n * 1e6,
            "json_format_us": _best_of(3, old) / n * 1e6,
        }


def _sigma_modules() -> tuple[Any, Any, Any]:
    """The sigma plugin's modules, imported here as the in-process baseline imports plugins."""
    sys.path.insert(0, str(REPO / "agent_host" / "plugins" / "sigma"))
    import engine  # type: ignore[import-not-found]
    import fields  # type: ignore[import-not-found]
    import plan  # type: ignore[import-not-found]

    return engine, fields, plan


def _vary(node: Any, n: int) -> Any:
    """``node`` (a rule's detection) with every string value made distinct for copy ``n``,
    wildcards and modifiers kept, so that copy ``n`` has the shapes of the original."""
    if isinstance(node, dict):
        return {k: v if k == "condition" else _vary(v, n) for k, v in node.items()}
    if isinstance(node, list):
        return [_vary(v, n) for v in node]
    if isinstance(node, str):
        stripped = node.rstrip("*")
        return f"{stripped}{n:03d}{node[len(stripped) :]}"
    return node


def generated_rules(count: int, workdir: Path) -> Path:
    """A folder of ``count`` rules: the bundled and SigmaHQ rules first, then varied copies."""
    sources = sorted((REPO / "agent_host" / "plugins" / "sigma" / "rules").glob("*.yml"))
    if SHARED_SIGMA.is_dir():
        sources += sorted(SHARED_SIGMA.rglob("*.yml"))
    texts = [yaml.safe_load(p.read_text()) for p in sources]
    folder = workdir / f"rules{count}"
    folder.mkdir(parents=True)
    for i in range(count):
        rule = dict(texts[i % len(texts)])
        copy = i // len(texts)
        if copy:
            rule["id"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{rule.get('id')}/{copy}"))
            rule["detection"] = _vary(rule["detection"], copy)
        (folder / f"{i:04d}.yml").write_text(yaml.safe_dump(rule))
    return folder


def sigma_rules(counts: list[int], n_events: int) -> list[dict[str, float]]:
    """Microseconds per process event for the sigma plugin's evaluation, planned and rule by
    rule, as the number of rules grows."""
    engine, fields, plan = _sigma_modules()
    events = [e for e in make_events(n_events) if e.WhichOneof("kind") == "process"]
    prepared = []
    for event in events:
        mapped = fields.sigma_fields(event)
        if mapped is not None:
            prepared.append(engine.prepare(mapped[1]))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for count in counts:
            rules = engine.load_rules([generated_rules(count, Path(tmp))])
            creation = rules.by_category.get("process_creation", [])
            planned = plan.Plan(creation, [plan.rule_atoms(r.conditions) for r in creation])

            def by_plan(p: Any = planned) -> None:
                for f in prepared:
                    p.matches(f)

            def one_by_one(rs: list[Any] = creation) -> None:
                for f in prepared:
                    for r in rs:
                        r.matches(f)

            rows.append(
                {
                    "rules": len(rules),
                    "process_rules": len(creation),
                    "indexed": planned.indexed,
                    "plan_us": _best_of(3, by_plan) / len(prepared) * 1e6,
                    "one_by_one_us": _best_of(3, one_by_one) / len(prepared) * 1e6,
                }
            )
    return rows


def _emitting(per_event: int, workdir: Path) -> list[Any]:
    return [
        plugin_copy(
            HERE / "plugins" / "emit", f"emit{per_event}", workdir, f"per_event = {per_event}"
        )
    ]


def sweeps(n_events: int, workdir: Path, quick: bool) -> dict[str, list[dict[str, float]]]:
    """Throughput in-process and isolated, varying one thing at a time (events pre-parsed, so
    that the pipeline, not the recording's JSON, is what is measured)."""
    parsed = make_events(n_events)
    recording = workdir / "unused.jsonl"
    plugin_counts = [1, 4] if quick else [1, 2, 4, 8, 16]
    batch_sizes = [16, 256] if quick else [16, 64, 256, 1024]
    per_event = [0, 4] if quick else [0, 1, 4, 16]
    result: dict[str, list[dict[str, float]]] = {"plugins": [], "batch": [], "findings": []}
    for n in plugin_counts:
        row = throughput.measure(recording, trivial(n, workdir / "sweep"), parsed=parsed)
        result["plugins"].append({"plugins": n, **row})
    for size in batch_sizes:
        row = throughput.measure(
            recording, trivial(1, workdir / "sweep"), parsed=parsed, batch_size=size
        )
        result["batch"].append({"batch_size": size, **row})
    for k in per_event:
        row = throughput.measure(recording, _emitting(k, workdir / "emit"), parsed=parsed)
        result["findings"].append({"findings_per_event": k, **row})
    return result
