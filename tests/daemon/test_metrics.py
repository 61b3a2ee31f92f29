"""Metrics and /healthz, scraped over real HTTP while the service follows the AMI simulator and
writes to a real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from daemon.metrics import STALL_SECONDS, LinkMetrics, Metrics
from daemon.service import health, serve
from daemon.writer import ConversationWriter, Spool
from telephony.simulator import AmiSimulator, load_trace
from tests.daemon.test_service import GUARD, SECRET, TRACES, WatchedDatabase, settings


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=GUARD) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


class WatchedMetrics(Metrics):
    """The real metrics, telling the test when a conversation was recorded and when the link went down."""

    def __init__(self) -> None:
        super().__init__()
        self.recorded_one = asyncio.Event()
        self.link_down = asyncio.Event()

    def conversation_recorded(self, seconds: float, backlog: int) -> None:
        super().conversation_recorded(seconds, backlog)
        self.recorded_one.set()

    def link_observer(self) -> LinkMetrics:
        watched = self

        class Watched(LinkMetrics):
            def session_ended(self, reason: str) -> None:
                super().session_ended(reason)
                watched.link_down.set()

        return Watched(self)


async def wait(event: asyncio.Event) -> None:
    async with asyncio.timeout(GUARD):
        await event.wait()


async def test_metrics_and_health_are_served_while_the_service_runs(db_dsn: str, tmp_path: Path) -> None:
    (tmp_path / "default").mkdir()
    (tmp_path / "default" / "task_deaths.json").write_text(json.dumps({"checkpointer": 2}))
    metrics = WatchedMetrics()
    trace = load_trace(TRACES / "inbound_answered.ami")
    sim = AmiSimulator(trace, secret=SECRET, speed=0)
    await sim.start()
    database = WatchedDatabase(db_dsn)
    config = settings(sim.port, db_dsn, tmp_path, metrics_port=0)
    stop = asyncio.Event()
    service = asyncio.create_task(serve(config, stop, database, stop_grace=0.5, metrics=metrics))
    try:
        await wait(metrics.recorded_one)
        assert metrics.server is not None and metrics.server.host == "127.0.0.1"
        base = f"http://127.0.0.1:{metrics.server.port}"

        status, text = await asyncio.to_thread(get, base + "/metrics")
        assert status == 200
        found = samples(text)
        assert found["talkmeter_ami_up", ()] == 1
        assert found["talkmeter_ami_sessions_total", ()] == 1
        assert found["talkmeter_ami_events_received_total", (("event", "Newchannel"),)] > 0
        assert found["talkmeter_ami_events_dropped_total", (("event", "VarSet"),)] > 0
        assert found["talkmeter_ami_event_lag_seconds_count", ()] > 0
        assert found["talkmeter_conversations_spooled_total", ()] == 1
        assert found["talkmeter_conversations_recorded_total", ()] == 1
        assert found["talkmeter_conversations_rejected_total", ()] == 0
        assert found["talkmeter_database_write_seconds_count", ()] == 1
        assert found["talkmeter_spool_backlog", ()] == 0
        assert found["talkmeter_task_restarts_total", (("task", "checkpointer"),)] == 2
        assert found["talkmeter_writer_stalled_seconds", ()] == 0
        assert await asyncio.to_thread(get, base + "/healthz") == (200, "ok\n")

        await sim.stop()  # the PBX goes away: unhealthy, and the metrics say so
        await wait(metrics.link_down)
        assert await asyncio.to_thread(get, base + "/healthz") == (503, "AMI link down\n")
        assert (await asyncio.to_thread(get, base + "/nothing"))[0] == 404
    finally:
        stop.set()
        async with asyncio.timeout(GUARD):
            await service
        await sim.stop()


async def test_the_metrics_port_is_off_unless_configured(db_dsn: str, tmp_path: Path) -> None:
    metrics = Metrics()
    async with AmiSimulator(load_trace(TRACES / "inbound_answered.ami"), secret=SECRET, speed=0) as sim:
        database = WatchedDatabase(db_dsn)
        stop = asyncio.Event()
        service = asyncio.create_task(
            serve(settings(sim.port, db_dsn, tmp_path), stop, database, metrics=metrics)
        )
        async with asyncio.timeout(GUARD):
            await database.recorded.wait()
        stop.set()
        async with asyncio.timeout(GUARD):
            await service
    assert metrics.server is None


async def test_a_writer_with_work_and_no_progress_is_stalled(tmp_path: Path) -> None:
    now = [1000.0]
    never = asyncio.Event()

    async def hanging_database(conversation: dict[str, Any]) -> None:
        await never.wait()

    writer = ConversationWriter(hanging_database, Spool(tmp_path), lambda e: True, monotonic=lambda: now[0])
    link_up = SimpleNamespace(connected=True)
    assert health(link_up, writer).healthy  # type: ignore[arg-type]
    now[0] += 3600  # idle for an hour: not stalled, there was nothing to write
    assert writer.stalled_for() == 0
    await writer.submit({"conversation_id": "pbx:1"})
    now[0] += STALL_SECONDS - 1
    assert health(link_up, writer).healthy  # type: ignore[arg-type]
    now[0] += 1
    state = health(link_up, writer)  # type: ignore[arg-type]
    assert not state.healthy and state.reason == "writer stalled for 60 s, 1 conversation(s) waiting"


def exported_names(metrics: Metrics) -> set[str]:
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    return {
        family.name + suffix
        for family in metrics.registry.collect()
        for suffix in suffixes.get(family.type, ("",))
    }


def test_the_dashboard_asks_only_for_metrics_talkmeter_exports() -> None:
    dashboard = json.loads(
        (Path(__file__).resolve().parents[2] / "monitoring" / "grafana-dashboard.json").read_text()
    )
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    asked = {
        name for expr in expressions for name in re.findall(r"\b(talkmeter_[a-z_]+|process_[a-z_]+)\b", expr)
    }
    assert asked <= exported_names(Metrics.with_process_metrics())
    names = {name[: -len("_total")] if name.endswith("_total") else name for name in asked}
    everything = {family.name for family in Metrics().registry.collect()}
    assert everything - {"talkmeter_build_info"} <= {n.removesuffix("_bucket") for n in names}, (
        "a metric without a panel"
    )
