"""Manifests and config files mutated at random (a fixed seed, a bounded count): whatever the
bytes, reading them gives a manifest, a settings table, or mistakes that each name the file;
never an exception. The cases the host once crashed on are among the seeds."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from agent_host.cli import config_file
from agent_host.cli.parser import build_parser, command_parser
from agent_host.host.manifest import discover

SEED = 20261207
CASES = 300

MANIFEST = b"""\
[plugin]
name = "fuzzed"
version = "1.0"
entrypoint = "detector:Detector"
subscribe = ["process", "file"]
description = "a plugin"

[limits]
batch_deadline_s = 5.0
memory_mb = 256
cpu_percent = 50.0
open_files = 64

[permissions]
read = ["/etc/hosts"]
network = false

[config]
words = ["a", "b"]
nested = { x = 1, y = [1, 2, 3] }
"""

CONFIG = b"""\
plugins = ["/srv/plugins"]
findings = "/var/log/agent-host/findings.jsonl"
batch-size = 256
flush-ms = 5.0
sensors = "process,file"
duration = 0
signatures = "warn"
shadow = true

[[suppress]]
plugin = "yara_scan"
path = "/opt/*"
reason = "vendor files"
"""

#: What the host once crashed on, and what a parser is least ready for.
TOKENS = [
    b"inf", b"nan", b"-inf", b"1e309", b"-1", b"0", b"99999999999999999999999", b"\xff\xfe",
    b"\x00", b"\xc3\x28", b"[" * 2000, b"{ a = " * 500, b"x" * 300, b"a" * 5000 + b":Detector",
    b'"""', b"'", b"=", b"\n[plugin]\n", b"\n[[limits]]\n", b"true", b"1979-05-27T07:32:00Z",
    b"\\u0000", b"\\uD800", b"\t", b"\r\n",
]  # fmt: skip

KNOWN_BAD_MANIFESTS = [
    MANIFEST.replace(b'"a plugin"', b'"\xff\xfe"'),  # invalid UTF-8
    MANIFEST.replace(b"words = ", b"x = " + b"[" * 100_000 + b"\nwords = "),  # nesting
    MANIFEST.replace(b"memory_mb = 256", b"memory_mb = inf"),
    MANIFEST.replace(b"memory_mb = 256", b"memory_mb = nan"),
    MANIFEST.replace(b"batch_deadline_s = 5.0", b"batch_deadline_s = nan"),
    MANIFEST.replace(b"cpu_percent = 50.0", b"cpu_percent = nan"),
    MANIFEST.replace(b'"detector:Detector"', b'"' + b"d" * 5000 + b':Detector"'),
]


def mutate(rng: random.Random, text: bytes) -> bytes:
    data = bytearray(text)
    for _ in range(rng.randint(1, 4)):
        where = rng.randrange(len(data) + 1)
        match rng.randrange(4):
            case 0:
                data[where:where] = rng.choice(TOKENS)
            case 1:
                data[where : where + rng.randint(1, 8)] = rng.choice(TOKENS)
            case 2 if data:
                data[min(where, len(data) - 1)] = rng.randrange(256)
            case _:
                del data[where : where + rng.randint(1, 16)]
    return bytes(data)


def manifests() -> list[bytes]:
    rng = random.Random(SEED)
    return [*KNOWN_BAD_MANIFESTS, *(mutate(rng, MANIFEST) for _ in range(CASES))]


def configs() -> list[bytes]:
    rng = random.Random(SEED + 1)
    nested = b"plugins = " + b"[" * 100_000
    return [nested, b"\xff\xfe", *(mutate(rng, CONFIG) for _ in range(CASES))]


class TestManifestFuzz:
    """A mutated manifest is one error naming its file; the good plugin beside it loads."""

    def test_every_mutation_is_a_manifest_or_one_named_error(self, tmp_path: Path) -> None:
        good = tmp_path / "plugins" / "good"
        good.mkdir(parents=True)
        (good / "plugin.toml").write_bytes(MANIFEST.replace(b'"fuzzed"', b'"good"'))
        (good / "detector.py").write_text("")
        bad = tmp_path / "plugins" / "bad"
        bad.mkdir()
        (bad / "detector.py").write_text("")
        errors = 0
        for case in manifests():
            (bad / "plugin.toml").write_bytes(case)
            discovery = discover(tmp_path / "plugins")  # raises nothing, whatever the bytes
            assert "good" in {m.name for m in discovery.manifests}
            for error in discovery.errors:
                line = str(error)
                errors += 1
                assert line.startswith(str(bad / "plugin.toml")), line
                assert "\n" not in line.strip() or line.count("\n") < 3
        assert errors >= len(KNOWN_BAD_MANIFESTS)  # the known crashes are errors now

    @pytest.mark.parametrize("case", KNOWN_BAD_MANIFESTS, ids=range(len(KNOWN_BAD_MANIFESTS)))
    def test_the_cases_that_crashed_the_host_are_refused(self, tmp_path: Path, case: bytes) -> None:
        folder = tmp_path / "p" / "bad"
        folder.mkdir(parents=True)
        (folder / "plugin.toml").write_bytes(case)
        (folder / "detector.py").write_text("")
        discovery = discover(tmp_path / "p")
        assert discovery.manifests == []
        (error,) = discovery.errors
        assert str(error).startswith(str(folder / "plugin.toml"))


class TestConfigFuzz:
    """A mutated config file is settings and mistakes, each naming the file; never a raise."""

    def test_every_mutation_is_settings_or_named_mistakes(self, tmp_path: Path) -> None:
        run = command_parser(build_parser(), "run")
        path = tmp_path / "agent-host.toml"
        for case in configs():
            path.write_bytes(case)
            _, mistakes = config_file.read(path, run)
            for mistake in mistakes:
                assert str(mistake).startswith(str(path)), str(mistake)
