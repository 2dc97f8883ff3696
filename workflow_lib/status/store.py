"""The job status database: SQLite by default, PostgreSQL when many machines share a run.

Every write is an event with a unique id: it is appended to ``events`` and applied to ``runs``,
``datasets`` and ``tiles`` in the same transaction, and an event already present is not applied
twice. When the database cannot be reached, events go to a spool file (one per process) and are
replayed, by whichever process next reaches the database; the ids make replays harmless. The
database never stops the work: a failed write is spooled and said in the log, never raised.
"""

from __future__ import annotations

import contextlib
import getpass
import glob
import json
import logging
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from workflow_lib.errors import ConfigError
from workflow_lib.secrets import redact, reveal
from workflow_lib.status import events as ev
from workflow_lib.status.events import Event
from workflow_lib.status.queries import StatusQueries
from workflow_lib.status.schema import MIGRATIONS

log = logging.getLogger(__name__)

DEFAULT_URL = "sqlite:///results/status.sqlite"
DEFAULT_SPOOL_DIR = "results/.status-spool"
URL_ENV = "WORKFLOW_STATUS_DB"
# A writer waits this long for a busy SQLite database (another writer's transaction takes
# milliseconds), then spools: a database locked by someone else must not hold up the tiles.
WRITE_WAIT_S = 5.0
# After the database was found unreachable or locked, events go straight to the spool for this
# long before the next attempt: one wait per period, not one per event.
RETRY_AFTER_S = 20.0


@dataclass(frozen=True)
class TileBeat:
    """One running tile in a heartbeat: the share of its chunks written, source pixels read so far."""

    tile: str
    progress: float | None = None
    pixels_read: int | None = None


def resolve_url(config_url: str | None = None) -> str:
    """The environment variable wins over the config, which wins over the SQLite default."""
    return os.environ.get(URL_ENV) or config_url or DEFAULT_URL


class _Backend:
    """What differs between SQLite and PostgreSQL: connecting, parameters, transactions."""

    unreachable: tuple[type[BaseException], ...] = ()

    def connect(self): ...

    def connect_read_only(self): ...

    def replaced(self) -> bool:
        """Whether the database the open connection writes to is no longer the one at its URL."""
        return False

    def sql(self, text: str) -> str:
        return text

    @contextlib.contextmanager
    def transaction(self, conn):
        yield conn


