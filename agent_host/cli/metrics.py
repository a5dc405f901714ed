"""Prometheus metrics, node_exporter style: off by default, on a localhost port when asked.

Nothing is counted twice and nothing is added to the event path: a collector reads the host's
own accounts (``PluginStats``, backlogs, sensor counters, the finding pipeline) when it is
scraped, from prometheus-client's HTTP thread. Those are plain integers the event loop updates;
a scrape sees each one whole (at worst a batch behind another).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import structlog
from prometheus_client import start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from agent_host.host.exports.sender import SpooledOutput
from agent_host.host.lifecycle import Phase
from agent_host.host.stats import LATENCY_BUCKETS_S
from agent_host.host.supervisor import Supervisor
from agent_host.sources.live import SensorHub

log = structlog.get_logger("agent_host")

_PLUGIN = ["plugin", "version"]


class HostCollector(Collector):
    """Every metric of one host, read at scrape time."""

    def __init__(
        self, sup: Supervisor, hub: SensorHub | None, outputs: Sequence[SpooledOutput] = ()
    ) -> None:
        self._sup = sup
        self._hub = hub
        self._outputs = outputs

    def collect(self) -> Iterator[Metric]:
        sup = self._sup
        yield _counter("events_accepted", "Events the host accepted.", sup.accepted)
        yield _counter("events_without_kind", "Events skipped: no kind.", sup.rejected_events)
        yield _counter("findings_written", "Findings written to the sink.", sup.findings.written)
        yield _counter("findings_lost", "Findings the sink could not take.", sup.findings.lost)
        yield from self._spooled()
        yield from self._plugins()
        backlog = GaugeMetricFamily(
            "agent_host_backlog_batches", "Batches kept for a group's plugins.", labels=["group"]
        )
        for group in list(sup.groups.values()):
            backlog.add_metric([group.name], len(group.backlog))
        yield backlog
        if self._hub is not None:
            yield from self._sensors(self._hub)

    def _spooled(self) -> Iterator[Metric]:
        """Per output: findings sent, dropped (spool full) and refused by the receiver; the
        NATS export's two also under their first names."""
        families = {
            key: CounterMetricFamily(f"agent_host_output_{key}", text, labels=["output"])
            for key, text in (
                ("sent", "Findings the output's receiver took."),
                ("dropped", "Findings dropped from the output: its spool was full."),
                ("refused", "Findings the output's receiver refused for good."),
            )
        }
        for output in self._outputs:
            counts = output.counts()
            for key, family in families.items():
                family.add_metric([output.kind], counts[key])
            if output.kind == "export":
                yield _counter(
                    "export_sent", "Findings the export server acknowledged.", counts["sent"]
                )
                yield _counter(
                    "export_dropped",
                    "Findings dropped from the export: spool full.",
                    counts["dropped"],
                )
        if self._outputs:
            yield from families.values()

    def _plugins(self) -> Iterator[Metric]:
        families = {
            name: CounterMetricFamily(f"agent_host_plugin_{name}", text, labels=_PLUGIN)
            for name, text in (
                ("events_processed", "Events the plugin processed."),
                ("events_dead_lettered", "Events set aside because they killed the plugin."),
                ("events_undelivered", "Events owed to the plugin and never sent."),
                ("findings", "Findings of the plugin that were accepted."),
                ("findings_rejected", "Findings of the plugin the host refused."),
                ("findings_suppressed", "Findings an operator's suppression kept out."),
            )
        }
        restarts = CounterMetricFamily(
            "agent_host_plugin_restarts",
            "Worker restarts, by cause.",
            labels=[*_PLUGIN, "cause"],
        )
        quarantined = GaugeMetricFamily(
            "agent_host_plugin_quarantined", "1 while the plugin is quarantined.", labels=_PLUGIN
        )
        latency = HistogramMetricFamily(
            "agent_host_plugin_batch_latency_seconds",
            "From a batch's framing to the plugin's answer.",
            labels=_PLUGIN,
        )
        for runner in list(self._sup.runners):
            labels = [runner.name, runner.manifest.version]
            s = runner.stats
            for name, value in (
                ("events_processed", s.processed),
                ("events_dead_lettered", s.dead_lettered),
                ("events_undelivered", s.undelivered),
                ("findings", s.findings),
                ("findings_rejected", s.rejected_findings),
                ("findings_suppressed", s.suppressed_findings),
            ):
                families[name].add_metric(labels, value)
            for cause, count in list(s.restarts.items()):
                restarts.add_metric([*labels, cause], count)
            quarantined.add_metric(labels, int(runner.phase is Phase.QUARANTINED))
            counts, cumulative, buckets = list(s.batch_latency.counts), 0, []
            for bound, count in zip((*map(str, LATENCY_BUCKETS_S), "+Inf"), counts, strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            latency.add_metric(labels, buckets, s.batch_latency.total_s)
        yield from families.values()
        yield from (restarts, quarantined, latency)

    @staticmethod
    def _sensors(hub: SensorHub) -> Iterator[Metric]:
        emitted = CounterMetricFamily(
            "agent_host_sensor_events", "Events a sensor emitted.", labels=["sensor"]
        )
        dropped = CounterMetricFamily(
            "agent_host_sensor_dropped", "Events a sensor dropped (counted).", labels=["sensor"]
        )
        for sensor, count in list(hub.emitted.items()):
            emitted.add_metric([sensor], count)
        for sensor, count in list(hub.dropped.items()):
            dropped.add_metric([sensor], count)
        yield emitted
        yield dropped


def _counter(name: str, text: str, value: int) -> CounterMetricFamily:
    return CounterMetricFamily(f"agent_host_{name}", text, value=value)


def serve(
    sup: Supervisor,
    hub: SensorHub | None,
    outputs: Sequence[SpooledOutput],
    address: str,
    port: int,
) -> None:
    """Serve /metrics on ``address:port`` (a thread of prometheus-client's) for this host."""
    registry = CollectorRegistry()
    registry.register(HostCollector(sup, hub, outputs))
    start_http_server(port, addr=address, registry=registry)
    log.info("metrics served", address=address, port=port, path="/metrics")
