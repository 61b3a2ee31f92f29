"""`talkmeter run`: the long-running service for one PBX, wired from the pieces.

Theory of operation
-------------------
Named, supervised tasks share one process (daemon.supervision):

* `pipeline` (daemon.live): the AMI link and the call model. It never waits for the database.
* `writer` (daemon.writer): every finished conversation is spooled to disk, then recorded and
  rated in PostgreSQL (accounting.ledger.record_conversation), retried while the database is away.
  Each carries this daemon's `instance` name: with a standby following the same PBX, both record
  every conversation and the ledger keeps the better measurement (accounting.versions).
* `checkpointer`: every `checkpoint_interval` seconds, and right after each snapshot (login), the
  conversations in progress are written to `<spool_dir>/<pbx>/checkpoint.records`, so that a crash
  or restart mid-call loses no talk: on start they are restored into the call model and resumed
  when the snapshot after login shows their channels. The file is replaced atomically and
  validated when read (bad records are quarantined).
* `spool`: stands for the spool's disk; it dies when an append fails (disk full).
* `alerts` and `alerts-board` (daemon.alerts, unless `[alerts] enabled = false`): live quota
  alerts and call-start notices from the call model's effects, delivered to the configured sinks
  in tasks of their own; and the conversations in progress written for `talkmeter.quota_now`.
  The writer tells the alerts each conversation it commits, so crossings only known then are
  alerted then. Nothing here ever waits for a sink.

All disk I/O runs on one disk thread (daemon.journal), never on the loop that reads the PBX. The
spool and the checkpoint belong to one process: the service holds a lock on its state directory
(`<spool_dir>/<pbx>/lock`) and refuses to start when another talkmeter holds it (two instances
following one PBX from one host need a `spool_dir` each).

If any task dies, the service stops (and systemd restarts it) rather than limping on: one
`service.task_died` line names the task and the error, the pipeline logs off and checkpoints, the
writer gets a bounded time to commit what it holds, and every task is cancelled; a task that does
not end within `STOP_CANCEL_SECONDS` is named in `StopForced` (the command then exits at once). A
graceful stop (SIGTERM) goes the same way: it logs off the PBX, applies what was received,
checkpoints the calls in progress (instead of closing them: the calls go on, and the next start
resumes them), gives the writer a bounded time to commit, and leaves whatever is not committed in
the spool.

At start the service checks the database schema and refuses to run, saying why, if it is not the
one this talkmeter expects. A database that is merely down does not stop it: it follows calls
anyway (conversations wait in the spool) and checks the schema on the first connection.

Every part reports to one `daemon.metrics.Metrics`; with `metrics_port` set, `/metrics` and
`/healthz` are served (healthy: the AMI link is up and the writer is not stalled). A task's death
is counted in `<spool_dir>/<pbx>/task_deaths.json`, so `talkmeter_task_restarts_total` still shows
it after the restart it causes.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import structlog

from accounting.ledger import RecordResult, RetryableStorageError, record_conversation
from accounting.migrate import SchemaError, check_schema
from daemon import systemd
from daemon.alerts.engine import AlertEngine
from daemon.alerts.setup import build_engine
from daemon.journal import DiskThread, Quarantine, encode, read_file, scan, write_atomically
from daemon.live import OnConversation, OnEffect, Pipeline, stop_on_signals
from daemon.metrics import STALL_SECONDS, HealthState, Metrics
from daemon.settings import ConfigError, Settings
from daemon.supervision import StopForced, TaskDied, cancel_within, first_death
from daemon.writer import ConversationWriter, FatalStorageError, Spool
from telephony.ami import AmiLink
from telephony.calls import CallTracker, check_checkpoint
from telephony.effects import Effect

log = structlog.get_logger("daemon.service")

STOP_GRACE_SECONDS = 10.0
STOP_CANCEL_SECONDS = 3.0  # a cancelled task that has not ended after this is left behind (forced stop)
CLOSE_SECONDS = 2.0  # closing the database pool politely; then its connections are cut
_TRANSIENT = (RetryableStorageError, OSError, TimeoutError, asyncpg.PostgresConnectionError)


class Database:
    """The accounting store behind one lazily created pool; the schema is checked once, on connect.

    Every connection attempt, statement and whole recording is bounded by `timeout`: PostgreSQL
    that does not answer in time (a half-open link, a hung server) is a *stall*. It is logged
    (`database.stalled`), the pool is dropped (its other connections are likely dead as well) and
    the error is transient, so the writer retries on fresh connections. The server is told to end a
    transaction whose client went silent (`idle_in_transaction_session_timeout`), so that the locks
    of a write cut off mid-way do not hold up the retry.
    """

    def __init__(self, dsn: str, timeout: float = 15.0) -> None:
        self._dsn = dsn
        self._timeout = timeout
        self._pool: asyncpg.Pool | None = None

    async def record(self, conversation: dict[str, Any]) -> RecordResult:
        pool = await self._connect()
        try:
            async with asyncio.timeout(self._timeout):
                return await record_conversation(pool, conversation)
        except (TimeoutError, RetryableStorageError) as error:
            if _timed_out(error):
                log.warning("database.stalled", waited=self._timeout,
                            hint="no answer from PostgreSQL: reconnecting, the write is retried")  # fmt: skip
                self._drop()
            raise

    async def pool(self) -> asyncpg.Pool:
        """The pool (connecting, and checking the schema, the first time)."""
        return await self._connect()

    async def check_at_start(self) -> None:
        """Refuse to start on a wrong schema; a database that is merely down is not a reason."""
        try:
            await self._connect()
        except FatalStorageError:
            raise
        except Exception as error:
            if not is_transient(error):
                raise
            log.warning("database.unavailable_at_start", error=type(error).__name__,
                        hint="following calls anyway; conversations wait in the spool")  # fmt: skip

    async def _connect(self) -> asyncpg.Pool:
        if self._pool is not None:
            return self._pool
        idle_limit = f"{int(self._timeout * 2000)}ms"  # twice our own patience, in milliseconds
        try:
            pool = await asyncpg.create_pool(
                self._dsn, min_size=1, max_size=4, timeout=self._timeout, command_timeout=self._timeout,
                server_settings={"idle_in_transaction_session_timeout": idle_limit},
            )  # fmt: skip
        except (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError) as error:
            raise FatalStorageError(f"PostgreSQL refused the login: {error}") from error
        except asyncpg.InvalidCatalogNameError as error:
            raise FatalStorageError(f"no such database: {error}") from error
        except (asyncpg.ClientConfigurationError, ValueError) as error:  # an option asyncpg refuses
            raise FatalStorageError(f"database_url: {error}") from error
        try:
            async with asyncio.timeout(self._timeout), pool.acquire() as conn:
                await check_schema(conn)
        except SchemaError as error:
            pool.terminate()
            raise FatalStorageError(str(error)) from error
        except BaseException:
            pool.terminate()
            raise
        log.info("database.connected")
        self._pool = pool
        return pool

    def _drop(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool = None

    async def close(self) -> None:
        if self._pool is None:
            return
        try:  # bounded: a whole stop must fit in systemd's TimeoutStopSec (30 s)
            async with asyncio.timeout(min(self._timeout, CLOSE_SECONDS)):
                await self._pool.close()
        except TimeoutError:
            self._drop()


def _timed_out(error: BaseException | None) -> bool:
    """A timeout, or an error caused by one (accounting wraps the driver's timeouts)."""
    while error is not None:
        if isinstance(error, TimeoutError):
            return True
        error = error.__cause__ or error.__context__
    return False


def is_transient(error: BaseException) -> bool:
    """Errors that pass with time (connection, restart, aborted transaction): retry, keep order."""
    return isinstance(error, _TRANSIENT)


class Checkpoints:
    """The calls in progress, on disk, for the next start: framed records (daemon.journal), one per
    conversation, replaced atomically. Loading validates every record; bad ones are quarantined."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "checkpoint.records"
        self.legacy_path = directory / "open.json"  # the checkpoint of earlier versions: a JSON list
        self.temporary = directory / "checkpoint.tmp"
        self.quarantine = Quarantine(directory)

    def load(self) -> list[dict[str, Any]]:
        if self.path.exists():
            source = self.path
            found = scan(read_file(self.path), check_checkpoint)
            damaged, saved = found.damaged, found.records
            if found.torn:
                damaged.append((found.torn, "torn tail: the file was cut short"))
        elif self.legacy_path.exists():
            source = self.legacy_path
            saved, damaged = _read_legacy_checkpoint(read_file(self.legacy_path))
        else:
            return []
        if self.quarantine.put(source.name, damaged) or self.legacy_path.exists():
            self.save(saved)  # so that the same damage is not quarantined again at the next start
        return saved

    def save(self, saved: list[dict[str, Any]]) -> None:
        write_atomically(self.path, b"".join(encode(item) for item in saved), self.temporary)
        if self.legacy_path.exists():
            self.legacy_path.unlink()


def _read_legacy_checkpoint(data: bytes) -> tuple[list[dict[str, Any]], list[tuple[bytes, str]]]:
    try:
        items = json.loads(data.decode("utf-8"))
    except ValueError as error:  # UnicodeDecodeError is one
        return [], [(data, f"open.json unreadable: {error}")]
    if not isinstance(items, list):
        return [], [(data, f"open.json holds a JSON {type(items).__name__}, not a list")]
    saved, damaged = [], []
    for item in items:
        try:
            if not isinstance(item, dict):
                raise ValueError(f"a JSON {type(item).__name__}, not an object")
            check_checkpoint(item)
        except ValueError as error:
            damaged.append((json.dumps(item, ensure_ascii=False).encode("utf-8"), f"open.json: {error}"))
        else:
            saved.append(item)
    return saved, damaged


@contextlib.contextmanager
def claim_state_directory(directory: Path, instance: str) -> Iterator[None]:
    """Hold `<directory>/lock` while the service runs: two talkmeters sharing a spool and a
    checkpoint would each resubmit and resume the other's calls (two instances following one PBX
    on one host need a spool_dir each). The kernel releases the lock when the process dies, so a
    restart after kill -9 finds it free."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "lock"
    with path.open("a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another talkmeter"
            raise ConfigError(
                f"spool_dir {directory} is in use by {holder}: give each talkmeter following this PBX "
                "its own spool_dir (or stop the other one)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"talkmeter instance {instance!r} (pid {os.getpid()})\n")
        handle.flush()
        yield


class TaskDeaths:
    """How many times each supervised task has died, kept across the restarts its deaths cause."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "task_deaths.json"

    def load(self) -> dict[str, int]:
        try:
            saved = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return {str(k): v for k, v in saved.items() if isinstance(v, int)} if isinstance(saved, dict) else {}

    def record(self, task: str) -> None:
        counts = self.load()
        counts[task] = counts.get(task, 0) + 1
        with contextlib.suppress(OSError):  # the death itself may be a full disk: never hide it
            self.path.write_text(json.dumps(counts), encoding="utf-8")


async def serve(
    settings: Settings,
    stop: asyncio.Event,
    database: Database | None = None,
    on_effect: OnEffect | None = None,
    stop_grace: float = STOP_GRACE_SECONDS,
    metrics: Metrics | None = None,
) -> None:
    """Run the service until `stop` is set, or until a task dies (`TaskDied` is raised, naming it).

    Every way out is bounded: a task that does not end when cancelled is named in `StopForced`.
    `on_effect` sees every live effect of the call model (for tests), after the alert engine.
    """
    metrics = metrics or Metrics.with_process_metrics()
    database = database or Database(settings.dsn(), settings.database_timeout)
    spool_dir = settings.spool_dir / settings.pbx
    with claim_state_directory(spool_dir, settings.instance):
        await database.check_at_start()
        disk = DiskThread()
        try:
            await _serve(settings, stop, database, disk, spool_dir, on_effect, stop_grace, metrics)
        finally:
            disk.close()


async def _serve(settings: Settings, stop: asyncio.Event, database: Database, disk: DiskThread,
                 spool_dir: Path, on_effect: OnEffect | None, stop_grace: float,
                 metrics: Metrics) -> None:  # fmt: skip
    tracker = settings.call_tracker()
    alerts = build_engine(settings, database.pool, tracker, lambda: pipeline.link, is_transient, metrics)

    record = _recording(database, alerts, metrics)
    writer = ConversationWriter(record, Spool(spool_dir), is_transient, disk=disk, metrics=metrics)
    checkpoints = Checkpoints(spool_dir)
    deaths = TaskDeaths(spool_dir)
    for name, times in deaths.load().items():
        metrics.task_restarted(name, times)
    try:
        tracker.restore(await disk(checkpoints.load))
        await writer.resume()
    except OSError as error:  # the spool cannot even be recovered (disk full, permissions)
        log.error("service.task_died", task="spool", error=repr(error), path=str(spool_dir))
        raise TaskDied("spool", error) from error

    async def checkpoint_at_stop(tracker: CallTracker, now: float) -> None:
        try:
            await disk(checkpoints.save, tracker.checkpoint(now))
        except OSError as error:
            log.error("checkpoint.failed", error=repr(error))

    stopping = asyncio.Event()  # the pipeline's stop: set by `stop`, or by a task's death
    pipeline = Pipeline(
        settings,
        measured_by(settings.instance, writer.submit),
        tracker=tracker,
        on_stop=checkpoint_at_stop,
        on_effect=_both(alerts.on_effect if alerts is not None else None, on_effect),
        metrics=metrics,
    )
    _report_health(settings, metrics, pipeline, writer)
    tasks = [
        asyncio.create_task(pipeline.run(stopping), name="pipeline"),
        asyncio.create_task(writer.run(), name="writer"),
        asyncio.create_task(
            _checkpoint_forever(pipeline, checkpoints, disk, settings.checkpoint_interval),
            name="checkpointer",
        ),
        asyncio.create_task(writer.spool_failure(), name="spool"),
        *_side_tasks(writer, alerts),
    ]
    systemd.notify("READY=1")
    log.info(
        "service.started",
        pbx=settings.pbx,
        instance=settings.instance,
        ami_host=settings.ami_host,
        ami_user=settings.ami_user,
    )
    death = None
    stuck: list[str] = []
    try:
        death = await first_death(tasks, stop)
        if death is not None:
            log.error("service.task_died", task=death.task, error=repr(death.error))
            deaths.record(death.task)
        systemd.notify("STOPPING=1")
        stopping.set()
        await _wind_down(tasks, writer, pipeline.grace, stop_grace)
    finally:
        stuck = await cancel_within(tasks, STOP_CANCEL_SECONDS) + _forced_inside(tasks)
        if alerts is not None and not await _close_alerts(alerts):
            stuck.append("alerts")
        await database.close()
        if metrics.server is not None:
            metrics.server.close()
        log.info("service.stopped", written=writer.written, left_in_spool=writer.backlog)
    if stuck:
        log.error("service.stop_forced", tasks=stuck, hint="exiting at once; systemd restarts the service")
        raise StopForced(stuck, death)
    if death is not None:
        raise death


async def _close_alerts(alerts: AlertEngine, bound: float = STOP_CANCEL_SECONDS) -> bool:
    """Deliveries still being tried stay pending, for the next start. False when the engine did
    not let go within the bound: it is left behind (a timeout around the wait would not do, it
    waits for a task that ignores its cancel as long as that task likes), and the stop is forced."""
    closing = asyncio.ensure_future(alerts.close())
    done, _ = await asyncio.wait([closing], timeout=bound)
    if not done:
        log.warning("alerts.close_timeout", waited=bound)
        return False
    if closing.exception() is not None:
        log.error("alerts.close_failed", error=repr(closing.exception()))
    return True


def _side_tasks(writer: ConversationWriter, alerts: AlertEngine | None) -> list[asyncio.Task[None]]:
    """The alert engine's tasks (when alerts are on) and the systemd watchdog (when asked for)."""
    tasks = []
    if alerts is not None:
        tasks.append(asyncio.create_task(alerts.run(), name="alerts"))
        tasks.append(asyncio.create_task(alerts.board_forever(), name="alerts-board"))
    watchdog = systemd.watchdog_interval()
    if watchdog is not None:
        tasks.append(asyncio.create_task(_watchdog_forever(writer, watchdog), name="watchdog"))
    return tasks


def _recording(
    database: Database, alerts: AlertEngine | None, metrics: Metrics
) -> Callable[[dict[str, Any]], Awaitable[RecordResult]]:
    """Record in the database, count what the version did there, then tell the alerts what was
    committed (crossings known only now). They are told even when this version changed nothing
    (a standby's version of a call the other instance recorded first, or one sent again from the
    spool): the call is recorded all the same, and no longer in progress."""

    async def record(conversation: dict[str, Any]) -> RecordResult:
        result = await database.record(conversation)
        metrics.conversation_version(result.version)
        if alerts is not None:
            alerts.recorded(conversation, result.client_id, result.contract_id)
        return result

    return record


def _both(first: OnEffect | None, second: OnEffect | None) -> OnEffect | None:
    if first is None or second is None:
        return first or second

    def both(effect: Effect) -> None:
        first(effect)
        second(effect)

    return both


def measured_by(instance: str, submit: OnConversation) -> OnConversation:
    """Every conversation this daemon finishes carries its instance name, into the spool and the
    ledger: with a standby, the ledger says which instance measured the version it keeps."""

    async def stamped(conversation: dict[str, Any]) -> None:
        await submit({**conversation, "instance": instance})

    return stamped


def health(link: AmiLink, writer: ConversationWriter) -> HealthState:
    """Healthy while the AMI link is up and the writer is not stalled."""
    if not link.connected:
        return HealthState(False, "AMI link down")
    stalled = writer.stalled_for()
    if stalled >= STALL_SECONDS:
        return HealthState(
            False, f"writer stalled for {stalled:.0f} s, {writer.backlog} conversation(s) waiting"
        )
    return HealthState(True, "ok")


def _report_health(
    settings: Settings, metrics: Metrics, pipeline: Pipeline, writer: ConversationWriter
) -> None:
    metrics.writer_stalled.set_function(writer.stalled_for)
    metrics.healthy.set_function(lambda: float(health(pipeline.link, writer).healthy))
    if settings.metrics_port is not None:
        _serve_metrics(settings, metrics, lambda: health(pipeline.link, writer))


def _serve_metrics(settings: Settings, metrics: Metrics, check: Callable[[], HealthState]) -> None:
    host, port = settings.metrics_host, settings.metrics_port or 0
    try:
        server = metrics.serve(host, port, check)
    except OSError as error:
        raise ConfigError(
            f"metrics_port: cannot listen on {host}:{port} ({error.strerror}): choose a free port or address"
        ) from None
    log.info("metrics.listening", host=host, port=server.port, paths=["/metrics", "/healthz"])


async def _wind_down(tasks: list[asyncio.Task[None]], writer: ConversationWriter, grace: float,
                     stop_grace: float) -> None:  # fmt: skip
    """Let the pipeline stop gracefully (it checkpoints), then give the writer time to commit."""
    pipeline, writing = tasks[0], tasks[1]
    # The pipeline's own stop is bounded by `grace`; this bound is for one that does not obey.
    await asyncio.wait([pipeline], timeout=grace + 2 * STOP_CANCEL_SECONDS)
    if not writing.done() and not await writer.drain(stop_grace):
        log.warning("service.writer_not_drained", left_in_spool=writer.backlog)


def _forced_inside(tasks: list[asyncio.Task[None]]) -> list[str]:
    """Tasks that a supervised task of ours could not stop (it raised `StopForced` naming them)."""
    return [
        name
        for task in tasks
        if task.done() and not task.cancelled() and isinstance(task.exception(), StopForced)
        for name in task.exception().tasks  # type: ignore[union-attr]
    ]


async def _checkpoint_forever(
    pipeline: Pipeline, checkpoints: Checkpoints, disk: DiskThread, interval: float
) -> None:
    # Only while the link is up: a checkpoint claims "this is how the calls were at `at`", and
    # during an outage we do not know that. The previous one stays until we know again. One is also
    # taken as soon as a snapshot has been applied: after a restart the calls just resumed are then
    # on disk at once, and a second crash soon after the first does not fall back to older ones.
    # The state is taken on the loop once every conversation that has left the call model is in the
    # spool (`Pipeline.checkpoint`); the disk thread writes it after the appends asked before.
    while True:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval):
                await pipeline.resynced.wait()
        pipeline.resynced.clear()
        if pipeline.link.connected:
            await disk(checkpoints.save, await pipeline.checkpoint())


async def _watchdog_forever(writer: ConversationWriter, interval: float) -> None:
    while True:
        systemd.notify(f"WATCHDOG=1\nSTATUS=recorded {writer.written}, waiting {writer.backlog}")
        await asyncio.sleep(interval)


async def run_until_signalled(settings: Settings) -> None:
    stop = asyncio.Event()
    with stop_on_signals(stop), contextlib.suppress(asyncio.CancelledError):
        await serve(settings, stop)