class _Sqlite(_Backend):
    unreachable = (sqlite3.OperationalError,)

    def __init__(self, path: str):
        self.path = path
        self._identity: tuple[int, int] | None = None  # (device, inode) of the file connected to

    def _file_identity(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def replaced(self) -> bool:
        # A deleted file stays writable through an open connection: its events would vanish with it.
        return self._identity is not None and self._file_identity() != self._identity

    def connect_read_only(self):
        # mode=ro: nothing this connection does can write (the dashboard only reads). A database
        # that does not exist yet is an OperationalError, like one that cannot be reached.
        conn = sqlite3.connect(f"file:{os.path.abspath(self.path)}?mode=ro", uri=True, timeout=60,
                               isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=60000")
        return conn

    def connect(self):
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        # Shared by the threads of one process (Snakemake logs from several); StatusStore serialises.
        conn = sqlite3.connect(self.path, timeout=WRITE_WAIT_S, isolation_level=None, check_same_thread=False)
        # WAL lets readers (the status command) run beside writers; the busy timeout makes
        # concurrent writers on one machine queue instead of failing.
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA busy_timeout={int(WRITE_WAIT_S * 1000)}")
        conn.execute("PRAGMA synchronous=NORMAL")
        self._identity = self._file_identity()
        return conn

    @contextlib.contextmanager
    def transaction(self, conn):
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


class _Postgres(_Backend):
    def __init__(self, url: str):
        import psycopg

        self.url = url
        self.psycopg = psycopg
        self.unreachable = (psycopg.OperationalError, psycopg.InterfaceError)

    def connect(self):
        # The password comes from the URL, PGPASSWORD or ~/.pgpass (libpq reads both).
        return self.psycopg.connect(self.url, autocommit=True, connect_timeout=5)

    def connect_read_only(self):
        # The server refuses any write in this session's transactions.
        return self.psycopg.connect(self.url, autocommit=True, connect_timeout=5,
                                    options="-c default_transaction_read_only=on")

    def sql(self, text: str) -> str:
        return text.replace("?", "%s")

    @contextlib.contextmanager
    def transaction(self, conn):
        with conn.transaction():
            yield conn


def _backend(url: str) -> _Backend:
    kind, target = _backend_kind(url)
    return kind(target)


def _backend_kind(url: str) -> tuple[type[_Backend], str]:
    """Which backend a URL names, and what it is given; nothing imported or opened."""
    if url.startswith(("postgresql://", "postgres://")):
        return _Postgres, url
    if url.startswith("sqlite:///"):
        return _Sqlite, url[len("sqlite:///"):]
    if url.endswith((".sqlite", ".db")):
        return _Sqlite, url
    raise ConfigError(f"database.url (or {URL_ENV}): a status database URL starts with sqlite:/// or "
                      f"postgresql://, got {redact(url)!r}")


def sqlite_path(url: str) -> str | None:
    """The file of a SQLite status database URL; None for PostgreSQL."""
    kind, target = _backend_kind(url)
    return target if kind is _Sqlite else None


def check_url(url: str) -> None:
    """A ConfigError for a status database URL of no known kind: said before any job, not in each.
    Cheap enough for every parse of the Snakefile (psycopg is not imported)."""
    _backend_kind(url)


class StatusStore(StatusQueries):
    """``read_only``: a reader that never writes, not even the schema (the dashboard): it neither
    migrates nor replays spools, and ``record`` refuses."""

    def __init__(self, url: str | None = None, spool_dir: str = DEFAULT_SPOOL_DIR, read_only: bool = False):
        # The URL it shows is masked (secrets.py); only the connection gets the password.
        self.url = redact(url or DEFAULT_URL)
        self.read_only = read_only
        self.backend = _backend(reveal(url or DEFAULT_URL))
        self.spool_dir = spool_dir
        self._conn = None
        self._migrated = False
        self._warned = False
        self._spool_failed = False
        self._down_until = 0.0  # monotonic time before which writes go straight to the spool
        # Called when the database was found deleted or replaced and a new one made: the run's
        # process records what it holds (the run, its planned tiles) again.
        self.on_new_database: Callable[[], None] | None = None
        self._lock = threading.RLock()  # one connection, used by one thread at a time

    # ---------------------------------------------------------------- connection and schema
    def _connection(self):
        if self.read_only:
            if self._conn is None:
                self._conn = self.backend.connect_read_only()
            return self._conn
        replaced = self._conn is not None and self.backend.replaced()
        if replaced:
            log.warning("status database %s was deleted or replaced during the run: a new one is started, "
                        "and the run's start and tiles are recorded in it again", redact(self.url))
            self.close()
            self._migrated = False
        if self._conn is None:
            self._conn = self.backend.connect()
        if not self._migrated:
            self._migrate(self._conn)
            self._migrated = True
        if replaced and self.on_new_database is not None:
            self.on_new_database()  # records through this connection, now in place
        return self._conn

    def _execute(self, conn, text: str, params: tuple = ()):
        return conn.execute(self.backend.sql(text), params)

    def _migrate(self, conn) -> None:
        with self.backend.transaction(conn):
            if isinstance(self.backend, _Postgres):
                # One migrating process at a time, whatever the number of cluster jobs starting.
                conn.execute("SELECT pg_advisory_xact_lock(74390815)")
            self._execute(conn, "CREATE TABLE IF NOT EXISTS schema_migrations "
                                "(version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION)")
            done = {row[0] for row in self._execute(conn, "SELECT version FROM schema_migrations").fetchall()}
            for version, script in MIGRATIONS:
                if version in done:
                    continue
                for statement in filter(str.strip, script.split(";")):
                    self._execute(conn, statement)
                self._execute(conn, "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                              (version, time.time()))

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.close()
                self._conn = None

    def _lost(self, exc: BaseException) -> None:
        self.close()
        self._down_until = time.monotonic() + RETRY_AFTER_S
        if not self._warned:
            log.warning("status database %s unreachable (%s): events are spooled to %s and replayed later",
                        redact(self.url), str(exc).strip().splitlines()[0] if str(exc).strip() else exc,
                        self.spool_dir)
            self._warned = True

    # ---------------------------------------------------------------- writing
    def record(self, event: Event) -> bool:
        """Write one event; spool it if the database is unreachable. True if it reached the database."""
        if self.read_only:
            raise RuntimeError("a read-only status store records nothing")
        with self._lock:
            return self._record(event)

    def _record(self, event: Event) -> bool:
        if time.monotonic() < self._down_until:
            self._spool(event)
            return False
        try:
            conn = self._connection()
            self._replay_spools(conn)
            self._write(conn, event)
            return True
        except self.backend.unreachable as exc:
            self._lost(exc)
            self._spool(event)
            return False

    def _write(self, conn, event: Event) -> None:
        with self.backend.transaction(conn):
            cur = self._execute(
                conn,
                "INSERT INTO events (id, at, kind, run_id, dataset, tile, host, pid, payload) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                (event.id, event.at, event.kind, event.run_id, event.dataset, event.tile, event.host, event.pid,
                 json.dumps(event.payload())),
            )
            if cur.rowcount == 1:  # new: apply it; a replayed event that is already there is not
                _APPLY[type(event)](self, conn, event)

    def heartbeat(self, dataset: str, tiles: list[str] | str | list[TileBeat], rss_mb: float | None = None) -> None:
        """Mark running tiles as alive, with how far each is and the job's memory now. Not an event:
        a lost heartbeat only ages, nothing else."""
        if isinstance(tiles, str):
            tiles = [tiles]
        beats = [t if isinstance(t, TileBeat) else TileBeat(t) for t in tiles]
        with self._lock:
            self._heartbeat(dataset, beats, rss_mb)

    def _heartbeat(self, dataset: str, beats: list[TileBeat], rss_mb: float | None) -> None:
        if not beats or self.read_only or time.monotonic() < self._down_until:
            return
        try:
            conn = self._connection()
            now = time.time()
            with self.backend.transaction(conn):
                conn.cursor().executemany(
                    self.backend.sql("UPDATE tiles SET heartbeat_at = ?, progress = COALESCE(?, progress), "
                                     "pixels_read = COALESCE(?, pixels_read), rss_mb = COALESCE(?, rss_mb) "
                                     "WHERE dataset = ? AND tile = ?"),
                    [(now, b.progress, b.pixels_read, rss_mb, dataset, b.tile) for b in beats])
        except self.backend.unreachable as exc:
            self._lost(exc)

    # ---------------------------------------------------------------- spool
    def _spool_path(self) -> str:
        return os.path.join(self.spool_dir, f"spool-{socket.gethostname()}-{os.getpid()}.jsonl")

    def _spool(self, event: Event) -> None:
        """Keep an event for later. A spool that cannot be written (a full disk) loses the event,
        says so once, and never raises: the status must not stop the work."""
        try:
            os.makedirs(self.spool_dir, exist_ok=True)
            with open(self._spool_path(), "a") as f:
                f.write(json.dumps(event.to_record()) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            if not self._spool_failed:
                log.error("status events are lost: cannot write the spool %s: %s (the database %s is not "
                          "reachable either); the work goes on", self._spool_path(), exc.strerror or exc,
                          redact(self.url))
                self._spool_failed = True

    def _replay_spools(self, conn) -> None:
        for path in sorted(glob.glob(os.path.join(self.spool_dir, "spool-*.jsonl"))):
            claimed = path.replace("spool-", f"replaying-{os.getpid()}-", 1)
            try:
                os.rename(path, claimed)  # whoever renames it owns it
            except FileNotFoundError:
                continue
            with open(claimed) as f:
                lines = f.readlines()
            for i, line in enumerate(lines):
                try:
                    event = Event.from_record(json.loads(line))
                except (ValueError, TypeError, KeyError):
                    log.warning("skipping an unreadable line of %s (a process died while writing it)", claimed)
                    continue
                try:
                    self._write(conn, event)
                except self.backend.unreachable:
                    with open(self._spool_path(), "a") as out:  # keep the rest for later
                        out.writelines(lines[i:])
                    os.unlink(claimed)
                    raise
            os.unlink(claimed)
            log.info("replayed %d spooled status events from %s", len(lines), os.path.basename(path))

    def replay(self) -> None:
        """Replay any spooled events now (the status command and the end of a run do this)."""
        with self._lock:
            self._replay()

    def _replay(self) -> None:
        if self.read_only:
            return
        try:
            self._replay_spools(self._connection())
        except self.backend.unreachable as exc:
            self._lost(exc)

    # ---------------------------------------------------------------- reading
    def query(self, text: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._execute(self._connection(), text, params).fetchall()
            except self.backend.unreachable:
                if self.read_only:
                    self.close()  # a reader tries again on its next query
                raise

    def schema_version(self) -> int:
        """The newest migration applied (0: an empty database)."""
        try:
            rows = self.query("SELECT MAX(version) FROM schema_migrations")
        except Exception:  # noqa: BLE001 - no such table: nothing applied yet
            self.close()
            return 0
        return int(rows[0][0] or 0)


def _apply_run_started(store, conn, e: ev.RunStarted) -> None:
    store._execute(conn, "INSERT INTO runs (id, started_at, status, host, run_user, config_digest, snakemake_version) "
                         "VALUES (?, ?, 'running', ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                   (e.run_id, e.at, e.host, e.user or getpass.getuser(), e.config_digest, e.snakemake_version))


def _apply_run_finished(store, conn, e: ev.RunFinished) -> None:
    store._execute(conn, "UPDATE runs SET ended_at = ?, status = ? WHERE id = ?", (e.at, e.status, e.run_id))
    if e.status in ("paused", "stopped", "interrupted"):
        # Paused or stopped by the controller, or its process gone: what had not finished is still
        # to make.
        store._execute(conn, "UPDATE tiles SET status = 'pending', ended_at = ?, heartbeat_at = NULL "
                             "WHERE run_id = ? AND status = 'running'", (e.at, e.run_id))
        return
    # Jobs that were still running when the run ended did not finish: say so.
    store._execute(conn, "UPDATE tiles SET status = 'failed', ended_at = ?, "
                         "error = COALESCE(error, 'the run ended while this tile was running') "
                         "WHERE run_id = ? AND status = 'running'", (e.at, e.run_id))


def _apply_dataset(store, conn, e: ev.DatasetRecorded) -> None:
    store._execute(
        conn,
        "INSERT INTO datasets (name, path, file_size, crs, width, height, dtype, nodata, block_size, tile_count, "
        "status, registered_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
        "path = excluded.path, file_size = excluded.file_size, crs = excluded.crs, width = excluded.width, "
        "height = excluded.height, dtype = excluded.dtype, nodata = excluded.nodata, "
        "block_size = excluded.block_size, tile_count = excluded.tile_count, status = excluded.status, "
        "error = NULL, registered_at = COALESCE(excluded.registered_at, datasets.registered_at)",
        (e.dataset, e.path, e.file_size, e.crs, e.width, e.height, e.dtype,
         None if e.nodata is None else str(e.nodata), e.block_size, e.tile_count, e.status,
         e.at if e.status == "registered" else None),
    )


def _apply_dataset_failed(store, conn, e: ev.DatasetFailed) -> None:
    # The state and the error only: what the plan knows of the dataset stays.
    store._execute(conn, "INSERT INTO datasets (name, status, error) VALUES (?, 'failed', ?) ON CONFLICT (name) "
                         "DO UPDATE SET status = 'failed', error = excluded.error", (e.dataset, e.error))


def _apply_tiles_planned(store, conn, e: ev.TilesPlanned) -> None:
    rows = [(e.dataset, t[0], t[1], e.run_id, t[2] if len(t) > 2 else None, t[3] if len(t) > 3 else None)
            for t in e.tiles]
    conn.cursor().executemany(
        store.backend.sql("INSERT INTO tiles (dataset, tile, status, run_id, batch, work) VALUES (?, ?, ?, ?, ?, ?) "
                          "ON CONFLICT (dataset, tile) DO UPDATE SET status = excluded.status, "
                          "run_id = excluded.run_id, batch = excluded.batch, "
                          "work = COALESCE(excluded.work, tiles.work)"), rows)
    if e.run_id is not None:
        # The run's plan is every tile of the dataset now: a tile of an earlier plan (another
        # tile_size, another extent) is no longer one of its tiles, and must not be counted.
        store._execute(conn, "DELETE FROM tiles WHERE dataset = ? AND (run_id IS NULL OR run_id <> ?)",
                       (e.dataset, e.run_id))


def _apply_tile_started(store, conn, e: ev.TileStarted) -> None:
    store._execute(conn, "INSERT INTO tiles (dataset, tile, status, attempt, run_id, started_at, host, pid, "
                         "external_job_id, batch, mem_mb, progress) "
                         "VALUES (?, ?, 'running', 1, ?, ?, ?, ?, ?, ?, ?, 0) "
                         "ON CONFLICT (dataset, tile) "
                         "DO UPDATE SET status = 'running', attempt = tiles.attempt + 1, "
                         "run_id = COALESCE(excluded.run_id, tiles.run_id), "
                         "started_at = excluded.started_at, ended_at = NULL, error = NULL, "
                         "heartbeat_at = NULL, host = excluded.host, pid = excluded.pid, "
                         "external_job_id = excluded.external_job_id, batch = COALESCE(excluded.batch, tiles.batch), "
                         "mem_mb = excluded.mem_mb, progress = 0, pixels_read = NULL, rss_mb = NULL",
                   (e.dataset, e.tile, e.run_id, e.at, e.host, e.pid, e.external_job_id, e.batch, e.mem_mb))


def _apply_batch_ended(store, conn, e: ev.BatchEnded) -> None:
    if e.cancelled:
        store._execute(conn, "UPDATE tiles SET status = 'pending', ended_at = ?, error = NULL, heartbeat_at = NULL "
                             "WHERE dataset = ? AND batch = ? AND status = 'running'", (e.at, e.dataset, e.batch))
    else:
        store._execute(conn, "UPDATE tiles SET status = 'failed', ended_at = ?, error = ? "
                             "WHERE dataset = ? AND batch = ? AND status = 'running'",
                       (e.at, e.error, e.dataset, e.batch))


def _apply_tile_finished(store, conn, e: ev.TileFinished) -> None:
    store._execute(conn, "UPDATE tiles SET status = 'done', ended_at = ?, error = NULL, progress = 1, "
                         "seconds = COALESCE(seconds, ? - started_at) WHERE dataset = ? AND tile = ?",
                   (e.at, e.at, e.dataset, e.tile))


def _apply_tile_failed(store, conn, e: ev.TileFailed) -> None:
    store._execute(conn, "UPDATE tiles SET status = 'failed', ended_at = ?, error = ? WHERE dataset = ? AND tile = ?",
                   (e.at, e.error, e.dataset, e.tile))


def _apply_tile_measured(store, conn, e: ev.TileMeasured) -> None:
    store._execute(conn, "INSERT INTO tiles (dataset, tile, status, seconds, peak_rss_mb, engine, pixels_written, "
                         "host, pid, external_job_id, pixels_read) VALUES (?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?) "
                         "ON CONFLICT (dataset, tile) DO UPDATE SET seconds = excluded.seconds, "
                         "peak_rss_mb = excluded.peak_rss_mb, engine = excluded.engine, "
                         "pixels_written = excluded.pixels_written, host = excluded.host, pid = excluded.pid, "
                         "external_job_id = COALESCE(excluded.external_job_id, tiles.external_job_id), "
                         "pixels_read = COALESCE(excluded.pixels_read, tiles.pixels_read)",
                   (e.dataset, e.tile, e.seconds, e.peak_rss_mb, e.engine, e.pixels_written, e.host, e.pid,
                    e.external_job_id, e.pixels_read))


def _apply_dataset_statistics(store, conn, e: ev.DatasetStatistics) -> None:
    store._execute(conn, "UPDATE datasets SET total_pixels = ?, valid_pixels = ?, stat_min = ?, stat_max = ?, "
                         "stat_mean = ?, stat_std = ?, histogram = ? WHERE name = ?",
                   (e.total_pixels, e.valid_pixels, e.min, e.max, e.mean, e.std, json.dumps(e.histogram), e.dataset))


def _apply_note(store, conn, e: ev.Note) -> None:
    """Notes only go into the log of events."""


_APPLY = {
    ev.RunStarted: _apply_run_started,
    ev.RunFinished: _apply_run_finished,
    ev.DatasetRecorded: _apply_dataset,
    ev.DatasetFailed: _apply_dataset_failed,
    ev.TilesPlanned: _apply_tiles_planned,
    ev.TileStarted: _apply_tile_started,
    ev.TileFinished: _apply_tile_finished,
    ev.TileFailed: _apply_tile_failed,
    ev.TileMeasured: _apply_tile_measured,
    ev.BatchEnded: _apply_batch_ended,
    ev.DatasetStatistics: _apply_dataset_statistics,
    ev.Note: _apply_note,
}
