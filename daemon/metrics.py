"""Metrics and health: what the running service tells Prometheus, and `/healthz`.

Theory of operation
-------------------
`Metrics` owns every metric, on a registry of its own (so tests and several services in one
process never mix), and offers one method per thing that happens; the other parts report to it
and never touch prometheus_client themselves:

* the AMI link (through `LinkObserver`, the link's reporting interface, as `LinkMetrics`): link up
  or down, sessions, failed attempts, events received by kind and their lag (the moment we read
  an event minus its PBX `Timestamp`, so it includes any clock difference between PBX and host);
* the pipeline: conversations in progress (set once a second by the consumer's tick);
* the writer: conversations spooled, recorded (with the database write latency and what each
  version did in the ledger: first, superseded, disagreed, ...), rejected, and the spool backlog;
* the service: task restarts (deaths of a supervised task, which restart the service; their counts
  persist in the state directory, so they survive the restart they cause).

Events dropped by kind are the exception: the framer drops most of the stream before decoding and
counts in a plain dict, which is read only when Prometheus scrapes (`count_dropped`), so the hot
path pays nothing for the metric. The alerts (daemon/alerts) report what they raise and every
delivery attempt, by sink and result.

`MetricsServer` serves `/metrics` (prometheus_client's WSGI app: text or OpenMetrics, gzip) and
`/healthz` from a daemon thread, bound to 127.0.0.1 unless configured. `/healthz` answers 200 while
the AMI link is up and the writer is not stalled (it has had work for less than `STALL_SECONDS`
without finishing any), 503 with the reason otherwise. It reads the state the event loop keeps,
never waits for the loop, so it also answers while the loop is busy.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer

from telephony.ami import LinkObserver

STALL_SECONDS = 60.0
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
WRITE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ALERT_DELAY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 30.0, 300.0)


def talkmeter_version() -> str:
    try:
        return version("talkmeter")
    except PackageNotFoundError:  # running from a clone that was never installed
        return "unknown"


class Metrics:
    """Every metric of one service; one method per thing the other parts report."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        Gauge("talkmeter_build_info", "talkmeter's version", ["version"], registry=r).labels(
            talkmeter_version()
        ).set(1)
        self.ami_up = Gauge("talkmeter_ami_up", "1 while logged in to the PBX's AMI, else 0", registry=r)
        self.ami_sessions = Counter("talkmeter_ami_sessions", "AMI logins that succeeded", registry=r)
        self.ami_reconnects = Counter(
            "talkmeter_ami_reconnects", "AMI sessions started after the first one", registry=r
        )
        self.ami_failures = Counter(
            "talkmeter_ami_attempts_failed",
            "attempts to reach the AMI that failed, by stage",
            ["stage"],
            registry=r,
        )
        self.events_received = Counter(
            "talkmeter_ami_events_received", "AMI events read and applied, by event", ["event"], registry=r
        )
        self.event_lag = Histogram(
            "talkmeter_ami_event_lag_seconds",
            "receive time minus the event's Timestamp (includes the PBX-host clock difference)",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.in_progress = Gauge(
            "talkmeter_conversations_in_progress", "conversations the call model follows now", registry=r
        )
        self.spooled = Counter(
            "talkmeter_conversations_spooled", "finished conversations written to the spool", registry=r
        )
        self.recorded = Counter(
            "talkmeter_conversations_recorded", "conversations committed to PostgreSQL", registry=r
        )
        self.rejected = Counter(
            "talkmeter_conversations_rejected",
            "conversations PostgreSQL refused, set aside in rejected.jsonl",
            registry=r,
        )
        self.versions = Counter(
            "talkmeter_conversation_versions",
            "conversations recorded, by what this daemon's version did in the ledger: first, identical "
            "(another instance's or a re-sent one), superseded (replaced an estimated one), disagreed "
            "(an exact one differing from the exact one kept), not_better (estimated, after another)",
            ["outcome"],
            registry=r,
        )
        self.write_seconds = Histogram(
            "talkmeter_database_write_seconds",
            "time to record and rate one conversation in PostgreSQL (committed writes)",
            buckets=WRITE_BUCKETS,
            registry=r,
        )
        self.backlog = Gauge(
            "talkmeter_spool_backlog", "conversations spooled and not yet committed", registry=r
        )
        self.restarts = Counter(
            "talkmeter_task_restarts",
            "restarts caused by a supervised task's death, by task",
            ["task"],
            registry=r,
        )
        self.healthy = Gauge(
            "talkmeter_healthy", "1 while /healthz answers 200 (AMI link up, writer not stalled)", registry=r
        )
        self.writer_stalled = Gauge(
            "talkmeter_writer_stalled_seconds",
            "how long the writer has had work without finishing any",
            registry=r,
        )
        self.alerts_raised = Counter(
            "talkmeter_alerts_raised",
            "quota alerts this daemon claimed and sent, by kind",
            ["kind"],
            registry=r,
        )
        self.alert_delay = Histogram(
            "talkmeter_alert_delay_seconds",
            "from a threshold's crossing to the alert's decision, on the PBX's clock",
            buckets=ALERT_DELAY_BUCKETS,
            registry=r,
        )
        self.call_notices = Counter(
            "talkmeter_call_notices", "call-start notices sent, by match of the caller", ["match"], registry=r
        )
        self.alert_deliveries = Counter(
            "talkmeter_alert_deliveries",
            "attempts to deliver alerts and notices, by sink and result (sent, failed, given_up)",
            ["sink", "result"],
            registry=r,
        )
        self._dropped: Mapping[bytes, int] = {}
        self._received: dict[str, Any] = {}
        r.register(_DroppedEvents(self))
        self.server: MetricsServer | None = None

    def serve(self, host: str, port: int, health: Health) -> MetricsServer:
        """Start `/metrics` and `/healthz` on host:port (port 0: any free one, see `server.port`)."""
        self.server = MetricsServer(host, port, self.registry, health)
        return self.server

    @classmethod
    def with_process_metrics(cls) -> Metrics:
        """For the service: also the process's CPU, memory, open files and start time."""
        metrics = cls()
        ProcessCollector(registry=metrics.registry)
        return metrics

    # the AMI link

    def link_observer(self) -> LinkMetrics:
        return LinkMetrics(self)

    def event_received(self, name: str, lag: float | None) -> None:
        child = self._received.get(name)
        if child is None:
            child = self._received[name] = self.events_received.labels(name)
        child.inc()
        if lag is not None:
            self.event_lag.observe(lag)

    def count_dropped(self, counts: Mapping[bytes, int]) -> None:
        """The framer's running counts of dropped events by name, read at each scrape."""
        self._dropped = counts

    # the pipeline, the writer, the service

    def conversations_in_progress(self, count: int) -> None:
        self.in_progress.set(count)

    def conversation_spooled(self, backlog: int) -> None:
        self.spooled.inc()
        self.backlog.set(backlog)

    def conversation_recorded(self, seconds: float, backlog: int) -> None:
        self.recorded.inc()
        self.write_seconds.observe(seconds)
        self.backlog.set(backlog)

    def conversation_version(self, outcome: str) -> None:
        self.versions.labels(outcome).inc()

    def conversation_rejected(self, backlog: int) -> None:
        self.rejected.inc()
        self.backlog.set(backlog)

    def spool_backlog(self, backlog: int) -> None:
        self.backlog.set(backlog)

    def task_restarted(self, task: str, times: int = 1) -> None:
        self.restarts.labels(task).inc(times)

    # the alerts (daemon.alerts.delivery.AlertObserver)

    def alert_raised(self, kind: str, delay: float | None) -> None:
        self.alerts_raised.labels(kind).inc()
        if delay is not None:
            self.alert_delay.observe(max(0.0, delay))

    def notice_sent(self, match: str) -> None:
        self.call_notices.labels(match).inc()

    def alert_delivery(self, sink: str, result: str) -> None:
        self.alert_deliveries.labels(sink, result).inc()


class LinkMetrics(LinkObserver):
    """The AMI link's reports, as metrics."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.sessions = 0

    def attempt_failed(self, stage: str, reason: str) -> None:
        self.metrics.ami_failures.labels(stage).inc()

    def session_started(self) -> None:
        self.sessions += 1
        self.metrics.ami_sessions.inc()
        if self.sessions > 1:
            self.metrics.ami_reconnects.inc()
        self.metrics.ami_up.set(1)

    def session_ended(self, reason: str) -> None:
        self.metrics.ami_up.set(0)

    def event_received(self, name: str, lag: float | None) -> None:
        self.metrics.event_received(name, lag)

    def task_restarted(self, task: str) -> None:
        self.metrics.task_restarted(task)


class _DroppedEvents:
    """`talkmeter_ami_events_dropped_total{event}` from the framer's counts, at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        help_text = "AMI events dropped undecoded (the call model does not read them), by event"
        family = CounterMetricFamily("talkmeter_ami_events_dropped", help_text, labels=["event"])
        for name, count in dict(self._metrics._dropped).items():  # a copy: the loop thread adds names
            family.add_metric([name.decode("utf-8", "replace")], count)
        yield family


# --- the HTTP endpoint ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HealthState:
    healthy: bool
    reason: str


Health = Callable[[], HealthState]
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def health_app(registry: CollectorRegistry, health: Health) -> WsgiApp:
    """`/healthz` from `health`, `/metrics` (and `/`) from the registry, 404 for anything else."""
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/healthz":
            state = health()
            status = "200 OK" if state.healthy else "503 Service Unavailable"
            start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
            return [(state.reason + "\n").encode()]
        if path in ("/metrics", "/"):
            return metrics_app(environ, start_response)  # type: ignore[no-any-return]
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found: try /metrics or /healthz\n"]

    return app


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # scrapes are not news
        pass


class MetricsServer:
    """`/metrics` and `/healthz` on host:port, served from a daemon thread until `close()`."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry, health: Health) -> None:
        family, address = _family(host, port)

        class Server(ThreadingWSGIServer):
            address_family = family

        self._server = make_server(address, port, health_app(registry, health), Server, handler_class=_Quiet)
        self.host, self.port = host, self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _family(host: str, port: int) -> tuple[socket.AddressFamily, str]:
    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    return family, str(address[0])
